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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..schedules import UpdateCadence, cosine_decay, resolve_step
from ..scores import gradient_scores, magnitude_scores
from ..sparsifier import Sparsifier, check_choice, check_fraction
from ..updates import REGROW_MODES, regrow

__all__ = ["DynamicSparse", "RigL", "SET", "SNFS"]


class DynamicSparse(Sparsifier):
    """Drop-and-grow at a fixed sparsity; subclasses choose the growth score (:meth:`grow_scores`).

    Args:
        model, optimizer, sparsity, total_steps: see :class:`~sparsetrain.sparsifier.Sparsifier`.
        distribution: allocation of the random initial mask (default "erk").
        update_every: ΔT (default 100).
        drop_fraction: ``alpha`` (default 0.3); drop_fraction_final: value at ``stop_at`` (default 0).
        stop_at: ``T_end`` as steps (int) or a fraction of ``total_steps`` (float, default 0.75).
        regrow_mode: "keep" (default, official RigL code), "zero" or "forbid".
        **kwargs: common options.
    """

    growth = "none"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: float,
        total_steps: int,
        distribution: str = "erk",
        update_every: int = 100,
        drop_fraction: float = 0.3,
        drop_fraction_final: float = 0.0,
        stop_at: int | float = 0.75,
        regrow_mode: str = "keep",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, total_steps=total_steps, distribution=distribution,
                         update_every=update_every, **kwargs)
        self.drop_fraction = check_fraction("drop_fraction", drop_fraction)
        if not isinstance(drop_fraction_final, (int, float)) or not 0.0 <= drop_fraction_final <= 1.0:
            raise ValueError(f"drop_fraction_final={drop_fraction_final!r} is not allowed: it must be in [0, 1]")
        self.drop_fraction_final = float(drop_fraction_final)
        self.stop_at = resolve_step(stop_at, self.total_steps, "stop_at")
        self.regrow_mode = check_choice("regrow_mode", regrow_mode, REGROW_MODES)
        self.cadence = UpdateCadence(self.update_every, 0, self.stop_at - 1)
        self.config.update(drop_fraction=self.drop_fraction, drop_fraction_final=self.drop_fraction_final,
                           stop_at=stop_at, regrow_mode=self.regrow_mode)
        self._start()

    def initial_masks(self) -> dict[str, Tensor]:
        return self.random_masks(self.sparsity, self.distribution)

    def current_drop_fraction(self, step: int) -> float:
        """``f(t) = drop_fraction_final + (alpha - final)/2 (1 + cos(pi t / T_end))``."""
        return cosine_decay(step, self.drop_fraction, self.drop_fraction_final, self.stop_at)

    def is_update_step(self, step: int) -> bool:
        return self.cadence(step)

    def grow_scores(self, name: str) -> Tensor:
        """Score of each position of tensor ``name`` for growth (higher grows first)."""
        raise NotImplementedError

    def update(self, step: int) -> dict[str, Tensor]:
        self.masks, reset = regrow(
            self.masks, magnitude_scores(self.params), self.grow_scores, self.current_drop_fraction(step),
            mode=self.regrow_mode, rounding="floor",
        )
        return reset


class RigL(DynamicSparse):
    """RigL (Evci et al. 2020): growth by dense gradient magnitude."""

    method = "rigl"

    def update(self, step: int) -> dict[str, Tensor]:
        self._grads = gradient_scores(self.params)
        try:
            return super().update(step)
        finally:
            self._grads = {}

    def grow_scores(self, name: str) -> Tensor:
        return self._grads[name]


class SET(DynamicSparse):
    """SET (Mocanu et al. 2018): uniformly random growth, drawn from the sparsifier's seeded generator."""

    method = "set"

    def grow_scores(self, name: str) -> Tensor:
        param = self.params[name]
        return torch.rand(param.shape, generator=self.generator).to(param.device)


class SNFS(DynamicSparse):
    """SNFS / sparse momentum (Dettmers & Zettlemoyer 2019): growth by dense-gradient momentum magnitude.

    Args:
        beta: momentum coefficient of the dense-gradient average (default 0.9).
        (others as :class:`DynamicSparse`)
    """

    method = "snfs"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 beta: float = 0.9, **kwargs: Any) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"beta={beta!r} is not allowed: it must be a number in [0, 1)")
        if optimizer is None:
            raise ValueError("optimizer=None is not allowed for SNFS: its momentum is read at every optimizer step")
        self.beta = float(beta)
        super().__init__(model, optimizer, **kwargs)
        self.config.update(beta=self.beta)
        self.momentum = {name: torch.zeros_like(p) for name, p in self.params.items()}

    def _prepare_gradients(self, fusable: bool = True) -> None:
        names = [n for n, p in self.params.items() if p.grad is not None]
        if names:
            buffers = [self.momentum[n] for n in names]
            torch._foreach_mul_(buffers, self.beta)
            torch._foreach_add_(buffers, [self.params[n].grad for n in names])
        super()._prepare_gradients(fusable)

    def grow_scores(self, name: str) -> Tensor:
        return self.momentum[name].abs()

    def _extra_state(self) -> dict[str, Any]:
        return {"momentum": {n: m.detach().cpu().clone() for n, m in self.momentum.items()}}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        for name, value in extra.get("momentum", {}).items():
            self.momentum[name].copy_(value)
