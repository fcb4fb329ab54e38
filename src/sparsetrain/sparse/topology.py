"""Top-k positions over a stream of score blocks: growth by a dense score that is never held whole.

RigL grows the inactive connections with the largest dense gradient. For a :class:`TrainableSparseLinear` that
gradient is computed in row blocks (:meth:`~sparsetrain.sparse.TrainableSparseLinear.dense_grad`), so that a
layer whose dense form would not fit in memory can still be updated, and peak memory stays near the sparse
footprint. :func:`topk_positions` selects over such blocks exactly, with the tie-break of
:func:`sparsetrain.topk.topk_mask` (among equal scores the lowest flat position wins), holding at most about
``2k`` candidates plus one block.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["topk_positions"]


def _keep_best(values: Tensor, positions: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best candidates (ties to the lowest position; ``positions`` increasing), in position order,
    and the k-th best value."""
    kth = torch.kthvalue(values, values.shape[0] - k + 1).values
    keep = values > kth
    ties = (values == kth).nonzero().squeeze(1)
    keep[ties[: k - int(keep.sum())]] = True
    return values[keep], positions[keep], kth


def topk_positions(blocks: Iterable[tuple[int, Tensor]], k: int) -> Tensor:
    """Flat positions of the ``k`` largest scores over blocks that tile a flat index range in increasing order.

    Args:
        blocks: ``(offset, scores)`` pairs; ``scores`` (any shape, flattened row-major) holds the scores of the
            positions ``offset, offset + 1, ...``. Offsets must increase and blocks must not overlap. Entries that
            may not be chosen are ``-inf``; NaN is never chosen.
        k: how many positions to return (fewer if fewer entries are eligible).

    Returns:
        int64 positions, increasing, of the ``k`` largest scores; among equal scores the lowest positions win,
        as in :func:`sparsetrain.topk.topk_mask`.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    values = torch.empty(0)
    positions = torch.empty(0, dtype=torch.int64)
    threshold: Tensor | None = None
    end = None
    for offset, scores in blocks:
        if end is not None and offset < end:
            raise ValueError(f"blocks must tile increasing positions: offset {offset} < end of the last block {end}")
        flat = scores.detach().reshape(-1)
        end = offset + flat.shape[0]
        if k == 0:
            continue
        # Later positions lose ties, so once k candidates are held only scores above the k-th best can enter.
        chosen = (flat > threshold if threshold is not None else flat > float("-inf")).nonzero().squeeze(1)
        values = torch.cat([values.to(flat.dtype), flat[chosen]])
        positions = torch.cat([positions, chosen + offset])
        if values.shape[0] >= 2 * k:
            values, positions, threshold = _keep_best(values, positions, k)
    if values.shape[0] > k:
        values, positions, _ = _keep_best(values, positions, k)
    return positions
