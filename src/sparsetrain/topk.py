"""Exact-count top-k masks: per tensor, global, and drop-and-grow.

Every mask in sparsetrain is chosen here, so that counts are exact and ties are broken the same way
everywhere: among entries whose score equals the k-th largest, the ones with the **lowest flat index** win.
A full sort is never needed: one selection (``torch.kthvalue``) finds the threshold, and the rare ties at the
threshold are resolved with a cumulative count over the tied entries only.

Entries that must never be chosen are given as an ``eligible`` mask: their (non-negative) scores are zeroed with
one multiply and ties at zero resolved towards eligible entries, which ranks them below every candidate as
jaxpruner does with existing zeros, without a slow ``masked_fill``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["topk_mask", "global_topk_masks", "drop_and_grow", "exact_counts", "NEG_INF"]

#: Score for entries that must rank below every candidate when scores may be negative.
NEG_INF = float("-inf")


_SAMPLE_SIZE = 65_536
_NARROWING_MIN_NUMEL = 1 << 16


def _select_kth_largest(flat: Tensor, k: int) -> Tensor:
    """Plain selection of the k-th largest value (1 <= k <= numel)."""
    if flat.device.type == "cpu":
        return torch.kthvalue(flat, flat.numel() - k + 1).values
    return torch.topk(flat, k, sorted=False).values.min()


def _kth_largest(flat: Tensor, k: int) -> Tensor:
    """The value of the k-th largest entry of a 1-D tensor (1 <= k <= numel), exactly.

    Large tensors are narrowed first: a strided sample gives two values that bracket the k-th largest with
    high probability; one counting pass checks the bracket, and selection then runs on the few entries
    inside it. If the bracket misses (an adversarial layout), the full selection runs, so the answer is always
    exact; only the time depends on the sample.
    """
    n = flat.numel()
    if n < _NARROWING_MIN_NUMEL:
        return _select_kth_largest(flat, k)
    sample = flat[:: n // _SAMPLE_SIZE]
    m = sample.numel()
    rank = k * m / n  # expected rank of the answer in the sample, from the top
    margin = 0.01 * m + 64
    hi_rank = int(rank - margin)
    lo_rank = int(rank + margin) + 1
    hi = _select_kth_largest(sample, hi_rank) if hi_rank >= 1 else None
    lo = _select_kth_largest(sample, lo_rank) if lo_rank <= m else None
    n_above = 0 if hi is None else int(torch.count_nonzero(flat > hi))
    if n_above < k:
        if hi is None and lo is None:
            return _select_kth_largest(flat, k)
        if hi is None:
            in_band = flat >= lo
        elif lo is None:
            in_band = flat <= hi
        else:
            in_band = torch.logical_and(flat >= lo, flat <= hi)
        band = flat[in_band]
        if n_above + band.numel() >= k:
            return _select_kth_largest(band, k - n_above)
    return _select_kth_largest(flat, k)


def topk_mask(scores: Tensor, k: int, eligible: Tensor | None = None, n_eligible: int | None = None) -> Tensor:
    """Bool mask of the ``k`` largest entries of ``scores`` (same shape), exactly ``k`` of them.

    Ties at the threshold go to the entries with the lowest flat index, so the result is deterministic and
    identical on every device and every rank.

    Args:
        scores: any-shaped floating tensor. With ``eligible``, scores must be non-negative.
        k: number of entries to keep, clamped to ``[0, numel]`` (and to the number of eligible entries).
        eligible: optional bool tensor; only eligible entries can be chosen. Ineligible ones are ranked below
            every eligible one by zeroing their score (one multiply instead of a slow ``masked_fill``), and
            ties at zero are resolved towards eligible entries.
        n_eligible: the number of eligible entries, if the caller knows it (saves a pass).

    Returns:
        A bool tensor shaped like ``scores`` with exactly ``k`` True entries (after clamping).
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    k = max(0, min(int(k), n))
    if eligible is not None:
        eligible_flat = eligible.reshape(-1)
        if n_eligible is None:
            n_eligible = int(torch.count_nonzero(eligible_flat))
        k = min(k, n_eligible)
        flat = flat * eligible_flat.view(torch.uint8)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k == n:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = _kth_largest(flat, k)
    mask = flat >= threshold
    if eligible is not None and threshold <= 0:
        mask &= eligible_flat
    if int(torch.count_nonzero(mask)) != k:
        # More entries tie at the threshold than fit: keep the lowest-index ones.
        mask = flat > threshold
        ties = flat == threshold
        if eligible is not None:
            ties &= eligible_flat
        missing = k - int(torch.count_nonzero(mask))
        mask[ties.nonzero().squeeze(1)[:missing]] = True
    return mask.view_as(scores)


