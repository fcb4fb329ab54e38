"""Pruning plasticity, the pure parts: the magnitude masks a dense network is pruned with, and the study's table
and plot (Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration*, NeurIPS 2021, §3).

The study that trains (a dense run, then one pruned branch per cell) is :mod:`sparsetrain.studies.plasticity`; its
rows are what :func:`format_plasticity` and :func:`plot_plasticity` show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsetrain.atomic import write_figure
from sparsetrain.selection import budget, check_scope, keep_top
from sparsetrain.tables import Column, render
from sparsetrain.validation import check_number

__all__ = ["PLASTICITY_COLUMNS", "check_rate", "magnitude_masks", "format_plasticity", "plot_plasticity"]

#: The keys of a study row, in table order (the CSV's columns).
PLASTICITY_COLUMNS = ("epoch", "step", "lr", "rate", "regeneration", "acc", "dense_acc", "drop", "diff", "sparsity")


def check_rate(rate: Any, name: str = "rate") -> float:
    """A pruning rate: a number in (0, 1).

    Raises:
        ValueError / TypeError: anything else (the message names ``name``).
    """
    return check_number(name, rate, "(0, 1)", "a pruning rate must be a number")


@torch.no_grad()
def magnitude_masks(params: Mapping[str, Tensor], rate: float, scope: str = "global") -> dict[str, Tensor]:
    """Masks that prune the fraction ``rate`` of the weights with the smallest magnitude, exact counts.

    Args:
        params: ``{name: weight}`` (e.g. :func:`sparsetrain.masks.select_prunable` of the model).
        rate: fraction to prune, in (0, 1).
        scope: "global" (one threshold over all tensors: ``round((1 - rate) * N)`` weights kept in total) or
            "layer" (each tensor keeps ``round((1 - rate) * n)`` of its own).

    Returns:
        ``{name: bool mask}`` on the weights' devices; ties are broken by the lowest index.

    Raises:
        ValueError: ``rate`` or ``scope`` is not allowed, or ``params`` is empty.
    """
    rate = check_rate(rate)
    scope = check_scope(scope)
    if not params:
        raise ValueError("params must hold at least one tensor, got none")
    magnitudes = {name: p.detach().abs() for name, p in params.items()}
    return keep_top(magnitudes, budget(magnitudes, rate, scope=scope))


def format_plasticity(rows: Sequence[Mapping[str, Any]], fmt: str = "markdown") -> str:
    """The rows as a markdown table (accuracies and drops in %) or CSV (raw numbers).

    Args:
        rows: the study rows (:meth:`sparsetrain.studies.PlasticityStudy.rows`).
        fmt: "markdown" or "csv".

    Returns:
        The text.
    """
    if fmt == "csv":
        return render(PLASTICITY_COLUMNS, rows, "csv")
    if fmt != "markdown":
        raise ValueError(f"fmt={fmt!r} is not allowed; choose 'markdown' or 'csv'")

    def percent(value: float) -> str:
        return f"{100 * value:.2f}"

    columns = [Column("epoch", "t (epoch)"), Column("lr", "lr after t", ".4g"), Column("rate", "r", "g"),
               Column("regeneration", format=lambda v: "yes" if v else "no", align="left"),
               Column("acc", "accuracy %", percent), Column("dense_acc", "dense %", percent),
               Column("drop", "relative change %", lambda v: f"{100 * v:+.2f}")]
    return render(columns, rows, "markdown")


def plot_plasticity(rows: Sequence[Mapping[str, Any]], path: str | Path, *, lr_decays: Sequence[float] = (),
                    title: str = "pruning plasticity") -> Path:
    """Relative accuracy change against t, one line per (r, regeneration), LR decays as vertical lines.

    Args:
        rows: the study rows (:meth:`sparsetrain.studies.PlasticityStudy.rows`).
        path: the PNG to write.
        lr_decays: epochs where the learning rate decays (:func:`lr_decay_epochs`).
        title: figure title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rates = sorted({r["rate"] for r in rows})
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, rate in enumerate(rates):
        for regen in (False, True):
            points = sorted((r["epoch"], 100 * r["drop"]) for r in rows
                            if r["rate"] == rate and r["regeneration"] == regen and r["drop"] is not None)
            if points:
                ax.plot(*zip(*points), "-" if regen else "--", marker="o" if regen else "s",
                        color=colors[i % len(colors)],
                        label=f"r = {rate:g}, {'with regeneration' if regen else 'fixed mask'}")
    for j, decay in enumerate(lr_decays):
        ax.axvline(decay, color="grey", linestyle=":", linewidth=1.5, label="LR decay" if j == 0 else None)
    ax.axhline(0.0, color="black", linewidth=0.8)
    epochs = sorted({r["epoch"] for r in rows})
    if epochs:  # integer epochs as ticks, with room around a single one (no 1.900-2.100 axis)
        ax.set_xticks(epochs if len(epochs) <= 12 else epochs[::-(-len(epochs) // 12)])
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.set(xlabel="t: epoch at which the dense network is pruned",
           ylabel="accuracy change vs dense, % (relative)", title=title)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return write_figure(fig, path)
