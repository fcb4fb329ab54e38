"""Checkpoints: state_dict contents, exact resume from files, round trips into fresh objects, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsetrain
from helpers import make_model, make_optimizer, make_sparsifier, nonzero_counts, pruned_entries_zero, train_step

T = 20  # update_every = 3: update steps 3, 6, 9, ... (GraNet also at prune_end = 10)


def test_state_dict_holds_masks_step_generator_and_config():
    model = make_model("mlp")
    optimizer = make_optimizer("sgd", model)
    sp = make_sparsifier("set", model, optimizer, T, seed=11)
    for t in range(4):
        train_step(model, optimizer, sp, "mlp", t)
    state = sp.state_dict()
    assert state["method"] == "set" and state["step"] == 4
    assert set(state["masks"]) == set(sp.masks)
    assert all(state["masks"][n].dtype == torch.bool and torch.equal(state["masks"][n], sp.masks[n])
               for n in sp.masks)
    assert state["masks"]["fc1.weight"] is not sp.masks["fc1.weight"]  # a copy, not a view of live state
    assert torch.equal(state["generator"], sp.generator.get_state())
    config = state["config"]
    assert (config["sparsity"], config["total_steps"], config["update_every"], config["seed"]) == (0.8, T, 3, 11)
    assert config["regrow_mode"] == "keep" and config["stop_at"] == 0.75


def _save(path, model, optimizer, sp) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sparsifier": sp.state_dict()},
               path)


def _load(path, method: str, kind: str, opt: str):
    """Fresh objects (different init seed and sparsifier seed), then the checkpoint loaded into them."""
    model = make_model(kind, seed=123)
    optimizer = make_optimizer(opt, model)
    sp = make_sparsifier(method, model, optimizer, T, seed=99)
    checkpoint = torch.load(path)  # weights_only=True by default: the state must be plain tensors and data
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    sp.load_state_dict(checkpoint["sparsifier"])
    return model, optimizer, sp


@pytest.mark.parametrize("stop", [5, 6], ids=["before_update", "after_update"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("method", ["granet", "rigl", "set", "snfs"])
def test_resume_from_files_is_bit_identical(method, opt, stop, tmp_path):
    kind = "mlp"
    # Uninterrupted reference run.
    model = make_model(kind)
    optimizer = make_optimizer(opt, model)
    sp = make_sparsifier(method, model, optimizer, T)
    for t in range(T):
        train_step(model, optimizer, sp, kind, t)
    # Interrupted run: stop after `stop` steps (step 6 is an update step), save to a real file, resume.
    model2 = make_model(kind)
    optimizer2 = make_optimizer(opt, model2)
    sp2 = make_sparsifier(method, model2, optimizer2, T)
    for t in range(stop):
        train_step(model2, optimizer2, sp2, kind, t)
    path = tmp_path / "checkpoint.pt"
    _save(path, model2, optimizer2, sp2)
    del model2, optimizer2, sp2
    model3, optimizer3, sp3 = _load(path, method, kind, opt)
    assert sp3.step_count == stop
    updates_after = 0
    for t in range(stop, T):
        updates_after += train_step(model3, optimizer3, sp3, kind, t)
    assert updates_after >= 2  # the resumed part really includes topology updates
    assert all(torch.equal(sp.masks[n], sp3.masks[n]) for n in sp.masks)
    assert all(torch.equal(sp.ever_active[n], sp3.ever_active[n]) for n in sp.masks)
    for (name, a), (_, b) in zip(model.named_parameters(), model3.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(sp.generator.get_state(), sp3.generator.get_state())


@pytest.mark.parametrize("method", ["granet", "gmp", "rigl", "set", "snfs", "static"])
def test_state_dict_round_trip_into_a_fresh_model(method):
    kind = "seq"
    model = make_model(kind)
    optimizer = make_optimizer("adam", model)
    sp = make_sparsifier(method, model, optimizer, T)
    for t in range(7):
        train_step(model, optimizer, sp, kind, t)
    fresh_model = make_model(kind, seed=5)
    fresh_opt = make_optimizer("adam", fresh_model)
    fresh = make_sparsifier(method, fresh_model, fresh_opt, T, seed=42)
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(sp.state_dict())
    assert fresh.step_count == 7
    assert nonzero_counts(fresh) == nonzero_counts(sp)
    assert all(torch.equal(fresh.masks[n], sp.masks[n]) and fresh.masks[n].dtype == torch.bool for n in sp.masks)
    assert pruned_entries_zero(fresh)
    assert fresh.itop_rate() == sp.itop_rate()
    # The round trip is stable: saving the loaded state gives the same state back.
    again = fresh.state_dict()
    assert again["step"] == 7 and again["method"] == method
    assert all(torch.equal(again["masks"][n], sp.state_dict()["masks"][n]) for n in sp.masks)


def test_loading_masks_into_a_fresh_sparsifier_zeroes_the_weights_outside_them():
    model = make_model("mlp")
    sp = sparsetrain.Static(model, None, sparsity=0.9, total_steps=5, seed=1)
    state = sp.state_dict()
    fresh_model = make_model("mlp", seed=3)
    fresh = sparsetrain.Static(fresh_model, None, sparsity=0.9, total_steps=5, seed=2)
    fresh_model.load_state_dict(make_model("mlp", seed=4).state_dict())  # dense weights again
    fresh.load_state_dict(state)
    assert all(torch.equal((p != 0), state["masks"][n]) for n, p in fresh.params.items())


def _state(method: str = "rigl", model: nn.Module | None = None) -> dict:
    model = model or make_model("mlp")
    return make_sparsifier(method, model, None, T).state_dict()


def test_loading_a_state_for_another_method_fails_clearly():
    sp = make_sparsifier("set", make_model("mlp"), None, T)
    with pytest.raises(ValueError, match=r"method 'rigl'.*'set'"):
        sp.load_state_dict(_state("rigl"))


def test_loading_a_state_with_other_names_fails_clearly():
    sp = make_sparsifier("rigl", make_model("mlp"), None, T)
    other = _state("rigl", make_model("cnn"))
    with pytest.raises(ValueError, match=r"do not fit the model: missing \['fc1.weight'.*unexpected \['conv1"):
        sp.load_state_dict(other)
    fewer = make_sparsifier("rigl", make_model("mlp"), None, T, exclude="fc3.weight").state_dict()
    with pytest.raises(ValueError, match=r"missing \['fc3.weight'\], unexpected \[\]"):
        sp.load_state_dict(fewer)


def test_loading_a_state_with_other_shapes_fails_clearly():
    sp = make_sparsifier("rigl", make_model("mlp"), None, T)
    state = _state("rigl")
    state["masks"]["fc2.weight"] = torch.ones(16, 21, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'fc2.weight' has shape \(16, 21\), the parameter has \(16, 20\)"):
        sp.load_state_dict(state)


def test_loading_something_that_is_not_a_state_fails_clearly():
    sp = make_sparsifier("rigl", make_model("mlp"), None, T)
    with pytest.raises(ValueError, match="not a sparsetrain sparsifier state"):
        sp.load_state_dict({"model": {}})
    # A failed load leaves the sparsifier as it was.
    before = {n: m.clone() for n, m in sp.masks.items()}
    with pytest.raises(ValueError):
        sp.load_state_dict(_state("set"))
    assert all(torch.equal(before[n], sp.masks[n]) for n in before)
