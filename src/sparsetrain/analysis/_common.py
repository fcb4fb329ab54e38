"""Shared helpers of the analysis tools: plain-text tables, and the argument checks of
:mod:`sparsetrain.validation` on tensor dicts.

Private to :mod:`sparsetrain.analysis`; the public modules re-validate nothing themselves beyond what
these helpers do, so the error messages read the same across tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsetrain.tables import Column, render
from sparsetrain.validation import check_bool_masks, check_same_layout

__all__ = ["check_bool_masks", "check_same_layout", "format_table"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != 0.0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render rows as a plain-text table (:func:`sparsetrain.tables.render`): first column left-aligned, the others
    right-aligned.

    Args:
        header: column titles.
        rows: one sequence of cells per row; floats get 4 decimals (or 4 significant digits when
            very large or small), ``None`` renders as ``-``.

    Returns:
        The table, lines joined by newlines, with a rule under the header.
    """
    columns = [Column(str(title), format=_cell, align="left" if i == 0 else "right") for i, title in enumerate(header)]
    return render(columns, rows)
