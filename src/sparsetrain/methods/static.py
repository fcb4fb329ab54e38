"""Static sparse training: a fixed random mask (uniform, ER or ERK), trained as is.

The control of the dynamic sparse training literature (e.g. Evci et al. 2020, "Static"). Masks given
explicitly (``masks=...``) are used as they are; ``init="snip"|"grasp"|"synflow"|"magnitude"|"random"`` chooses
them by pruning at initialisation (:func:`sparsetrain.init_pruning.prune_at_init`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..init_pruning import INIT_METHODS, prune_at_init
from ..sparsifier import Sparsifier

__all__ = ["Static"]

#: prune_at_init arguments that Static sets from its own options.
_INIT_OWN_OPTIONS = {"distribution", "include", "exclude", "sparsity_overrides", "dense_first", "dense_last", "seed",
                     "sparsity", "method", "data", "model"}


class Static(Sparsifier):
    """A fixed mask: random with exact per-layer counts from ``distribution``, given, or pruned at init.

    Args:
        model, optimizer, sparsity, total_steps: see :class:`~sparsetrain.sparsifier.Sparsifier`.
        distribution: allocation of the mask; default "erk" for a random mask and "global" with ``init`` (as
            the pruning-at-initialisation papers).
        masks: optional name -> bool mask to use instead of a random one (names must match the selection).
        init: choose the mask by pruning at initialisation: "snip", "grasp", "synflow", "magnitude" or
            "random" (see :func:`sparsetrain.init_pruning.prune_at_init`), at ``sparsity`` and
            ``distribution``, with the sparsifier's include/exclude, overrides and seed.
        init_data: the batches the data-driven scores need (SNIP, GraSP), or SynFlow's input-shape source.
        init_options: further keyword arguments of ``prune_at_init`` (``batches``, ``loss_fn``, ``rounds``,
            ``schedule``, ``input_shape``, ``temperature``).
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
        distribution: str | None = None,
        masks: Mapping[str, Tensor] | None = None,
        init: str | None = None,
        init_data: Any = None,
        init_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if init is not None:
            if init not in INIT_METHODS:
                raise ValueError(f"init={init!r} is not allowed; choose one of {', '.join(map(repr, INIT_METHODS))} "
                                 "or None")
            if masks is not None:
                raise ValueError("give either masks=... or init=..., not both")
        taken = sorted(set(init_options or {}) & _INIT_OWN_OPTIONS)
        if taken:
            raise ValueError(f"init_options: {taken} are set by the sparsifier itself; pass them to Static directly")
        if distribution is None:
            distribution = "global" if init is not None else "erk"
        super().__init__(model, optimizer, sparsity=sparsity, total_steps=total_steps, distribution=distribution,
                         **kwargs)
        self.config.update(init=init)
        self._given_masks = masks
        self._init = (init, init_data, dict(init_options or {}))
        self._start()
        self._given_masks = None
        self._init = (init, None, {})

    def initial_masks(self) -> dict[str, Tensor]:
        init, init_data, init_options = self._init
        if init is not None:
            return prune_at_init(
                self.model, init, self.sparsity, init_data, distribution=self.distribution,
                include=self.config["include"], exclude=self.config["exclude"],
                sparsity_overrides=self.config["sparsity_overrides"], dense_first=self.config["dense_first"],
                dense_last=self.config["dense_last"], seed=self.config["seed"], **init_options,
            )
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
