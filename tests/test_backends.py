"""Sparse storage (``backend="sparse"``) against the masked-dense path: same masks, same weights, same API.

Every comparison runs the two backends side by side on the same model, data and seed. Exact-arithmetic cases
(integer weights and data, float32 native kernels) check that given the same weights and gradients both choose the
same masks, ties included; float64 runs over many updates check whole training runs.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import pickle

import pytest
import torch
from torch import Tensor, nn

import sparsetrain
from sparsetrain.enforcement import DenseMaskEnforcer
from sparsetrain.masks import FlatMask, random_masks
from sparsetrain.sparse import TrainableSparseLinear
from sparsetrain.sparse import held_layers
from sparsetrain.sparse import storage_masks
from sparsetrain.sparse.backend import PackedMasks, SparseEnforcer, SparseMasks, sparse_is_faster

STEPS = 24


class Hybrid(nn.Module):
    """An Embedding (stays masked-dense) feeding two Linear layers (held sparse)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.fc1 = nn.Linear(40, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.embed(tokens).flatten(1))))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5))


def make(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Hybrid() if kind == "hybrid" else mlp()
    return model.to(dtype)


def batch(kind: str, step: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    x = torch.randint(0, 30, (8, 5), generator=g) if kind == "hybrid" else torch.randn(8, 12, generator=g).to(dtype)
    return x, torch.randint(0, 5, (8,), generator=g)


METHODS = {
    "static": dict(method="static"),
    "set": dict(method="set", update_every=3, stop_at=0.75),
    "rigl": dict(method="rigl", update_every=3, stop_at=0.75),
    "rigl-forbid": dict(method="rigl", update_every=3, regrow_mode="forbid"),
    "rigl-zero-global": dict(method="rigl", update_every=3, regrow_mode="zero", scope="global"),
    "snfs": dict(method="snfs", update_every=3),
    "granet-st": dict(method="granet", update_every=3, initial_sparsity=0.5, prune_end=STEPS // 2),
    "granet-st-layer": dict(method="granet", update_every=3, initial_sparsity=0.5, prune_end=STEPS // 2,
                            distribution="uniform", regrow_mode="zero"),
    "gmp": dict(method="gmp", update_every=3, initial_sparsity=0.5, prune_end=STEPS // 2, scope="global"),
}


def build(backend: str, kind: str, spec: dict, optimizer: str = "sgd", dtype: torch.dtype = torch.float64,
          **extra):  # noqa: ANN201
    model = make(kind, dtype)
    params = model.parameters()
    opt = (torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=0.01, weight_decay=0.05, amsgrad=True) if optimizer == "adamw"
           else torch.optim.Adagrad(params, lr=0.1, initial_accumulator_value=0.1))
    options = {k: v for k, v in spec.items() if k != "method"}
    sp = sparsetrain.METHODS[spec["method"]](model, opt, sparsity=0.8, total_steps=STEPS, seed=3, backend=backend,
                                             **options, **extra)
    return model, opt, sp


def step(model: nn.Module, opt: torch.optim.Optimizer, sp: sparsetrain.Sparsifier, kind: str, t: int,
         dtype: torch.dtype = torch.float64) -> bool:
    x, y = batch(kind, t, dtype)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    changed = sp.step()
    opt.zero_grad(set_to_none=True)
    return changed


def dense_weights(sp: sparsetrain.Sparsifier) -> dict[str, Tensor]:
    """The sparsified weights in dense form, whichever storage holds them."""
    layers = getattr(sp.enforcer, "layers", {})
    return {n: layers[n].dense_weight() if n in layers else p.detach() for n, p in sp.params.items()}


def assert_same_masks(a: sparsetrain.Sparsifier, b: sparsetrain.Sparsifier) -> None:
    assert list(a.masks) == list(b.masks)
    for name in a.masks:
        assert torch.equal(a.masks[name], b.masks[name]), name


# ---------------------------------------------------------------------------------------------------------------
# Same masks as the masked-dense path
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "hybrid"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_chooses_the_same_masks_and_weights_as_the_dense_path(name, kind):
    spec = METHODS[name]
    dense = build("dense", kind, spec)
    sparse = build("sparse", kind, spec)
    assert isinstance(sparse[2].enforcer, SparseEnforcer) and isinstance(sparse[2].masks, SparseMasks)
    held = set(sparse[2].enforcer.layers)
    assert held == ({"fc1.weight", "fc2.weight"} if kind == "hybrid" else {"0.weight", "2.weight", "4.weight"})
    assert_same_masks(dense[2], sparse[2])
    updates = 0
    for t in range(STEPS):
        changed = step(*dense, kind, t)
        assert step(*sparse, kind, t) == changed
        updates += changed
        assert_same_masks(dense[2], sparse[2])
        ours = dense_weights(sparse[2])
        for n, w in dense_weights(dense[2]).items():
            torch.testing.assert_close(ours[n], w, rtol=1e-10, atol=1e-12)
        assert sparse[2].current_sparsity() == dense[2].current_sparsity()
        assert sparse[2].itop_rate() == dense[2].itop_rate()
    assert updates == (0 if name == "static" else sum(dense[2].is_update_step(t) for t in range(1, STEPS + 1)))
    assert str(sparse[2].report()) == str(dense[2].report())
    for n in held:  # the optimizer holds state for the active weights only
        layer = sparse[2].enforcer.layers[n]
        assert sparse[1].state[layer.weight_values]["momentum_buffer"].shape == (layer.nnz,)


@pytest.mark.parametrize("name", ["rigl", "granet-st", "snfs", "gmp"])
def test_auto_that_holds_nothing_sparse_is_the_dense_path_bit_for_bit(name):
    dense = build("dense", "hybrid", METHODS[name], dtype=torch.float32)
    auto = build("auto", "hybrid", METHODS[name], dtype=torch.float32)  # layers too small to be held sparse
    assert auto[2].enforcer.layers == {} and all(isinstance(m, (nn.Linear, nn.Embedding)) for m in auto[0].children())
    for t in range(STEPS):
        step(*dense, "hybrid", t, torch.float32)
        step(*auto, "hybrid", t, torch.float32)
        assert auto[2].enforcer.optimizer_steps == auto[2].enforcer.dense.optimizer_steps == t + 1
    assert_same_masks(dense[2], auto[2])
    for (n, a), b in zip(dense[0].state_dict().items(), auto[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def _exact_setup(backend: str, spec: dict):  # noqa: ANN202
    """Integer weights (not rescaled: ``sparse_init="none"``), inputs and output gradients, SGD with lr 1: every
    product is exact in float32, so both backends see bit-identical weights and gradients (with many ties)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    options = {k: v for k, v in spec.items() if k != "method"}
    sp = sparsetrain.METHODS[spec["method"]](model, opt, sparsity=0.7, total_steps=4, seed=5, backend=backend,
                                             sparse_init="none", **{**options, "update_every": 1})
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 3, (4, 12), generator=g).float()
    upstream = torch.randint(-1, 2, (4, 6), generator=g).float()
    (model(x) * upstream).sum().backward()
    opt.step()
    return model, sp


@pytest.mark.parametrize("name", ["set", "rigl", "rigl-forbid", "rigl-zero-global", "granet-st", "granet-st-layer",
                                  "gmp"])
def test_given_the_same_weights_and_gradients_the_masks_are_the_same_ties_included(name):
    spec = {**METHODS[name], "stop_at": 1.0} if METHODS[name]["method"] in ("set", "rigl") else METHODS[name]
    if spec["method"] in ("granet", "gmp"):
        spec = {**spec, "prune_end": 3}
    dense_model, dense = _exact_setup("dense", spec)
    sparse_model, sparse = _exact_setup("sparse", spec)
    assert dense.step() and sparse.step()
    assert_same_masks(dense, sparse)
    for n, w in dense_weights(dense).items():
        assert torch.equal(dense_weights(sparse)[n], w), n


def test_a_lottery_level_static_with_given_masks_trains_alike():
    """An IMP level retrains a fixed mask: ``Static(masks=...)`` on either storage."""
    g = torch.Generator().manual_seed(11)
    masks = {name: torch.rand(p.shape, generator=g) < 0.3 for name, p in make("mlp").named_parameters()
             if p.dim() == 2}
    runs = []
    for backend in ("dense", "sparse"):
        model = make("mlp")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sp = sparsetrain.Static(model, opt, total_steps=STEPS, masks=masks, backend=backend)
        for t in range(6):
            step(model, opt, sp, "mlp", t)
        runs.append(sp)
    assert_same_masks(*runs)
    assert all(torch.equal(runs[1].masks[n], m) for n, m in masks.items())
    for n, w in dense_weights(runs[0]).items():
        torch.testing.assert_close(dense_weights(runs[1])[n], w, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Optimizer state, dense gradient, storage
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adamw", "adagrad"])
def test_any_optimizer_trains_the_values_like_the_dense_path(optimizer):
    dense = build("dense", "mlp", METHODS["rigl"], optimizer)
    sparse = build("sparse", "mlp", METHODS["rigl"], optimizer)
    for t in range(12):
        step(*dense, "mlp", t)
        step(*sparse, "mlp", t)
    assert_same_masks(dense[2], sparse[2])
    for n, w in dense_weights(dense[2]).items():
        torch.testing.assert_close(dense_weights(sparse[2])[n], w, rtol=1e-9, atol=1e-12)
    values = {id(layer.weight_values) for layer in sparse[2].enforcer.layers.values()}
    held = [p for group in sparse[1].param_groups for p in group["params"] if id(p) in values]
    assert len(held) == 3 and all(p.dim() == 1 for p in held)


def test_grown_slots_restart_with_zero_value_and_zero_state_and_a_shrinking_set_is_compacted():
    model, opt, sp = build("sparse", "mlp", METHODS["granet-st"], "adamw")
    before = {n: layer.nnz for n, layer in sp.enforcer.layers.items()}
    for t in range(3):
        x, y = batch("mlp", t)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        positions = {n: layer.flat_indices() for n, layer in sp.enforcer.layers.items()}
        assert sp.step() == (t == 2)
        opt.zero_grad()
    grew = 0
    for n, layer in sp.enforcer.layers.items():
        assert layer.nnz < before[n]  # GraNet's pruning shrank the set...
        state = opt.state[layer.weight_values]
        assert all(v.shape == (layer.nnz,) for k, v in state.items() if k != "step")  # ...and the state with it
        grown = ~torch.isin(layer.flat_indices(), positions[n])
        grew += int(grown.sum())
        assert bool((layer.weight_values[grown] == 0).all())
        assert all(bool((v[grown] == 0).all()) for k, v in state.items() if k != "step")
    assert grew > 0


def test_the_dense_gradient_is_kept_only_for_steps_that_read_it_and_walked_one_layer_at_a_time(monkeypatch):
    monkeypatch.setattr(held_layers, "GROWTH_BLOCK", 64)
    monkeypatch.setattr(held_layers, "GROWTH_MIN_ROWS", 1)
    calls: list[tuple[int, int, int]] = []
    original = TrainableSparseLinear.dense_grad

    def spy(self, rows=None, pairs=None):  # noqa: ANN001, ANN202
        calls.append((id(self), rows.start, rows.stop))
        return original(self, rows, pairs)

    monkeypatch.setattr(TrainableSparseLinear, "dense_grad", spy)
    for name, reads in (("rigl", True), ("set", False)):
        model, opt, sp = build("sparse", "mlp", METHODS[name])
        layers = list(sp.enforcer.layers.values())
        calls.clear()
        for t in range(6):
            assert all(layer.keep_grad_inputs == (reads and sp.is_update_step(t + 1)) for layer in layers)
            step(model, opt, sp, "mlp", t)
        if not reads:
            assert calls == []
            continue
        # Two updates; per update every layer's blocks in turn, each block at most GROWTH_BLOCK entries.
        order = [layer for layer, _, _ in calls]
        firsts = [i for i in range(len(order)) if i == 0 or order[i] != order[i - 1]]
        assert len(firsts) == 2 * len(layers)
        by_id = {id(layer): layer for layer in layers}
        assert all((stop - start) * by_id[i].in_features <= max(64, by_id[i].in_features) for i, start, stop in calls)
        assert all(layer._grad_inputs.pairs == [] for layer in layers) and sp.enforcer._ready == {}


@pytest.mark.parametrize("chunk", [1 << 16, 7])  # 7: bits set over many small passes (a large layer's update)
def test_random_masks_in_blocks_are_the_dense_ones_and_packed_masks_count_like_bool_ones(chunk, monkeypatch):
    monkeypatch.setattr(storage_masks, "_SET_CHUNK", chunk)
    params = {"a": torch.empty(300, 70, device="meta"), "b": torch.zeros(33, 20), "c": torch.empty(1000, 90)}
    for scope, distribution in (("layer", "erk"), ("global", "uniform")):
        dense = random_masks(params | {"a": torch.empty(300, 70)}, 0.9, distribution,
                             torch.Generator().manual_seed(4), scope=scope)
        flat = random_masks(params, 0.9, distribution, torch.Generator().manual_seed(4), scope=scope, flat={"a", "c"})
        assert isinstance(flat["a"], FlatMask) and isinstance(flat["b"], Tensor)
        for n in params:
            assert torch.equal(flat[n].to_bool() if n != "b" else flat[n], dense[n])
    packed = PackedMasks({"m": (70, 130)}, {"m": torch.device("cpu")})
    truth = torch.zeros(70, 130, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    kinds = []
    for density in (0.001, 0.002, 0.01, 0.2, 0.2):  # positions while below 1/64 of the entries, then bits
        add = torch.rand(70, 130, generator=g) < density
        packed.add("m", add.reshape(-1).nonzero().squeeze(1))
        truth |= add
        kinds.append(packed.store["m"].dtype)
        assert torch.equal(packed["m"], truth) and packed.count("m") == int(truth.sum())
    assert kinds[0] == torch.int64 and kinds[-1] == torch.uint8


def test_auto_holds_only_large_float32_cpu_linears_at_low_density():
    assert sparse_is_faster((4096, 4096), 0.05, torch.float32, torch.device("cpu"))
    assert not sparse_is_faster((4096, 4096), 0.9, torch.float32, torch.device("cpu"))
    assert not sparse_is_faster((64, 64), 0.05, torch.float32, torch.device("cpu"))
    assert not sparse_is_faster((4096, 4096), 0.05, torch.float64, torch.device("cpu"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsetrain.RigL(model, opt, sparsity=0.9, total_steps=10, distribution="uniform", backend="auto")
    assert set(sp.enforcer.layers) == {"0.weight"} and isinstance(model[2], nn.Linear)
    assert isinstance(sp.enforcer.dense, DenseMaskEnforcer) and list(sp.enforcer.dense.params) == ["2.weight"]


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------


def test_export_gives_back_the_masked_dense_model_and_optimizer():
    dense = build("dense", "hybrid", METHODS["rigl"])
    sparse = build("sparse", "hybrid", METHODS["rigl"])
    for t in range(7):
        step(*dense, "hybrid", t)
        step(*sparse, "hybrid", t)
    dense_model, sparse_model = dense[2].export(), sparse[2].export()
    assert [type(m) for m in sparse_model.modules()] == [type(m) for m in dense_model.modules()]
    theirs = dict(dense_model.named_parameters())
    for name, param in sparse_model.named_parameters():
        torch.testing.assert_close(param, theirs[name], rtol=1e-10, atol=1e-12)
    w = sparse_model.fc1.weight
    assert bool((w[~sparse[2].masks["fc1.weight"]] == 0).all())
    assert not torch.signbit(w[w == 0]).any()  # +0.0 where inactive
    opt = sparse[1]
    assert any(p is w for group in opt.param_groups for p in group["params"])
    assert opt.state[w]["momentum_buffer"].shape == w.shape
    assert not opt._optimizer_step_post_hooks
    x, y = batch("hybrid", 0)
    nn.functional.cross_entropy(sparse_model(x), y).backward()
    opt.step()  # the optimizer goes on with the dense weights


@pytest.mark.parametrize("name", ["rigl", "granet-st", "snfs"])
def test_checkpoint_and_resume_are_bit_exact(name):
    spec = METHODS[name]
    model, opt, sp = build("sparse", "mlp", spec)
    for t in range(8):
        step(model, opt, sp, "mlp", t)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "sparsifier": sp.state_dict()}, buffer)
    assert any(k.endswith("weight_values") for k in model.state_dict())
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = build("sparse", "mlp", spec)
    fresh[0].load_state_dict(saved["model"])
    fresh[1].load_state_dict(saved["optimizer"])
    fresh[2].load_state_dict(saved["sparsifier"])
    for t in range(8, STEPS):
        step(model, opt, sp, "mlp", t)
        step(*fresh, "mlp", t)
        assert_same_masks(sp, fresh[2])
    for (n, a), b in zip(model.state_dict().items(), fresh[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert sp.itop_rate() == fresh[2].itop_rate()


def test_deepcopy_and_pickle_train_on_identically():
    model, opt, sp = build("sparse", "hybrid", METHODS["set"])
    for t in range(4):
        step(model, opt, sp, "hybrid", t)
    copies = [copy.deepcopy((model, opt, sp)), pickle.loads(pickle.dumps((model, opt, sp)))]
    for t in range(4, 12):
        step(model, opt, sp, "hybrid", t)
        for c in copies:
            step(*c, "hybrid", t)
    for c in copies:
        assert c[2].enforcer.layers["fc1.weight"] is c[0].fc1 and c[2].model is c[0]
        assert_same_masks(sp, c[2])
        for (n, a), b in zip(model.state_dict().items(), c[0].state_dict().values(), strict=True):
            assert torch.equal(a, b), n


# ---------------------------------------------------------------------------------------------------------------
# Models that never exist dense
# ---------------------------------------------------------------------------------------------------------------


def test_a_meta_model_is_materialised_sparse_with_the_masks_a_real_one_would_draw():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(50, 400), nn.ReLU(), nn.Linear(400, 7))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsetrain.SET(model, opt, sparsity=0.95, total_steps=20, update_every=2, seed=9, backend="sparse",
                         sparse_init="none")
    torch.manual_seed(0)
    real = sparsetrain.SET(nn.Sequential(nn.Linear(50, 400), nn.ReLU(), nn.Linear(400, 7)), None, sparsity=0.95,
                           total_steps=20, update_every=2, seed=9, sparse_init="none")
    assert_same_masks(real, sp)
    assert not any(p.is_meta for p in model.parameters())
    assert all(p.dim() == 1 for group in opt.param_groups for p in group["params"])
    bound = 1 / math.sqrt(50)
    assert float(model[0].weight_values.detach().abs().max()) <= bound
    assert float(model[0].bias.detach().abs().max()) <= bound
    x, y = torch.randn(16, 50), torch.randint(0, 7, (16,))
    for _ in range(6):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()
        opt.zero_grad()
    assert sp.current_sparsity() == pytest.approx(0.95, abs=1e-3)
    with torch.device("meta"):
        conv = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="meta device"):
        sparsetrain.Static(conv, torch.optim.SGD(conv.parameters(), lr=0.1), sparsity=0.5, total_steps=2,
                           backend="sparse")


@pytest.mark.parametrize("name", ["rigl", "granet-st"])
def test_topology_events_fire_on_sparse_storage_as_on_the_dense_path(name):
    """Subscribers see the same events on either storage; the dense gradient of a held layer exists only in row
    blocks during the update, so its ``grad_share`` is None there (the masked-dense tensors keep theirs)."""
    events: dict[str, list] = {"dense": [], "sparse": []}
    runs = {}
    for backend in events:
        runs[backend] = build(backend, "hybrid", METHODS[name])
        runs[backend][2].subscribe(events[backend].append)
    for t in range(STEPS):
        for backend in events:
            step(*runs[backend], "hybrid", t)
    assert len(events["sparse"]) == len(events["dense"]) > 0
    held = set(runs["sparse"][2].enforcer.layers)
    for ours, theirs in zip(events["sparse"], events["dense"], strict=True):
        assert ours.step == theirs.step and list(ours.layers) == list(theirs.layers)
        for layer, a in ours.layers.items():
            b = theirs.layers[layer]
            if layer in held:
                assert a.grad_share is None
                b = dataclasses.replace(b, grad_share=None)
            assert a == b, (ours.step, layer)
    assert any(layer.grown > 0 for event in events["sparse"] for layer in event.layers.values())


def test_an_nm_pattern_is_refused_on_sparse_storage_and_auto_is_the_dense_path():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^RigL: backend='sparse' is not allowed with pattern='2:4'"):
        sparsetrain.RigL(model, opt, pattern="2:4", total_steps=10, backend="sparse")
    with pytest.raises(ValueError, match="backend='sparse' is not allowed with pattern"):
        sparsetrain.SRSTE(model, opt, total_steps=10, backend="sparse")
    sp = sparsetrain.RigL(model, opt, pattern="2:4", total_steps=10, backend="auto")
    assert isinstance(sp.enforcer, DenseMaskEnforcer) and all(type(m) is not TrainableSparseLinear for m in model)


def test_sparse_storage_refuses_what_it_cannot_do():
    model = mlp()
    with pytest.raises(ValueError, match="needs the optimizer"):
        sparsetrain.RigL(model, None, sparsity=0.9, total_steps=10, backend="sparse")
    with pytest.raises(ValueError, match="backend"):
        sparsetrain.RigL(model, None, sparsity=0.9, total_steps=10, backend="csr")


@pytest.mark.parametrize("mode", ["keep", "forbid"])
def test_a_swap_larger_than_the_active_set_is_clamped_like_on_the_dense_path(mode):
    """``drop_and_grow`` with a fraction above 1 swaps every active weight once, in every mode, on both storages
    (at 80% sparsity "forbid" has four times as many candidates as active weights: the cap is the active count)."""
    runs = []
    for backend in ("dense", "sparse"):
        model, opt, sp = build(backend, "mlp", METHODS["set"])
        step(model, opt, sp, "mlp", 0)
        before = {n: m.clone() for n, m in sp.masks.items()}
        sp.drop_and_grow(1.5, "random", mode=mode)
        if mode == "forbid":
            assert all(not bool((sp.masks[n] & before[n]).any()) for n in before)
        runs.append(sp)
    assert_same_masks(*runs)
