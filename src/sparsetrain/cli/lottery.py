"""``sparsetrain lottery``: iterative magnitude pruning with rewinding, and its controls, on a config's recipe."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparsetrain.lottery import SCHEDULES

from .config_flags import add_config_flags, note_validation, parse_seeds, resolve_config
from .terminal import CliError, note

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "lottery tickets: iterative magnitude pruning with rewinding, and its controls"
DESCRIPTION = ("Iterative magnitude pruning (Frankle & Carbin 2019; rewinding to step k: Frankle et al. 2020) "
               "on the data/model/optim/train recipe of the config, in <runs-dir>/lottery-<hash>/seed_<n>/"
               "level_<k>/ (masks.pt, the ticket, and sparsity.json; run/, the level's training run; the "
               "controls' runs in reinit/ and random/). Every stage is an ordinary training run: a stopped "
               "lottery run resumes where it stopped, mid-level. The sparse section plays no part, except "
               "--pattern N:M: every level is then an N:M pattern (each round applies the rate to the groups' "
               "counts, down to N).\n\n"
               "Levels follow a schedule: --prune-rate of the remaining weights per round (geometric, the "
               "default), a linear rise to --final-sparsity, or a list of --sparsities. --prune-biases ranks each "
               "layer's bias with its weight; --rank-step ranks the weights at that step of each level's run. Any "
               "model: --model package.module:factory (factory(input_shape, num_classes, **options) -> nn.Module, "
               "importable from the current directory or PYTHONPATH); no validation hold-out: --val-fraction 0.")
RAW_DESCRIPTION = True  # --help prints the description unwrapped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lottery`` command's arguments."""
    group = parser.add_argument_group("run")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="YAML config file with sections data/model/optim/train (default: none)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override applied after the flags, repeatable (default: none)")
    group.add_argument("--runs-dir", default="runs", help="where runs are written (default: runs)")
    group.add_argument("--seeds", nargs="+", type=str, default=None, metavar="N",
                       help="one lottery run per seed (default: train.seed)")
    group.add_argument("--print-config", action="store_true",
                       help="print the resolved config as YAML and exit (default: false)")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no per-level lines on stderr (default: shown)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="log INFO messages (default: warnings only)")
    lottery = parser.add_argument_group("lottery (sparsetrain.studies.LotteryConfig)")
    lottery.add_argument("--rounds", type=int, default=None,
                         help="pruning rounds after the dense level 0 (default: 3; with --sparsities, their number)")
    lottery.add_argument("--schedule", default=None, choices=SCHEDULES,
                         help="the levels' sparsities: geometric (--prune-rate of the remaining weights per round), "
                              "linear (a linear rise to --final-sparsity over --rounds) or targets (--sparsities) "
                              "(default: the one whose option is given, else geometric)")
    lottery.add_argument("--prune-rate", type=float, default=None,
                         help="geometric schedule: fraction of the remaining weights pruned per round (default: 0.2)")
    lottery.add_argument("--final-sparsity", type=float, default=None,
                         help="linear schedule: the sparsity at the last level (default: none)")
    lottery.add_argument("--sparsities", type=float, nargs="+", default=None, metavar="S",
                         help="targets schedule: the sparsity after each level, increasing (default: none)")
    lottery.add_argument("--output-rate", default="0.1",
                         help="the output layer's own rate per round, whatever the schedule, or none to prune it "
                              "with the others (default: 0.1)")
    lottery.add_argument("--output-layer", default=None,
                         help="name of the output tensor (default: the last pruned tensor)")
    lottery.add_argument("--scope", default="layer", choices=("layer", "global"),
                         help="rank per tensor, or one threshold over all but the output layer (default: layer)")
    lottery.add_argument("--rewind-step", type=int, default=0,
                         help="rewind survivors to their values at this optimizer step; 0 = init (default: 0)")
    lottery.add_argument("--rank-step", type=int, default=None,
                         help="rank each level's weights at this optimizer step of the previous level's run, not at "
                              "its end; >= --rewind-step (default: the final weights)")
    lottery.add_argument("--prune-biases", action="store_true",
                         help="prune each layer's bias with its weight, ranked in one vector per layer (default: "
                              "biases stay dense)")
    lottery.add_argument("--one-shot", action="store_true",
                         help="level k prunes the dense weights straight to its sparsity (default: iterative)")
    lottery.add_argument("--controls", nargs="*", default=["reinit", "random"], metavar="{reinit,random}",
                         help="controls trained at every level >= 1 (default: reinit random)")
    add_config_flags(parser)
    parser.set_defaults(resume=None)


def run(args: argparse.Namespace) -> int:
    """One lottery run per seed; prints each run's curve."""
    from sparsetrain.studies.lottery import curve_table, lottery_dir, run_lottery

    base = resolve_config(args)
    given_sparse = {k: v for k, v in base.non_default(hashed_only=False).items()
                    if k.startswith("sparse.") and k != "sparse.pattern"}
    if given_sparse:
        raise CliError(f"{', '.join(sorted(given_sparse))}: the sparse section is not used by lottery runs (IMP "
                       "chooses the masks); use --prune-rate, --rounds, --scope (and --pattern) instead")
    pattern = base.sparse.pattern
    base = base.with_overrides({"sparse.pattern": None})
    if args.print_config:
        print(base.canonical().to_yaml(), end="")
        return 0
    note_validation(base)
    for seed in parse_seeds(args, base.train.seed):
        config = base.with_overrides({"train.seed": seed})
        lottery = _lottery_config(args, seed, pattern)
        out = lottery_dir(args.runs_dir, config, lottery)
        if args.progress:
            note(f"lottery run in {out} ({lottery.rounds} rounds); finished stages are skipped")

        def training(run_dir: Path, kept: float, steps: int, out: Path = out) -> None:
            if args.progress:
                note(f"{out.parent.name}/{out.name}: training {run_dir.relative_to(out).as_posix()} "
                     f"({kept:.2%} of weights, {steps} steps)")

        rows = run_lottery(config, lottery, out, on_stage=training)
        print(f"lottery run {out} (test accuracy vs weights remaining):")
        print(curve_table(rows))
    return 0


def _lottery_config(args: argparse.Namespace, seed: int, pattern: str | None = None) -> Any:
    from sparsetrain.studies.lottery import LotteryConfig

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
                             one_shot=args.one_shot, controls=tuple(args.controls), seed=seed, schedule=args.schedule,
                             final_sparsity=args.final_sparsity,
                             sparsities=None if args.sparsities is None else tuple(args.sparsities),
                             prune_biases=args.prune_biases, rank_step=args.rank_step,
                             pattern=pattern)
    except (ValueError, TypeError) as exc:
        raise CliError(f"lottery: {exc}") from None
