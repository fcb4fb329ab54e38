"""``sparsetrain report``: the table of finished runs, and of lottery levels, under a runs directory; or, with
``--html OUT``, one self-contained page for a runs directory or a study."""

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
               "weights remaining. With --html OUT: one self-contained HTML page instead (no network; plots "
               "embedded) for a runs directory or a study directory (reproduce, plasticity, lottery): the tables, "
               "the plots, each run's config and links to its files, grouped by recipe.")


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
    parser.add_argument("--html", metavar="OUT", default=None,
                        help="write one self-contained HTML page to OUT instead of printing the tables: every "
                             "finished run, lottery run and study report under --runs-dir (a runs, reproduce, "
                             "plasticity or lottery directory) with its tables, plots, config and file links, "
                             "grouped by recipe (default: none)")


def run(args: argparse.Namespace) -> int:
    """Print the tables (and write them to ``--output``)."""
    from sparsetrain.experiment.report import aggregate_rows, collect_rows, format_layers, format_rows, layer_rows
    from sparsetrain.experiment.rundir import find_runs, readable_summaries
    from sparsetrain.studies.lottery.report import format_lottery_rows, lottery_rows

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise CliError(f"--runs-dir={args.runs_dir!r}: no such directory")
    if args.html is not None:
        return _write_html(runs_dir, Path(args.html))
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


def _write_html(runs_dir: Path, out: Path) -> int:
    """``--html OUT``: write the page and print its path."""
    from sparsetrain.studies.html_report import write_html_report

    if out.is_dir():
        raise CliError(f"--html={str(out)!r} is a directory; give the page's file name, e.g. {out / 'report.html'}")
    print(write_html_report(runs_dir, out))
    return 0
