"""Tools to look inside sparse training: mask overlap, update sparsity, FLOPs, the ITOP rate and pruning plasticity.

Masks are ``dict[str, torch.BoolTensor]`` keyed by fully-qualified parameter name, as everywhere in
sparsetrain. Every function here is pure (no training state is touched) and works on CPU and device
tensors. The plasticity study (:mod:`sparsetrain.analysis.plasticity`) trains through the experiment harness,
so its names are imported on first use.
"""

from typing import Any

from sparsetrain.analysis.compare import Comparison, compare_masks, compare_updates
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
from sparsetrain.analysis.sources import common_names, load_masks, load_weights
from sparsetrain.analysis.update_sparsity import (
    UpdateRow,
    UpdateSparsityReport,
    changed_masks,
    update_overlap,
    update_rank,
    update_sparsity,
)

__all__ = [
    "Comparison",
    "FlopsReport",
    "ItopTracker",
    "LayerFlops",
    "LayerTrainingFlops",
    "OverlapReport",
    "OverlapRow",
    "TrainingFlopsReport",
    "UpdateRow",
    "UpdateSparsityReport",
    "PlasticityCell",
    "PlasticityStudy",
    "changed_masks",
    "common_names",
    "compare_masks",
    "compare_updates",
    "inference_flops",
    "iou",
    "itop_rate",
    "load_masks",
    "load_weights",
    "magnitude_masks",
    "mask_overlap",
    "masks_from_state_dict",
    "run_plasticity",
    "training_flops",
    "update_overlap",
    "update_rank",
    "update_sparsity",
]

_PLASTICITY = ("PlasticityCell", "PlasticityStudy", "magnitude_masks", "run_plasticity")


def __getattr__(name: str) -> Any:
    # The plasticity study imports the experiment harness, which imports sparsetrain: load it on first use.
    if name in _PLASTICITY:
        from sparsetrain.analysis import plasticity

        return getattr(plasticity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
