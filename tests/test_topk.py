"""Exact top-k (sparsetrain.topk) against a stable-sort reference: exact counts, lowest index wins ties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsetrain import native, topk
from sparsetrain.topk import NEG_INF, drop_and_grow, exact_counts, global_topk_masks, topk_mask

# The path fixture below is set once per test, not per example, which is what hypothesis warns about.
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

HAS_NATIVE = native.compiler() is not None and native.native_enabled()


@pytest.fixture(autouse=True, params=["native", "torch"])
def selection_path(request, monkeypatch):
    """Every test runs on both selection paths: the C kernels (native/select.c) and pure PyTorch."""
    if request.param == "native":
        if not HAS_NATIVE:
            pytest.skip("no C compiler: the native selection kernels cannot be built here")
        assert topk._native_library([torch.zeros(1)], None) is not None
    else:
        monkeypatch.setattr(topk, "_native_library", lambda tensors, eligible: None)
    return request.param


def reference_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Stable descending sort in plain Python: the first k after sorting by (-score, flat index)."""
    values = scores.reshape(-1).tolist()
    k = max(0, min(k, len(values)))
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    mask = torch.zeros(len(values), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view_as(scores)


# Small integer pools make heavy ties; -inf entries stand for "never choose unless forced".
tied_values = st.one_of(st.integers(-3, 3).map(float), st.just(NEG_INF))
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3)


@QUICK
@given(data=st.data(), shape=shapes)
def test_topk_mask_matches_stable_sort_with_heavy_ties_and_neg_inf(data, shape):
    n = math.prod(shape)
    values = data.draw(st.lists(tied_values, min_size=n, max_size=n))
    k = data.draw(st.integers(-2, n + 2))
    scores = torch.tensor(values).view(shape)
    mask = topk_mask(scores, k)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert int(mask.sum()) == max(0, min(k, n))
    assert torch.equal(mask, reference_topk(scores, k))


@QUICK
@given(data=st.data(), shape=shapes)
def test_topk_mask_matches_stable_sort_on_distinct_floats(data, shape):
    n = math.prod(shape)
    values = data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n, max_size=n, unique=True))
    k = data.draw(st.integers(0, n))
    scores = torch.tensor(values, dtype=torch.float64).view(shape)
    assert torch.equal(topk_mask(scores, k), reference_topk(scores, k))


def test_all_equal_scores_keep_the_lowest_indices():
    mask = topk_mask(torch.zeros(3, 4), 5)
    assert mask.reshape(-1).tolist() == [True] * 5 + [False] * 7


def test_neg_inf_is_chosen_only_when_k_exceeds_the_finite_entries():
    scores = torch.tensor([NEG_INF, 1.0, NEG_INF, 0.5, NEG_INF])
    assert topk_mask(scores, 2).tolist() == [False, True, False, True, False]
    # k = 4: both finite ones, then the two lowest-index -inf entries.
    assert topk_mask(scores, 4).tolist() == [True, True, True, True, False]


