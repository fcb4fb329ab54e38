"""``sparsetrain plot``: PNG plots of every finished run, across runs, and of every lottery run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .terminal import CliError, note, output_dir

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "write PNG plots of the runs"
DESCRIPTION = ("Writes accuracy_vs_sparsity.png (across runs, dense baseline as a dashed line) into --out, "
               "and curves.png, density.png and layers.png into every finished run's directory, and curve.png "
               "into every lottery run.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plot`` command's arguments."""
    parser.add_argument("--runs-dir", default="runs", help="the runs directory (default: runs)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where accuracy_vs_sparsity.png goes (default: the runs directory)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (default: shown)")


def run(args: argparse.Namespace) -> int:
    """Write the plots and print their paths."""
    from tqdm.auto import tqdm

    from sparsetrain.experiment.plots import plot_runs
    from sparsetrain.experiment.rundir import find_runs
    from sparsetrain.studies.lottery.report import plot_lottery_runs

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise CliError(f"--runs-dir={args.runs_dir!r}: no such directory")
    out = output_dir("--out", args.out) if args.out else runs_dir
    runs = list(find_runs(runs_dir))
    curves = plot_lottery_runs(runs_dir)
    for path in curves:
        print(path)
    if not runs:
        if not curves:
            note(f"no finished runs under {runs_dir}/: nothing to plot")
        return 0
    shown = tqdm(runs, desc="plots", unit="run", file=sys.stderr, disable=not (args.progress and sys.stderr.isatty()),
                 leave=False)
    for path in plot_runs(shown, out):
        print(path)
    return 0
