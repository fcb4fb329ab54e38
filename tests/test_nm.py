"""N:M structured sparsity (sparsetrain.nm): masks, within-group drop-and-grow, layouts per layer type, report.

Every result is checked against a plain-Python restatement that walks the groups by explicit indexing (for a
convolution: ``weight[o, g*M:(g+1)*M, *k]``, as NVIDIA's ASP groups input channels), so the grouping itself is
tested, not only the counts.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.nm import (
    NMLayout,
    NMPattern,
    group_counts,
    is_nm,
    nm_drop_and_grow,
    nm_layouts,
    nm_mask,
    nm_masks,
    nm_report,
    reduction_dim,
)

QUICK = settings(max_examples=60, deadline=None)
PATTERNS = ["1:2", "2:4", "1:4", "3:4", "2:8", "4:8", "2:3"]


def groups_of(shape: tuple[int, ...], dim: int, m: int) -> list[list[tuple[int, ...]]]:
    """Index tuples of every group: for each position of the other dims, runs of m along ``dim``."""
    others = [range(s) for i, s in enumerate(shape) if i != dim % len(shape)]
    out = []
    for rest in itertools.product(*others):
        for start in range(0, shape[dim], m):
            group = []
            for j in range(start, start + m):
                index = list(rest)
                index.insert(dim % len(shape), j)
                group.append(tuple(index))
            out.append(group)
    return out


def reference_mask(scores, pattern, dim=1, eligible=None):
    """Per group: sort by (ineligible last, score descending, index ascending), keep the first N eligible."""
    p = NMPattern.parse(pattern)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for group in groups_of(tuple(scores.shape), dim, p.m):
        ok = [True if eligible is None else bool(eligible[i]) for i in group]
        order = sorted(range(p.m), key=lambda j: (not ok[j], -float(scores[group[j]]), j))
        for j in order[: p.n]:
            if ok[j]:
                mask[group[j]] = True
    return mask


def tied(shape, data, pool=3):
    """Scores from a tiny integer pool: many ties."""
    n = 1
    for s in shape:
        n *= s
    values = data.draw(st.lists(st.integers(-pool, pool), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float32).view(shape)


@st.composite
def layers(draw):
    """A pattern and a prunable layer whose reduction dim fits it: Linear, Conv1d/2d (grouped, depthwise), ConvT."""
    pattern = NMPattern.parse(draw(st.sampled_from(PATTERNS)))
    m = pattern.m
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d", "grouped", "depthwise", "convT"]))
    if kind == "linear":
        layer = nn.Linear(m * draw(st.integers(1, 3)), draw(st.integers(1, 4)), bias=False)
    elif kind == "conv1d":
        layer = nn.Conv1d(m * draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    elif kind == "conv2d":
        layer = nn.Conv2d(m * draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        layer = nn.Conv2d(m * groups, groups * draw(st.integers(1, 2)), 2, groups=groups)
    elif kind == "depthwise":  # one input channel per group: kept dense
        channels = draw(st.integers(1, 4))
        layer = nn.Conv2d(channels, channels, 3, groups=channels)
    else:
        layer = nn.ConvTranspose2d(m * draw(st.integers(1, 2)), draw(st.integers(1, 3)), 2)
    return pattern, layer


@QUICK
@given(case=layers(), data=st.data())
def test_nm_mask_matches_reference_on_every_layer_type(case, data):
    pattern, layer = case
    layout = nm_layouts(layer, {"weight": layer.weight}, pattern)["weight"]
    assert layout.dim == (0 if isinstance(layer, nn.ConvTranspose2d) else 1)
    scores = tied(tuple(layer.weight.shape), data)
    if not layout.patterned:
        assert isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels and pattern.m > 1
        with pytest.raises(ValueError, match="not a multiple"):
            nm_mask(scores, pattern, dim=layout.dim)
        assert bool(nm_masks({"weight": scores}, {"weight": layout}, pattern)["weight"].all())
        return
    mask = nm_mask(scores, pattern, dim=layout.dim)
    assert mask.dtype == torch.bool and mask.shape == scores.shape and mask.is_contiguous()
    assert torch.equal(mask, reference_mask(scores, pattern, layout.dim))
    assert is_nm(mask, pattern, layout.dim)
    assert bool((group_counts(mask, pattern, layout.dim) == pattern.n).all())
    assert int(mask.sum()) == mask.numel() * pattern.n // pattern.m


@QUICK
@given(data=st.data(), pattern=st.sampled_from(PATTERNS), rows=st.integers(1, 4), groups=st.integers(1, 3))
def test_nm_mask_with_eligible_keeps_only_eligible(data, pattern, rows, groups):
    p = NMPattern.parse(pattern)
    shape = (rows, p.m * groups)
    scores = tied(shape, data)
    eligible = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows * p.m * groups,
                                               max_size=rows * p.m * groups))).view(shape)
    mask = nm_mask(scores, pattern, eligible=eligible)
    assert not bool((mask & ~eligible).any())
    assert torch.equal(mask, reference_mask(scores, pattern, 1, eligible))
    # Each group keeps min(N, its eligible count).
    expected = torch.clamp(group_counts(eligible, pattern), max=p.n)
    assert torch.equal(group_counts(mask, pattern), expected)


def test_ties_go_to_the_lowest_index_in_the_group_and_negative_scores_work():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, -2.0, -1.0, -1.0, -3.0]])
    assert nm_mask(scores, "2:4").tolist() == [[True, True, False, False, False, True, True, False]]
    # -0.0 and 0.0 tie: the lower index wins, whatever the sign bit.
    zeros = torch.tensor([[-0.0, 0.0, -0.0, 0.0]])
    assert nm_mask(zeros, "1:4").tolist() == [[True, False, False, False]]


def test_nm_mask_is_deterministic_across_layouts_and_dtypes():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (16, 8, 3, 3), generator=gen).float()
    mask = nm_mask(scores, "2:4")
    assert torch.equal(mask, nm_mask(scores, "2:4"))
    assert torch.equal(mask, nm_mask(scores.double(), "2:4"))
    channels_last = scores.to(memory_format=torch.channels_last)
    assert torch.equal(mask, nm_mask(channels_last, "2:4"))
    # The transposed tensor, grouped along its dim 0, is the same selection.
    assert torch.equal(mask.transpose(0, 1), nm_mask(scores.transpose(0, 1), "2:4", dim=0))


def test_nm_mask_rejects_nan_and_bad_arguments():
    with pytest.raises(ValueError, match="NaN"):
        nm_mask(torch.tensor([[float("nan"), 1.0, 2.0, 3.0]]), "2:4")
    with pytest.raises(ValueError, match="not a multiple of M=4"):
        nm_mask(torch.ones(2, 6), "2:4")
    with pytest.raises(ValueError, match="out of range"):
        nm_mask(torch.ones(2, 4), "2:4", dim=2)
    assert not is_nm(torch.ones(2, 6, dtype=torch.bool), "2:4")
    assert not is_nm(torch.ones(8, dtype=torch.bool), "2:4")


@pytest.mark.parametrize("value", ["2:2", "0:4", "4:2", "2-4", "a:b", "", 4, None])
def test_pattern_parse_rejects(value):
    with pytest.raises(ValueError, match="pattern"):
        NMPattern.parse(value)


def test_pattern_parse_and_sparsity():
    assert NMPattern.parse(" 2 : 4 ") == NMPattern(2, 4)
    assert NMPattern.parse(NMPattern(1, 4)).sparsity == 0.75
    assert str(NMPattern.parse("3:6")) == "3:6"  # M need not be a power of two
    with pytest.raises(TypeError, match="int"):
        NMPattern(2.0, 4)


def test_layouts_per_layer_type_and_report():
    model = nn.ModuleDict({
        "conv_rgb": nn.Conv2d(3, 8, 3),  # 3 input channels: kept dense
        "conv": nn.Conv2d(8, 8, 3),
        "depthwise": nn.Conv2d(8, 8, 3, groups=8),
        "deconv": nn.ConvTranspose2d(8, 6, 2),
        "emb": nn.Embedding(10, 8),
        "attn": nn.MultiheadAttention(8, 2),
        "lstm": nn.LSTM(8, 6),  # weight_hh_l0 is 24 x 6: kept dense
        "fc": nn.Linear(8, 3),
    })
    params = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    layouts = nm_layouts(model, params, "2:4")
    assert layouts["deconv.weight"].dim == 0 and layouts["deconv.weight"].patterned
    assert {n for n, l in layouts.items() if not l.patterned} == {"conv_rgb.weight", "depthwise.weight",
                                                                 "lstm.weight_hh_l0"}
    assert "size 3, not a multiple of M=4" in layouts["conv_rgb.weight"].dense_reason
    assert all(l.dim == 1 for n, l in layouts.items() if n != "deconv.weight")
    assert reduction_dim(model["lstm"], "weight_ih_l0") == 1
    masks = nm_masks({n: p.detach().abs() for n, p in params.items()}, layouts, "2:4")
    report = nm_report(masks, layouts, "2:4")
    assert report.follows and sorted(report.dense) == ["conv_rgb.weight", "depthwise.weight", "lstm.weight_hh_l0"]
    assert all(masks[n].all() for n in report.dense)
    table = str(report)
    assert "kept dense" in table and "follows" in table
    assert report.to_dict()["layers"][1]["status"] == "follows"
    # A broken mask is reported, with the number of groups off.
    masks["fc.weight"] = torch.ones_like(masks["fc.weight"])
    broken = nm_report(masks, layouts, "2:4")
    assert not broken.follows
    row = next(l for l in broken.layers if l.layout.name == "fc.weight")
    assert row.status == "violates" and row.groups_off == row.groups == 6


# ----------------------------------------------------------------------------------------------------- drop-and-grow

def reference_drop_and_grow(mask, drop, grow, n_swap, pattern, dim, per_group, forbid):
    """Plain restatement: per-group caps, the drop (per group or tensor-wide), then per-group growth."""
    p = NMPattern.parse(pattern)
    shape = tuple(mask.shape)
    groups = groups_of(shape, dim, p.m)
    flat_index = lambda idx: sum(i * s for i, s in zip(idx, torch.empty(shape).stride()))
    kept = torch.zeros(shape, dtype=torch.bool)
    cap = {}
    for g, group in enumerate(groups):
        free = sum(1 for i in group if not mask[i] and (forbid is None or not forbid[i]))
        cap[g] = p.n if forbid is None else min(p.n, free)
    if per_group:
        for g, group in enumerate(groups):
            active = sorted((j for j in range(p.m) if mask[group[j]]), key=lambda j: (-float(drop[group[j]]), j))
            for j in active[: p.n - min(cap[g], max(n_swap, 0))]:
                kept[group[j]] = True
    else:
        droppable = []
        for g, group in enumerate(groups):
            active = sorted((j for j in range(p.m) if mask[group[j]]), key=lambda j: (-float(drop[group[j]]), j))
            for j in active[: p.n - cap[g]]:
                kept[group[j]] = True
            droppable += [group[j] for j in active[p.n - cap[g]:]]
        k = min(max(n_swap, 0), len(droppable))
        droppable.sort(key=lambda i: (-float(drop[i]), flat_index(i)))
        for i in droppable[: len(droppable) - k]:
            kept[i] = True
    new = kept.clone()
    for group in groups:
        dropped = p.n - sum(1 for i in group if kept[i])
        candidates = [j for j in range(p.m) if not kept[group[j]] and (forbid is None or not forbid[group[j]])]
        candidates.sort(key=lambda j: (-float(grow[group[j]]), j))
        for j in candidates[:dropped]:
            new[group[j]] = True
    return new, kept


@QUICK
@given(case=layers(), data=st.data(), per_group=st.booleans(), forbid_mode=st.sampled_from(["none", "mask", "random"]))
def test_drop_and_grow_keeps_every_group_at_n_and_matches_reference(case, data, per_group, forbid_mode):
    pattern, layer = case
    dim = reduction_dim(layer, "weight")
    shape = tuple(layer.weight.shape)
    if shape[dim] % pattern.m:
        return
    mask = nm_mask(torch.rand(shape, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))),
                   pattern, dim=dim)
    drop = tied(shape, data).abs()  # drop scores are magnitudes: non-negative
    grow = tied(shape, data)
    forbid = {"none": None, "mask": mask,
              "random": torch.tensor(data.draw(st.lists(st.booleans(), min_size=mask.numel(),
                                                        max_size=mask.numel()))).view(shape)}[forbid_mode]
    n_swap = data.draw(st.integers(-1, pattern.n + 1) if per_group else st.integers(-1, int(mask.sum()) + 2))
    new, kept = nm_drop_and_grow(mask, drop, grow, n_swap, pattern, dim=dim, per_group=per_group, forbid=forbid)
    assert is_nm(new, pattern, dim)  # the pattern holds after every update
    assert not bool((kept & ~mask).any())  # only active weights survive the drop
    grown = new & ~kept
    assert torch.equal(group_counts(grown, pattern, dim), group_counts(mask & ~kept, pattern, dim))
    if forbid is not None:
        assert not bool((grown & forbid).any())
    ref_new, ref_kept = reference_drop_and_grow(mask, drop, grow, n_swap, pattern, dim, per_group, forbid)
    assert torch.equal(kept, ref_kept) and torch.equal(new, ref_new)
    # Deterministic: the same call gives the same masks.
    again = nm_drop_and_grow(mask, drop, grow, n_swap, pattern, dim=dim, per_group=per_group, forbid=forbid)
    assert torch.equal(again[0], new) and torch.equal(again[1], kept)


def test_drop_and_grow_swaps_the_requested_count():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 32, generator=gen)
    mask = nm_mask(weight.abs(), "2:4")
    grow = torch.rand(64, 32, generator=gen)
    new, kept = nm_drop_and_grow(mask, weight.abs(), grow, 100, "2:4", forbid=mask)
    assert int((mask & ~kept).sum()) == 100 and int((new & ~mask).sum()) == 100
    new, kept = nm_drop_and_grow(mask, weight.abs(), grow, 1, "2:4", per_group=True, forbid=mask)
    assert int((mask & ~kept).sum()) == 64 * 8 and bool((group_counts(mask & ~kept, "2:4") == 1).all())
    # The tensor-wide drop takes the globally smallest magnitudes.
    new, kept = nm_drop_and_grow(mask, weight.abs(), grow, 100, "2:4")
    dropped = weight.abs()[mask & ~kept]
    assert float(dropped.max()) <= float(weight.abs()[kept].min())


def test_drop_and_grow_caps_groups_without_candidates():
    # 3:4 with forbid=mask: each group has one inactive candidate, so it can drop at most one.
    mask = torch.tensor([[True, True, True, False, True, True, True, False]])
    drop = torch.tensor([[1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0]])
    new, kept = nm_drop_and_grow(mask, drop, torch.ones(1, 8), 5, "3:4", forbid=mask)
    assert kept.tolist() == [[False, True, True, False, False, True, True, False]]
    assert new.tolist() == [[False, True, True, True, False, True, True, True]]


def test_drop_and_grow_rejects_masks_off_pattern():
    with pytest.raises(ValueError, match="does not follow 2:4"):
        nm_drop_and_grow(torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4), torch.ones(2, 4), 1, "2:4")


def test_layout_of_a_one_dimensional_tensor_is_dense():
    layout = nm_layouts(nn.Linear(4, 4), {"bias": torch.zeros(4)}, "2:4")["bias"]
    assert isinstance(layout, NMLayout) and not layout.patterned and "1-D" in layout.dense_reason
