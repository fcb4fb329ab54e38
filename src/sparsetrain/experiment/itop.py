"""Per-layer in-time over-parameterization (ITOP) rates of a run, for metrics.jsonl and summary.json.

Liu et al., *Do We Actually Need Dense Over-Parameterization? In-Time Over-Parameterization in Sparse
Training*, ICML 2021: a tensor's ITOP rate is the fraction of its weights that were active at some point of the
run so far. The sparsifier keeps the union of its masks (``ever_active``); the run's total rate is
``sparsifier.itop_rate()`` (all sparsified weights pooled), and this module gives the per-tensor rates beside it.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["itop_by_layer"]


def itop_by_layer(sparsifier: Any) -> dict[str, float] | None:
    """``{parameter name: fraction of its weights ever active}`` of a sparsifier, or None without one.

    Args:
        sparsifier: a :class:`sparsetrain.Sparsifier` (anything with an ``ever_active`` dict of bool tensors), or
            None for a dense run.

    Returns:
        The per-tensor rates in the sparsifier's order (0.0 for an empty tensor), or None.
    """
    if sparsifier is None:
        return None
    return {name: int(torch.count_nonzero(mask)) / mask.numel() if mask.numel() else 0.0
            for name, mask in sparsifier.ever_active.items()}
