"""Drop-and-regrow as a pure function of masks and scores (pruning is :func:`sparsetrain.selection.keep_top`).

It returns new masks and never touches weights or optimizer state; the sparsifier applies the result. That
keeps each step testable on its own and lets methods compose it like their papers' algorithm boxes. Under an
N:M pattern the swap happens *within groups* (:func:`sparsetrain.nm.nm_drop_and_grow`): the tensor drops its
``k`` lowest-scoring active weights wherever they are, and every group regrows as many as it lost, so every group
still holds exactly N after the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .nm import nm_drop_and_grow
from .selection import Groups
from .topk import drop_and_grow

__all__ = ["REGROW_MODES", "regrow", "swap_count"]

#: What happens to a weight dropped and regrown in the same update (see :func:`regrow`).
REGROW_MODES = ("keep", "zero", "forbid")


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
    groups: Mapping[str, Groups] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per tensor, drop ``fraction`` of the active weights with the lowest drop score and grow as many.

    A tensor in ``groups`` follows an N:M pattern: it drops its lowest-scoring active weights (the same count)
    and each group regrows as many as it dropped (:func:`sparsetrain.nm.nm_drop_and_grow`), so the pattern holds.

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
        forbid = mask if mode == "forbid" else None
        if groups is not None and name in groups:
            new_mask, kept = nm_drop_and_grow(mask, drop_scores[name], scores, n_swap, groups[name].pattern,
                                              dim=groups[name].dim, forbid=forbid)
        else:
            new_mask, kept = drop_and_grow(mask, drop_scores[name], scores, n_swap, forbid=forbid, n_active=n_active)
        new_masks[name] = new_mask
        reset[name] = new_mask & ~kept if mode == "zero" else new_mask & ~mask
    return new_masks, reset
