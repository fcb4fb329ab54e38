"""``sparsetrain train``: train runs (and their dense baseline), resume interrupted ones, skip finished ones.

Data parallel: ``--nproc N`` re-launches the command as ``python -m torch.distributed.run --standalone
--nproc_per_node N -m sparsetrain train ...`` (the same arguments less ``--nproc``) after checking the arguments
here; ranks other than 0 train silently.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsetrain.distributed import is_main_process

from .config_flags import add_config_flags, note_validation, parse_seeds, resolve_config
from .terminal import EXIT_LOST_RANK, PROG, CliError, Progress, note, output_dir

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "method_options_help"]


def method_options_help() -> str:
    """The epilog of ``train --help``: every method's options (``--method-option KEY=VALUE``), from the one
    declaration each method keeps of them (:func:`sparsetrain.experiment.build.method_options_help`)."""
    from sparsetrain.experiment.build import method_options_help as describe

    return describe()


HELP = "train runs (and the dense baseline); resume interrupted ones; skip finished ones"
DESCRIPTION = ("Train one run per seed in <runs-dir>/<method>-<hash>/seed_<n>/ (hash of the non-default "
               "config fields). With no arguments: GraNet at 90% sparsity on MNIST-1D, plus the dense "
               "baseline with the same recipe. A finished run is skipped; an interrupted one resumes.")
RAW_DESCRIPTION = True  # --help prints the description unwrapped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` command's arguments."""
    parser.epilog = method_options_help()
    group = parser.add_argument_group("run")
    group.add_argument("--recipe", metavar="NAME", default=None,
                       help="start from a paper recipe shipped with the package (GraNet's and RigL's CIFAR runs); "
                            "flags and --config apply on top; --recipe list prints them (default: none)")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="YAML config file with sections data/model/optim/sparse/train (default: none)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override applied after the flags, repeatable, e.g. --set sparse.sparsity=0.95 "
                            "or --set sparse.options.drop_fraction=0.3 (default: none)")
    group.add_argument("--runs-dir", default="runs", help="where runs are written (default: runs)")
    group.add_argument("--seeds", nargs="+", type=str, default=None, metavar="N",
                       help="train one run per seed (default: train.seed)")
    group.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                       help="also train (or reuse) the dense baseline with the same recipe (default: true)")
    group.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                       help="resume interrupted runs (the default anyway); with a run directory "
                            "(runs/<name>/seed_<n>), continue that run from its own config.yaml (default: off)")
    group.add_argument("--restart", action="store_true",
                       help="discard an interrupted run's checkpoint and train it from scratch (default: false)")
    group.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                       help="write each run's PNG plots when it finishes (default: true)")
    group.add_argument("--nproc", default=None, metavar="N",
                       help="data parallel on this machine: re-launch under torchrun with N processes (gloo on CPU, "
                            "NCCL on CUDA); train.batch_size is the global batch, split across them (default: 1)")
    group.add_argument("--print-config", action="store_true",
                       help="print the resolved config as YAML and exit (default: false)")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar or per-epoch lines on stderr (default: shown)")
    group.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")
    add_config_flags(parser)
    from sparsetrain.init_pruning import INIT_METHODS

    parser.add_argument("--init", choices=INIT_METHODS, default=None,
                        help="pruning at initialisation for --method static: shortcut for --method-option "
                             "init=NAME (default: none, a random mask)")


