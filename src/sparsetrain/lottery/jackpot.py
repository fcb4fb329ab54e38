"""Lottery jackpots: a mask searched in a trained model without changing any weight (Chen et al., *Lottery
Jackpots Exist in Pre-trained Models*, 2021).

Every pruned tensor gets a learned score per weight, initialised from ``|w|`` (so the search starts at the
magnitude mask). The forward pass uses ``w ⊙ m`` with ``m`` the top-k of the scores; the backward pass treats
the mask as the identity of the scores (straight-through, as edge-popup: Ramanujan et al. 2020), so the score
of a weight gets ``dL/d(w ⊙ m) · w``. Only the scores are trained. The **short restriction** caps how many mask
entries may flip per step: after each score update the new top-k is compared with the current mask; the
entries to add (by score, highest first) are paired with the entries to remove (lowest first) within each
ranking pool, each pair's gain is the score difference, and only the ``max_changes_per_step // 2`` swaps with
the largest gains are applied (a swap flips two entries and keeps the count exact). Under an N:M pattern
(``pattern="2:4"``) the mask is the N:M top of the scores (:func:`sparsetrain.nm.nm_mask`) and swaps pair entries of
the same group, so every group keeps N.

The masked forward is ``torch.func.functional_call`` on a deep copy: the caller's model is never modified.
Deviations: the paper's schedule (cosine learning rate over epochs) is left to the caller's ``lr``/``steps``;
by default the search runs in eval mode (BatchNorm keeps its pre-trained statistics; ``train_mode=True`` for
batch statistics).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..batches import cycle_batches, model_output
from ..distributions import check_distribution
from ..masks import select_prunable, warn_collapsed
from ..nm import as_groups, check_pattern, nm_layouts
from ..selection import Groups, budget, check_scope, keep_top, nm_budget, resolve_scope
from ..topk import topk_mask
from ..validation import check_choice, check_int, check_number, check_sparsity

__all__ = ["find_jackpot", "restrict_changes", "mask_iou"]

logger = logging.getLogger(__name__)

#: Upper limit of a search's score-update steps: past it a value is a typo, not a search (it would run for ever).
MAX_JACKPOT_STEPS = 1_000_000


def mask_iou(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Intersection over union of the kept entries of two mask dicts, over all tensors together."""
    inter = sum(int(torch.count_nonzero(a[n] & b[n])) for n in a)
    union = sum(int(torch.count_nonzero(a[n] | b[n])) for n in a)
    return inter / union if union else 1.0


def _pools(names: list[str], scope: str) -> list[list[str]]:
    return [names] if scope == "global" else [[name] for name in names]


