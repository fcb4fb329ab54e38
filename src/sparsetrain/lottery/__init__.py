"""Lottery tickets, the algorithms: iterative magnitude pruning's counts and rounds, rewinding, the controls' masks
and weights, and lottery jackpots. Pure functions of masks, weights and models; nothing here trains or writes.

* :func:`prune_round` / :func:`next_count` / :func:`level_count` / :func:`level_counts` / :func:`layer_rates` —
  which weights each IMP round keeps (Frankle & Carbin 2019); :func:`prune_to_sparsity` / :func:`level_sparsities`
  — rounds that follow target sparsities (a list, or a linear rise).
* :func:`snapshot` / :func:`rewind` / :func:`reinitialize` — the rewind point and a fresh initialisation.
* :func:`random_mask_like` — the random-mask control.
* :func:`find_jackpot` — a mask found in a trained model without weight updates (Chen et al. 2021).

The lottery *study* (IMP levels and controls trained on disk, resumable, and its curves) is
:mod:`sparsetrain.studies.lottery`.
"""

from .controls import random_mask_like
from .imp import (
    SCHEDULES,
    layer_rates,
    level_count,
    level_counts,
    level_sparsities,
    next_count,
    pattern_groups,
    prune_round,
    prune_to_sparsity,
)
from .jackpot import find_jackpot, mask_iou, restrict_changes
from .rewind import reinitialize, rewind, snapshot

__all__ = [
    "SCHEDULES", "prune_round", "prune_to_sparsity", "level_sparsities", "next_count", "level_count", "level_counts",
    "layer_rates", "pattern_groups", "rewind", "snapshot",
    "reinitialize", "random_mask_like", "find_jackpot", "restrict_changes", "mask_iou",
]
