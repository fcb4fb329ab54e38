"""The compact N:M encoding (sparsetrain.sparse.nm_format) in the export: round trip, choice, sizes, corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.nm import NMPattern, as_groups, nm_mask
from sparsetrain.sparse import SparseFileError, export_sparse, load_sparse
from sparsetrain.sparse.encoding import decode, encode
from sparsetrain.sparse.nm_format import NMSpec, find_pattern, nm_nbytes, position_bits


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bytes, so -0.0 and NaN compare exactly."""
    return t.reshape(-1).contiguous().view(torch.uint8) if t.dtype != torch.bool else t


def patterned(shape, pattern, dim, dtype, seed, fewer=0.2, negative_zeros=True):
    """A tensor at most N:M along dim: N:M mask of random scores, some kept entries zeroed, -0.0 zeros."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=gen) * 5
    mask = nm_mask(torch.rand(shape, generator=gen), pattern, dim=dim)
    mask &= torch.rand(shape, generator=gen) >= fewer  # groups with fewer than N nonzeros
    t = (values * mask) if negative_zeros else torch.where(mask, values, torch.zeros(()))
    return t.to(dtype)


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.sampled_from(["1:2", "1:4", "2:4", "3:4", "2:8", "4:8", "5:16", "3:32"]),
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    groups=st.integers(1, 3),
    dim_choice=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]),
    fewer=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_nm_round_trip_is_bit_identical_and_choice_is_smallest(pattern, lead, groups, dim_choice, dtype, fewer, seed):
    p = NMPattern.parse(pattern)
    dim = dim_choice % (len(lead) + 1)
    shape = list(lead)
    shape.insert(dim, p.m * groups)
    if len(shape) < 2:
        shape.append(1)
    shape = tuple(shape)
    t = patterned(shape, pattern, dim, dtype, seed, fewer)
    enc = encode(t, "nm", nm_dim=dim)
    assert enc.encoding == "nm" and enc.nm.dim == dim
    # The generating pattern is one of the candidates, so the one found is no larger.
    found = enc.nm.pattern
    assert bool((as_groups(t != 0, dim, found.m).sum(dim=1) <= found.n).all())
    index_and_values = enc.parts["values"].nbytes + enc.parts["positions"].nbytes
    assert index_and_values == nm_nbytes(t.numel(), found, t.element_size())
    assert index_and_values <= nm_nbytes(t.numel(), p, t.element_size())
    back = decode("nm", enc.parts, enc.shape, enc.dtype, nm=enc.nm)
    assert back.dtype == t.dtype and torch.equal(bits(back), bits(t))
    assert enc.parts["values"].numel() == t.numel() // enc.nm.pattern.m * enc.nm.pattern.n
    sizes = {e: encode(t, e).nbytes for e in ("dense", "bitmask", "csr", "coo")}
    chosen = encode(t, nm_dim=dim)
    assert chosen.nbytes == min([*sizes.values(), enc.nbytes])
    if enc.nbytes <= min(sizes.values()) and enc.nbytes < sizes["dense"]:
        assert chosen.encoding == "nm"  # ties go to N:M
    assert torch.equal(bits(decode(chosen.encoding, chosen.parts, chosen.shape, chosen.dtype, nm=chosen.nm)),
                       bits(t))


def test_layout_of_the_parts():
    t = torch.tensor([[5.0, 6.0, 0.0, 0.0], [7.0, 0.0, 0.0, 0.0]])
    enc = encode(t, "nm", nm_dim=1)
    assert enc.nm == NMSpec(NMPattern(2, 4), 1)  # pairs hold 2 nonzeros, so 1:2 does not fit
    # The second group has one nonzero: its lowest-index zero (position 1) is stored too.
    assert enc.parts["values"].tolist() == [5.0, 6.0, 7.0, 0.0]
    # Positions 0, 1, 0, 1 in 2 bits each, little-endian: 0b01_00_01_00.
    assert enc.parts["positions"].tolist() == [0b01000100]
    assert position_bits(4) == 2 and position_bits(2) == 1 and position_bits(8) == 3 and position_bits(5) == 3


def test_sizes_against_bitmask_known_answers():
    # float32 1024 x 1024: 2:4 ties with a bitmask (1 bit per element), 1:4 and 2:8 beat it, 4:8 does not.
    numel = 1024 * 1024
    bitmask = lambda density: numel // 8 + int(numel * density) * 4
    assert nm_nbytes(numel, NMPattern(2, 4), 4) == bitmask(0.5)
    assert nm_nbytes(numel, NMPattern(1, 4), 4) == bitmask(0.25) - numel // 16
    assert nm_nbytes(numel, NMPattern(2, 8), 4) == bitmask(0.25) - numel // 32
    assert nm_nbytes(numel, NMPattern(4, 8), 4) == bitmask(0.5) + numel // 16
    for pattern, expected in (("2:4", "nm"), ("1:4", "nm"), ("2:8", "nm"), ("4:8", "bitmask")):
        t = patterned((1024, 1024), pattern, 1, torch.float32, 0, fewer=0.0, negative_zeros=False)
        enc = encode(t, nm_dim=1)
        assert enc.encoding == expected, pattern
        if expected == "nm":
            assert str(enc.nm.pattern) == pattern


def test_find_pattern():
    assert find_pattern(torch.randn(8, 8), 1) is None  # dense: no group size fits
    t = patterned((4, 16), "1:4", 1, torch.float32, 1, fewer=0.0)
    assert find_pattern(t, 1) == NMSpec(NMPattern(1, 4), 1)
    assert find_pattern(torch.zeros(4, 8), 1) == NMSpec(NMPattern(1, 8), 1)  # the cheapest M that divides 8
    assert find_pattern(t, 0) is None or find_pattern(t, 0).dim == 0
    with pytest.raises(ValueError, match="follows no N:M pattern"):
        encode(torch.randn(8, 8), "nm", nm_dim=1)


def model_with_patterns() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Conv2d(8, 16, 3), nn.ConvTranspose2d(8, 4, 2),
                          nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with torch.no_grad():
        model[0].weight.mul_(nm_mask(model[0].weight.abs(), "2:4"))
        model[1].weight.mul_(nm_mask(model[1].weight.abs(), "1:4"))
        model[2].weight.mul_(nm_mask(model[2].weight.abs(), "2:8", dim=0))
    return model


def test_export_writes_nm_layers_and_round_trips(tmp_path: Path):
    model = model_with_patterns()
    info = export_sparse(model, tmp_path / "nm.safetensors")
    assert info.patterns == {"0.weight": "2:4", "1.weight": "1:4", "2.weight": "2:8"}
    assert info.encodings["3.weight"] == "dense"  # unpruned
    state = load_sparse(info.path)
    for name, value in model.state_dict().items():
        assert torch.equal(bits(state[name]), bits(value)), name
    with safetensors.safe_open(str(info.path), framework="pt") as handle:
        entries = json.loads(handle.metadata()["tensors"])
    assert entries["2.weight"]["nm"] == {"pattern": "2:8", "dim": 0}
    fresh = model_with_patterns()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    load_sparse(info.path, fresh)
    assert torch.equal(fresh[1].weight, model[1].weight)


def _tamper(path: Path, out: Path, entry_fn=None, part=None, part_fn=None) -> Path:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    stored = safetensors.torch.load_file(str(path))
    entries = json.loads(meta["tensors"])
    if entry_fn:
        entry_fn(entries["0.weight"])
    if part:
        stored[part] = part_fn(stored[part].clone())
    meta["tensors"] = json.dumps(entries)
    safetensors.torch.save_file(stored, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("case,message", [
    ("pattern", "N:M needs"),
    ("dim", "'nm' dim"),
    ("missing", "'nm' must be an object"),
    ("order", "rise strictly"),
    ("count", "stores"),
])
def test_corrupt_nm_entries_are_refused(tmp_path: Path, case: str, message: str):
    info = export_sparse(model_with_patterns(), tmp_path / "nm.safetensors")
    kwargs = {
        "pattern": {"entry_fn": lambda e: e["nm"].update(pattern="4:4")},
        "dim": {"entry_fn": lambda e: e["nm"].update(dim=5)},
        "missing": {"entry_fn": lambda e: e.pop("nm")},
        # Positions of the first group (2 bits each) swapped: 1, 3 -> 3, 1.
        "order": {"part": "0.weight::positions", "part_fn": lambda t: _swap_first_group(t)},
        "count": {"part": "0.weight::values", "part_fn": lambda t: t[:-1]},
    }[case]
    bad = _tamper(info.path, tmp_path / "bad.safetensors", **kwargs)
    with pytest.raises(SparseFileError, match=message):
        load_sparse(bad)


def test_decode_without_the_grouping_is_refused():
    from sparsetrain.sparse.encoding import EncodingError

    enc = encode(patterned((4, 8), "2:4", 1, torch.float32, 0, fewer=0.0), "nm", nm_dim=1)
    with pytest.raises(EncodingError, match="needs its pattern"):
        decode("nm", enc.parts, enc.shape, enc.dtype)


def _swap_first_group(packed: torch.Tensor) -> torch.Tensor:
    first = int(packed[0])
    a, b = first & 0b11, (first >> 2) & 0b11
    if a == b:
        pytest.skip("first group positions equal")
    packed[0] = (first & ~0b1111) | b | (a << 2)
    return packed


def test_nm_groups_follow_the_conv_input_channels():
    # The encoding's groups are the same as the masks': [out, in, kh, kw] grouped along in.
    t = patterned((2, 8, 3, 3), "2:4", 1, torch.float32, 5, fewer=0.0)
    assert bool(((as_groups(t != 0, 1, 4)).sum(dim=1) == 2).all())
    assert find_pattern(t, 1).pattern == NMPattern(2, 4)
