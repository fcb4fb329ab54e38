"""Tools to look inside sparse training: mask overlap, update sparsity, FLOPs and the ITOP rate.

Masks are ``dict[str, torch.BoolTensor]`` keyed by fully-qualified parameter name, as everywhere in
sparsetrain. Every function here is pure (no training state is touched) and works on CPU and device
tensors.
"""

from sparsetrain.analysis.flops import (
    FlopsReport,
    LayerFlops,
    LayerTrainingFlops,
    TrainingFlopsReport,
    inference_flops,
    training_flops,
)
from sparsetrain.analysis.itop import ItopTracker, itop_rate
from sparsetrain.analysis.overlap import OverlapReport, OverlapRow, iou, mask_overlap, masks_from_state_dict
from sparsetrain.analysis.update_sparsity import (
    UpdateRow,
    UpdateSparsityReport,
    changed_masks,
    update_overlap,
    update_rank,
    update_sparsity,
)

__all__ = [
    "FlopsReport",
    "ItopTracker",
    "LayerFlops",
    "LayerTrainingFlops",
    "OverlapReport",
    "OverlapRow",
    "TrainingFlopsReport",
    "UpdateRow",
    "UpdateSparsityReport",
    "changed_masks",
    "inference_flops",
    "iou",
    "itop_rate",
    "mask_overlap",
    "masks_from_state_dict",
    "training_flops",
    "update_overlap",
    "update_rank",
    "update_sparsity",
]
