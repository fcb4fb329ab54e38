"""What the command line shows on the terminal: one-line errors, notes, the progress display.

The CLI owns the terminal: results go to stdout, notes and the progress bar to stderr, and only from the main
process of a data-parallel launch. A user error is a :class:`CliError` (or a ``ConfigError`` /
``CheckpointError`` from the library), printed by :func:`sparsetrain.cli.main` as one line,
``sparsetrain: error: <message>``, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, NoReturn

from sparsetrain.distributed import is_main_process

__all__ = ["EXIT_USAGE", "PROG", "CliError", "Parser", "Progress", "fmt_default", "note", "num"]

PROG = "sparsetrain"
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and status 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


def fmt_default(value: Any) -> str:
    """A default value as ``--help`` shows it: ``none``, ``true``, space-separated lists, ``k=v`` dicts."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return "{}" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def num(value: float | None) -> str:
    """A metric with four decimals, ``-`` when missing."""
    return "-" if value is None else f"{value:.4f}"


def note(message: str) -> None:
    """``sparsetrain: <message>`` on stderr, from the main process only."""
    if is_main_process():
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class Progress:
    """tqdm progress bar on stderr with loss, accuracy, sparsity; one line per epoch.

    Args:
        enabled: show the bar and the epoch lines (the resume note, and the note of a run still at chance after
            its first epoch, :func:`sparsetrain.experiment.diagnosis.chance_note`, are shown either way).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self._last = 0.0

    def callback(self, *, epoch_lines: bool = True) -> Any:
        """A :class:`~sparsetrain.experiment.TrainerCallback` driving this display."""
        from sparsetrain.experiment import TrainerCallback

        progress = self

        class Callback(TrainerCallback):
            on_start = staticmethod(progress.on_start)
            on_step = staticmethod(progress.on_step)
            on_end = staticmethod(progress.on_end)
            if epoch_lines:
                on_epoch = staticmethod(progress.on_epoch)

        return Callback()

    def on_start(self, trainer: Any) -> None:
        if trainer.resumed_from is not None:
            note(f"{trainer.run.name}: resuming an interrupted run at step {trainer.step} "
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
            self.bar.set_postfix(loss=num(values["loss"]), acc=num(values["acc"]),
                                 sparsity=num(values["sparsity"]), refresh=False)

    def on_epoch(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            from sparsetrain.experiment.diagnosis import chance_note

            message = chance_note(trainer.exp, record)
            if message is not None:
                self.write(f"{PROG}: {trainer.run.name}: {message}")
        if not self.enabled:
            return
        line = (f"{trainer.run.name} epoch {record['epoch']}/{trainer.config.train.epochs} step {record['step']}: "
                f"train loss {num(record['train_loss'])} acc {num(record['train_acc'])} | "
                f"val acc {num(record['val_acc'])} | test acc {num(record['test_acc'])} | "
                f"sparsity {num(record['sparsity'])} | lr {record['lr']:.3g}")
        self.write(line)

    def write(self, line: str) -> None:
        """A line on stderr, above the bar if one is shown (main process only)."""
        if not is_main_process():
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        """Remove the bar (after a run, or when it stops early)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