def global_topk_masks(
    scores: Mapping[str, Tensor], k: int, eligible: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Top-k over the concatenation of several tensors, split back per tensor.

    The flat index used for tie-breaking follows the mapping's order, then each tensor's own order.

    Args:
        scores: name -> score tensor (all on one device).
        k: total number of entries to keep across all tensors.
        eligible: optional name -> bool tensor (see :func:`topk_mask`).

    Returns:
        name -> bool mask with ``k`` True entries in total.
    """
    names = list(scores)
    flat = torch.cat([scores[name].reshape(-1) for name in names])
    allowed = None if eligible is None else torch.cat([eligible[name].reshape(-1) for name in names])
    keep = topk_mask(flat, k, allowed)
    sizes = [scores[name].numel() for name in names]
    return {
        name: part.view_as(scores[name])
        for name, part in zip(names, torch.split(keep, sizes), strict=True)
    }


def drop_and_grow(
    mask: Tensor,
    drop_scores: Tensor,
    grow_scores: Tensor,
    n_swap: int,
    *,
    forbid: Tensor | None = None,
    n_active: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Drop the ``n_swap`` lowest-scoring active entries and grow as many inactive ones: two exact top-k calls.

    1. Keep the ``active - n_swap`` active entries with the largest ``drop_scores`` (only active entries are
       eligible).
    2. Grow the ``n_swap`` entries with the largest ``grow_scores`` among those not kept and not in ``forbid``.

    Scores must be non-negative (magnitudes, random numbers). The active count is unchanged whenever enough
    candidates exist; if ``forbid`` leaves fewer than ``n_swap`` candidates, fewer are dropped so the count
    still holds.

    Args:
        mask: current bool mask.
        drop_scores: higher = more worth keeping (e.g. ``|w|``).
        grow_scores: higher = more worth growing (e.g. ``|grad|``).
        n_swap: how many to drop and grow.
        forbid: optional bool tensor of positions that may not be grown.
        n_active: ``mask``'s count if the caller knows it (saves a pass).

    Returns:
        ``(new_mask, kept)``: the new mask and the survivors of the drop. Grown entries are
        ``new_mask & ~kept``; those of them already in ``mask`` were dropped and grown back in this update.
    """
    if n_active is None:
        n_active = int(torch.count_nonzero(mask))
    # Entries dropped in this same update become candidates too (unless forbidden).
    n_swap = max(0, min(int(n_swap), n_active))
    if forbid is not None:
        n_swap = min(n_swap, int(torch.count_nonzero(~(mask | forbid))))
    if n_swap == 0:
        return mask.clone(), mask.clone()
    kept = topk_mask(drop_scores, n_active - n_swap, mask, n_active)
    if forbid is None:
        grown = topk_mask(grow_scores, n_swap, ~kept, mask.numel() - (n_active - n_swap))
    else:
        grown = topk_mask(grow_scores, n_swap, ~(kept | forbid))
    return kept | grown, kept


def exact_counts(values: Sequence[float], total: int) -> list[int]:
    """Round non-negative reals to integers that sum exactly to ``total`` (largest-remainder method)."""
    floors = [int(v) for v in values]
    remainder = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - floors[i]), i))
    for i in order[: max(0, remainder)]:
        floors[i] += 1
    return floors
