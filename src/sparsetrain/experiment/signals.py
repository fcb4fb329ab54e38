"""Graceful interruption: SIGINT / SIGTERM ask the training loop to stop after the current step.

Inside :class:`StopRequest` the first SIGINT (Ctrl-C) or SIGTERM only sets a flag; the trainer checks it after
every step, writes a checkpoint and raises :class:`TrainingInterrupted`. A second Ctrl-C raises
``KeyboardInterrupt`` at once, for a loop that is stuck. Handlers can only be installed from the main thread;
elsewhere the context does nothing (the default signal behaviour stays).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopRequest", "TrainingInterrupted"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint.

    Attributes:
        signal_name: "SIGINT" or "SIGTERM".
        step: optimizer steps done.
        epoch: epochs completed.
        checkpoint: the checkpoint file written.
    """

    def __init__(self, signal_name: str, step: int, epoch: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name}: stopped at step {step} (epoch {epoch} complete), checkpoint {checkpoint}")
        self.signal_name = signal_name
        self.step = step
        self.epoch = epoch
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + signal number."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag (``requested`` / ``signal_name``)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        logger.warning("%s received: finishing the current step, then writing a checkpoint", name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
