"""Scores that rank weights for keeping, dropping or growing.

Each scorer maps the sparsified parameters to one score tensor per parameter (higher = more important). The
during-training methods use magnitude (drop), gradient (RigL/GraNet growth), momentum (SNFS growth) and random
(SET growth) scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["magnitude_scores", "gradient_scores", "random_scores"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def magnitude_scores(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``|w|`` per tensor."""
    return {name: p.detach().abs() for name, p in params.items()}


@torch.no_grad()
def gradient_scores(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``|dL/dw|`` of the current minibatch per tensor (zeros where a parameter has no gradient)."""
    if params and all(p.grad is None for p in params.values()):
        logger.warning("no sparsified parameter has a gradient: growth by |gradient| falls back to the lowest "
                       "indices; call sparsifier.step() after optimizer.step() and before optimizer.zero_grad()")
    return {
        name: p.grad.detach().abs() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
        for name, p in params.items()
    }


def random_scores(params: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Uniform random scores drawn on the CPU from ``generator`` (identical on every device and rank), tensor by
    tensor in the mapping's order (SET draws one tensor at a time, only for the tensors that grow)."""
    return {name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()}
