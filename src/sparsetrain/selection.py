"""Selection: keep the top scores under per-tensor counts or one global budget. Every mask is chosen here.

Two words describe the choice, and they are separate:

* the **scope**: ``"layer"`` ranks each tensor on its own, with its own count; ``"global"`` ranks the tensors
  together under one budget, with one threshold (pinned tensors, see below, keep their own counts);
* the **distribution** (:mod:`sparsetrain.distributions`: uniform, ER, ERK) says how many entries each tensor
  keeps in the layer scope. It has no meaning in the global scope, where the ranking decides.

:func:`budget` turns a sparsity into counts (``fixed`` pins some tensors at their own sparsity: per-tensor
overrides, dense first/last layers), and :func:`keep_top` keeps the top scores under them, with exact counts and
ties broken towards the lowest index (:mod:`sparsetrain.topk`). Random masks, gradual magnitude pruning, pruning
at initialisation, lottery-ticket rounds, jackpots and plasticity's one-shot pruning all call these two.

A count may cover several tensors ranked together as one vector (``Budget.units``: e.g. a layer's weight and its
bias, pruned as one unit by the lottery's ``prune_biases``); the masks stay per tensor.

An **N:M pattern** (:mod:`sparsetrain.nm`) is one more axis of the budget: :func:`nm_budget` puts the tensors that
can follow the pattern in :attr:`Budget.groups` (keep N of every M consecutive entries along the reduction
dimension) and keeps the others whole, and :func:`keep_top` selects those tensors with
:func:`sparsetrain.nm.nm_mask`, with the same tie rule. Scope and distribution have no meaning under a pattern:
every patterned tensor sits at sparsity ``1 - N/M``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .distributions import allocate
from .nm import NMLayout, NMPattern, nm_mask
from .topk import global_topk_masks, topk_mask
from .validation import check_choice

__all__ = ["SCOPES", "Budget", "Groups", "budget", "nm_budget", "keep_top", "check_scope", "resolve_scope"]

#: How entries are ranked: each tensor on its own, or all tensors together.
SCOPES = ("layer", "global")


def check_scope(scope: Any, name: str = "scope") -> str:
    """Validate a scope ("layer" or "global"); the old spelling "layerwise" is told its new one.

    Raises:
        ValueError: not one of :data:`SCOPES`.
    """
    if scope == "layerwise":
        raise ValueError(f"{name}='layerwise' is not allowed: it is spelled 'layer' now; choose one of "
                         f"{', '.join(map(repr, SCOPES))}")
    return check_choice(name, scope, SCOPES)


def resolve_scope(scope: str | None, distribution: str | None, *, default_scope: str,
                  default_distribution: str) -> tuple[str, str]:
    """The scope and distribution to use, from the ones given (None: not given) and the defaults.

    A distribution given without a scope asks for per-tensor counts, so it means the layer scope (this keeps
    ``GraNet(distribution="uniform")``, the paper's uniform variant, per layer). A distribution given together
    with ``scope="global"`` would have no effect and is refused.

    Raises:
        ValueError: ``scope="global"`` with an explicit distribution.
    """
    if scope == "global" and distribution is not None:
        raise ValueError(f"distribution={distribution!r} is not allowed with scope='global': one ranking over all "
                         "tensors has no per-tensor allocation; leave distribution out, or use scope='layer'")
    if scope is None:
        scope = "layer" if distribution is not None else default_scope
    return scope, default_distribution if distribution is None else distribution


@dataclass(frozen=True)
class Groups:
    """Keep ``pattern.n`` of every ``pattern.m`` consecutive entries along ``dim`` (an N:M pattern).

    Attributes:
        pattern: the N:M pattern.
        dim: the tensor's reduction dimension (:func:`sparsetrain.nm.reduction_dim`).
    """

    pattern: NMPattern
    dim: int = 1


@dataclass(frozen=True)
class Budget:
    """How many entries to keep: ``counts`` per tensor (or unit of tensors), N of every M in ``groups``' tensors,
    and ``global_count`` over every other tensor together.

    Attributes:
        counts: name -> entries kept in that tensor, ranked on its own; or, for a name in ``units``, entries kept
            in that unit's tensors, ranked together.
        global_count: entries kept over the tensors without a count or groups, ranked together (None: every
            tensor has one).
        groups: name -> :class:`Groups`: the tensor keeps N of every M along its reduction dim.
        units: name -> the tensors one count covers, ranked as one vector in this order (e.g. ``("fc.weight",
            "fc.bias")``); a name of ``counts`` without an entry here is the tensor of that name.
    """

    counts: Mapping[str, int] = field(default_factory=dict)
    global_count: int | None = None
    groups: Mapping[str, Groups] = field(default_factory=dict)
    units: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def members(self, name: str) -> tuple[str, ...]:
        """The tensors the count ``name`` covers."""
        return tuple(self.units.get(name, (name,)))


def budget(
    shapes: Mapping[str, Sequence[int] | Tensor],
    sparsity: float,
    *,
    distribution: str = "uniform",
    scope: str = "layer",
    fixed: Mapping[str, float] | None = None,
) -> Budget:
    """The counts that put ``shapes`` at ``sparsity``.

    Layer scope: every tensor's count from :func:`~sparsetrain.distributions.allocate` (pinned tensors at their
    own sparsity; with "er"/"erk" the others are re-solved so the total matches). Global scope: pinned tensors
    keep ``round((1 - s) * numel)`` each and the others together ``round((1 - sparsity) * their numel)``.

    Args:
        shapes: name -> shape (or a tensor of that shape).
        sparsity: the target sparsity in [0, 1).
        distribution: "uniform", "er" or "erk" (layer scope only).
        scope: "layer" or "global".
        fixed: name -> sparsity pinned for that tensor.

    Returns:
        The :class:`Budget`.
    """
    shapes = {n: tuple(s.shape) if isinstance(s, Tensor) else tuple(s) for n, s in shapes.items()}
    if check_scope(scope) == "layer":
        return Budget(allocate(shapes, sparsity, distribution, fixed=fixed))
    fixed = dict(fixed or {})
    counts = {name: round((1.0 - s) * math.prod(shapes[name])) for name, s in fixed.items()}
    pooled = sum(math.prod(shape) for name, shape in shapes.items() if name not in fixed)
    return Budget(counts, round((1.0 - sparsity) * pooled))


def nm_budget(layouts: Mapping[str, NMLayout], pattern: NMPattern | str, *,
              fixed: Mapping[str, float] | None = None) -> Budget:
    """The budget of an N:M pattern: every tensor that can follow it keeps N of every M along its reduction dim;
    a tensor that cannot (:attr:`~sparsetrain.nm.NMLayout.dense_reason`) or is pinned dense keeps every entry.

    Args:
        layouts: name -> :class:`~sparsetrain.nm.NMLayout` (:func:`sparsetrain.nm.nm_layouts`).
        pattern: the pattern.
        fixed: name -> pinned sparsity; under a pattern only 0 (kept dense) can be pinned.

    Returns:
        The :class:`Budget` (``counts`` for the dense tensors, ``groups`` for the patterned ones).

    Raises:
        ValueError: a tensor pinned at a sparsity other than 0.
    """
    pattern = NMPattern.parse(pattern)
    counts: dict[str, int] = {}
    groups: dict[str, Groups] = {}
    for name, layout in layouts.items():
        pinned = (fixed or {}).get(name)
        if pinned is not None and pinned != 0.0:
            raise ValueError(f"a sparsity of {pinned!r} pinned for {name!r} is not allowed with pattern='{pattern}': "
                             f"a patterned tensor is at 1 - N/M = {pattern.sparsity:g}; only 0 (kept dense) can be "
                             "pinned")
        if layout.patterned and pinned is None:
            groups[name] = Groups(pattern, layout.dim)
        else:
            counts[name] = math.prod(layout.shape)
    return Budget(counts, None, groups)


@torch.no_grad()
def keep_top(
    scores: Mapping[str, Tensor],
    budget: Budget,
    *,
    eligible: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Bool masks keeping the highest ``scores`` under ``budget``, with exact counts.

    Each tensor in ``budget.counts`` keeps that many of its own entries (a unit of ``budget.units``: that many of
    its tensors' entries ranked together); each tensor in ``budget.groups`` keeps N of every M along its reduction
    dim (:func:`sparsetrain.nm.nm_mask`; ties to the lowest index in the group); the others keep
    ``budget.global_count`` entries together (one threshold). Ties go to the lowest index: the mapping's (or the
    unit's) order, then each tensor's flat order. Counts are clamped to what exists.

    Args:
        scores: name -> score tensor (higher = keep); the global pool must sit on one device.
        budget: what to keep (:func:`budget`, or a :class:`Budget` built from counts).
        eligible: optional name -> bool tensor: only eligible entries can be kept (scores must then be
            non-negative, except in ``groups``' tensors). Pruning never adds: a tensor (or the pool) whose count is
            not below its eligible count keeps its eligible mask as it is, and a group with fewer than N eligible
            entries keeps just those.

    Returns:
        name -> bool mask, in the order of ``scores``.

    Raises:
        ValueError: tensors without a count and no ``global_count``, or a global pool on several devices.
    """
    masks: dict[str, Tensor] = {}
    for name, groups in budget.groups.items():
        masks[name] = nm_mask(scores[name], groups.pattern, dim=groups.dim,
                              eligible=None if eligible is None else eligible[name])
    for name, count in budget.counts.items():
        members = budget.members(name)
        if members != (name,):
            masks.update(_keep_top_together({m: scores[m] for m in members}, count,
                                            None if eligible is None else {m: eligible[m] for m in members}))
        elif eligible is None:
            masks[name] = topk_mask(scores[name], count)
        else:
            active = int(torch.count_nonzero(eligible[name]))
            masks[name] = topk_mask(scores[name], count, eligible[name], active) if count < active else eligible[name]
    pooled = [name for name in scores if name not in masks]
    if pooled:
        if budget.global_count is None:
            raise ValueError(f"keep_top: no count for {', '.join(pooled[:5])}: give every tensor a count or a "
                             "global_count for the rest")
        if len({scores[name].device for name in pooled}) > 1:
            raise ValueError("scope='global' needs every scored tensor on one device")
        masks.update(_keep_top_together({name: scores[name] for name in pooled}, budget.global_count,
                                        None if eligible is None else {name: eligible[name] for name in pooled}))
    return {name: masks[name] for name in scores}


def _keep_top_together(scores: Mapping[str, Tensor], count: int,
                       eligible: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The top ``count`` of several tensors ranked as one vector; pruning never adds (see :func:`keep_top`)."""
    if eligible is None:
        return global_topk_masks(scores, count)
    if count < sum(int(torch.count_nonzero(mask)) for mask in eligible.values()):
        return global_topk_masks(scores, count, eligible)
    return dict(eligible)
