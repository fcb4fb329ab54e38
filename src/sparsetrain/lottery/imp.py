"""Iterative magnitude pruning: how many weights each round keeps, and which.

Each round removes a fraction ``p`` of the *remaining* weights (Frankle & Carbin 2019). Counts are integers, so
the rule is applied round per round, as OpenLTH does: a tensor with ``c`` remaining weights loses
``ceil(p * c)`` of them. After k rounds a tensor of ``n`` weights keeps ``c_k`` with ``c_0 = n`` and
``c_{i+1} = c_i - ceil(p * c_i)``; this equals ``n * (1 - p)^k`` exactly whenever that product is an integer at
every round (e.g. ``n = 5^k * m`` and ``p = 0.2``) and is within ``k`` weights of it otherwise. In the "global"
scope (:mod:`sparsetrain.selection`) the same rule applies to the total over all tensors but the output layer,
ranked by one threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..selection import Budget, check_scope, keep_top
from ..updates import swap_count

__all__ = ["next_count", "level_count", "level_counts", "prune_round", "layer_rates"]


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

    Returns:
        name -> new bool mask.
    """
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
