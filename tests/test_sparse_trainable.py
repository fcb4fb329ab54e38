"""TrainableSparseLinear against a masked dense nn.Linear: products, gradients, optimizers, topology, round trips.

Every comparison is with the masked-dense computation (a dense Linear whose weight is zero outside the mask and whose
gradient is masked), on the native kernels and on the PyTorch path (``SPARSETRAIN_NATIVE=0``).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from sparsetrain.sparse import TrainableSparseLinear, sddmm, spmm
from sparsetrain.streaming_topk import exclude_rows, topk_positions, union_sorted
from sparsetrain.topk import topk_mask

needs_native = pytest.mark.skipif(not sddmm.native_available() or not spmm.native_available(),
                                  reason="native kernels unavailable (no compiler?)")


@pytest.fixture(params=["native", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on the native kernels and again on the PyTorch path."""
    if request.param == "native" and not (sddmm.native_available() and spmm.native_available()):
        pytest.skip("native kernels unavailable")
    if request.param == "torch":
        monkeypatch.setenv("SPARSETRAIN_NATIVE", "0")
    return request.param


def masked_linear(n_in: int, n_out: int, density: float, *, bias: bool = True, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> tuple[nn.Linear, torch.Tensor]:
    """A Linear with random weights zeroed outside a random mask, and the mask."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    mask = torch.rand(n_out, n_in, generator=gen) < density
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen) * mask)
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen))
    return layer, mask


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale + 1e-6)


def gradients(layer: nn.Module, x: torch.Tensor, weight_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and parameter gradients of ``(layer(x) * weight_out).sum()``."""
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    (y * weight_out).sum().backward()
    return (y.detach(), x.grad, *[p.grad for p in layer.parameters()])


# ---------------------------------------------------------------------------------------------------------------
# Products and gradients
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 4, 5, 16, 17, 33, 64, 100, 129])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_masked_dense(path: str, batch: int, bias: bool) -> None:
    # 37 inputs and 53 outputs: neither a multiple of the 16-wide transposes nor of any tile.
    dense, mask = masked_linear(37, 53, 0.2, bias=bias, seed=batch)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    x = torch.randn(batch, 37, generator=torch.Generator().manual_seed(1))
    out = torch.randn(batch, 53, generator=torch.Generator().manual_seed(2))
    y, dx, dw, *db = gradients(sparse, x, out)
    y_ref, dx_ref, dw_ref, *db_ref = gradients(dense, x, out)
    close(y, y_ref)
    close(dx, dx_ref)
    close(dw, dw_ref[mask])
    for got, want in zip(db, db_ref):
        close(got, want)


