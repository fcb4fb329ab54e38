"""Iterative magnitude pruning: how many weights each round keeps, and which.

Each round removes a fraction ``p`` of the *remaining* weights (Frankle & Carbin 2019). Counts are integers, so
the rule is applied round per round, as OpenLTH does: a tensor with ``c`` remaining weights loses
``ceil(p * c)`` of them. After k rounds a tensor of ``n`` weights keeps ``c_k`` with ``c_0 = n`` and
``c_{i+1} = c_i - ceil(p * c_i)``; this equals ``n * (1 - p)^k`` exactly whenever that product is an integer at
every round (e.g. ``n = 5^k * m`` and ``p = 0.2``) and is within ``k`` weights of it otherwise. In the "global"
scope (:mod:`sparsetrain.selection`) the same rule applies to the total over all tensors but the output layer,
ranked by one threshold.

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

__all__ = ["next_count", "level_count", "level_counts", "prune_round", "layer_rates", "pattern_groups"]


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


@torch.no_grad()
def prune_round(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    rates: Mapping[str, float],
    *,
    scope: str = "layer",
    separate: tuple[str, ...] = (),
    levels: int = 1,
    pattern: NMPattern | str | None = None,
    layouts: Mapping[str, NMLayout] | None = None,
) -> dict[str, Tensor]:
    """Masks after ``levels`` rounds of magnitude pruning from ``masks`` (one round in IMP; k in one-shot).

    Only active weights can be kept (pruned weights stay pruned); ties break by the lowest flat index.

    Args:
        weights: name -> trained weights to rank by ``|w|``.
        masks: name -> current bool mask.
        rates: name -> per-round rate (see :func:`layer_rates`).
        scope: "layer" (each tensor at its own rate) or "global" (tensors not in ``separate`` share one
            threshold at their common rate; ``separate`` ones, the output layer, are pruned on their own).
        separate: tensors pruned on their own in the global scope.
        levels: how many rounds' worth of weights to remove at once.
        pattern: an N:M pattern (module docstring): the rule applies to each group's count, down to N; the layer
            scope only.
        layouts: with a pattern, name -> :class:`~sparsetrain.nm.NMLayout` (:func:`sparsetrain.nm.nm_layouts`).

    Returns:
        name -> new bool mask.
    """
    if pattern is not None:
        if check_scope(scope) != "layer" or layouts is None:
            raise ValueError(f"prune_round with pattern={str(pattern)!r} needs scope='layer' and the layouts")
        return keep_top({name: weights[name].detach().abs() for name in masks},
                        _pattern_round(masks, rates, levels, NMPattern.parse(pattern), layouts), eligible=masks)
    counts = {name: level_count(int(torch.count_nonzero(m)), rates[name], levels) for name, m in masks.items()}
    magnitudes = {name: weights[name].detach().abs() for name in masks}
    if check_scope(scope) == "layer":
        return keep_top(magnitudes, Budget(counts), eligible=masks)
    pooled = [name for name in masks if name not in separate]
    pooled_rates = {rates[name] for name in pooled}
    if len(pooled_rates) > 1:
        raise ValueError(f"global scope: the pooled tensors have different rates {sorted(pooled_rates)}")
    active = sum(int(torch.count_nonzero(masks[name])) for name in pooled)
    global_count = level_count(active, pooled_rates.pop(), levels) if pooled else None
    own = {name: counts[name] for name in masks if name not in pooled}
    return keep_top(magnitudes, Budget(own, global_count), eligible=masks)


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
