"""GMP: gradual magnitude pruning on the cubic schedule (Zhu & Gupta, *To prune, or not to prune*, 2017).

Every ``update_every`` optimizer steps between ``prune_start`` and ``prune_end`` the weights are pruned by
magnitude to ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_f - t0))^3``. Per layer (``distribution="uniform"``, the
original: every layer at ``s_t``; "er"/"erk" allocate ``s_t`` by those rules) or with one global threshold
(``distribution="global"``, GraNet's baseline). No regrowth.

Deviation: the step ``prune_end`` is always an update step, even off the ΔT grid, so the final sparsity is
reached exactly at ``prune_end``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..distributions import allocate, check_distribution
from ..masks import random_masks
from ..schedules import UpdateCadence, cubic_sparsity, resolve_step
from ..scores import magnitude_scores
from ..sparsifier import Sparsifier, check_sparsity
from ..updates import prune_by_magnitude

__all__ = ["GMP"]


class GMP(Sparsifier):
    """Gradual magnitude pruning (Zhu & Gupta 2017), layer-wise or global.

    Args:
        model, optimizer: see :class:`~sparsetrain.sparsifier.Sparsifier`.
        sparsity: final sparsity ``s_f``.
        total_steps: optimizer steps in the run.
        initial_sparsity: ``s_i``; above 0 the run starts from a random mask (``init_distribution``).
        prune_start / prune_end: ``t0`` / ``t_f``, as steps (int) or fractions of ``total_steps`` (float);
            defaults 0 and 0.5 (GraNet's CIFAR recipe: pruning over epochs 0-80 of 160).
        update_every: ΔT (default 1000, GraNet's CIFAR recipe).
        distribution: "uniform" (default, Zhu & Gupta), "er", "erk" or "global".
        init_distribution: allocation of the random initial mask when ``initial_sparsity > 0`` (default "erk").
        **kwargs: common options of :class:`~sparsetrain.sparsifier.Sparsifier`.
    """

    method = "gmp"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: float,
        total_steps: int,
        initial_sparsity: float = 0.0,
        prune_start: int | float = 0.0,
        prune_end: int | float = 0.5,
        update_every: int = 1000,
        distribution: str = "uniform",
        init_distribution: str = "erk",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, total_steps=total_steps, distribution=distribution,
                         update_every=update_every, **kwargs)
        self._setup_pruning(initial_sparsity, prune_start, prune_end, init_distribution)
        self._start()

    # -- the pruning schedule, shared with GraNet -----------------------------------------------------------
    def _setup_pruning(self, initial_sparsity: float, prune_start: int | float, prune_end: int | float,
                       init_distribution: str) -> None:
        self.initial_sparsity = check_sparsity("initial_sparsity", initial_sparsity)
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity={initial_sparsity!r} must not exceed sparsity={self.sparsity!r}")
        self.prune_start = resolve_step(prune_start, self.total_steps, "prune_start")
        self.prune_end = resolve_step(prune_end, self.total_steps, "prune_end")
        if self.prune_end < self.prune_start:
            raise ValueError(f"prune_end={prune_end!r} ({self.prune_end} steps) must not come before "
                             f"prune_start={prune_start!r} ({self.prune_start} steps)")
        if self.prune_end == 0 and self.initial_sparsity < self.sparsity:
            raise ValueError(f"prune_end={prune_end!r} is step 0, before the first optimizer step: pruning must "
                             "end at a step >= 1 (or set initial_sparsity=sparsity)")
        self.init_distribution = check_distribution(init_distribution, "init_distribution")
        self.prune_cadence = UpdateCadence(self.update_every, self.prune_start, self.prune_end, include_end=True)
        self.config.update(initial_sparsity=self.initial_sparsity, prune_start=prune_start, prune_end=prune_end,
                           init_distribution=self.init_distribution)

    def initial_masks(self) -> dict[str, Tensor]:
        if self.initial_sparsity == 0.0:
            return super().initial_masks()
        # Pinned tensors start where prune() starts them, min(s_i, their own target), and reach it by magnitude.
        start = {name: min(self.initial_sparsity, final) for name, final in self.fixed.items()}
        return random_masks(self.params, self.initial_sparsity, self.init_distribution, self.generator, fixed=start)

    def target_sparsity(self, step: int) -> float:
        """``s_t`` of the cubic schedule at ``step``."""
        return cubic_sparsity(step, self.initial_sparsity, self.sparsity, self.prune_start, self.prune_end)

    def is_update_step(self, step: int) -> bool:
        return self.prune_cadence(step)

    def update(self, step: int) -> dict[str, Tensor]:
        self.prune(step)
        return {}

    def prune(self, step: int) -> None:
        """Prune by magnitude to the schedule's sparsity at ``step`` (pinned tensors follow their own target)."""
        s_t = self.target_sparsity(step)
        span = self.sparsity - self.initial_sparsity
        progress = (s_t - self.initial_sparsity) / span if span > 0 else 1.0
        pinned = {}
        for name, final in self.fixed.items():
            start = min(self.initial_sparsity, final)
            pinned[name] = start + (final - start) * progress
        magnitudes = magnitude_scores(self.params)
        if self.distribution == "global":
            free = [n for n in self.params if n not in pinned]
            counts = {n: round((1.0 - s) * self.params[n].numel()) for n, s in pinned.items()}
            global_count = round((1.0 - s_t) * sum(self.params[n].numel() for n in free))
            self.masks = prune_by_magnitude(magnitudes, self.masks, counts, global_count=global_count,
                                            global_names=free)
        else:
            shapes = {n: tuple(p.shape) for n, p in self.params.items()}
            counts = allocate(shapes, s_t, self.distribution, fixed=pinned)
            self.masks = prune_by_magnitude(magnitudes, self.masks, counts)
