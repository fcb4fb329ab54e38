"""Every method under an N:M pattern: exactly N per group after every step and update, pruned weights and their
optimizer state exactly zero (SR-STE: the model's weights are N:M between steps, its state dense), the right
weights dropped and grown within groups, the structure-decay schedule, exact resume, clear refusals.

The choice of weights is checked against :func:`sparsetrain.nm.nm_mask` / :func:`sparsetrain.nm.nm_drop_and_grow`
(tested against loop references in test_nm.py) fed with the weights and gradients seen right before the update.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain
from helpers import (
    MODELS,
    make_batch,
    make_model,
    make_optimizer,
    method_kwargs,
    pruned_entries_zero,
    pruned_state_zero,
    run_with_scaler,
    train_step,
)
from sparsetrain.nm import NMPattern, is_nm, nm_drop_and_grow, nm_mask
from sparsetrain.schedules import StructureDecay, decay_stages
from sparsetrain.updates import swap_count
from test_srste import paper_steps

T = 24
METHODS = ["rigl", "set", "snfs", "static", "gmp", "granet", "granet_st", "srste"]


def nm_sparsifier(method: str, model: nn.Module, optimizer, pattern: str, total_steps: int = T, **overrides):
    """``method`` under ``pattern`` with the short-run settings of :func:`helpers.method_kwargs` (no sparsity:
    the pattern sets it); "granet_st" is GraNet started from a random N:M mask."""
    name = "granet" if method == "granet_st" else method
    kwargs = {k: v for k, v in method_kwargs(name, total_steps).items() if k != "sparsity"}
    if method == "granet_st":
        kwargs["initial_sparsity"] = NMPattern.parse(pattern).sparsity
    if method == "srste":
        kwargs = {"total_steps": total_steps}
    return sparsetrain.METHODS[name](model, optimizer, pattern=pattern, **{**kwargs, **overrides})


def pattern_now(sp, step: int) -> NMPattern | None:
    """The pattern the masks must follow after ``step`` (a GMP/GraNet stage, or the sparsifier's)."""
    return sp.stage_pattern(step) if hasattr(sp, "stage_pattern") else sp.pattern


def follows(sp, pattern: NMPattern | None) -> bool:
    """Patterned tensors hold exactly N of every M (all True while dense); the others are all True."""
    for name, mask in sp.masks.items():
        layout = sp.layouts[name]
        if layout.patterned and pattern is not None:
            if not is_nm(mask, pattern, layout.dim):
                return False
        elif not bool(mask.all()):
            return False
    return True


@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_every_group_holds_n_and_pruned_weights_and_state_stay_zero(method, kind, pattern):
    model = make_model(kind)
    optimizer = make_optimizer("sgd", model)
    sp = nm_sparsifier(method, model, optimizer, pattern)
    assert follows(sp, pattern_now(sp, 0))
    stages = set()
    for t in range(T):
        train_step(model, optimizer, sp, kind, t)
        stage = pattern_now(sp, sp.step_count)
        stages.add(stage)
        assert follows(sp, stage), f"step {sp.step_count}"
        assert pruned_entries_zero(sp), f"step {sp.step_count}"  # SR-STE too: the model holds E ⊙ W
        if method != "srste":
            assert pruned_state_zero(sp, optimizer), f"step {sp.step_count}"
    assert NMPattern.parse(pattern) in stages  # the target pattern is reached
    if method == "srste":  # dense weights and state: pruned positions hold values aside and in the momentum
        dense = sp.enforcer.dense_weights()
        assert any(bool((dense[n][~m] != 0).any()) for n, m in sp.masks.items())
        assert all(torch.equal(p.detach(), dense[n] * sp.masks[n]) for n, p in sp.params.items())
        assert not pruned_state_zero(sp, optimizer)


def test_tensors_that_cannot_follow_the_pattern_are_kept_dense_logged_once_and_reported(caplog):
    model = make_model("cnn")
    optimizer = make_optimizer("sgd", model)
    with caplog.at_level(logging.INFO, logger="sparsetrain.sparsifier"):
        sp = nm_sparsifier("rigl", model, optimizer, "2:4")
    lines = [r.getMessage() for r in caplog.records if "pattern 2:4" in r.getMessage()]
    assert len(lines) == 1
    dense = ["conv1.weight", "depthwise.weight", "conv3d.weight"]  # 3, 1 and 1 input channels
    assert all(name in lines[0] for name in dense) and "on 3 of 6 tensors" in lines[0]
    notes = {layer.name: layer.note for layer in sp.report().layers}
    assert {name for name, note in notes.items() if note.startswith("kept dense")} == set(dense)
    assert all(notes[name] == "2:4" for name in notes if name not in dense)
    assert all(bool(sp.masks[name].all()) for name in dense)
    assert "note" in str(sp.report()).splitlines()[0]
    assert sp.report().to_dict()["layers"][0]["note"].startswith("kept dense")


@pytest.mark.parametrize("method", ["rigl", "set", "snfs"])
def test_dst_swaps_within_groups_the_smallest_magnitudes_for_the_highest_growth_scores(method):
    """One update's new masks equal nm_drop_and_grow on the weights and growth scores seen right before it."""
    kind, pattern = "mlp", "2:4"
    model = make_model(kind)
    optimizer = make_optimizer("sgd", model)
    sp = nm_sparsifier(method, model, optimizer, pattern, regrow_mode="zero")
    checked = 0
    for t in range(T):
        x, y = make_batch(kind, t)
        F.cross_entropy(model(x), y).backward()
        update = sp.is_update_step(t + 1)
        if update:
            before = {n: m.clone() for n, m in sp.masks.items()}
            grads = {n: p.grad.detach().clone() for n, p in sp.params.items()}
            generator = sp.generator.get_state()
            momentum = {n: m.clone() for n, m in getattr(sp, "momentum", {}).items()}
        optimizer.step()
        if update:
            weights = {n: p.detach().clone() for n, p in sp.params.items()}
            fraction = sp.current_drop_fraction(t + 1)
        sp.step()
        optimizer.zero_grad(set_to_none=True)
        if not update:
            continue
        draw = torch.Generator()
        draw.set_state(generator)
        for name, mask in before.items():
            k = swap_count(fraction, int(mask.sum()))
            if method == "rigl":
                grow = grads[name].abs()
            elif method == "snfs":
                grow = (sp.beta * momentum[name] + grads[name]).abs()
            else:
                grow = torch.rand(mask.shape, generator=draw)
            expected, _ = nm_drop_and_grow(mask, weights[name].abs(), grow, k, pattern, dim=1)
            assert torch.equal(sp.masks[name], expected), (name, t + 1)
            checked += k > 0
    assert checked >= 3


def test_decay_stages_follow_the_authors_code_and_structure_decay_spreads_them_over_the_window():
    assert decay_stages(1, 16) == (15, 8, 4, 2, 1)  # the authors' comment: 15:16, 8:16, 4:16, 2:16, 1:16
    assert decay_stages(1, 8) == (7, 4, 2, 1)  # SdGf-Stepwise: dense -> 7:8 -> 4:8 -> 2:8 -> 1:8
    assert decay_stages(2, 4) == (3, 2) and decay_stages(3, 4) == (3,) and decay_stages(3, 8) == (7, 4, 3)
    decay = StructureDecay(4, 4, (3, 2, 1), 10, 40)
    assert decay.starts == (20, 30, 40)  # the target starts exactly at prune_end, as the cubic schedule
    assert [decay.n_at(t) for t in (0, 19, 20, 29, 30, 39, 40, 99)] == [4, 4, 3, 3, 2, 2, 1, 1]
    assert [t for t in range(100) if decay(t)] == [20, 30, 40]
    one_shot = StructureDecay(4, 4, (3, 2), 5, 5)
    assert one_shot.n_at(4) == 4 and one_shot.n_at(5) == 2 and one_shot(5)


@pytest.mark.parametrize("method", ["gmp", "granet"])
def test_gradual_pruning_under_a_pattern_keeps_the_largest_magnitudes_of_each_group_at_every_stage(method):
    kind, pattern = "mlp", "1:4"
    model = make_model(kind)
    optimizer = make_optimizer("sgd", model)
    sp = nm_sparsifier(method, model, optimizer, pattern, prune_end=18, update_every=5)
    assert sp.decay.starts == (6, 12, 18) and all(bool(m.all()) for m in sp.masks.values())
    seen = []
    for t in range(T):
        x, y = make_batch(kind, t)
        F.cross_entropy(model(x), y).backward()
        before = {n: m.clone() for n, m in sp.masks.items()}
        optimizer.step()
        weights = {n: p.detach().clone() for n, p in sp.params.items()}
        sp.step()
        optimizer.zero_grad(set_to_none=True)
        step = sp.step_count
        if sp.decay(step):
            stage = sp.stage_pattern(step)
            seen.append(str(stage))
            for name, mask in before.items():
                pruned = nm_mask(weights[name].abs(), stage, eligible=mask)
                if method == "gmp":
                    assert torch.equal(sp.masks[name], pruned), (name, step)
                else:  # then regrowth within groups: same count per group, different positions allowed
                    assert is_nm(sp.masks[name], stage)
    assert seen == ["3:4", "2:4", "1:4"]


def test_granet_st_under_a_pattern_starts_from_a_random_stage_and_decays_from_there():
    model = make_model("mlp")
    sp = nm_sparsifier("granet", model, make_optimizer("sgd", model), "1:4", initial_sparsity=0.5, prune_end=18)
    assert sp.decay.initial == 2 and sp.decay.ns == (1,) and sp.decay.starts == (18,)
    assert follows(sp, NMPattern(2, 4))
    other = nm_sparsifier("granet", make_model("mlp"), None, "1:4", initial_sparsity=0.5, prune_end=18, seed=1)
    assert any(not torch.equal(sp.masks[n], other.masks[n]) for n in sp.masks)  # random, seeded


def test_static_magnitude_init_is_one_shot_magnitude_nm_pruning():
    model = make_model("mlp")
    sp = sparsetrain.Static(model, make_optimizer("sgd", model), pattern="2:4", total_steps=T, init="magnitude")
    for name, param in sp.params.items():
        # prune_at_init ranks the initial weights, which attach then keeps (kept weights are unchanged)
        assert torch.equal(sp.masks[name], nm_mask(param.detach().abs(), "2:4"))


def test_srste_class_matches_the_papers_update():
    """SRSTE with SGD (momentum 0.9) against the hand-written SR-STE of test_srste.py: same masks, weights E ⊙ W."""
    n, m, steps, lr, decay = 2, 4, 12, 0.5, 0.3
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 8, generator=gen)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 6, generator=gen)
    reference, ref_masks = paper_steps(weight, x, y, steps, lr, decay, n, m, momentum=0.9)
    layer = nn.Linear(8, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9)
    sp = sparsetrain.SRSTE(layer, optimizer, pattern=f"{n}:{m}", decay=decay, total_steps=steps)
    for step in range(steps):
        before = sp.masks["weight"].clone()
        assert torch.equal(before, ref_masks[step]), f"mask used at step {step}"
        F.mse_loss(layer(x), y).backward()
        optimizer.step()
        changed = sp.step()
        optimizer.zero_grad()
        assert changed == (not torch.equal(sp.masks["weight"], before))  # step() says whether the mask moved
        dense = sp.enforcer.dense_weights()["weight"]
        torch.testing.assert_close(dense, reference[step], rtol=1e-6, atol=1e-7)
        assert torch.equal(layer.weight.detach(), dense * sp.masks["weight"])


