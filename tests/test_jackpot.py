"""Lottery jackpots: no weight changes, the short restriction, the straight-through gradient, the start at the
magnitude mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.lottery import find_jackpot, mask_iou, restrict_changes
from sparsetrain.selection import budget, keep_top


def _top(scores, sparsity):
    """Every tensor at ``sparsity``, ranked on its own (the uniform distribution)."""
    return keep_top(scores, budget(scores, sparsity, distribution="uniform"))


def data(seed: int = 0, n: int = 96) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = ((x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.3).long())
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def trained_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(40):
        for x, y in data():
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


@pytest.mark.parametrize("train_mode", [False, True])
def test_the_search_changes_no_weight_bit_for_bit(train_mode: bool) -> None:
    net = trained_net()
    net.train(train_mode)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks, info = find_jackpot(net, 0.8, data(), steps=15, lr=0.05, train_mode=train_mode)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in net.parameters())
    assert net.training == train_mode
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * 256) + round(0.2 * 96)
    assert info["iou_with_magnitude"] < 1.0  # the search did move


def test_short_restriction_caps_flips_per_step_and_keeps_counts() -> None:
    net = trained_net()
    free, free_info = find_jackpot(net, 0.7, data(), steps=10, lr=0.5)
    assert max(free_info["changes_per_step"]) > 6  # unrestricted, it flips more than the cap below
    masks, info = find_jackpot(net, 0.7, data(), steps=10, lr=0.5, max_changes_per_step=6)
    assert max(info["changes_per_step"]) <= 6 and sum(info["changes_per_step"]) > 0
    assert all(c % 2 == 0 for c in info["changes_per_step"])
    magnitude = _top({n: net.get_parameter(n).detach().abs() for n in masks}, 0.7)
    assert {n: int(m.sum()) for n, m in masks.items()} == {n: int(m.sum()) for n, m in magnitude.items()}
    flipped = sum(int((masks[n] ^ magnitude[n]).sum()) for n in masks)
    assert flipped <= sum(info["changes_per_step"])


def test_no_steps_gives_the_magnitude_mask() -> None:
    net = trained_net()
    masks, info = find_jackpot(net, 0.9, data(), steps=0)
    magnitude = _top({n: net.get_parameter(n).detach().abs() for n in masks}, 0.9)
    assert all(torch.equal(masks[n], magnitude[n]) for n in masks)
    assert info["iou_with_magnitude"] == 1.0 and info["accuracy_after"] == info["accuracy_before"]


def test_scores_get_the_straight_through_gradient() -> None:
    net = trained_net()
    x, y = data()[0]
    names = ["0.weight", "4.weight"]
    masks0 = _top({n: net.get_parameter(n).detach().abs() for n in names}, 0.5)
    # One plain SGD step: s <- |w| - lr * dL/d(w*m) * w.
    effective = {n: (net.get_parameter(n).detach() * masks0[n]).requires_grad_(True) for n in names}
    out = torch.func.functional_call(net, effective, (x,))
    grads = torch.autograd.grad(F.cross_entropy(out, y), [effective[n] for n in names])
    _, info = find_jackpot(net, 0.5, (x, y), steps=1, lr=0.3, momentum=0.0)
    for name, grad in zip(names, grads):
        w = net.get_parameter(name).detach()
        torch.testing.assert_close(info["scores"][name], w.abs() - 0.3 * grad * w)


def test_search_lowers_the_loss_of_the_magnitude_mask() -> None:
    net = trained_net()
    _, info = find_jackpot(net, 0.9, data(), steps=60, lr=0.02, max_changes_per_step=8)
    assert info["loss_after"] < info["loss_before"]


def test_restrict_changes_applies_the_most_improving_swaps() -> None:
    current = {"a": torch.tensor([True, True, True, False, False, False])}
    target = {"a": torch.tensor([False, False, True, True, True, True][:6])}
    target["a"][2] = False  # target keeps 3 entries: positions 3, 4, 5
    target["a"][0] = False
    scores = {"a": torch.tensor([0.10, 0.50, 0.20, 0.90, 0.60, 0.95])}
    # Adds by score: 5 (0.95), 3 (0.90), 4 (0.60); removes by score: 0 (0.10), 2 (0.20), 1 (0.50).
    # Gains: 0.85, 0.70, 0.10; two flips allow one swap: add 5, remove 0.
    new, flipped = restrict_changes(current, target, scores, 2)
    assert new["a"].tolist() == [False, True, True, False, False, True] and flipped == 2
    new, flipped = restrict_changes(current, target, scores, 5)  # two swaps (5 // 2)
    assert new["a"].tolist() == [False, True, False, True, False, True] and flipped == 4
    new, flipped = restrict_changes(current, target, scores, None)
    assert torch.equal(new["a"], target["a"]) and flipped == 6


def test_mask_iou() -> None:
    a = {"x": torch.tensor([True, True, False, False])}
    b = {"x": torch.tensor([True, False, True, False])}
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0


def test_jackpot_under_a_pattern_searches_nm_masks_and_swaps_within_groups() -> None:
    from sparsetrain.nm import is_nm, nm_mask

    net = trained_net()
    masks, info = find_jackpot(net, None, data(), steps=12, lr=0.5, max_changes_per_step=8, pattern="2:4")
    assert is_nm(masks["0.weight"], "2:4") and is_nm(masks["4.weight"], "2:4")
    assert sum(info["changes_per_step"]) > 0 and max(info["changes_per_step"]) <= 8
    free, _ = find_jackpot(net, 0.5, data(), steps=12, lr=0.5, pattern="2:4")
    assert is_nm(free["0.weight"], "2:4")
    start, _ = find_jackpot(net, None, data(), steps=0, pattern="2:4")
    assert torch.equal(start["0.weight"], nm_mask(net.get_parameter("0.weight").detach().abs(), "2:4"))
    with pytest.raises(ValueError, match="sparsity=0.8 is not allowed with pattern='2:4'"):
        find_jackpot(net, 0.8, data(), pattern="2:4")


def test_restrict_changes_pairs_entries_of_the_same_group() -> None:
    from sparsetrain.nm import NMPattern, is_nm, nm_mask
    from sparsetrain.selection import Groups

    g = torch.Generator().manual_seed(0)
    scores = {"w": torch.rand(4, 16, generator=g)}
    current = {"w": nm_mask(torch.rand(4, 16, generator=g), "2:4")}
    target = {"w": nm_mask(scores["w"], "2:4")}
    moved = int((current["w"] ^ target["w"]).sum())
    for cap in (2, 6, 10):
        new, flipped = restrict_changes(current, target, scores, cap, groups={"w": Groups(NMPattern(2, 4), 1)})
        assert is_nm(new["w"], "2:4") and flipped == min(cap // 2 * 2, moved)
    unpaired, _ = restrict_changes(current, target, scores, 6)  # without groups, swaps cross groups here
    assert int(unpaired["w"].sum()) == 32 and not is_nm(unpaired["w"], "2:4")
