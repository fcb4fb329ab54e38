"""Tests for the native sparse-times-dense kernel (sparsetrain.sparse.spmm) and SparseLinear's use of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.sparse import SparseLinear, convert, spmm

needs_native = pytest.mark.skipif(not spmm.native_available(), reason="native spmm kernel unavailable (no compiler?)")


def pruned(n_in: int, n_out: int, sparsity: float, *, bias: bool = True, seed: int = 0) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen))
        layer.weight.masked_fill_(torch.rand(n_out, n_in, generator=gen) < sparsity, 0.0)
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen))
    return layer


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-6)


def kernel(layer: SparseLinear, x: torch.Tensor, tile: int = 0) -> torch.Tensor | None:
    bias = layer.bias.detach() if layer.bias is not None else None
    return spmm.native_linear(
        x, layer.weight_crow_indices, layer.weight_col_indices, layer.weight_values, bias, layer.out_features, tile=tile
    )


@needs_native
@pytest.mark.parametrize("tile", [0, 1, 2, 4])
@pytest.mark.parametrize("batch", [0, 1, 2, 3, 4, 5, 15, 16, 17, 33, 47, 64, 100, 129])
def test_kernel_matches_dense_for_every_batch_tiling(tile: int, batch: int) -> None:
    # 37 inputs and 53 outputs: neither a multiple of the 16-wide transposes nor of the 16-row write-back.
    layer = pruned(37, 53, 0.8, seed=batch)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(batch, 37, generator=torch.Generator().manual_seed(tile))
    with torch.no_grad():
        got = kernel(sparse, x, tile)
        assert got is not None and got.shape == (batch, 53) and got.is_contiguous()
        assert_close(got, layer(x))


@needs_native
@pytest.mark.parametrize("batch", [1, 7, 40, 130])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_with_two_threads_matches_dense(two_threads: None, batch: int, bias: bool) -> None:
    layer = pruned(300, 70, 0.95, bias=bias)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(batch, 300)
    with torch.inference_mode():
        assert_close(sparse(x), layer(x))


@needs_native
def test_empty_rows_all_zero_layer_and_dense_layer() -> None:
    layer = pruned(64, 40, 0.5)
    with torch.no_grad():
        layer.weight[::3] = 0.0  # every third output row has no nonzero: its output is the bias alone
    x = torch.randn(20, 64)
    with torch.no_grad():
        assert_close(SparseLinear.from_dense(layer)(x), layer(x))
        layer.weight.zero_()
        zero = SparseLinear.from_dense(layer)
        assert zero.nnz == 0
        assert torch.equal(zero(x), layer.bias.expand(20, 40))
        no_bias = SparseLinear.from_dense(nn.Linear(64, 40, bias=False).requires_grad_(False).apply(_zero))
        assert torch.equal(no_bias(x), torch.zeros(20, 40))
        full = pruned(64, 40, 0.0)
        assert_close(SparseLinear.from_dense(full)(x), full(x))


def _zero(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.weight.zero_()


@needs_native
def test_nd_and_strided_inputs_give_contiguous_outputs() -> None:
    layer = pruned(48, 24, 0.9)
    sparse = SparseLinear.from_dense(layer)
    with torch.inference_mode():
        x3 = torch.randn(3, 5, 48)
        y3 = sparse(x3)
        assert y3.shape == (3, 5, 24) and y3.is_contiguous()
        assert_close(y3, layer(x3))
        wide = torch.randn(9, 100)[:, 10:58]  # rows 100 floats apart: read in place with ldx = 100
        assert_close(sparse(wide), layer(wide))
        transposed = torch.randn(48, 9).t()  # column-major: copied to row-major first
        assert_close(sparse(transposed), layer(transposed))
        one = torch.randn(48)
        assert_close(sparse(one), layer(one))


@needs_native
def test_native_and_torch_paths_agree_and_fallback_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = pruned(200, 90, 0.95)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(33, 200)
    with torch.no_grad():
        native_out = sparse(x)
        torch_out = sparse.torch_forward(x)
        assert native_out.is_contiguous() and not torch_out.is_contiguous()  # which path ran
        assert_close(native_out, torch_out)
        monkeypatch.setenv("SPARSETRAIN_NATIVE", "0")
        assert not spmm.native_available()
        fallback = sparse(x)
        assert not fallback.is_contiguous()
        assert_close(fallback, layer(x))


@needs_native
def test_unsupported_calls_use_the_torch_path() -> None:
    layer = pruned(40, 20, 0.9)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(6, 40, requires_grad=True)
    y = sparse(x)  # grad enabled and needed: autograd through torch's CSR matmul
    assert y.requires_grad and not y.is_contiguous()
    y.sum().backward()
    assert_close(x.grad, layer.weight.detach().sum(0).expand(6, 40))
    double = SparseLinear.from_dense(pruned(40, 20, 0.9).double())
    assert kernel(double, torch.randn(6, 40, dtype=torch.float64)) is None
    with torch.no_grad():
        assert not double(torch.randn(6, 40, dtype=torch.float64)).is_contiguous()
        assert kernel(sparse, torch.randn(2, 3, 40)) is None  # 2-D only; forward flattens first
    with pytest.raises(ValueError, match="tile"):
        kernel(sparse, torch.randn(2, 40), tile=3)


@needs_native
def test_state_dict_round_trip_on_the_native_path() -> None:
    model = convert(nn.Sequential(pruned(96, 96, 0.95), nn.ReLU(), pruned(96, 10, 0.9, seed=1)), min_numel=0)
    twin = convert(nn.Sequential(pruned(96, 96, 0.95, seed=5), nn.ReLU(), pruned(96, 10, 0.9, seed=6)), min_numel=0)
    x = torch.randn(17, 96)
    with torch.inference_mode():
        want = model(x)
    state = model.state_dict()
    twin[0] = SparseLinear(
        96, 96, state["0.weight_crow_indices"], state["0.weight_col_indices"], state["0.weight_values"], state["0.bias"]
    )
    twin[2] = SparseLinear(
        96, 10, state["2.weight_crow_indices"], state["2.weight_col_indices"], state["2.weight_values"], state["2.bias"]
    )
    with torch.inference_mode():
        assert torch.equal(twin(x), want)
    twin.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(twin(x), want)


def test_invalid_csr_is_rejected_at_construction_and_load() -> None:
    crow = torch.tensor([0, 1, 2], dtype=torch.int32)
    values = torch.ones(2)
    with pytest.raises(ValueError, match="col_indices must lie in"):
        SparseLinear(4, 2, crow, torch.tensor([0, 4], dtype=torch.int32), values)
    with pytest.raises(ValueError, match="crow_indices must start at 0"):
        SparseLinear(4, 2, torch.tensor([0, 2, 1], dtype=torch.int32), torch.tensor([0, 1]), values)
    layer = SparseLinear(4, 2, crow, torch.tensor([0, 3], dtype=torch.int32), values)
    bad = layer.state_dict()
    bad["weight_col_indices"] = torch.tensor([0, 9], dtype=torch.int32)
    with pytest.raises(ValueError, match="col_indices must lie in"):
        layer.load_state_dict(bad)


@needs_native
def test_kernel_matches_dense_on_a_large_layer_with_widest_tiles() -> None:
    layer = pruned(1024, 300, 0.97)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(130, 1024)
    with torch.no_grad():
        for tile in (1, 2, 4):
            assert_close(kernel(sparse, x, tile), layer(x))
        assert_close(F.relu(sparse(x)), F.relu(layer(x)))
