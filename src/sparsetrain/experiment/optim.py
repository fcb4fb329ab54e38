"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules counted in optimizer steps.

The schedule is a pure function of the step (:func:`lr_factor`) wrapped in a ``LambdaLR``: linear warm-up,
then constant, multistep (×``gamma`` at fractions of the run) or cosine decay to 0. ``LambdaLR``'s state dict
holds only numbers, so it goes into a weights-only checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(config: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over all of ``model``'s parameters.

    Weight decay applies to every parameter, as in GraNet's and RigL's recipes.

    Args:
        config: the optim section.
        model: the model (already on its device).

    Returns:
        A ``torch.optim`` optimizer.
    """
    params = model.parameters()
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    raise ValueError(f"optim.name={config.name!r} is not allowed; choose one of sgd, adam, adamw")


def lr_factor(step: int, total_steps: int, *, warmup_steps: int = 0, schedule: str = "constant",
              milestones: Sequence[float] = (), gamma: float = 0.1) -> float:
    """The multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Args:
        step: 0-based index of the optimizer step about to run.
        total_steps: steps in the run.
        warmup_steps: linear warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps.
        schedule: "constant", "multistep" (×``gamma`` from each milestone on) or "cosine" (to 0 at the end,
            over the steps after warm-up).
        milestones: fractions of ``total_steps`` (multistep).
        gamma: multistep factor.

    Returns:
        The factor.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        passed = sum(1 for m in milestones if step >= round(m * total_steps))
        return gamma ** passed
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    raise ValueError(f"schedule={schedule!r} is not allowed; choose one of constant, multistep, cosine")


def build_scheduler(config: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call its ``step()`` once per optimizer step.

    Args:
        config: the optim section.
        optimizer: the optimizer.
        total_steps: steps in the run.
        steps_per_epoch: to convert ``warmup_epochs`` to steps.

    Returns:
        The scheduler.
    """
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    schedule, milestones, gamma = config.lr_schedule, tuple(config.milestones), config.gamma

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps=warmup, schedule=schedule, milestones=milestones,
                         gamma=gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
