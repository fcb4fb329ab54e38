"""The table of runs: one row per finished run (or per experiment, averaged over seeds), as text, markdown or CSV.

Columns: run, method, N:M pattern, model, data, recipe, seed, target sparsity, the sparsity of the masks and the
fraction of weights exactly zero (the masked ones plus active weights that happen to be 0), final test accuracy, best accuracy
(the test accuracy at the epoch of best validation accuracy), the dense baseline's final test accuracy, the
inference and training FLOPs as fractions of dense (when the summary has them), the ITOP rate, steps and wall
time. Rows are grouped by recipe (the config without its sparse section): only the runs of one recipe compare.
:func:`layer_rows` gives one run's per-layer view: final density, ITOP rate and FLOPs beside dense.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.tables import FORMATS, Column, render

from .config import ConfigError
from .rundir import RunDir, dense_reference, find_runs, readable_summaries

__all__ = ["COLUMNS", "method_label", "collect_rows", "aggregate_rows", "format_rows", "FORMATS", "layer_rows",
           "format_layers", "format_results", "describe_sparsity"]

#: (column, description) in display order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run directory (<method>-<hash>)"),
    ("method", "sparse-training method"),
    ("pattern", "N:M pattern (- : unstructured; shown in tables only when some run has one)"),
    ("model", "model"),
    ("data", "dataset"),
    ("recipe", "hash of the recipe, the config without its sparse section (runs of one recipe compare)"),
    ("seed", "seed (or number of seeds when aggregated)"),
    ("target", "target sparsity"),
    ("masked", "sparsity of the final masks: the weights the method pruned"),
    ("sparsity", "fraction of the final weights exactly zero: the masked ones and active weights that are 0"),
    ("final_acc", "test accuracy after the last epoch"),
    ("best_acc", "test accuracy at the epoch of best validation accuracy"),
    ("dense_acc", "final test accuracy of the dense baseline with the same recipe"),
    ("inf_flops", "inference FLOPs / dense"),
    ("train_flops", "training FLOPs / dense"),
    ("itop", "ITOP rate: fraction of the sparsified weights ever active during the run"),
    ("steps", "optimizer steps"),
    ("time_s", "training wall time, seconds"),
)


def method_label(summary: Mapping[str, Any]) -> str:
    """A run's method as tables and plots name it: ``"rigl"``, or ``"rigl 2:4"`` under an N:M pattern."""
    pattern = summary.get("pattern")
    return f"{summary['method']} {pattern}" if pattern else str(summary["method"])


_TEXT_COLUMNS = ("run", "method", "pattern", "model", "data", "recipe")


def _row(run: RunDir, summary: Mapping[str, Any], runs_dir: Path) -> dict[str, Any]:
    dense = summary.get("dense")
    mask_sparsity = summary.get("mask_sparsity")
    if dense is None and summary.get("method") != "dense":
        try:
            dense = dense_reference(runs_dir, run.read_config())
        except ConfigError:
            dense = None
    if summary.get("method") == "dense":
        dense = {"final_acc": summary.get("final_acc")}
    flops = summary.get("flops") or {}
    return {
        "run": run.path.parent.name,
        "method": summary.get("method"),
        "pattern": summary.get("pattern"),
        "model": summary.get("model"),
        "data": summary.get("data"),
        "recipe": run.recipe(dict(summary)),
        "seed": summary.get("seed"),
        "target": summary.get("target_sparsity"),
        "masked": mask_sparsity if isinstance(mask_sparsity, (int, float)) else None,
        "sparsity": summary.get("sparsity"),
        "final_acc": summary.get("final_acc"),
        "best_acc": summary.get("best_acc"),
        "dense_acc": (dense or {}).get("final_acc"),
        "inf_flops": flops.get("inference_ratio"),
        "train_flops": flops.get("training_ratio"),
        "itop": summary.get("itop_rate"),
        "steps": summary.get("total_steps"),
        "time_s": summary.get("wall_time"),
    }


