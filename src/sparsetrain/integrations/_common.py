"""What both framework adapters share: choosing the method, and building a sparsifier that resumes a state.

Frameworks restore the model weights and the optimizer state *before* a callback gets to build its
sparsifier, and building one draws and applies fresh initial masks (zeroing weights and optimizer state
outside them). :func:`build_sparsifier` therefore keeps a copy of the sparsified weights and their optimizer
state when it resumes, loads the saved masks, and puts the copies back under the saved masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..masks import select_prunable
from ..optim_state import state_tensors
from ..sparsifier import Sparsifier

__all__ = ["resolve_method", "adapter_method", "unwrap_optimizer", "check_total_steps", "build_sparsifier",
           "weight_summaries"]


def resolve_method(method: str | type[Sparsifier]) -> type[Sparsifier]:
    """A method name of ``sparsetrain.METHODS`` ("granet", "rigl", ...) or a Sparsifier subclass -> the class.

    Raises:
        ValueError / TypeError: unknown name, or not a Sparsifier subclass.
    """
    from .. import METHODS

    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(map(repr, METHODS))} "
                             "or pass a Sparsifier subclass")
        return METHODS[method]
    if isinstance(method, type) and issubclass(method, Sparsifier):
        return method
    raise TypeError(f"method must be a method name or a Sparsifier subclass, got {method!r}")


def adapter_method(method: str | type[Sparsifier], total_steps: int | None,
                   options: Mapping[str, Any]) -> type[Sparsifier]:
    """The method class of an adapter, once the adapter's own arguments are checked.

    Args:
        method: a name of ``sparsetrain.METHODS`` or a Sparsifier subclass (:func:`resolve_method`).
        total_steps: the ``total_steps`` argument, or None to find it from the framework later.
        options: the method's keyword arguments; ``sparsity`` must be among them.

    Raises:
        ValueError / TypeError: an unknown method, no ``sparsity``, or a ``total_steps`` that is not > 0.
    """
    cls = resolve_method(method)
    if "sparsity" not in options:
        raise ValueError("sparsity=... is required (the final sparsity in [0, 1))")
    if total_steps is not None:
        check_total_steps(total_steps, "the total_steps argument")
    return cls


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The plain ``torch.optim.Optimizer`` inside framework wrappers (accelerate's, Lightning's)."""
    seen = 0
    while not type(optimizer).__module__.startswith("torch.") and isinstance(
        getattr(optimizer, "optimizer", None), torch.optim.Optimizer
    ) and seen < 5:
        optimizer = optimizer.optimizer
        seen += 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer (or a wrapper of one), got {type(optimizer).__name__}")
    return optimizer


def check_total_steps(value: Any, source: str) -> int:
    """``total_steps`` found from the framework must be a finite positive number of optimizer steps."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) <= 0:
        raise ValueError(f"total_steps could not be found from {source} (got {value!r}): set max_steps / "
                         "max_epochs in the framework or pass total_steps=... to the callback")
    return int(value)


def build_sparsifier(
    method: type[Sparsifier],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    options: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
) -> Sparsifier:
    """Build ``method`` on ``model``/``optimizer``; with ``state``, resume it without losing restored weights.

    Args:
        method: the Sparsifier class.
        model: the model (already holding restored weights when resuming).
        optimizer: its optimizer (already holding restored state when resuming).
        total_steps: optimizer steps in the run.
        options: keyword arguments for the method.
        state: a ``Sparsifier.state_dict()`` to resume from, or None for a fresh start.

    Returns:
        The sparsifier, hooked to the optimizer.
    """
    if state is None:
        return method(model, optimizer, total_steps=total_steps, **options)
    include, exclude = options.get("include"), options.get("exclude")
    params = select_prunable(model, include=include, exclude=exclude)
    with torch.no_grad():
        weights = {name: p.detach().clone() for name, p in params.items()}
        moments = {name: [t.detach().clone() for t in state_tensors(optimizer, p)] for name, p in params.items()}
    sparsifier = method(model, optimizer, total_steps=total_steps, **options)
    sparsifier.load_state_dict(state)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
            for buffer, saved in zip(state_tensors(optimizer, param), moments[name], strict=True):
                buffer.copy_(saved)
    sparsifier.apply_masks()
    return sparsifier


def weight_summaries(sparsifier: Sparsifier) -> dict[str, float]:
    """The histograms of the active weights' magnitudes per tensor, as scalars (``weights/<name>/median``, ...):
    what :mod:`sparsetrain.experiment.tracking` logs per epoch, for framework loggers that only take scalars."""
    from ..experiment.tracking import active_magnitudes, histogram_scalars

    values: dict[str, float] = {}
    for tag, magnitudes in active_magnitudes(sparsifier.params, sparsifier.masks).items():
        values.update(histogram_scalars(tag, magnitudes))
    return values
