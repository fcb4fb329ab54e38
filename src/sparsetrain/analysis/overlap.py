"""Mask overlap between two runs, seeds, methods or lottery rounds: IoU and Hamming distance per layer.

Used, for instance, by *Lottery Jackpots* (Chen et al. 2021) to compare searched masks with magnitude
masks, and by *Reinforcement Learning Finetunes Small Subnetworks in LLMs* (Mukherjee et al. 2025) to
compare the subnetworks updated by different runs. Masks are ``dict[str, torch.BoolTensor]`` keyed by
fully-qualified parameter name; ``masks_from_state_dict`` derives them from a checkpoint's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsetrain.analysis._common import check_bool_masks, check_same_layout, format_table

__all__ = ["OverlapRow", "OverlapReport", "mask_overlap", "masks_from_state_dict", "iou"]

logger = logging.getLogger(__name__)


def iou(intersection: int, union: int) -> float:
    """Intersection over union of two sets given their counts; 1.0 when both sets are empty.

    Two empty masks select the same (empty) set of weights, so they agree perfectly: IoU 1.0, not 0/0.

    Args:
        intersection: number of positions active in both masks.
        union: number of positions active in at least one mask.

    Returns:
        ``intersection / union``, or 1.0 when ``union == 0``.
    """
    if union < 0 or intersection < 0 or intersection > union:
        raise ValueError(f"need 0 <= intersection <= union, got intersection={intersection}, union={union}")
    return 1.0 if union == 0 else intersection / union


@dataclass(frozen=True)
class OverlapRow:
    """Overlap of one tensor's two masks (or of all tensors together, for the total row).

    Attributes:
        name: parameter name, or ``"total"``.
        numel: number of positions.
        active_a: active (True) positions in mask a.
        active_b: active positions in mask b.
        intersection: positions active in both.
        union: positions active in either.
        iou: ``intersection / union``; 1.0 when both masks are empty.
        hamming: positions where the masks differ (``union - intersection``).
        hamming_fraction: ``hamming / numel`` (0.0 for an empty tensor).
        random_iou: the IoU expected if the masks were independent and uniformly random with the same
            counts, as a ratio of expectations: ``E[I] = active_a * active_b / numel`` and
            ``random_iou = E[I] / (active_a + active_b - E[I])`` (1.0 when both are empty). A baseline:
            an observed ``iou`` well above it means the masks share more than chance.
    """

    name: str
    numel: int
    active_a: int
    active_b: int
    intersection: int
    union: int
    iou: float
    hamming: int
    hamming_fraction: float
    random_iou: float

    @classmethod
    def from_counts(cls, name: str, numel: int, active_a: int, active_b: int, intersection: int) -> OverlapRow:
        """Build a row from the four counts; the other fields are derived.

        Args:
            name: row name.
            numel: number of positions.
            active_a: active positions in mask a.
            active_b: active positions in mask b.
            intersection: positions active in both.

        Returns:
            The row.
        """
        union = active_a + active_b - intersection
        hamming = union - intersection
        if numel > 0:
            expected = active_a * active_b / numel
            denom = active_a + active_b - expected
            random_iou = 1.0 if denom == 0 else expected / denom
        else:
            random_iou = 1.0
        return cls(
            name=name,
            numel=numel,
            active_a=active_a,
            active_b=active_b,
            intersection=intersection,
            union=union,
            iou=iou(intersection, union),
            hamming=hamming,
            hamming_fraction=hamming / numel if numel else 0.0,
            random_iou=random_iou,
        )


@dataclass(frozen=True)
class OverlapReport:
    """Per-layer and total overlap of two mask dicts.

    Attributes:
        rows: one row per tensor, in the order of the first mask dict.
        total: all tensors pooled (counts summed, then IoU and fractions computed from the sums).
    """

    rows: list[OverlapRow] = field(default_factory=list)
    total: OverlapRow = field(default_factory=lambda: OverlapRow.from_counts("total", 0, 0, 0, 0))

    def by_name(self) -> dict[str, OverlapRow]:
        """Return the rows keyed by tensor name."""
        return {r.name: r for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict: ``{"rows": [...], "total": {...}}`` of plain numbers."""
        return {"rows": [asdict(r) for r in self.rows], "total": asdict(self.total)}

    def __str__(self) -> str:
        header = ["tensor", "numel", "active_a", "active_b", "inter", "union", "IoU", "random IoU", "hamming",
                  "ham. frac"]
        rows = [
            [r.name, r.numel, r.active_a, r.active_b, r.intersection, r.union, r.iou, r.random_iou, r.hamming,
             r.hamming_fraction]
            for r in [*self.rows, self.total]
        ]
        return format_table(header, rows)


