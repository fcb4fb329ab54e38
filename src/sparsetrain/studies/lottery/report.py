"""The lottery runs under a runs directory as rows for ``sparsetrain report`` and curves for ``sparsetrain plot``.

A lottery run is ``<runs_dir>/lottery-<hash>/seed_<n>/`` holding ``level_<k>`` directories (as written by
``sparsetrain lottery``); each finished level is one row: accuracy of the ticket and of its controls against the
fraction of weights remaining (:func:`~sparsetrain.studies.lottery.lottery_curve`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsetrain.reading import ReadError
from sparsetrain.tables import Column, render

from .results import lottery_curve, plot_curve

__all__ = ["LOTTERY_COLUMNS", "find_lottery_runs", "format_lottery_rows", "lottery_rows", "lottery_run_rows",
           "plot_lottery_runs"]

#: (column, description) in display order.
LOTTERY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "lottery run directory (lottery-<hash>/seed_<n>)"),
    ("level", "pruning level (0 = dense)"),
    ("remaining", "fraction of the pruned tensors' weights remaining"),
    ("ticket", "test accuracy of the ticket"),
    ("reinit", "test accuracy of the ticket's mask re-initialised"),
    ("random", "test accuracy of a random mask of the same per-layer sizes"),
)

logger = logging.getLogger(__name__)


def find_lottery_runs(runs_dir: str | Path) -> list[Path]:
    """Every ``lottery-*/seed_*`` directory under ``runs_dir`` with at least one ``level_*`` directory, sorted."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return [p for p in sorted(root.glob("lottery-*/seed_*"))
            if p.is_dir() and any(q.is_dir() for q in p.glob("level_*"))]


def lottery_run_rows(path: str | Path, metric: str = "final_acc") -> list[dict[str, Any]]:
    """One row per finished level of the lottery run in ``path`` (``<name>/seed_<n>``), keyed by
    :data:`LOTTERY_COLUMNS` (a control not run is None)."""
    path = Path(path)
    return [{"run": f"{path.parent.name}/{path.name}", "level": row["level"], "remaining": row["remaining"],
             "ticket": row["ticket"], "reinit": row["reinit"], "random": row["random"]}
            for row in lottery_curve(path, metric)]


def lottery_rows(runs_dir: str | Path, metric: str = "final_acc") -> list[dict[str, Any]]:
    """One row per finished level of every lottery run under ``runs_dir``.

    Args:
        runs_dir: the runs directory.
        metric: the summary key reported (default "final_acc", the test accuracy after the last epoch).

    Returns:
        Rows keyed by :data:`LOTTERY_COLUMNS` (a control not run is None), by run then level.
    """
    rows = []
    for path in find_lottery_runs(runs_dir):
        try:
            rows += lottery_run_rows(path, metric)
        except (ReadError, KeyError, TypeError, ZeroDivisionError) as exc:
            logger.warning("%s/%s skipped: %s", path.parent.name, path.name, exc)
    return rows


def format_lottery_rows(rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """Render :func:`lottery_rows` as an aligned text table, a markdown table or CSV (raw numbers).

    Args:
        rows: from :func:`lottery_rows`.
        fmt: "table", "markdown" or "csv".

    Returns:
        The text (no trailing newline for table/markdown).
    """
    columns = [Column(key, align="left" if key == "run" else "right",
                      format=(lambda v: f"{100 * v:.2f}%") if key == "remaining" else _accuracy)
               for key, _ in LOTTERY_COLUMNS]
    return render(columns, rows, fmt)


def _accuracy(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot_lottery_runs(runs_dir: str | Path, metric: str = "final_acc") -> list[Path]:
    """Write ``curve.png`` (ticket and controls against weights remaining) into every lottery run with a finished
    level; returns the written paths."""
    written = []
    for path in find_lottery_runs(runs_dir):
        try:
            rows = lottery_curve(path, metric)
        except (ReadError, KeyError, TypeError, ZeroDivisionError) as exc:
            logger.warning("%s/%s: curve.png not written: %s", path.parent.name, path.name, exc)
            continue
        if rows:
            written.append(plot_curve(rows, path / "curve.png",
                                      title=f"{path.parent.name}/{path.name}: ticket and controls"))
    return written
