"""Construction in two phases (build without side effects, then attach), the mask enforcer's boundary, and
methods started from given masks."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

import sparsetrain
from helpers import make_batch, make_model, make_optimizer, nonzero_counts, pruned_entries_zero, train_step
from sparsetrain.enforcement import DenseMaskEnforcer, MaskEnforcer
from sparsetrain.studies.lottery import LotteryConfig


def test_nothing_touches_the_model_or_optimizer_before_attach():
    seen = {}

    class Watching(sparsetrain.RigL):
        def setup(self):
            super().setup()
            seen["weights"] = {n: p.detach().clone() for n, p in self.params.items()}
            seen["hooks"] = len(self.optimizer._optimizer_step_pre_hooks)
            seen["masks"] = dict(self.masks)

    model = make_model("mlp")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer("sgd", model)
    sp = Watching(model, optimizer, sparsity=0.8, total_steps=10)
    assert seen["hooks"] == 0 and seen["masks"] == {}
    assert all(torch.equal(seen["weights"][n], before[n]) for n in seen["weights"])
    # attach() drew the masks, zeroed the pruned weights and hooked the optimizer: the enforcer is the boundary.
    assert isinstance(sp.enforcer, MaskEnforcer) and isinstance(sp.enforcer, DenseMaskEnforcer)
    assert len(optimizer._optimizer_step_pre_hooks) == 1 and pruned_entries_zero(sp)
    assert sp.inputs == {}


def test_gradient_callbacks_see_each_steps_dense_gradient_before_masking():
    model = make_model("mlp")
    optimizer = make_optimizer("sgd", model)
    sp = sparsetrain.Static(model, optimizer, sparsity=0.8, total_steps=10)
    seen = []
    sp.enforcer.on_gradients(lambda grads: seen.append({n: g.clone() for n, g in grads.items()}))
    for t in range(3):
        x, y = make_batch("mlp", t)
        nn.functional.cross_entropy(model(x), y).backward()
        dense = {n: p.grad.clone() for n, p in sp.params.items()}
        optimizer.step()
        sp.step()
        optimizer.zero_grad()
        assert len(seen) == t + 1
        assert all(torch.equal(seen[-1][n], dense[n]) for n in dense)
        assert any(bool(seen[-1][n][~sp.masks[n]].any()) for n in dense)  # inactive gradients were still there


@pytest.mark.parametrize("method", ["gmp", "granet"])
def test_gradual_pruning_starts_from_given_masks_and_prunes_towards_the_sparsity(method):
    model = make_model("mlp")
    optimizer = make_optimizer("sgd", model)
    start = sparsetrain.Static(make_model("mlp", seed=5), None, sparsity=0.5, total_steps=1, distribution="uniform")
    masks = {n: m.clone() for n, m in start.masks.items()}
    sp = sparsetrain.METHODS[method](model, optimizer, masks=masks, sparsity=0.8, total_steps=12, update_every=3,
                                     prune_end=9)
    assert sp.initial_sparsity == pytest.approx(0.5) and sp.config["initial_sparsity"] == sp.initial_sparsity
    assert all(torch.equal(sp.masks[n], masks[n]) for n in masks)
    for t in range(12):
        train_step(model, optimizer, sp, "mlp", t)
    assert sp.current_sparsity() == pytest.approx(0.8, abs=0.01)
    if method == "gmp":  # pruning only removes: the final mask lies inside the given one
        assert all(not bool((sp.masks[n] & ~masks[n]).any()) for n in masks)
    with pytest.raises(ValueError, match=r"initial_sparsity is set by masks=\.\.\. \(their sparsity\)"):
        sparsetrain.METHODS[method](model, None, masks=masks, initial_sparsity=0.5, sparsity=0.8, total_steps=12)
    with pytest.raises(ValueError, match=r"give masks=\.\.\. or include/exclude, not both"):
        sparsetrain.METHODS[method](model, None, masks=masks, include="fc1.weight", total_steps=12)


def test_dynamic_sparse_training_from_given_masks_keeps_their_counts():
    model = make_model("mlp")
    optimizer = make_optimizer("adam", model)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in sparsetrain.select_prunable(model).items()}
    sp = sparsetrain.SNFS(model, optimizer, masks=masks, total_steps=12, update_every=3)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    changed = 0
    for t in range(12):
        changed += train_step(model, optimizer, sp, "mlp", t)
        assert nonzero_counts(sp) == counts
    assert changed >= 2 and any(not torch.equal(sp.masks[n], masks[n]) for n in masks)


def test_a_lottery_run_saved_with_the_old_scope_spelling_resumes(tmp_path, caplog):
    config = LotteryConfig(rounds=1, prune_rate=0.5)
    saved = config.to_dict() | {"scope": "layerwise"}
    with caplog.at_level(logging.WARNING):
        assert LotteryConfig.from_dict(saved) == config
    assert "scope='layerwise' (the old spelling) read as scope='layer'" in caplog.text
    from sparsetrain.studies.lottery.runner import _check_config

    (tmp_path / "config.json").write_text(json.dumps(saved))
    _check_config(tmp_path, config)  # the same run in today's words: no "another config" error
    with pytest.raises(ValueError, match=r"holds a lottery run with another config \(fields \['prune_rate'\]"):
        _check_config(tmp_path, LotteryConfig(rounds=1, prune_rate=0.3))
