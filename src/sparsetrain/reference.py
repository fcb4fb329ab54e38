"""Straightforward sort-based reference implementations, for tests and benchmarks only.

These find every threshold with a full ``torch.sort`` (stable, descending, so ties go to the lowest index like
:mod:`sparsetrain.topk`). They define what the fast path must produce: the tests assert identical masks and
``benchmarks/topology_update.py`` measures the speed-up against them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .updates import swap_count

__all__ = ["sort_topk_mask", "reference_granet_update"]


def sort_topk_mask(scores: Tensor, k: int) -> Tensor:
    """Top-k mask by a full stable descending sort (ties: lowest flat index wins)."""
    flat = scores.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[: max(0, min(int(k), flat.numel()))]] = True
    return mask.view_as(scores)


@torch.no_grad()
def reference_granet_update(
    weights: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    global_count: int,
    drop_fraction: float,
) -> dict[str, Tensor]:
    """One GraNet update the straightforward way: global magnitude prune, then per-layer drop-and-regrow.

    Args:
        weights / grads / masks: name -> tensor.
        global_count: nonzeros to keep over all tensors after the prune.
        drop_fraction: ``r_t`` (the number swapped per layer is ``ceil(r_t * active)``, as GraNet's code).
    """
    names = list(weights)
    ranked = {n: weights[n].abs().masked_fill(~masks[n], float("-inf")) for n in names}
    pruned = dict(masks)
    if global_count < sum(int(masks[n].sum()) for n in names):
        keep = sort_topk_mask(torch.cat([ranked[n].reshape(-1) for n in names]), global_count)
        parts = torch.split(keep, [weights[n].numel() for n in names])
        pruned = {n: part.view_as(weights[n]) for n, part in zip(names, parts)}
    result = {}
    for n in names:
        mask = pruned[n]
        active = int(mask.sum())
        n_swap = swap_count(drop_fraction, active, "ceil")
        if n_swap == 0 or bool(mask.all()):
            result[n] = mask
            continue
        kept = sort_topk_mask(weights[n].abs().masked_fill(~mask, float("-inf")), active - n_swap)
        grown = sort_topk_mask(grads[n].abs().masked_fill(kept, float("-inf")), n_swap)
        result[n] = kept | grown
    return result
