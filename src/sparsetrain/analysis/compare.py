"""Comparing two saved runs (``sparsetrain compare``): the overlap of their masks, or the update sparsity between
two checkpoints and the overlap of two such updates.

The sources are anything :mod:`sparsetrain.analysis.sources` reads (run and lottery level directories, masks,
checkpoints, state dicts). Tensors present in only one source are left out, with a note saying which.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.analysis.overlap import mask_overlap
from sparsetrain.analysis.sources import common_names, load_masks, load_weights
from sparsetrain.analysis.update_sparsity import update_overlap, update_sparsity

__all__ = ["Comparison", "compare_masks", "compare_updates"]


@dataclass
class Comparison:
    """Titled reports (each with ``to_dict()`` and a text table as ``str``) and notes on what was left out."""

    sections: list[tuple[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        """The reports' tables under their titles, then the notes."""
        return "\n\n".join(f"{t}\n{r}" for t, r in self.sections) + "".join(f"\nnote: {n}" for n in self.notes)

    def to_json(self) -> str:
        """``{"sections": [{"title": ..., **report}], "notes": [...]}``, indented."""
        return json.dumps({"sections": [{"title": t, **r.to_dict()} for t, r in self.sections], "notes": self.notes},
                          indent=2)


def compare_masks(a_path: str | Path, b_path: str | Path) -> Comparison:
    """The overlap (IoU, Hamming distance, random-mask IoU) of the masks of two sources, per layer and in total.

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: a source cannot be read, or the two share no mask of the same name and shape.
    """
    a, b = load_masks(a_path), load_masks(b_path)
    names, left = common_names(a, b)
    result = Comparison()
    if left:
        result.notes.append(f"tensors not in both (left out): {', '.join(left)}")
    if not names:
        raise ValueError(f"{a_path} and {b_path} share no mask of the same name and shape")
    result.sections.append((f"mask overlap: {a_path} vs {b_path}",
                            mask_overlap({n: a[n] for n in names}, {n: b[n] for n in names})))
    return result


def compare_updates(paths: Sequence[str | Path], *, atol: float = 0.0, rank: bool = True) -> Comparison:
    """The update sparsity from A (before) to B (after); with four paths also C -> D and the overlap of the two
    changed sets.

    Args:
        paths: ``[A, B]`` or ``[A, B, C, D]``.
        atol: an entry changed when ``|after - before| > atol``.
        rank: compute the rank of each update (one SVD per tensor).

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: a source cannot be read, or the tensors do not fit.
    """
    pairs = [paths[0:2]] + ([paths[2:4]] if len(paths) == 4 else [])
    result = Comparison()
    reports = []
    for before_path, after_path in pairs:
        before, after = load_weights(before_path), load_weights(after_path)
        names, left = common_names(before, after)
        names = [n for n in names if before[n].is_floating_point()]
        if left:
            result.notes.append(f"{before_path} -> {after_path}: tensors not in both (left out): {', '.join(left)}")
        report = update_sparsity(before, after, atol=atol, names=names, compute_rank=rank)
        reports.append(report)
        result.sections.append((f"update sparsity: {before_path} -> {after_path} (atol {atol:g})", report))
    if len(reports) == 2:
        shared, _ = common_names(reports[0].changed_masks, reports[1].changed_masks)
        result.sections.append((f"overlap of the changed entries: ({paths[0]} -> {paths[1]}) vs "
                                f"({paths[2]} -> {paths[3]})",
                                update_overlap({n: reports[0].changed_masks[n] for n in shared},
                                               {n: reports[1].changed_masks[n] for n in shared})))
    return result
