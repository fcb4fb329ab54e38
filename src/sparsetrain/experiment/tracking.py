"""What a run reports to an experiment tracker, under which names: the one mapping every logger uses.

The same figures go to TensorBoard and MLflow (:mod:`.loggers`) and, through the framework adapters, to
Lightning's and Hugging Face's loggers:

* every optimizer step (:func:`step_scalars`): ``train/loss``, ``train/lr``, ``train/sparsity``;
* every epoch (:func:`epoch_scalars`, from a ``metrics.jsonl`` record, at the epoch's last step):
  ``epoch/<key>`` for the losses, accuracies, measured sparsity and ITOP rate;
* every topology update (:func:`topology_scalars`, from a :class:`~sparsetrain.topology.TopologyEvent`):
  per sparsified tensor ``density/<name>``, ``churn/<name>``, ``itop/<name>``, ``dropped/<name>``,
  ``grown/<name>``, ``grad_share/<name>``, and pooled ``topology/density``, ``topology/churn``,
  ``topology/itop``, ``topology/dropped``, ``topology/grown``, ``topology/drop_fraction``,
  ``topology/target_sparsity`` (the last two per tensor instead when tensors differ);
* every epoch, histograms of the active weights' magnitudes per tensor (:func:`active_magnitudes`),
  ``weights/<name>``; where a tracker has no histograms, their quantiles as scalars (:func:`histogram_scalars`);
* the config as flat hyperparameters (:func:`hyperparameters`).

The histograms are logged per epoch, not per update: one costs a copy of every active weight to the host, which
per update would grow with the number of updates (ΔT), while per epoch it is bounded, and runs without updates
(static masks, dense baselines) get them too. Right after an update the regrown weights sit at zero anyway; the
epoch's histogram shows where training took them.

:class:`RunTracker` is what a training run calls: it fans the figures out to the run's loggers
(:mod:`.loggers`) and reads the per-step losses from the device in batches, not once per step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparsetrain.topology import TopologyEvent

if TYPE_CHECKING:
    from .loggers import RunLogger

__all__ = ["step_scalars", "epoch_scalars", "topology_scalars", "active_magnitudes", "histogram_scalars",
           "hyperparameters", "RunTracker", "EPOCH_KEYS"]

#: Quantiles of a histogram logged as scalars (:func:`histogram_scalars`).
QUANTILES = (("min", 0.0), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("max", 1.0))

#: The metrics.jsonl keys logged per epoch.
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "sparsity", "itop_rate")


def step_scalars(loss: float | None, lr: float | None, sparsity: float | None) -> dict[str, float | None]:
    """The per-step scalars: the minibatch's training loss, the learning rate and the masks' sparsity."""
    return {"train/loss": loss, "train/lr": lr, "train/sparsity": sparsity}


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The per-epoch scalars of a metrics.jsonl record (log them at ``record["step"]``); missing keys are None."""
    return {f"epoch/{key}": record.get(key) for key in EPOCH_KEYS}


def _shared_or_per_layer(event: TopologyEvent, key: str) -> dict[str, float | None]:
    values = {name: getattr(layer, key) for name, layer in event.layers.items()}
    distinct = set(values.values())
    if len(distinct) <= 1:
        return {f"topology/{key}": next(iter(distinct), None)}
    return {f"{key}/{name}": value for name, value in values.items()}


def topology_scalars(event: TopologyEvent) -> dict[str, float | None]:
    """The scalars of one topology update (log them at ``event.step``), per tensor and pooled."""
    values: dict[str, float | None] = {}
    for name, layer in event.layers.items():
        values.update({f"density/{name}": layer.density, f"churn/{name}": layer.churn, f"itop/{name}": layer.itop,
                       f"dropped/{name}": layer.dropped, f"grown/{name}": layer.grown,
                       f"grad_share/{name}": layer.grad_share})
    values.update({"topology/density": event.density, "topology/churn": event.churn, "topology/itop": event.itop,
                   "topology/dropped": event.dropped, "topology/grown": event.grown})
    values.update(_shared_or_per_layer(event, "drop_fraction"))
    values.update(_shared_or_per_layer(event, "target_sparsity"))
    return values


