"""The options every sparsifier accepts: declared once here, documented once here.

:class:`~sparsetrain.sparsifier.Sparsifier` declares these as its ``options``, so every method inherits them (a
method adds its own and may change a default, see :mod:`sparsetrain.options`); construction validates them
through :meth:`~sparsetrain.options.OptionSet.validate`. The checks of the values that no shared check covers
(names, overrides, masks) live here with them. Each option, in full:

sparsity: final target sparsity in [0, 1) (default with ``masks``: the sparsity of the masks).
total_steps: number of optimizer steps in the run (> 0); schedules are fractions of it.
distribution: per-tensor allocation in the layer scope: "uniform", "er" or "erk".
scope: "layer" (each tensor ranked on its own, counts from ``distribution``) or "global" (one ranking over
    all tensors); a distribution given without a scope means "layer".
update_every: ΔT, optimizer steps between topology updates.
include / exclude: parameter names or regexes (full match) to sparsify instead of / remove from the
    default selection (see :func:`sparsetrain.masks.select_prunable`).
sparsity_overrides: name or regex -> sparsity pinned for those tensors.
dense_first / dense_last: keep the first / last sparsified tensor dense.
seed: seeds the sparsifier's own CPU generator (random masks, random growth).
mask_gradients: keep pruned weights at zero through their gradients (see :mod:`sparsetrain.enforcement`);
    False masks weights and state after every step.
fused_step: with ``mask_gradients``, run the optimizer's update of the sparsified tensors in one native
    masked pass when the optimizer and its options allow it; False always masks the gradients.
sparse_init: "fan_in" (default) rescales each unit's initial weights to its active fan-in once the starting
    masks are drawn (Evci et al. 2022, :mod:`sparsetrain.sparse_init`); "none" keeps the dense
    initialisation as it was drawn. It applies to the masks a method draws itself (a sparse random or
    pruned-at-init start): the weights at construction are taken to be an initialisation, so pass "none" to
    sparsify a *trained* model from a sparse start. The weights that come with given ``masks=`` (a rewound
    lottery ticket, a pruned trained network) are rescaled only when ``sparse_init`` is given explicitly. A
    dense start (GraNet and GMP with ``initial_sparsity=0``) is never touched. The default was chosen by
    measurement (RigL, SET and static at 90-98% on two MNIST-1D models, 3 seeds:
    docs/results/sparse_from_scratch.md).
masks: start from these masks (name -> bool tensor): they name the tensors to sparsify (no include /
    exclude then) and give the default ``sparsity``. Methods at a fixed sparsity keep the masks' counts (a
    ``sparsity`` given too is the run's nominal target, as a config's ``sparse.sparsity``); gradual
    methods start from the masks' sparsity and prune towards ``sparsity``.
pattern: ``"N:M"`` (e.g. ``"2:4"``): every group of M consecutive weights along each tensor's reduction
    dimension keeps exactly N (:mod:`sparsetrain.nm`); ``sparsity`` is then ``1 - N/M`` (given or not),
    ``distribution`` and ``scope`` may not be given, and tensors whose reduction dimension is not a multiple
    of M are kept dense (logged at attach and noted in :meth:`report`). None: unstructured.
backend: where the sparsified weights live (:mod:`sparsetrain.sparse.backend`): "dense" (bool masks over dense
    weights), "sparse" (each sparsified ``nn.Linear`` is replaced by a
    :class:`~sparsetrain.sparse.TrainableSparseLinear` that stores, trains and updates only its active
    weights; other tensors stay masked-dense) or "auto" (sparse only where that is measured faster). With a
    ``pattern`` "sparse" is refused and "auto" is the dense path (the N:M kernels are inference-only). The default
    here is "dense" because sparse storage replaces the model's ``nn.Linear`` modules (a plain training loop keeps
    the modules it built); ``sparsetrain train``, which owns its model, checkpoints and export, defaults to "auto".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .distributions import DISTRIBUTIONS, check_distribution
from .enforcement import BACKENDS
from .nm import check_pattern
from .options import REQUIRED, Option
from .selection import SCOPES, check_scope
from .sparse_init import SPARSE_INITS
from .validation import check_bool, check_bool_masks, check_int, check_positive_int, check_sparsity

__all__ = ["BASE_OPTIONS"]


def _check_names(name: str, value: Any) -> Any:
    """include / exclude: a name or regex, or a list of them (matched against the model at selection)."""
    if isinstance(value, (str, list, tuple)):
        return value
    raise TypeError(f"{name}={value!r} is not allowed: it must be a parameter name or regex, or a list of them")


def _check_overrides(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}={value!r} is not allowed: it must be a mapping of parameter names or regexes to "
                        "sparsities")
    return dict(value)


def _check_masks(name: str, value: Any) -> dict[str, Tensor]:
    check_bool_masks(value, name)
    return dict(value)


#: The base options, in the order ``help()`` and docs/options.md list them.
BASE_OPTIONS: tuple[Option, ...] = (
    Option("sparsity", REQUIRED, "final target sparsity of the sparsified tensors (default with masks: "
           "theirs)", "float", check_sparsity, "a number in [0, 1)"),
    Option("total_steps", REQUIRED, "optimizer steps in the run; schedules are fractions of it", "int",
           check_positive_int, "an int > 0"),
    Option("distribution", "erk", "per-tensor allocation of the sparsity in the layer scope", "str",
           lambda name, value: check_distribution(value, name), ", ".join(DISTRIBUTIONS),
           reference="Evci et al. 2020 (ERK)"),
    Option("scope", "layer", "layer: each tensor ranked on its own; global: one ranking over all tensors (a "
           "distribution given without a scope means layer)", "str", lambda name, value: check_scope(value, name),
           ", ".join(SCOPES)),
    Option("update_every", 100, "ΔT: optimizer steps between topology updates", "int", check_positive_int,
           "an int > 0"),
    Option("include", None, "parameter names or regexes to sparsify instead of the default selection", "names",
           _check_names, "a name or regex, or a list of them", none=True),
    Option("exclude", None, "parameter names or regexes removed from the selection", "names", _check_names,
           "a name or regex, or a list of them", none=True),
    Option("sparsity_overrides", None, "sparsities pinned for some tensors", "mapping", _check_overrides,
           "name or regex -> a number in [0, 1)", none=True),
    Option("dense_first", False, "keep the first sparsified tensor dense", "bool", check_bool),
    Option("dense_last", False, "keep the last sparsified tensor dense", "bool", check_bool),
    Option("seed", 0, "seed of the sparsifier's own generator (random masks, random growth)", "int", check_int,
           "an int"),
    Option("mask_gradients", True, "keep pruned weights at zero through their gradients (False: mask weights "
           "and optimizer state after every step, as the official GraNet code)", "bool", check_bool),
    Option("fused_step", True, "update the sparsified tensors in one native masked pass where the optimizer "
           "allows it (bit-identical)", "bool", check_bool),
    Option("sparse_init", "fan_in", "fan_in: rescale each unit's initial weights to its active fan-in when the "
           "method starts sparse; none: keep the dense initialisation (with masks=..., applied only when given; "
           "default decided by docs/results/sparse_from_scratch.md)", "str", choices=SPARSE_INITS,
           reference="Evci et al. 2022", named_default="none"),
    Option("masks", None, "start from these masks (name -> bool tensor); they name the tensors to sparsify "
           "and give the default sparsity", "mapping", _check_masks, "parameter name -> bool tensor", none=True,
           stored=False),
    Option("pattern", None, "N:M structured sparsity: every group of M consecutive weights along a tensor's "
           "reduction dim keeps N; sparsity is then 1 - N/M (none: unstructured)", "str", check_pattern,
           "'N:M' with integers 1 <= N < M, e.g. 2:4", none=True,
           reference="Mishra et al. 2021; Zhou et al. 2021"),
    Option("backend", "dense", "where the sparsified weights live: dense (bool masks over dense weights), "
           "sparse (Linear layers store and train only their active weights), auto (sparse where measured "
           "faster)", "str", choices=BACKENDS),
)
