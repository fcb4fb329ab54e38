"""Minibatches and model outputs for the code that runs a model outside the training loop.

* :func:`collect_batches`: the data-driven scores (SNIP, GraSP) take ``batches`` batches from a loader, once.
  Scores accumulate over several ordinary minibatches, so no single forward pass ever sees more than one batch;
  the batches are collected once (a shuffling ``DataLoader`` would give different batches on a second pass, and
  GraSP needs two passes over the same batches).
* :func:`cycle_batches`: batches forever, for a search that runs a fixed number of steps (lottery jackpots).
* :func:`model_output`: the output tensor of any model (a tensor, a tuple starting with one, or ``.logits``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["collect_batches", "cycle_batches", "model_output"]

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


def _as_batch(item: Any, index: int) -> Batch:
    if isinstance(item, dict):
        if "input" in item and "target" in item:
            return item["input"], item["target"]
        raise TypeError(f"data: batch {index} is a dict with keys {sorted(item)}; expected 'input' and 'target'")
    if isinstance(item, (tuple, list)) and len(item) >= 2 and all(isinstance(t, Tensor) for t in item[:2]):
        return item[0], item[1]
    raise TypeError(f"data: batch {index} is a {type(item).__name__}; expected (inputs, targets) tensors")


def collect_batches(data: Any, batches: int, device: torch.device | str | None = None) -> list[Batch]:
    """The first ``batches`` ``(inputs, targets)`` batches of ``data``, moved to ``device``.

    Args:
        data: a ``DataLoader`` or any iterable of ``(inputs, targets, ...)`` batches (dicts with "input" and
            "target" keys work too), or one ``(inputs, targets)`` pair of tensors (then ``batches`` must be 1).
        batches: how many batches to take (>= 1).
        device: where to move them (None: leave them where they are).

    Returns:
        A list of ``(inputs, targets)``; shorter than ``batches`` (with a warning) if ``data`` runs out first.

    Raises:
        ValueError: ``data`` is None or yields no batch, or ``batches`` is not a positive int.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches={batches!r} is not allowed: it must be a positive int")
    if data is None:
        raise ValueError("data=None: this method needs minibatches (a DataLoader or an (inputs, targets) pair)")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        if batches != 1:
            raise ValueError(f"batches={batches}: data is a single (inputs, targets) pair; pass a DataLoader to "
                             "accumulate scores over several batches")
        taken = [(data[0], data[1])]
    else:
        if not isinstance(data, Iterable):
            raise TypeError(f"data must be a DataLoader, an iterable of batches or an (inputs, targets) pair, "
                            f"got {type(data).__name__}")
        taken = []
        for index, item in enumerate(data):
            if index == batches:
                break
            taken.append(_as_batch(item, index))
        if not taken:
            raise ValueError("data yielded no batch")
        if len(taken) < batches:
            message = f"data ran out after {len(taken)} of batches={batches} batches; scoring on those"
            logger.warning(message)
            warnings.warn(message, stacklevel=3)
    if device is not None:
        taken = [(x.to(device), y.to(device)) for x, y in taken]
    return taken


def cycle_batches(data: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``data`` forever; each pass re-iterates it (so a shuffling loader reshuffles).

    Raises:
        ValueError: ``data`` yields no batch.
    """
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("data yielded no batch")


def model_output(model: nn.Module, inputs: Tensor) -> Tensor:
    """The model's output tensor (the first element if it returns a tuple, ``.logits`` if it has one)."""
    out = model(inputs)
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"the model returned a {type(out).__name__}; expected a tensor, a tuple starting with one, "
                    "or an object with .logits")
