"""The ``sparsetrain`` command line: ``train``, ``report``, ``plot``, ``lottery``, ``jackpot``, ``plasticity``,
``compare`` and ``reproduce``.

``sparsetrain train`` with no arguments trains GraNet at 90% sparsity on MNIST-1D and the dense baseline with
the same recipe, and prints both accuracies. Every config field has a flag (``--help`` lists them with their
defaults); a YAML file (``--config``) and dotted overrides (``--set sparse.sparsity=0.95``) cover the rest.
Precedence: defaults < ``--config`` < flags < ``--set``.

The CLI owns the terminal: a tqdm progress bar and per-epoch lines on stderr, results on stdout. A bad option
or config value exits with status 2 and one line, ``sparsetrain: error: <field>=<value> is not allowed ...``;
Ctrl-C or SIGTERM writes a checkpoint and exits with 130 / 143, and rerunning the same command resumes.

Data parallel: ``sparsetrain train --nproc N ...`` re-launches itself as
``python -m torch.distributed.run --standalone --nproc_per_node N -m sparsetrain train ...`` (the same
arguments less ``--nproc``) after checking the arguments here; ranks other than 0 train silently.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sparsetrain import __version__

__all__ = ["main", "build_parser"]

PROG = "sparsetrain"
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and status 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


def _fmt_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value)) or "[]"
    if isinstance(value, dict):
        return "{}" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


# -- train ------------------------------------------------------------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; every flag defaults to "not given" (None)."""
    import typing

    from sparsetrain.experiment.config import SECTIONS, iter_fields

    groups = {s: parser.add_argument_group(f"{s} (config section '{s}')",
                                         (SECTIONS[s].__doc__ or "").replace("``", "")) for s in SECTIONS}
    for info in iter_fields():
        group = groups[info.section]
        help_text = f"{info.help} (default: {_fmt_default(info.default)})"
        dest = f"cfg:{info.path}"
        origin = typing.get_origin(info.type)
        if info.type is bool:
            group.add_argument(info.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif origin is dict:
            group.add_argument(info.flag, dest=dest, action="append", default=None, metavar="KEY=VALUE",
                               help=f"{info.help}; repeatable, values are YAML (default: none)")
        elif origin is list:
            group.add_argument(info.flag, dest=dest, nargs="+", default=None, metavar="X", help=help_text)
        else:
            try:
                choices = info.allowed()
            except ImportError:
                choices = None
            metavar = "{" + ",".join(choices) + "}" if choices else info.name.upper()
            group.add_argument(info.flag, dest=dest, default=None, metavar=metavar, help=help_text)


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train runs (and the dense baseline); resume interrupted ones; skip finished ones",
        description="Train one run per seed in <runs-dir>/<method>-<hash>/seed_<n>/ (hash of the non-default "
                    "config fields). With no arguments: GraNet at 90% sparsity on MNIST-1D, plus the dense "
                    "baseline with the same recipe. A finished run is skipped; an interrupted one resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE", default=None,
                     help="YAML config file with sections data/model/optim/sparse/train (default: none)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted override applied after the flags, repeatable, e.g. --set sparse.sparsity=0.95 "
                          "or --set sparse.options.drop_fraction=0.3 (default: none)")
    run.add_argument("--runs-dir", default="runs", help="where runs are written (default: runs)")
    run.add_argument("--seeds", nargs="+", type=str, default=None, metavar="N",
                     help="train one run per seed (default: train.seed)")
    run.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                     help="also train (or reuse) the dense baseline with the same recipe (default: true)")
    run.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                     help="resume interrupted runs (the default anyway); with a run directory "
                          "(runs/<name>/seed_<n>), continue that run from its own config.yaml (default: off)")
    run.add_argument("--restart", action="store_true",
                     help="discard an interrupted run's checkpoint and train it from scratch (default: false)")
    run.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                     help="write each run's PNG plots when it finishes (default: true)")
    run.add_argument("--nproc", default=None, metavar="N",
                     help="data parallel on this machine: re-launch under torchrun with N processes (gloo on CPU, "
                          "NCCL on CUDA); train.batch_size is the global batch, split across them (default: 1)")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved config as YAML and exit (default: false)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar or per-epoch lines on stderr (default: shown)")
    run.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")
    _add_config_flags(parser)
    from sparsetrain.init_pruning import INIT_METHODS

    parser.add_argument("--init", choices=INIT_METHODS, default=None,
                        help="pruning at initialisation for --method static: shortcut for --method-option "
                             "init=NAME (default: none, a random mask)")
    parser.set_defaults(func=_cmd_train)


