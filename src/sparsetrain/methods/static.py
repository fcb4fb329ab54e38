"""Static sparse training: a fixed random mask (uniform, ER or ERK), trained as is.

The control of the dynamic sparse training literature (e.g. Evci et al. 2020, "Static"). Masks given
explicitly (``masks=...``, e.g. from pruning at initialisation) are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..sparsifier import Sparsifier

__all__ = ["Static"]


class Static(Sparsifier):
    """A fixed mask: random with exact per-layer counts from ``distribution`` (default "erk"), or given.

    Args:
        model, optimizer, sparsity, total_steps, distribution: see :class:`~sparsetrain.sparsifier.Sparsifier`.
        masks: optional name -> bool mask to use instead of a random one (names must match the selection).
        **kwargs: common options.
    """

    method = "static"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: float,
        total_steps: int,
        distribution: str = "erk",
        masks: Mapping[str, Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, total_steps=total_steps, distribution=distribution,
                         **kwargs)
        self._given_masks = masks
        self._start()
        self._given_masks = None

    def initial_masks(self) -> dict[str, Tensor]:
        if self._given_masks is None:
            return self.random_masks(self.sparsity, self.distribution)
        given = dict(self._given_masks)
        if set(given) != set(self.params):
            raise ValueError(f"masks: names {sorted(set(given) ^ set(self.params))[:5]} do not match the "
                             "sparsified parameters")
        result = {}
        for name, param in self.params.items():
            mask = given[name]
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, the parameter has "
                                 f"{tuple(param.shape)}")
            result[name] = mask.to(device=param.device, dtype=torch.bool)
        return result
