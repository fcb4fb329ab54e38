"""The trainer's hooks for a progress display (:class:`TrainerCallback`): the trainer never prints, its caller may.

The command line's progress bar (:mod:`sparsetrain.cli.terminal`) and the studies' progress lines implement them;
a hook sees the :class:`~.trainer.Trainer` itself (its ``step``, ``total_steps``, ``epoch`` and ``running()``).
The hooks are called on every rank of a data-parallel run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the hooks' annotations: the trainer imports this module
    from .trainer import Trainer

__all__ = ["TrainerCallback"]


class TrainerCallback:
    """Hooks for a progress display; every method is optional. The trainer never prints."""

    def on_start(self, trainer: Trainer) -> None:
        """Training (re)starts at ``trainer.step`` of ``trainer.total_steps``."""

    def on_step(self, trainer: Trainer) -> None:
        """After every optimizer step (``trainer.running()`` gives loss, accuracy and sparsity)."""

    def on_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After every epoch's evaluation, with its metrics record."""

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the summary is written."""
