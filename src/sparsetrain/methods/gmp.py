"""GMP: gradual magnitude pruning on the cubic schedule (Zhu & Gupta, *To prune, or not to prune*, 2017).

Every ``update_every`` optimizer steps between ``prune_start`` and ``prune_end`` the weights are pruned by
magnitude to ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_f - t0))^3``. Per layer (``scope="layer"``, the original,
with ``distribution="uniform"``: every layer at ``s_t``; "er"/"erk" allocate ``s_t`` by those rules) or with one
global threshold (``scope="global"``, GraNet's baseline). No regrowth.

Deviation: the step ``prune_end`` is always an update step, even off the ΔT grid, so the final sparsity is
reached exactly at ``prune_end``.
"""

from __future__ import annotations

from torch import Tensor

from ..distributions import DISTRIBUTIONS, check_distribution
from ..masks import sparsity_report
from ..options import Option
from ..schedules import UpdateCadence, check_point, cubic_sparsity, resolve_step
from ..selection import budget
from ..sparsifier import Sparsifier
from ..validation import check_sparsity

__all__ = ["GMP"]

_ZHU_GUPTA = "Zhu & Gupta 2017"
_POINT = "a step (int >= 0) or a fraction of total_steps (float in [0, 1])"


def _check_init_distribution(name: str, value: object) -> str:
    return check_distribution(value, name, instead=None)  # a random initial mask is drawn per layer


class GMP(Sparsifier):
    """Gradual magnitude pruning (Zhu & Gupta 2017), per layer or global.

    Options (besides the base options of :class:`~sparsetrain.sparsifier.Sparsifier`; defaults: ``update_every``
    1000 and ``prune_end`` 0.5, GraNet's CIFAR recipe: pruning over epochs 0-80 of 160; ``distribution``
    "uniform" and ``scope`` "layer", Zhu & Gupta):
        initial_sparsity: ``s_i``; above 0 the run starts from a random mask (``init_distribution``). With
            ``masks=`` it is the masks' sparsity, and ``sparsity`` is the target pruned towards.
        prune_start / prune_end: ``t0`` / ``t_f``, as steps (int) or fractions of ``total_steps`` (float).
        init_distribution: allocation of the random initial mask when ``initial_sparsity > 0``.
    """

    method = "gmp"
    options = (
        Option("initial_sparsity", 0.0, "s_i, the sparsity at prune_start (above 0: a random initial mask from "
               "init_distribution; with masks: theirs)", "float", check_sparsity, "a number in [0, 1)",
               reference=_ZHU_GUPTA),
        Option("prune_start", 0.0, "t0, the first pruning step", "int or float", check_point, _POINT,
               reference=_ZHU_GUPTA),
        Option("prune_end", 0.5, "t_f, the step where the final sparsity is reached", "int or float", check_point,
               _POINT, reference=_ZHU_GUPTA),
        Option("init_distribution", "erk", "allocation of the random initial mask when initial_sparsity > 0",
               "str", _check_init_distribution, ", ".join(DISTRIBUTIONS)),
    )
    option_defaults = {"update_every": 1000, "distribution": "uniform"}

    def setup(self) -> None:
        if self.inputs.get("masks") is not None:
            if "initial_sparsity" in self.given:
                raise ValueError("initial_sparsity is set by masks=... (their sparsity): leave it out")
            self.initial_sparsity = self.config["initial_sparsity"] = sparsity_report(self.inputs["masks"]).sparsity
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity!r} must not exceed sparsity={self.sparsity!r}")
        prune_start, prune_end = self.prune_start, self.prune_end
        self.prune_start = resolve_step(prune_start, self.total_steps, "prune_start")
        self.prune_end = resolve_step(prune_end, self.total_steps, "prune_end")
        if self.prune_end < self.prune_start:
            raise ValueError(f"prune_end={prune_end!r} ({self.prune_end} steps) must not come before "
                             f"prune_start={prune_start!r} ({self.prune_start} steps)")
        if self.prune_end == 0 and self.initial_sparsity < self.sparsity:
            raise ValueError(f"prune_end={prune_end!r} is step 0, before the first optimizer step: pruning must "
                             "end at a step >= 1 (or set initial_sparsity=sparsity)")
        self.prune_cadence = UpdateCadence(self.update_every, self.prune_start, self.prune_end, include_end=True)

    def initial_masks(self) -> dict[str, Tensor]:
        if self.initial_sparsity == 0.0:
            return super().initial_masks()
        # Pinned tensors start where prune() starts them, min(s_i, their own target), and reach it by magnitude.
        start = {name: min(self.initial_sparsity, final) for name, final in self.fixed.items()}
        return self.random_masks(self.initial_sparsity, self.init_distribution, scope="layer", fixed=start)

    def target_sparsity(self, step: int) -> float:
        """``s_t`` of the cubic schedule at ``step``."""
        return cubic_sparsity(step, self.initial_sparsity, self.sparsity, self.prune_start, self.prune_end)

    def is_update_step(self, step: int) -> bool:
        return self.prune_cadence(step)

    def needs_dense_gradient(self, step: int) -> bool:
        return False

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
        self.prune_by_magnitude(budget(self.params, s_t, distribution=self.distribution, scope=self.scope,
                                       fixed=pinned))
