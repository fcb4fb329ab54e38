"""Tests for sparsetrain.sparse export: encodings, lossless round trips, file size, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.sparse import (
    ExportInfo,
    SparseFileError,
    choose_encoding,
    export_sparse,
    load_sparse,
)
from sparsetrain.sparse.encoding import decode, encode, index_bytes

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that -0.0 != 0.0 and NaN == NaN (same payload)."""
    t = t.reshape(-1).contiguous()
    return t.view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)


def assert_bit_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert torch.equal(bits(got[name]), bits(want[name])), name


def prune_(model: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Zero (+0.0) a ``sparsity`` fraction of every weight with >= 2 dims, at random positions."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                flat = p.view(-1)
                flat[torch.randperm(flat.numel(), generator=gen)[: round(sparsity * flat.numel())]] = 0.0
    return model


class Net(nn.Module):
    """Linear, Conv, Embedding weights plus BatchNorm buffers (int64 counter included)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 10)


def net(sparsity: float, dtype: torch.dtype = torch.float32, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = prune_(Net(), sparsity, seed).to(dtype)
    with torch.no_grad():
        model.bn.running_mean.uniform_()
        model.bn.num_batches_tracked.fill_(7)
    return model


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 1.0])
def test_round_trip_is_bit_identical(tmp_path: Path, dtype: torch.dtype, sparsity: float) -> None:
    model = net(sparsity, dtype)
    info = export_sparse(model, tmp_path / "m.safetensors")
    assert_bit_identical(load_sparse(info.path), model.state_dict())


def test_sparse_weights_are_compressed_and_rest_dense(tmp_path: Path) -> None:
    info = export_sparse(net(0.9), tmp_path / "m.safetensors")
    for name in ("emb.weight", "conv.weight", "fc1.weight", "fc2.weight"):
        assert info.encodings[name] in ("bitmask", "csr", "coo"), name
    for name in ("fc1.bias", "bn.running_var", "bn.num_batches_tracked", "bn.weight"):
        assert info.encodings[name] == "dense", name


def test_negative_zero_and_nan_survive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(30, 40) > 0.9)  # w * 0 = -0.0 for negative w
        layer.weight[0, 0] = float("nan")
    assert bool((torch.signbit(layer.weight) & (layer.weight == 0)).any())
    info = export_sparse(layer, tmp_path / "m.safetensors")
    assert info.encodings["weight"] != "dense"
    assert_bit_identical(load_sparse(info.path), layer.state_dict())
    # Without the signs every zero comes back +0.0: equal in value, smaller file.
    plain = export_sparse(layer, tmp_path / "p.safetensors", keep_zero_signs=False)
    back = load_sparse(plain.path)["weight"]
    assert torch.equal(torch.nan_to_num(back), torch.nan_to_num(layer.weight.detach()))
    assert not bool(torch.signbit(back[back == 0]).any())
    assert plain.bytes_written < info.bytes_written


def test_file_smaller_than_dense_at_90_percent(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = prune_(nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128)), 0.9)
    dense_path = tmp_path / "dense.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(dense_path))
    info = export_sparse(model, tmp_path / "m.safetensors")
    assert info.bytes_written == (tmp_path / "m.safetensors").stat().st_size
    assert info.dense_bytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # float32 bitmask at 90 %: 1 bit + 0.1 * 32 bits per weight = 0.53 of dense (plus dense biases).
    assert info.bytes_written < 0.56 * dense_path.stat().st_size
    assert info.compression_ratio == pytest.approx(info.dense_bytes / info.bytes_written)


def test_min_sparsity_controls_what_is_compressed(tmp_path: Path) -> None:
    model = net(0.5)
    assert export_sparse(model, tmp_path / "a.safetensors", min_sparsity=0.6).encodings["fc1.weight"] == "dense"
    assert export_sparse(model, tmp_path / "b.safetensors", min_sparsity=0.4).encodings["fc1.weight"] == "bitmask"


def test_tied_weights_stored_once_and_reload_into_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = prune_(nn.Sequential(nn.Embedding(100, 32), nn.Linear(32, 100, bias=False)), 0.9)
    model[1].weight = model[0].weight
    info = export_sparse(model, tmp_path / "m.safetensors")
    assert info.encodings["1.weight"] == "alias"
    assert info.dense_bytes == 100 * 32 * 4
    fresh = nn.Sequential(nn.Embedding(100, 32), nn.Linear(32, 100, bias=False))
    fresh[1].weight = fresh[0].weight
    loaded = load_sparse(info.path, fresh)
    assert loaded is fresh
    assert fresh[1].weight is fresh[0].weight
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_load_into_model_is_strict(tmp_path: Path) -> None:
    model = net(0.9)
    path = export_sparse(model, tmp_path / "m.safetensors").path
    other = net(0.0, seed=1)
    assert load_sparse(path, other) is other
    assert_bit_identical(other.state_dict(), model.state_dict())
    with pytest.raises(SparseFileError, match="shape mismatch.*fc2.weight"):
        bad = net(0.0)
        bad.fc2 = nn.Linear(48, 11)
        load_sparse(path, bad)
    with pytest.raises(SparseFileError, match="missing from the file.*extra"):
        bigger = net(0.0)
        bigger.extra = nn.Linear(2, 2)
        load_sparse(path, bigger)
    with pytest.raises(SparseFileError, match="not in the model.*fc2"):
        smaller = net(0.0)
        del smaller.fc2
        load_sparse(path, smaller)


def test_encoding_choice_known_answers() -> None:
    # 1024 x 1024 float32: bitmask (131,072 B of index) vs CSR int16 (2 B per nonzero + row pointers).
    assert choose_encoding((1024, 1024), round(0.10 * 1024**2), torch.float32) == "bitmask"
    assert choose_encoding((1024, 1024), round(0.05 * 1024**2), torch.float32) == "csr"
    assert index_bytes("csr", (1024, 1024), 52429) == 1025 * 4 + 52429 * 2
    # Tall, thin embedding at 99 %: row pointers for 100k rows cost more than flat int32 indices.
    assert choose_encoding((100_000, 4), 4000, torch.float32) == "coo"
    # Nothing to gain: dense.
    assert choose_encoding((10, 10), 98, torch.float32) == "dense"  # 13 B mask + 392 B values >= 400 B
    assert choose_encoding((10, 10), 96, torch.float32) == "bitmask"
    assert choose_encoding((4,), 0, torch.complex64) == "dense"


def test_wide_tensor_uses_int32_columns() -> None:
    t = torch.zeros(2, 40_000)
    t[1, 39_999] = 3.0
    t[0, 5] = -1.0
    enc = encode(t, "csr")
    assert enc.parts["col"].dtype == torch.int32
    assert enc.parts["crow"].dtype == torch.int16
    assert torch.equal(decode("csr", enc.parts, enc.shape, enc.dtype), t)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple),
    sparsity=st.sampled_from([0.0, 0.3, 0.9, 0.97, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]),
    seed=st.integers(0, 2**16),
)
def test_every_encoding_round_trips_and_choice_is_smallest(
    shape: tuple[int, ...], sparsity: float, dtype: torch.dtype, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=gen) * 5).to(dtype)
    t[torch.rand(shape, generator=gen) < sparsity] = 0
    sizes = {}
    for encoding in ("dense", "bitmask", "csr", "coo"):
        enc = encode(t, encoding)
        assert enc.encoding == encoding
        back = decode(enc.encoding, enc.parts, enc.shape, enc.dtype)
        assert back.shape == t.shape and back.dtype == t.dtype
        assert torch.equal(bits(back), bits(t))
        sizes[encoding] = enc.nbytes
    chosen = encode(t)
    assert chosen.nbytes == min(sizes.values())
    assert chosen.nbytes <= sizes["dense"]


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A small export holding one tensor of each compressed encoding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 32), nn.Linear(64, 64))
    prune_(model[0], 0.98)
    prune_(model[1], 0.6)
    prune_(model[2], 0.98)
    info = export_sparse(model, tmp_path / "good.safetensors")
    assert [info.encodings[f"{i}.weight"] for i in range(3)] == ["csr", "bitmask", "coo"]
    return info.path


def test_foreign_and_corrupt_files_are_refused(tmp_path: Path, exported: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(SparseFileError, match="not a readable safetensors file"):
        load_sparse(junk)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(SparseFileError, match="not a sparsetrain sparse export"):
        load_sparse(plain)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(exported.read_bytes()[:-100])
    with pytest.raises(SparseFileError, match="corrupt or truncated"):
        load_sparse(truncated)


def _set(tensors: dict[str, torch.Tensor], key: str, fn) -> dict[str, torch.Tensor]:
    return {key: fn(tensors[key].clone())}


def _swap_first_two(t: torch.Tensor) -> torch.Tensor:
    t[[0, 1]] = t[[1, 0]]
    return t


TAMPERINGS = {
    "version": ({"format_version": "99"}, None, "format_version"),
    "json": ({"tensors": "{not json"}, None, "not valid JSON"),
    "col range": (None, lambda s: _set(s, "0.weight::col", lambda t: t.fill_(256)), "column index out of range"),
    "crow": (None, lambda s: _set(s, "0.weight::crow", lambda t: t.flip(0)), "row pointers"),
    "mask": (None, lambda s: _set(s, "1.weight::mask", lambda t: t.zero_()), "mask marks 0 entries"),
    "coo order": (None, lambda s: _set(s, "2.weight::index", _swap_first_two), "strictly increasing"),
    "values dtype": (None, lambda s: _set(s, "0.weight::values", lambda t: t.double()), "dtype"),
    "missing part": (None, lambda s: {"2.weight::index": None}, "missing from the file"),
    "stray": (None, lambda s: {"stray": torch.zeros(2)}, "not described in the metadata"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_tampered_files_give_clear_errors(tmp_path: Path, exported: Path, case: str) -> None:
    metadata, tamper, message = TAMPERINGS[case]
    with safetensors.safe_open(str(exported), framework="pt") as handle:
        meta = dict(handle.metadata())
    stored = safetensors.torch.load_file(str(exported))
    for key, value in (tamper(stored) if tamper else {}).items():
        if value is None:
            del stored[key]
        else:
            stored[key] = value
    meta.update(metadata or {})
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(stored, str(bad), metadata=meta)
    with pytest.raises(SparseFileError, match=message):
        load_sparse(bad)


def test_argument_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_sparsity"):
        export_sparse(nn.Linear(2, 2), tmp_path / "x.safetensors", min_sparsity=1.5)
    with pytest.raises(TypeError, match="model"):
        export_sparse({"w": torch.zeros(2)}, tmp_path / "x.safetensors")  # type: ignore[arg-type]
    assert isinstance(export_sparse(nn.Linear(2, 2), tmp_path / "x.safetensors"), ExportInfo)