def run(args: argparse.Namespace) -> int:
    """Check everything, then train each seed's dense baseline and run (or launch them under torchrun)."""
    from sparsetrain.experiment import RunDir, TrainingInterrupted
    from sparsetrain.experiment.config import DENSE
    from sparsetrain.experiment.parallel import lost_rank, shutdown
    from sparsetrain.experiment.report import format_results

    if args.recipe == "list":
        return _list_recipes()
    base = _with_init(resolve_config(args), args.init)
    nproc = _nproc(args)
    if args.print_config:
        print(base.canonical().to_yaml(), end="")
        return 0
    if args.resume is not None and args.restart:
        raise CliError("--resume and --restart cannot be combined")
    if nproc > 1 and base.train.batch_size % nproc:
        raise CliError(f"train.batch_size={base.train.batch_size} is not allowed with --nproc {nproc}: the "
                       f"minibatch is split evenly across the processes; use a multiple of {nproc}")
    runs_dir = output_dir("--runs-dir", args.runs_dir)
    if isinstance(args.resume, str):
        run_path = Path(args.resume).resolve()
        runs_dir = run_path.parent.parent
        if RunDir.for_config(runs_dir, base.canonical()).path != run_path:
            raise CliError(f"--resume {args.resume}: the options given change the run's identity; "
                           "only paths, device, threads and workers may change on resume")
        if RunDir(run_path).status() == "finished":
            raise CliError(f"--resume {args.resume}: the run has already finished (summary.json exists), there is "
                           "nothing to resume; delete its directory to train it again")
    note_validation(base)
    seeds = parse_seeds(args, base.train.seed)
    with_baseline = args.baseline and base.sparse.method != DENSE and not isinstance(args.resume, str)
    results: list[dict[str, Any]] = []
    try:
        for seed in seeds:
            config = base.with_overrides({"train.seed": seed})
            main_run = _trainer(config, args, runs_dir)  # validate the run before training its baseline
            if with_baseline:
                baseline = _trainer(config.dense_baseline(), args, runs_dir)
                if nproc == 1:
                    results.extend(_train_one(*baseline, args, shared=True))
            if nproc == 1:
                results.extend(_train_one(*main_run, args))
        if nproc > 1:  # every run checked: train them all under torchrun
            return _launch(args.argv, nproc)
    except TrainingInterrupted as exc:
        note(f"interrupted by {exc.signal_name} at step {exc.step} ({exc.epoch} epochs complete); checkpoint "
             f"written to {exc.checkpoint}. Run the same command again to resume.")
        return exc.exit_code
    except RuntimeError as exc:
        lost = lost_rank(exc)  # a collective failed because another process of a data-parallel run is gone
        if lost is None:
            raise
        raise lost from None
    finally:
        shutdown()
    if is_main_process():
        print(format_results(results, runs_dir))
    return 0


def _list_recipes() -> int:
    """``--recipe list``: every shipped recipe with its description, and how to run one."""
    from sparsetrain.experiment.recipe import list_recipes
    from sparsetrain.tables import Column, render

    print(render([Column("recipe", align="left"), Column("description", align="left")], list_recipes().items()))
    print("\nrun one with: sparsetrain train --recipe NAME --data-dir DIR (flags override it, e.g. --sparsity 0.95)")
    return 0


def _with_init(config: Any, init: str | None) -> Any:
    """``config`` with ``sparse.options.init = init`` (``--init``); only with the static method."""
    if init is None:
        return config
    if config.sparse.method != "static":
        raise CliError(f"argument --init: {init!r} is not allowed with --method {config.sparse.method}: pruning at "
                       "initialisation chooses a fixed mask; use --method static")
    given = config.sparse.options.get("init")
    if given is not None and given != init:
        raise CliError(f"argument --init: {init!r} contradicts sparse.options.init={given!r}; give one of them")
    return config.with_overrides({"sparse.options.init": init})


def _nproc(args: argparse.Namespace) -> int:
    if args.nproc is None:
        return 1
    try:
        nproc = int(args.nproc)
    except ValueError:
        nproc = 0
    if nproc < 1:
        raise CliError(f"argument --nproc: {args.nproc!r} is not allowed: expected an int >= 1")
    if "WORLD_SIZE" in os.environ:
        raise CliError("argument --nproc is not allowed inside a torchrun launch (WORLD_SIZE is set): torchrun "
                       "already chose the number of processes")
    return nproc


def _trainer(config: Any, args: argparse.Namespace, runs_dir: Path) -> tuple[Any, Progress]:
    """A Trainer with a progress display; built (validated) now unless its run has finished."""
    from sparsetrain.experiment import Trainer

    progress = Progress(args.progress and is_main_process())
    trainer = Trainer(config, runs_dir, callback=progress.callback(), plots=args.plots)
    if trainer.status() != "finished":
        trainer.prepare()  # configuration errors surface here, before anything is trained or written
    return trainer, progress


