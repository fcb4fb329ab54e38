"""GMP: gradual magnitude pruning on the cubic schedule (Zhu & Gupta, *To prune, or not to prune*, 2017).

Every ``update_every`` optimizer steps between ``prune_start`` and ``prune_end`` the weights are pruned by
magnitude to ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_f - t0))^3``. Per layer (``scope="layer"``, the original,
with ``distribution="uniform"``: every layer at ``s_t``; "er"/"erk" allocate ``s_t`` by those rules) or with one
global threshold (``scope="global"``, GraNet's baseline). No regrowth.

Deviation: the step ``prune_end`` is always an update step, even off the ΔT grid, so the final sparsity is
reached exactly at ``prune_end``.

**Under an N:M pattern** (``pattern="2:4"``) global or per-layer magnitude pruning to a cubic schedule of
sparsities cannot hold: a patterned tensor's density is N/M, and an intermediate density must itself be a pattern.
The schedule is then the *sparse structure decay* of Kao et al. 2022 (*Training Recipe for N:M Structured Sparsity
with Decaying Pruning Mask*; the stages follow the authors' code: dense, (M-1):M, then M/2, M/4, ... down to N, so
2:4 goes dense -> 3:4 -> 2:4 and 1:8 goes dense -> 7:8 -> 4:8 -> 2:8 -> 1:8), each stage an equal share of the
window ``[prune_start, prune_end]`` (:class:`~sparsetrain.schedules.StructureDecay`): at the start of a stage every
group keeps its N largest magnitudes among its survivors. ``initial_sparsity`` must then be 0 (dense start) or the
sparsity of one stage (a random mask at that stage, e.g. 0.5 for 2:4: no pruning left, GraNet-ST's regrowth only).
Deviation from Kao et al.: their mask is recomputed from the dense weights at every step (pruned weights may come
back, as in SR-STE); here, as in GMP, a pruned weight stays pruned. Their *pruning mask decay* (pruned weights
multiplied by a factor decaying to 0) is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..distributions import DISTRIBUTIONS, check_distribution
from ..masks import sparsity_report
from ..nm import NMPattern
from ..options import Option
from ..schedules import StructureDecay, UpdateCadence, check_point, cubic_sparsity, decay_stages, resolve_step
from ..scores import magnitude_scores
from ..selection import budget, keep_top
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

    With ``pattern`` the schedule is Kao et al.'s sparse structure decay (module docstring).
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

    @classmethod
    def starts_sparse(cls, options: Mapping[str, Any]) -> bool:
        """Sparse only with ``initial_sparsity > 0`` (GraNet-ST, or GMP from a random mask); a dense start has
        nothing to rescale."""
        initial = options.get("initial_sparsity", 0.0)
        return super().starts_sparse(options) and isinstance(initial, (int, float)) and initial > 0

    def setup(self) -> None:
        if self.inputs.get("masks") is not None:
            if "initial_sparsity" in self.given:
                raise ValueError("initial_sparsity is set by masks=... (their sparsity): leave it out")
            masks = self.inputs["masks"]
            given = self.pattern.sparsity if self.pattern is not None else sparsity_report(masks).sparsity
            self.initial_sparsity = self.config["initial_sparsity"] = given
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
        self.decay: StructureDecay | None = None
        if self.pattern is not None:
            self.decay = self.prune_cadence = self._structure_decay(self.pattern)

    def _structure_decay(self, pattern: NMPattern) -> StructureDecay:
        """The stages from ``initial_sparsity`` to the pattern (refusing a start that is not one of them)."""
        stages = decay_stages(pattern.n, pattern.m)
        if "init_distribution" in self.given:
            raise ValueError(f"{type(self).__name__}: init_distribution={self.init_distribution!r} is not allowed "
                             f"with pattern='{pattern}': a random start keeps N of every M")
        starts = {0.0: pattern.m, **{1.0 - n / pattern.m: n for n in stages}}
        initial = next((n for s, n in starts.items() if abs(s - self.initial_sparsity) < 1e-9), None)
        if initial is None:
            allowed = ", ".join(f"{s:g}" for s in starts)
            raise ValueError(f"{type(self).__name__}: initial_sparsity={self.initial_sparsity!r} is not allowed with "
                             f"pattern='{pattern}': the structure decay starts dense or at a stage; choose one of "
                             f"{allowed}")
        return StructureDecay(pattern.m, initial, tuple(n for n in stages if n < initial), self.prune_start,
                              self.prune_end)

    def stage_pattern(self, step: int) -> NMPattern | None:
        """Under a pattern: the N:M stage in force at ``step`` (None while dense, and without a pattern)."""
        if self.decay is None:
            return None
        n = self.decay.n_at(step)
        return None if n == self.decay.m else NMPattern(n, self.decay.m)

    def initial_masks(self) -> dict[str, Tensor]:
        if self.decay is not None:
            m, initial = self.decay.m, self.decay.initial
            masks = super().initial_masks() if initial == m else self.random_masks(self.sparsity,
                                                                                   pattern=NMPattern(initial, m))
            stage = self.stage_pattern(0)  # a stage that starts at step 0 (a window of a few steps) prunes now
            if stage is not None and stage.n < initial:
                masks = keep_top(magnitude_scores(self.params), self.nm_budget(stage), eligible=masks)
            return masks
        if self.initial_sparsity == 0.0:
            return super().initial_masks()
        # Pinned tensors start where prune() starts them, min(s_i, their own target), and reach it by magnitude.
        start = {name: min(self.initial_sparsity, final) for name, final in self.fixed.items()}
        return self.random_masks(self.initial_sparsity, self.init_distribution, scope="layer", fixed=start)

    def target_sparsity(self, step: int) -> float:
        """``s_t`` of the cubic schedule at ``step`` (under a pattern: ``1 - N/M`` of the stage in force)."""
        if self.decay is not None:
            return 1.0 - self.decay.n_at(step) / self.decay.m
        return cubic_sparsity(step, self.initial_sparsity, self.sparsity, self.prune_start, self.prune_end)

    def schedule_at(self, step: int) -> dict[str, float | None]:
        return {"drop_fraction": None, "target_sparsity": self.target_sparsity(step)}

    def is_update_step(self, step: int) -> bool:
        return self.prune_cadence(step)

    def needs_dense_gradient(self, step: int) -> bool:
        return False

    def update(self, step: int) -> dict[str, Tensor]:
        self.prune(step)
        return {}

    def prune(self, step: int) -> None:
        """Prune by magnitude to the schedule's sparsity at ``step`` (pinned tensors follow their own target);
        under a pattern, every group to the N of the stage in force."""
        if self.decay is not None:
            stage = self.stage_pattern(step)
            if stage is not None:
                self.prune_by_magnitude(self.nm_budget(stage))
            return
        s_t = self.target_sparsity(step)
        span = self.sparsity - self.initial_sparsity
        progress = (s_t - self.initial_sparsity) / span if span > 0 else 1.0
        pinned = {}
        for name, final in self.fixed.items():
            start = min(self.initial_sparsity, final)
            pinned[name] = start + (final - start) * progress
        self.prune_by_magnitude(budget(self.params, s_t, distribution=self.distribution, scope=self.scope,
                                       fixed=pinned))
