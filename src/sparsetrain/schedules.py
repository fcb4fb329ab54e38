"""Schedules: pure functions of the optimizer step.

Every schedule answers one of two questions for a step ``t`` (the number of optimizer steps taken so far):
"is ``t`` an update step?" and "what value (sparsity, drop fraction) holds at ``t``?". They hold no state, so
resuming a run is a matter of restoring ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["cubic_sparsity", "cosine_decay", "UpdateCadence", "StructureDecay", "decay_stages", "check_point",
           "resolve_step"]


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta (2017) gradual pruning schedule.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_f - t0)) ** 3`` for ``t0 <= t <= t_f``; ``s_i`` before ``t0``
    and ``s_f`` after ``t_f``. Callers evaluate it on the update grid (see :class:`UpdateCadence`).

    Args:
        step: the step ``t``.
        initial: ``s_i``; final: ``s_f``; start: ``t0``; end: ``t_f`` (``end > start``, or ``end == start``
            for a one-shot schedule).
    """
    if step <= start:
        return initial if step < start or end > start else final
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def cosine_decay(step: int, initial: float, final: float, total: int) -> float:
    """Cosine decay from ``initial`` at step 0 to ``final`` at ``total`` (constant afterwards).

    RigL's drop fraction is ``f(t) = alpha/2 * (1 + cos(pi * t / T_end))``, i.e. ``initial = alpha`` and
    ``final = 0``; GraNet's official code decays 0.5 to 0.005 over the whole run.
    """
    if total <= 0 or step >= total:
        return final
    return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * step / total))


@dataclass(frozen=True)
class UpdateCadence:
    """Every ``every`` steps after ``start`` up to and including ``end`` (and ``end`` itself if ``include_end``).

    Update steps are ``start + k * every`` for ``k >= 1`` with the step ``<= end``. With ``include_end`` the
    step ``end`` is an update step even when it is off the grid, so a pruning schedule reaches its final
    sparsity exactly at ``end``.
    """

    every: int
    start: int = 0
    end: int | None = None
    include_end: bool = False

    def __call__(self, step: int) -> bool:
        if self.include_end and step == self.end:
            return True  # also when end == start (one-shot), which the grid below never reaches
        if step <= self.start:
            return False
        if self.end is not None and step > self.end:
            return False
        return (step - self.start) % self.every == 0


def decay_stages(n: int, m: int) -> tuple[int, ...]:
    """The N of each stage of a sparse structure decay from dense to N:M: ``M-1``, then ``M/2, M/4, ...`` while
    above ``n``, then ``n`` (Kao et al. 2022; e.g. 1:16 gives 15, 8, 4, 2, 1; 2:4 gives 3, 2; 3:8 gives 7, 4, 3).

    Args:
        n / m: the target pattern's N and M (``1 <= n < m``).

    Returns:
        The strictly decreasing N of every stage, ending at ``n``.
    """
    stages = [m - 1]
    half = m // 2
    while half > n:
        if half < stages[-1]:
            stages.append(half)
        half //= 2
    if stages[-1] != n:
        stages.append(n)
    return tuple(stages)


@dataclass(frozen=True)
class StructureDecay:
    """Sparse structure decay (Kao et al. 2022, *Training Recipe for N:M Structured Sparsity with Decaying Pruning
    Mask*): the pattern goes from dense to N:M through sparser and sparser N:M stages, each for an equal share
    of the pruning window.

    Stage ``k`` (1-based, of ``K = len(ns)``) keeps ``ns[k-1]`` of every M from step ``start + round(k (end -
    start) / K)``; before the first stage the tensor holds ``initial`` of every M (M: dense). So the last stage,
    the target, starts exactly at ``end``, as the cubic schedule reaches its final sparsity there.

    Attributes:
        m: the group size.
        initial: N in force before the first stage (``m`` for a dense start).
        ns: N of each stage, strictly decreasing, each below ``initial``.
        start / end: the pruning window ``t0`` / ``t_f`` in steps.
    """

    m: int
    initial: int
    ns: tuple[int, ...]
    start: int
    end: int

    @property
    def starts(self) -> tuple[int, ...]:
        """The step at which each stage starts."""
        k = len(self.ns)
        return tuple(self.start + round(i * (self.end - self.start) / k) for i in range(1, k + 1))

    def n_at(self, step: int) -> int:
        """N in force at ``step`` (``initial`` before the first stage)."""
        current = self.initial
        for n, begin in zip(self.ns, self.starts):
            if step >= begin:
                current = n
        return current

    def __call__(self, step: int) -> bool:
        """Whether a stage starts at ``step`` (an update step)."""
        return step in self.starts


def check_point(name: str, value: Any) -> int | float:
    """A point in training: an int (a step, >= 0) or a float in [0, 1] (a fraction of ``total_steps``).

    The type carries the meaning, so it is kept as given (``1`` is step 1, ``1.0`` the end of the run).

    Raises:
        TypeError: neither an int nor a float.
        ValueError: a negative step, or a fraction outside [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int (steps) or a float in [0, 1] (fraction of total_steps), "
                        f"got {value!r}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r}: a float must be a fraction of total_steps in [0, 1]")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name}={value!r}: an int must be a step >= 0")
    return value


def resolve_step(value: int | float, total_steps: int, name: str) -> int:
    """A point in training given as an int (steps) or a float in [0, 1] (fraction of ``total_steps``)."""
    check_point(name, value)
    if isinstance(value, float):
        return int(round(value * total_steps))
    if value > total_steps:
        raise ValueError(f"{name}={value!r}: an int must be a step in [0, total_steps={total_steps}]")
    return value
