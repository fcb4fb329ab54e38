"""FLOPs of a finished run for its summary, through :mod:`sparsetrain.analysis` when it is installed.

Inference FLOPs per sample (dense and with the final masks) and training FLOPs of the whole run under RigL's
accounting (Evci et al. 2020): the density history of the run's topology updates, and the steps whose backward
pass needed the dense weight gradient (gradient-based growth: RigL and GraNet at their update steps, SNFS at
every step, since its momentum is of the dense gradient, and SR-STE at every step, since its straight-through
gradient updates the dense weights). When the analysis package is missing or cannot count
the model, the summary simply has no FLOPs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["run_flops", "dense_gradient_steps"]

logger = logging.getLogger(__name__)

_GROWS_BY_GRADIENT = ("rigl", "granet")
_DENSE_GRADIENT_EVERY_STEP = ("snfs", "srste")


def dense_gradient_steps(method: str, update_steps: Sequence[int], total_steps: int) -> list[int]:
    """0-based indices of the steps whose backward computed the dense weight gradient.

    Args:
        method: the sparse method name.
        update_steps: 1-based optimizer steps after which the topology changed.
        total_steps: steps in the run.

    Returns:
        Sorted step indices in ``[0, total_steps)``.
    """
    if method in _DENSE_GRADIENT_EVERY_STEP:
        return list(range(total_steps))
    if method in _GROWS_BY_GRADIENT:
        # The update after optimizer step s reads the gradient of step s, index s - 1.
        return sorted({s - 1 for s in update_steps if 1 <= s <= total_steps})
    return []


def run_flops(model: nn.Module, input_shape: Sequence[int], *, token_inputs: bool, masks: Mapping[str, Tensor],
              density_history: Sequence[tuple[int, Mapping[str, float]]], total_steps: int,
              dense_grad_steps: Sequence[int], batch_size: int) -> dict[str, Any] | None:
    """Inference and training FLOPs for summary.json, or None if they cannot be counted here.

    Args:
        model: the trained model (masks applied).
        input_shape: one sample's shape (no batch dimension).
        token_inputs: the inputs are int64 token ids.
        masks: final masks by parameter name.
        density_history: ``[(start_step, {name: density}), ...]`` from step 0.
        total_steps: optimizer steps of the run.
        dense_grad_steps: see :func:`dense_gradient_steps`.
        batch_size: training batch size.

    Returns:
        ``{"inference_dense", "inference_sparse", "inference_ratio", "training", "training_dense",
        "training_ratio", "dense_grad_steps", "layers"}`` (FLOPs per sample for inference, whole run for
        training; ``layers`` maps each weight to its ``{"inference_dense", "inference_sparse", "training",
        "training_dense"}``; ``dense_grad_steps`` lists the 0-based steps counted with a dense weight
        gradient), or None.
    """
    try:
        from sparsetrain.analysis import inference_flops, training_flops
    except ImportError:
        logger.info("sparsetrain.analysis is not available: no FLOPs in the summary")
        return None
    try:
        report = inference_flops(model, (1, *input_shape), masks or None,
                                 input_dtype=torch.long if token_inputs else None)
        training = training_flops(report.dense_by_layer(), density_history, total_steps,
                                  dense_grad_steps=dense_grad_steps, batch_size=batch_size)
    except Exception as exc:  # FLOPs are a nice-to-have: never lose a finished run over them
        logger.warning("FLOPs not counted: %s: %s", type(exc).__name__, exc)
        return None
    inference_rows = report.by_name()
    layers = {
        row.name: {"inference_dense": inference_rows[row.name].dense_flops,
                   "inference_sparse": inference_rows[row.name].sparse_flops,
                   "training": row.training_flops, "training_dense": row.dense_training_flops}
        for row in training.rows
    }
    return {
        "inference_dense": report.dense_total,
        "inference_sparse": report.sparse_total,
        "inference_ratio": report.sparse_ratio,
        "training": training.total,
        "training_dense": training.dense_total,
        "training_ratio": training.ratio,
        "dense_grad_steps": list(dense_grad_steps),
        "layers": layers,
    }
