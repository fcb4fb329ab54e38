"""Shared helpers of the analysis tools: argument checks on tensor dicts and their plain-text tables.

Private to :mod:`sparsetrain.analysis`; the public modules re-validate nothing themselves beyond what
these helpers do, so the error messages read the same across tools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sparsetrain.tables import Column, render

__all__ = ["check_bool_masks", "check_same_layout", "format_table"]


def check_bool_masks(masks: Mapping[str, Tensor], argument: str) -> None:
    """Raise unless ``masks`` maps strings to bool tensors.

    Args:
        masks: the mask dict to check.
        argument: the argument's name, used in the error message.

    Raises:
        TypeError: a key is not a string, a value is not a tensor, or a tensor is not of dtype bool.
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"{argument} must be a mapping from parameter name to bool tensor, got {type(masks).__name__}")
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"{argument}: keys must be parameter names (str), got {name!r}")
        if not isinstance(mask, Tensor):
            raise TypeError(f"{argument}[{name!r}] must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(
                f"{argument}[{name!r}] must have dtype torch.bool, got {mask.dtype}; "
                "convert a 0/1 mask with `mask != 0`"
            )


def check_same_layout(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], name_a: str, name_b: str
) -> None:
    """Raise a ValueError unless ``a`` and ``b`` have the same keys and each pair the same shape.

    Args:
        a: first tensor dict.
        b: second tensor dict.
        name_a: name of the first argument, for messages.
        name_b: name of the second argument, for messages.

    Raises:
        ValueError: naming the tensors present on one side only, or the first tensor whose shapes differ.
    """
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    if only_a or only_b:
        raise ValueError(
            f"{name_a} and {name_b} must hold the same tensor names; "
            f"only in {name_a}: {only_a}; only in {name_b}: {only_b}"
        )
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(
                f"tensor {key!r} has shape {tuple(ta.shape)} in {name_a} but {tuple(tb.shape)} in {name_b}"
            )


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