@needs_native
@pytest.mark.parametrize("tile", [1, 2, 4, 8])
@pytest.mark.parametrize("batch", [0, 1, 3, 4, 15, 16, 17, 47, 64, 129, 200])
def test_sddmm_kernel_for_every_batch_tiling(tile: int, batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    weight = torch.rand(45, 70, generator=gen) < 0.3
    weight[::4] = False  # empty rows: groups of 16 nonzeros cross several row boundaries
    weight[-3:] = False  # and at the end, where only the bias gradient has work
    csr = weight.float().to_sparse_csr()
    crow, col = csr.crow_indices().int(), csr.col_indices().int()
    x = torch.randn(batch, 70, generator=gen, dtype=torch.float64)
    dy = torch.randn(batch, 45, generator=gen, dtype=torch.float64)
    got = sddmm.native_sddmm(x.float(), dy.float(), crow, col, tile=tile)
    want = (dy.t() @ x)[weight].float()
    assert got is not None and got.shape == want.shape
    close(got, want)
    # The bias gradient summed on the way, also for a pattern without any nonzero.
    for crow_, col_, want_ in ((crow, col, want), (torch.zeros_like(crow), col[:0], want[:0])):
        bias_grad = torch.full((45,), float("nan"))
        got = sddmm.checked_sddmm(sddmm.kernels(), x.float(), dy.float(), crow_, col_, tile, bias_grad)
        assert got is not None
        close(got, want_)
        close(bias_grad, dy.sum(0).float())


@needs_native
@pytest.mark.parametrize("n", [0, 5, 16, 37, 5000])
def test_gather_or_zero_kernel(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    values = torch.randn(300, generator=gen)
    source = torch.randint(-2, 300, (n,), generator=gen, dtype=torch.int32)  # some negative: zero there
    got = sddmm.native_gather_or_zero(values, source)
    want = torch.where(source >= 0, values[source.clamp(min=0).long()], 0.0)
    assert got is not None and torch.equal(got, want)
    # and its inverse: distinct slots of a larger tensor, zero elsewhere
    slots = torch.randperm(n + 7, generator=gen)[:n].sort().values.to(torch.int32)
    scattered = sddmm.checked_scatter_or_zero(sddmm.kernels(), got, slots, n + 7)
    assert torch.equal(scattered, torch.zeros(n + 7).index_copy_(0, slots.long(), got))


@needs_native
@pytest.mark.parametrize("batch", [5, 64, 130])
def test_two_threads_give_the_same_gradients(two_threads: None, batch: int) -> None:
    dense, mask = masked_linear(300, 90, 0.05, seed=3)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    x, out = torch.randn(batch, 300), torch.randn(batch, 90)
    two = gradients(sparse, x, out)
    sparse.zero_grad(set_to_none=True)
    torch.set_num_threads(1)
    one = gradients(sparse, x, out)
    for a, b in zip(two, one):
        close(a, b)
    # The weight and bias gradients' summation orders do not depend on the thread count.
    assert torch.equal(two[2], one[2]) and torch.equal(two[3], one[3])


def test_native_float32_matches_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (sddmm.native_available() and spmm.native_available()):
        pytest.skip("native kernels unavailable")
    dense, mask = masked_linear(120, 80, 0.1, seed=4)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    x, out = torch.randn(70, 120), torch.randn(70, 80)
    native = gradients(sparse, x, out)
    sparse.zero_grad(set_to_none=True)
    monkeypatch.setenv("SPARSETRAIN_NATIVE", "0")
    fallback = gradients(sparse, x, out)
    for a, b in zip(native, fallback):
        close(a, b)


def test_gradcheck_float64(path: str) -> None:
    # float64 always takes the PyTorch path; gradcheck checks every gradient against finite differences.
    dense, mask = masked_linear(9, 7, 0.4, seed=5, dtype=torch.float64)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(sparse, {"weight_values": values, "bias": bias}, (x,))

    values = sparse.weight_values.detach().clone().requires_grad_()
    bias = sparse.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (x, values, bias))


def test_nd_inputs_empty_rows_and_extreme_densities(path: str) -> None:
    dense, mask = masked_linear(24, 20, 0.3, seed=6)
    mask[::3] = False
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    x3 = torch.randn(2, 5, 24)
    out = torch.randn(2, 5, 20)
    y, dx, dw, db = gradients(sparse, x3, out)
    y_ref, dx_ref, dw_ref, db_ref = gradients(dense, x3, out)
    assert y.shape == (2, 5, 20) and dx.shape == (2, 5, 24)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref[mask]), (db, db_ref)):
        close(got, want)
    for density in (0.0, 1.0):
        dense, mask = masked_linear(10, 6, density, seed=7)
        sparse = TrainableSparseLinear.from_linear(dense, mask)
        x, out = torch.randn(4, 10), torch.randn(4, 6)
        y, dx, dw, db = gradients(sparse, x, out)
        y_ref, dx_ref, dw_ref, db_ref = gradients(dense, x, out)
        assert sparse.nnz == int(mask.sum())
        close(y, y_ref)
        close(dx, dx_ref)
        close(dw, dw_ref[mask])


