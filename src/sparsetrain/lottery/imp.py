"""Iterative magnitude pruning: how many weights each round keeps, and which.

Each round removes a fraction ``p`` of the *remaining* weights (Frankle & Carbin 2019). Counts are integers, so
the rule is applied round per round, as OpenLTH does: a tensor with ``c`` remaining weights loses
``ceil(p * c)`` of them. After k rounds a tensor of ``n`` weights keeps ``c_k`` with ``c_0 = n`` and
``c_{i+1} = c_i - ceil(p * c_i)``; this equals ``n * (1 - p)^k`` exactly whenever that product is an integer at
every round (e.g. ``n = 5^k * m`` and ``p = 0.2``) and is within ``k`` weights of it otherwise. In the "global"
scope (:mod:`sparsetrain.selection`) the same rule applies to the total over all tensors but the output layer,
ranked by one threshold.

Rounds may also follow **target sparsities** (:func:`prune_to_sparsity`): level ``k`` keeps ``round((1 - s_k) *
n)`` of a tensor's ``n`` weights (layer scope) or of the pooled weights (global scope), with the targets listed or
rising linearly (:func:`level_sparsities`). A layer's bias can be pruned with its weight (``units``: name of the
weight -> the weight and its bias), ranked by magnitude in one vector per layer; the counts then cover both, and
the masks stay per tensor (:class:`sparsetrain.selection.Budget`).

Under an N:M pattern (``LotteryConfig.pattern``) the same rule applies to each group's count instead of the
tensor's: a tensor whose groups keep ``n`` of M keeps ``max(N, n - ceil(p n))`` after a round (2:4 at p = 0.2:
dense, 3:4, 2:4, 2:4, ...), every group by its own magnitudes among its survivors, so each level is a pattern and
the last ones are N:M. Tensors that cannot follow the pattern are kept dense.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..nm import NMLayout, NMPattern
from ..selection import Budget, Groups, check_scope, keep_top
from ..updates import swap_count

__all__ = ["SCHEDULES", "next_count", "level_count", "level_counts", "prune_round", "prune_to_sparsity",
           "layer_rates", "level_sparsities", "pattern_groups"]

#: How the rounds' sparsities are set: a fixed fraction of the remaining weights per round ("geometric", Frankle
#: & Carbin 2019), a linear rise to a final sparsity ("linear"), or a list of targets ("targets").
SCHEDULES = ("geometric", "linear", "targets")

#: name of a weight -> the tensors pruned as one unit with it (the weight, then its bias).
Units = Mapping[str, tuple[str, ...]]


def next_count(count: int, rate: float) -> int:
    """Weights left after one round that removes ``ceil(rate * count)`` of ``count``."""
    return count - swap_count(rate, count, rounding="ceil")


def level_count(numel: int, rate: float, level: int) -> int:
    """Weights a tensor of ``numel`` keeps after ``level`` rounds at ``rate`` (the rule applied round per round)."""
    count = numel
    for _ in range(level):
        count = next_count(count, rate)
    return count


def layer_rates(names: list[str], prune_rate: float, output_rate: float | None,
                output_layer: str | None) -> dict[str, float]:
    """Per-tensor rates: ``prune_rate`` everywhere, ``output_rate`` (if given) for the output tensor.

    Raises:
        ValueError: ``output_layer`` is not one of ``names``.
    """
    output = names[-1] if output_layer is None else output_layer
    if output not in names:
        raise ValueError(f"output_layer={output_layer!r} is not a pruned tensor; they are {', '.join(names)}")
    rates = {name: prune_rate for name in names}
    if output_rate is not None:
        rates[output] = output_rate
    return rates


def level_counts(numels: Mapping[str, int], rates: Mapping[str, float], level: int) -> dict[str, int]:
    """Per-tensor counts after ``level`` layer-wise rounds (the documented round-per-round rule)."""
    return {name: level_count(numel, rates[name], level) for name, numel in numels.items()}


def level_sparsities(schedule: str, rounds: int, *, final_sparsity: float | None = None,
                     sparsities: tuple[float, ...] | None = None) -> tuple[float, ...] | None:
    """The target sparsity after each level 1..``rounds``; None for the geometric schedule (counts, not targets).

    Args:
        schedule: "geometric", "linear" (``s_k = final_sparsity * k / rounds``) or "targets" (``sparsities``).

    Raises:
        ValueError: an unknown schedule, or a linear or target schedule without its sparsities.
    """
    if schedule == "geometric":
        return None
    if schedule == "linear":
        if final_sparsity is None:
            raise ValueError("schedule='linear' needs final_sparsity")
        return tuple(final_sparsity * k / rounds for k in range(1, rounds + 1))
    if schedule == "targets":
        if sparsities is None:
            raise ValueError("schedule='targets' needs sparsities")
        return tuple(sparsities)
    raise ValueError(f"schedule={schedule!r} is not allowed; choose one of {', '.join(SCHEDULES)}")


def _members(name: str, units: Units | None) -> tuple[str, ...]:
    return tuple(units.get(name, (name,))) if units else (name,)


def _active(masks: Mapping[str, Tensor], names: tuple[str, ...] | list[str]) -> int:
    return sum(int(torch.count_nonzero(masks[name])) for name in names)


def _magnitudes(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: weights[name].detach().abs() for name in masks}


@torch.no_grad()
def prune_round(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    rates: Mapping[str, float],
    *,
    scope: str = "layer",
    separate: tuple[str, ...] = (),
    levels: int = 1,
    units: Units | None = None,
    pattern: NMPattern | str | None = None,
    layouts: Mapping[str, NMLayout] | None = None,
) -> dict[str, Tensor]:
    """Masks after ``levels`` rounds of magnitude pruning from ``masks`` (one round in IMP; k in one-shot).

    Only active weights can be kept (pruned weights stay pruned); ties break by the lowest flat index.

    Args:
        weights: name -> trained weights to rank by ``|w|``.
        masks: name -> current bool mask (with ``units``, the biases' masks too).
        rates: name -> per-round rate (see :func:`layer_rates`), keyed by the weights.
        scope: "layer" (each tensor, or unit, at its own rate) or "global" (tensors not in ``separate`` share one
            threshold at their common rate; ``separate`` ones, the output layer, are pruned on their own).
        separate: tensors (weights) pruned on their own in the global scope.
        levels: how many rounds' worth of weights to remove at once.
        units: name of a weight -> the tensors ranked with it as one vector (the weight and its bias); the
            count is the unit's.
        pattern: an N:M pattern (module docstring): the rule applies to each group's count, down to N; the layer
            scope only.
        layouts: with a pattern, name -> :class:`~sparsetrain.nm.NMLayout` (:func:`sparsetrain.nm.nm_layouts`).

    Returns:
        name -> new bool mask.
    """
    if pattern is not None:
        if units:
            raise ValueError("prune_round: an N:M pattern prunes weights only; leave units (prune_biases) out")
        if check_scope(scope) != "layer" or layouts is None:
            raise ValueError(f"prune_round with pattern={str(pattern)!r} needs scope='layer' and the layouts")
        return keep_top(_magnitudes(weights, masks), _pattern_round(masks, rates, levels, NMPattern.parse(pattern), layouts),
                        eligible=masks)
    heads = list(rates)
    if check_scope(scope) == "layer":
        counts = {name: level_count(_active(masks, _members(name, units)), rates[name], levels) for name in heads}
        return keep_top(_magnitudes(weights, masks), Budget(counts, units=dict(units or {})), eligible=masks)
    pooled = [name for name in heads if name not in separate]
    pooled_rates = {rates[name] for name in pooled}
    if len(pooled_rates) > 1:
        raise ValueError(f"global scope: the pooled tensors have different rates {sorted(pooled_rates)}")
    own = {name: level_count(_active(masks, _members(name, units)), rates[name], levels)
           for name in heads if name not in pooled}
    pooled_names = [member for name in pooled for member in _members(name, units)]
    global_count = level_count(_active(masks, pooled_names), pooled_rates.pop(), levels) if pooled else None
    return keep_top(_magnitudes(weights, masks), Budget(own, global_count, units=dict(units or {})), eligible=masks)


@torch.no_grad()
def prune_to_sparsity(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    sparsity: float,
    *,
    scope: str = "layer",
    separate: Mapping[str, int] | None = None,
    units: Units | None = None,
) -> dict[str, Tensor]:
    """Masks at a target ``sparsity`` by magnitude, from ``masks`` (a target schedule's level).

    Each tensor (or unit) keeps ``round((1 - sparsity) * n)`` of its ``n`` entries in the layer scope; in the
    global scope the tensors not in ``separate`` keep that share of their pooled entries under one threshold.
    Only active weights can be kept, and a count at or above the active count keeps the mask as it is.

    Args:
        weights: name -> trained weights to rank by ``|w|``.
        masks: name -> current bool mask (with ``units``, the biases' masks too).
        sparsity: the target in [0, 1).
        scope: "layer" or "global".
        separate: name of a weight -> its own count (the output layer at its own rate), in either scope.
        units: as in :func:`prune_round`.

    Returns:
        name -> new bool mask.
    """
    covered = {member for name in masks for member in _members(name, units) if member != name}
    heads = [name for name in masks if name not in covered]
    own = dict(separate or {})
    rest = [name for name in heads if name not in own]

    def keep(names: list[str] | tuple[str, ...]) -> int:
        return round((1.0 - sparsity) * sum(masks[name].numel() for name in names))

    if check_scope(scope) == "layer":
        counts = {**{name: keep(_members(name, units)) for name in rest}, **own}
        return keep_top(_magnitudes(weights, masks), Budget(counts, units=dict(units or {})), eligible=masks)
    pooled = [member for name in rest for member in _members(name, units)]
    budget = Budget(own, keep(pooled) if pooled else None, units=dict(units or {}))
    return keep_top(_magnitudes(weights, masks), budget, eligible=masks)


def pattern_groups(masks: Mapping[str, Tensor], pattern: NMPattern | str,
                   layouts: Mapping[str, NMLayout]) -> dict[str, Groups]:
    """The :class:`~sparsetrain.selection.Groups` each patterned tensor of ``masks`` follows now: ``n:M`` with ``n``
    its count per group (tensors kept dense, or still whole, have none)."""
    pattern = NMPattern.parse(pattern)
    groups = {}
    for name, mask in masks.items():
        n = int(torch.count_nonzero(mask)) * pattern.m // mask.numel()
        if layouts[name].patterned and n < pattern.m:
            groups[name] = Groups(NMPattern(n, pattern.m), layouts[name].dim)
    return groups


def _pattern_round(masks: Mapping[str, Tensor], rates: Mapping[str, float], levels: int, pattern: NMPattern,
                   layouts: Mapping[str, NMLayout]) -> Budget:
    """Each patterned tensor's groups keep ``max(N, level_count(n, rate, levels))`` of M; the others stay whole."""
    now = pattern_groups(masks, pattern, layouts)
    counts: dict[str, int] = {}
    groups: dict[str, Groups] = {}
    for name, mask in masks.items():
        n = pattern.m
        if layouts[name].patterned:
            n = max(pattern.n, level_count(now[name].pattern.n if name in now else pattern.m, rates[name], levels))
        if n < pattern.m:
            groups[name] = Groups(NMPattern(n, pattern.m), layouts[name].dim)
        else:
            counts[name] = int(torch.count_nonzero(mask))
    return Budget(counts, None, groups)
