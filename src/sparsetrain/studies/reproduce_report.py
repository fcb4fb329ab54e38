"""Reading the reproduction benchmark back: mean ± std tables, accuracy-vs-sparsity plots, and the claims checked.

:func:`collect` reads the finished cells of a :class:`~sparsetrain.studies.reproduce.ReproSetting` from its
runs directory (harness summaries and IMP lottery levels); :func:`aggregate` averages over seeds;
:func:`check_claims` tests the claims of MISSION.md §5 on the means (GraNet >= GMP at high sparsity;
GraNet-ST > RigL > SET > static; during-training methods > pruning at init; IMP tickets > their random
re-initialisation), case by case (one case per data/model pair and sparsity), and says for each case whether
the difference is larger than twice its standard error over seeds; :func:`write_report` writes everything to a
results directory.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sparsetrain.analysis.plasticity import format_plasticity, plot_plasticity
from sparsetrain.atomic import write_figure, write_json, write_text
from sparsetrain.experiment import RunDir
from sparsetrain.tables import Column, render

from .lottery import lottery_curve
from .plasticity import lr_decay_epochs
from .reproduce import (
    METHOD_LABELS,
    ReproSetting,
    grid_runs,
    imp_dir,
    imp_levels,
    imp_rate,
    plasticity_study,
    run_config,
)

__all__ = ["Cell", "collect", "aggregate", "Claim", "check_claims", "accuracy_table", "cost_table", "csv_table",
           "plot_benchmark", "write_report", "record_invocation", "machine_info"]

#: Methods trained during training (the paper's "during-training" group) and pruned at initialisation.
DURING_TRAINING = ("gmp", "granet", "granet_st", "rigl")
AT_INIT = ("snip", "grasp", "synflow")


@dataclass
class Cell:
    """The seeds of one (benchmark, method, target sparsity) cell.

    Attributes:
        acc: final test accuracy per seed.
        sparsity: measured sparsity per seed.
        train_flops / inf_flops: training / inference FLOPs as a fraction of dense, per seed.
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


