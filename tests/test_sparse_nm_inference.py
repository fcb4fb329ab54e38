"""N:M inference: NMLinear and its native kernel, convert()'s choice, and 2:4 semi-structured weights on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain.nm import nm_mask
from sparsetrain.sparse import NMLinear, SparseLinear, convert, spmm
from sparsetrain.sparse.nm_linear import cpu_pattern
from sparsetrain.sparse.semi_structured import semi_structured_reason, to_semi_structured

needs_native = pytest.mark.skipif(not spmm.native_available(), reason="native kernels unavailable (no compiler?)")


def patterned(n_in: int, n_out: int, pattern: str, *, bias: bool = True, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen))
        layer.weight.masked_fill_(~nm_mask(torch.rand(n_out, n_in, generator=gen), pattern), 0.0)
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen))
    return layer


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-6)


@needs_native
@pytest.mark.parametrize("pattern,n_in", [("2:4", 40), ("1:4", 64), ("2:8", 64), ("1:8", 40), ("3:8", 16),
                                          ("5:16", 272), ("1:2", 6)])
@pytest.mark.parametrize("batch", [0, 1, 3, 4, 5, 16, 17, 33, 64, 100, 129])
def test_kernel_matches_dense_for_every_pattern_and_batch(pattern: str, n_in: int, batch: int) -> None:
    # 53 outputs: not a multiple of the 16-row write-back nor of the 64-row blocks.
    layer = patterned(n_in, 53, pattern, seed=batch)
    fast = NMLinear.from_dense(layer, pattern)
    x = torch.randn(batch, n_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = spmm.native_nm_linear(x, fast.weight_values, fast.weight_positions, fast.bias.detach(),
                                    fast.pattern.n, fast.pattern.m)
        assert got is not None and got.shape == (batch, 53) and got.is_contiguous()
        assert_close(got, layer(x))


@needs_native
@pytest.mark.parametrize("bias", [True, False])
def test_two_threads_wide_layer_and_strided_input(bias: bool) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = patterned(1024, 130, "1:4", bias=bias)  # 1024 inputs: several 256-input blocks
        fast = NMLinear.from_dense(layer, "1:4")
        x = torch.randn(70, 2048)[:, ::2]  # rows not contiguous
        with torch.inference_mode():
            assert_close(fast(x), layer(x))
            batched = torch.randn(3, 5, 1024)
            assert_close(fast(batched), layer(batched))
    finally:
        torch.set_num_threads(before)


def test_torch_path_autograd_and_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = patterned(32, 12, "2:8")
    fast = NMLinear.from_dense(layer, "2:8")
    assert torch.equal(fast.dense_weight(), layer.weight.detach())
    assert fast.weight_values.shape == (12, 8) and fast.weight_positions.dtype == torch.uint8
    assert abs(fast.sparsity - 0.75) < 1e-9
    x = torch.randn(6, 4, 32, requires_grad=True)  # autograd: the PyTorch path, gradient to the input
    out = fast(x)
    assert out.shape == (6, 4, 12)
    assert_close(out, layer(x))
    out.sum().backward()
    assert_close(x.grad, layer.weight.detach().sum(dim=0).expand(6, 4, 32))
    monkeypatch.setenv("SPARSETRAIN_NATIVE", "0")
    with torch.no_grad():
        assert_close(fast(x), layer(x))
    double = NMLinear.from_dense(patterned(16, 5, "1:4", dtype=torch.float64), "1:4")
    assert double(torch.randn(2, 16, dtype=torch.float64)).dtype == torch.float64


def test_state_dict_round_trip_and_corrupt_positions() -> None:
    fast = NMLinear.from_dense(patterned(32, 10, "2:4"), "2:4")
    fresh = NMLinear.from_dense(patterned(32, 10, "2:4", seed=5), "2:4")
    fresh.load_state_dict(fast.state_dict())
    assert torch.equal(fresh.dense_weight(), fast.dense_weight())
    bad = fast.state_dict()
    bad["weight_positions"] = bad["weight_positions"].flip(1)  # positions fall within groups
    with pytest.raises(ValueError, match="rise strictly"):
        fresh.load_state_dict(bad)
    bad["weight_positions"] = torch.full_like(bad["weight_positions"], 9)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        fresh.load_state_dict(bad)


def test_from_dense_and_constructor_validation() -> None:
    with pytest.raises(ValueError, match="does not follow 1:4"):
        NMLinear.from_dense(patterned(16, 4, "2:4"), "1:4")
    with pytest.raises(ValueError, match="multiple of M=4"):
        NMLinear(6, 2, "1:4", torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        NMLinear(8, 2, "1:4", torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float32 or float64"):
        NMLinear(8, 2, "1:4", torch.zeros(2, 2, dtype=torch.float16), torch.zeros(2, 2, dtype=torch.uint8))


def test_convert_chooses_by_pattern_and_fill() -> None:
    model = nn.Sequential(
        patterned(256, 256, "1:4"),  # 75 %, fills 1:4: NMLinear
        patterned(256, 256, "2:8", seed=1),  # 75 %, fills 2:8: NMLinear
        patterned(256, 256, "2:4", seed=2),  # 50 %: below the default min_sparsity, dense
        nn.Linear(256, 256),
    )
    with torch.no_grad():  # 99 % unstructured: fits 1:8 by chance, but fills 8 % of it: CSR
        model[3].weight.masked_fill_(torch.rand(256, 256, generator=torch.Generator().manual_seed(3)) < 0.99, 0.0)
    fast = convert(model, min_numel=0)
    assert [type(m) for m in fast] == [NMLinear, NMLinear, nn.Linear, SparseLinear]
    assert str(fast[0].pattern) == "1:4" and str(fast[1].pattern) == "2:8"
    assert cpu_pattern(model[3].weight.detach()) is None
    x = torch.randn(9, 256)
    with torch.no_grad():
        assert_close(fast(x), model(x))
    # 2:4 on a CPU does not pay: with a lower threshold it becomes CSR, never NMLinear.
    assert type(convert(model[2], min_sparsity=0.5, min_numel=0)) is SparseLinear
    # float64 goes to CSR (NMLinear's kernel is float32).
    assert type(convert(patterned(64, 64, "1:4", dtype=torch.float64), min_numel=0)) is SparseLinear


def test_semi_structured_reasons_on_this_machine() -> None:
    assert "float16 or bfloat16" in semi_structured_reason(patterned(64, 32, "2:4"))
    assert "not 2:4" in semi_structured_reason(patterned(64, 32, "3:4", dtype=torch.float16))
    cpu_layer = patterned(64, 32, "2:4", dtype=torch.float16)
    if not torch.cuda.is_available():
        assert "CUDA only" in semi_structured_reason(cpu_layer)
        assert to_semi_structured(cpu_layer) is not None and type(cpu_layer.weight) is nn.Parameter


def _cuda_2_4_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device: semi-structured 2:4 tensors need one"
    if torch.cuda.get_device_capability() < (8, 0):
        return "the GPU predates sparse tensor cores (compute capability < 8.0)"
    return None


@pytest.mark.skipif(_cuda_2_4_reason() is not None, reason=str(_cuda_2_4_reason()))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_convert_makes_2_4_weights_semi_structured_on_cuda(dtype: torch.dtype) -> None:
    model = nn.Sequential(patterned(256, 128, "2:4", dtype=dtype), nn.ReLU(), patterned(128, 64, "3:4")).cuda()
    fast = convert(model)
    assert isinstance(fast[0].weight, torch.sparse.SparseSemiStructuredTensor)
    assert type(fast[2].weight) is nn.Parameter  # not 2:4 (and float32): dense
    x = torch.randn(64, 256, device="cuda", dtype=dtype)
    with torch.inference_mode():
        got = fast[0](x)
        want = model[0](x)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
