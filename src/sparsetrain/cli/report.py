"""``sparsetrain report``: the table of finished runs, and of lottery levels, under a runs directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsetrain.atomic import write_text
from sparsetrain.experiment.report import COLUMNS, FORMATS

from .terminal import CliError, note, output_file

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "print a table of finished runs"
DESCRIPTION = ("A table of the finished runs under --runs-dir. Columns: "
               + "; ".join(f"{k}: {d}" for k, d in COLUMNS) + ". Then one row per finished level of each "
               "lottery run (lottery-<hash>/seed_<n>): accuracy of the ticket and its controls against the "
               "weights remaining.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` command's arguments."""
    parser.add_argument("--runs-dir", default="runs", help="the runs directory (default: runs)")
    parser.add_argument("--format", default="table", choices=FORMATS,
                        help="table (aligned text), markdown or csv (default: table)")
    parser.add_argument("--aggregate", action="store_true",
                        help="one row per experiment, mean (± std) over seeds (default: one row per run)")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="also write the table to FILE (default: stdout only)")
    parser.add_argument("--layers", action="store_true",
                        help="also print each run's per-layer table: final density, ITOP rate, inference and "
                             "training FLOPs beside dense (default: false)")


def run(args: argparse.Namespace) -> int:
    """Print the tables (and write them to ``--output``)."""
    from sparsetrain.experiment.report import aggregate_rows, collect_rows, format_layers, format_rows, layer_rows
    from sparsetrain.experiment.rundir import find_runs, readable_summaries
    from sparsetrain.lottery.report import format_lottery_rows, lottery_rows

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise CliError(f"--runs-dir={args.runs_dir!r}: no such directory")
    output = output_file("--output", args.output) if args.output else None
    rows = collect_rows(runs_dir)
    lottery = lottery_rows(runs_dir)
    if not rows and not lottery:
        note(f"no finished runs under {runs_dir}/")
        return 0
    if args.aggregate:
        rows = aggregate_rows(rows)
    text = format_rows(rows, args.format) if rows else ""
    if lottery:
        title = "lottery runs (test accuracy vs weights remaining):\n" if args.format != "csv" else ""
        text = (text.rstrip("\n") + "\n\n" if text else "") + title + format_lottery_rows(lottery, args.format)
    text = text if text.endswith("\n") else text + "\n"
    if args.layers:
        for found, summary in readable_summaries(find_runs(runs_dir)):
            text += f"\n{found.name}:\n{format_layers(layer_rows(summary), args.format)}\n"
    print(text, end="")
    if output is not None:
        write_text(text, output)
    return 0
