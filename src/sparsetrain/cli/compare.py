"""``sparsetrain compare``: mask overlap of two runs, or update sparsity between two checkpoints."""

from __future__ import annotations

import argparse

from sparsetrain.atomic import write_text

from .terminal import CliError, output_file

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "mask overlap (IoU, Hamming) of two runs, or update sparsity between two checkpoints"
DESCRIPTION = ("A and B are run directories (runs/<name>/seed_<n>), lottery levels (level_<L>: its ticket; "
               "level_<L>/run, level_<L>/reinit: run directories), masks.pt files, checkpoint.pt files or saved "
               "state dicts. Without --update: "
               "the overlap of their masks per layer and in total (IoU, Hamming distance, and the IoU two "
               "random masks of the same sizes would have). With --update: the update sparsity from A "
               "(before) to B (after): the fraction of each tensor that changed (beyond --atol) and the rank "
               "of each update. With four paths (A B C D) or --against C D: also the overlap of the changed "
               "sets of A->B and C->D.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` command's arguments."""
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


def run(args: argparse.Namespace) -> int:
    """Print the comparison (and write it to ``--output``)."""
    from sparsetrain.analysis.compare import compare_masks, compare_updates

    paths = list(args.paths)
    if len(paths) not in (2, 4):
        raise CliError(f"compare takes 2 or 4 paths (A B [C D]), got {len(paths)}")
    if args.against is not None:
        if len(paths) == 4:
            raise CliError("give either four paths or --against C D, not both")
        paths += list(args.against)
    if not args.atol >= 0 or args.atol == float("inf"):
        raise CliError(f"argument --atol: {args.atol!r} is not allowed: a finite number >= 0")
    output = output_file("--output", args.output) if args.output else None
    try:
        if args.update or len(paths) == 4:
            result = compare_updates(paths, atol=args.atol, rank=args.rank)
        else:
            result = compare_masks(paths[0], paths[1])
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    text = result.to_json() if args.format == "json" else result.to_text()
    print(text)
    if output is not None:
        write_text(text + "\n", output)
    return 0
