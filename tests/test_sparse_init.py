"""Sparsity-aware initialisation (Evci et al. 2022): each unit's weights rescaled to its active fan-in."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.sparse_init import active_fan_in, scale_to_active_fan_in


def test_each_unit_is_scaled_by_the_root_of_its_dense_over_active_fan_in() -> None:
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 2)  # 4 units (output channels), fan-in 6
    mask = torch.zeros(4, 3, 2, dtype=torch.bool)
    mask[0] = True                       # dense unit: factor 1
    mask[1, 0, 0] = True                 # fan-in 1: factor sqrt(6)
    mask[2, :, 1] = True                 # fan-in 3: factor sqrt(2)
    # unit 3 has no active input: left as it is
    assert active_fan_in(mask).tolist() == [6, 1, 3, 0]
    scaled = weight.clone()
    factors = scale_to_active_fan_in({"w": scaled}, {"w": mask})
    expected = [1.0, math.sqrt(6), math.sqrt(2), 1.0]
    for unit, factor in enumerate(expected):
        assert torch.allclose(scaled[unit], weight[unit] * factor)
    assert factors["w"] == pytest.approx(math.sqrt((1 + 6 + 2) / 3))


def test_a_dense_mask_leaves_the_tensor_bit_for_bit() -> None:
    weight = torch.randn(5, 7)
    before = weight.clone()
    assert scale_to_active_fan_in({"w": weight}, {"w": torch.ones(5, 7, dtype=torch.bool)}) == {}
    assert torch.equal(weight, before)


@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_the_output_variance_of_a_sparse_layer_matches_the_dense_one_again(sparsity: float) -> None:
    """With the dense initialisation a sparse layer's pre-activation variance is the dense one times the density;
    rescaled to the active fan-in it is the dense one (within sampling error)."""
    torch.manual_seed(1)
    layer = nn.Linear(1000, 500, bias=False)
    inputs = torch.randn(512, 1000)
    dense_var = layer(inputs).var().item()
    mask = torch.rand(500, 1000) >= sparsity
    with torch.no_grad():
        layer.weight.mul_(mask)
    plain_var = layer(inputs).var().item()
    with torch.no_grad():
        scale_to_active_fan_in({"w": layer.weight}, {"w": mask})
    scaled_var = layer(inputs).var().item()
    density = 1 - sparsity
    assert plain_var == pytest.approx(density * dense_var, rel=0.15)
    assert scaled_var == pytest.approx(dense_var, rel=0.15)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5))


@pytest.mark.parametrize("method", ["rigl", "set", "static", "snfs"])
def test_methods_that_start_sparse_rescale_their_drawn_start(method: str) -> None:
    plain, scaled = _mlp(), _mlp()
    cls = sparsetrain.METHODS[method]
    a = cls(plain, torch.optim.SGD(plain.parameters(), lr=0.1), sparsity=0.9, total_steps=10, sparse_init="none")
    b = cls(scaled, torch.optim.SGD(scaled.parameters(), lr=0.1), sparsity=0.9, total_steps=10, sparse_init="fan_in")
    for name in a.params:
        assert torch.equal(a.masks[name], b.masks[name])  # the same masks: no random number drawn by the rescaling
        mask = a.masks[name]
        fan_in = mask[0].numel()
        factors = (fan_in / active_fan_in(mask).clamp(min=1).float()).sqrt()
        factors[active_fan_in(mask) == 0] = 1.0
        expected = dict(plain.named_parameters())[name] * factors.view(-1, 1)
        assert torch.allclose(dict(scaled.named_parameters())[name], expected)
    assert torch.equal(plain[0].bias, scaled[0].bias)  # biases keep their initialisation


def test_granet_st_rescales_and_a_dense_start_is_bit_identical() -> None:
    reference = _mlp()
    st_model, dense_model = _mlp(), _mlp()
    sparsetrain.GraNet(st_model, None, sparsity=0.9, total_steps=10, initial_sparsity=0.5, sparse_init="fan_in")
    sparsetrain.GraNet(dense_model, None, sparsity=0.9, total_steps=10, sparse_init="fan_in")
    for (name, p), q, r in zip(reference.named_parameters(), st_model.parameters(), dense_model.parameters(),
                               strict=True):
        assert torch.equal(p, r), name  # GraNet from dense: untouched
    active = st_model[0].weight != 0
    assert (st_model[0].weight[active].abs() > reference[0].weight[active].abs()).all()


def test_given_masks_keep_their_weights_unless_asked_explicitly() -> None:
    """A rewound lottery ticket or a pruned trained network comes with its weights: masks=... does not rescale them
    by default; sparse_init given explicitly does."""
    masks = {"0.weight": torch.rand(40, 30) < 0.2, "2.weight": torch.rand(5, 40) < 0.5}
    reference, kept, asked = _mlp(), _mlp(), _mlp()
    sparsetrain.Static(kept, None, masks=masks, total_steps=10)
    sparsetrain.Static(asked, None, masks=masks, total_steps=10, sparse_init="fan_in")
    assert torch.equal(kept[0].weight, reference[0].weight * masks["0.weight"])
    assert not torch.equal(asked[0].weight, reference[0].weight * masks["0.weight"])
    assert bool((asked[0].weight.abs() >= kept[0].weight.abs()).all())


def test_the_option_is_validated_and_kept_in_the_state() -> None:
    with pytest.raises(ValueError, match=r"sparse_init='he' is not allowed; choose one of 'fan_in', 'none'"):
        sparsetrain.RigL(_mlp(), None, sparsity=0.5, total_steps=10, sparse_init="he")
    sparsifier = sparsetrain.RigL(_mlp(), None, sparsity=0.5, total_steps=10, sparse_init="fan_in")
    assert sparsifier.state_dict()["config"]["sparse_init"] == "fan_in"