def mask_overlap(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> OverlapReport:
    """Compare two mask dicts position by position: IoU, Hamming distance and counts, per layer and total.

    IoU of a tensor is ``|a ∧ b| / |a ∨ b|`` over its active (True) positions, defined as 1.0 when both
    masks are empty (they agree). The Hamming distance counts positions where the masks differ;
    ``hamming == union - intersection == union * (1 - iou)``. The total row pools all tensors.
    Tensors may live on any device (b is moved to a's device when they differ); only counts return
    to the host.

    Args:
        a: masks of the first run, ``{parameter name: bool tensor}``.
        b: masks of the second run, with exactly the same names and shapes.

    Returns:
        An :class:`OverlapReport`.

    Raises:
        TypeError: a value is not a bool tensor.
        ValueError: the two dicts hold different names, or a tensor's shapes differ (the message names it).
    """
    check_bool_masks(a, "a")
    check_bool_masks(b, "b")
    check_same_layout(a, b, "a", "b")
    rows = []
    for name, ma in a.items():
        mb = b[name].to(ma.device)
        counts = torch.stack([ma.sum(), mb.sum(), (ma & mb).sum()]).tolist()
        rows.append(OverlapRow.from_counts(name, ma.numel(), *counts))
    total = OverlapRow.from_counts(
        "total",
        sum(r.numel for r in rows),
        sum(r.active_a for r in rows),
        sum(r.active_b for r in rows),
        sum(r.intersection for r in rows),
    )
    return OverlapReport(rows=rows, total=total)


def masks_from_state_dict(
    state_dict: Mapping[str, Any], names: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """Derive masks (``weight != 0``) from a checkpoint's weights.

    Args:
        state_dict: a model's ``state_dict()`` (non-tensor entries are skipped when ``names`` is None).
        names: tensors to derive masks for. None: every floating-point tensor with at least 2 dims
            (the weights of Linear, Conv, Embedding, attention projections...; biases, norm parameters
            and integer buffers are left out).

    Returns:
        ``{name: bool tensor}`` on the tensors' own devices, in state-dict order (or the order of ``names``).

    Raises:
        ValueError: a requested name is missing from ``state_dict``.
        TypeError: a requested entry is not a tensor.
    """
    if names is None:
        selected = [
            k for k, v in state_dict.items()
            if isinstance(v, Tensor) and v.dim() >= 2 and (v.is_floating_point() or v.is_complex())
        ]
    else:
        if isinstance(names, str):
            raise TypeError(f"names must be an iterable of tensor names, not a single string {names!r}")
        selected = list(names)
        missing = [k for k in selected if k not in state_dict]
        if missing:
            raise ValueError(f"names not found in state_dict: {missing}")
        for k in selected:
            if not isinstance(state_dict[k], Tensor):
                raise TypeError(f"state_dict[{k!r}] must be a tensor, got {type(state_dict[k]).__name__}")
    masks = {k: state_dict[k] != 0 for k in selected}
    logger.debug("derived %d masks from a state dict of %d entries", len(masks), len(state_dict))
    return masks