def _resolve_config(args: argparse.Namespace) -> Any:
    """defaults < --config file (or --resume RUN_DIR's config.yaml) < flags < --set."""
    from sparsetrain.experiment.config import ConfigError, ExperimentConfig, parse_yaml_value, iter_fields, parse_text

    if isinstance(args.resume, str):
        from sparsetrain.experiment.rundir import RunDir

        if args.config:
            raise CliError("--resume RUN_DIR and --config cannot be combined: the run's own config.yaml is used")
        config = RunDir(Path(args.resume)).read_config()
    elif args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CliError(f"--config={args.config!r}: no such file")
        config = ExperimentConfig.from_yaml(path.read_text(), str(path))
    else:
        config = ExperimentConfig()

    overrides: dict[str, Any] = {}
    for info in iter_fields():
        given = getattr(args, f"cfg:{info.path}")
        if given is None:
            continue
        try:
            if isinstance(given, bool):
                overrides[info.path] = given
            elif isinstance(given, list) and info.name == "options":
                for item in given:
                    key, sep, text = item.partition("=")
                    if not sep or not key:
                        raise ConfigError(f"{info.flag}={item!r} is not allowed: expected KEY=VALUE")
                    overrides[f"{info.path}.{key.strip()}"] = parse_yaml_value(f"{info.path}.{key}", text)
            elif isinstance(given, list):
                overrides[info.path] = parse_text(info.path, " ".join(given))
            else:
                overrides[info.path] = parse_text(info.path, given)
        except ConfigError as exc:
            raise ConfigError(f"argument {info.flag}: {exc}") from None
    config = config.with_overrides(overrides)

    sets: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not allowed: expected KEY=VALUE, e.g. sparse.sparsity=0.95")
        parts = key.split(".")
        if len(parts) == 3 and parts[1] == "options":
            sets[key] = parse_yaml_value(key, text)
        else:
            sets[key] = parse_text(key, text)
        config = config.with_overrides({key: sets[key]})
    return config


def _seeds(args: argparse.Namespace, default: int) -> list[int]:
    if args.seeds is None:
        return [default]
    seeds = []
    for text in args.seeds:
        try:
            seed = int(text)
        except ValueError:
            raise CliError(f"argument --seeds: {text!r} is not allowed: expected ints >= 0") from None
        if seed < 0:
            raise CliError(f"argument --seeds: {seed} is not allowed: expected ints >= 0")
        seeds.append(seed)
    return list(dict.fromkeys(seeds))