def _train_one(trainer: Any, progress: Progress, args: argparse.Namespace, *,
               shared: bool = False) -> list[dict[str, Any]]:
    """Train (resume, or skip) one run; its summary in a list, empty when a ``shared`` run (the dense baseline
    of several commands) is being trained by another process right now."""
    from sparsetrain.experiment.lock import DirectoryLocked

    status = trainer.status()
    if status == "finished":
        summary = trainer.run.read_summary() or {}  # a damaged one stops here, with what to do about it
        extra = f"; --restart does not retrain finished runs (delete {trainer.run.path} to retrain)" \
            if args.restart else ""
        note(f"{trainer.run.name}: already finished ({trainer.run.path}); skipping{extra}")
        return [summary]
    try:
        with trainer.locked():  # before a word is said: a second process on this run stops here
            if not (trainer.run.checkpoint_file.exists() or trainer.run.previous_checkpoint_file.exists()):
                note(f"{trainer.run.name}: training {trainer.config.sparse.method} ({trainer.total_steps} steps) in "
                     f"{trainer.run.path}")
            elif args.restart:
                note(f"{trainer.run.name}: --restart: discarding the checkpoint, training from scratch")
            try:
                return [trainer.fit(restart=args.restart)]
            finally:
                progress.close()
    except DirectoryLocked as exc:
        if not shared:
            raise
        note(f"{exc}: skipping it here (the dense baseline is shared by every sparse run of this recipe)")
        return []


def _without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--nproc N`` / ``--nproc=N`` (and argparse's unambiguous abbreviations of it)."""
    rest: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if len(name) >= 4 and "--nproc".startswith(name):
            skip = "=" not in token
            continue
        rest.append(token)
    return rest


def _launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``sparsetrain <argv less --nproc>`` under torchrun with ``nproc`` processes; its exit status."""
    import sparsetrain

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "sparsetrain", *_without_nproc(argv)]
    env = dict(os.environ)
    # the processes import this very copy of sparsetrain, and start with one OpenMP thread (train.threads rules)
    package_root = str(Path(sparsetrain.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    note(f"launching {nproc} data-parallel processes: {' '.join(command[1:])}")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    # Ctrl-C reaches the whole process group: the workers checkpoint and stop; wait for them. A SIGTERM sent to
    # this process alone is passed on.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))}
    try:
        assert process.stderr is not None
        said_error, held = _relay(process.stderr)
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code != 0 and _LAUNCHER_FAILURE in held:
        return _report_failure(held, nproc, said_error)
    _to_stderr(held)
    return code if code >= 0 else 128 - code


def _to_stderr(text: str) -> None:
    """Write the workers' output to file descriptor 2, where they would have written it themselves."""
    data = text.encode(errors="replace")
    while data:
        data = data[os.write(2, data):]


#: What torchrun's own report of a failed worker (a traceback of the launcher, then a summary) contains.
_LAUNCHER_FAILURE = "torch/distributed/run.py"
_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", re.S)
_LAUNCHER_LOG = re.compile(r"^[WEIC]\d{4} \d\d:\d\d:\d\d")


def _relay(stream: Any) -> tuple[bool, str]:
    """Copy the workers' stderr lines to ours as they come, holding back torchrun's own log lines and tracebacks.

    Returns:
        (whether a worker printed a ``sparsetrain: error:`` line, the text held back).
    """
    said_error, held, holding = False, [], False
    for line in stream:
        holding = holding or line.startswith("Traceback")  # a launcher's traceback runs to the end of its output
        if holding or _LAUNCHER_LOG.match(line):
            held.append(line)
            continue
        said_error = said_error or line.startswith(f"{PROG}: error: ")
        _to_stderr(line)
    return said_error, "".join(held)


def _report_failure(held: str, nproc: int, said_error: bool) -> int:
    """One line for torchrun's report of a failed worker (unless a worker said why already); the exit status."""
    match = _ROOT_CAUSE.search(held)
    if match is None:
        _to_stderr(held)
        return 1
    rank, status, pid = int(match[1]), int(match[2]), int(match[3])
    if not said_error:
        how = (f"was killed by {signal.Signals(-status).name}" if status < 0 and -status in signal.valid_signals()
               else f"exited with status {status}")
        _to_stderr(f"{PROG}: error: rank {rank} of {nproc} (pid {pid}) {how}; the other ranks were stopped. The last "
                   "checkpoint is intact: run the same command again to resume\n")
    return status if status > 0 else EXIT_LOST_RANK
