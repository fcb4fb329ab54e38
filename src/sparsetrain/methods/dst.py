"""Dynamic sparse training at a fixed sparsity: RigL, SET and SNFS share one loop and differ in growth.

Evci et al., *Rigging the Lottery: Making All Tickets Winners*, ICML 2020 (RigL): start from a random mask
(ERK by default); every ΔT = 100 steps until ``T_end = stop_at * total_steps`` (0.75), per layer drop the
``k = f(t) * active`` smallest-magnitude weights and grow the ``k`` inactive ones with the largest dense
``|gradient|``, zero-initialised, with ``f(t) = alpha/2 (1 + cos(pi t / T_end))``, ``alpha = 0.3``.
``k`` is rounded down, as in the official code. Biases and norm parameters stay dense.

Mocanu et al., Nature Communications 2018 (SET): the same loop with uniformly random growth (here with RigL's
cosine schedule for the drop fraction, as in RigL's SET baseline; the original used a constant fraction per
epoch: set ``drop_fraction_final=drop_fraction`` and ``stop_at=1.0`` for it).

Dettmers & Zettlemoyer 2019, *Sparse Networks from Scratch* (SNFS, sparse momentum): growth by the magnitude
of the gradient momentum. Deviation: the momentum is the sparsifier's own exponential average of the *dense*
gradient (``beta`` = 0.9), updated before every optimizer step, because the optimizer's own buffers are kept at
zero at inactive positions; SNFS's momentum-based redistribution of counts across layers is not implemented
(counts per layer stay fixed, as in RigL).

Under an N:M pattern (``pattern="2:4"``) the initial mask keeps N random entries of every M, and every update
swaps *within groups* (:func:`sparsetrain.nm.nm_drop_and_grow`): a layer drops its ``k`` smallest magnitudes
wherever they are and each group regrows, by the method's growth score, as many as it dropped, so every group
holds exactly N after every update (``k`` counted as above).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..options import Option
from ..schedules import UpdateCadence, check_point, cosine_decay, resolve_step
from ..scores import Growth
from ..sparsifier import Sparsifier
from ..updates import REGROW_MODES
from ..validation import check_fraction, check_number

__all__ = ["DynamicSparse", "RigL", "SET", "SNFS"]

_EVCI = "Evci et al. 2020"


class DynamicSparse(Sparsifier):
    """Drop-and-grow at a fixed sparsity; subclasses choose the growth score (:meth:`growth`).

    Options (besides the base options of :class:`~sparsetrain.sparsifier.Sparsifier`; defaults: ``distribution``
    "erk" for the random initial mask, ``update_every`` 100):
        drop_fraction: ``alpha``; drop_fraction_final: the value at ``stop_at``.
        stop_at: ``T_end`` as steps (int) or a fraction of ``total_steps`` (float).
        regrow_mode: "keep" (official RigL code), "zero" or "forbid".
    """

    options = (
        Option("drop_fraction", 0.3, "alpha: the fraction of each layer's active weights dropped and grown at step 0",
               "float", check_fraction, "a number in (0, 1]", reference=_EVCI),
        Option("drop_fraction_final", 0.0, "the drop fraction at stop_at (cosine decay)", "float",
               lambda name, value: check_number(name, value, "[0, 1]", "it must be"), "a number in [0, 1]"),
        Option("stop_at", 0.75, "T_end: the last topology update", "int or float", check_point,
               "a step (int >= 0) or a fraction of total_steps (float in [0, 1])", reference=_EVCI),
        Option("regrow_mode", "keep", "a weight dropped and grown in one update: keeps its value (keep), restarts "
               "at zero (zero), or may not grow (forbid)", "str", choices=REGROW_MODES,
               reference="official RigL code"),
    )

    def setup(self) -> None:
        self.stop_at = resolve_step(self.stop_at, self.total_steps, "stop_at")
        self.cadence = UpdateCadence(self.update_every, 0, self.stop_at - 1)

    def initial_masks(self) -> dict[str, Tensor]:
        return self.random_masks(self.sparsity)

    def current_drop_fraction(self, step: int) -> float:
        """``f(t) = drop_fraction_final + (alpha - final)/2 (1 + cos(pi t / T_end))``."""
        return cosine_decay(step, self.drop_fraction, self.drop_fraction_final, self.stop_at)

    def schedule_at(self, step: int) -> dict[str, float | None]:
        return {"drop_fraction": self.current_drop_fraction(step), "target_sparsity": self.sparsity}

    def is_update_step(self, step: int) -> bool:
        return self.cadence(step)

    def growth(self) -> Growth:
        """How inactive positions are ranked for growth (:data:`sparsetrain.scores.Growth`)."""
        raise NotImplementedError

    def update(self, step: int) -> dict[str, Tensor]:
        groups = None if self.pattern is None else self.nm_budget().groups
        return self.drop_and_grow(self.current_drop_fraction(step), self.growth(), mode=self.regrow_mode,
                                  rounding="floor", groups=groups)


class RigL(DynamicSparse):
    """RigL (Evci et al. 2020): growth by dense gradient magnitude."""

    method = "rigl"

    def growth(self) -> Growth:
        return "gradient"


class SET(DynamicSparse):
    """SET (Mocanu et al. 2018): uniformly random growth, drawn from the sparsifier's seeded generator."""

    method = "set"

    def growth(self) -> Growth:
        return "random"

    def needs_dense_gradient(self, step: int) -> bool:
        return False


class SNFS(DynamicSparse):
    """SNFS / sparse momentum (Dettmers & Zettlemoyer 2019): growth by dense-gradient momentum magnitude.

    Options (besides :class:`DynamicSparse`'s):
        beta: momentum coefficient of the dense-gradient average.
    """

    method = "snfs"
    options = (
        Option("beta", 0.9, "momentum coefficient of the sparsifier's dense-gradient average", "float",
               lambda name, value: check_number(name, value, "[0, 1)"), "a number in [0, 1)",
               reference="Dettmers & Zettlemoyer 2019"),
    )

    def setup(self) -> None:
        if self.optimizer is None:
            raise ValueError("optimizer=None is not allowed for SNFS: its momentum is read at every optimizer step")
        super().setup()
        self.momentum = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.enforcer.on_gradients(self._accumulate)

    def _accumulate(self, grads: Mapping[str, Tensor]) -> None:
        """``m = beta * m + g`` with this step's dense gradient, before it is masked."""
        names = list(grads)
        if names:
            buffers = [self.momentum[n] for n in names]
            torch._foreach_mul_(buffers, self.beta)
            torch._foreach_add_(buffers, [grads[n] for n in names])

    def growth(self) -> Growth:
        return lambda name: self.momentum[name].abs()

    def needs_dense_gradient(self, step: int) -> bool:
        return False  # the momentum reads every step's gradient through on_gradients

    def _extra_state(self) -> dict[str, Any]:
        return {"momentum": {n: m.detach().cpu().clone() for n, m in self.momentum.items()}}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        for name, value in extra.get("momentum", {}).items():
            self.momentum[name].copy_(value)