@torch.no_grad()
def restrict_changes(
    current: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    scores: Mapping[str, Tensor],
    max_changes: int | None,
    pools: list[list[str]] | None = None,
    groups: Mapping[str, Groups] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Move ``current`` towards ``target`` by at most ``max_changes`` flipped entries (the short restriction).

    Within each pool (a list of tensor names ranked together; default one pool per tensor), entries to add are
    sorted by score (highest first) and entries to remove by score (lowest first) and paired in that order; the
    ``max_changes // 2`` pairs with the largest score gain over all pools are swapped. Every pool keeps its count.

    Args:
        current / target: name -> bool masks with equal counts per pool.
        scores: name -> learned scores.
        max_changes: entries that may flip (None: no limit, the result is ``target``).
        pools: the ranking pools.
        groups: name -> N:M :class:`~sparsetrain.selection.Groups` of a one-tensor pool: its entries are paired
            within each group (the masks keep N per group).

    Returns:
        ``(new_masks, flipped)`` with ``flipped`` the number of entries that changed.
    """
    names = list(current)
    pools = pools if pools is not None else [[name] for name in names]
    if max_changes is None:
        flipped = sum(int(torch.count_nonzero(current[n] ^ target[n])) for n in names)
        return {n: target[n].clone() for n in names}, flipped
    gains, where = [], []
    for pool_index, pool in enumerate(pools):
        cur = torch.cat([current[n].reshape(-1) for n in pool])
        tgt = torch.cat([target[n].reshape(-1) for n in pool])
        score = torch.cat([scores[n].reshape(-1) for n in pool]).float()
        add = (tgt & ~cur).nonzero().squeeze(1)
        remove = (cur & ~tgt).nonzero().squeeze(1)
        if add.numel() != remove.numel():
            raise ValueError(f"pool {pool}: target adds {add.numel()} entries but removes {remove.numel()}")
        if add.numel() == 0:
            continue
        add = add[score[add].argsort(descending=True, stable=True)]
        remove = remove[score[remove].argsort(stable=True)]
        if groups is not None and len(pool) == 1 and pool[0] in groups:
            group_of = _group_ids(current[pool[0]].shape, groups[pool[0]])
            add = add[group_of[add].argsort(stable=True)]  # each group's adds and removes, in score order
            remove = remove[group_of[remove].argsort(stable=True)]
        gains.append(score[add] - score[remove])
        where.extend((pool_index, a, r) for a, r in zip(add.tolist(), remove.tolist(), strict=True))
    new = {n: current[n].clone() for n in names}
    if not gains:
        return new, 0
    all_gains = torch.cat(gains)
    chosen = topk_mask(all_gains, max_changes // 2).nonzero().squeeze(1).tolist()
    flat = {n: new[n].view(-1) for n in names}
    for index in chosen:
        pool_index, add, remove = where[index]
        pool = pools[pool_index]
        for position, value in ((add, True), (remove, False)):
            for name in pool:
                size = flat[name].numel()
                if position < size:
                    flat[name][position] = value
                    break
                position -= size
    return new, 2 * len(chosen)


def _group_ids(shape: torch.Size, groups: Groups) -> Tensor:
    """The N:M group of every flat position of a tensor of ``shape`` (:func:`sparsetrain.nm.as_groups`'s rows)."""
    positions = as_groups(torch.arange(shape.numel()).reshape(shape), groups.dim, groups.pattern.m)
    group_of = torch.empty(shape.numel(), dtype=torch.long)
    group_of[positions.reshape(-1)] = torch.arange(positions.shape[0]).repeat_interleave(groups.pattern.m)
    return group_of


def _masked_eval(net: nn.Module, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], data: Any,
                 loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
    was_training = net.training
    net.eval()
    masked = {n: weights[n] * masks[n] for n in masks}
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for inputs, targets, *_ in data:
            inputs, targets = inputs.to(_device(weights)), targets.to(_device(weights))
            out = model_output(_Call(net, masked), inputs)
            n = int(targets.numel())
            total += float(loss_fn(out.reshape(n, -1), targets.reshape(-1))) * n
            correct += int((out.reshape(n, -1).argmax(-1) == targets.reshape(-1)).sum())
            count += n
    net.train(was_training)
    return {"loss": total / max(count, 1), "accuracy": correct / max(count, 1)}


def _device(weights: Mapping[str, Tensor]) -> torch.device:
    return next(iter(weights.values())).device


class _Call(nn.Module):
    """``net`` called with some parameters replaced (``functional_call``), as a module for ``model_output``."""

    def __init__(self, net: nn.Module, replaced: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.net = net
        self.replaced = dict(replaced)

    def forward(self, inputs: Tensor) -> Any:
        return functional_call(self.net, self.replaced, (inputs,))


def _batches(data: Any) -> Iterable[Any]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return [tuple(data)]
    return data


def find_jackpot(
    model: nn.Module,
    sparsity: float | None,
    data: Any,
    *,
    steps: int = 100,
    lr: float = 0.1,
    max_changes_per_step: int | None = None,
    distribution: str | None = None,
    scope: str | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    eval_data: Any = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    train_mode: bool = False,
    seed: int = 0,
    pattern: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Search a mask at ``sparsity`` in a trained model without updating any weight (Chen et al. 2021).

    Args:
        model: the trained network (never modified).
        sparsity: target sparsity of the selected tensors, in [0, 1).
        data: ``(inputs, targets)`` batches for the search (cycled for ``steps`` steps), or one pair.
        steps: score-update steps.
        lr: learning rate of the scores.
        max_changes_per_step: the short restriction: at most this many mask entries flip per step
            (``// 2`` swaps); None: no restriction (plain edge-popup top-k).
        distribution: per-tensor counts in the layer scope: "uniform" (default: every tensor at ``sparsity``, as
            edge-popup), "er" or "erk".
        scope: "layer" (default: each tensor ranked on its own) or "global" (one ranking over all tensors, and
            the short restriction counted over all of them).
        optimizer: "sgd" (with ``momentum``) or "adam", over the scores only.
        momentum: SGD momentum.
        eval_data: batches for the before/after accuracy (default: ``data``).
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy.
        include / exclude: which tensors are masked, as :func:`sparsetrain.masks.select_prunable`.
        train_mode: run the search forward passes in train mode (default eval: pre-trained BN statistics).
        seed: seeds the randomness of the forward passes (dropout in train mode).
        pattern: ``"N:M"``: search an N:M mask (N of every M along each tensor's reduction dim; ``sparsity``
            1 - N/M, may be passed as None; no scope or distribution); tensors that cannot follow it stay dense.

    Returns:
        ``(masks, info)``: name -> bool mask (keyed like ``select_prunable``), and ``info`` with
        ``accuracy_before`` / ``loss_before`` (the magnitude mask at ``sparsity``), ``accuracy_after`` /
        ``loss_after`` (the jackpot), ``iou_with_magnitude``, ``changes_per_step`` (entries flipped at each
        step), ``steps``, ``scope`` and ``distribution`` (as used) and ``scores`` (name -> the learned scores).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pattern is not None:
        pattern = check_pattern("pattern", pattern)
        if scope is not None or distribution is not None:
            raise ValueError(f"find_jackpot: scope={scope!r} / distribution={distribution!r} are not allowed with "
                             f"pattern={pattern!r}: every patterned tensor keeps N of every M (leave them out)")
        n, m = map(int, pattern.split(":"))
        if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-9:
            raise ValueError(f"find_jackpot: sparsity={sparsity!r} is not allowed with pattern={pattern!r}: its "
                             f"sparsity is 1 - N/M = {1 - n / m:g}")
        sparsity = 1 - n / m
    check_sparsity("sparsity", sparsity)
    check_int("steps", steps, 0)
    if steps > MAX_JACKPOT_STEPS:
        raise ValueError(f"steps={steps} is not allowed: at most {MAX_JACKPOT_STEPS} score-update steps")
    check_number("lr", lr, "(0, inf)")
    if max_changes_per_step is not None:
        check_int("max_changes_per_step", max_changes_per_step, 0)
    check_choice("optimizer", optimizer, ("sgd", "adam"))
    scope, distribution = resolve_scope(
        None if scope is None else check_scope(scope),
        None if distribution is None else check_distribution(distribution),
        default_scope="layer", default_distribution="uniform")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if data is None:
        raise ValueError("data=None: the search needs (inputs, targets) batches")

    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    selected = select_prunable(net, include=include, exclude=exclude)
    names = list(selected)
    params = dict(net.named_parameters())
    weights = {n: params[n].detach() for n in names}
    scores = {n: weights[n].abs().float().clone().requires_grad_(True) for n in names}
    pools = _pools(names, scope)
    if pattern is None:
        wanted = budget(scores, float(sparsity), distribution=distribution, scope=scope)
    else:
        wanted = nm_budget(nm_layouts(net, selected, pattern), pattern)
    magnitude = keep_top({n: s.detach() for n, s in scores.items()}, wanted)
    masks = {n: m.clone() for n, m in magnitude.items()}
    eval_batches = _batches(data if eval_data is None else eval_data)
    before = _masked_eval(net, weights, magnitude, eval_batches, loss_fn)

    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(list(scores.values()), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(list(scores.values()), lr=lr)
    net.train(train_mode)
    batches = cycle_batches(_batches(data))
    changes: list[int] = []
    device = _device(weights)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for _ in range(steps):
            inputs, targets, *_ = next(batches)
            inputs, targets = inputs.to(device), targets.to(device)
            # Straight-through: the value is w * m, the gradient reaches the scores as if m were the scores.
            effective = {n: weights[n] * (masks[n].to(weights[n].dtype) + (s - s.detach()).to(weights[n].dtype))
                         for n, s in scores.items()}
            loss = loss_fn(model_output(_Call(net, effective), inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            target = keep_top({n: s.detach() for n, s in scores.items()}, wanted)
            masks, flipped = restrict_changes(masks, target, {n: s.detach() for n, s in scores.items()},
                                              max_changes_per_step, pools, wanted.groups)
            changes.append(flipped)
    after = _masked_eval(net, weights, masks, eval_batches, loss_fn)
    warn_collapsed(masks, f"find_jackpot(sparsity={sparsity})")
    info = {
        "accuracy_before": before["accuracy"], "loss_before": before["loss"],
        "accuracy_after": after["accuracy"], "loss_after": after["loss"],
        "iou_with_magnitude": mask_iou(masks, magnitude), "changes_per_step": changes, "steps": steps,
        "scope": scope, "distribution": distribution, "pattern": pattern,
        "scores": {n: s.detach().clone() for n, s in scores.items()},
    }
    logger.info("find_jackpot: accuracy %.4f -> %.4f, IoU with the magnitude mask %.4f", before["accuracy"],
                after["accuracy"], info["iou_with_magnitude"])
    return masks, info
