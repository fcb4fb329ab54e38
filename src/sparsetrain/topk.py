"""Exact-count top-k masks: per tensor, global, and drop-and-grow.

Every mask in sparsetrain is chosen here, so that counts are exact and ties are broken the same way
everywhere: among entries whose score equals the k-th largest, the ones with the **lowest flat index** win.
A full sort is never needed: one selection (``torch.kthvalue``) finds the threshold, and the rare ties at the
threshold are resolved with a cumulative count over the tied entries only.

Entries that must never be chosen are given as an ``eligible`` mask: their (non-negative) scores count as zero
and ties at zero are resolved towards eligible entries, which ranks them below every candidate as jaxpruner does
with existing zeros, without a slow ``masked_fill``.

On CPU float32 tensors the threshold and the mask come from a small C kernel when one can be built
(``native/select.c``: a two-pass radix select and a one-pass mask-and-count, see :mod:`sparsetrain.native`);
otherwise from ``torch.kthvalue`` on a narrowed candidate set. Both give the same value, so the masks are the same.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .native import try_load

__all__ = ["kth_largest", "topk_mask", "global_topk_masks", "drop_and_grow", "exact_counts", "NEG_INF"]

#: Score for entries that must rank below every candidate when scores may be negative.
NEG_INF = float("-inf")


_SAMPLE_SIZE = 65_536
_NARROWING_MIN_NUMEL = 1 << 16


def _select_kth_largest(flat: Tensor, k: int) -> Tensor:
    """Plain selection of the k-th largest value (1 <= k <= numel)."""
    if flat.device.type == "cpu":
        return torch.kthvalue(flat, flat.numel() - k + 1).values
    return torch.topk(flat, k, sorted=False).values.min()


def _kth_largest(parts: Tensor | Sequence[Tensor], k: int) -> Tensor:
    """The k-th largest value over one or several 1-D tensors taken together (1 <= k <= total), exactly.

    Large inputs are narrowed first: a strided sample gives two values that bracket the k-th largest with
    high probability; one counting pass checks the bracket, and selection then runs on the few entries
    inside it. If the bracket misses (an adversarial layout), the full selection runs, so the answer is always
    exact; only the time depends on the sample. Several tensors are never concatenated in full.
    """
    parts = [parts] if isinstance(parts, Tensor) else list(parts)
    n = sum(part.numel() for part in parts)
    if n < _NARROWING_MIN_NUMEL:
        return _select_kth_largest(torch.cat(parts) if len(parts) > 1 else parts[0], k)
    stride = max(1, n // _SAMPLE_SIZE)
    sample = torch.cat([part[::stride] for part in parts])
    m = sample.numel()
    rank = k * m / n  # expected rank of the answer in the sample, from the top
    margin = 0.01 * m + 64
    hi_rank = int(rank - margin)
    lo_rank = int(rank + margin) + 1
    hi = _select_kth_largest(sample, hi_rank) if hi_rank >= 1 else None
    lo = _select_kth_largest(sample, lo_rank) if lo_rank <= m else None
    if hi is not None or lo is not None:
        n_above = 0 if hi is None else sum(int(torch.count_nonzero(part > hi)) for part in parts)
        if n_above < k:
            bands = []
            for part in parts:
                if hi is None:
                    in_band = part >= lo
                elif lo is None:
                    in_band = part <= hi
                else:
                    in_band = torch.logical_and(part >= lo, part <= hi)
                bands.append(part[in_band])
            band = torch.cat(bands) if len(bands) > 1 else bands[0]
            if n_above + band.numel() >= k:
                return _select_kth_largest(band, k - n_above)
    return _select_kth_largest(torch.cat(parts) if len(parts) > 1 else parts[0], k)


def _native_library(tensors: Sequence[Tensor], eligible: Sequence[Tensor] | None) -> ctypes.CDLL | None:
    """The selection kernels, if built and if every tensor is a contiguous CPU float32 (bool) tensor."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return None
    if eligible is not None and not all(e.dtype == torch.bool and e.is_contiguous() for e in eligible):
        return None
    return try_load("select")


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _native_kth_largest(library: ctypes.CDLL, parts: Sequence[Tensor], k: int,
                        eligible: Sequence[Tensor] | None) -> float:
    """The k-th largest value over ``parts`` (ineligible entries count as 0), from ``select.c``."""
    lengths = (ctypes.c_int64 * len(parts))(*[p.numel() for p in parts])
    out = ctypes.c_float()
    status = library.kth_largest(
        ctypes.c_int64(len(parts)), _pointers(parts), _pointers(eligible) if eligible is not None else None,
        lengths, ctypes.c_int64(k), ctypes.c_int(torch.get_num_threads()), ctypes.byref(out),
    )
    if status != 0:
        raise ValueError(f"k={k} is out of range for {sum(p.numel() for p in parts)} entries")
    return out.value  # a float32 value: comparing float32 tensors with it is exact