@pytest.mark.parametrize("batch", [3, 40])
def test_a_layer_using_few_inputs_reads_only_those(path: str, batch: int) -> None:
    # 11 of 300 inputs hold the active weights: the products read only those (the narrow layout).
    dense, mask = masked_linear(300, 7, 0.5, seed=8)
    used = torch.zeros(300, dtype=torch.bool)
    used[torch.randperm(300, generator=torch.Generator().manual_seed(9))[:11]] = True
    mask &= used
    mask[0, 299] = True  # the last input too: the renumbering must reach the end
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    narrow = sparse._layout().narrow
    assert narrow is not None and narrow.used.tolist() == mask.any(0).nonzero().squeeze(1).tolist()
    x, out = torch.randn(batch, 300), torch.randn(batch, 7)
    y, dx, dw, db = gradients(sparse, x, out)
    y_ref, dx_ref, dw_ref, db_ref = gradients(dense, x, out)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref[mask]), (db, db_ref)):
        close(got, want)
    # A layer using most of its inputs keeps the plain layout.
    assert TrainableSparseLinear.from_linear(dense, torch.ones_like(mask))._layout().narrow is None


@needs_native
@pytest.mark.parametrize("live", [0, 1, 9, 40, 41, 80])
@pytest.mark.parametrize("batch", [3, 40])
@pytest.mark.parametrize("narrow", [False, True])
def test_units_without_gradient_are_left_out_of_the_backward(monkeypatch: pytest.MonkeyPatch, live: int,
                                                              batch: int, narrow: bool) -> None:
    # 80 output units of which `live` get a gradient (the others meet zero output weights, like the units of a
    # hidden layer that a very sparse next layer does not read). Up to half of them (40), the backward takes only
    # their rows of W. The gradients are those of the masked-dense layer either way.
    from sparsetrain.sparse import trainable

    dense, mask = masked_linear(300, 80, 0.3, seed=10)
    if narrow:  # and the narrow layout (few inputs used) on top
        mask[:, 40:] = False
        with torch.no_grad():
            dense.weight.mul_(mask)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    assert (sparse._layout().narrow is not None) == narrow
    taken = []
    original = trainable._backward_of_live_units
    monkeypatch.setattr(trainable, "_backward_of_live_units", lambda *a: taken.append(a[5].units) or original(*a))
    out = torch.randn(batch, 80)
    out[:, torch.randperm(80, generator=torch.Generator().manual_seed(live))[live:]] = 0.0
    units = out.ne(0).any(0).nonzero().squeeze(1).tolist()
    x = torch.randn(batch, 300)
    y, dx, dw, db = gradients(sparse, x, out)
    y_ref, dx_ref, dw_ref, db_ref = gradients(dense, x, out)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref[mask]), (db, db_ref)):
        close(got, want)
    assert [t.tolist() for t in taken] == ([units] if live <= 40 else [])
    # The same units again, without an input gradient (a first layer): the weight and bias gradients alone, from
    # the rows' structures kept by the layout, bit for bit what a layer that built them anew gives.
    kept = sparse._layout().__dict__.get("_live_rows")
    sparse.zero_grad(set_to_none=True)
    (sparse(x) * out).sum().backward()
    close(sparse.weight_values.grad, dw_ref[mask])
    close(sparse.bias.grad, db_ref)
    assert sparse._layout().__dict__.get("_live_rows") is kept
    fresh = TrainableSparseLinear.from_linear(dense, mask)
    (fresh(x) * out).sum().backward()
    assert torch.equal(fresh.weight_values.grad, sparse.weight_values.grad)
    assert torch.equal(fresh.bias.grad, sparse.bias.grad)
    # Other units next (one live unit off, one other on): the structures follow them.
    if 0 < live <= 40:
        other = out.clone()
        other[:, units[0]] = 0.0
        other[:, out.eq(0).all(0).nonzero()[0]] = 1.0
        dense.zero_grad(set_to_none=True)
        sparse.zero_grad(set_to_none=True)
        for got, want in zip(gradients(sparse, x, other)[1:], gradients(dense, x, other)[1:]):
            close(got, want[mask] if want.shape == mask.shape else want)
        assert len(taken) == 4 and sparse._layout().__dict__["_live_rows"] is not kept


