"""Telling a run that has not left chance: its training loss after the first epoch still at ``ln(classes)``.

A network that outputs (nearly) the same logits for every input has the cross-entropy of a uniform guess,
``ln C`` for ``C`` classes, and the accuracy of one, about ``1 / C``. A sparse network started from a random mask
at high sparsity on a model without normalisation often stays there: the dense initialisation's variance is set
for every input being connected, so each layer's signal shrinks with its density and the gradients with it
(Evci et al., AAAI 2022, *Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win*; measured on this
library's models in docs/results/sparse_from_scratch.md). :func:`chance_note` says so after the first epoch, with
the likely cause, for the command line to show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from .build import Experiment

__all__ = ["at_chance", "chance_note", "LOSS_TOLERANCE", "ACCURACY_FACTOR"]

#: A mean training loss within this fraction of ``ln C`` counts as chance (10 classes: 2.303 ± 0.023).
LOSS_TOLERANCE = 0.01
#: ... when the training accuracy is also below this multiple of ``1 / C`` (10 classes: 15%).
ACCURACY_FACTOR = 1.5

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def at_chance(record: Mapping[str, Any], num_classes: int) -> bool:
    """Whether an epoch's metrics ``record`` (``train_loss``, ``train_acc``) are those of a uniform guess over
    ``num_classes`` classes (see :data:`LOSS_TOLERANCE`, :data:`ACCURACY_FACTOR`)."""
    loss, acc = record.get("train_loss"), record.get("train_acc")
    if loss is None or acc is None or num_classes < 2:
        return False
    chance = math.log(num_classes)
    return abs(loss - chance) <= LOSS_TOLERANCE * chance and acc < ACCURACY_FACTOR / num_classes


def chance_note(exp: Experiment, record: Mapping[str, Any]) -> str | None:
    """One line for a run still at chance after ``record``'s epoch, with the likely cause; None otherwise.

    Args:
        exp: the run's experiment (its config, model, sparsifier and number of classes).
        record: the epoch's metrics record.
    """
    classes = exp.bundle.num_classes
    if not at_chance(record, classes):
        return None
    head = (f"training loss is still at chance ({record['train_loss']:.2f}; ln {classes} = {math.log(classes):.2f}) "
            f"after epoch {record['epoch']}")
    sparsifier = exp.sparsifier
    normalised = any(isinstance(module, _NORMS) for module in exp.model.modules())
    lr = exp.config.optim.lr
    if sparsifier is None or getattr(sparsifier, "initial_sparsity", sparsifier.sparsity) == 0:
        return f"{head}: check the learning rate ({lr:g}) and the data"
    sparsity = f"{100 * sparsifier.sparsity:g}% sparsity"
    where = f"at {sparsity} without normalisation" if not normalised else f"at {sparsity}"
    if sparsifier.config.get("sparse_init") == "none":
        return (f"{head}: {where} the signal may not propagate from a dense initialisation; try --method-option "
                "sparse_init=fan_in or a lower sparsity")
    return (f"{head}: {where} the sparse start may leave some layers too few weights per unit; try a lower "
            f"sparsity, more epochs or another learning rate (now {lr:g})")
