"""Writing the reproduction benchmark's report: mean ± std tables, accuracy-vs-sparsity plots, the verdicts, the
plasticity study.

The cells come from :mod:`.reproduce_results` (:func:`~.reproduce_results.collect`), the claims and like-with-like
comparisons from :mod:`.reproduce_verdicts`; :func:`write_report` writes everything to a results directory.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sparsetrain.analysis.plasticity import (
    contrast_plasticity,
    format_contrast,
    format_plasticity,
    plot_plasticity,
)
from sparsetrain.analysis.significance import SIGNIFICANCE_RULE
from sparsetrain.atomic import write_figure, write_json, write_text
from sparsetrain.experiment import RunDir
from sparsetrain.tables import Column, render

from .plasticity import GRANET_UPDATE_FRACTION, lr_decay_epochs
from .reproduce import (
    LONGER,
    METHOD_LABELS,
    ReproSetting,
    grid_runs,
    imp_levels,
    imp_rate,
    plasticity_studies,
    run_config,
)
from .reproduce_results import Cell, aggregate, collect
from .reproduce_verdicts import (
    AT_INIT,
    FAMILIES,
    check_claims,
    family_table,
    pairwise_table,
)

__all__ = ["accuracy_table", "cost_table", "csv_table", "plot_benchmark", "write_report", "record_invocation",
           "machine_info"]


def _methods_in_order(setting: ReproSetting) -> list[str]:
    methods = [m for m in METHOD_LABELS if m in setting.methods]
    if "imp" in methods:
        methods.insert(methods.index("imp") + 1, "imp_reinit")
    return methods


def _label(method: str) -> str:
    return "IMP random re-init (same mask)" if method == "imp_reinit" else method


def accuracy_table(setting: ReproSetting, cells: Mapping[tuple[str, float], Cell]) -> str:
    """Markdown: one row per method, one column per sparsity, final test accuracy in % as mean ± std (n seeds).

    IMP cells carry their measured sparsity, since its levels only approximate the targets.
    """
    columns = [Column("method", align="left"), *(Column(f"{100 * s:g}% sparsity") for s in setting.sparsities)]
    rows = []
    dense = aggregate(cells[("dense", 0.0)]) if ("dense", 0.0) in cells else None
    for method in _methods_in_order(setting):
        cols = []
        for s in setting.sparsities:
            cell = cells.get(("dense", 0.0) if method == "dense" else (method, s))
            if cell is None or not cell.acc:
                cols.append("-")
                continue
            agg = aggregate(cell)
            text = f"{100 * agg['acc']:.2f} ± {100 * agg['acc_std']:.2f}"
            if agg["n"] != len(setting.seeds):
                text += f" (n={agg['n']})"
            if method.startswith("imp") and agg["sparsity"] is not None:
                text += f" @{100 * agg['sparsity']:.1f}%"
            cols.append(text)
        rows.append([_label(method), *cols])
    table = render(columns, rows, "markdown")
    return table if dense is not None else table + "\n\n(no finished dense run)"


def cost_table(setting: ReproSetting, cells: Mapping[tuple[str, float], Cell]) -> str:
    """Markdown: training FLOPs (in dense trainings of the recipe), inference FLOPs (a fraction of dense) and the
    ITOP rate, per sparsity."""
    columns = [Column("method", align="left"),
               *(Column(f"{100 * s:g}%: train FLOPs / inf. FLOPs / ITOP") for s in setting.sparsities)]
    rows = []

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for method in _methods_in_order(setting):
        if method in ("dense", "imp_reinit"):
            continue
        cols = []
        for s in setting.sparsities:
            cell = cells.get((method, s))
            if cell is None or not cell.acc:
                cols.append("-")
                continue
            agg = aggregate(cell)
            cols.append(f"{num(agg['train_flops'])} / {num(agg['inf_flops'])} / {num(agg['itop'])}")
        rows.append([method, *cols])
    return render(columns, rows, "markdown")


def csv_table(setting: ReproSetting, results: Mapping[str, Mapping[tuple[str, float], Cell]]) -> str:
    """CSV of every aggregated cell: benchmark, method, target and measured sparsity, n, accuracy mean and std,
    training FLOPs (dense trainings of the recipe), inference FLOPs / dense, ITOP."""
    columns = ["benchmark", "method", "target_sparsity", "sparsity", "n", "acc_mean", "acc_std", "train_flops",
               "inf_flops_ratio", "itop"]
    rows = []
    for bench in setting.benchmarks:
        cells = results.get(bench.key, {})
        for (method, target), cell in sorted(cells.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1])):
            agg = aggregate(cell)
            rows.append([bench.key, method, target, *(agg[k] for k in ("sparsity", "n", "acc", "acc_std",
                                                                       "train_flops", "inf_flops", "itop"))])
    return render(columns, rows, "csv")


def _order(method: str) -> int:
    keys = list(METHOD_LABELS) + ["imp_reinit"]
    return keys.index(method) if method in keys else len(keys)


def plot_benchmark(setting: ReproSetting, key: str, cells: Mapping[tuple[str, float], Cell], path: str | Path) -> Path:
    """Accuracy against sparsity for one benchmark: one line per method (mean ± std), dense as a dashed line.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    palette = {"dense": "black", "gmp": "tab:blue", "gmp_global": "navy", "granet": "tab:red", "granet_st": "darkred",
               "rigl": "tab:green", "rigl_3x": "darkgreen", "set": "tab:olive", "snfs": "tab:cyan",
               "static": "tab:gray", "snip": "tab:purple", "grasp": "tab:pink", "synflow": "tab:brown",
               "imp": "tab:orange", "imp_reinit": "gold"}
    markers = "osD^v<>ph*XP"
    for i, method in enumerate(m for m in _methods_in_order(setting) if m != "dense"):
        points = []
        for s in setting.sparsities:
            cell = cells.get((method, s))
            if cell is not None and cell.acc:
                agg = aggregate(cell)
                points.append((agg["sparsity"] if method.startswith("imp") else s, agg["acc"], agg["acc_std"]))
        if not points:
            continue
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], capsize=3, color=palette.get(method),
                    linestyle="--" if method in AT_INIT or method == "imp_reinit" else "-", label=_label(method))
    dense = cells.get(("dense", 0.0))
    if dense is not None and dense.acc:
        agg = aggregate(dense)
        ax.axhline(agg["acc"], color="black", linestyle="--", linewidth=1.5, label=f"dense {100 * agg['acc']:.2f}%")
        ax.axhspan(agg["acc"] - agg["acc_std"], agg["acc"] + agg["acc_std"], color="black", alpha=0.08)
    bench = setting.benchmark(key)
    ax.set(xlabel="sparsity", ylabel="final test accuracy (mean ± std over seeds)",
           title=f"{bench.title}: {setting.epochs} epochs, {len(setting.seeds)} seed(s)")
    ax.set_xticks(list(setting.sparsities))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return write_figure(fig, path)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and torch versions, and the date (UTC)."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _total_train_time(setting: ReproSetting, runs_dir: Path) -> float:
    total = 0.0
    for bench, method, sparsity, seed in grid_runs(setting):
        summary = RunDir.for_config(runs_dir, run_config(bench, setting, method, sparsity, seed)).read_summary()
        total += float((summary or {}).get("wall_time") or 0.0)
    return total