def collect_rows(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished run under ``runs_dir``, sorted by data, model, method, target sparsity, seed.

    Args:
        runs_dir: the runs directory.

    Returns:
        Rows keyed by the names in :data:`COLUMNS` (a run whose summary.json cannot be read is left out with a
        warning).
    """
    runs_dir = Path(runs_dir)
    rows = [_row(run, summary, runs_dir) for run, summary in readable_summaries(find_runs(runs_dir))]
    rows.sort(key=lambda r: (str(r["data"]), str(r["model"]), str(r["recipe"]), r["method"] != "dense",
                             str(r["method"]), r["target"] or 0.0, str(r["run"]), r["seed"] or 0))
    return rows


def aggregate_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average the rows of each experiment (same run name) over seeds; ``seed`` becomes the number of seeds.

    Accuracies get ``"_std"`` companions (0 for one seed).
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["run"]].append(row)
    result = []
    for name, members in groups.items():
        first = dict(members[0])
        first["seed"] = len(members)
        for key in ("masked", "sparsity", "final_acc", "best_acc", "dense_acc", "inf_flops", "train_flops", "itop",
                    "time_s"):
            values = [m[key] for m in members if m[key] is not None]
            first[key] = statistics.fmean(values) if values else None
            if key in ("final_acc", "best_acc"):
                first[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        result.append(first)
    return result


def _cell(key: str, row: Mapping[str, Any]) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key in ("final_acc", "best_acc") and f"{key}_std" in row and row.get("seed", 1) > 1:
        return f"{value:.4f}±{row[f'{key}_std']:.4f}"
    if key == "time_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_rows(rows: Sequence[Mapping[str, Any]], fmt: str = "table") -> str:
    """Render rows as an aligned text table, a markdown table, or CSV (raw numbers).

    Args:
        rows: from :func:`collect_rows` or :func:`aggregate_rows`.
        fmt: one of :data:`FORMATS`.

    Returns:
        The text (no trailing newline for table/markdown).
    """
    keys = [key for key, _ in COLUMNS]
    if fmt == "csv":
        extra = [k for k in ("final_acc_std", "best_acc_std") if any(k in r for r in rows)]
        return render(keys + extra, rows, fmt)
    if not any(row.get("pattern") for row in rows):  # the pattern column only when some run has one
        keys.remove("pattern")
    columns = [Column(k, align="left" if k in _TEXT_COLUMNS else "right") for k in keys]
    return render(columns, [[_cell(k, row) for k in keys] for row in rows], fmt)


#: (column, description) of the per-layer table.
LAYER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("layer", "sparsified parameter"),
    ("density", "final density measured from the weights"),
    ("itop", "fraction of the tensor's weights ever active"),
    ("inf_flops", "inference FLOPs per sample with the final masks"),
    ("inf_dense", "inference FLOPs per sample, dense"),
    ("train_flops", "training FLOPs of the whole run (RigL's accounting)"),
    ("train_dense", "training FLOPs of the whole run, dense"),
)


def layer_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per sparsified tensor of a finished run, and a "total" row, keyed by :data:`LAYER_COLUMNS`.

    Args:
        summary: the run's summary.json.

    Returns:
        Rows in the order of the run's sparsity report; values missing from the summary are None.
    """
    report = summary.get("layers") or {}
    itop = summary.get("itop_layers") or {}
    flops = summary.get("flops") or {}
    per_layer = flops.get("layers") or {}
    rows = []
    for layer in report.get("layers", []):
        name = layer["name"]
        f = per_layer.get(name, {})
        rows.append({"layer": name, "density": 1.0 - layer["sparsity"], "itop": itop.get(name),
                     "inf_flops": f.get("inference_sparse"), "inf_dense": f.get("inference_dense"),
                     "train_flops": f.get("training"), "train_dense": f.get("training_dense")})
    rows.append({"layer": "total", "density": 1.0 - report["sparsity"] if "sparsity" in report else None,
                 "itop": summary.get("itop_rate"), "inf_flops": flops.get("inference_sparse"),
                 "inf_dense": flops.get("inference_dense"), "train_flops": flops.get("training"),
                 "train_dense": flops.get("training_dense")})
    return rows


def format_layers(rows: Sequence[Mapping[str, Any]], fmt: str = "table") -> str:
    """Render :func:`layer_rows` as an aligned table, markdown or CSV (FLOPs in scientific notation).

    Args:
        rows: from :func:`layer_rows`.
        fmt: one of :data:`FORMATS`.

    Returns:
        The text.
    """
    def number(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)

    columns = [Column(key, align="left" if i == 0 else "right", format=".4f" if key in ("density", "itop") else number)
               for i, (key, _) in enumerate(LAYER_COLUMNS)]
    return render(columns, rows, fmt)


def describe_sparsity(summary: Mapping[str, Any]) -> str:
    """A run's sparsity as ``sparsity`` lines show it: the masks' sparsity and the target, and, when active weights
    that happen to be exactly 0 make the weights sparser than the masks, that count apart.

    E.g. ``0.9001 (target 0.90)`` or ``0.9001 (target 0.90; 0.9173 of the weights are 0: 0.0172 active weights are
    exactly 0)``.
    """
    masked = summary.get("mask_sparsity")
    measured = summary.get("sparsity")
    if not isinstance(masked, (int, float)):
        masked = measured
    target = summary.get("target_sparsity") or 0.0
    text = f"{masked:.4f} (target {target:.2f})" if isinstance(masked, (int, float)) else "-"
    if isinstance(masked, (int, float)) and isinstance(measured, (int, float)) and measured - masked >= 5e-5:
        text = f"{text[:-1]}; {measured:.4f} of the weights are 0: {measured - masked:.4f} active weights are exactly 0)"
    return text


def format_results(results: Sequence[Mapping[str, Any]], runs_dir: str | Path) -> str:
    """What ``sparsetrain train`` prints: a line per run, then each sparse run against its seed's dense run.

    Args:
        results: the summaries of the runs trained or found finished, in order.
        runs_dir: where they are (for the heading).

    Returns:
        The lines (no final newline).
    """
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"results (test accuracy; runs in {runs_dir}/):"]
    dense = {r.get("seed"): r for r in results if r.get("method") == "dense"}
    for r in results:
        lines.append(f"  {method_label(r):<8} sparsity {describe_sparsity(r)}  final {num(r.get('final_acc'))}  "
                     f"best {num(r.get('best_acc'))}  {r['wall_time']:.1f}s  {r['run']}")
    for r in results:
        if r.get("method") == "dense":
            continue
        ref = dense.get(r.get("seed")) or {}
        ref_acc = ref.get("final_acc", (r.get("dense") or {}).get("final_acc"))
        if ref_acc is not None and r.get("final_acc") is not None:
            lines.append(f"{method_label(r)} at {r['target_sparsity']:.0%} sparsity: {r['final_acc']:.4f} vs dense "
                         f"{ref_acc:.4f} ({r['final_acc'] - ref_acc:+.4f}), seed {r.get('seed')}")
    return "\n".join(lines)
