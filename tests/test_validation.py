"""Bad arguments fail at construction with a message naming the argument, its value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsetrain
from helpers import make_model

M = dict(sparsity=0.5, total_steps=10)


def mlp() -> nn.Module:
    return make_model("mlp")


@pytest.mark.parametrize("cls", list(sparsetrain.METHODS.values()))
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), "0.5", True, None])
def test_sparsity_outside_zero_one(cls, value):
    optimizer = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match=rf"sparsity={value!r} is not allowed: .*number in \[0, 1\)"):
        cls(mlp(), optimizer, sparsity=value, total_steps=10)


@pytest.mark.parametrize("cls", [sparsetrain.GraNet, sparsetrain.RigL, sparsetrain.SET])
@pytest.mark.parametrize("value", [0.0, -0.2, 1.01, 3])
def test_drop_fraction_outside_zero_one(cls, value):
    with pytest.raises(ValueError, match=rf"drop_fraction={value!r} is not allowed: .*\(0, 1\]"):
        cls(mlp(), None, drop_fraction=value, **M)


@pytest.mark.parametrize("cls", list(sparsetrain.METHODS.values()))
@pytest.mark.parametrize("value", [0, -5])
def test_total_steps_must_be_positive(cls, value):
    optimizer = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match=rf"total_steps={value} is not allowed: .*positive int"):
        cls(mlp(), optimizer, sparsity=0.5, total_steps=value)


def test_total_steps_and_update_every_must_be_ints():
    with pytest.raises(TypeError, match=r"total_steps=2.5 is not allowed: .*positive int"):
        sparsetrain.RigL(mlp(), None, sparsity=0.5, total_steps=2.5)
    with pytest.raises(ValueError, match=r"update_every=0 is not allowed: .*positive int"):
        sparsetrain.RigL(mlp(), None, update_every=0, **M)
    with pytest.raises(TypeError, match=r"update_every=2.0 is not allowed"):
        sparsetrain.GraNet(mlp(), None, update_every=2.0, **M)


@pytest.mark.parametrize("arg", ["distribution", "init_distribution"])
def test_unknown_distribution(arg):
    with pytest.raises(ValueError, match=rf"{arg}='gaussian' is not a known distribution; allowed: uniform, er, erk"):
        sparsetrain.GraNet(mlp(), None, **{arg: "gaussian"}, **M)


@pytest.mark.parametrize("arg", ["include", "exclude"])
def test_a_name_or_regex_that_matches_nothing(arg):
    with pytest.raises(ValueError, match=rf"{arg}: 'conv.\*' matches no parameter of the model; parameters are e.g. "
                                         r"fc1.weight"):
        sparsetrain.Static(mlp(), None, **{arg: ["fc1.weight", "conv.*"]}, **M)


def test_override_that_matches_nothing_or_is_out_of_range():
    with pytest.raises(ValueError, match=r"sparsity_overrides: 'head.\*' matches no sparsified parameter; they are "
                                         r"fc1.weight, fc2.weight, fc3.weight"):
        sparsetrain.Static(mlp(), None, sparsity_overrides={"head.*": 0.5}, **M)
    with pytest.raises(ValueError, match=r"sparsity_overrides\['fc1.weight'\]=1.0: .*\[0, 1\)"):
        sparsetrain.Static(mlp(), None, sparsity_overrides={"fc1.weight": 1.0}, **M)


def test_include_of_a_bias_and_invalid_regex():
    with pytest.raises(ValueError, match=r"include: 'fc1.bias' has shape \(20,\); only tensors with >= 2 dims"):
        sparsetrain.Static(mlp(), None, include="fc1.bias", **M)
    with pytest.raises(ValueError, match=r"include: 'fc\(1' is not a valid regex"):
        sparsetrain.Static(mlp(), None, include="fc(1", **M)
    with pytest.raises(TypeError, match=r"include must hold parameter names or regexes \(str\), got 3"):
        sparsetrain.Static(mlp(), None, include=["fc1.weight", 3], **M)


@pytest.mark.parametrize("model", [nn.Sequential(nn.BatchNorm1d(3), nn.LayerNorm(3)), nn.Linear(4, 4)])
def test_a_model_with_nothing_to_prune(model):
    exclude = ".*" if isinstance(model, nn.Linear) else None
    with pytest.raises(ValueError, match=r"the model has nothing to prune: no Linear/Conv/Embedding/attention/RNN"):
        sparsetrain.RigL(model, None, exclude=exclude, **M)


def test_method_specific_arguments():
    with pytest.raises(ValueError, match=r"regrow_mode='reuse' is not allowed; choose one of 'keep', 'zero', 'forbid'"):
        sparsetrain.RigL(mlp(), None, regrow_mode="reuse", **M)
    with pytest.raises(ValueError, match=r"initial_sparsity=0.6 must not exceed sparsity=0.5"):
        sparsetrain.GraNet(mlp(), None, initial_sparsity=0.6, **M)
    with pytest.raises(ValueError, match=r"initial_sparsity=1.0 is not allowed: .*\[0, 1\)"):
        sparsetrain.GMP(mlp(), None, initial_sparsity=1.0, **M)
    with pytest.raises(ValueError, match=r"prune_end=4 \(4 steps\) must not come before prune_start=6"):
        sparsetrain.GMP(mlp(), None, prune_start=6, prune_end=4, **M)
    with pytest.raises(ValueError, match=r"prune_end=0 is step 0"):
        sparsetrain.GMP(mlp(), None, prune_end=0, **M)
    with pytest.raises(ValueError, match=r"stop_at=1.5: a float must be a fraction of total_steps in \[0, 1\]"):
        sparsetrain.SET(mlp(), None, stop_at=1.5, **M)
    with pytest.raises(ValueError, match=r"stop_at=11: an int must be a step in \[0, total_steps=10\]"):
        sparsetrain.RigL(mlp(), None, stop_at=11, **M)
    with pytest.raises(ValueError, match=r"drop_fraction_final=2 is not allowed: it must be in \[0, 1\]"):
        sparsetrain.RigL(mlp(), None, drop_fraction_final=2, **M)
    with pytest.raises(ValueError, match=r"beta=1.0 is not allowed: it must be a number in \[0, 1\)"):
        sparsetrain.SNFS(mlp(), torch.optim.SGD(mlp().parameters(), lr=0.1), beta=1.0, **M)
    with pytest.raises(ValueError, match=r"optimizer=None is not allowed for SNFS"):
        sparsetrain.SNFS(mlp(), None, **M)


def test_types_of_model_optimizer_seed_and_switches():
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got str"):
        sparsetrain.RigL("model", None, **M)
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer or None, got str"):
        sparsetrain.RigL(mlp(), "sgd", **M)
    with pytest.raises(TypeError, match=r"seed='a' is not allowed: it must be an int"):
        sparsetrain.RigL(mlp(), None, seed="a", **M)
    for switch in ("dense_first", "dense_last", "mask_gradients"):
        with pytest.raises(TypeError, match=rf"{switch}='no' is not allowed: it must be True or False"):
            sparsetrain.RigL(mlp(), None, **{switch: "no"}, **M)
    with pytest.raises(TypeError, match=r"regrow_after_pruning=0 is not allowed: it must be True or False"):
        sparsetrain.GraNet(mlp(), None, regrow_after_pruning=0, **M)
    # Options of another method are not silently ignored: the declared options are listed instead.
    with pytest.raises(TypeError, match=r"prune_end=3 is not allowed: RigL has no such option; allowed: backend, dense_first, "):
        sparsetrain.RigL(mlp(), None, prune_end=3, **M)


def test_static_given_masks_must_fit():
    # The masks name the tensors to sparsify (here fc1 only); a name that is not a parameter is refused.
    only_fc1 = sparsetrain.Static(mlp(), None, masks={"fc1.weight": torch.ones(20, 12, dtype=torch.bool)}, **M)
    assert list(only_fc1.masks) == ["fc1.weight"]
    with pytest.raises(ValueError, match=r"masks: 'fc9.weight' is not a parameter of the model; parameters are e.g."):
        sparsetrain.Static(mlp(), None, masks={"fc9.weight": torch.ones(20, 12, dtype=torch.bool)}, **M)
    shapes_wrong = {n: torch.ones(2, 2, dtype=torch.bool) for n in ("fc1.weight", "fc2.weight", "fc3.weight")}
    with pytest.raises(ValueError, match=r"masks\['fc1.weight'\] has shape \(2, 2\), the parameter has \(20, 12\)"):
        sparsetrain.Static(mlp(), None, masks=shapes_wrong, **M)