def record_invocation(runs_dir: str | Path, command: str, wall_time: float, jobs: int, failed: int) -> Path:
    """Write ``<runs_dir>/last_training.json``: the command, wall time, jobs trained and failed, and the date.

    The report quotes it, so results rewritten later (``--report-only``) still say how they were produced.

    Returns:
        The path written.
    """
    record = {"command": command, "wall_time": wall_time, "jobs": jobs, "failed": failed,
              "date": machine_info()["date"]}
    path = Path(runs_dir) / "last_training.json"
    write_json(record, path)
    return path


def _last_training(runs_dir: Path) -> dict[str, Any] | None:
    import json

    path = runs_dir / "last_training.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_report(setting: ReproSetting, runs_dir: str | Path, out_dir: str | Path, *, command: str,
                 failed: Sequence[str] = ()) -> list[Path]:
    """Write the tables, plots, verdicts and plasticity study of ``setting`` into ``out_dir``.

    Files: ``reproduction.md`` (everything, with the command and machine), ``reproduction.csv``,
    ``accuracy_vs_sparsity_<benchmark>.png`` per benchmark, and ``plasticity.csv`` / ``plasticity.png`` (every seed
    of every plasticity cell; its tables are in ``reproduction.md``).

    Args:
        setting: the grid.
        runs_dir: its runs directory.
        out_dir: where the results go.
        command: the command line writing this report (the training invocation is read from
            ``last_training.json``, see :func:`record_invocation`).
        failed: names of jobs that failed.

    Returns:
        The paths written.
    """
    runs_dir, out = Path(runs_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = collect(setting, runs_dir)
    written: list[Path] = []
    info = machine_info()
    last = _last_training(runs_dir)
    trained = "Trained by an unrecorded run"
    if last:
        trained = (f"Trained by `{last['command']}` ({last['jobs']} jobs trained, {last['failed']} failed; wall time "
                   f"{last['wall_time'] / 60:.1f} min, finished {last['date']})")
    lines = [f"# Reproduction benchmark ({setting.name})", "",
             f"{trained}; this file written by `{command}`. Rerunning the command skips every finished run.", "",
             f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, torch {info['torch']}. "
             "Floating-point results depend on the CPU's kernels: rerun on another CPU, the same configurations end "
             "with different last digits (and single runs can move by a point or more). "
             f"Training time summed over the harness runs (IMP and plasticity not included): "
             f"{_total_train_time(setting, runs_dir) / 60:.1f} min, two runs at a time, one torch thread each, on a "
             "machine shared with other jobs.", "",
             f"Setting: {setting.description}.", "",
             "## Recipe", "",
             f"Every run: {setting.epochs} epochs, batch {setting.batch_size}, SGD with Nesterov momentum 0.9, "
             f"lr {setting.lr} with cosine decay, weight decay 5e-4, topology update every "
             f"{setting.update_every} steps (ΔT), each method's own defaults otherwise (GraNet/GMP prune over the "
             "first half of training; RigL/SET/SNFS update until 75% of it; static and at-init masks are fixed; "
             f"`rigl_3x` trains {LONGER * setting.epochs} epochs). "
             f"Accuracy is the test accuracy after the last epoch; {len(setting.seeds)} seed(s) "
             f"({', '.join(map(str, setting.seeds))}), mean ± sample standard deviation.", ""]
    if "imp" in setting.methods:
        levels = imp_levels(setting)
        lines += [f"IMP: {setting.imp_rounds} rounds, each pruning {100 * imp_rate(setting):.2f}% of the remaining "
                  "weights by one global magnitude threshold, rewinding to initialisation; each level trains with "
                  "the recipe above (a Trainer run, as every other row). Targets are read at "
                  "levels " + ", ".join(f"{100 * s:g}% -> level {lv}" for s, lv in levels.items())
                  + " (measured sparsity after '@'). The control retrains the ticket's mask from a fresh random "
                  "initialisation.", ""]
    lines += ["Methods: " + "; ".join(f"`{m}`: {METHOD_LABELS[m]}" for m in setting.methods) + ".", ""]
    if failed:
        lines += [f"**Failed jobs** (left out of the tables): {', '.join(failed)}.", ""]

    claims = check_claims(setting, results)
    lines += ["## Verdicts at this scale", "",
              f"Every comparison is at equal sparsity, on the means over seeds, case by case (data/model pair × "
              f"sparsity). Significance rule, used everywhere below: {SIGNIFICANCE_RULE}. Training FLOPs (in "
              "parentheses) count in dense trainings of the recipe: RigL's accounting (density over time, dense "
              f"gradients on regrowth steps), {LONGER}x for `rigl_3x`, and L + 1 trainings for an IMP ticket of "
              "level L. Families: " + "; ".join(f"{f}: {', '.join(ms)}" for f, ms in FAMILIES.items()) + ".", ""]
    for claim in claims:
        lines.append(f"- **{claim.text}**: {claim.verdict}.")
        for case in claim.cases:
            lines.append(f"  - {case.name}: {'yes' if case.holds else 'no'} ({case.detail})")
    lines += ["", "Every during-training method against every at-init method (and RigL trained longer, and IMP), over "
              "all cases: `w/n (+b, -r)` = higher in w of n cases, b of them beyond noise, r cases lower beyond "
              "noise.", "", pairwise_table(setting, results), ""]

    for bench in setting.benchmarks:
        cells = results.get(bench.key, {})
        png = plot_benchmark(setting, bench.key, cells, out / f"accuracy_vs_sparsity_{bench.key}.png")
        written.append(png)
        lines += [f"## {bench.title}", "", "Final test accuracy, %:", "", accuracy_table(setting, cells), "",
                  "The best of each family (accuracy %, training FLOPs in dense trainings):", "",
                  family_table(setting, cells), "",
                  "Cost and exploration (means over seeds): training FLOPs in dense trainings of the recipe, "
                  "inference FLOPs as a fraction of the dense model's, ITOP rate (fraction of the sparsified weights "
                  "ever active):", "", cost_table(setting, cells), "", f"![accuracy vs sparsity]({png.name})", ""]

    if setting.plasticity is not None:
        written += _plasticity_section(setting, runs_dir, out, lines)
    md = out / "reproduction.md"
    write_text("\n".join(lines), md)
    csv_path = out / "reproduction.csv"
    write_text(csv_table(setting, results), csv_path)
    return [md, csv_path, *written]


def _plasticity_section(setting: ReproSetting, runs_dir: Path, out: Path, lines: list[str]) -> list[Path]:
    """Append the plasticity study's tables to ``lines``; write its CSV and plot into ``out``."""
    plan = setting.plasticity
    assert plan is not None
    studies = plasticity_studies(setting, runs_dir)
    rows = [row for study in studies for row in study.rows()]
    if not rows:
        return []
    title = setting.benchmark(plan.benchmark).title
    decays = {study.schedule: lr_decay_epochs(study.config) for study in studies}
    png = plot_plasticity(rows, out / "plasticity.png", lr_decays=decays, title=f"pruning plasticity: {title}")
    csv_path = out / "plasticity.csv"
    write_text(format_plasticity(rows, "csv"), csv_path)
    recipe = ", ".join(f"{d:g}" for d in decays["recipe"])
    late = ", ".join(f"{d:g}" for d in decays.get("late-decay", []))
    lines += ["## Pruning plasticity", "",
              f"{title}, dense runs of {plan.epochs} epochs with the learning rate x0.1 at epochs {recipe}; pruned "
              "after epoch t by global magnitude with rate r (GraNet's plasticity test), then trained to the end "
              "of the same run (its optimizer state, schedule and data order) with the mask fixed or with GraNet's "
              "neuroregeneration: every ΔT steps of the run (GraNet's 1000 of 56,320 steps, as a fraction: "
              f"{GRANET_UPDATE_FRACTION:.5f} of the run) each layer drops the fraction r_t of its weights with the "
              "smallest magnitude and regrows as many by gradient, r_t on the run-wide cosine from 0.5 to 0.005. "
              + (f"Learning-rate control: the same dense recipe with the decays moved to epochs {late}: the same "
                 "pruning points and remaining budget"
                 + (", every pruning point before the decays. " if max(plan.prune_epochs) < min(decays["late-decay"])
                    else ". ") if late else "")
              + f"Seeds {', '.join(map(str, plan.seeds))}; relative change = (acc - dense) / dense against the "
              "dense run of the same seed and schedule, mean ± std over seeds.", "",
              format_plasticity(rows, "markdown"), "",
              "Neuroregeneration against the fixed mask (with minus without, relative change in % points):", "",
              format_contrast(contrast_plasticity(rows, "regeneration"), "regeneration"), ""]
    if late:
        lines += ["The learning-rate phase: the recipe's schedule against the control's, same pruning point and "
                  "remaining budget (negative: pruning in the recipe's phase costs more):", "",
                  format_contrast(contrast_plasticity(rows, "schedule"), "schedule"), ""]
    lines += ["![plasticity](plasticity.png)", ""]
    return [png, csv_path]
