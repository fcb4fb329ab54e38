"""The training function a lottery run calls at every level, and a default one built on a plain loop.

A train function has the signature of :class:`TrainFn`: it trains ``model`` (already rewound and masked) with
the pruned weights held at zero, for the run's schedule from ``start_step`` on, and returns a metrics dict. It
builds a new optimizer and LR schedule at every call, so both restart every round (Frankle & Carbin 2019;
Frankle et al. 2020 save only the weights at the rewind step). ``on_step(step, model)`` must be called after
every optimizer step: the runner uses it at level 0 to save the rewind point at step k.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..init_pruning.data import collect_batches
from ..init_pruning.snip import model_output
from ..methods.static import Static
from ..validation import check_choice, check_int, check_number, check_positive_int

__all__ = ["TrainFn", "make_train_fn", "evaluate", "OPTIMIZERS", "LR_SCHEDULES"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")


class TrainFn(Protocol):
    """``train_fn(model, masks, level_dir, *, start_step, on_step) -> metrics``."""

    def __call__(
        self,
        model: nn.Module,
        masks: Mapping[str, Tensor],
        level_dir: Path,
        *,
        start_step: int = 0,
        on_step: Callable[[int, nn.Module], None] | None = None,
    ) -> dict[str, Any]: ...


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
             device: torch.device | str | None = None) -> dict[str, float]:
    """Mean loss and accuracy (argmax over the last dim) of ``model`` in eval mode over every batch of ``data``."""
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    batches = collect_batches(data, 1) if isinstance(data, (tuple, list)) and len(data) == 2 else data
    for inputs, targets, *_ in batches:
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        out = model_output(model, inputs)
        n = int(targets.numel())
        total_loss += float(loss_fn(out.reshape(n, -1), targets.reshape(-1))) * n
        correct += int((out.reshape(n, -1).argmax(-1) == targets.reshape(-1)).sum())
        count += n
    model.train(was_training)
    return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}


def _cycle(data: Any) -> Iterator[Any]:
    """Batches of ``data`` forever; each pass re-iterates it (so a shuffling loader reshuffles)."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batch")


def make_train_fn(
    train_data: Any,
    eval_data: Any,
    *,
    steps: int,
    lr: float = 0.1,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
) -> TrainFn:
    """A default train function: a plain loop with a fresh optimizer and :class:`~sparsetrain.Static` masks.

    Args:
        train_data: iterable of ``(inputs, targets)`` batches (re-iterated each epoch).
        eval_data: batches for the final evaluation (``accuracy`` and ``loss`` in the metrics).
        steps: the run's total optimizer steps ``T``; a round that starts at ``start_step = k`` trains the
            remaining ``T - k`` steps, with the LR schedule evaluated at the absolute step.
        lr: peak learning rate.
        optimizer: "sgd" (with ``momentum``), "adam" or "adamw".
        momentum: SGD momentum.
        weight_decay: the optimizer's weight decay (decoupled for AdamW).
        lr_schedule: "constant" or "cosine" (to 0 at step ``steps``), after ``warmup_steps`` linear warm-up.
        warmup_steps: linear warm-up steps.
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy.
        device: where to train (None: where the model is).

    Returns:
        A :class:`TrainFn` whose metrics are ``accuracy``, ``loss`` (on ``eval_data``), ``train_loss`` (mean of
        the last 10% of steps) and ``steps`` (steps trained in this call).
    """
    check_positive_int("steps", steps)
    if check_int("warmup_steps", warmup_steps, 0) >= steps:
        raise ValueError(f"warmup_steps={warmup_steps!r} is not allowed: an int in [0, steps)")
    check_number("lr", lr, "(0, inf)")
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        if lr_schedule == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (steps - warmup_steps)))
        return lr

    def train(model: nn.Module, masks: Mapping[str, Tensor], level_dir: Path, *, start_step: int = 0,
              on_step: Callable[[int, nn.Module], None] | None = None) -> dict[str, Any]:
        if device is not None:
            model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum,
                                                         weight_decay=weight_decay)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sparsifier = Static(model, opt, masks=masks, total_steps=max(steps, 1))
        model.train()
        losses: list[float] = []
        batches = _cycle(train_data)
        where = next(model.parameters()).device
        for step in range(start_step, steps):
            inputs, targets, *_ = next(batches)
            inputs, targets = inputs.to(where), targets.to(where)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = loss_fn(model_output(model, inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sparsifier.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, model)
        sparsifier.export()
        tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
        metrics = evaluate(model, eval_data, loss_fn, where)
        metrics.update(train_loss=sum(tail) / len(tail), steps=steps - start_step)
        logger.info("%s/%s: accuracy %.4f after %d steps", level_dir.parent.name, level_dir.name, metrics["accuracy"],
                    metrics["steps"])
        return metrics

    return train