def _native_mask_at_least(library: ctypes.CDLL, flat: Tensor, threshold: float,
                          eligible: Tensor | None) -> tuple[Tensor, int]:
    """``flat >= threshold`` (and ``eligible``) and its count, in one pass."""
    mask = torch.empty(flat.shape, dtype=torch.bool)
    library.mask_at_least.restype = ctypes.c_int64
    count = library.mask_at_least(
        ctypes.c_int64(flat.numel()), ctypes.c_void_p(flat.data_ptr()),
        ctypes.c_void_p(eligible.data_ptr()) if eligible is not None else None, ctypes.c_float(threshold),
        ctypes.c_int(torch.get_num_threads()), ctypes.c_void_p(mask.data_ptr()),
    )
    return mask, int(count)


def kth_largest(scores: Tensor, k: int) -> float:
    """The ``k``-th largest entry of ``scores`` (1 <= k <= numel), as a float exactly equal to it."""
    flat = scores.reshape(-1)
    library = _native_library([flat], None)
    if library is not None:
        return _native_kth_largest(library, [flat], k, None)
    return float(_kth_largest(flat, k))


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
    eligible_flat = None
    if eligible is not None:
        eligible_flat = eligible.reshape(-1)
        if n_eligible is None:
            n_eligible = int(torch.count_nonzero(eligible_flat))
        k = min(k, n_eligible)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k == n:
        return torch.ones_like(scores, dtype=torch.bool)
    library = _native_library([flat], None if eligible_flat is None else [eligible_flat])
    if library is not None:
        threshold = _native_kth_largest(library, [flat], k, None if eligible_flat is None else [eligible_flat])
        mask, count = _native_mask_at_least(library, flat, threshold, eligible_flat)
        if eligible_flat is not None and count != k:
            flat = flat * eligible_flat.view(torch.uint8)
    else:
        if eligible_flat is not None:
            flat = flat * eligible_flat.view(torch.uint8)
        threshold = _kth_largest(flat, k)
        mask = flat >= threshold
        if eligible_flat is not None and threshold <= 0:
            mask &= eligible_flat
        count = int(torch.count_nonzero(mask))
    if count != k:
        # More entries tie at the threshold than fit: keep the lowest-index ones.
        mask = flat > threshold
        ties = flat == threshold
        if eligible_flat is not None:
            ties &= eligible_flat
        missing = k - int(torch.count_nonzero(mask))
        mask[ties.nonzero().squeeze(1)[:missing]] = True
    return mask.view_as(scores)


def global_topk_masks(
    scores: Mapping[str, Tensor], k: int, eligible: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Top-k over several tensors taken together (one threshold), as if concatenated, split back per tensor.

    The flat index used for tie-breaking follows the mapping's order, then each tensor's own order. The
    tensors are never concatenated in full (see :func:`_kth_largest`).

    Args:
        scores: name -> score tensor (all on one device).
        k: total number of entries to keep across all tensors.
        eligible: optional name -> bool tensor (see :func:`topk_mask`; scores must then be non-negative).

    Returns:
        name -> bool mask with ``k`` True entries in total (after clamping to the eligible count).
    """
    names = list(scores)
    flats = {name: scores[name].reshape(-1) for name in names}
    allowed = None
    n = sum(flat.numel() for flat in flats.values())
    k = max(0, min(int(k), n))
    if eligible is not None:
        allowed = {name: eligible[name].reshape(-1) for name in names}
        k = min(k, sum(int(torch.count_nonzero(allowed[name])) for name in names))
    if k == 0 or k == n:
        return {name: torch.full_like(scores[name], k == n, dtype=torch.bool) for name in names}
    library = _native_library(list(flats.values()), None if allowed is None else list(allowed.values()))
    if library is not None:
        threshold = _native_kth_largest(library, list(flats.values()), k,
                                        None if allowed is None else list(allowed.values()))
        masks, count = {}, 0
        for name in names:
            masks[name], part = _native_mask_at_least(library, flats[name], threshold,
                                                      None if allowed is None else allowed[name])
            count += part
    else:
        if allowed is not None:
            flats = {name: flats[name] * allowed[name].view(torch.uint8) for name in names}
        threshold = _kth_largest(list(flats.values()), k)
        masks = {name: flats[name] >= threshold for name in names}
        if allowed is not None and threshold <= 0:
            for name in names:
                masks[name] &= allowed[name]
        count = sum(int(torch.count_nonzero(m)) for m in masks.values())
    if count != k:
        if allowed is not None:
            flats = {name: flats[name] * allowed[name].view(torch.uint8) for name in names}
        # More entries tie at the threshold than fit: keep the lowest-index ones, tensor by tensor.
        masks = {name: flats[name] > threshold for name in names}
        missing = k - sum(int(torch.count_nonzero(m)) for m in masks.values())
        for name in names:
            if missing <= 0:
                break
            ties = flats[name] == threshold
            if allowed is not None:
                ties &= allowed[name]
            index = ties.nonzero().squeeze(1)[:missing]
            masks[name][index] = True
            missing -= index.numel()
    return {name: masks[name].view_as(scores[name]) for name in names}


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
