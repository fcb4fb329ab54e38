"""``sparsetrain reproduce``: the reproduction benchmark, every method at several sparsities and seeds."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from .terminal import PROG, CliError, note, output_dir

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = ("the reproduction benchmark: every method at several sparsities and seeds, tables, "
        "plots and the claims checked")
DESCRIPTION = ("Trains the grid of a setting (full: dense, GMP per layer and global, GraNet s_i=0 and 0.5, RigL "
               "(and RigL trained 3x the epochs), SET, SNFS, static ERK, SNIP, GraSP, SynFlow and IMP at 90/95/98% "
               "sparsity, 3 seeds, on MNIST-1D (cnn1d, mlp) and the packaged MNIST subset (LeNet-300-100); plus "
               "the pruning-plasticity study, 3 seeds, with its learning-rate control) as ordinary run "
               "directories, so a rerun skips finished cells and resumes interrupted ones; then writes "
               "reproduction.md (mean ± std tables, the papers' claims checked like with like: each method "
               "against each at equal sparsity, best against best, per family, with training FLOPs), "
               "reproduction.csv and PNG plots.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``reproduce`` command's arguments."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", dest="setting", action="store_const", const="quick",
                       help="a subset in a few minutes (one data/model pair, 90 and 98%% sparsity, one seed, "
                            "10 epochs)")
    which.add_argument("--tiny", dest="setting", action="store_const", const="tiny",
                       help="test-only: synthetic data, seconds")
    which.add_argument("--setting", dest="setting", choices=("full", "quick", "tiny"),
                       help="the grid (default: full)")
    parser.set_defaults(setting="full")
    parser.add_argument("--runs-dir", default="runs/reproduce",
                        help="runs go to RUNS_DIR/<setting>/ (default: runs/reproduce)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where the results go (default: docs/results for full, else RUNS_DIR/<setting>/results)")
    parser.add_argument("--workers", type=int, default=2,
                        help="parallel worker processes, one torch thread each (default: 2)")
    parser.add_argument("--no-plasticity", dest="plasticity", action="store_false",
                        help="skip the plasticity study (default: run it)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; write the results of what has finished (default: false)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")


def run(args: argparse.Namespace) -> int:
    """Train the grid's unfinished jobs (a line per job), then write the report; status 1 if a job failed."""
    from sparsetrain.experiment.lock import DirectoryLock
    from sparsetrain.studies.reproduce import SETTINGS

    if args.workers < 1:
        raise CliError(f"argument --workers: {args.workers} is not allowed: expected an int >= 1")
    setting = SETTINGS[args.setting]
    runs_dir = output_dir("--runs-dir", Path(args.runs_dir) / setting.name)
    if args.out:
        output_dir("--out", args.out)
    with DirectoryLock(runs_dir, f"reproduction {runs_dir}"):  # one process per grid
        return _run(args, setting, runs_dir)


def _run(args: argparse.Namespace, setting: Any, runs_dir: Path) -> int:
    from sparsetrain.studies.reproduce import plan_jobs, run_jobs
    from sparsetrain.studies.reproduce_report import record_invocation, write_report

    out = Path(args.out) if args.out else (Path("docs/results") if setting.name == "full" else runs_dir / "results")
    start = time.monotonic()
    failed: list[str] = []
    trained: list[str] = []
    if not args.report_only:
        jobs = plan_jobs(setting, runs_dir, plasticity=args.plasticity)
        note(f"reproduce ({setting.name}): {len(jobs)} jobs in {runs_dir}/ with {args.workers} worker(s); "
             "finished ones are skipped")
        count = 0

        def on_done(job: Any, result: dict[str, Any] | None, error: BaseException | None) -> None:
            nonlocal count
            count += 1
            if error is not None:
                failed.append(job.name)
                note(f"[{count}/{len(jobs)}] {job.name}: FAILED: {type(error).__name__}: {error}")
                return
            acc = (result or {}).get("final_acc", (result or {}).get("acc"))
            extra = f" acc {acc:.4f}" if isinstance(acc, float) else ""
            if (result or {}).get("trained"):
                trained.append(job.name)
            state = "done" if (result or {}).get("trained") else "finished already"
            note(f"[{count}/{len(jobs)}] {job.name}: {state}{extra} ({time.monotonic() - start:.0f}s)")

        run_jobs(jobs, workers=args.workers, on_done=on_done)
    command = shlex.join([PROG, *getattr(args, "argv", ["reproduce"])])
    if trained or failed:  # an invocation that only found finished runs leaves the record of the one that trained
        record_invocation(runs_dir, command, time.monotonic() - start, len(trained), len(failed))
    for path in write_report(setting, runs_dir, out, command=command, failed=failed):
        print(path)
    return 1 if failed else 0
