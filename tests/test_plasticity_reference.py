"""The plasticity study's pruning and neuroregeneration against a plain re-statement of GraNet's official
procedure (VITA-Group/GraNet, ``CIFAR/sparselearning/core.py``): identical masks from identical weights and
gradients.

The re-statement below follows the official code's logic step by step, sort-based as it is, and is written here
for the test (not taken from the library): the one-shot pruning of the plasticity test (``Masking.init`` with
``prune_global`` / ``prune_uniform``), the drop fraction (``CosineDecay``: torch's ``CosineAnnealingLR`` on a
dummy optimizer, stepped once per optimizer step from the start of the run), and ``truncate_weights``
(``magnitude_death`` then ``gradient_growth``) every ΔT steps of the run. The library runs the study's own pieces:
:func:`~sparsetrain.analysis.plasticity.magnitude_masks`, then :class:`~sparsetrain.GraNet` on those masks with no
further pruning and its step counter continuing the dense run's, as a plasticity cell is configured
(``test_plasticity.py`` checks that configuration on disk).

Ties: where candidates share the same magnitude or gradient, the official code's ``>`` threshold and unstable
sorts choose differently (and can lose weights: every weight tied at the threshold is dropped, and a growth sort
over zero scores may pick positions that are active already); the library keeps exact counts with ties to the
lowest index. The test network has no ties to hide: tanh units (no dead ReLU, whose constant outputs make
gradients tie across positions) and no weight sharing; on it every mask must be identical.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from sparsetrain import GraNet
from sparsetrain.analysis.plasticity import magnitude_masks
from sparsetrain.masks import select_prunable

# -- the official procedure, re-stated ----------------------------------------------------------------------------


def official_prune_global(weights: dict[str, Tensor], rate: float) -> tuple[dict[str, Tensor], bool]:
    """core.py 135-164: one threshold over every tensor, ``int(nonzeros * (1 - rate))`` kept, ``>=`` it.

    Returns:
        ``(masks, decided)``: ``decided`` is False where the kept count's last magnitude ties the next one.
    """
    total = sum(int((w != 0).sum()) for w in weights.values())
    scores = torch.sort(torch.cat([w.abs().flatten() for w in weights.values()]), descending=True).values
    keep = int(total * (1 - rate))
    threshold = scores[keep - 1]
    return {name: w.abs() >= threshold for name, w in weights.items()}, bool(scores[keep] < threshold)


def official_prune_uniform(weights: dict[str, Tensor], rate: float) -> tuple[dict[str, Tensor], bool]:
    """core.py 118-133: per tensor, the ``ceil(zeros + rate * nonzeros)`` smallest magnitudes set to zero.

    Returns:
        ``(masks, decided)``: ``decided`` is False where a tensor's last pruned magnitude ties the next one.
    """
    masks, decided = {}, True
    for name, w in weights.items():
        mask = (w != 0).flatten().clone()
        zeros = int((w == 0).sum())
        k = math.ceil(zeros + rate * int(mask.sum()))
        ranked = torch.sort(w.abs().flatten())
        mask[ranked.indices[:k]] = False
        masks[name] = mask.view_as(w)
        decided &= bool(ranked.values[k - 1] < ranked.values[k])
    return masks, decided


def official_drop_fractions(total_steps: int, until: int) -> list[float]:
    """core.py 27-36 and main.py 274: ``CosineDecay(0.5, total_steps)``'s value after each of ``until`` steps."""
    dummy = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, total_steps, 0.005)
    values = [0.5]
    for _ in range(until):
        dummy.step()
        cosine.step()
        values.append(dummy.param_groups[0]["lr"])
    return values


def official_truncate(weights: dict[str, Tensor], grads: dict[str, Tensor], masks: dict[str, Tensor],
                      prune_rate: float) -> tuple[dict[str, Tensor], bool]:
    """core.py 537-563 (``truncate_weights``) with ``magnitude_death`` (584-592) and ``gradient_growth``
    (617-624), on weights already masked by ``apply_mask``.

    Returns:
        ``(masks, decided)``: ``decided`` is False where ties decide the outcome (module docstring): more active
        weights at or below the drop threshold than the count, or the last grown score tied with the next one or
        zero.
    """
    result, decided = {}, True
    for name, weight in weights.items():
        mask = masks[name]
        w = weight * mask
        nonzeros = int(mask.sum())
        zeros = mask.numel() - nonzeros
        remove = math.ceil(prune_rate * nonzeros)
        if remove == 0:
            new = w != 0
        else:
            k = math.ceil(zeros + remove)
            threshold = torch.sort(w.abs().flatten()).values[k - 1]
            new = w.abs() > threshold
            decided &= int((mask & (w.abs() <= threshold)).sum()) == remove
        regrow = nonzeros - int(new.sum())
        candidates = grads[name].abs() * (~new)
        ranked = torch.sort(candidates.flatten(), descending=True)
        flat = new.flatten().clone()
        flat[ranked.indices[:regrow]] = True
        result[name] = flat.view_as(w)
        if regrow:
            last = ranked.values[regrow - 1]
            decided &= bool(last > 0) and (regrow == ranked.values.numel() or bool(ranked.values[regrow] < last))
    return result, decided


