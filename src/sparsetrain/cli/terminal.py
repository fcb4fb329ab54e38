"""What the command line shows on the terminal: one-line errors, notes, the progress display.

The CLI owns the terminal: results go to stdout, notes and the progress bar to stderr, and only from the main
process of a data-parallel launch. A user error is a :class:`CliError` (or a ``ConfigError`` /
``CheckpointError`` from the library), printed by :func:`sparsetrain.cli.main` as one line,
``sparsetrain: error: <message>``, with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from sparsetrain.distributed import is_main_process

__all__ = ["EXIT_IO", "EXIT_LOST_RANK", "EXIT_USAGE", "PROG", "CliError", "Parser", "Progress", "describe_os_error", "fmt_default",
           "note", "num", "output_dir", "output_file"]

PROG = "sparsetrain"
EXIT_USAGE = 2
#: A file-system fault (no space left, read-only, permission denied, a path of the wrong kind): BSD's EX_IOERR.
EXIT_IO = 74
#: A process of a data-parallel run died; the others stopped (BSD's EX_TEMPFAIL: run the same command again).
EXIT_LOST_RANK = 75


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and status 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system fault: the path, the system's reason, and what to do about it."""
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free some space and run the same command again: an interrupted run resumes from its last "
                      "checkpoint",
        errno.EDQUOT: "free some space and run the same command again: an interrupted run resumes from its last "
                      "checkpoint",
        errno.EROFS: "the file system is read-only; write somewhere else (--runs-dir, --out, --output)",
        errno.EACCES: "this user may not do that here; write somewhere else (--runs-dir, --out, --output) or change "
                      "the permissions",
        errno.EPERM: "this user may not do that here; write somewhere else or change the permissions",
        errno.ENOTDIR: "a part of that path is a file, not a directory",
        errno.EISDIR: "that path is a directory, expected a file",
    }.get(exc.errno or 0)
    line = f"{where}: {reason}" if where is not None else reason
    return f"{line}; {hint}" if hint else line


def output_file(flag: str, value: str) -> Path:
    """The path of an output file option, checked before anything is done: not a directory, in a folder that
    exists.

    Raises:
        CliError: the path is a directory, or its folder is missing or a file.
    """
    path = Path(value)
    if path.is_dir():
        raise CliError(f"{flag}={value!r} is not allowed: it is a directory, expected a file path")
    folder = path.parent
    if not folder.is_dir():
        found = "is a file" if folder.exists() else "does not exist"
        raise CliError(f"{flag}={value!r} is not allowed: its folder {str(folder)!r} {found}")
    return path


def output_dir(flag: str, value: str | Path) -> Path:
    """The path of an output directory option (created later if missing), checked before anything is done: it
    and every folder above it are directories where they exist.

    Raises:
        CliError: the path, or a folder above it, is a file.
    """
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag}={str(value)!r} is not allowed: it is a file, expected a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"{flag}={str(value)!r} is not allowed: {str(parent)!r} is a file, expected a "
                               "directory")
            break
    return path


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


#: Seconds between two progress lines when stderr is not a terminal (a log file, a pipe).
PROGRESS_PERIOD = 30.0


class Progress:
    """Progress on stderr: on a terminal a tqdm bar with loss, accuracy and sparsity; elsewhere (a redirected log)
    one plain line every :data:`PROGRESS_PERIOD` seconds, never carriage returns; and one line per epoch.

    Args:
        enabled: show progress and the epoch lines (the resume note, and the note of a run still at chance after
            its first epoch, :func:`sparsetrain.experiment.diagnosis.chance_note`, are shown either way).
        terminal: whether stderr is a terminal (default: ask it).
    """

    def __init__(self, enabled: bool, terminal: bool | None = None) -> None:
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar: Any = None
        self._last = 0.0
        self._total = 0
        self._name = ""

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
        self._total, self._name, self._last = trainer.total_steps, trainer.run.name, time.monotonic()
        if not self.terminal:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=trainer.run.name, unit="step",
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.25, leave=False)

    def on_step(self, trainer: Any) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        now = time.monotonic()
        if now - self._last < (0.25 if self.bar is not None else PROGRESS_PERIOD):
            return
        self._last = now
        values = trainer.running()
        if self.bar is not None:
            self.bar.set_postfix(loss=num(values["loss"]), acc=num(values["acc"]),
                                 sparsity=num(values["sparsity"]), refresh=False)
        else:
            self.write(f"{self._name}: step {trainer.step}/{self._total} ({trainer.step / max(1, self._total):.0%}): "
                       f"train loss {num(values['loss'])} acc {num(values['acc'])} | "
                       f"sparsity {num(values['sparsity'])}")

    def on_epoch(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            from sparsetrain.experiment.diagnosis import chance_note

            message = chance_note(trainer.exp, record)
            if message is not None:
                self.write(f"{PROG}: {trainer.run.name}: {message}")
        if not self.enabled:
            return
        masked, zeros = record.get("mask_sparsity", record["sparsity"]), record["sparsity"]
        sparsity = num(masked) + (f" ({num(zeros)} of the weights are 0)"
                                  if masked is not None and zeros is not None and zeros - masked >= 5e-5 else "")
        line = (f"{trainer.run.name} epoch {record['epoch']}/{trainer.config.train.epochs} step {record['step']}: "
                f"train loss {num(record['train_loss'])} acc {num(record['train_acc'])} | "
                f"val acc {num(record['val_acc'])} | test acc {num(record['test_acc'])} | "
                f"sparsity {sparsity} | lr {record['lr']:.3g}")
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
