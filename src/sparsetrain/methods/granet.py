"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration.

Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration*, NeurIPS 2021
(arXiv 2106.10404; official code VITA-Group/GraNet). Every ΔT optimizer steps:

1. prune by **global** weight magnitude to the cubic-schedule sparsity ``s_t`` (between ``prune_start`` and
   ``prune_end``; see :class:`~sparsetrain.methods.gmp.GMP`);
2. then, **per layer**, drop a further fraction ``r_t`` of the remaining weights with the smallest magnitude
   and regrow the same number of inactive connections with the largest dense-gradient magnitude, starting at
   zero with zero optimizer state. The layer's count is unchanged ("zero-cost").

``r_t`` follows a cosine decay from ``drop_fraction`` (0.5) to ``drop_fraction_final`` (0.005) over the whole
run, and the drop-and-regrow step continues after ``prune_end`` to the end of training, both as in the official
code (``regrow_after_pruning=False`` stops it at ``prune_end``). ``initial_sparsity=0`` is the dense-to-sparse
form; ``initial_sparsity > 0`` (e.g. 0.5) starts from an ERK random mask ("GraNet-ST"). ``distribution="uniform"``
is the paper's uniform variant (per-layer pruning instead of one global threshold).

Counting and tie choices follow the official code: the number dropped is ``ceil(r_t * active)``; a weight
dropped in an update may be regrown in the same update and then keeps its value (``regrow_mode="keep"``;
"zero" restarts it at zero, "forbid" excludes it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..schedules import UpdateCadence, cosine_decay
from ..scores import gradient_scores, magnitude_scores
from ..sparsifier import check_bool, check_choice, check_fraction
from ..updates import REGROW_MODES, regrow
from .gmp import GMP

__all__ = ["GraNet"]


class GraNet(GMP):
    """GraNet (Liu et al. 2021): gradual global magnitude pruning + per-layer gradient regrowth.

    Args:
        model, optimizer, sparsity, total_steps: see :class:`~sparsetrain.sparsifier.Sparsifier`.
        initial_sparsity: ``s_i`` (0 = dense-to-sparse; > 0 = GraNet-ST from an ERK mask).
        prune_start / prune_end: pruning window (steps or fractions; default 0 and 0.5 of the run).
        update_every: ΔT (default 1000, the CIFAR recipe; 4000 on ImageNet).
        distribution: "global" (default) or "uniform"/"er"/"erk" for per-layer pruning.
        drop_fraction: ``r_t`` at step 0 (default 0.5); drop_fraction_final: at the end (default 0.005).
        regrow_after_pruning: keep dropping and regrowing after ``prune_end`` (default True, official code).
        regrow_mode: "keep" (default), "zero" or "forbid" (see :func:`sparsetrain.updates.regrow`).
        **kwargs: common options (include, exclude, sparsity_overrides, dense_first, dense_last, seed, ...).
    """

    method = "granet"

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
        distribution: str = "global",
        init_distribution: str = "erk",
        drop_fraction: float = 0.5,
        drop_fraction_final: float = 0.005,
        regrow_after_pruning: bool = True,
        regrow_mode: str = "keep",
        **kwargs: Any,
    ) -> None:
        self.drop_fraction = check_fraction("drop_fraction", drop_fraction)
        self.drop_fraction_final = check_fraction("drop_fraction_final", drop_fraction_final)
        self.regrow_mode = check_choice("regrow_mode", regrow_mode, REGROW_MODES)
        self.regrow_after_pruning = check_bool("regrow_after_pruning", regrow_after_pruning)
        super().__init__(model, optimizer, sparsity=sparsity, total_steps=total_steps,
                         initial_sparsity=initial_sparsity, prune_start=prune_start, prune_end=prune_end,
                         update_every=update_every, distribution=distribution, init_distribution=init_distribution,
                         **kwargs)
        self.config.update(drop_fraction=self.drop_fraction, drop_fraction_final=self.drop_fraction_final,
                           regrow_after_pruning=self.regrow_after_pruning, regrow_mode=self.regrow_mode)

    @property
    def regrow_cadence(self) -> UpdateCadence:
        end = self.total_steps if self.regrow_after_pruning else self.prune_end
        return UpdateCadence(self.update_every, 0, end)

    def current_drop_fraction(self, step: int) -> float:
        """``r_t``: cosine decay from ``drop_fraction`` to ``drop_fraction_final`` over the run."""
        return cosine_decay(step, self.drop_fraction, self.drop_fraction_final, self.total_steps)

    def is_update_step(self, step: int) -> bool:
        return self.prune_cadence(step) or self.regrow_cadence(step)

    def update(self, step: int) -> dict[str, Tensor]:
        if self.prune_cadence(step):
            self.prune(step)
        if not self.regrow_cadence(step):
            return {}
        self.masks, reset = regrow(
            self.masks, magnitude_scores(self.params), gradient_scores(self.params),
            self.current_drop_fraction(step), mode=self.regrow_mode, rounding="ceil",
        )
        return reset
