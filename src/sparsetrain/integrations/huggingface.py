"""Hugging Face adapter: ``SparsifierTrainerCallback``, a ``transformers.TrainerCallback`` running a method.

Usage::

    from sparsetrain.integrations.huggingface import SparsifierTrainerCallback

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   callbacks=[SparsifierTrainerCallback("rigl", sparsity=0.9)])
    trainer.train()                                 # resume: trainer.train(resume_from_checkpoint=True)

What it does, event by event:

- ``on_train_begin`` (the Trainer has built the optimizer and, when resuming, restored the weights and the
  optimizer state): build the method on ``model`` and the optimizer (the plain torch optimizer inside
  accelerate's wrapper) with ``total_steps = state.max_steps`` unless given. When the Trainer resumes
  (``state.global_step > 0``) the sparsifier state is read from ``<checkpoint>/sparsifier.pt`` of the
  checkpoint being resumed (``output_dir/checkpoint-<global_step>``, or ``resume_from=...``) with a
  weights-only load.
- ``on_optimizer_step`` (right after ``optimizer.step()``, before the gradients are zeroed): ``sparsifier.step()``.
  Steps skipped by the Trainer's fp16 ``GradScaler`` are not counted by the sparsifier (it counts real
  optimizer steps), while ``state.global_step`` counts them: the two differ by the number of skipped steps.
- ``on_save`` (after the Trainer wrote ``checkpoint-<global_step>``): write ``sparsifier.pt`` into it (main
  process only, atomically).

Requires ``transformers`` and ``accelerate`` (the Trainer's own dependency).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as err:  # pragma: no cover - depends on what is installed
    raise ImportError("sparsetrain.integrations.huggingface needs transformers: pip install transformers accelerate") \
        from err

from ..checkpoint_io import load_checkpoint, save_checkpoint
from ..sparsifier import Sparsifier
from ._common import build_sparsifier, check_total_steps, resolve_method, unwrap_optimizer

__all__ = ["SparsifierTrainerCallback", "STATE_FILE"]

logger = logging.getLogger(__name__)

#: File name of the sparsifier state inside each Hugging Face checkpoint directory.
STATE_FILE = "sparsifier.pt"
_CHECKPOINT_PREFIX = "checkpoint"


class SparsifierTrainerCallback(TrainerCallback):
    """Run a sparsetrain method inside ``transformers.Trainer``.

    Args:
        method: a name of ``sparsetrain.METHODS`` ("granet", "gmp", "rigl", "set", "snfs", "static") or a
            Sparsifier subclass.
        total_steps: optimizer steps in the run; default ``state.max_steps``.
        resume_from: checkpoint directory to read ``sparsifier.pt`` from when the Trainer resumes; default
            ``<output_dir>/checkpoint-<global_step>`` (what ``resume_from_checkpoint=True`` picks).
        **options: keyword arguments of the method (``sparsity`` is required), e.g. ``update_every``, ``seed``.

    Attributes:
        sparsifier: the running sparsifier (None before training starts).
    """

    def __init__(
        self,
        method: str | type[Sparsifier] = "granet",
        *,
        total_steps: int | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        self.method = resolve_method(method)
        if "sparsity" not in options:
            raise ValueError("sparsity=... is required (the final sparsity in [0, 1))")
        if total_steps is not None:
            check_total_steps(total_steps, "the total_steps argument")
        self.total_steps = total_steps
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.options = dict(options)
        self.sparsifier: Sparsifier | None = None

    def _resume_state(self, args: TrainingArguments, state: TrainerState) -> dict[str, Any] | None:
        if state.global_step <= 0:
            return None
        directory = self.resume_from or Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}"
        path = directory / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"the Trainer resumes at step {state.global_step} but {str(path)!r} does not exist: the checkpoint "
                "was not written with SparsifierTrainerCallback, or it lives elsewhere (pass resume_from=<dir>)"
            )
        loaded = load_checkpoint(path)
        if int(loaded.get("step", -1)) != state.global_step:
            logger.warning("sparsifier state in %s is at step %s, the Trainer at global_step %d (skipped fp16 "
                           "steps are not counted by the sparsifier)", path, loaded.get("step"), state.global_step)
        return loaded

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise ValueError("SparsifierTrainerCallback needs the Trainer's model and optimizer in on_train_begin "
                             f"(got model={type(model).__name__}, optimizer={type(optimizer).__name__})")
        if self.sparsifier is not None:
            self.sparsifier.remove()
        total = self.total_steps or check_total_steps(state.max_steps, "state.max_steps")
        resume = self._resume_state(args, state)
        self.sparsifier = build_sparsifier(self.method, model, unwrap_optimizer(optimizer), total, self.options,
                                           resume)
        if resume is not None:
            logger.info("resumed %s at step %d", self.method.__name__, self.sparsifier.step_count)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        if self.sparsifier is not None:
            self.sparsifier.step()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if self.sparsifier is None or not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}"
        if not directory.is_dir():
            logger.warning("on_save: checkpoint directory %s not found; sparsifier state not saved", directory)
            return
        save_checkpoint(self.sparsifier.state_dict(), directory / STATE_FILE)
