"""Allocation of a sparsity budget across tensors: uniform, ER and ERK.

A distribution is a pure function from tensor shapes and a total sparsity to an exact number of nonzeros
per tensor. ``fixed`` pins some tensors (per-tensor overrides, dense first/last layers) and the rest share what
is left of the budget. Ranking all tensors together under one budget is not a distribution but a *scope*
(``scope="global"``, :mod:`sparsetrain.selection`): a distribution says how much each tensor keeps when each
tensor is ranked on its own (``scope="layer"``).

ER and ERK follow Mocanu et al. (2018) and Evci et al. (2020, RigL): the density of a tensor is proportional to
``sum(shape) / prod(shape)`` (ERK, "kernel" dims included) or ``(n_in + n_out) / (n_in * n_out)`` (ER), scaled
so that the total matches; tensors whose density would exceed 1 are made dense and the scale is re-solved for
the rest, as in RigL's ``get_sparsities_erdos_renyi``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .topk import exact_counts

__all__ = ["DISTRIBUTIONS", "allocate", "erk_densities", "check_distribution"]

DISTRIBUTIONS = ("uniform", "er", "erk")


def check_distribution(distribution: Any, name: str = "distribution", instead: str | None = "scope='global'") -> str:
    """Validate a distribution name (case-insensitive) and return it lower-cased.

    Args:
        distribution: the value to check.
        name: the argument's name, for the message.
        instead: how to ask for one ranking over all tensors where ``name`` is used (said when the value is
            "global", the old spelling of that scope), or None where no global ranking is offered.

    Raises:
        ValueError: not one of :data:`DISTRIBUTIONS`.
    """
    if isinstance(distribution, str) and distribution.lower() == "global":
        advice = f": use {instead}" if instead else f"; allowed: {', '.join(DISTRIBUTIONS)}"
        raise ValueError(f"{name}={distribution!r} is not allowed: 'global' is a scope, not a distribution{advice}")
    if not isinstance(distribution, str) or distribution.lower() not in DISTRIBUTIONS:
        raise ValueError(f"{name}={distribution!r} is not a known distribution; allowed: {', '.join(DISTRIBUTIONS)}")
    return distribution.lower()


def _raw_score(shape: Sequence[int], kind: str) -> float:
    if kind == "erk":
        return sum(shape) / math.prod(shape)
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)


def erk_densities(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    *,
    kind: str = "erk",
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-tensor densities of the ER / ERK allocation at a total ``density``.

    Args:
        shapes: name -> shape (PyTorch layout: ``[out, in, *kernel]``).
        density: the target fraction of nonzeros over all tensors (fixed ones included).
        kind: "erk" (kernel dims count) or "er".
        fixed: name -> density for tensors whose density is pinned.

    Returns:
        name -> density in [0, 1].
    """
    fixed = dict(fixed or {})
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(numel.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(fixed[n] * numel[n] for n in fixed) - sum(numel[n] for n in dense)
        free = [n for n in shapes if n not in fixed and n not in dense]
        if not free:
            break
        weighted = sum(_raw_score(shapes[n], kind) * numel[n] for n in free)
        scale = max(budget, 0.0) / weighted
        overflow = [n for n in free if scale * _raw_score(shapes[n], kind) > 1.0]
        if not overflow:
            break
        dense.update(overflow)
    result = {}
    for name, shape in shapes.items():
        if name in fixed:
            result[name] = fixed[name]
        elif name in dense:
            result[name] = 1.0
        else:
            result[name] = min(1.0, scale * _raw_score(shape, kind))
    return result


def allocate(
    shapes: Mapping[str, Sequence[int]],
    sparsity: float,
    distribution: str,
    *,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Exact number of nonzeros per tensor for a total ``sparsity``.

    With "er"/"erk", per-tensor counts are ``round(density * numel)`` by the largest-remainder rule, so the
    total number of nonzeros over the free tensors matches the budget exactly (within one weight per tensor of
    each tensor's real-valued share). With "uniform", each tensor is rounded half-up on its own (within half a
    weight per tensor, and monotone in the sparsity, as gradual pruning needs). Fixed tensors get exactly ``round((1 - s) * numel)``. With "uniform", every free
    tensor is at ``sparsity`` and pinned tensors change the total; with "er"/"erk" the free tensors are
    re-solved so the total still matches ``sparsity``.

    Args:
        shapes: name -> shape.
        sparsity: target sparsity over all tensors, in [0, 1).
        distribution: "uniform", "er" or "erk".
        fixed: name -> sparsity pinned for that tensor (overrides, dense layers).

    Returns:
        name -> number of nonzeros.
    """
    distribution = check_distribution(distribution)
    fixed_density = {n: 1.0 - s for n, s in (fixed or {}).items()}
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    if distribution == "uniform":
        # Uniform: every free tensor at the target sparsity (Zhu & Gupta); pinned tensors change the total.
        densities = {n: fixed_density.get(n, 1.0 - sparsity) for n in shapes}
    else:
        densities = erk_densities(shapes, 1.0 - sparsity, kind=distribution, fixed=fixed_density)
    counts = {n: round(fixed_density[n] * numel[n]) for n in fixed_density}
    free = [n for n in shapes if n not in fixed_density]
    if distribution == "uniform":
        # Each tensor rounded on its own: a count never grows as the sparsity rises, which gradual pruning
        # needs (largest-remainder rounding across tensors can move a weight from one tensor to another).
        counts.update({n: min(numel[n], math.floor(densities[n] * numel[n] + 0.5)) for n in free})
        return {n: counts[n] for n in shapes}
    shares = [densities[n] * numel[n] for n in free]
    target_total = min(sum(numel[n] for n in free), round(sum(shares)))
    for name, count in zip(free, exact_counts(shares, target_total), strict=True):
        counts[name] = min(count, numel[name])
    return {n: counts[n] for n in shapes}
