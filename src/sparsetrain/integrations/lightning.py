"""PyTorch Lightning adapter: ``SparsifierCallback``, a ``Callback`` that runs a sparsetrain method.

Usage::

    from sparsetrain.integrations.lightning import SparsifierCallback

    trainer = lightning.pytorch.Trainer(max_epochs=10, callbacks=[SparsifierCallback("granet", sparsity=0.9)])
    trainer.fit(module, datamodule)          # resume: trainer.fit(module, datamodule, ckpt_path=...)

What it does, hook by hook:

- ``on_fit_start`` (after Lightning has built the optimizers, before it restores their state): build the
  method on the ``LightningModule`` and its optimizer (``trainer.optimizers[optimizer_index]``), with
  ``total_steps = trainer.estimated_stepping_batches`` (optimizer steps, i.e. batches / accumulate_grad_batches)
  unless given.
- ``on_train_batch_end``: ``sparsifier.step()``. The sparsifier counts real ``optimizer.step()`` calls itself,
  so batches that only accumulate gradients (``accumulate_grad_batches``) and steps skipped by a ``GradScaler``
  do nothing; the gradients are still there at this point (Lightning zeroes them at the next step), as RigL
  and GraNet need. Then the figures of :mod:`sparsetrain.experiment.tracking` are logged (``log_metrics``):
  after every optimizer step ``train/loss`` (the batch's, when ``training_step`` returns it), ``train/lr`` and
  ``train/sparsity`` with ``pl_module.log`` (written every ``log_every_n_steps``, as the module's own metrics);
  after every topology update its figures (``density/<tensor>``, ``churn/<tensor>``, ... ``topology/itop``)
  through each of ``trainer.loggers`` at the update's step. Those go to the loggers directly because
  ``pl_module.log`` only writes on ``log_every_n_steps`` boundaries, under the boundary's step and with the last
  value, which would misplace or drop updates off that grid.
- ``on_train_epoch_end``: the active weights' magnitudes per tensor as quantile scalars
  (``weights/<tensor>/median``, ...) through the loggers (Lightning's loggers take scalars).
- ``state_dict`` / ``load_state_dict``: the sparsifier's state goes into Lightning's own checkpoint, so
  ``ckpt_path=...`` resumes masks, schedule position and generator; the restored weights and optimizer state
  are kept (see :func:`sparsetrain.integrations._common.build_sparsifier`).

Under Lightning's DDP strategy every rank builds the same sparsifier (same ``seed``) on its replica and the
masks stay identical (see :mod:`sparsetrain.distributed`). Requires ``lightning`` (``lightning.pytorch``) or,
failing that, the standalone ``pytorch_lightning`` package.
"""

from __future__ import annotations

import logging
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("sparsetrain.integrations.lightning needs PyTorch Lightning: pip install lightning") \
            from err

from ..sparsifier import Sparsifier
from ..topology import TopologyEvent
from ._common import adapter_method, build_sparsifier, check_total_steps, unwrap_optimizer, weight_summaries

__all__ = ["SparsifierCallback"]

logger = logging.getLogger(__name__)


class SparsifierCallback(pl.Callback):
    """Run a sparsetrain method inside ``lightning.pytorch.Trainer``.

    Args:
        method: a name of ``sparsetrain.METHODS`` ("granet", "gmp", "rigl", "set", "snfs", "static") or a
            Sparsifier subclass.
        total_steps: optimizer steps in the run; default ``trainer.estimated_stepping_batches``.
        optimizer_index: which of ``trainer.optimizers`` the method hooks (default 0).
        log_metrics: log the per-step scalars, each topology update's figures and the per-epoch weight
            summaries (see the module docstring; default True).
        **options: keyword arguments of the method (``sparsity`` is required), e.g. ``update_every``, ``seed``.

    Attributes:
        sparsifier: the running sparsifier (None before ``fit`` starts).
    """

    def __init__(
        self,
        method: str | type[Sparsifier] = "granet",
        *,
        total_steps: int | None = None,
        optimizer_index: int = 0,
        log_metrics: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.method = adapter_method(method, total_steps, options)
        if isinstance(optimizer_index, bool) or not isinstance(optimizer_index, int) or optimizer_index < 0:
            raise ValueError(f"optimizer_index={optimizer_index!r} is not allowed: it must be an int >= 0")
        self.total_steps = total_steps
        self.optimizer_index = optimizer_index
        self.log_metrics = bool(log_metrics)
        self.options = dict(options)
        self.sparsifier: Sparsifier | None = None
        self._pending: dict[str, Any] | None = None
        self._events: list[TopologyEvent] = []
        self._sparsity: float | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method.method, optimizer_index=self.optimizer_index)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sparsifier is not None:  # a second fit() on the same callback: continue where it stopped
            self._pending = self.sparsifier.state_dict()
            self.sparsifier.remove()
        optimizers = trainer.optimizers
        if self.optimizer_index >= len(optimizers):
            raise ValueError(f"optimizer_index={self.optimizer_index} but the module configured "
                             f"{len(optimizers)} optimizer(s)")
        optimizer = unwrap_optimizer(optimizers[self.optimizer_index])
        total = self.total_steps or check_total_steps(trainer.estimated_stepping_batches,
                                                      "trainer.estimated_stepping_batches")
        self.sparsifier = build_sparsifier(self.method, pl_module, optimizer, total, self.options, self._pending)
        self._sparsity, self._events = None, []
        if self.log_metrics:
            self.sparsifier.subscribe(self._events.append)  # logged by on_train_batch_end, at the event's step
        if self._pending is not None:
            logger.info("resumed %s at step %d", self.method.__name__, self.sparsifier.step_count)
        self._pending = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.sparsifier is None:
            return
        before = self.sparsifier.step_count
        if self.sparsifier.step() or self._sparsity is None:
            self._sparsity = self.sparsifier.current_sparsity()  # counted when the masks change, not every step
        if not self.log_metrics or self.sparsifier.step_count == before:  # no optimizer step: nothing to log
            return
        from ..experiment.tracking import step_scalars, topology_scalars

        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        lr = self.sparsifier.optimizer.param_groups[0]["lr"] if self.sparsifier.optimizer is not None else None
        for name, value in step_scalars(loss.detach() if hasattr(loss, "detach") else None, lr,
                                        self._sparsity).items():
            if value is not None:
                pl_module.log(name, value, on_step=True, on_epoch=False)
        events = list(self._events)
        self._events.clear()
        for event in events:
            self._to_loggers(trainer, topology_scalars(event), event.step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sparsifier is not None and self.log_metrics:
            self._to_loggers(trainer, weight_summaries(self.sparsifier), self.sparsifier.step_count)

    @staticmethod
    def _to_loggers(trainer: pl.Trainer, values: dict[str, float | None], step: int) -> None:
        metrics = {name: float(value) for name, value in values.items() if value is not None}
        for logger_ in trainer.loggers:
            logger_.log_metrics(metrics, step=step)

    def state_dict(self) -> dict[str, Any]:
        if self.sparsifier is not None:
            return {"sparsifier": self.sparsifier.state_dict()}
        return {"sparsifier": self._pending} if self._pending is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sparsifier")
        if state is None:
            return
        if self.sparsifier is None:
            self._pending = dict(state)  # applied in on_fit_start, once the optimizer exists
        else:
            self.sparsifier.load_state_dict(state)