def collect(setting: ReproSetting, runs_dir: str | Path) -> dict[str, dict[tuple[str, float], Cell]]:
    """The finished cells of ``setting`` under ``runs_dir``: ``{benchmark key: {(method, sparsity): Cell}}``.

    Dense runs are stored under sparsity 0.0; IMP under each target sparsity (the level of :func:`imp_levels`),
    with its re-initialisation control as method "imp_reinit". Unfinished runs are left out.
    """
    results: dict[str, dict[tuple[str, float], Cell]] = {}
    levels = imp_levels(setting)
    for bench in setting.benchmarks:
        cells: dict[tuple[str, float], Cell] = defaultdict(Cell)
        for _, method, sparsity, seed in grid_runs(setting, bench):
            summary = RunDir.for_config(runs_dir, run_config(bench, setting, method, sparsity, seed)).read_summary()
            if summary is None:
                continue
            cell = cells[(method, sparsity)]
            _add(cell.acc, summary.get("final_acc"))
            _add(cell.sparsity, summary.get("sparsity"))
            flops = summary.get("flops") or {}
            _add(cell.train_flops, flops.get("training_ratio"))
            _add(cell.inf_flops, flops.get("inference_ratio"))
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
    """Markdown: training FLOPs and inference FLOPs as fractions of dense, and the ITOP rate, per sparsity."""
    columns = [Column("method", align="left"),
               *(Column(f"{100 * s:g}%: train FLOPs / inf. FLOPs / ITOP") for s in setting.sparsities)]
    rows = []

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for method in _methods_in_order(setting):
        if method in ("dense",) or method.startswith("imp"):
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
    training and inference FLOPs / dense, ITOP."""
    columns = ["benchmark", "method", "target_sparsity", "sparsity", "n", "acc_mean", "acc_std", "train_flops_ratio",
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
    colors = {m: c for m, c in zip(_methods_in_order(setting),
                                   ["black", "tab:blue", "tab:red", "darkred", "tab:green", "tab:olive", "tab:cyan",
                                    "tab:gray", "tab:purple", "tab:pink", "tab:brown", "tab:orange", "gold"])}
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
        ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], capsize=3, color=colors.get(method),
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


@dataclass
class Claim:
    """One claim of MISSION.md §5 and its cases.

    Attributes:
        text: the claim.
        cases: ``(case name, holds, detail)`` per benchmark and sparsity (or IMP level).
    """

    text: str
    cases: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """"holds", "does not hold", "holds in k of n cases" or "not measured"."""
        if not self.cases:
            return "not measured"
        k = sum(1 for _, holds, _ in self.cases if holds)
        if k == len(self.cases):
            return f"holds (all {k} cases)"
        if k == 0:
            return f"does not hold (0 of {len(self.cases)} cases)"
        return f"holds in {k} of {len(self.cases)} cases"


def _stat(cells: Mapping[tuple[str, float], Cell], method: str, s: float) -> tuple[float, float, int] | None:
    cell = cells.get((method, s))
    if cell is None or not cell.acc:
        return None
    agg = aggregate(cell)
    return agg["acc"], agg["acc_std"], agg["n"]


def _compare(a: tuple[float, float, int], b: tuple[float, float, int], name_a: str, name_b: str,
             strict: bool) -> tuple[bool, str]:
    diff = a[0] - b[0]
    se = math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    holds = diff > 0 if strict else diff >= 0
    if min(a[2], b[2]) < 2:
        noise = "one seed: no noise estimate"
    else:
        noise = "beyond 2 s.e." if abs(diff) > 2 * se and se > 0 else "within noise (< 2 s.e.)"
    return holds, f"{name_a} {100 * a[0]:.2f} vs {name_b} {100 * b[0]:.2f}: {100 * diff:+.2f} pts, {noise}"


def check_claims(setting: ReproSetting, results: Mapping[str, Mapping[tuple[str, float], Cell]]) -> list[Claim]:
    """Test the four claims of MISSION.md §5 on the means, case by case.

    * GraNet >= GMP at high sparsity: every benchmark at each of the two largest sparsities.
    * GraNet-ST > RigL > SET > static: the whole chain, every benchmark and sparsity.
    * during-training methods (GMP, GraNet, GraNet-ST, RigL) > pruning at init (SNIP, GraSP, SynFlow): the
      worst during-training mean above the best at-init mean.
    * IMP tickets > their random re-initialisation: every benchmark and IMP level.

    Returns:
        The claims with their cases (cases lacking a method are left out).
    """
    high = sorted(setting.sparsities)[-2:]
    granet = Claim("GraNet (s_i = 0) >= GMP at high sparsity")
    chain = Claim("GraNet-ST > RigL > SET > static")
    during = Claim("during-training methods (GMP, GraNet, GraNet-ST, RigL) > pruning at init (SNIP, GraSP, "
                   "SynFlow)")
    imp = Claim("IMP tickets > the same mask randomly re-initialised")
    for bench in setting.benchmarks:
        cells = results.get(bench.key, {})
        for s in setting.sparsities:
            case = f"{bench.key} @ {100 * s:g}%"
            a, b = _stat(cells, "granet", s), _stat(cells, "gmp", s)
            if s in high and a and b:
                granet.cases.append((case, *_compare(a, b, "GraNet", "GMP", strict=False)))
            names = ("granet_st", "rigl", "set", "static")
            stats = [_stat(cells, m, s) for m in names]
            if all(stats):
                pairs = [_compare(stats[i], stats[i + 1], names[i], names[i + 1], strict=True) for i in range(3)]
                ranking = sorted(zip(names, stats), key=lambda x: -x[1][0])
                order = " > ".join(f"{n} {100 * st[0]:.2f}" for n, st in ranking)
                chain.cases.append((case, all(p[0] for p in pairs),
                                    f"measured order: {order}; " + "; ".join(p[1] for p in pairs)))
            dt = {m: _stat(cells, m, s) for m in DURING_TRAINING if _stat(cells, m, s)}
            pi = {m: _stat(cells, m, s) for m in AT_INIT if _stat(cells, m, s)}
            if dt and pi:
                worst = min(dt, key=lambda m: dt[m][0])
                best = max(pi, key=lambda m: pi[m][0])
                holds, detail = _compare(dt[worst], pi[best], f"worst during-training ({worst})",
                                         f"best at-init ({best})", strict=True)
                during.cases.append((case, holds, detail))
            a, b = _stat(cells, "imp", s), _stat(cells, "imp_reinit", s)
            if a and b:
                sp = aggregate(cells[("imp", s)])["sparsity"]
                imp.cases.append((f"{bench.key} @ {100 * sp:.1f}%", *_compare(a, b, "ticket", "re-init", strict=True)))
    return [granet, chain, during, imp]


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
    """Write the tables, plots, claims and plasticity study of ``setting`` into ``out_dir``.

    Files: ``reproduction.md`` (everything, with the command and machine), ``reproduction.csv``,
    ``accuracy_vs_sparsity_<benchmark>.png`` per benchmark, and ``plasticity.{md,csv,png}``.

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
             f"Training time summed over the harness runs (IMP and plasticity not included): "
             f"{_total_train_time(setting, runs_dir) / 60:.1f} min, two runs at a time, one torch thread each, on a "
             "machine shared with other jobs.", "",
             f"Setting: {setting.description}.", "",
             "## Recipe", "",
             f"Every run: {setting.epochs} epochs, batch {setting.batch_size}, SGD with Nesterov momentum 0.9, "
             f"lr {setting.lr} with cosine decay, weight decay 5e-4, topology update every "
             f"{setting.update_every} steps (ΔT), each method's own defaults otherwise (GraNet/GMP prune over the "
             "first half of training; RigL/SET/SNFS update until 75% of it; static and at-init masks are fixed). "
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
    lines += ["## Claims of MISSION.md §5 at this scale", "",
              "Checked on the means over seeds, case by case (data/model pair × sparsity); a difference counts as "
              "beyond noise when it exceeds twice its standard error over seeds.", ""]
    for claim in claims:
        lines.append(f"- **{claim.text}**: {claim.verdict}.")
        for case, holds, detail in claim.cases:
            lines.append(f"  - {case}: {'yes' if holds else 'no'} ({detail})")
    lines.append("")

    for bench in setting.benchmarks:
        cells = results.get(bench.key, {})
        png = plot_benchmark(setting, bench.key, cells, out / f"accuracy_vs_sparsity_{bench.key}.png")
        written.append(png)
        lines += [f"## {bench.title}", "", "Final test accuracy, %:", "", accuracy_table(setting, cells), "",
                  "Cost and exploration (means over seeds): training FLOPs and inference FLOPs as fractions of the "
                  "dense model's (RigL's accounting), ITOP rate (fraction of the sparsified weights ever active):",
                  "", cost_table(setting, cells), "", f"![accuracy vs sparsity]({png.name})", ""]

    if setting.plasticity is not None:
        study = plasticity_study(setting, runs_dir)
        rows = study.rows()
        plan = setting.plasticity
        if rows:
            png = plot_plasticity(rows, out / "plasticity.png", lr_decays=lr_decay_epochs(study.config),
                                  title=f"pruning plasticity: {setting.benchmark(plan.benchmark).title}")
            write_text(format_plasticity(rows, "csv"), out / "plasticity.csv")
            written += [png, out / "plasticity.csv"]
            dense = study.dense_run.read_summary() or {}
            lines += ["## Pruning plasticity", "",
                      f"{setting.benchmark(plan.benchmark).title}, dense run of {plan.epochs} epochs with the "
                      f"learning rate x0.1 at epochs {', '.join(f'{d:g}' for d in lr_decay_epochs(study.config))}; "
                      f"pruned after epoch t by global magnitude with rate r, then trained to the end with the mask "
                      f"fixed or with GraNet's neuroregeneration (every {setting.update_every} steps, drop fraction "
                      "0.5 cosine-decayed). Relative change = (acc - dense) / dense; dense final accuracy "
                      f"{100 * dense.get('final_acc', float('nan')):.2f}%. One seed.", "",
                      format_plasticity(rows, "markdown"), "", "![plasticity](plasticity.png)", ""]
    md = out / "reproduction.md"
    write_text("\n".join(lines), md)
    csv_path = out / "reproduction.csv"
    write_text(csv_table(setting, results), csv_path)
    return [md, csv_path, *written]