def active_magnitudes(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{"weights/<name>": |w| of the active weights}`` for the histograms (1-D, on the weights' device).

    Args:
        params: the sparsified parameters by name.
        masks: their bool masks.
    """
    return {f"weights/{name}": params[name].detach()[mask].abs() for name, mask in masks.items()}


def histogram_scalars(tag: str, values: Tensor) -> dict[str, float]:
    """A histogram as scalars, for trackers without a histogram type: ``<tag>/min``, ``/p25``, ``/median``,
    ``/p75``, ``/max`` and ``/mean`` of ``values`` (any shape; none for an empty tensor)."""
    values = values.detach().flatten().double().cpu()
    if not values.numel():
        return {}
    quantiles = torch.quantile(values, torch.tensor([q for _, q in QUANTILES], dtype=torch.float64)).tolist()
    summary = {f"{tag}/{name}": value for (name, _), value in zip(QUANTILES, quantiles)}
    summary[f"{tag}/mean"] = float(values.mean())
    return summary


def hyperparameters(config: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Flatten a nested config (``ExperimentConfig.to_dict()``) into ``{"section.field": value}``.

    Numbers, strings and bools stay as they are; lists, dicts left empty and None become their JSON text, so every
    tracker can store them.
    """
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class RunTracker:
    """The figures of one training run, sent to its loggers under :mod:`.tracking`'s names.

    The per-step losses stay on the device and are read in one transfer every ``flush_every`` steps (and before
    anything else is logged), so logging every step does not synchronise a GPU every step.

    Args:
        loggers: where the figures go (each a :class:`~.loggers.RunLogger`); none makes every call a no-op.
        flush_every: optimizer steps whose per-step scalars are buffered before they are written.
    """

    def __init__(self, loggers: Sequence[RunLogger] = (), *, flush_every: int = 100) -> None:
        self.loggers = list(loggers)
        self.flush_every = flush_every
        self._steps: list[tuple[int, Tensor | float, float, float]] = []

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _scalars(self, values: Mapping[str, float | None], step: int) -> None:
        for run_logger in self.loggers:
            run_logger.log_scalars(values, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The nested config (``ExperimentConfig.to_dict()``) as flat hyperparameters."""
        flat = hyperparameters(config)
        for run_logger in self.loggers:
            run_logger.log_config(flat)

    def log_step(self, step: int, loss: Tensor | float, lr: float, sparsity: float) -> None:
        """One optimizer step's loss (a tensor is read later, with others), learning rate and sparsity."""
        if self.loggers:
            self._steps.append((step, loss.detach() if isinstance(loss, Tensor) else loss, lr, sparsity))
            if len(self._steps) >= self.flush_every:
                self._write_steps()

    def _write_steps(self) -> None:
        steps, self._steps = self._steps, []
        if not steps:
            return
        losses = [loss for _, loss, _, _ in steps]
        if all(isinstance(loss, Tensor) for loss in losses):
            losses = torch.stack([loss.float().reshape(()) for loss in losses]).tolist()
        for (step, _, lr, sparsity), loss in zip(steps, losses):
            self._scalars(step_scalars(float(loss), lr, sparsity), step)

    def log_epoch(self, record: Mapping[str, Any], params: Mapping[str, Tensor],
                  masks: Mapping[str, Tensor]) -> None:
        """An epoch's metrics record (at its ``step``), and the histograms of the active weights' magnitudes."""
        if not self.loggers:
            return
        self._write_steps()
        step = int(record["step"])
        self._scalars(epoch_scalars(record), step)
        for tag, values in active_magnitudes(params, masks).items():
            for run_logger in self.loggers:
                run_logger.log_histogram(tag, values, step)

    def log_topology(self, event: TopologyEvent) -> None:
        """One topology update's figures, at its step."""
        if self.loggers:
            self._write_steps()
            self._scalars(topology_scalars(event), event.step)

    def flush(self) -> None:
        """Write what is buffered here and in the loggers."""
        self._write_steps()
        for run_logger in self.loggers:
            run_logger.flush()

    def close(self) -> None:
        """Write what is buffered and close every logger (each one, even if one fails; the first error is
        raised)."""
        error: BaseException | None = None
        try:
            self._write_steps()
        except Exception as exc:  # still close the loggers
            error = exc
        for run_logger in self.loggers:
            try:
                run_logger.close()
            except Exception as exc:
                error = error or exc
        self.loggers = []
        if error is not None:
            raise error