@needs_native
@pytest.mark.parametrize("cols", [0, 1, 15, 16, 17, 100])
@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 30])
def test_live_columns_kernel(rows: int, cols: int) -> None:
    gen = torch.Generator().manual_seed(rows * 101 + cols)
    wide = torch.randn(rows, cols + 5, generator=gen)
    a = wide[:, :cols]  # rows with a gap (leading dimension above the width)
    a.mul_(torch.rand(cols, generator=gen) < 0.5)  # whole zero columns
    if rows and cols:
        a[rows - 1, cols - 1] = float("nan")  # NaN is not zero
        a[0, 0] = -0.0  # and -0.0 is
    library = sddmm.kernels()
    want = ((a != 0) | a.isnan()).any(0).nonzero().squeeze(1).tolist()
    got = sddmm.checked_live_columns(library, a, cols)
    assert got is not None and got.dtype == torch.int32 and got.tolist() == want
    if want:
        assert sddmm.checked_live_columns(library, a, len(want) - 1) is None
        assert sddmm.checked_live_columns(library, a, len(want)).tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_live_units_on_both_paths(path: str, dtype: torch.dtype) -> None:
    from sparsetrain.sparse.trainable import live_units

    dy = torch.randn(37, 50, dtype=dtype) * (torch.rand(50, generator=torch.Generator().manual_seed(12)) < 0.3)
    dy[5, 7] = float("nan")
    want = dy.ne(0).any(0).nonzero().squeeze(1)
    got = live_units(dy)
    assert got is not None and got.dtype == torch.int32 and got.tolist() == want.tolist()
    assert live_units(dy, want.numel() - 1) is None
    assert live_units(dy.t().contiguous().t()).tolist() == want.tolist()  # columns with unit stride


@needs_native
def test_select_rows_kernel() -> None:
    _, mask = masked_linear(30, 20, 0.3, seed=11)
    mask[3] = False  # an empty row among the selected ones
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), mask.sum(1).cumsum(0)]).to(torch.int32)
    rows = torch.tensor([0, 3, 4, 19], dtype=torch.int32)
    new_crow, slots = sddmm.checked_select_rows(sddmm.kernels(), crow, rows)
    want = [k for r in rows.tolist() for k in range(int(crow[r]), int(crow[r + 1]))]
    assert slots.tolist() == want
    assert new_crow.tolist() == [0, *torch.tensor([int(crow[r + 1] - crow[r]) for r in rows]).cumsum(0).tolist()]


def test_input_without_grad_skips_the_input_gradient(path: str) -> None:
    dense, mask = masked_linear(30, 10, 0.2)
    sparse = TrainableSparseLinear.from_linear(dense, mask)
    x = torch.randn(8, 30)
    sparse(x).sum().backward()
    dense(x).sum().backward()
    close(sparse.weight_values.grad, dense.weight.grad[mask])
    assert not x.requires_grad and x.grad is None


# ---------------------------------------------------------------------------------------------------------------
# Training with torch.optim
# ---------------------------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05),
    "sgd-momentum-wd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True,
                                                      weight_decay=1e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "adam-amsgrad": lambda params: torch.optim.Adam(params, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}


