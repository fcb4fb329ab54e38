"""Topology updates as pure functions of masks and scores: magnitude pruning and drop-and-regrow.

They return new masks and never touch weights or optimizer state; the sparsifier applies the result. That
keeps each step testable on its own and lets methods compose them like their papers' algorithm boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .topk import drop_and_grow, global_topk_masks, topk_mask

__all__ = ["REGROW_MODES", "prune_by_magnitude", "regrow", "swap_count"]

#: What happens to a weight dropped and regrown in the same update (see :func:`regrow`).
REGROW_MODES = ("keep", "zero", "forbid")


@torch.no_grad()
def prune_by_magnitude(
    magnitudes: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    counts: Mapping[str, int] | None = None,
    *,
    global_count: int | None = None,
    global_names: list[str] | None = None,
) -> dict[str, Tensor]:
    """Keep the largest-magnitude *active* weights: per tensor (``counts``) and/or over a global pool.

    Inactive weights rank below every active one, so pruning only ever removes weights. A tensor's target is
    capped at its current count.

    Args:
        magnitudes: name -> ``|w|``.
        masks: current masks.
        counts: name -> nonzeros to keep, for tensors pruned on their own.
        global_count: nonzeros to keep over ``global_names`` together (one threshold).
        global_names: tensors ranked together.

    Returns:
        New masks for every tensor in ``masks``.
    """
    new = {name: mask for name, mask in masks.items()}
    for name, count in (counts or {}).items():
        active = int(torch.count_nonzero(masks[name]))
        if count < active:
            new[name] = topk_mask(magnitudes[name], count, masks[name])
    if global_names:
        active = sum(int(torch.count_nonzero(masks[n])) for n in global_names)
        if global_count is not None and global_count < active:
            new.update(global_topk_masks({n: magnitudes[n] for n in global_names}, global_count,
                                         {n: masks[n] for n in global_names}))
    return new


def swap_count(fraction: float, active: int, rounding: str = "floor") -> int:
    """How many weights a drop fraction swaps: ``floor`` (RigL's code) or ``ceil`` (GraNet's code)."""
    value = fraction * active
    return int(math.ceil(value - 1e-9)) if rounding == "ceil" else int(math.floor(value + 1e-9))


@torch.no_grad()
def regrow(
    masks: Mapping[str, Tensor],
    drop_scores: Mapping[str, Tensor],
    grow_scores: Mapping[str, Tensor] | Callable[[str], Tensor],
    fraction: float,
    *,
    mode: str = "keep",
    rounding: str = "floor",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per tensor, drop ``fraction`` of the active weights with the lowest drop score and grow as many.

    ``mode`` decides the fate of a weight dropped and regrown in the same update:
    "keep" (the official RigL and GraNet code: it is a candidate for growth and, if regrown, keeps its value
    and optimizer state, i.e. it was never really dropped), "zero" (a candidate, but restarts at zero like any
    new connection) or "forbid" (not a candidate: only weights inactive before the update can grow).

    Returns:
        ``(new_masks, reset)`` where ``reset`` marks, per tensor, the positions whose weight and optimizer
        state must start at zero.
    """
    new_masks: dict[str, Tensor] = {}
    reset: dict[str, Tensor] = {}
    for name, mask in masks.items():
        n_active = int(torch.count_nonzero(mask))
        n_swap = swap_count(fraction, n_active, rounding)
        if n_swap == 0 or n_active == mask.numel():
            new_masks[name] = mask
            continue
        scores = grow_scores(name) if callable(grow_scores) else grow_scores[name]
        new_mask, kept = drop_and_grow(
            mask, drop_scores[name], scores, n_swap, forbid=mask if mode == "forbid" else None, n_active=n_active
        )
        new_masks[name] = new_mask
        reset[name] = new_mask & ~kept if mode == "zero" else new_mask & ~mask
    return new_masks, reset
