"""Scores that rank weights for keeping, dropping or growing.

Each scorer maps the sparsified parameters to one score tensor per parameter (higher = more important). The
during-training methods use magnitude (drop), gradient (RigL/GraNet growth), momentum (SNFS growth) and random
(SET growth) scores.

A method names its growth score as a :data:`Growth`: ``"gradient"``, ``"random"`` or a function of the tensor's
name; the storage backend turns it into scores where the weights live (:func:`growth_scores` for dense tensors,
row blocks for sparse layers, see :mod:`sparsetrain.sparse.backend`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Union

import torch
from torch import Tensor

__all__ = ["magnitude_scores", "gradient_scores", "random_scores", "Growth", "GROWTH_KINDS", "growth_scores"]

#: How a method ranks inactive positions for growth: by ``|dense gradient|`` of the current minibatch, uniformly at
#: random (from the sparsifier's generator), or by its own dense score of a tensor, given its name (higher grows
#: first; e.g. SNFS's momentum magnitude).
Growth = Union[str, Callable[[str], Tensor]]
GROWTH_KINDS = ("gradient", "random")

logger = logging.getLogger(__name__)


@torch.no_grad()
def magnitude_scores(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``|w|`` per tensor."""
    return {name: p.detach().abs() for name, p in params.items()}


def warn_no_gradient() -> None:
    """Growth by |gradient| without any gradient: say how the loop is probably wrong."""
    logger.warning("no sparsified parameter has a gradient: growth by |gradient| falls back to the lowest "
                   "indices; call sparsifier.step() after optimizer.step() and before optimizer.zero_grad()")


@torch.no_grad()
def gradient_scores(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``|dL/dw|`` of the current minibatch per tensor (zeros where a parameter has no gradient)."""
    if params and all(p.grad is None for p in params.values()):
        warn_no_gradient()
    return {name: _gradient_magnitude(p) for name, p in params.items()}


def _gradient_magnitude(param: Tensor) -> Tensor:
    return param.grad.detach().abs() if param.grad is not None else torch.zeros_like(param, dtype=torch.float32)


def random_scores(params: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Uniform random scores drawn on the CPU from ``generator`` (identical on every device and rank), tensor by
    tensor in the mapping's order (SET draws one tensor at a time, only for the tensors that grow)."""
    return {name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()}


def growth_scores(params: Mapping[str, Tensor], growth: Growth, generator: torch.Generator, *,
                  warn: bool = True) -> Callable[[str], Tensor]:
    """The growth score of each dense tensor, drawn when asked for (only tensors that grow are scored).

    Args:
        params: name -> dense parameter.
        growth: a :data:`Growth`.
        generator: the generator of random growth.
        warn: warn when growth is by gradient and no parameter has one.

    Returns:
        ``scores(name)``: a tensor shaped like ``params[name]``, higher = grows first.
    """
    if growth == "gradient":
        if warn and params and all(p.grad is None for p in params.values()):
            warn_no_gradient()
        return lambda name: _gradient_magnitude(params[name])
    if growth == "random":
        return lambda name: random_scores({name: params[name]}, generator)[name]
    if callable(growth):
        return growth
    raise ValueError(f"growth={growth!r} is not allowed: use one of {', '.join(map(repr, GROWTH_KINDS))} or a "
                     "function of the tensor's name")