@pytest.mark.parametrize("method,pattern", [("rigl", "2:4"), ("granet", "1:4"), ("set", "2:8"), ("srste", "2:4")])
def test_resume_under_a_pattern_is_bit_identical(method, pattern, tmp_path):
    kind, stop = "mlp", 9  # update steps at multiples of 3; GraNet's 1:4 stages at 4, 8, 12

    def fresh(seed: int = 0):
        model = make_model(kind, seed=seed)
        optimizer = make_optimizer("adam", model)
        return model, optimizer, nm_sparsifier(method, model, optimizer, pattern, seed=seed)

    model, optimizer, sp = fresh()
    for t in range(T):
        train_step(model, optimizer, sp, kind, t)
    model2, optimizer2, sp2 = fresh()
    for t in range(stop):
        train_step(model2, optimizer2, sp2, kind, t)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model2.state_dict(), "optimizer": optimizer2.state_dict(), "sparsifier": sp2.state_dict()},
               path)
    model3, optimizer3, sp3 = fresh(seed=7)
    checkpoint = torch.load(path)
    model3.load_state_dict(checkpoint["model"])
    optimizer3.load_state_dict(checkpoint["optimizer"])
    sp3.load_state_dict(checkpoint["sparsifier"])
    for t in range(stop, T):
        train_step(model3, optimizer3, sp3, kind, t)
    assert all(torch.equal(sp.masks[n], sp3.masks[n]) for n in sp.masks)
    for (name, a), (_, b) in zip(model.named_parameters(), model3.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    if method == "srste":
        assert all(torch.equal(sp.enforcer.dense[n], sp3.enforcer.dense[n]) for n in sp.masks)


def test_srste_export_bakes_the_last_mask_and_detaches():
    model = make_model("mlp")
    optimizer = make_optimizer("sgd", model)
    sp = nm_sparsifier("srste", model, optimizer, "2:4")
    for t in range(5):
        train_step(model, optimizer, sp, "mlp", t)
    masks = {n: m.clone() for n, m in sp.masks.items()}
    exported = sp.export()
    for name, param in dict(exported.named_parameters()).items():
        if name in masks:
            assert torch.equal(param != 0, masks[name] & (param != 0)) and is_nm(masks[name], "2:4")
    before = {n: p.detach().clone() for n, p in exported.named_parameters()}
    train_step(exported, optimizer, None, "mlp", 5)  # no hook left: a plain dense step
    assert any(bool((p.detach()[~masks[n]] != 0).any()) for n, p in exported.named_parameters() if n in masks)
    assert any(not torch.equal(before[n], p) for n, p in exported.named_parameters())


@pytest.mark.parametrize("build,message", [
    (lambda m, o: sparsetrain.RigL(m, o, pattern="2:4", sparsity=0.9, total_steps=T),
     "RigL: sparsity=0.9 is not allowed with pattern='2:4'"),
    (lambda m, o: sparsetrain.RigL(m, o, pattern="2:4", scope="global", total_steps=T),
     "RigL with pattern='2:4': scope='global' is not allowed"),
    (lambda m, o: sparsetrain.SET(m, o, pattern="1:4", distribution="uniform", total_steps=T),
     "SET with pattern='1:4': distribution='uniform' is not allowed"),
    (lambda m, o: sparsetrain.Static(m, o, pattern="2:4", sparsity_overrides={"fc1.weight": 0.8}, total_steps=T),
     "Static with pattern='2:4': a sparsity of 0.8 pinned for 'fc1.weight' is not allowed"),
    (lambda m, o: sparsetrain.GraNet(m, o, pattern="2:4", initial_sparsity=0.3, total_steps=T),
     "GraNet: initial_sparsity=0.3 is not allowed with pattern='2:4'"),
    (lambda m, o: sparsetrain.GMP(m, o, pattern="2:4", init_distribution="er", total_steps=T),
     "GMP: init_distribution='er' is not allowed with pattern='2:4'"),
    (lambda m, o: sparsetrain.RigL(m, o, pattern="4:4", total_steps=T), "pattern='4:4' is not allowed"),
    (lambda m, o: sparsetrain.SRSTE(m, o, pattern=None, total_steps=T), "SRSTE: pattern=None is not allowed"),
    (lambda m, o: sparsetrain.SRSTE(m, None, total_steps=T), "optimizer=None is not allowed for SRSTE"),
    (lambda m, o: sparsetrain.SRSTE(m, o, total_steps=T, masks={"fc1.weight": torch.ones(20, 12, dtype=torch.bool)}),
     "SRSTE: masks=... is not allowed"),
    (lambda m, o: sparsetrain.Static(m, o, pattern="2:4", total_steps=T,
                                     masks={"fc1.weight": torch.ones(20, 12, dtype=torch.bool)}),
     "Static with pattern='2:4': masks['fc1.weight'] does not follow the pattern"),
])
def test_unsupported_combinations_are_refused_in_one_line_naming_the_method_and_pattern(build, message):
    model = make_model("mlp")
    with pytest.raises((ValueError, TypeError)) as info:
        build(model, make_optimizer("sgd", model))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pinning_a_tensor_dense_and_giving_masks_that_follow_the_pattern_work():
    model = make_model("mlp")
    sp = sparsetrain.RigL(model, make_optimizer("sgd", model), pattern="2:4", dense_first=True, total_steps=T)
    assert bool(sp.masks["fc1.weight"].all()) and is_nm(sp.masks["fc2.weight"], "2:4")
    assert sp.report().layers[0].note == "kept dense: pinned dense"
    masks = {n: nm_mask(torch.rand(p.shape), "2:4") for n, p in sp.params.items()}
    given = sparsetrain.Static(make_model("mlp"), None, pattern="2:4", total_steps=T, masks=masks)
    assert all(torch.equal(given.masks[n], masks[n]) for n in masks) and given.sparsity == 0.5


@pytest.mark.parametrize("fused", [False, True])
def test_srste_under_grad_scaler_matches_the_unscaled_run(fused):
    """GradScaler unscales before a plain optimizer's step but hands a fused one the scale: the decay of the pruned
    weights must come out the same either way."""

    plain, scaled = (run_with_scaler("srste", fused, flag, pattern="2:4", decay=0.5) for flag in (False, True))
    for name, weight in plain.enforcer.dense_weights().items():
        torch.testing.assert_close(weight, scaled.enforcer.dense_weights()[name], rtol=1e-5, atol=1e-6)
