"""Tools to look inside sparse training: mask overlap, update sparsity, FLOPs, the ITOP rate, pruning plasticity,
and the significance rule of the studies' verdicts.

Masks are ``dict[str, torch.BoolTensor]`` keyed by fully-qualified parameter name, as everywhere in
sparsetrain. Every function here is pure: a function of masks, weights and checkpoints (no training state is
touched, nothing is trained), on CPU and device tensors. This package imports only the core; the studies that
train (the plasticity study, the lottery) are :mod:`sparsetrain.studies`. The ITOP rate lives in the core
(:mod:`sparsetrain.itop`, the sparsifier reports it) and is re-exported here.
"""

from sparsetrain.analysis.compare import Comparison, compare_masks, compare_updates
from sparsetrain.analysis.flops import (
    FlopsReport,
    LayerFlops,
    LayerTrainingFlops,
    TrainingFlopsReport,
    inference_flops,
    training_flops,
)
from sparsetrain.analysis.overlap import (
    OverlapReport,
    OverlapRow,
    iou,
    mask_overlap,
    masks_from_state_dict,
)
from sparsetrain.analysis.plasticity import (
    contrast_plasticity,
    format_contrast,
    format_plasticity,
    magnitude_masks,
    plot_plasticity,
    summarize_plasticity,
)
from sparsetrain.analysis.significance import SIGNIFICANCE_RULE, Difference, difference
from sparsetrain.analysis.sources import common_names, load_masks, load_weights
from sparsetrain.analysis.update_sparsity import (
    UpdateRow,
    UpdateSparsityReport,
    changed_masks,
    update_overlap,
    update_rank,
    update_sparsity,
)
from sparsetrain.itop import ItopTracker, itop_by_layer, itop_rate

__all__ = [
    "Comparison",
    "Difference",
    "FlopsReport",
    "ItopTracker",
    "LayerFlops",
    "LayerTrainingFlops",
    "OverlapReport",
    "OverlapRow",
    "SIGNIFICANCE_RULE",
    "TrainingFlopsReport",
    "UpdateRow",
    "UpdateSparsityReport",
    "changed_masks",
    "common_names",
    "compare_masks",
    "compare_updates",
    "contrast_plasticity",
    "difference",
    "format_contrast",
    "format_plasticity",
    "inference_flops",
    "iou",
    "itop_by_layer",
    "itop_rate",
    "load_masks",
    "load_weights",
    "magnitude_masks",
    "mask_overlap",
    "masks_from_state_dict",
    "plot_plasticity",
    "summarize_plasticity",
    "training_flops",
    "update_overlap",
    "update_rank",
    "update_sparsity",
]
