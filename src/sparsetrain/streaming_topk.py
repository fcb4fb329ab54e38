"""Top-k positions over a stream of score blocks: growth by a dense score that is never held whole.

RigL grows the inactive connections with the largest dense gradient. For a :class:`TrainableSparseLinear` that
gradient is computed in row blocks (:meth:`~sparsetrain.sparse.TrainableSparseLinear.dense_grad`), so that a
layer whose dense form would not fit in memory can still be updated, and peak memory stays near the sparse
footprint. :func:`topk_positions` selects over such blocks exactly, with the tie-break of
:func:`sparsetrain.topk.topk_mask` (among equal scores the lowest flat position wins), holding at most about
``2k`` candidates plus one block.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

import torch
from torch import Tensor

from sparsetrain import native
from sparsetrain.topk import kth_largest, topk_mask

__all__ = ["exclude_rows", "merge_sorted", "topk_positions", "union_sorted"]

_SIGNATURES: dict[str, native.Signature] = {
    "select_above": (ctypes.c_int64, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_void_p]),
    "keep_best": (ctypes.c_int64, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64]),
    "union_i64": (ctypes.c_int64, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]),
    "exclude_rows": (None, [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3),
}


def _load() -> ctypes.CDLL | None:
    """``native/topology.c`` (built once per process), or None when native kernels are unavailable."""
    return native.try_load("topology", _SIGNATURES)


def _append_above(flat: Tensor, threshold: float, absolute: bool, offset: int, values: Tensor, positions: Tensor,
                  count: int) -> int:
    """Append the scores above ``threshold`` (``|flat|`` with ``absolute``) and their positions ``offset + index``
    to ``values[count:]`` / ``positions[count:]`` (room for all of ``flat``); returns the new count."""
    library = _load() if flat.dtype == torch.float32 and values.dtype == torch.float32 and flat.is_cpu else None
    if library is None:
        scores = flat.abs() if absolute else flat
        index = (scores > threshold).nonzero().squeeze(1)
        values[count:count + index.shape[0]] = scores.index_select(0, index)
        positions[count:count + index.shape[0]] = index + offset
        return count + index.shape[0]
    flat = flat.contiguous()
    added = library.select_above(flat.shape[0], flat.data_ptr(), threshold, int(absolute), offset,
                                 values[count:].data_ptr(), positions[count:].data_ptr())
    return count + int(added)


def topk_positions(blocks: Iterable[tuple[int, Tensor]], k: int, *, absolute: bool = False) -> Tensor:
    """Flat positions of the ``k`` largest scores over blocks that tile a flat index range in increasing order.

    Args:
        blocks: ``(offset, scores)`` pairs; ``scores`` (any shape, flattened row-major) holds the scores of the
            positions ``offset, offset + 1, ...``. Offsets must increase and blocks must not overlap. NaN is never
            chosen: mark entries that may not be chosen NaN (or ``-inf`` without ``absolute``).
        k: how many positions to return (fewer if fewer entries are eligible).
        absolute: rank by ``|score|`` (RigL's gradient magnitude) without the caller taking it.

    Returns:
        int64 positions, increasing, of the ``k`` largest scores; among equal scores the lowest positions win,
        as in :func:`sparsetrain.topk.topk_mask`.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    values = torch.empty(0)
    positions = torch.empty(0, dtype=torch.int64)
    count = 0
    threshold = float("-inf")
    end = None
    for offset, scores in blocks:
        if end is not None and offset < end:
            raise ValueError(f"blocks must tile increasing positions: offset {offset} < end of the last block {end}")
        flat = scores.detach().reshape(-1)
        end = offset + flat.shape[0]
        if k == 0:
            continue
        if values.shape[0] < count + flat.shape[0] or values.dtype != flat.dtype:
            # Room for 2k candidates and one block: reallocated only when a block is larger than the ones before.
            size = max(2 * k, count) + flat.shape[0]
            values = torch.cat([values.to(flat.dtype)[:count], torch.empty(size - count, dtype=flat.dtype)])
            positions = torch.cat([positions[:count], torch.empty(size - count, dtype=torch.int64)])
        # Later positions lose ties, so once k candidates are held only scores above the k-th best can enter.
        count = _append_above(flat, threshold, absolute, offset, values, positions, count)
        if count >= 2 * k:
            count = _keep_best(values, positions, count, k)
            threshold = float(values[:count].min())
    if count > k:
        count = _keep_best(values, positions, count, k)
    return positions[:count].clone()


def _keep_best(values: Tensor, positions: Tensor, count: int, k: int) -> int:
    """Keep the ``k`` best of the first ``count`` candidates at the front, in position order (ties to the lowest
    position: positions are increasing); returns k."""
    library = _load() if values.dtype == torch.float32 and values.is_cpu else None
    if library is not None:
        kth = kth_largest(values[:count], k)
        return int(library.keep_best(count, values.data_ptr(), positions.data_ptr(), kth, k))
    best = topk_mask(values[:count], k).nonzero().squeeze(1)
    values[:k] = values.index_select(0, best)
    positions[:k] = positions.index_select(0, best)
    return k


def merge_sorted(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The merge of two increasing int64 tensors, and the slot of each entry of ``a`` in it.

    An entry's slot is its own rank plus the number of entries of the other tensor before it (ties: ``a`` first),
    so distinct inputs give an increasing result; equal entries stay duplicated.
    """
    a_at = torch.arange(a.shape[0], device=a.device) + torch.searchsorted(b, a)
    b_at = torch.arange(b.shape[0], device=a.device) + torch.searchsorted(a, b, right=True)
    merged = torch.empty(a.shape[0] + b.shape[0], dtype=torch.int64, device=a.device)
    merged[a_at] = a
    merged[b_at] = b
    return merged, a_at


def union_sorted(a: Tensor, b: Tensor) -> Tensor:
    """The increasing union, without duplicates, of two increasing int64 tensors (a merge, not a sort)."""
    library = _load() if a.is_cpu and b.is_cpu and a.dtype == b.dtype == torch.int64 else None
    if library is None:
        if a.numel():
            slot = torch.searchsorted(a, b).clamp_(max=a.numel() - 1)
            b = b[a.index_select(0, slot) != b]
        return merge_sorted(a, b)[0] if b.numel() else a
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty(a.numel() + b.numel(), dtype=torch.int64)
    n = int(library.union_i64(a.numel(), a.data_ptr(), b.numel(), b.data_ptr(), out.data_ptr()))
    return out[:n].clone() if n < out.numel() else out


def exclude_rows(block: Tensor, crow: Tensor, col: Tensor, kept: Tensor | None, first: int, last: int) -> None:
    """Mark NaN, in ``block`` (the scores of rows ``first .. last - 1`` of a CSR matrix, row-major, flattened),
    the positions of that matrix's entries in those rows: all of them, or those whose ``kept`` (bool over the
    entries) is True. NaN is never chosen by :func:`topk_positions`."""
    n_in = block.numel() // max(last - first, 1)
    library = (_load() if block.is_cpu and block.dtype == torch.float32 and block.is_contiguous()
               and crow.dtype == col.dtype == torch.int32 and crow.is_cpu else None)
    if library is not None:
        kept = kept.contiguous() if kept is not None else None
        library.exclude_rows(block.data_ptr(), crow.contiguous().data_ptr(), col.contiguous().data_ptr(),
                             kept.data_ptr() if kept is not None else None, first, last, n_in)
        return
    k0, k1 = int(crow[first]), int(crow[last])
    counts = crow[first:last + 1].diff().long()
    local = torch.repeat_interleave(torch.arange(last - first, device=col.device) * n_in, counts,
                                    output_size=k1 - k0) + col[k0:k1]
    if kept is not None:
        local = local[kept[k0:k1]]
    block.view(-1).index_fill_(0, local.to(block.device), float("nan"))
