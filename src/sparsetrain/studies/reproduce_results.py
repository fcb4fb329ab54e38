"""Reading the reproduction benchmark back: the finished cells of a setting, averaged over seeds.

:func:`collect` reads the harness summaries and IMP's lottery levels of a
:class:`~sparsetrain.studies.reproduce.ReproSetting` from its runs directory; :func:`aggregate` averages a cell over
its seeds. Training FLOPs are counted in *dense trainings of the recipe*: a run's training FLOPs (RigL's
accounting, :mod:`sparsetrain.analysis.flops`) divided by those of the dense model trained for the recipe's
epochs, so that a run trained longer (``rigl_3x``) and a lottery ticket (its level and every level before it,
L + 1 trainings) are counted with everything they cost.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.experiment import RunDir

from .lottery import level_dir, lottery_curve
from .reproduce import ReproSetting, grid_runs, imp_dir, imp_levels, run_config

__all__ = ["Cell", "collect", "aggregate"]


@dataclass
class Cell:
    """The seeds of one (benchmark, method, target sparsity) cell.

    Attributes:
        acc: final test accuracy per seed.
        sparsity: measured sparsity per seed.
        train_flops: training FLOPs per seed, in dense trainings of the recipe (see the module docstring).
        inf_flops: inference FLOPs as a fraction of the dense model's, per seed.
        itop: ITOP rate per seed.
    """

    acc: list[float] = field(default_factory=list)
    sparsity: list[float] = field(default_factory=list)
    train_flops: list[float] = field(default_factory=list)
    inf_flops: list[float] = field(default_factory=list)
    itop: list[float] = field(default_factory=list)


def _add(values: list[float], value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        values.append(float(value))


def _training_ratio(summary: dict[str, Any] | None) -> float | None:
    ratio = ((summary or {}).get("flops") or {}).get("training_ratio")
    return float(ratio) if isinstance(ratio, (int, float)) else None


def _imp_train_flops(where: Path, level: int) -> float | None:
    """Training FLOPs of the ticket of ``level``: levels 0 (the dense run) to ``level``, each one training."""
    total = 0.0
    for k in range(level + 1):
        path = level_dir(where, k) / "run" / "summary.json"
        if not path.exists():
            return None
        ratio = _training_ratio(json.loads(path.read_text()))
        if ratio is None:
            return None
        total += ratio
    return total


def collect(setting: ReproSetting, runs_dir: str | Path) -> dict[str, dict[tuple[str, float], Cell]]:
    """The finished cells of ``setting`` under ``runs_dir``: ``{benchmark key: {(method, sparsity): Cell}}``.

    Dense runs are stored under sparsity 0.0; IMP under each target sparsity (the level of
    :func:`~sparsetrain.studies.reproduce.imp_levels`), with its re-initialisation control as method "imp_reinit"
    (no training FLOPs: it needs the ticket's mask, so it costs what the ticket cost plus one training). Unfinished
    runs are left out.
    """
    results: dict[str, dict[tuple[str, float], Cell]] = {}
    levels = imp_levels(setting)
    for bench in setting.benchmarks:
        cells: dict[tuple[str, float], Cell] = defaultdict(Cell)
        for _, method, sparsity, seed in grid_runs(setting, bench):
            config = run_config(bench, setting, method, sparsity, seed)
            summary = RunDir.for_config(runs_dir, config).read_summary()
            if summary is None:
                continue
            cell = cells[(method, sparsity)]
            _add(cell.acc, summary.get("final_acc"))
            _add(cell.sparsity, summary.get("sparsity"))
            ratio = _training_ratio(summary)
            _add(cell.train_flops, None if ratio is None else ratio * config.train.epochs / setting.epochs)
            _add(cell.inf_flops, (summary.get("flops") or {}).get("inference_ratio"))
            _add(cell.itop, summary.get("itop_rate"))
        if "imp" in setting.methods:
            for seed in setting.seeds:
                where = imp_dir(runs_dir, bench, setting, seed)
                rows = {r["level"]: r for r in lottery_curve(where)} if where.is_dir() else {}
                for sparsity, level in levels.items():
                    row = rows.get(level)
                    if row is None:
                        continue
                    for method, key in (("imp", "ticket"), ("imp_reinit", "reinit")):
                        if row.get(key) is not None:
                            _add(cells[(method, sparsity)].acc, row[key])
                            _add(cells[(method, sparsity)].sparsity, 1.0 - row["remaining"])
                    if row.get("ticket") is not None:
                        _add(cells[("imp", sparsity)].train_flops, _imp_train_flops(where, level))
        results[bench.key] = dict(cells)
    return results


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(cell: Cell) -> dict[str, Any]:
    """Mean and sample standard deviation of a cell's accuracy; means of the other measures; ``n`` seeds."""
    mean, std = _mean_std(cell.acc)
    return {"n": len(cell.acc), "acc": mean, "acc_std": std, "sparsity": _mean_std(cell.sparsity)[0],
            "train_flops": _mean_std(cell.train_flops)[0], "inf_flops": _mean_std(cell.inf_flops)[0],
            "itop": _mean_std(cell.itop)[0]}