def two_layer_models(seed: int = 0) -> tuple[nn.Sequential, nn.Sequential, list[torch.Tensor]]:
    """A masked dense MLP 20-32-6 and its TrainableSparseLinear twin, and the masks."""
    first, mask1 = masked_linear(20, 32, 0.25, seed=seed)
    second, mask2 = masked_linear(32, 6, 0.3, seed=seed + 1)
    dense = nn.Sequential(first, nn.Tanh(), second)
    sparse = nn.Sequential(TrainableSparseLinear.from_linear(first, mask1), nn.Tanh(),
                           TrainableSparseLinear.from_linear(second, mask2))
    return dense, sparse, [mask1, mask2]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, masks: list[torch.Tensor] | None = None,
          seed: int = 0) -> None:
    """``steps`` steps on fixed random data; with ``masks``, the dense weights' gradients are masked first."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, target = torch.randn(16, 20, generator=gen), torch.randint(0, 6, (16,), generator=gen)
        nn.functional.cross_entropy(model(x), target).backward()
        if masks is not None:
            for layer, mask in zip((model[0], model[2]), masks):
                layer.weight.grad.mul_(mask)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_steps_match_masked_dense(path: str, name: str) -> None:
    dense, sparse, masks = two_layer_models()
    train(dense, OPTIMIZERS[name](dense.parameters()), 25, masks)
    train(sparse, OPTIMIZERS[name](sparse.parameters()), 25)
    for d, s, mask in zip((dense[0], dense[2]), (sparse[0], sparse[2]), masks):
        assert torch.equal(d.weight.detach()[~mask], torch.zeros(int((~mask).sum())))  # the reference stays masked
        close(s.dense_weight(), d.weight.detach(), rtol=1e-4)
        close(s.bias.detach(), d.bias.detach(), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Topology: replace, apply_mask, compaction
# ---------------------------------------------------------------------------------------------------------------


def state_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v for k, v in optimizer.state[param].items() if isinstance(v, torch.Tensor) and v.shape == param.shape}


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adam-amsgrad", "adamw"])
def test_replace_carries_kept_state_and_zeroes_grown(name: str) -> None:
    _, sparse, _ = two_layer_models(seed=3)
    optimizer = OPTIMIZERS[name](sparse.parameters())
    train(sparse, optimizer, 3)
    layer = sparse[0]
    flat, values = layer.flat_indices(), layer.weight_values.detach().clone()
    states = {k: v.clone() for k, v in state_of(optimizer, layer.weight_values).items()}
    assert states
    pointers = {k: v.data_ptr() for k, v in state_of(optimizer, layer.weight_values).items()}
    keep = torch.ones(layer.nnz, dtype=torch.bool)
    keep[::3] = False
    dropped = flat[~keep]
    inactive = (~layer.mask().reshape(-1)).nonzero().squeeze(1)
    grow = torch.cat([inactive[: int((~keep).sum()) - 2], dropped[:2]])  # two dropped positions grow back
    values_ptr = layer.weight_values.data_ptr()
    layer.replace(keep, grow, optimizer)
    new_flat = layer.flat_indices()
    assert torch.equal(new_flat, torch.sort(torch.cat([flat[keep], grow])).values)
    assert layer.weight_values.data_ptr() == values_ptr  # same count: the slots are reused in place
    assert {k: v.data_ptr() for k, v in state_of(optimizer, layer.weight_values).items()} == pointers
    at = {int(p): i for i, p in enumerate(new_flat)}
    kept_slots = keep.nonzero().squeeze(1)
    kept_new = torch.tensor([at[int(p)] for p in flat[keep]])
    grown_new = torch.tensor([at[int(p)] for p in grow])
    assert torch.equal(layer.weight_values.detach()[kept_new], values[kept_slots])
    assert torch.equal(layer.weight_values.detach()[grown_new], torch.zeros(grow.numel()))
    for key, new in state_of(optimizer, layer.weight_values).items():
        assert torch.equal(new[kept_new], states[key][kept_slots])
        assert torch.equal(new[grown_new], torch.zeros(grow.numel()))
    train(sparse, optimizer, 2)  # the optimizer keeps working


@pytest.mark.parametrize("n_grow", [0, 5, 40])
def test_replace_resizes_values_grad_and_state_together(n_grow: int) -> None:
    _, sparse, _ = two_layer_models(seed=4)
    optimizer = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    train(sparse, optimizer, 2)
    layer = sparse[0]
    param = layer.weight_values
    keep = torch.rand(layer.nnz, generator=torch.Generator().manual_seed(0)) < 0.6
    flat = layer.flat_indices()
    inactive = (~layer.mask().reshape(-1)).nonzero().squeeze(1)
    grow = inactive[torch.randperm(inactive.numel(), generator=torch.Generator().manual_seed(1))[:n_grow]]
    expected_values = dict(zip(flat[keep].tolist(), param.detach()[keep].tolist()))
    expected_avg = dict(zip(flat[keep].tolist(), optimizer.state[param]["exp_avg"][keep].tolist()))
    param.grad = torch.arange(layer.nnz, dtype=torch.float32)
    expected_grad = dict(zip(flat[keep].tolist(), param.grad[keep].tolist()))
    layer.replace(keep, grow, optimizer)
    n_new = int(keep.sum()) + n_grow
    assert layer.weight_values is param and param.shape == (n_new,)
    for tensor in (param.grad, *state_of(optimizer, param).values()):
        assert tensor.shape == (n_new,)
    new_flat = layer.flat_indices().tolist()
    for i, position in enumerate(new_flat):
        assert float(param.detach()[i]) == expected_values.get(position, 0.0)
        assert float(optimizer.state[param]["exp_avg"][i]) == expected_avg.get(position, 0.0)
        assert float(param.grad[i]) == expected_grad.get(position, 0.0)
    param.grad = None
    train(sparse, optimizer, 2)


def test_apply_mask_matches_the_masked_dense_update(path: str) -> None:
    """Train, change the topology on both paths (grown and reset weights and state zeroed), train on: same weights."""
    dense, sparse, masks = two_layer_models(seed=5)
    dense_opt = torch.optim.Adam(dense.parameters(), lr=1e-2)
    sparse_opt = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    train(dense, dense_opt, 4, masks)
    train(sparse, sparse_opt, 4)
    gen = torch.Generator().manual_seed(9)
    new_masks = []
    for index, (d, s, mask) in zip((0, 2), zip((dense[0], dense[2]), (sparse[index] for index in (0, 2)), masks)):
        new = mask.clone()
        active, inactive = mask.nonzero(), (~mask).nonzero()
        drop = active[torch.randperm(active.shape[0], generator=gen)[:4]]
        grow = inactive[torch.randperm(inactive.shape[0], generator=gen)[:4]]
        new[drop[:, 0], drop[:, 1]] = False
        new[grow[:, 0], grow[:, 1]] = True
        reset = torch.zeros_like(mask)
        survivor = new.nonzero()[0]
        reset[survivor[0], survivor[1]] = True  # one weight kept but restarted at zero (dropped and regrown)
        s.apply_mask(new, sparse_opt, reset=reset)
        zero = ~new | reset
        with torch.no_grad():
            d.weight.mul_(~zero)
            for buffer in state_of(dense_opt, d.weight).values():
                buffer.mul_(~zero)
        assert torch.equal(s.mask(), new)
        new_masks.append(new)
    train(dense, dense_opt, 4, new_masks, seed=1)
    train(sparse, sparse_opt, 4, seed=1)
    for d, s in zip((dense[0], dense[2]), (sparse[0], sparse[2])):
        close(s.dense_weight(), d.weight.detach(), rtol=1e-4)


def test_replace_and_apply_mask_validate(path: str) -> None:
    layer = TrainableSparseLinear.from_dense(torch.randn(4, 5), torch.eye(4, 5, dtype=torch.bool))
    keep = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="keep must be a bool tensor of shape"):
        layer.replace(torch.ones(3, dtype=torch.bool), torch.tensor([1]))
    with pytest.raises(ValueError, match="none of them kept"):
        layer.replace(keep, torch.tensor([6]))  # position 6 = (1, 1) is active and kept
    with pytest.raises(ValueError, match="strictly increasing"):
        layer.replace(keep, torch.tensor([2, 2]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\)"):
        layer.replace(keep, torch.tensor([20]))
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        layer.apply_mask(torch.ones(5, 4, dtype=torch.bool))


def test_construction_validates() -> None:
    with pytest.raises(ValueError, match="in_features must be an int"):
        TrainableSparseLinear(0, 3, torch.tensor([0]), torch.ones(1))
    with pytest.raises(ValueError, match="strictly increasing"):
        TrainableSparseLinear(3, 3, torch.tensor([4, 1]), torch.ones(2))
    with pytest.raises(ValueError, match="values must have shape"):
        TrainableSparseLinear(3, 3, torch.tensor([1, 4]), torch.ones(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        TrainableSparseLinear(3, 3, torch.tensor([1]), torch.ones(1, dtype=torch.float16))
    with pytest.raises(ValueError, match="bool tensor shaped like"):
        TrainableSparseLinear.from_dense(torch.randn(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="in_features=3"):
        TrainableSparseLinear.from_dense(torch.randn(3, 3), torch.ones(3, 3, dtype=torch.bool))(torch.randn(2, 4))


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------


def test_dense_round_trip_is_bit_identical() -> None:
    weight = torch.randn(30, 40)
    mask = torch.rand(30, 40) < 0.3
    mask[0, :5] = True
    weight[0, :5] = torch.tensor([0.0, -0.0, 1e-45, float("inf"), -3.0])  # zeros stay active when the mask says so
    layer = TrainableSparseLinear.from_dense(weight, mask)
    assert torch.equal(layer.mask(), mask)
    back = layer.dense_weight()
    masked = torch.where(mask, weight, torch.zeros(()))
    assert torch.equal(back.view(torch.int32), masked.view(torch.int32))  # bits, signed zeros included
    again = TrainableSparseLinear.from_dense(back, layer.mask())
    assert torch.equal(again.weight_values.view(torch.int32), layer.weight_values.detach().view(torch.int32))
    linear = layer.to_linear()
    assert torch.equal(linear.weight.detach(), back)
    assert torch.equal(TrainableSparseLinear.from_linear(linear).mask(), mask & (back != 0))


def test_state_dict_deepcopy_and_pickle_round_trips() -> None:
    dense, mask = masked_linear(16, 12, 0.3, seed=8)
    layer = TrainableSparseLinear.from_linear(dense, mask)
    other = TrainableSparseLinear.from_linear(*masked_linear(16, 12, 0.6, seed=9))
    assert other.nnz != layer.nnz
    other.load_state_dict(layer.state_dict())  # another active count: resized on load
    x = torch.randn(5, 16)
    assert set(layer.state_dict()) == {"weight_values", "bias", "weight_crow_indices", "weight_col_indices"}
    for copy_ in (other, copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(copy_.mask(), layer.mask())
        assert torch.equal(copy_(x), layer(x))
        gradients(copy_, x, torch.ones(5, 12))  # the derived transpose came along
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    state["weight_col_indices"][0] = 99
    with pytest.raises(ValueError, match="col_indices must lie"):
        other.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------
# Dense gradient on demand (RigL's update steps)
# ---------------------------------------------------------------------------------------------------------------


def test_dense_grad_matches_the_dense_weight_gradient_in_row_blocks(path: str) -> None:
    dense, mask = masked_linear(25, 18, 0.2, seed=10)
    layer = TrainableSparseLinear.from_linear(dense, mask)
    with pytest.raises(RuntimeError, match="keep_grad_inputs"):
        layer.dense_grad()
    layer.keep_grad_inputs = True
    for seed in (0, 1):  # two backward passes accumulate, like weight.grad
        gen = torch.Generator().manual_seed(seed)
        x, out = torch.randn(7, 25, generator=gen), torch.randn(7, 18, generator=gen)
        (layer(x) * out).sum().backward()
        (dense(x) * out).sum().backward()
    full = layer.dense_grad()
    close(full, dense.weight.grad)
    close(torch.cat([layer.dense_grad(slice(0, 10)), layer.dense_grad(slice(10, 18))]), full)
    close(full[mask], layer.weight_values.grad)
    layer.clear_grad_inputs()
    layer.keep_grad_inputs = False
    layer(torch.randn(3, 25)).sum().backward()
    with pytest.raises(RuntimeError):
        layer.dense_grad()


# ---------------------------------------------------------------------------------------------------------------
# Growth selection over score blocks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 7, 50, 199, 400])
@pytest.mark.parametrize("block", [1, 13, 64, 1000])
@pytest.mark.parametrize("absolute", [False, True])
def test_topk_positions_over_blocks_equals_topk_mask(path: str, k: int, block: int, absolute: bool) -> None:
    gen = torch.Generator().manual_seed(k + block)
    scores = torch.randint(-5, 6, (400,), generator=gen).float()  # many ties, and signs for `absolute`
    eligible = torch.rand(400, generator=gen) < 0.7
    blocked = torch.where(eligible, scores, float("nan") if absolute else float("-inf"))
    blocks = [(i, blocked[i:i + block]) for i in range(0, 400, block)]
    got = topk_positions(blocks, k, absolute=absolute)
    ranked = scores.abs() if absolute else scores - scores.min()  # topk_mask's eligible wants scores >= 0
    want = topk_mask(ranked, k, eligible).nonzero().squeeze(1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("sizes", [(0, 5), (5, 0), (40, 300), (300, 40), (200, 200)])
def test_union_sorted_is_the_sorted_set_union(path: str, sizes: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(sizes))
    a, b = (torch.randperm(500, generator=gen)[:n].sort().values for n in sizes)  # overlapping draws
    want = torch.tensor(sorted(set(a.tolist()) | set(b.tolist())), dtype=torch.int64)
    assert torch.equal(union_sorted(a, b), want)


@pytest.mark.parametrize("with_kept", [False, True])
def test_exclude_rows_marks_exactly_the_entries_of_the_block(path: str, with_kept: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(9, 7, generator=gen) < 0.4
    layer = TrainableSparseLinear.from_dense(torch.randn(9, 7, generator=gen), mask)
    kept = torch.rand(layer.nnz, generator=gen) < 0.5 if with_kept else None
    excluded = torch.zeros(9 * 7, dtype=torch.bool)
    excluded[layer.flat_indices()[kept] if with_kept else layer.flat_indices()] = True
    block = torch.randn(4 * 7, generator=gen)  # rows 3..6
    exclude_rows(block, layer.weight_crow_indices, layer.weight_col_indices, kept, 3, 7)
    assert torch.equal(block.isnan(), excluded[21:49])


@pytest.mark.parametrize("chunk", [1, 3, 8, 40])
def test_gradient_rows_of_few_live_units_equal_the_dense_gradient(chunk: int) -> None:
    from sparsetrain.sparse.held_layers import GradientRows

    gen = torch.Generator().manual_seed(chunk)
    layer = TrainableSparseLinear.from_dense(torch.randn(40, 12, generator=gen), torch.rand(40, 12, generator=gen) < 0.2)
    pairs = []
    for _ in range(2):  # two backward passes accumulate
        dy = torch.randn(5, 40, generator=gen)
        dy[:, torch.rand(40, generator=gen) < 0.8] = 0  # most units get no gradient
        pairs.append((torch.randn(5, 12, generator=gen), dy))
    want = sum(dy.t() @ x for x, dy in pairs)
    rows = GradientRows(layer, pairs, chunk)
    assert rows.live is not None and rows.live.numel() < 0.75 * 40
    for first in range(0, 40, 8):  # blocks in increasing order, as growth reads them
        torch.testing.assert_close(rows(first, min(first + 8, 40)), want[first:first + 8])
    assert GradientRows(layer, None, chunk)(0, 40).count_nonzero() == 0