class _Progress:
    """tqdm progress bar on stderr with loss, accuracy, sparsity; one line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self._last = 0.0

    def on_start(self, trainer: Any) -> None:
        if trainer.resumed_from is not None:
            _note(f"{trainer.run.name}: resuming an interrupted run at step {trainer.step} "
                  f"(epoch {trainer.epoch} of {trainer.config.train.epochs} complete)")
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=trainer.run.name, unit="step",
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.25, leave=False)

    def on_step(self, trainer: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            values = trainer.running()
            self.bar.set_postfix(loss=_num(values["loss"]), acc=_num(values["acc"]),
                                 sparsity=_num(values["sparsity"]), refresh=False)

    def on_epoch(self, trainer: Any, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = (f"{trainer.run.name} epoch {record['epoch']}/{trainer.config.train.epochs} step {record['step']}: "
                f"train loss {_num(record['train_loss'])} acc {_num(record['train_acc'])} | "
                f"val acc {_num(record['val_acc'])} | test acc {_num(record['test_acc'])} | "
                f"sparsity {_num(record['sparsity'])} | lr {record['lr']:.3g}")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def on_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _note(message: str) -> None:
    if _is_main():
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _is_main() -> bool:
    """False on ranks > 0 of a torchrun launch: they train, but rank 0 alone talks to the terminal."""
    return os.environ.get("WORLD_SIZE", "1") == "1" or os.environ.get("RANK", "0") == "0"


def _trainer(config: Any, args: argparse.Namespace, runs_dir: Path) -> tuple[Any, _Progress]:
    """A Trainer with a progress display; built (validated) now unless its run has finished."""
    from sparsetrain.experiment import Trainer, TrainerCallback

    progress = _Progress(args.progress and _is_main())

    class Callback(TrainerCallback):
        on_start = staticmethod(progress.on_start)
        on_step = staticmethod(progress.on_step)
        on_epoch = staticmethod(progress.on_epoch)
        on_end = staticmethod(progress.on_end)

    trainer = Trainer(config, runs_dir, callback=Callback(), plots=args.plots)
    if trainer.status() != "finished":
        trainer.prepare()  # configuration errors surface here, before anything is trained or written
    return trainer, progress


def _train_one(trainer: Any, progress: _Progress, args: argparse.Namespace) -> dict[str, Any]:
    status = trainer.status()
    if status == "finished":
        extra = f"; --restart does not retrain finished runs (delete {trainer.run.path} to retrain)" \
            if args.restart else ""
        _note(f"{trainer.run.name}: already finished ({trainer.run.path}); skipping{extra}")
        return trainer.run.read_summary() or {}
    if status == "new" or not (trainer.run.checkpoint_file.exists() or trainer.run.previous_checkpoint_file.exists()):
        _note(f"{trainer.run.name}: training {trainer.config.sparse.method} ({trainer.total_steps} steps) in "
              f"{trainer.run.path}")
    elif args.restart:
        _note(f"{trainer.run.name}: --restart: discarding the checkpoint, training from scratch")
    try:
        return trainer.fit(restart=args.restart)
    finally:
        progress.close()


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


def _cmd_train(args: argparse.Namespace) -> int:
    from sparsetrain.experiment import RunDir, TrainingInterrupted
    from sparsetrain.experiment.config import DENSE
    from sparsetrain.experiment.parallel import shutdown

    base = _with_init(_resolve_config(args), args.init)
    nproc = _nproc(args)
    if args.print_config:
        print(base.canonical().to_yaml(), end="")
        return 0
    if args.resume is not None and args.restart:
        raise CliError("--resume and --restart cannot be combined")
    if nproc > 1 and base.train.batch_size % nproc:
        raise CliError(f"train.batch_size={base.train.batch_size} is not allowed with --nproc {nproc}: the "
                       f"minibatch is split evenly across the processes; use a multiple of {nproc}")
    runs_dir = Path(args.runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise CliError(f"--runs-dir={args.runs_dir!r} is not allowed: it is a file, expected a directory")
    if isinstance(args.resume, str):
        run_path = Path(args.resume).resolve()
        runs_dir = run_path.parent.parent
        if RunDir.for_config(runs_dir, base.canonical()).path != run_path:
            raise CliError(f"--resume {args.resume}: the options given change the run's identity; "
                           "only paths, device, threads and workers may change on resume")
        if RunDir(run_path).status() == "finished":
            raise CliError(f"--resume {args.resume}: the run has already finished (summary.json exists), there is "
                           "nothing to resume; delete its directory to train it again")
    seeds = _seeds(args, base.train.seed)
    with_baseline = args.baseline and base.sparse.method != DENSE and not isinstance(args.resume, str)
    results: list[dict[str, Any]] = []
    try:
        for seed in seeds:
            config = base.with_overrides({"train.seed": seed})
            main_run = _trainer(config, args, runs_dir)  # validate the run before training its baseline
            if with_baseline:
                baseline = _trainer(config.dense_baseline(), args, runs_dir)
                if nproc == 1:
                    results.append(_train_one(*baseline, args))
            if nproc == 1:
                results.append(_train_one(*main_run, args))
        if nproc > 1:  # every run checked: train them all under torchrun
            return _launch(args.argv, nproc)
    except TrainingInterrupted as exc:
        _note(f"interrupted by {exc.signal_name} at step {exc.step} ({exc.epoch} epochs complete); checkpoint "
              f"written to {exc.checkpoint}. Run the same command again to resume.")
        return exc.exit_code
    finally:
        shutdown()
    if _is_main():
        _print_results(results, runs_dir)
    return 0


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
    _note(f"launching {nproc} data-parallel processes: {' '.join(command[1:])}")
    process = subprocess.Popen(command, env=env)
    # Ctrl-C reaches the whole process group: the workers checkpoint and stop; wait for them. A SIGTERM sent to
    # this process alone is passed on.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))}
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code if code >= 0 else 128 - code


def _print_results(results: Sequence[dict[str, Any]], runs_dir: Path) -> None:
    print(f"results (test accuracy; runs in {runs_dir}/):")
    dense = {r.get("seed"): r for r in results if r.get("method") == "dense"}
    for r in results:
        line = (f"  {r['method']:<8} sparsity {_num(r.get('sparsity'))} (target {r.get('target_sparsity', 0):.2f})"
                f"  final {_num(r.get('final_acc'))}  best {_num(r.get('best_acc'))}  {r['wall_time']:.1f}s  {r['run']}")
        print(line)
    for r in results:
        if r.get("method") == "dense":
            continue
        ref = dense.get(r.get("seed")) or {}
        ref_acc = ref.get("final_acc", (r.get("dense") or {}).get("final_acc"))
        if ref_acc is not None and r.get("final_acc") is not None:
            print(f"{r['method']} at {r['target_sparsity']:.0%} sparsity: {r['final_acc']:.4f} vs dense "
                  f"{ref_acc:.4f} ({r['final_acc'] - ref_acc:+.4f}), seed {r.get('seed')}")


# -- report -----------------------------------------------------------------------------------------------------
def _add_report(sub: argparse._SubParsersAction) -> None:
    from sparsetrain.experiment.report import COLUMNS, FORMATS

    parser = sub.add_parser(
        "report", help="print a table of finished runs",
        description="A table of the finished runs under --runs-dir. Columns: "
                    + "; ".join(f"{k}: {d}" for k, d in COLUMNS) + ". Then one row per finished level of each "
                    "lottery run (lottery-<hash>/seed_<n>): accuracy of the ticket and its controls against the "
                    "weights remaining.")
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
    parser.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from sparsetrain.experiment.report import aggregate_rows, collect_rows, format_rows

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise CliError(f"--runs-dir={args.runs_dir!r}: no such directory")
    from sparsetrain.lottery.report import format_lottery_rows, lottery_rows

    rows = collect_rows(runs_dir)
    lottery = lottery_rows(runs_dir)
    if not rows and not lottery:
        _note(f"no finished runs under {runs_dir}/")
        return 0
    if args.aggregate:
        rows = aggregate_rows(rows)
    text = format_rows(rows, args.format) if rows else ""
    if lottery:
        table = format_lottery_rows(lottery, args.format)
        title = "lottery runs (test accuracy vs weights remaining):\n" if args.format != "csv" else ""
        text = (text.rstrip("\n") + "\n\n" if text else "") + title + table
    print(text, end="" if text.endswith("\n") else "\n")
    if args.layers:
        from sparsetrain.experiment.report import format_layers, layer_rows
        from sparsetrain.experiment.rundir import find_runs

        for run in find_runs(runs_dir):
            summary = run.read_summary() or {}
            layers = format_layers(layer_rows(summary), args.format)
            text += f"\n\n{run.name}:\n{layers}"
            print(f"\n{run.name}:\n{layers}")
    if args.output:
        Path(args.output).write_text(text if text.endswith("\n") else text + "\n")
    return 0


# -- plot -------------------------------------------------------------------------------------------------------
def _add_plot(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plot", help="write PNG plots of the runs",
        description="Writes accuracy_vs_sparsity.png (across runs, dense baseline as a dashed line) into --out, "
                    "and curves.png, density.png and layers.png into every finished run's directory, and curve.png "
                    "into every lottery run.")
    parser.add_argument("--runs-dir", default="runs", help="the runs directory (default: runs)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where accuracy_vs_sparsity.png goes (default: the runs directory)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (default: shown)")
    parser.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sparsetrain.experiment.plots import plot_accuracy_vs_sparsity, plot_run
    from sparsetrain.experiment.rundir import find_runs

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise CliError(f"--runs-dir={args.runs_dir!r}: no such directory")
    from sparsetrain.lottery.report import plot_lottery_runs

    runs = list(find_runs(runs_dir))
    curves = plot_lottery_runs(runs_dir)
    for path in curves:
        print(path)
    if not runs:
        if not curves:
            _note(f"no finished runs under {runs_dir}/: nothing to plot")
        return 0
    summaries = []
    written = []
    for run in tqdm(runs, desc="plots", unit="run", file=sys.stderr, disable=not args.progress, leave=False):
        summary = run.read_summary()
        if summary is None:
            continue
        summaries.append(summary)
        written += plot_run(run, summary=summary)
    out = Path(args.out) if args.out else runs_dir
    written.append(plot_accuracy_vs_sparsity(summaries, out / "accuracy_vs_sparsity.png"))
    for path in written:
        print(path)
    return 0


# -- lottery ----------------------------------------------------------------------------------------------------
def _add_lottery(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "lottery", help="lottery tickets: iterative magnitude pruning with rewinding, and its controls",
        description="Iterative magnitude pruning (Frankle & Carbin 2019; rewinding to step k: Frankle et al. 2020) "
                    "on the data/model/optim/train recipe of the config, in <runs-dir>/lottery-<hash>/seed_<n>/"
                    "level_<k>/ (masks.pt, sparsity.json, metrics.json; controls in reinit/ and random/). A "
                    "stopped run resumes at the stage it was in. The sparse section plays no part.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE", default=None,
                     help="YAML config file with sections data/model/optim/train (default: none)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted override applied after the flags, repeatable (default: none)")
    run.add_argument("--runs-dir", default="runs", help="where runs are written (default: runs)")
    run.add_argument("--seeds", nargs="+", type=str, default=None, metavar="N",
                     help="one lottery run per seed (default: train.seed)")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved config as YAML and exit (default: false)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no per-level lines on stderr (default: shown)")
    run.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")
    lottery = parser.add_argument_group("lottery (sparsetrain.lottery.LotteryConfig)")
    lottery.add_argument("--rounds", type=int, default=3, help="pruning rounds after the dense level 0 (default: 3)")
    lottery.add_argument("--prune-rate", type=float, default=0.2,
                         help="fraction of the remaining weights pruned per round (default: 0.2)")
    lottery.add_argument("--output-rate", default="0.1",
                         help="rate of the output layer, or none for --prune-rate (default: 0.1)")
    lottery.add_argument("--output-layer", default=None,
                         help="name of the output tensor (default: the last pruned tensor)")
    lottery.add_argument("--scope", default="layerwise", choices=("layerwise", "global"),
                         help="rank per tensor, or one threshold over all but the output layer (default: layerwise)")
    lottery.add_argument("--rewind-step", type=int, default=0,
                         help="rewind survivors to their values at this optimizer step; 0 = init (default: 0)")
    lottery.add_argument("--one-shot", action="store_true",
                         help="level k prunes the dense weights straight to its sparsity (default: iterative)")
    lottery.add_argument("--controls", nargs="*", default=["reinit", "random"], metavar="{reinit,random}",
                         help="controls trained at every level >= 1 (default: reinit random)")
    _add_config_flags(parser)
    parser.set_defaults(func=_cmd_lottery, resume=None)


def _lottery_config(args: argparse.Namespace, seed: int) -> Any:
    from sparsetrain.lottery import LotteryConfig

    output_rate: float | None
    if str(args.output_rate).lower() == "none":
        output_rate = None
    else:
        try:
            output_rate = float(args.output_rate)
        except ValueError:
            raise CliError(f"argument --output-rate: {args.output_rate!r} is not allowed: a number in [0, 1) or "
                           "none") from None
    try:
        return LotteryConfig(rounds=args.rounds, prune_rate=args.prune_rate, output_rate=output_rate,
                             output_layer=args.output_layer, scope=args.scope, rewind_step=args.rewind_step,
                             one_shot=args.one_shot, controls=tuple(args.controls), seed=seed)
    except (ValueError, TypeError) as exc:
        raise CliError(f"lottery: {exc}") from None


def _lottery_dir(runs_dir: Path, config: Any, lottery: Any) -> Path:
    """runs_dir/lottery-<hash of the recipe and the lottery options, seeds left out>/seed_<n>."""
    import hashlib
    import json

    identity = {"experiment": config.non_default(), "lottery": {k: v for k, v in lottery.to_dict().items()
                                                                 if k != "seed"}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return runs_dir / f"lottery-{digest}" / f"seed_{config.train.seed}"


def _cmd_lottery(args: argparse.Namespace) -> int:
    from sparsetrain.lottery import curve_table, plot_curve, run_lottery
    from sparsetrain.lottery.experiment import experiment_lottery

    base = _resolve_config(args)
    given_sparse = {k: v for k, v in base.non_default(hashed_only=False).items() if k.startswith("sparse.")}
    if given_sparse:
        raise CliError(f"{', '.join(sorted(given_sparse))}: the sparse section is not used by lottery runs (IMP "
                       "chooses the masks); use --prune-rate, --rounds, --scope instead")
    if args.print_config:
        print(base.canonical().to_yaml(), end="")
        return 0
    for seed in _seeds(args, base.train.seed):
        config = base.with_overrides({"train.seed": seed})
        lottery = _lottery_config(args, seed)
        out = _lottery_dir(Path(args.runs_dir), config, lottery)
        out.mkdir(parents=True, exist_ok=True)
        (out / "experiment.yaml").write_text(config.canonical().to_yaml())
        model, train_fn, total_steps = experiment_lottery(config)

        def announce(model_: Any, masks: Any, level_dir: Path, **kwargs: Any) -> dict[str, Any]:
            if args.progress:
                kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
                _note(f"{out.parent.name}/{out.name}: training {level_dir.relative_to(out)} "
                      f"({kept:.2%} of weights, {total_steps - kwargs.get('start_step', 0)} steps)")
            return train_fn(model_, masks, level_dir, **kwargs)

        if args.progress:
            _note(f"lottery run in {out} ({lottery.rounds} rounds); finished stages are skipped")
        rows = run_lottery(model, lottery, announce, out)
        table = curve_table(rows)
        (out / "curve.md").write_text(table + "\n")
        try:
            plot_curve(rows, out / "curve.png")
        except Exception as exc:  # a plotting failure must not lose the run
            logging.getLogger(__name__).warning("curve.png not written: %s: %s", type(exc).__name__, exc)
        print(f"lottery run {out} (test accuracy vs weights remaining):")
        print(table)
    return 0


# -- jackpot ----------------------------------------------------------------------------------------------------
def _add_jackpot(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "jackpot", help="lottery jackpot: search a mask in a trained run without changing its weights",
        description="Rebuilds the model of a finished run (runs/<name>/seed_<n>: config.yaml, checkpoint.pt), loads "
                    "its trained weights and searches a mask at --sparsity by training scores only (Chen et al. "
                    "2021, sparsetrain.lottery.find_jackpot) on the run's training batches. Prints the test "
                    "accuracy of the magnitude mask (before) and of the jackpot (after) and their IoU, and writes "
                    "RUN_DIR/jackpot-<sparsity>/masks.pt and jackpot.json. No file of the run changes.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory (runs/<name>/seed_<n>)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity in [0, 1) (default: 0.9)")
    parser.add_argument("--steps", type=int, default=100, help="score-update steps (default: 100)")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate of the scores (default: 0.1)")
    parser.add_argument("--max-changes", type=int, default=None, metavar="N",
                        help="short restriction: mask entries that may flip per step (default: no limit)")
    parser.add_argument("--batches", type=int, default=None, metavar="N",
                        help="use only the first N training batches, cycled (default: the whole split)")
    parser.add_argument("--distribution", choices=("uniform", "er", "erk", "global"), default="uniform",
                        help="per-layer sparsity: uniform, er, erk, or one global ranking (default: uniform)")
    parser.add_argument("--device", default=None, help="overrides the run's train.device (default: the run's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")
    parser.set_defaults(func=_cmd_jackpot)


def _cmd_jackpot(args: argparse.Namespace) -> int:
    from sparsetrain.lottery.jackpot_run import run_jackpot

    try:
        record = run_jackpot(args.run_dir, sparsity=args.sparsity, steps=args.steps, lr=args.lr,
                             max_changes=args.max_changes, batches=args.batches, distribution=args.distribution,
                             device=args.device)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    print(f"jackpot at sparsity {record['sparsity']:g} in {record['run']} ({record['steps']} steps, "
          f"{record['batches']} batches; test accuracy):")
    print(f"  magnitude mask (before)  {record['accuracy_before']:.4f}")
    gain = record["accuracy_after"] - record["accuracy_before"]
    print(f"  jackpot (after)          {record['accuracy_after']:.4f} ({gain:+.4f})")
    print(f"  IoU with magnitude mask  {record['iou_with_magnitude']:.4f}")
    print(record["out"])
    return 0


# -- plasticity -------------------------------------------------------------------------------------------------
def _add_plasticity(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plasticity", help="pruning plasticity: prune a dense run at epochs t with rates r, train on, compare",
        description="Trains the dense run of the recipe (config flags as for train), saves its checkpoints after "
                    "the epochs t of --prune-epochs, prunes a copy of each by magnitude with each rate r "
                    "(--scope global or layer), and trains it to the end of the schedule with the mask fixed "
                    "and/or with GraNet's neuroregeneration. Writes plasticity.md, plasticity.csv and "
                    "plasticity.png (relative accuracy change against t, one line per r and regeneration, LR "
                    "decays marked). Every stage is skipped when its output exists. Use a multistep learning rate "
                    "(--lr-schedule multistep) to see the effect of its decays.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    study = parser.add_argument_group("plasticity")
    study.add_argument("--prune-epochs", nargs="+", type=int, default=None, metavar="T",
                       help="epochs after which copies are pruned (default: before and after each LR decay, plus "
                            "an early one)")
    study.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5, 0.8], metavar="R",
                       help="pruning rates (default: 0.2 0.5 0.8)")
    study.add_argument("--regeneration", choices=("both", "yes", "no"), default="both",
                       help="train the pruned copies with neuroregeneration, without, or both (default: both)")
    study.add_argument("--scope", choices=("global", "layer"), default="global",
                       help="one magnitude threshold over all layers, or one per layer (default: global)")
    study.add_argument("--regrow-every", type=int, default=100,
                       help="neuroregeneration: optimizer steps between drop-and-regrow updates (default: 100)")
    study.add_argument("--drop-fraction", type=float, default=0.5,
                       help="neuroregeneration: initial drop fraction, cosine-decayed (default: 0.5)")
    study.add_argument("--out", default=None, metavar="DIR",
                       help="study directory (default: RUNS_DIR/plasticity/<dense run name>/seed_<n>)")
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE", default=None, help="YAML config file (default: none)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted override applied after the flags, repeatable (default: none)")
    run.add_argument("--runs-dir", default="runs", help="runs directory (default: runs)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar (default: shown)")
    run.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")
    _add_config_flags(parser)
    parser.set_defaults(func=_cmd_plasticity, resume=None)


def _cmd_plasticity(args: argparse.Namespace) -> int:
    from sparsetrain.analysis.plasticity import format_plasticity, run_plasticity
    from sparsetrain.experiment import TrainerCallback, TrainingInterrupted

    config = _resolve_config(args).dense_baseline()
    out = Path(args.out) if args.out else (Path(args.runs_dir) / "plasticity" / config.run_name()
                                           / f"seed_{config.train.seed}")
    regeneration = {"both": (False, True), "yes": (True,), "no": (False,)}[args.regeneration]
    progress = _Progress(args.progress)

    class Callback(TrainerCallback):
        on_start = staticmethod(progress.on_start)
        on_step = staticmethod(progress.on_step)
        on_end = staticmethod(progress.on_end)

    _note(f"plasticity study in {out}/ (finished stages are skipped)")
    try:
        rows = run_plasticity(config, out, prune_epochs=args.prune_epochs, rates=args.rates,
                              regeneration=regeneration, scope=args.scope, regrow_every=args.regrow_every,
                              drop_fraction=args.drop_fraction, callback=Callback())
    except TrainingInterrupted as exc:
        _note(f"interrupted by {exc.signal_name} at step {exc.step}; checkpoint written to {exc.checkpoint}. Run "
              "the same command again to resume.")
        return exc.exit_code
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    finally:
        progress.close()
    print(format_plasticity(rows, "markdown"))
    for name in ("plasticity.md", "plasticity.csv", "plasticity.png"):
        print(out / name)
    return 0


# -- compare ----------------------------------------------------------------------------------------------------
def _add_compare(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare", help="mask overlap (IoU, Hamming) of two runs, or update sparsity between two checkpoints",
        description="A and B are run directories (runs/<name>/seed_<n>), lottery level directories (level_<L>, "
                    "level_<L>/reinit), masks.pt files, checkpoint.pt files or saved state dicts. Without --update: "
                    "the overlap of their masks per layer and in total (IoU, Hamming distance, and the IoU two "
                    "random masks of the same sizes would have). With --update: the update sparsity from A "
                    "(before) to B (after): the fraction of each tensor that changed (beyond --atol) and the rank "
                    "of each update. With four paths (A B C D) or --against C D: also the overlap of the changed "
                    "sets of A->B and C->D.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="A B, or A B C D")
    parser.add_argument("--update", action="store_true",
                        help="update sparsity between checkpoints instead of mask overlap (default: false)")
    parser.add_argument("--against", nargs=2, metavar=("C", "D"), default=None,
                        help="a second pair: overlap of the changed sets of A->B and C->D (implies --update)")
    parser.add_argument("--atol", type=float, default=0.0,
                        help="an entry changed when |after - before| > ATOL; 0 compares exactly (default: 0)")
    parser.add_argument("--no-rank", dest="rank", action="store_false",
                        help="skip the update ranks (one SVD per tensor) (default: computed)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
    parser.add_argument("--output", metavar="FILE", default=None, help="also write the output to FILE")
    parser.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from sparsetrain.analysis import mask_overlap, update_overlap, update_sparsity
    from sparsetrain.analysis.sources import common_names, load_masks, load_weights

    paths = list(args.paths)
    if len(paths) not in (2, 4):
        raise CliError(f"compare takes 2 or 4 paths (A B [C D]), got {len(paths)}")
    if args.against is not None:
        if len(paths) == 4:
            raise CliError("give either four paths or --against C D, not both")
        paths += list(args.against)
    update = args.update or len(paths) == 4
    if not args.atol >= 0 or args.atol == float("inf"):
        raise CliError(f"argument --atol: {args.atol!r} is not allowed: a finite number >= 0")
    sections: list[tuple[str, Any]] = []
    notes: list[str] = []
    try:
        if not update:
            a, b = load_masks(paths[0]), load_masks(paths[1])
            names, left = common_names(a, b)
            if left:
                notes.append(f"tensors not in both (left out): {', '.join(left)}")
            if not names:
                raise CliError(f"{paths[0]} and {paths[1]} share no mask of the same name and shape")
            sections.append((f"mask overlap: {paths[0]} vs {paths[1]}",
                             mask_overlap({n: a[n] for n in names}, {n: b[n] for n in names})))
        else:
            pairs = [paths[0:2]] + ([paths[2:4]] if len(paths) == 4 else [])
            reports = []
            for before_path, after_path in pairs:
                before, after = load_weights(before_path), load_weights(after_path)
                names, left = common_names(before, after)
                names = [n for n in names if before[n].is_floating_point()]
                if left:
                    notes.append(f"{before_path} -> {after_path}: tensors not in both (left out): {', '.join(left)}")
                report = update_sparsity(before, after, atol=args.atol, names=names, compute_rank=args.rank)
                reports.append(report)
                sections.append((f"update sparsity: {before_path} -> {after_path} (atol {args.atol:g})", report))
            if len(reports) == 2:
                shared, _ = common_names(reports[0].changed_masks, reports[1].changed_masks)
                sections.append((f"overlap of the changed entries: ({paths[0]} -> {paths[1]}) vs "
                                 f"({paths[2]} -> {paths[3]})",
                                 update_overlap({n: reports[0].changed_masks[n] for n in shared},
                                                {n: reports[1].changed_masks[n] for n in shared})))
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    if args.format == "json":
        text = json.dumps({"sections": [{"title": t, **r.to_dict()} for t, r in sections], "notes": notes}, indent=2)
    else:
        text = "\n\n".join(f"{t}\n{r}" for t, r in sections) + "".join(f"\nnote: {n}" for n in notes)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


# -- reproduce --------------------------------------------------------------------------------------------------
def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reproduce", help="the reproduction benchmark: every method at several sparsities and seeds, tables, "
                          "plots and the claims checked",
        description="Trains the grid of a setting (full: dense, GMP, GraNet s_i=0 and 0.5, RigL, SET, SNFS, static "
                    "ERK, SNIP, GraSP, SynFlow and IMP at 90/95/98% sparsity, 3 seeds, on MNIST-1D (cnn1d, mlp) "
                    "and the packaged MNIST subset (LeNet-300-100); plus a pruning-plasticity study) as ordinary run "
                    "directories, so a rerun skips finished cells and resumes interrupted ones; then writes "
                    "reproduction.md (mean ± std tables, the claims of MISSION.md section 5 checked), "
                    "reproduction.csv and PNG plots.")
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
    parser.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import shlex

    from sparsetrain.experiment.reproduce import SETTINGS, plan_jobs, run_jobs
    from sparsetrain.experiment.reproduce_report import record_invocation, write_report

    if args.workers < 1:
        raise CliError(f"argument --workers: {args.workers} is not allowed: expected an int >= 1")
    setting = SETTINGS[args.setting]
    runs_dir = Path(args.runs_dir) / setting.name
    out = Path(args.out) if args.out else (Path("docs/results") if setting.name == "full" else runs_dir / "results")
    start = time.monotonic()
    failed: list[str] = []
    trained: list[str] = []
    if not args.report_only:
        jobs = plan_jobs(setting, runs_dir, plasticity=args.plasticity)
        _note(f"reproduce ({setting.name}): {len(jobs)} jobs in {runs_dir}/ with {args.workers} worker(s); "
              "finished ones are skipped")
        count = 0

        def on_done(job: Any, result: dict[str, Any] | None, error: BaseException | None) -> None:
            nonlocal count
            count += 1
            if error is not None:
                failed.append(job.name)
                _note(f"[{count}/{len(jobs)}] {job.name}: FAILED: {type(error).__name__}: {error}")
                return
            acc = (result or {}).get("final_acc", (result or {}).get("acc"))
            extra = f" acc {acc:.4f}" if isinstance(acc, float) else ""
            if (result or {}).get("trained"):
                trained.append(job.name)
            state = "done" if (result or {}).get("trained") else "finished already"
            _note(f"[{count}/{len(jobs)}] {job.name}: {state}{extra} ({time.monotonic() - start:.0f}s)")

        run_jobs(jobs, workers=args.workers, on_done=on_done)
    command = shlex.join([PROG, *getattr(args, "argv", ["reproduce"])])
    if trained or failed:  # an invocation that only found finished runs leaves the record of the one that trained
        record_invocation(runs_dir, command, time.monotonic() - start, len(trained), len(failed))
    paths = write_report(setting, runs_dir, out, command=command, failed=failed)
    for path in paths:
        print(path)
    return 1 if failed else 0


# -- entry point ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its commands."""
    parser = _Parser(prog=PROG, description="Sparse neural network training (GraNet, RigL, SET, GMP, ...) and "
                                            "lottery-ticket science on PyTorch.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command",
                                metavar="{train,report,plot,lottery,jackpot,plasticity,compare,reproduce}",
                                parser_class=_Parser)
    _add_train(sub)
    _add_report(sub)
    _add_plot(sub)
    _add_lottery(sub)
    _add_jackpot(sub)
    _add_plasticity(sub)
    _add_compare(sub)
    _add_reproduce(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad option/config, 130/143 interrupted).

    Args:
        argv: arguments (default: ``sys.argv[1:]``).
    """
    from sparsetrain.checkpoint_io import CheckpointError
    from sparsetrain.experiment.config import ConfigError

    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if extra:
            command = f"{PROG} {args.command}" if args.command else PROG
            raise CliError(f"unrecognized arguments: {' '.join(extra)} (see {command} --help)")
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                            format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return int(args.func(args))
    except (CliError, ConfigError, CheckpointError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
