"""Pruning at initialisation: SNIP, GraSP, SynFlow and the magnitude / random controls.

``prune_at_init(model, method, sparsity, data)`` returns bool masks keyed like
:func:`sparsetrain.masks.select_prunable`; train them with ``Static(model, optimizer, masks=...)`` or
``Static(..., init="snip", init_data=loader)``.
"""

from ..batches import collect_batches
from .grasp import GRASP_TEMPERATURE, grasp_scores
from .prune import INIT_METHODS, SCHEDULES, prune_at_init, round_densities, warn_collapsed
from .snip import mean_gradient, snip_scores
from .synflow import linearize, ones_input, synflow_scores

__all__ = [
    "prune_at_init", "INIT_METHODS", "SCHEDULES", "round_densities", "warn_collapsed",
    "snip_scores", "grasp_scores", "synflow_scores", "mean_gradient", "linearize", "ones_input",
    "collect_batches", "GRASP_TEMPERATURE",
]
