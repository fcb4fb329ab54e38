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
- ``on_step_end`` / ``on_epoch_end`` / ``on_log`` (``log_metrics``): the figures of
  :mod:`sparsetrain.experiment.tracking` go into the Trainer's own log records (the ``logs`` of ``on_log`` and
  the same record of ``state.log_history``): ``train/sparsity`` in every record (the Trainer logs ``loss`` and
  ``learning_rate`` itself); each topology update's figures (``density/<tensor>``, ``churn/<tensor>``, ...
  ``topology/itop``), for which the callback asks the Trainer to log at the update's step; and at each epoch's
  end the active weights' magnitudes per tensor as quantile scalars (``weights/<tensor>/median``, ...).

The Trainer calls its callbacks in order, its ``report_to`` integrations (TensorBoard, MLflow, W&B...) first, so
they have already written a record when this callback adds to it. To send the figures to them too, move the
callback ahead of them once the Trainer is built::

    trainer.callback_handler.callbacks.remove(callback)
    trainer.callback_handler.callbacks.insert(0, callback)

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
from ..topology import TopologyEvent
from ._common import adapter_method, build_sparsifier, check_total_steps, unwrap_optimizer, weight_summaries

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
        log_metrics: add the sparsity, each topology update's figures and the per-epoch weight summaries to the
            Trainer's log records (see the module docstring; default True).
        **options: keyword arguments of the method (``sparsity`` is required), e.g. ``update_every``, ``seed``.
            ``sparse_init`` defaults to "none" here, not to the library's "fan_in": a model a Hugging Face Trainer
            trains is usually pretrained, and rescaling trained weights to their active fan-in would damage them;
            pass ``sparse_init="fan_in"`` for a model initialised from scratch.

    Attributes:
        sparsifier: the running sparsifier (None before training starts).
    """

    def __init__(
        self,
        method: str | type[Sparsifier] = "granet",
        *,
        total_steps: int | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        log_metrics: bool = True,
        **options: Any,
    ) -> None:
        self.method = adapter_method(method, total_steps, options)
        self.total_steps = total_steps
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.options = {"sparse_init": "none", **options}
        self.log_metrics = bool(log_metrics)
        self.sparsifier: Sparsifier | None = None
        self._sparsity: float | None = None
        self._figures: dict[str, float | None] = {}  # waiting for the Trainer's next log record

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
        self._sparsity, self._figures = self.sparsifier.current_sparsity(), {}
        if self.log_metrics:
            self.sparsifier.subscribe(self._on_topology)
        if resume is not None:
            logger.info("resumed %s at step %d", self.method.__name__, self.sparsifier.step_count)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        if self.sparsifier is not None and self.sparsifier.step():
            self._sparsity = self.sparsifier.current_sparsity()  # counted when the masks change, not every step

    def _on_topology(self, event: TopologyEvent) -> None:
        from ..experiment.tracking import topology_scalars

        self._figures.update(topology_scalars(event))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self._figures:  # a topology update at this step: the Trainer logs it at this step
            control.should_log = True

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.sparsifier is not None and self.log_metrics:
            self._figures.update(weight_summaries(self.sparsifier))
            control.should_log = True

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.sparsifier is None or not self.log_metrics or logs is None:
            return
        figures = {"train/sparsity": self._sparsity, **self._figures}
        figures = {name: value for name, value in figures.items() if value is not None}
        self._figures = {}
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)  # the Trainer's copy of this record

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if self.sparsifier is None or not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}"
        if not directory.is_dir():
            logger.warning("on_save: checkpoint directory %s not found; sparsifier state not saved", directory)
            return
        save_checkpoint(self.sparsifier.state_dict(), directory / STATE_FILE)