# -- the model, its data and the dense start ----------------------------------------------------------------------


class Net(nn.Module):
    """Three tanh layers of the same fan-in (so that one global threshold leaves every layer some weights), small
    enough for many exact comparisons."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def batches(n: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 32, generator=generator), torch.randint(0, 8, (16,), generator=generator))
            for _ in range(n)]


def dense_start(seed: int, steps: int) -> tuple[Net, torch.optim.Optimizer]:
    """A dense network trained ``steps`` steps with the recipe's SGD (the checkpoint a cell prunes)."""
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for inputs, targets in batches(steps, seed + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model, optimizer


# -- the comparisons ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope, official", [("global", official_prune_global), ("layer", official_prune_uniform)])
@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8, 0.95, 0.98])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_equals_the_official_plasticity_test(scope, official, rate, seed):
    model, _ = dense_start(seed, steps=5)
    weights = {name: p.detach().clone() for name, p in select_prunable(model).items()}
    expected, decided = official(weights, rate)
    assert decided  # these seeds have no tie at the threshold (float32 ties are rare, not impossible)
    masks = magnitude_masks(select_prunable(model), rate, scope)
    assert set(masks) == set(expected)
    for name in masks:
        assert torch.equal(masks[name], expected[name]), name


def test_pruning_counts_are_the_official_ones_where_rounding_differs():
    # 7 weights at rate 0.6: the official code keeps int(7 * 0.4) = 2 (rounding would keep 3); per layer it
    # removes ceil(0.5 * 3) = 2 of 3 (rounding 0.5 * 3 would keep 2).
    params = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([[-4.0, 0.3, 2.0]])}
    assert sum(int(m.sum()) for m in magnitude_masks(params, 0.6, "global").values()) == 2
    assert magnitude_masks(params, 0.5, "layer")["b"].tolist() == [[True, False, False]]
    for scope, official in (("global", official_prune_global), ("layer", official_prune_uniform)):
        for rate in (0.5, 0.6):
            mine, (theirs, _) = magnitude_masks(params, rate, scope), official(params, rate)
            assert all(torch.equal(mine[n], theirs[n]) for n in params), (scope, rate)


@pytest.mark.parametrize("scope, official", [("global", official_prune_global), ("layer", official_prune_uniform)])
@pytest.mark.parametrize("rate, branch_step, every", [(0.8, 30, 7), (0.95, 61, 5), (0.98, 12, 10)])
def test_regeneration_equals_the_official_truncate_weights(scope, official, rate, branch_step, every):
    """A cell from its pruning point to the end of the run: every update's masks equal the official ones."""
    total = 120
    model, optimizer = dense_start(branch_step, steps=branch_step)
    weights = {name: p.detach().clone() for name, p in select_prunable(model).items()}
    start, decided = official(weights, rate)
    sparsifier = GraNet(model, optimizer, masks=magnitude_masks(select_prunable(model), rate, scope),
                        total_steps=total, update_every=every, prune_end=0, drop_fraction=0.5)
    state = sparsifier.state_dict()
    state["step"] = branch_step  # the cell's sparsifier continues the dense run's step counter
    sparsifier.load_state_dict(state)
    assert all(torch.equal(sparsifier.masks[n], start[n]) for n in start) or not decided
    drop_fractions = official_drop_fractions(total, total)
    checked = changed = decided = 0
    for step, (inputs, targets) in enumerate(batches(total - branch_step, 99), start=branch_step + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        before = {n: m.clone() for n, m in sparsifier.masks.items()}
        weights = {n: p.detach().clone() for n, p in sparsifier.params.items()}
        grads = {n: p.grad.clone() for n, p in sparsifier.params.items()}
        sparsifier.step()
        if step % every == 0:  # Masking.step: self.steps % prune_every_k_steps == 0
            expected, unambiguous = official_truncate(weights, grads, before, drop_fractions[step])
            if unambiguous:
                for name in expected:
                    assert torch.equal(sparsifier.masks[name], expected[name]), (step, name)
                decided += 1
            for name in expected:  # ties or not, the library keeps each layer's count exactly
                assert int(sparsifier.masks[name].sum()) == int(before[name].sum()), (step, name)
            checked += 1
            changed += any(not torch.equal(before[n], sparsifier.masks[n]) for n in before)
        else:
            assert all(torch.equal(before[n], sparsifier.masks[n]) for n in before), step
    assert checked == total // every - branch_step // every and changed == checked
    assert decided >= checked // 2, f"only {decided} of {checked} updates free of ties"


def test_drop_fraction_is_the_run_wide_cosine():
    total = 300
    sparsifier = GraNet(Net(), None, sparsity=0.9, total_steps=total, prune_end=0, initial_sparsity=0.9)
    official = official_drop_fractions(total, total)
    for step in (0, 1, 75, 150, 200, 299, 300):
        assert sparsifier.current_drop_fraction(step) == pytest.approx(official[step], rel=1e-12, abs=1e-15)
