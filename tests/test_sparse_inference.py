"""Tests for sparsetrain.sparse sparse inference: SparseLinear and convert()."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsetrain.sparse.linear as linear_module
from sparsetrain.sparse import DEFAULT_MIN_SPARSITY, SparseLinear, convert


def sparse_linear(n_in: int, n_out: int, sparsity: float, *, bias: bool = True, seed: int = 0) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen))
        flat = layer.weight.view(-1)
        flat[torch.randperm(flat.numel(), generator=gen)[: round(sparsity * flat.numel())]] = 0.0
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen))
    return layer


def mlp(sparsities: tuple[float, ...], width: int = 96) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, s in enumerate(sparsities):
        layers += [sparse_linear(width, width, s, seed=i), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    # Summation order differs from the dense kernel: relative 1e-5 plus an absolute floor
    # proportional to the magnitude of the outputs (entries near 0 have no relative precision).
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-7)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5,), (7, 5), (2, 3, 4, 5)])
def test_sparse_linear_matches_dense_for_nd_inputs(bias: bool, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    layer = sparse_linear(shape[-1] * 8, 24, 0.9, bias=bias).to(dtype)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(*shape[:-1], shape[-1] * 8, dtype=dtype)
    with torch.no_grad():
        y = sparse(x)
        assert y.shape == (*shape[:-1], 24)
        assert_close(y, layer(x))
    assert sparse.nnz == int((layer.weight != 0).sum())
    assert sparse.sparsity == pytest.approx(0.9, abs=1e-3)
    assert torch.equal(sparse.dense_weight(), layer.weight.detach())


def test_batch_is_cut_into_slabs_without_changing_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linear_module, "SLAB_BYTES", 1)  # forces the smallest slab, MIN_SLAB rows
    layer = sparse_linear(32, 16, 0.8)
    sparse = SparseLinear.from_dense(layer)
    assert sparse._slab_rows() == linear_module.MIN_SLAB
    x = torch.randn(3 * linear_module.MIN_SLAB + 5, 32)
    with torch.inference_mode():
        assert_close(sparse(x), layer(x))


def test_slab_size_tracks_input_width() -> None:
    rows = {n: SparseLinear.from_dense(sparse_linear(n, 4, 0.9))._slab_rows() for n in (1024, 2048, 4096)}
    assert rows == {1024: 128, 2048: 64, 4096: 64}  # 512 KiB of float32 x.T per call, at least 64 rows


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    batch=st.integers(0, 70),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    seed=st.integers(0, 1000),
)
def test_sparse_linear_invariant(n_in: int, n_out: int, batch: int, sparsity: float, seed: int) -> None:
    layer = sparse_linear(n_in, n_out, sparsity, seed=seed)
    x = torch.randn(batch, n_in, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert_close(SparseLinear.from_dense(layer)(x), layer(x))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_convert_mlp_matches_dense(mode: str) -> None:
    assert 0.5 < DEFAULT_MIN_SPARSITY <= 0.95
    model = mlp((0.95, 0.5, 0.99, DEFAULT_MIN_SPARSITY)).eval()
    fast = convert(model, min_numel=0)
    kinds = [type(m) for m in fast if not isinstance(m, nn.ReLU)]
    assert kinds == [SparseLinear, nn.Linear, SparseLinear, SparseLinear]  # the threshold itself converts
    x = torch.randn(4, 6, 96)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        assert_close(fast(x), model(x))


def test_convert_thresholds_and_copy_semantics() -> None:
    model = mlp((0.95, 0.6))
    copied = convert(model, min_numel=0)
    assert copied is not model and isinstance(model[0], nn.Linear)  # original untouched
    assert isinstance(copied[0], SparseLinear) and isinstance(copied[2], nn.Linear)
    low = convert(model, min_sparsity=0.5, min_numel=0)
    assert isinstance(low[2], SparseLinear)
    big_only = convert(model, min_numel=96 * 96 + 1)
    assert all(type(m) is nn.Linear for m in big_only if not isinstance(m, nn.ReLU))
    same = convert(model, min_numel=0, inplace=True)
    assert same is model and isinstance(model[0], SparseLinear)


def test_convert_single_linear_and_shared_layers() -> None:
    layer = sparse_linear(400, 400, 0.95)
    assert isinstance(convert(layer), SparseLinear)
    assert convert(sparse_linear(400, 400, 0.5)).__class__ is nn.Linear
    shared = nn.Sequential(layer, nn.ReLU(), layer)
    fast = convert(shared)
    assert isinstance(fast[0], SparseLinear) and fast[0] is fast[2]


def test_convert_leaves_unsupported_layers_dense() -> None:
    attention = nn.MultiheadAttention(96, 4, batch_first=True)
    with torch.no_grad():
        attention.out_proj.weight.zero_()
    half = sparse_linear(300, 300, 0.99).to(torch.bfloat16)
    model = nn.ModuleDict({"attention": attention, "low_precision": half})
    fast = convert(model, min_numel=0)
    assert type(fast["attention"].out_proj) is type(attention.out_proj)  # read directly by its parent
    assert type(fast["low_precision"]) is nn.Linear


def test_converted_model_state_dict_and_deepcopy_round_trip() -> None:
    fast = convert(mlp((0.95, 0.95)), min_numel=0)
    x = torch.randn(3, 96)
    with torch.no_grad():
        want = fast(x)
        twin = convert(mlp((0.95, 0.95)), min_numel=0)
        twin.load_state_dict(fast.state_dict())
        assert torch.equal(twin(x), want)
        assert torch.equal(copy.deepcopy(fast)(x), want)
    assert set(fast[0].state_dict()) == {"weight_crow_indices", "weight_col_indices", "weight_values", "bias"}


def test_input_gradient_matches_dense_and_weight_gets_none() -> None:
    layer = sparse_linear(40, 20, 0.9)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(6, 40, requires_grad=True)
    sparse(x).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    layer(x).square().sum().backward()
    assert_close(got, x.grad)
    assert not sparse.weight_values.requires_grad and sparse.bias.grad is None


def test_argument_validation() -> None:
    model = mlp((0.9,))
    with pytest.raises(ValueError, match="min_sparsity"):
        convert(model, min_sparsity=1.2)
    with pytest.raises(ValueError, match="min_numel"):
        convert(model, min_numel=-1)
    with pytest.raises(TypeError, match="model"):
        convert("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float32 or float64"):
        SparseLinear.from_dense(nn.Linear(3, 3).half())
    with pytest.raises(ValueError, match="in_features=96"):
        SparseLinear.from_dense(model[0])(torch.randn(2, 95))
