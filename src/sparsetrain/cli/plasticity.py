"""``sparsetrain plasticity``: prune a dense run at epochs t with rates r, train on, compare (GraNet §3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config_flags import add_config_flags, parse_seeds, resolve_config
from .terminal import CliError, Progress, note, output_dir

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "pruning plasticity: prune a dense run at epochs t with rates r, train on, compare"
DESCRIPTION = ("Trains the dense run of the recipe (config flags as for train) for each seed, saves its "
               "checkpoints after the epochs t of --prune-epochs, prunes a copy of each by magnitude with each "
               "rate r (--scope global or layer), and trains it to the end of the schedule with the mask fixed "
               "and/or with GraNet's neuroregeneration (its drop fraction on the run-wide cosine, every ΔT "
               "steps of the run: by default GraNet's 1,000 of 56,320, as a fraction of this run). "
               "--late-decay runs the learning-rate control too: the same study with the multistep decays "
               "moved later (same pruning points, same remaining budget). Writes plasticity.md (mean ± std "
               "over seeds), plasticity.csv (every seed) and plasticity.png (relative accuracy change against "
               "t with error bars, one line per r and regeneration, one panel per schedule, LR decays marked). "
               "Every stage is skipped when its output exists. Use a multistep learning rate "
               "(--lr-schedule multistep) to see the effect of its decays.")
RAW_DESCRIPTION = True  # --help prints the description unwrapped


def _interval(text: str) -> int | float:
    """``--regrow-every``: an int (steps) or a float in (0, 1] (a fraction of the run)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected steps (an int >= 1) or a fraction "
                                         "of the run (a number in (0, 1])") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plasticity`` command's arguments."""
    from sparsetrain.studies.plasticity import DEFAULT_RATES

    study = parser.add_argument_group("plasticity")
    study.add_argument("--prune-epochs", nargs="+", type=int, default=None, metavar="T",
                       help="epochs after which copies are pruned (default: before and after each LR decay, plus "
                            "an early one)")
    study.add_argument("--rates", nargs="+", type=float, default=list(DEFAULT_RATES), metavar="R",
                       help=f"pruning rates (default: {' '.join(map(str, DEFAULT_RATES))})")
    study.add_argument("--regeneration", choices=("both", "yes", "no"), default="both",
                       help="train the pruned copies with neuroregeneration, without, or both (default: both)")
    study.add_argument("--scope", choices=("global", "layer"), default="global",
                       help="one magnitude threshold over all layers, or one per layer (default: global)")
    study.add_argument("--regrow-every", type=_interval, default=None, metavar="ΔT",
                       help="neuroregeneration: steps between drop-and-regrow updates (an int), or a fraction of "
                            "the run (a number in (0, 1]) (default: GraNet's 1000 / 56320 of the run)")
    study.add_argument("--drop-fraction", type=float, default=0.5,
                       help="neuroregeneration: drop fraction at step 0 of the run, cosine-decayed over the whole "
                            "run to 0.005 (default: 0.5)")
    study.add_argument("--seeds", nargs="+", type=str, default=None, metavar="N",
                       help="one study per seed; the table shows mean ± std (default: the recipe's train.seed)")
    study.add_argument("--late-decay", nargs="+", type=float, default=None, metavar="M",
                       help="also run the learning-rate control: the recipe with its multistep milestones moved "
                            "to these fractions of the run, one per milestone, each at or after the recipe's "
                            "(default: no control)")
    study.add_argument("--out", default=None, metavar="DIR",
                       help="study directory (default: RUNS_DIR/plasticity/<dense run name>)")
    group = parser.add_argument_group("run")
    group.add_argument("--config", metavar="FILE", default=None, help="YAML config file (default: none)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override applied after the flags, repeatable (default: none)")
    group.add_argument("--runs-dir", default="runs", help="runs directory (default: runs)")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar (default: shown)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="log INFO messages (default: warnings only)")
    add_config_flags(parser)
    parser.set_defaults(resume=None)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the study; print its table and the files written."""
    from sparsetrain.analysis.plasticity import format_plasticity
    from sparsetrain.experiment import TrainingInterrupted
    from sparsetrain.studies.plasticity import (
        GRANET_UPDATE_FRACTION,
        default_prune_epochs,
        plasticity_studies,
        run_plasticity,
    )

    config = resolve_config(args).dense_baseline()
    out = output_dir("--out", args.out) if args.out else Path(args.runs_dir) / "plasticity" / config.run_name()
    regeneration = {"both": (False, True), "yes": (True,), "no": (False,)}[args.regeneration]
    seeds = parse_seeds(args, config.train.seed)
    regrow_every = GRANET_UPDATE_FRACTION if args.regrow_every is None else args.regrow_every
    try:  # every option checked before a word is said or a file written
        studies = plasticity_studies(config, out, seeds=seeds, late_decay=args.late_decay, scope=args.scope,
                                     regrow_every=regrow_every, drop_fraction=args.drop_fraction)
        for study in studies:
            study.cells(args.prune_epochs or default_prune_epochs(studies[0].config), args.rates, regeneration)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    progress = Progress(args.progress)
    note(f"plasticity study in {out}/ (finished stages are skipped)")
    try:
        rows = run_plasticity(config, out, prune_epochs=args.prune_epochs, rates=args.rates,
                              regeneration=regeneration, seeds=seeds, late_decay=args.late_decay, scope=args.scope,
                              regrow_every=regrow_every, drop_fraction=args.drop_fraction,
                              callback=progress.callback(epoch_lines=False))
    except TrainingInterrupted as exc:
        note(f"interrupted by {exc.signal_name} at step {exc.step}; checkpoint written to {exc.checkpoint}. Run "
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
