"""Allocation of sparsity across tensors (sparsetrain.distributions): hand-computed ER/ERK, exact counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.distributions import allocate, check_distribution, erk_densities
from sparsetrain.masks import random_masks

QUICK = settings(max_examples=60, deadline=None)


def test_erk_hand_computed_with_one_layer_made_dense():
    shapes = {"a": (2, 4), "b": (20, 10), "c": (4, 2, 3, 3)}
    # numel: a = 8, b = 200, c = 72; total 280; density 0.5 -> budget 140 nonzeros.
    # ERK raw scores sum(shape)/prod(shape): a = 6/8 = 0.75, b = 30/200 = 0.15, c = (4+2+3+3)/72 = 1/6.
    # Pass 1: weighted = 0.75*8 + 0.15*200 + 72/6 = 6 + 30 + 12 = 48; scale = 140/48 = 2.9167;
    #         a would get 0.75 * 2.9167 = 2.19 > 1 -> dense.
    # Pass 2: budget = 140 - 8 = 132; weighted = 30 + 12 = 42; scale = 132/42 = 22/7;
    #         b = 0.15 * 22/7 = 3.3/7 = 0.471428..., c = (1/6) * 22/7 = 11/21 = 0.523809...
    densities = erk_densities(shapes, 0.5)
    assert densities["a"] == 1.0
    assert densities["b"] == pytest.approx(3.3 / 7, rel=1e-12)
    assert densities["c"] == pytest.approx(11 / 21, rel=1e-12)
    # Shares: b = 94.2857, c = 37.714; floors 94 + 37 = 131 of 132, the remainder goes to c (0.714 > 0.286).
    assert allocate(shapes, 0.5, "erk") == {"a": 8, "b": 94, "c": 38}


def test_er_hand_computed_with_two_layers_made_dense_together():
    shapes = {"a": (2, 4), "b": (20, 10), "c": (4, 2, 3, 3)}
    # ER ignores kernel dims: (n_out + n_in)/(n_out * n_in): a = 6/8 = 0.75, b = 0.15, c = 6/8 = 0.75.
    # Pass 1: weighted = 0.75*8 + 0.15*200 + 0.75*72 = 6 + 30 + 54 = 90; scale = 140/90 = 1.556;
    #         a and c would get 0.75 * 1.556 = 1.17 > 1 -> both dense.
    # Pass 2: budget = 140 - 8 - 72 = 60; weighted = 30; scale = 2; b = 0.15 * 2 = 0.3 -> 60 nonzeros.
    densities = erk_densities(shapes, 0.5, kind="er")
    assert densities == {"a": 1.0, "b": pytest.approx(0.3, rel=1e-12), "c": 1.0}
    assert allocate(shapes, 0.5, "er") == {"a": 8, "b": 60, "c": 72}


def test_erk_cascade_where_a_second_layer_overflows_only_after_the_first_is_made_dense():
    shapes = {"x": (2, 40), "y": (8, 8), "z": (40, 40)}
    # numel 80, 64, 1600 (total 1744); density 0.28 -> budget 488.32.
    # raw: x = 42/80 = 0.525, y = 16/64 = 0.25, z = 80/1600 = 0.05.
    # Pass 1: weighted = 42 + 16 + 80 = 138; scale = 3.5386: x -> 1.858 (dense), y -> 0.885 (fits).
    # Pass 2: budget = 408.32; weighted = 16 + 80 = 96; scale = 4.2533: y -> 1.063 (now dense).
    # Pass 3: budget = 344.32; weighted = 80; scale = 4.304: z = 0.05 * 4.304 = 0.2152 -> 344.32 nonzeros.
    densities = erk_densities(shapes, 0.28)
    assert densities["x"] == 1.0 and densities["y"] == 1.0
    assert densities["z"] == pytest.approx(344.32 / 1600, rel=1e-12)
    assert allocate(shapes, 0.72, "erk") == {"x": 80, "y": 64, "z": 344}


def test_erk_with_a_pinned_tensor_re_solves_the_rest():
    shapes = {"a": (2, 4), "b": (20, 10), "c": (4, 2, 3, 3)}
    # b pinned at sparsity 0.9 -> 20 nonzeros. Budget left: 140 - 20 = 120 for a and c.
    # weighted = 6 + 12 = 18; scale = 6.67 -> a dense (5.0 > 1). Then 120 - 8 = 112 for c (72 weights):
    # scale = 112 / 12 = 9.33 -> c would get 1.56 > 1 -> dense too: 8 + 20 + 72 = 100 < 140 is all we can do.
    counts = allocate(shapes, 0.5, "erk", fixed={"b": 0.9})
    assert counts == {"a": 8, "b": 20, "c": 72}
    # At density 0.25 (budget 70): 70 - 20 = 50; weighted 18, scale 2.78 -> a dense (2.08);
    # then 42 for c: scale 42/12 = 3.5 -> density 7/12 = 0.5833 -> 42 nonzeros.
    assert allocate(shapes, 0.75, "erk", fixed={"b": 0.9}) == {"a": 8, "b": 20, "c": 42}


def test_uniform_puts_every_free_tensor_at_the_target_and_pins_the_rest():
    shapes = {"a": (10, 10), "b": (5, 3), "c": (7, 1, 3)}
    # (1 - 0.8) * 100 = 20; 0.2 * 15 = 3; 0.2 * 21 = 4.2 -> 4.
    assert allocate(shapes, 0.8, "uniform") == {"a": 20, "b": 3, "c": 4}
    assert allocate(shapes, 0.8, "uniform", fixed={"a": 0.0}) == {"a": 100, "b": 3, "c": 4}


def _shapes_strategy():
    dims = st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple)
    return st.lists(dims, min_size=1, max_size=5).map(lambda ls: {f"t{i}": s for i, s in enumerate(ls)})


@QUICK
@given(shapes=_shapes_strategy(), sparsity=st.floats(0.0, 0.99), kind=st.sampled_from(["er", "erk"]))
def test_er_erk_properties(shapes, sparsity, kind):
    """Totals match; each count is within one weight of its real share; dense tensors really overflowed."""
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(numel.values())
    densities = erk_densities(shapes, 1 - sparsity, kind=kind)
    counts = allocate(shapes, sparsity, kind)
    assert all(0.0 <= d <= 1.0 for d in densities.values())
    for name in shapes:
        assert 0 <= counts[name] <= numel[name]
        assert abs(counts[name] - densities[name] * numel[name]) < 1.0
    assert abs(sum(counts.values()) - (1 - sparsity) * total) <= 0.5 + 1e-6
    # Densities of the non-dense tensors are proportional to their raw score.
    raw = {n: (sum(s) if kind == "erk" else s[0] + s[1]) / (math.prod(s) if kind == "erk" else s[0] * s[1])
           for n, s in shapes.items()}
    free = [n for n in shapes if densities[n] < 1.0]
    if free:
        scale = densities[free[0]] / raw[free[0]]
        for n in free:
            assert densities[n] == pytest.approx(scale * raw[n], rel=1e-9)
        # A tensor is dense only if its scaled raw score reaches 1 (RigL's rule, re-solved).
        for n in shapes:
            if densities[n] == 1.0:
                assert scale * raw[n] >= 1.0 - 1e-9


@QUICK
@given(shapes=_shapes_strategy(), sparsity=st.floats(0.0, 0.99))
def test_uniform_counts_are_within_one_of_each_share(shapes, sparsity):
    counts = allocate(shapes, sparsity, "uniform")
    for name, shape in shapes.items():
        assert abs(counts[name] - (1 - sparsity) * math.prod(shape)) < 1.0


@QUICK
@given(shapes=_shapes_strategy(), sparsity=st.floats(0.0, 0.99),
       distribution=st.sampled_from(["uniform", "er", "erk", "global"]), seed=st.integers(0, 10))
def test_random_masks_are_bool_with_the_allocated_counts(shapes, sparsity, distribution, seed):
    params = {n: torch.empty(s) for n, s in shapes.items()}

    def draw():
        if distribution == "global":  # "global" is a scope: one draw over all tensors
            return random_masks(params, sparsity, "uniform", torch.Generator().manual_seed(seed), scope="global")
        return random_masks(params, sparsity, distribution, torch.Generator().manual_seed(seed))

    masks = draw()
    assert all(m.dtype == torch.bool and m.shape == params[n].shape for n, m in masks.items())
    counts = {n: int(m.sum()) for n, m in masks.items()}
    total = sum(p.numel() for p in params.values())
    if distribution == "global":
        # One draw over all tensors: the total is exact.
        assert sum(counts.values()) == round((1 - sparsity) * total)
    else:
        assert counts == allocate(shapes, sparsity, distribution)
    # Same generator seed -> same masks (every rank and device draws alike).
    again = draw()
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_check_distribution_names_the_value_and_the_choices():
    assert check_distribution("ERK") == "erk"
    with pytest.raises(ValueError, match=r"distribution='gaussian'.*uniform, er, erk$"):
        check_distribution("gaussian")
    # "global" is a scope, not a distribution: the message says where it went.
    with pytest.raises(ValueError, match=r"distribution='global' is not allowed: 'global' is a scope, not a "
                                         r"distribution: use scope='global'"):
        check_distribution("global")
    with pytest.raises(ValueError, match=r"distribution='nope'"):
        allocate({"a": (2, 2)}, 0.5, "nope")
