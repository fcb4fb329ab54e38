"""The selection primitive: budgets (layer or global scope) and keep_top, against a sort-based reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.distributions import allocate
from sparsetrain.selection import Budget, budget, check_scope, keep_top, resolve_scope

QUICK = settings(max_examples=60, deadline=None)


def reference_top(scores: dict[str, torch.Tensor], k: int, eligible: dict[str, torch.Tensor] | None = None):
    """The k best entries over ``scores`` taken together by a full stable sort: ties to the lowest index in the
    mapping's order, then in each tensor's flat order; only eligible entries can be kept."""
    entries = []
    for t, (name, score) in enumerate(scores.items()):
        flat = score.reshape(-1).tolist()
        allowed = eligible[name].reshape(-1).tolist() if eligible is not None else [True] * len(flat)
        entries += [(-value, t, i) for i, (value, ok) in enumerate(zip(flat, allowed)) if ok]
    chosen = {(t, i) for _, t, i in sorted(entries)[:k]}
    return {name: torch.tensor([(t, i) in chosen for i in range(score.numel())]).view(score.shape)
            for t, (name, score) in enumerate(scores.items())}


def _scores(shapes: dict[str, tuple[int, ...]], seed: int, levels: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Few distinct values: many ties, so the tie rule is exercised.
    return {n: torch.randint(0, levels, s, generator=g).float() for n, s in shapes.items()}


_SHAPES = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                          st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4)


@QUICK
@given(shapes=_SHAPES, sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 50), levels=st.sampled_from([2, 5, 1000]),
       distribution=st.sampled_from(["uniform", "er", "erk"]))
def test_layer_scope_keeps_each_tensors_allocated_top_entries(shapes, sparsity, seed, levels, distribution):
    scores = _scores(shapes, seed, levels)
    wanted = budget(shapes, sparsity, distribution=distribution)
    assert wanted == Budget(allocate(shapes, sparsity, distribution))
    masks = keep_top(scores, wanted)
    for name in shapes:
        expected = reference_top({name: scores[name]}, wanted.counts[name])[name]
        assert torch.equal(masks[name], expected), name


@QUICK
@given(shapes=_SHAPES, sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 50), levels=st.sampled_from([2, 5, 1000]))
def test_global_scope_keeps_the_top_entries_over_all_tensors(shapes, sparsity, seed, levels):
    scores = _scores(shapes, seed, levels)
    wanted = budget(shapes, sparsity, scope="global")
    total = sum(math.prod(s) for s in shapes.values())
    assert wanted == Budget({}, round((1 - sparsity) * total))
    masks = keep_top(scores, wanted)
    expected = reference_top(scores, wanted.global_count)
    assert all(torch.equal(masks[n], expected[n]) for n in shapes)
    assert list(masks) == list(scores)


def test_global_scope_pins_tensors_and_ranks_the_others_at_the_sparsity():
    shapes = {"a": (4, 5), "b": (10, 10), "c": (2, 5)}
    wanted = budget(shapes, 0.8, scope="global", fixed={"a": 0.0, "c": 0.5})
    # Pinned tensors keep round((1 - s) * numel); the others together keep round((1 - 0.8) * 100).
    assert wanted == Budget({"a": 20, "c": 5}, 20)
    masks = keep_top(_scores(shapes, 0, 1000), wanted)
    assert {n: int(m.sum()) for n, m in masks.items()} == {"a": 20, "b": 20, "c": 5}


@QUICK
@given(shapes=_SHAPES, sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 50), scope=st.sampled_from(["layer",
                                                                                                         "global"]))
def test_eligible_entries_only_and_pruning_never_adds(shapes, sparsity, seed, scope):
    g = torch.Generator().manual_seed(seed + 1)
    eligible = {n: torch.rand(s, generator=g) < 0.6 for n, s in shapes.items()}
    scores = {n: s.abs() for n, s in _scores(shapes, seed, 7).items()}
    wanted = budget(shapes, sparsity, scope=scope)
    masks = keep_top(scores, wanted, eligible=eligible)
    for name in shapes:
        assert not bool((masks[name] & ~eligible[name]).any())  # never adds
    if scope == "layer":
        for name in shapes:
            active = int(eligible[name].sum())
            if wanted.counts[name] >= active:
                assert masks[name] is eligible[name]  # nothing to prune: the mask is kept as it is
            else:
                expected = reference_top({name: scores[name]}, wanted.counts[name], {name: eligible[name]})
                assert torch.equal(masks[name], expected[name])
    else:
        active = sum(int(m.sum()) for m in eligible.values())
        expected = reference_top(scores, min(wanted.global_count, active), eligible)
        assert all(torch.equal(masks[n], expected[n]) for n in shapes)


@QUICK
@given(seed=st.integers(0, 50), keep=st.integers(0, 30), other=st.integers(0, 12), with_eligible=st.booleans())
def test_a_unit_of_tensors_is_ranked_as_one_vector_and_its_masks_stay_per_tensor(seed, keep, other, with_eligible):
    """A (weight, bias) unit keeps the top ``keep`` of its entries ranked together, exactly as one tensor would; a
    tensor outside the unit has its own count, and the rest share the global count."""
    shapes = {"fc.weight": (4, 5), "fc.bias": (4,), "out.weight": (3, 4), "out.bias": (3,)}
    scores = {n: s.abs() for n, s in _scores(shapes, seed, 5).items()}
    g = torch.Generator().manual_seed(seed)
    eligible = {n: torch.rand(s, generator=g) < 0.7 for n, s in shapes.items()} if with_eligible else None
    wanted = Budget({"fc": keep, "out.weight": other}, global_count=1, units={"fc": ("fc.weight", "fc.bias")})
    masks = keep_top(scores, wanted, eligible=eligible)
    assert list(masks) == list(shapes) and all(masks[n].shape == shapes[n] for n in shapes)
    unit = ("fc.weight", "fc.bias")
    pair = {n: scores[n] for n in unit}
    allowed = None if eligible is None else {n: eligible[n] for n in unit}
    if allowed is not None and keep >= sum(int(m.sum()) for m in allowed.values()):
        assert all(masks[n] is allowed[n] for n in unit)  # pruning never adds
    else:
        expected = reference_top(pair, keep, allowed)
        assert all(torch.equal(masks[n], expected[n]) for n in unit)
    lone = None if eligible is None else {"out.weight": eligible["out.weight"]}
    if lone is None or other < int(lone["out.weight"].sum()):
        assert torch.equal(masks["out.weight"], reference_top({"out.weight": scores["out.weight"]}, other,
                                                              lone)["out.weight"])
    assert int(masks["out.bias"].sum()) == (1 if eligible is None else min(1, int(eligible["out.bias"].sum())))


def test_a_budget_must_cover_every_tensor():
    with pytest.raises(ValueError, match="keep_top: no count for b"):
        keep_top({"a": torch.ones(2), "b": torch.ones(2)}, Budget({"a": 1}))


def test_scope_words_and_the_old_spelling():
    assert check_scope("layer") == "layer" and check_scope("global") == "global"
    with pytest.raises(ValueError, match=r"scope='layerwise' is not allowed: it is spelled 'layer' now"):
        check_scope("layerwise")
    with pytest.raises(ValueError, match=r"scope='uniform' is not allowed; choose one of 'layer', 'global'"):
        check_scope("uniform")


def test_a_distribution_given_without_a_scope_means_the_layer_scope():
    defaults = {"default_scope": "global", "default_distribution": "uniform"}
    assert resolve_scope(None, None, **defaults) == ("global", "uniform")
    assert resolve_scope(None, "erk", **defaults) == ("layer", "erk")
    assert resolve_scope("layer", None, **defaults) == ("layer", "uniform")
    with pytest.raises(ValueError, match=r"distribution='erk' is not allowed with scope='global'"):
        resolve_scope("global", "erk", **defaults)


# -- the N:M axis ------------------------------------------------------------------------------------------------

def test_nm_budget_selects_n_of_every_m_and_keeps_the_tensors_that_cannot_follow_it_whole():
    from sparsetrain.nm import NMLayout, nm_mask
    from sparsetrain.selection import Groups, nm_budget

    layouts = {"a": NMLayout("a", (6, 8), 1), "b": NMLayout("b", (8, 4), 0), "c": NMLayout("c", (5, 6), 1, "odd")}
    wanted = nm_budget(layouts, "2:4")
    assert wanted.groups == {"a": Groups(wanted.groups["a"].pattern, 1), "b": Groups(wanted.groups["b"].pattern, 0)}
    assert wanted.counts == {"c": 30} and wanted.global_count is None
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(layout.shape, generator=g) for n, layout in layouts.items()}  # any sign
    masks = keep_top(scores, wanted)
    assert torch.equal(masks["a"], nm_mask(scores["a"], "2:4", dim=1))
    assert torch.equal(masks["b"], nm_mask(scores["b"], "2:4", dim=0))
    assert bool(masks["c"].all())
    # eligible: only eligible entries are kept, a group with fewer than N eligible keeps just those
    eligible = {n: torch.rand(layout.shape, generator=g) > 0.4 for n, layout in layouts.items()}
    pruned = keep_top(scores, wanted, eligible=eligible)
    assert all(bool((pruned[n] & ~eligible[n]).sum() == 0) for n in layouts)
    assert torch.equal(pruned["a"], nm_mask(scores["a"], "2:4", dim=1, eligible=eligible["a"]))
    # only 0 (dense) can be pinned
    assert nm_budget(layouts, "2:4", fixed={"a": 0.0}).counts == {"a": 48, "c": 30}
    with pytest.raises(ValueError, match="a sparsity of 0.5 pinned for 'a' is not allowed with pattern='2:4'"):
        nm_budget(layouts, "2:4", fixed={"a": 0.5})


def test_random_masks_under_a_pattern_are_random_n_of_m_and_seeded():
    from torch import nn

    from sparsetrain.masks import random_masks, select_prunable
    from sparsetrain.nm import is_nm, nm_layouts

    model = nn.Sequential(nn.Linear(8, 12), nn.Linear(12, 6), nn.Linear(6, 3))
    params = select_prunable(model)
    layouts = nm_layouts(model, params, "1:4")
    draw = lambda seed: random_masks(params, 0.9, "erk", torch.Generator().manual_seed(seed), pattern="1:4",
                                     layouts=layouts)
    masks = draw(0)
    assert is_nm(masks["0.weight"], "1:4") and is_nm(masks["1.weight"], "1:4") and bool(masks["2.weight"].all())
    assert all(torch.equal(masks[n], draw(0)[n]) for n in masks)
    assert not torch.equal(masks["0.weight"], draw(1)["0.weight"])
    with pytest.raises(ValueError, match="needs layouts"):
        random_masks(params, 0.9, "erk", torch.Generator(), pattern="1:4")
