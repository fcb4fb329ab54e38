"""Reading a lottery run back: accuracy (or any metric) against the fraction of weights remaining, for the
ticket and its controls, as rows, a markdown table, or a plot.

A level counts once its ticket's run has finished: ``level_<L>/sparsity.json`` (the ticket's size) and
``level_<L>/run/summary.json``; its controls are read from ``reinit/summary.json`` and ``random/summary.json``
(see :mod:`.runner` for the layout). The metric is a key of a run's summary (default ``final_acc``, the test
accuracy after the last epoch).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sparsetrain.atomic import write_figure
from sparsetrain.reading import ReadError, read_json
from sparsetrain.tables import Column, render

__all__ = ["lottery_curve", "curve_table", "plot_curve"]

_LEVEL = re.compile(r"level_(\d+)$")


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    value = read_json(path)
    if not isinstance(value, dict):
        raise ReadError(f"{path}: a JSON {type(value).__name__}, expected an object")
    return value


def lottery_curve(run_dir: str | os.PathLike[str], metric: str = "final_acc") -> list[dict[str, Any]]:
    """One row per level whose ticket finished training, in level order.

    Args:
        run_dir: a directory written by :func:`~sparsetrain.studies.lottery.run_lottery`.
        metric: the summary key to report (default "final_acc": the test accuracy after the last epoch).

    Returns:
        Rows ``{"level", "remaining" (fraction of pruned-tensor weights kept), "kept", "numel", "ticket",
        "reinit", "random"}``; a control that was not run (or not finished) is None, as is a metric the
        summary does not hold.

    Raises:
        ReadError: a level's summary.json or sparsity.json cannot be read.
    """
    rows = []
    levels = sorted((int(m.group(1)), p) for p in Path(run_dir).iterdir() if (m := _LEVEL.match(p.name)))
    for level, path in levels:
        metrics = _read(path / "run" / "summary.json")
        report = _read(path / "sparsity.json")
        if metrics is None or report is None:
            continue
        row: dict[str, Any] = {
            "level": level,
            "remaining": report["nonzeros"] / report["numel"],
            "kept": report["nonzeros"],
            "numel": report["numel"],
            "ticket": metrics.get(metric),
        }
        for control in ("reinit", "random"):
            found = _read(path / control / "summary.json")
            row[control] = None if found is None else found.get(metric)
        rows.append(row)
    return rows


def curve_table(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """A markdown table of :func:`lottery_curve` rows."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    columns = [Column("level"), Column("remaining", "weights remaining", lambda v: f"{100 * v:.2f}%"),
               *(Column(key, f"{title} {metric}", cell, missing="—")
                 for key, title in (("ticket", "ticket"), ("reinit", "reinit"), ("random", "random-mask")))]
    return render(columns, rows, "markdown")


def plot_curve(rows: list[dict[str, Any]], path: str | os.PathLike[str], metric: str = "accuracy", *,
               title: str = "") -> Path:
    """A PNG of the metric against weights remaining (log scale, decreasing), ticket and controls.

    The x ticks are the levels' own percentages, written out (``51.2``, not ``5x10^1``).

    Args:
        rows: from :func:`lottery_curve`.
        path: the PNG to write.
        metric: the metrics key plotted.
        title: the figure's title (default: what is plotted).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for key, style in (("ticket", "o-"), ("reinit", "s--"), ("random", "^:")):
        points = [(100 * r["remaining"], r[key]) for r in rows if r[key] is not None]
        if points:
            ax.plot(*zip(*points), style, label=key)
    ax.set_xscale("log")
    ticks = sorted({100 * r["remaining"] for r in rows}, reverse=True)
    ticks = ticks[::max(1, -(-len(ticks) // 8))]  # at most 8 labels
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"lottery ticket and controls: {metric} vs weights remaining", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return write_figure(fig, path, dpi=120)
