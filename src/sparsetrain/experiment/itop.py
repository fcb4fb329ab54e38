"""Per-layer in-time over-parameterization (ITOP) rates of a run, for metrics.jsonl and summary.json.

Liu et al., *Do We Actually Need Dense Over-Parameterization? In-Time Over-Parameterization in Sparse
Training*, ICML 2021: a tensor's ITOP rate is the fraction of its weights that were active at some point of the
run so far. The sparsifier keeps the union of its masks (``ever_active``); the run's total rate is
``sparsifier.itop_rate()`` (all sparsified weights pooled), and this module gives the per-tensor rates beside it.
"""

from __future__ import annotations

import math
from typing import Any

from sparsetrain.masks import count_active

__all__ = ["itop_by_layer"]


def itop_by_layer(sparsifier: Any) -> dict[str, float] | None:
    """``{parameter name: fraction of its weights ever active}`` of a sparsifier, or None without one.

    Args:
        sparsifier: a :class:`sparsetrain.Sparsifier` (anything with an ``ever_active`` mapping of bool tensors, and
            ``params`` giving their shapes), or None for a dense run.

    Returns:
        The per-tensor rates in the sparsifier's order (0.0 for an empty tensor), or None.
    """
    if sparsifier is None:
        return None
    ever = sparsifier.ever_active
    sizes = {name: math.prod(sparsifier.params[name].shape) for name in ever}
    return {name: count_active(ever, name) / sizes[name] if sizes[name] else 0.0 for name in ever}
