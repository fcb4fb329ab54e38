"""N:M structured sparsity: the pattern, its groups per layer type, exact N:M masks and within-group drop-and-grow.

Under an N:M pattern every group of M consecutive weights along a weight's *reduction dimension* (the one a
matrix multiply sums over) keeps exactly N. 2:4 is what NVIDIA's sparse tensor cores run (Mishra et al. 2021,
*Accelerating Sparse Deep Neural Networks*; NVIDIA's ASP library), 1:4 / 2:8 / 4:8 appear in the N:M training
literature (Zhou et al., ICLR 2021, *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*).

**Patterns.** ``"N:M"`` with integers ``1 <= N < M``. M need not be a power of two: nothing here depends on it
(the compact export stores each kept position in ``ceil(log2 M)`` bits); only 2:4 is accelerated by hardware.

**Groups per layer type** (:func:`reduction_dim`):

========================================  =========================  ==============================================
layer                                     weight shape               groups run along
========================================  =========================  ==============================================
Linear, MultiheadAttention                ``[out, in]``              dim 1, ``in`` (``in_proj_weight`` and
(``in_proj_weight``, ``q/k/v_proj``)                                 ``q/k/v_proj_weight`` are Linear weights)
Conv1d/2d/3d (grouped, depthwise)         ``[out, in/groups, *k]``   dim 1, the input channels: for every output
                                                                     channel and kernel position, the in-channel
                                                                     vector is cut into groups (as NVIDIA's ASP and
                                                                     the SR-STE code do)
ConvTranspose1d/2d/3d                     ``[in, out/groups, *k]``   dim 0, its input channels (what it sums over)
RNN / LSTM / GRU ``weight_ih_l*``,        ``[gates*hidden, in]``     dim 1, the input (or hidden) features
``weight_hh_l*``
Embedding                                 ``[num, dim]``             dim 1, along each embedding vector (the
                                                                     reduction dim when the table is tied to an
                                                                     output layer; a lookup itself sums nothing)
any other tensor named by ``include=``    ``[d0, d1, ...]``          dim 1
========================================  =========================  ==============================================

**Layers that do not fit.** A tensor whose reduction dimension is not a multiple of M (the 3-channel first
convolution of an image model, a depthwise convolution with one input channel per group) is **kept dense**:
:func:`nm_layouts` marks it with the reason and :func:`nm_report` lists it. Padding the last group with
never-kept entries was the alternative; it was rejected because such a group would keep N of fewer than M real
weights (a different density), because NVIDIA's ASP skips such layers too, and because the layers concerned are
small.

**Ties.** Within a group, equal scores go to the lowest index along the reduction dimension, as the unstructured
masks of :mod:`sparsetrain.topk` go to the lowest flat index. Ranks come from element-wise comparisons only (no
sort), so the masks are the same on every device and every rank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .topk import topk_mask

__all__ = [
    "NMPattern",
    "check_pattern",
    "NMLayout",
    "NMLayerReport",
    "NMReport",
    "reduction_dim",
    "nm_layouts",
    "as_groups",
    "from_groups",
    "group_counts",
    "nm_mask",
    "nm_masks",
    "nm_drop_and_grow",
    "is_nm",
    "nm_report",
]

_PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


@dataclass(frozen=True)
class NMPattern:
    """An N:M pattern: every group of ``m`` consecutive weights keeps exactly ``n``.

    Build one with :meth:`parse` (``NMPattern.parse("2:4")``) or directly (``NMPattern(2, 4)``).

    Attributes:
        n: weights kept per group, ``1 <= n < m``.
        m: group size, ``m >= 2``.
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        for arg, value in (("n", self.n), ("m", self.m)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"pattern {arg} must be an int, got {value!r}")
        if not 1 <= self.n < self.m:
            raise ValueError(f"pattern {self.n}:{self.m}: N:M needs integers 1 <= N < M (e.g. 2:4)")

    @classmethod
    def parse(cls, value: NMPattern | str) -> NMPattern:
        """An :class:`NMPattern` from ``"N:M"`` (e.g. ``"2:4"``) or an existing pattern.

        Raises:
            ValueError: the string is not ``"N:M"`` with integers ``1 <= N < M``.
        """
        if isinstance(value, NMPattern):
            return value
        match = _PATTERN.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"pattern={value!r}: expected 'N:M' with integers 1 <= N < M, e.g. '2:4' or '1:4'")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def sparsity(self) -> float:
        """Fraction of a patterned tensor that is pruned: ``1 - n / m``."""
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def check_pattern(name: str, value: object) -> str:
    """Validate an option that names an N:M pattern; return it spelled ``"N:M"`` (``" 2 : 4"`` -> ``"2:4"``).

    Raises:
        ValueError: not ``"N:M"`` with integers ``1 <= N < M`` (the message names the option).
    """
    try:
        return str(NMPattern.parse(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not allowed: expected 'N:M' with integers 1 <= N < M, e.g. '2:4' or "
                         "'1:4'") from None


def reduction_dim(module: nn.Module, local_name: str) -> int:
    """The dimension of ``module``'s parameter ``local_name`` along which N:M groups run (table above).

    Args:
        module: the module owning the parameter.
        local_name: the parameter's name inside ``module`` (e.g. ``"weight"``, ``"weight_ih_l0"``).

    Returns:
        0 for transposed convolutions (their weight is ``[in, out/groups, *k]``), 1 for everything else.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and local_name == "weight":
        return 0
    return 1


@dataclass(frozen=True)
class NMLayout:
    """Where the pattern applies in one tensor.

    Attributes:
        name: the parameter's fully-qualified name.
        shape: its shape.
        dim: its reduction dimension (:func:`reduction_dim`).
        dense_reason: None when the tensor follows the pattern; otherwise why it is kept dense.
    """

    name: str
    shape: tuple[int, ...]
    dim: int
    dense_reason: str | None = None

    @property
    def patterned(self) -> bool:
        """True when the tensor follows the pattern (False: kept dense)."""
        return self.dense_reason is None


def _layout(name: str, shape: tuple[int, ...], dim: int, pattern: NMPattern) -> NMLayout:
    if len(shape) < 2:
        return NMLayout(name, shape, dim, f"{len(shape)}-D tensor: N:M groups need a reduction dimension")
    if shape[dim] % pattern.m:
        return NMLayout(name, shape, dim, f"reduction dim {dim} has size {shape[dim]}, not a multiple of "
                                          f"M={pattern.m}")
    return NMLayout(name, shape, dim)


def nm_layouts(model: nn.Module, params: Mapping[str, Tensor], pattern: NMPattern | str) -> dict[str, NMLayout]:
    """The N:M layout of every tensor to sparsify: its reduction dim, or why it is kept dense.

    Args:
        model: the model (a ``DistributedDataParallel`` / ``DataParallel`` wrapper is looked through).
        params: fully-qualified name -> parameter, e.g. from :func:`sparsetrain.masks.select_prunable`.
        pattern: the N:M pattern.

    Returns:
        name -> :class:`NMLayout`, in the order of ``params``.
    """
    pattern = NMPattern.parse(pattern)
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    layouts = {}
    for name, param in params.items():
        owner, _, local = name.rpartition(".")
        dim = reduction_dim(model.get_submodule(owner), local)
        layouts[name] = _layout(name, tuple(param.shape), dim, pattern)
    return layouts


def _check_groupable(shape: tuple[int, ...], dim: int, pattern: NMPattern) -> None:
    if len(shape) >= 2 and not -len(shape) <= dim < len(shape):
        raise ValueError(f"dim={dim} is out of range for a tensor of shape {shape}")
    layout = _layout("tensor", shape, dim, pattern)
    if not layout.patterned:
        raise ValueError(f"a tensor of shape {shape} cannot follow {pattern} along dim {dim}: {layout.dense_reason}")


def as_groups(t: Tensor, dim: int, m: int) -> Tensor:
    """``t`` as ``[groups, m]``: ``dim`` moved last and cut into runs of ``m`` consecutive entries.

    The one definition of the groups: row ``g`` holds, for one position of the other dims (in row-major
    order), the entries ``m*j .. m*j + m - 1`` along ``dim``. A view when ``dim`` is the last, contiguous dim.

    Args:
        t: a tensor whose size along ``dim`` is a multiple of ``m``.
        dim: the reduction dimension.
        m: the group size.

    Returns:
        A ``[numel / m, m]`` tensor.
    """
    return t.movedim(dim, -1).reshape(-1, m)


def from_groups(groups: Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    """Inverse of :func:`as_groups`: ``[groups, m]`` back to ``shape`` (contiguous).

    Args:
        groups: a ``[numel / m, m]`` tensor.
        shape: the original shape.
        dim: the reduction dimension used by :func:`as_groups`.

    Returns:
        A contiguous tensor of ``shape``.
    """
    moved = list(shape)
    moved.append(moved.pop(dim))
    return groups.reshape(moved).movedim(-1, dim).contiguous()


def _group_ranks(scores: Tensor, eligible: Tensor | None = None) -> Tensor:
    """Each entry's rank in its group (row of ``[groups, m]``), 0 = best: eligible first, then the higher score,
    then the lower index. Pure element-wise comparisons, so identical on every device; ``-0.0 == 0.0``.

    One comparison per pair of columns (``m (m - 1) / 2`` passes over a column, not ``m`` over the whole tensor):
    for ``j < i``, entry ``j`` beats entry ``i`` when it is eligible and ``i`` is not, or both are alike and
    ``s_j >= s_i`` (the lower index wins a tie); otherwise ``i`` beats ``j``. SR-STE ranks every weight at every
    step, so this is its hot loop.
    """
    m = scores.shape[1]
    dtype = torch.uint8 if m < 2**8 else torch.int32
    columns = scores.unbind(1)
    allowed = None if eligible is None else eligible.unbind(1)
    # rank_j starts at the number of later columns and loses one for each later column it beats
    ranks = [torch.full((scores.shape[0],), m - 1 - j, dtype=dtype, device=scores.device) for j in range(m)]
    for i in range(1, m):
        for j in range(i):
            beats = columns[j] >= columns[i]
            if allowed is not None:
                beats = (allowed[j] & ~allowed[i]) | ((allowed[j] == allowed[i]) & beats)
            won = beats.to(dtype)
            ranks[i] += won
            ranks[j] -= won
    return torch.stack(ranks, dim=1)


def _check_finite_order(scores: Tensor, what: str) -> None:
    # One reduction first (SR-STE checks every weight at every step): a sum is NaN whenever an entry is (and when
    # +inf meets -inf), and only then are the entries looked at.
    if scores.is_floating_point() and bool(torch.isnan(scores.sum())) and bool(torch.isnan(scores).any()):
        raise ValueError(f"{what} contain NaN: N:M ranks are undefined (did training diverge?)")


def group_counts(mask: Tensor, pattern: NMPattern | str, dim: int = 1) -> Tensor:
    """Number of True (or nonzero) entries in every N:M group of ``mask``.

    Args:
        mask: bool mask or any tensor (nonzero counts).
        pattern: the pattern (its M sets the group size).
        dim: the reduction dimension.

    Returns:
        1-D int64 tensor, one count per group, groups in the order of the tensor with ``dim`` moved last.
    """
    pattern = NMPattern.parse(pattern)
    _check_groupable(tuple(mask.shape), dim, pattern)
    return as_groups(mask != 0, dim, pattern.m).sum(dim=1)


def nm_mask(scores: Tensor, pattern: NMPattern | str, *, dim: int = 1, eligible: Tensor | None = None) -> Tensor:
    """Bool mask keeping the ``N`` highest-scoring entries of every group of ``M`` along ``dim``, exactly.

    Ties go to the lowest index in the group, so the result is deterministic and the same on every device.
    This is one-shot magnitude N:M pruning (NVIDIA's ASP, torch.ao's 2:4 sparsifier) when ``scores = |w|``.

    Args:
        scores: any-shaped floating tensor (no NaN); higher = more worth keeping. Any sign is allowed.
        pattern: the N:M pattern (``"2:4"`` or an :class:`NMPattern`).
        dim: the reduction dimension along which groups run (:func:`reduction_dim`); its size must be a
            multiple of M.
        eligible: optional bool tensor shaped like ``scores``; only eligible entries can be kept. A group with
            fewer than N eligible entries keeps all of them (and then has fewer than N: the pattern holds only
            where every group has at least N eligible entries).

    Returns:
        A bool tensor shaped like ``scores`` with exactly N True entries per group.

    Raises:
        ValueError: ``dim``'s size is not a multiple of M, or the scores contain NaN.
    """
    pattern = NMPattern.parse(pattern)
    shape = tuple(scores.shape)
    _check_groupable(shape, dim, pattern)
    _check_finite_order(scores, "scores")
    groups = as_groups(scores, dim, pattern.m)
    allowed = None if eligible is None else as_groups(eligible, dim, pattern.m)
    keep = _group_ranks(groups, allowed) < pattern.n
    if allowed is not None:
        keep &= allowed
    return from_groups(keep, shape, dim)


def nm_masks(
    scores: Mapping[str, Tensor], layouts: Mapping[str, NMLayout], pattern: NMPattern | str
) -> dict[str, Tensor]:
    """:func:`nm_mask` for every tensor: patterned tensors get N:M masks, the others all-True (kept dense).

    Args:
        scores: name -> score tensor (e.g. ``|w|`` for one-shot magnitude N:M).
        layouts: name -> :class:`NMLayout`, from :func:`nm_layouts`.
        pattern: the pattern.

    Returns:
        name -> bool mask.
    """
    return {
        name: nm_mask(score, pattern, dim=layouts[name].dim) if layouts[name].patterned
        else torch.ones_like(score, dtype=torch.bool)
        for name, score in scores.items()
    }


def nm_drop_and_grow(
    mask: Tensor,
    drop_scores: Tensor,
    grow_scores: Tensor,
    n_swap: int,
    pattern: NMPattern | str,
    *,
    dim: int = 1,
    per_group: bool = False,
    forbid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Drop-and-grow *within groups*: every group regrows as many weights as it dropped, so N:M holds after it.

    The N:M form of :func:`sparsetrain.topk.drop_and_grow` (SET, RigL and GraNet's regeneration under a
    pattern):

    1. Drop. ``per_group=True``: each group drops its ``n_swap`` active entries with the lowest drop score.
       ``per_group=False``: the tensor drops its ``n_swap`` active entries with the lowest drop score wherever
       they are (as RigL drops per layer; ties: the highest flat index is dropped), so groups drop 0..N each.
    2. Grow. Each group grows as many entries as it dropped, those with the highest grow score among its
       entries not kept in step 1 and not in ``forbid`` (an entry dropped in step 1 is a candidate unless
       forbidden, as in the unstructured version). Ties: the lowest index in the group.

    A group never drops more than it has growth candidates outside ``forbid`` before the update, so every group
    ends with exactly N whatever ``forbid`` is. ``n_swap`` is clamped to what can be swapped.

    Args:
        mask: current bool mask; must follow the pattern (exactly N per group along ``dim``).
        drop_scores: higher = more worth keeping (e.g. ``|w|``). With ``per_group=False`` they must be
            non-negative (they go through :func:`sparsetrain.topk.topk_mask`).
        grow_scores: higher = more worth growing (e.g. ``|grad|``, random numbers); any sign.
        n_swap: entries to drop and grow: per group (``per_group=True``) or for the whole tensor.
        pattern: the pattern ``mask`` follows.
        dim: the reduction dimension.
        per_group: whether ``n_swap`` counts per group or for the whole tensor.
        forbid: optional bool tensor of positions that may not grow (e.g. ``mask`` itself, so only weights
            inactive before the update can grow).

    Returns:
        ``(new_mask, kept)``: the new mask (exactly N per group) and the survivors of the drop. Grown entries
        are ``new_mask & ~kept``.

    Raises:
        ValueError: ``mask`` does not follow the pattern along ``dim``, or the scores contain NaN.
    """
    pattern = NMPattern.parse(pattern)
    n, m = pattern.n, pattern.m
    shape = tuple(mask.shape)
    counts = group_counts(mask, pattern, dim)
    if not bool((counts == n).all()):
        off = int((counts != n).sum())
        raise ValueError(f"mask does not follow {pattern} along dim {dim}: {off} of {counts.numel()} groups "
                         f"do not hold exactly {n}")
    _check_finite_order(drop_scores, "drop_scores")
    _check_finite_order(grow_scores, "grow_scores")
    active = as_groups(mask, dim, m)
    allowed = ~active if forbid is None else ~(active | as_groups(forbid, dim, m))
    # The most a group may drop: its candidates outside forbid before the update (all of N without forbid).
    cap = torch.clamp(allowed.sum(dim=1), max=n) if forbid is not None else torch.full_like(counts, n)
    n_swap = max(0, int(n_swap))
    drop_ranks = _group_ranks(as_groups(drop_scores, dim, m), active)  # active entries rank 0..N-1
    if per_group:
        dropped_per_group = torch.clamp(cap, max=n_swap)
        kept = drop_ranks < (n - dropped_per_group).unsqueeze(1)
    else:
        # Each group protects its best N - cap actives; the tensor drops its lowest n_swap among the rest.
        protected = drop_ranks < (n - cap).unsqueeze(1)
        droppable = active & ~protected
        n_droppable = int(droppable.sum())
        n_swap = min(n_swap, n_droppable)
        if n_swap == 0:
            return mask.clone(), mask.clone()
        survivors = topk_mask(drop_scores, n_droppable - n_swap, from_groups(droppable, shape, dim), n_droppable)
        kept = protected | (as_groups(survivors, dim, m) & droppable)
        dropped_per_group = n - kept.sum(dim=1)
    if not bool(dropped_per_group.any()):
        return mask.clone(), mask.clone()
    candidates = ~kept if forbid is None else ~kept & ~as_groups(forbid, dim, m)
    grown = (_group_ranks(as_groups(grow_scores, dim, m), candidates) < dropped_per_group.unsqueeze(1)) & candidates
    return from_groups(kept | grown, shape, dim), from_groups(kept, shape, dim)


def is_nm(mask: Tensor, pattern: NMPattern | str, dim: int = 1) -> bool:
    """Whether every group of M along ``dim`` holds exactly N True (or nonzero) entries.

    Args:
        mask: bool mask (or any tensor: nonzeros are counted).
        pattern: the pattern.
        dim: the reduction dimension.

    Returns:
        True when the tensor can be grouped and every group holds exactly N; False otherwise (including a
        reduction dim that is not a multiple of M).
    """
    pattern = NMPattern.parse(pattern)
    shape = tuple(mask.shape)
    if len(shape) < 2 or not -len(shape) <= dim < len(shape) or shape[dim] % pattern.m:
        return False
    return bool((as_groups(mask != 0, dim, pattern.m).sum(dim=1) == pattern.n).all())


@dataclass(frozen=True)
class NMLayerReport:
    """One tensor's row of an :class:`NMReport`.

    Attributes:
        layout: where the pattern applies (dim, or why the tensor is kept dense).
        groups: number of groups (0 for a tensor kept dense).
        groups_off: groups that do not hold exactly N (0 when the tensor follows the pattern).
        kept: True entries of the mask.
    """

    layout: NMLayout
    groups: int
    groups_off: int
    kept: int

    @property
    def status(self) -> str:
        """``"follows"``, ``"kept dense"`` or ``"violates"``."""
        if not self.layout.patterned:
            return "kept dense"
        return "follows" if self.groups_off == 0 else "violates"


@dataclass(frozen=True)
class NMReport:
    """Which tensors follow an N:M pattern and which were kept dense (and why); ``str()`` is a table."""

    pattern: NMPattern
    layers: list[NMLayerReport] = field(default_factory=list)

    @property
    def follows(self) -> bool:
        """True when every patterned tensor holds exactly N per group."""
        return all(layer.status != "violates" for layer in self.layers)

    @property
    def dense(self) -> list[str]:
        """Names of the tensors kept dense."""
        return [layer.layout.name for layer in self.layers if layer.status == "kept dense"]

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "pattern": str(self.pattern),
            "follows": self.follows,
            "layers": [
                {"name": l.layout.name, "shape": list(l.layout.shape), "dim": l.layout.dim, "status": l.status,
                 "groups": l.groups, "groups_off": l.groups_off, "kept": l.kept,
                 "dense_reason": l.layout.dense_reason}
                for l in self.layers
            ],
        }

    def __str__(self) -> str:
        rows = [(l.layout.name, "x".join(map(str, l.layout.shape)), str(l.layout.dim), f"{l.groups:,}",
                 l.status if l.status != "violates" else f"violates ({l.groups_off:,} groups off)",
                 l.layout.dense_reason or "") for l in self.layers]
        header = ("tensor", "shape", "dim", "groups", f"{self.pattern}", "note")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


@torch.no_grad()
def nm_report(
    masks: Mapping[str, Tensor], layouts: Mapping[str, NMLayout], pattern: NMPattern | str
) -> NMReport:
    """Check every mask against the pattern: which tensors follow it, which violate it, which are kept dense.

    Args:
        masks: name -> bool mask (or the weights themselves: nonzeros are counted, so a kept weight that is
            exactly zero shows as a group with fewer than N).
        layouts: name -> :class:`NMLayout` (:func:`nm_layouts`).
        pattern: the pattern.

    Returns:
        An :class:`NMReport`.
    """
    pattern = NMPattern.parse(pattern)
    rows = []
    for name, mask in masks.items():
        layout = layouts[name]
        kept = int(torch.count_nonzero(mask))
        if not layout.patterned:
            rows.append(NMLayerReport(layout, 0, 0, kept))
            continue
        counts = group_counts(mask, pattern, layout.dim)
        rows.append(NMLayerReport(layout, counts.numel(), int((counts != pattern.n).sum()), kept))
    return NMReport(pattern, rows)
