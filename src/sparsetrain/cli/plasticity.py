"""``sparsetrain plasticity``: prune a dense run at epochs t with rates r, train on, compare (GraNet §3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config_flags import add_config_flags, resolve_config
from .terminal import CliError, Progress, note, output_dir

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "pruning plasticity: prune a dense run at epochs t with rates r, train on, compare"
DESCRIPTION = ("Trains the dense run of the recipe (config flags as for train), saves its checkpoints after "
               "the epochs t of --prune-epochs, prunes a copy of each by magnitude with each rate r "
               "(--scope global or layer), and trains it to the end of the schedule with the mask fixed "
               "and/or with GraNet's neuroregeneration. Writes plasticity.md, plasticity.csv and "
               "plasticity.png (relative accuracy change against t, one line per r and regeneration, LR "
               "decays marked). Every stage is skipped when its output exists. Use a multistep learning rate "
               "(--lr-schedule multistep) to see the effect of its decays.")
RAW_DESCRIPTION = True  # --help prints the description unwrapped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plasticity`` command's arguments."""
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
    from sparsetrain.studies.plasticity import PlasticityStudy, default_prune_epochs, run_plasticity
    from sparsetrain.experiment import TrainingInterrupted

    config = resolve_config(args).dense_baseline()
    out = output_dir("--out", args.out) if args.out else (Path(args.runs_dir) / "plasticity" / config.run_name()
                                                          / f"seed_{config.train.seed}")
    regeneration = {"both": (False, True), "yes": (True,), "no": (False,)}[args.regeneration]
    try:  # every option checked before a word is said or a file written
        study = PlasticityStudy(config, out, scope=args.scope, regrow_every=args.regrow_every,
                                drop_fraction=args.drop_fraction)
        study.cells(args.prune_epochs or default_prune_epochs(study.config), args.rates, regeneration)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    progress = Progress(args.progress)
    note(f"plasticity study in {out}/ (finished stages are skipped)")
    try:
        rows = run_plasticity(config, out, prune_epochs=args.prune_epochs, rates=args.rates,
                              regeneration=regeneration, scope=args.scope, regrow_every=args.regrow_every,
                              drop_fraction=args.drop_fraction, callback=progress.callback(epoch_lines=False))
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
