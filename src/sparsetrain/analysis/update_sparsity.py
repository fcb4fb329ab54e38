"""Update sparsity between two checkpoints of one model: what fraction of each tensor training changed.

From Mukherjee et al., *Reinforcement Learning Finetunes Small Subnetworks in Large Language Models*
(2025): between the weights before and after a (fine-)tuning run, measure per tensor the fraction of
entries that changed, the overlap of the changed subsets across runs (:func:`update_overlap`), and the
rank of each tensor's update ``after - before``. The paper counts an entry as updated when it differs
at all (bf16 checkpoints); ``atol`` lets you ignore changes up to an absolute tolerance instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsetrain.analysis._common import check_same_layout, format_table
from sparsetrain.analysis.overlap import OverlapReport, mask_overlap
from sparsetrain.validation import check_number

__all__ = [
    "UpdateRow",
    "UpdateSparsityReport",
    "changed_masks",
    "update_rank",
    "update_sparsity",
    "update_overlap",
]

logger = logging.getLogger(__name__)


def _select(before: Mapping[str, Any], after: Mapping[str, Any], names: Iterable[str] | None) -> list[str]:
    if names is None:
        check_same_layout(
            {k: v for k, v in before.items() if isinstance(v, Tensor)},
            {k: v for k, v in after.items() if isinstance(v, Tensor)},
            "before",
            "after",
        )
        return [k for k, v in before.items() if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex())]
    if isinstance(names, str):
        raise TypeError(f"names must be an iterable of tensor names, not a single string {names!r}")
    selected = list(names)
    for k in selected:
        for side, sd in (("before", before), ("after", after)):
            if k not in sd:
                raise ValueError(f"tensor {k!r} is missing from {side}")
            if not isinstance(sd[k], Tensor):
                raise TypeError(f"{side}[{k!r}] must be a tensor, got {type(sd[k]).__name__}")
        if before[k].shape != after[k].shape:
            raise ValueError(
                f"tensor {k!r} has shape {tuple(before[k].shape)} in before but {tuple(after[k].shape)} in after"
            )
    return selected


def _delta(before: Tensor, after: Tensor) -> Tensor:
    # Low-precision checkpoints: subtract in float32 so the difference itself is not rounded away.
    dtype = torch.promote_types(torch.promote_types(before.dtype, after.dtype), torch.float32)
    return after.to(dtype) - before.to(device=after.device, dtype=dtype)


def _changed(before: Tensor, after: Tensor, atol: float) -> Tensor:
    before = before.to(after.device)
    same = after == before  # equal infinities count as unchanged
    if atol > 0:
        same |= _delta(before, after).abs() <= atol
    return ~same  # NaN on either side counts as changed


def changed_masks(
    before: Mapping[str, Any], after: Mapping[str, Any], atol: float = 0.0, names: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """Return, per tensor, the bool mask of entries that changed between two checkpoints.

    An entry changed when ``after != before`` (``atol == 0``, exact), or when ``|after - before| > atol``;
    NaN on either side counts as changed, equal infinities as unchanged. ``-0.0 == 0.0``.

    Args:
        before: state dict before training.
        after: state dict after training, same model.
        atol: absolute tolerance; 0 compares exactly.
        names: tensors to compare. None: all floating-point tensors (weights, biases, norm parameters and
            float buffers such as running statistics); the two dicts must then hold the same tensor names.

    Returns:
        ``{name: bool tensor}`` on ``after``'s devices.

    Raises:
        ValueError: names or shapes differ (the message names the tensor), or ``atol`` is negative.
    """
    check_number("atol", atol, "[0, inf)", "it must be a finite number")
    return {k: _changed(before[k], after[k], float(atol)) for k in _select(before, after, names)}


def update_rank(
    before: Tensor, after: Tensor, atol: float | None = None, rtol: float | None = None
) -> int:
    """Rank of the update ``after - before`` of one tensor with at least 2 dims.

    A tensor with more than 2 dims (a convolution kernel ``(out, in, kh, kw)``) is reshaped to
    ``(shape[0], -1)``: rows are output units. The rank is :func:`torch.linalg.matrix_rank`, computed
    in float32 (float64 for float64 inputs) on the tensors' device.

    Args:
        before: the tensor before training.
        after: the tensor after training, same shape.
        atol: absolute singular-value tolerance, passed to ``matrix_rank``.
        rtol: relative singular-value tolerance, passed to ``matrix_rank``. With both None, torch's
            default ``rtol = eps * max(rows, cols)`` applies.

    Returns:
        The rank, between 0 and ``min(rows, cols)``.

    Raises:
        ValueError: the tensor has fewer than 2 dims or the shapes differ.
    """
    if before.shape != after.shape:
        raise ValueError(f"before has shape {tuple(before.shape)} but after has {tuple(after.shape)}")
    if after.dim() < 2:
        raise ValueError(f"update_rank needs a tensor with >= 2 dims, got shape {tuple(after.shape)}")
    delta = _delta(before, after).reshape(after.shape[0], -1)
    if delta.numel() == 0:
        return 0
    return int(torch.linalg.matrix_rank(delta, atol=atol, rtol=rtol).item())


@dataclass(frozen=True)
class UpdateRow:
    """Update statistics of one tensor (or of all compared tensors pooled, for the total row).

    Attributes:
        name: tensor name, or ``"total"``.
        shape: the tensor's shape (empty for the total row).
        numel: number of entries.
        changed: entries that changed.
        fraction_changed: ``changed / numel`` (0.0 for an empty tensor); the update sparsity is
            ``1 - fraction_changed``.
        rank: rank of the update (tensors with >= 2 dims when ranks were asked for), else None.
        full_rank: the largest possible rank, ``min(shape[0], numel // shape[0])``, when ``rank`` is set.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    changed: int
    fraction_changed: float
    rank: int | None = None
    full_rank: int | None = None


@dataclass(frozen=True)
class UpdateSparsityReport:
    """Per-tensor and total update statistics between two checkpoints.

    Attributes:
        rows: one row per compared tensor.
        total: all compared tensors pooled.
        changed_masks: ``{name: bool tensor}`` of changed entries (left out of :meth:`to_dict`).
        atol: the tolerance used.
    """

    rows: list[UpdateRow] = field(default_factory=list)
    total: UpdateRow = field(default_factory=lambda: UpdateRow("total", (), 0, 0, 0.0))
    changed_masks: dict[str, Tensor] = field(default_factory=dict, repr=False)
    atol: float = 0.0

    def by_name(self) -> dict[str, UpdateRow]:
        """Return the rows keyed by tensor name."""
        return {r.name: r for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict ``{"atol", "rows", "total"}`` (masks left out)."""
        def row(r: UpdateRow) -> dict[str, Any]:
            d = asdict(r)
            d["shape"] = list(r.shape)
            return d

        return {"atol": self.atol, "rows": [row(r) for r in self.rows], "total": row(self.total)}

    def __str__(self) -> str:
        header = ["tensor", "shape", "numel", "changed", "frac. changed", "rank", "full rank"]
        rows = [
            [r.name, "x".join(map(str, r.shape)) or "-", r.numel, r.changed, r.fraction_changed, r.rank, r.full_rank]
            for r in [*self.rows, self.total]
        ]
        return format_table(header, rows)


def update_sparsity(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    atol: float = 0.0,
    names: Iterable[str] | None = None,
    compute_rank: bool = True,
    rank_atol: float | None = None,
    rank_rtol: float | None = None,
) -> UpdateSparsityReport:
    """Measure how much of each tensor changed between two checkpoints of the same model.

    Follows Mukherjee et al. 2025 (*RL Finetunes Small Subnetworks in LLMs*): per tensor, the fraction
    of entries that changed (see :func:`changed_masks` for the exact rule) and the rank of the update
    (see :func:`update_rank`; >2-D tensors reshaped to ``(shape[0], -1)``).

    Args:
        before: state dict before training.
        after: state dict after training.
        atol: entries whose absolute change is ``<= atol`` count as unchanged; 0 compares exactly.
        names: tensors to compare; None: every floating-point tensor (the dicts must match).
        compute_rank: compute update ranks of tensors with >= 2 dims (an SVD each: the slow part).
        rank_atol: absolute tolerance for the rank.
        rank_rtol: relative tolerance for the rank (torch's default when both are None).

    Returns:
        An :class:`UpdateSparsityReport` holding the rows, the total, and the changed masks.

    Raises:
        ValueError: names or shapes differ (the message names the tensor) or ``atol`` is negative.
    """
    check_number("atol", atol, "[0, inf)", "it must be a finite number")
    masks = changed_masks(before, after, atol=atol, names=names)
    rows = []
    for name, mask in masks.items():
        a = after[name]
        rank = full = None
        if compute_rank and a.dim() >= 2:
            rank = update_rank(before[name], a, atol=rank_atol, rtol=rank_rtol)
            full = min(a.shape[0], a.numel() // a.shape[0]) if a.shape[0] else 0
        n_changed = int(mask.sum().item())
        rows.append(
            UpdateRow(
                name=name,
                shape=tuple(a.shape),
                numel=a.numel(),
                changed=n_changed,
                fraction_changed=n_changed / a.numel() if a.numel() else 0.0,
                rank=rank,
                full_rank=full,
            )
        )
    numel = sum(r.numel for r in rows)
    changed = sum(r.changed for r in rows)
    total = UpdateRow("total", (), numel, changed, changed / numel if numel else 0.0)
    logger.debug("update sparsity over %d tensors: %d of %d entries changed", len(rows), changed, numel)
    return UpdateSparsityReport(rows=rows, total=total, changed_masks=masks, atol=float(atol))


def update_overlap(
    changes_a: Mapping[str, Tensor] | UpdateSparsityReport,
    changes_b: Mapping[str, Tensor] | UpdateSparsityReport,
) -> OverlapReport:
    """Overlap (IoU, Hamming distance) of the changed subsets of two runs from the same start.

    Args:
        changes_a: changed masks of run a (from :func:`changed_masks`), or its report.
        changes_b: changed masks of run b, same names and shapes, or its report.

    Returns:
        An :class:`~sparsetrain.analysis.overlap.OverlapReport` whose "active" positions are changed entries.
        Compare each row's ``iou`` with its ``random_iou`` (the overlap two independent random subsets of
        the same sizes would have), as the paper does.

    Raises:
        ValueError: names or shapes differ.
    """
    a = changes_a.changed_masks if isinstance(changes_a, UpdateSparsityReport) else changes_a
    b = changes_b.changed_masks if isinstance(changes_b, UpdateSparsityReport) else changes_b
    return mask_overlap(a, b)
