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
* histograms of the active weights' magnitudes per tensor (:func:`active_magnitudes`), ``weights/<name>``;
* the config as flat hyperparameters (:func:`hyperparameters`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from sparsetrain.topology import TopologyEvent

__all__ = ["step_scalars", "epoch_scalars", "topology_scalars", "active_magnitudes", "hyperparameters",
           "EPOCH_KEYS"]

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
