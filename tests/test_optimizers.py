"""Any optimizer and loop: pruned weights and their optimizer state stay exactly zero; AMP, clipping, accumulation.

Also the equivalence of the fast path (gradients masked before the optimizer step) and the plain path (weights
and state masked after every step): both must give bit-identical weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import (
    make_batch,
    make_model,
    make_optimizer,
    make_sparsifier,
    pruned_entries_zero,
    pruned_state_zero,
    train_step,
)

DST = ["granet", "rigl", "set", "snfs"]
ALL_METHODS = ["granet", "gmp", "rigl", "set", "snfs", "static"]
OPTIMIZERS = ["sgd", "sgd_dampened", "adam", "adamw", "rmsprop", "adagrad"]
T = 20


def state_at(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    return [v for v in optimizer.state.get(param, {}).values() if torch.is_tensor(v) and v.shape == param.shape]


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("method", DST + ["gmp"])
def test_pruned_and_grown_weights_and_their_state_are_exactly_zero(method, opt):
    kind = "seq" if opt == "adamw" else "mlp"
    model = make_model(kind)
    optimizer = make_optimizer(opt, model)
    sp = make_sparsifier(method, model, optimizer, T)
    grown_seen = 0
    for t in range(T):
        old = {n: m.clone() for n, m in sp.masks.items()}
        changed = train_step(model, optimizer, sp, kind, t)
        assert pruned_entries_zero(sp), f"step {t + 1}"
        assert pruned_state_zero(sp, optimizer), f"step {t + 1}"
        if changed:
            for name, param in sp.params.items():
                grown = sp.masks[name] & ~old[name]
                grown_seen += int(grown.sum())
                assert bool((param[grown] == 0).all())
                assert all(bool((buf[grown] == 0).all()) for buf in state_at(optimizer, param))
    # Every optimizer really holds per-weight state (so "zero state" was a real check).
    assert all(state_at(optimizer, p) for p in sp.params.values())
    if method != "gmp":
        assert grown_seen > 0


def _final_weights(method: str, kind: str, opt: str, mask_gradients: bool, clip: float | None = None):
    model = make_model(kind)
    optimizer = make_optimizer(opt, model)
    sp = make_sparsifier(method, model, optimizer, T, mask_gradients=mask_gradients)
    for t in range(T):
        train_step(model, optimizer, sp, kind, t, clip=clip)
    return [p.detach().clone() for p in model.parameters()], {n: m.clone() for n, m in sp.masks.items()}


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_fast_path_and_plain_path_give_identical_weights(method, opt):
    fast, fast_masks = _final_weights(method, "mlp", opt, True, clip=1.0 if opt == "sgd" else None)
    plain, plain_masks = _final_weights(method, "mlp", opt, False, clip=1.0 if opt == "sgd" else None)
    assert all(torch.equal(fast_masks[n], plain_masks[n]) for n in fast_masks)
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["cnn", "seq", "tied"])
@pytest.mark.parametrize("method", ["granet", "rigl", "snfs"])
def test_fast_path_and_plain_path_agree_on_every_model(method, kind):
    fast, _ = _final_weights(method, kind, "adam", True)
    plain, _ = _final_weights(method, kind, "adam", False)
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b)


def test_gradscaler_skipped_step_changes_nothing_and_is_not_counted():
    """torch.amp on CPU: a step with non-finite gradients is skipped by GradScaler, so the sparsifier skips too."""
    model = make_model("mlp")
    optimizer = make_optimizer("sgd", model)
    sp = make_sparsifier("rigl", model, optimizer, 30)  # updates every 3 optimizer steps
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    log = []
    for t in range(10):
        x, y = make_batch("mlp", t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if t in (2, 5):  # the calls that would be update steps 3 and (after the first skip) 5
            model.fc2.weight.grad[0, 0] = float("inf")
        before = ([p.detach().clone() for p in model.parameters()], {n: m.clone() for n, m in sp.masks.items()})
        scaler.step(optimizer)
        scaler.update()
        changed = sp.step()
        if t in (2, 5):
            assert not changed
            assert all(torch.equal(a, b) for a, b in zip(before[0], model.parameters(), strict=True))
            assert all(torch.equal(before[1][n], sp.masks[n]) for n in sp.masks)
        log.append((sp.step_count, changed))
        optimizer.zero_grad()
        assert pruned_entries_zero(sp) and pruned_state_zero(sp, optimizer)
    # Optimizer steps: calls 0,1 -> 1,2; call 2 skipped; 3 -> 3 (update); 4 -> 4; 5 skipped; 6..9 -> 5..8.
    assert log == [(1, False), (2, False), (2, False), (3, True), (4, False), (4, False), (5, False), (6, True),
                   (7, False), (8, False)]


def test_a_step_without_optimizer_step_does_nothing():
    model = make_model("mlp")
    optimizer = make_optimizer("adam", model)
    sp = make_sparsifier("set", model, optimizer, 30)
    for t in range(2):
        train_step(model, optimizer, sp, "mlp", t)
    weights = [p.detach().clone() for p in model.parameters()]
    masks = {n: m.clone() for n, m in sp.masks.items()}
    generator_state = sp.generator.get_state()
    for _ in range(3):  # optimizer.step() skipped (e.g. by a scaler): sparsifier.step() must be a no-op
        assert sp.step() is False
    assert sp.step_count == 2
    assert torch.equal(sp.generator.get_state(), generator_state)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert all(torch.equal(masks[n], sp.masks[n]) for n in masks)
    train_step(model, optimizer, sp, "mlp", 2)
    assert sp.step_count == 3  # the next real step is the update step 3
    assert any(not torch.equal(masks[n], sp.masks[n]) for n in masks)


def test_non_finite_gradients_make_no_topology_change():
    model = make_model("mlp")
    sp = make_sparsifier("rigl", model, None, 30)  # no optimizer: step() counts its own calls
    masks = {n: m.clone() for n, m in sp.masks.items()}
    for p in sp.params.values():
        p.grad = torch.randn_like(p)
    model.fc1.weight.grad[3, 4] = float("nan")
    assert [sp.step() for _ in range(3)] == [False, False, False]  # step 3 is an update step, skipped
    assert all(torch.equal(masks[n], sp.masks[n]) for n in masks)
    model.fc1.weight.grad[3, 4] = 0.0
    assert [sp.step() for _ in range(3)] == [False, False, True]


def test_gradient_accumulation_counts_optimizer_steps():
    """sparsifier.step() after every micro-batch == after every optimizer step: schedules count optimizer steps."""
    accumulate = 3

    def run(call_every_micro_batch: bool):
        model = make_model("mlp")
        optimizer = make_optimizer("sgd", model)
        sp = make_sparsifier("granet", model, optimizer, 12)
        updates = []
        for micro in range(12 * accumulate):
            x, y = make_batch("mlp", micro)
            (nn.functional.cross_entropy(model(x), y) / accumulate).backward()
            boundary = (micro + 1) % accumulate == 0
            if boundary:
                optimizer.step()
            if boundary or call_every_micro_batch:
                changed = sp.step()  # before zero_grad: growth reads the gradients
                if boundary:
                    updates.append(changed)
                else:
                    assert not changed
            if boundary:
                optimizer.zero_grad()
        return sp, updates, [p.detach().clone() for p in model.parameters()]

    a, updates_a, weights_a = run(True)
    b, updates_b, weights_b = run(False)
    assert a.step_count == b.step_count == 12
    assert updates_a == updates_b == [a.is_update_step(t) for t in range(1, 13)]
    assert all(torch.equal(x, y) for x, y in zip(weights_a, weights_b, strict=True))


@pytest.mark.parametrize("method", ["granet", "rigl"])
def test_gradient_clipping_keeps_pruned_entries_zero(method):
    model = make_model("cnn")
    optimizer = make_optimizer("sgd", model, lr=0.5)
    sp = make_sparsifier(method, model, optimizer, T)
    for t in range(T):
        train_step(model, optimizer, sp, "cnn", t, clip=0.1)
        assert pruned_entries_zero(sp) and pruned_state_zero(sp, optimizer)


def test_growth_without_gradients_warns(caplog):
    """Calling sparsifier.step() after zero_grad() leaves RigL nothing to grow by: say so instead of silently."""
    model = make_model("mlp")
    optimizer = make_optimizer("sgd", model)
    sp = make_sparsifier("rigl", model, optimizer, 30)
    with caplog.at_level("WARNING", logger="sparsetrain"):
        for t in range(3):
            x, y = make_batch("mlp", t)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # wrong order
            sp.step()
    assert "no sparsified parameter has a gradient" in caplog.text