@pytest.mark.parametrize("layout", ["ascending", "descending", "blocks", "random_ties"])
def test_large_tensor_path_is_exact_on_adversarial_layouts(layout):
    """Above ~1M entries topk narrows by sampling; the answer must still equal the stable-sort reference."""
    n = (1 << 20) + 12_345
    g = torch.Generator().manual_seed(7)
    if layout == "ascending":
        flat = torch.arange(n, dtype=torch.float32) // 3  # every value tied three times, sorted
    elif layout == "descending":
        flat = (n - torch.arange(n, dtype=torch.float32)) // 5
    elif layout == "blocks":
        flat = torch.zeros(n)
        flat[: n // 2] = 1.0  # half the tensor ties at the threshold
        flat[n // 4 : n // 4 + 1000] = NEG_INF
    else:
        flat = torch.randint(0, 50, (n,), generator=g).float()
    for k in (1, 1000, n // 3, n // 2, n - 7):
        mask = topk_mask(flat, k)
        # Reference: stable descending sort (equal values keep index order, so the lowest index wins).
        order = torch.sort(flat, descending=True, stable=True).indices[:k]
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order] = True
        assert int(mask.sum()) == k
        assert torch.equal(mask, expected), (layout, k)


@QUICK
@given(data=st.data(), sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4))
def test_global_topk_equals_topk_over_the_concatenation_in_mapping_order(data, sizes):
    scores = {f"t{i}": torch.tensor(data.draw(st.lists(tied_values, min_size=s, max_size=s)))
              for i, s in enumerate(sizes)}
    k = data.draw(st.integers(0, sum(sizes)))
    masks = global_topk_masks(scores, k)
    assert list(masks) == list(scores)
    flat = torch.cat([masks[name] for name in scores])
    assert torch.equal(flat, reference_topk(torch.cat(list(scores.values())), k))


@QUICK
@given(data=st.data(), shape=shapes, forbid_mode=st.sampled_from(["none", "mask", "random"]))
def test_drop_and_grow_keeps_the_count_and_grows_only_outside_the_survivors(data, shape, forbid_mode):
    n = math.prod(shape)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(shape)
    drop = torch.tensor(data.draw(st.lists(st.integers(0, 4).map(float), min_size=n, max_size=n))).view(shape)
    grow = torch.tensor(data.draw(st.lists(st.integers(0, 4).map(float), min_size=n, max_size=n))).view(shape)
    forbid = {"none": None, "mask": mask,
              "random": torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(shape)}[
        forbid_mode]
    n_swap = data.draw(st.integers(0, n))
    new, kept = drop_and_grow(mask, drop, grow, n_swap, forbid=forbid)
    active = int(mask.sum())
    assert new.dtype == torch.bool and kept.dtype == torch.bool
    assert int(new.sum()) == active  # the count never changes
    assert not bool((kept & ~mask).any())  # survivors were active
    grown = new & ~kept
    # How many were really swapped: capped by the active count and (with forbid) by the allowed candidates.
    expected_swap = min(n_swap, active)
    if forbid is not None:
        expected_swap = min(expected_swap, int((~mask & ~forbid).sum()))
    assert int(kept.sum()) == active - expected_swap
    assert int(grown.sum()) == expected_swap
    if forbid is not None:
        assert not bool((grown & forbid).any())
    if expected_swap:
        # Survivors are the top of the drop ranking among active entries (inactive ranked at -inf) ...
        assert torch.equal(kept, reference_topk(drop.masked_fill(~mask, NEG_INF), active - expected_swap))
        # ... and growth is the top of the growth ranking among non-survivors (and non-forbidden).
        blocked = kept if forbid is None else kept | forbid
        assert torch.equal(grown, reference_topk(grow.masked_fill(blocked, NEG_INF), expected_swap))


def test_drop_and_grow_known_answer():
    mask = torch.tensor([True, True, True, False, False, False])
    drop = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.0, 0.0])
    grow = torch.tensor([0.0, 5.0, 0.0, 1.0, 3.0, 3.0])
    new, kept = drop_and_grow(mask, drop, grow, 2)
    # Drop the two weakest active (index 1: 0.1, index 2: 0.5); grow the best two of {1..5}: 1 (5.0), then
    # 4 and 5 tie at 3.0 and index 4 wins.
    assert kept.tolist() == [True, False, False, False, False, False]
    assert new.tolist() == [True, True, False, False, True, False]
    new, _ = drop_and_grow(mask, drop, grow, 2, forbid=mask)
    # Forbidding previously active positions: grow 4 and 5.
    assert new.tolist() == [True, False, False, False, True, True]


@QUICK
@given(values=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=8))
def test_exact_counts_sum_to_total_and_stay_within_one(values):
    total = round(sum(values))
    counts = exact_counts(values, total)
    assert sum(counts) == total
    assert all(abs(c - v) < 1 for c, v in zip(counts, values, strict=True))


def test_exact_counts_largest_remainder_known_answer():
    # floors 1, 2, 0 (sum 3); two more go to the largest remainders .7 (index 2) and .5 (index 0).
    assert exact_counts([1.5, 2.2, 0.7], 5) == [2, 2, 1]
    # equal remainders: the lower index first
    assert exact_counts([0.5, 0.5, 0.5], 1) == [1, 0, 0]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_selection_is_exact_with_several_threads_and_eligibility(threads):
    """The kernels split the work over OpenMP threads; the answer must not depend on how many."""
    g = torch.Generator().manual_seed(threads)
    n = 300_001
    scores = torch.randint(0, 2000, (n,), generator=g).float() / 7  # many ties
    eligible = torch.rand(n, generator=g) < 0.3
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (1, 5000, int(eligible.sum()) - 3):
            mask = topk_mask(scores, k, eligible)
            order = torch.sort(torch.where(eligible, scores, -1.0), descending=True, stable=True).indices[:k]
            expected = torch.zeros(n, dtype=torch.bool)
            expected[order] = True
            assert torch.equal(mask, expected), k
        parts = {"a": scores[:100_000], "b": scores[100_000:]}
        masks = global_topk_masks(parts, 77_777)
        order = torch.sort(scores, descending=True, stable=True).indices[:77_777]
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order] = True
        assert torch.equal(torch.cat([masks["a"], masks["b"]]), expected)
    finally:
        torch.set_num_threads(before)
