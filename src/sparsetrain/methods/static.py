"""Static sparse training: a fixed mask, random (uniform, ER or ERK), given, or pruned at initialisation.

The control of the dynamic sparse training literature (e.g. Evci et al. 2020, "Static"). Masks given with the base
option ``masks=...`` are used as they are; ``init="snip"|"grasp"|"synflow"|"magnitude"|"random"`` chooses them by
pruning at initialisation (:func:`sparsetrain.init_pruning.prune_at_init`). Under an N:M pattern the random mask
keeps N random entries of every M (static N:M), and ``init`` scores go through the pattern (one-shot magnitude N:M
as NVIDIA's ASP and torch.ao's 2:4 sparsifier, with ``init="magnitude"``, then fine-tuning is this method's
training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..init_pruning import INIT_METHODS, prune_at_init
from ..options import Option
from ..sparsifier import Sparsifier

__all__ = ["Static"]

#: prune_at_init arguments that Static sets from its own options.
_INIT_OWN_OPTIONS = {"distribution", "scope", "include", "exclude", "sparsity_overrides", "dense_first",
                     "dense_last", "seed", "sparsity", "method", "data", "model", "pattern"}


def _check_init_options(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}={value!r} is not allowed: it must be a mapping of prune_at_init arguments")
    taken = sorted(set(value) & _INIT_OWN_OPTIONS)
    if taken:
        raise ValueError(f"{name}: {taken} are set by the sparsifier itself; pass them to Static directly")
    return dict(value)


class Static(Sparsifier):
    """A fixed mask: random with exact per-layer counts from ``distribution``, given, or pruned at init.

    Options (besides the base options of :class:`~sparsetrain.sparsifier.Sparsifier`; ``scope`` defaults to
    "global" with ``init``, as the pruning-at-initialisation papers, and to "layer" (ERK counts) otherwise):
        init: choose the mask by pruning at initialisation: "snip", "grasp", "synflow", "magnitude" or
            "random" (see :func:`sparsetrain.init_pruning.prune_at_init`), at ``sparsity``, ``scope`` and
            ``distribution``, with the sparsifier's include/exclude, overrides and seed.
        init_data: the batches the data-driven scores need (SNIP, GraSP), or SynFlow's input-shape source.
        init_options: further keyword arguments of ``prune_at_init`` (``batches``, ``loss_fn``, ``rounds``,
            ``schedule``, ``input_shape``, ``temperature``).
    """

    method = "static"
    options = (
        Option("init", None, "choose the mask by pruning at initialisation (none: a random mask)", "str",
               choices=INIT_METHODS, none=True, reference="Lee et al. 2019; Wang et al. 2020; Tanaka et al. 2020"),
        Option("init_data", None, "batches the data-driven init scores need (SNIP, GraSP)", "data",
               allowed="a DataLoader or an (inputs, targets) pair", none=True, stored=False),
        Option("init_options", None, "further keyword arguments of prune_at_init (batches, loss_fn, rounds, "
               "schedule, input_shape, temperature)", "mapping", _check_init_options, "argument name -> value",
               none=True, stored=False),
    )

    def default_scope(self, values: Mapping[str, Any]) -> str:
        return "global" if values["init"] is not None else values["scope"]

    def setup(self) -> None:
        if self.init is not None and self.inputs["masks"] is not None:
            raise ValueError("give either masks=... or init=..., not both")

    def initial_masks(self) -> dict[str, Tensor]:
        if self.init is None:
            return self.random_masks(self.sparsity)
        if self.pattern is not None:  # N of every M in each group: neither scope nor distribution applies
            allocation: dict[str, Any] = {"pattern": str(self.pattern)}
        else:
            allocation = {"scope": self.scope,
                          "distribution": self.distribution if self.scope == "layer" else None}
        return prune_at_init(
            self.model, self.init, self.sparsity, self.inputs["init_data"], include=self.include,
            exclude=self.exclude, sparsity_overrides=self.sparsity_overrides, dense_first=self.dense_first,
            dense_last=self.dense_last, seed=self.seed, **allocation, **(self.inputs["init_options"] or {}),
        )
