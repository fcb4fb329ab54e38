"""The ``sparsetrain`` command line: ``train``, ``report``, ``plot``, ``lottery``, ``jackpot``, ``plasticity``,
``compare`` and ``reproduce``.

``sparsetrain train`` with no arguments trains GraNet at 90% sparsity on MNIST-1D and the dense baseline with
the same recipe, and prints both accuracies. Every config field has a flag (``--help`` lists them with their
defaults); a YAML file (``--config``) and dotted overrides (``--set sparse.sparsity=0.95``) cover the rest.
Precedence: defaults < ``--config`` < flags < ``--set``.

The CLI owns the terminal: a tqdm progress bar and per-epoch lines on stderr, results on stdout. A bad option
or config value exits with status 2 and one line, ``sparsetrain: error: <field>=<value> is not allowed ...``;
Ctrl-C or SIGTERM writes a checkpoint and exits with 130 / 143, and rerunning the same command resumes.

This package parses and dispatches: one module per command (``HELP``, ``DESCRIPTION``, ``add_arguments`` and a
thin ``run``), the command bodies in the library (:mod:`sparsetrain.experiment`, :mod:`sparsetrain.studies`,
:mod:`sparsetrain.analysis`), and the terminal (errors, notes, progress) in :mod:`sparsetrain.cli.terminal`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sparsetrain import __version__

from . import compare, jackpot, lottery, plasticity, plot, report, reproduce, train
from .terminal import EXIT_IO, EXIT_LOST_RANK, EXIT_USAGE, PROG, CliError, Parser, describe_os_error

__all__ = ["main", "build_parser"]

#: The commands, in the order ``--help`` lists them.
COMMANDS = {"train": train, "report": report, "plot": plot, "lottery": lottery, "jackpot": jackpot,
            "plasticity": plasticity, "compare": compare, "reproduce": reproduce}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its commands."""
    parser = Parser(prog=PROG, description="Sparse neural network training (GraNet, RigL, SET, GMP, ...) and "
                                           "lottery-ticket science on PyTorch.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=Parser)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter
                                 if getattr(module, "RAW_DESCRIPTION", False) else argparse.HelpFormatter)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad option/config, 74 a file-system fault, 75 a lost
    data-parallel rank, 130/143 interrupted).

    Args:
        argv: arguments (default: ``sys.argv[1:]``).
    """
    from sparsetrain.checkpoint_io import CheckpointError
    from sparsetrain.experiment.config import ConfigError
    from sparsetrain.experiment.lock import DirectoryLocked
    from sparsetrain.experiment.parallel import LostRank
    from sparsetrain.reading import ReadError

    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            command = f"{PROG} {args.command}" if args.command else PROG
            raise CliError(f"unrecognized arguments: {' '.join(extra)} (see {command} --help)")
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        verbose = getattr(args, "verbose", False)
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
        # MLflow (train --log mlflow) configures its own loggers at INFO when imported; the same rule for it
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return int(args.func(args))
    except (CliError, ConfigError, CheckpointError, DirectoryLocked, ReadError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sparsetrain report | head`: the reader left, nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (so that Python's exit does not flush into the pipe)
        return 141
    except OSError as exc:
        print(f"{PROG}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_IO
    except LostRank as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_LOST_RANK
