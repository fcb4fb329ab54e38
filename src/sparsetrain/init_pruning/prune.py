"""``prune_at_init``: masks chosen before training by SNIP, GraSP, SynFlow, magnitude or random scores.

One loop serves every method: score the weights of a *copy* of the model, keep the top ones at the round's
density (:func:`sparsetrain.selection.keep_top`: one global ranking, or per-layer counts from a distribution), zero
the pruned weights of the copy, repeat. With one round (the default for every method but SynFlow) this is the
papers' single-shot pruning; SynFlow runs 100 rounds on the exponential schedule ``d_k = d^(k/n)``. Counts are
exact (:mod:`sparsetrain.topk`), weights pruned in one round never come back, and the caller's model is never
modified.

Under an N:M pattern every round keeps, in every group of M along a tensor's reduction dimension, the
``N_k = max(N, ceil(M d_k))`` best-scoring of the entries left (:func:`sparsetrain.selection.nm_budget`): one round
is one-shot N:M pruning by the method's score (with ``"magnitude"``, what NVIDIA's ASP and torch.ao's 2:4
sparsifier do), and SynFlow's iterative schedule becomes a decaying N that reaches N:M at the last round.
Tensors that cannot follow the pattern are kept dense.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batches import collect_batches
from ..distributions import check_distribution
from ..masks import resolve_overrides, select_prunable, warn_collapsed
from ..nm import NMPattern, check_pattern, nm_layouts
from ..scores import random_scores
from ..selection import Budget, budget, check_scope, keep_top, nm_budget, resolve_scope
from ..topk import NEG_INF
from ..validation import check_choice, check_int, check_sparsity
from .grasp import GRASP_TEMPERATURE, grasp_scores
from .snip import LossFn, snip_scores
from .synflow import linearize, ones_input, synflow_scores

__all__ = ["prune_at_init", "INIT_METHODS", "SCHEDULES", "round_densities", "warn_collapsed"]

logger = logging.getLogger(__name__)

#: Methods of :func:`prune_at_init`.
INIT_METHODS = ("snip", "grasp", "synflow", "magnitude", "random")
#: Density schedules of the iterative rounds.
SCHEDULES = ("exponential", "linear")
_DATA_METHODS = ("snip", "grasp")


def round_densities(density: float, rounds: int, schedule: str = "exponential") -> list[float]:
    """Density kept after each round ``k = 1..rounds``: ``d^(k/n)`` (exponential, SynFlow) or linear in ``k``.

    The last entry is exactly ``density``.
    """
    if schedule == "exponential":
        values = [density ** (k / rounds) for k in range(1, rounds + 1)]
    elif schedule == "linear":
        values = [1.0 - (1.0 - density) * k / rounds for k in range(1, rounds + 1)]
    else:
        check_choice("schedule", schedule, SCHEDULES)
    values[-1] = density
    return values



def _check_args(method: str, sparsity: Any, rounds: Any, schedule: str,
                pattern: NMPattern | None) -> tuple[str, float, int]:
    if not isinstance(method, str) or method.lower() not in INIT_METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(map(repr, INIT_METHODS))}")
    method = method.lower()
    if pattern is not None:
        if sparsity is not None and (not isinstance(sparsity, (int, float)) or
                                     abs(sparsity - pattern.sparsity) > 1e-9):
            raise ValueError(f"prune_at_init({method!r}): sparsity={sparsity!r} is not allowed with pattern="
                             f"'{pattern}': its sparsity is 1 - N/M = {pattern.sparsity:g} (leave sparsity out)")
        sparsity = pattern.sparsity
    elif sparsity is None:
        raise TypeError(f"prune_at_init({method!r}): give sparsity (or an N:M pattern)")
    sparsity = check_sparsity("sparsity", sparsity)
    if rounds is None:
        rounds = 100 if method == "synflow" else 1
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} is not allowed: it must be a positive int")
    check_choice("schedule", schedule, SCHEDULES)
    return method, sparsity, rounds


def _synflow_input(data: Any, input_shape: Sequence[int] | None, device: torch.device) -> Tensor:
    if input_shape is None:
        if data is None:
            raise ValueError("synflow needs input_shape=(C, H, W, ...) (one sample's shape, without the batch "
                             "dimension) or data to read it from")
        inputs, _ = collect_batches(data, 1)[0]
        return ones_input(tuple(inputs.shape[1:]), integer=not inputs.is_floating_point(), device=device)
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"input_shape={input_shape!r} is not allowed: it must be a tuple of positive ints "
                         "(one sample's shape, without the batch dimension)")
    integer = data is not None and not collect_batches(data, 1)[0][0].is_floating_point()
    return ones_input(shape, integer=integer, device=device)


def prune_at_init(
    model: nn.Module,
    method: str,
    sparsity: float | None = None,
    data: Any = None,
    *,
    scope: str | None = None,
    distribution: str | None = None,
    batches: int = 1,
    loss_fn: LossFn | None = None,
    rounds: int | None = None,
    schedule: str = "exponential",
    input_shape: Sequence[int] | None = None,
    temperature: float = GRASP_TEMPERATURE,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    sparsity_overrides: Mapping[str, float] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
    seed: int = 0,
    pattern: str | None = None,
) -> dict[str, Tensor]:
    """Masks chosen at initialisation, before any training (SNIP, GraSP, SynFlow, magnitude, random).

    * ``"snip"`` (Lee et al. 2019): keep the largest ``|g ⊙ w|``.
    * ``"grasp"`` (Wang et al. 2020): score ``-w ⊙ (H g)`` with logits / ``temperature``; remove the highest
      scores, i.e. keep the lowest.
    * ``"synflow"`` (Tanaka et al. 2020): data-free, ``|w ⊙ dR/dw|`` on the linearised double-precision copy
      with an all-ones input; iterative (default 100 rounds, ``d_k = d^(k/100)``).
    * ``"magnitude"``: keep the largest ``|w|`` at initialisation; ``"random"``: uniformly random scores.

    The data-driven scores (SNIP, GraSP) accumulate over ``batches`` minibatches of ``data`` and equal the
    scores of one batch holding them all. Forward passes run on a deep copy of the model in its current mode
    (a fresh module is in train mode; call ``model.eval()`` first to score in eval mode); SynFlow always runs in
    eval mode. The caller's model, its weights, buffers and gradients are never modified, and the global random
    generators are left as they were.

    Args:
        model: the network at initialisation.
        method: one of "snip", "grasp", "synflow", "magnitude", "random".
        sparsity: target sparsity over the selected tensors, in [0, 1) (with a pattern: ``1 - N/M``, may be left
            out).
        data: a ``DataLoader`` (or any iterable) of ``(inputs, targets)`` batches, or one such pair. Needed by
            SNIP and GraSP; SynFlow reads only the input shape and dtype from it (if ``input_shape`` is None).
        scope: "global" (default, as the papers: one ranking over all layers) or "layer" (top-k within each layer,
            counts from ``distribution``); a distribution given without a scope means "layer".
        distribution: per-layer allocation in the layer scope, "uniform" (default), "er" or "erk".
        batches: how many batches of ``data`` to score on.
        loss_fn: ``loss_fn(outputs, targets)`` with mean reduction; default cross-entropy.
        rounds: pruning rounds; default 100 for SynFlow, 1 (single shot) for the others.
        schedule: density schedule of the rounds, "exponential" (``d^(k/n)``) or "linear".
        input_shape: one sample's shape without the batch dimension, for SynFlow's all-ones input.
        temperature: GraSP's logit temperature (default 200, as the official code).
        include / exclude: parameter names or regexes, as :func:`sparsetrain.masks.select_prunable`.
        sparsity_overrides / dense_first / dense_last: pinned per-tensor sparsities, as the sparsifiers.
        seed: seeds the random scores and any randomness of the forward passes (dropout).
        pattern: ``"N:M"``: keep N of every M along each tensor's reduction dim (module docstring); scope and
            distribution may not be given then, and sparsity overrides may only pin tensors dense (0).

    Returns:
        name -> bool mask, keyed and ordered like ``select_prunable(model, include=..., exclude=...)``, each on
        its parameter's device. A tensor left with no weight is reported (logging and ``warnings.warn``).

    Raises:
        ValueError / TypeError: an argument is not allowed (the message names it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    nm = None if pattern is None else NMPattern.parse(check_pattern("pattern", pattern))
    method, sparsity, rounds = _check_args(method, sparsity, rounds, schedule, nm)
    if nm is not None and (scope is not None or distribution is not None):
        raise ValueError(f"prune_at_init({method!r}): scope={scope!r} / distribution={distribution!r} are not "
                         f"allowed with pattern='{nm}': every patterned tensor keeps N of every M (leave them out)")
    scope, distribution = resolve_scope(
        None if scope is None else check_scope(scope),
        None if distribution is None else check_distribution(distribution),
        default_scope="global", default_distribution="uniform")
    check_int("seed", seed)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} is not callable")
    selected = select_prunable(model, include=include, exclude=exclude)
    names = list(selected)
    fixed = resolve_overrides(names, sparsity_overrides, dense_first=dense_first, dense_last=dense_last)
    device = next(iter(selected.values())).device
    layouts = {} if nm is None else nm_layouts(model, selected, nm)
    if nm is not None:
        nm_budget(layouts, nm, fixed=fixed)  # refuses pinned sparsities other than 0 before any scoring

    score_round = _scorer(model, method, names, data, batches, loss_fn, input_shape, temperature, seed, device)
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in selected.items()}
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for k, density in enumerate(round_densities(1.0 - sparsity, rounds, schedule), start=1):
            # Pinned tensors follow the same schedule towards their own target.
            pinned = {n: 1.0 - (1.0 - s) ** (k / rounds) if schedule == "exponential" else s * k / rounds
                      for n, s in fixed.items()}
            keep = score_round(masks)
            for name, score in keep.items():
                if bool(torch.isnan(score).any()):
                    raise ValueError(f"{method}: the score of {name!r} has NaN entries (round {k}); check the "
                                     "model's output and the loss")
            keep = {name: keep[name].masked_fill(~masks[name], NEG_INF) for name in names}
            if nm is None:
                wanted = budget(keep, 1.0 - density, distribution=distribution, scope=scope, fixed=pinned)
            else:
                wanted = _round_budget(layouts, nm, density, fixed)
            masks = keep_top(keep, wanted, eligible=None if nm is None else masks)
            logger.debug("%s round %d/%d: density %.6f", method, k, rounds, density)
    warn_collapsed(masks, f"prune_at_init({method!r}, sparsity={sparsity})")
    logger.info("prune_at_init: %s, sparsity %.4f, %s, %d round(s)", method, sparsity,
                f"scope {scope}" if nm is None else f"pattern {nm}", rounds)
    return {name: masks[name].to(selected[name].device) for name in names}


