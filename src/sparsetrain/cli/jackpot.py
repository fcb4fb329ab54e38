"""``sparsetrain jackpot``: search a mask in a trained run without changing its weights (Chen et al. 2021)."""

from __future__ import annotations

import argparse

from .terminal import CliError

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "lottery jackpot: search a mask in a trained run without changing its weights"
DESCRIPTION = ("Rebuilds the model of a finished run (runs/<name>/seed_<n>: config.yaml, checkpoint.pt), loads "
               "its trained weights and searches a mask at --sparsity by training scores only (Chen et al. "
               "2021, sparsetrain.lottery.find_jackpot) on the run's training batches. Prints the test "
               "accuracy of the magnitude mask (before) and of the jackpot (after) and their IoU, and writes "
               "RUN_DIR/jackpot-<sparsity>/masks.pt and jackpot.json. No file of the run changes.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jackpot`` command's arguments."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory (runs/<name>/seed_<n>)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity in [0, 1) (default: 0.9)")
    parser.add_argument("--steps", type=int, default=100, help="score-update steps (default: 100)")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate of the scores (default: 0.1)")
    parser.add_argument("--max-changes", type=int, default=None, metavar="N",
                        help="short restriction: mask entries that may flip per step (default: no limit)")
    parser.add_argument("--batches", type=int, default=None, metavar="N",
                        help="use only the first N training batches, cycled (default: the whole split)")
    parser.add_argument("--distribution", choices=("uniform", "er", "erk"), default=None,
                        help="per-layer sparsity in the layer scope (default: uniform)")
    parser.add_argument("--scope", choices=("layer", "global"), default=None,
                        help="rank each layer on its own, or all layers together (default: layer)")
    parser.add_argument("--pattern", default=None, metavar="N:M",
                        help="search an N:M mask (e.g. 2:4; the sparsity is then 1 - N/M) (default: unstructured)")
    parser.add_argument("--device", default=None, help="overrides the run's train.device (default: the run's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (default: warnings only)")


def run(args: argparse.Namespace) -> int:
    """Search the jackpot and print its accuracy beside the magnitude mask's."""
    from sparsetrain.studies.jackpot import run_jackpot

    try:
        record = run_jackpot(args.run_dir, sparsity=args.sparsity, steps=args.steps, lr=args.lr,
                             max_changes=args.max_changes, batches=args.batches, distribution=args.distribution,
                             scope=args.scope, pattern=args.pattern, device=args.device)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    gain = record["accuracy_after"] - record["accuracy_before"]
    print(f"jackpot at sparsity {record['sparsity']:g} in {record['run']} ({record['steps']} steps, "
          f"{record['batches']} batches; test accuracy):\n"
          f"  magnitude mask (before)  {record['accuracy_before']:.4f}\n"
          f"  jackpot (after)          {record['accuracy_after']:.4f} ({gain:+.4f})\n"
          f"  IoU with magnitude mask  {record['iou_with_magnitude']:.4f}\n"
          f"{record['out']}")
    return 0