def _round_budget(layouts: Mapping[str, Any], pattern: NMPattern, density: float,
                  fixed: Mapping[str, float]) -> Budget:
    """A round's N:M budget: ``N_k = max(N, ceil(M * density))`` of every M (no pruning while ``N_k = M``)."""
    n = max(pattern.n, math.ceil(pattern.m * density - 1e-9))
    if n >= pattern.m:
        return Budget({name: math.prod(layout.shape) for name, layout in layouts.items()})
    return nm_budget(layouts, NMPattern(n, pattern.m), fixed=fixed)


def _scorer(
    model: nn.Module,
    method: str,
    names: list[str],
    data: Any,
    batches: int,
    loss_fn: LossFn,
    input_shape: Sequence[int] | None,
    temperature: float,
    seed: int,
    device: torch.device,
) -> Callable[[Mapping[str, Tensor]], dict[str, Tensor]]:
    """A function from the current masks to keep-scores (higher = keep) for one round."""
    if method in ("magnitude", "random"):
        params = dict(model.named_parameters())  # read only: no copy needed
        generator = torch.Generator().manual_seed(seed)

        def plain(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
            if method == "magnitude":
                return {n: params[n].detach().abs().float() * masks[n] for n in names}
            return random_scores({n: params[n] for n in names}, generator)

        return plain

    net = copy.deepcopy(model)
    if method == "synflow":
        inputs = _synflow_input(data, input_shape, device)
        linearize(net)
    else:
        batch_list = collect_batches(data, batches, device)
    params = dict(net.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    originals = {name: params[name].detach().clone() for name in names}

    def flow(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            for name in names:
                params[name].copy_(originals[name] * masks[name])
        if method == "snip":
            return snip_scores(net, names, batch_list, loss_fn)
        if method == "grasp":
            return {n: -s for n, s in grasp_scores(net, names, batch_list, loss_fn, temperature=temperature).items()}
        return synflow_scores(net, names, inputs)

    return flow
