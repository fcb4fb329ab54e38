"""The two computations of the training loop: one optimizer step on a minibatch, and the evaluation closing an epoch.

:func:`optimizer_step` is plain PyTorch: forward under the run's autocast, the loss, backward (scaled by the fp16
GradScaler when there is one), the optional clipping of the global gradient norm, and ``optimizer.step()``. There
is no gradient accumulation: one minibatch, one optimizer step. The sparsifier's step, the schedule and the
bookkeeping around both stay with the loop (:mod:`.trainer`).

:func:`epoch_record` evaluates the model on the validation and test splits (split across ranks and summed in a
data-parallel run) and gives the epoch's line of ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sparsetrain.itop import itop_by_layer

from .build import Experiment
from .metrics import RunningSums, evaluate
from .trace import run_report

__all__ = ["optimizer_step", "epoch_record"]


def optimizer_step(exp: Experiment, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """One optimizer step of ``exp`` on a minibatch.

    Args:
        exp: the run's experiment.
        inputs / targets: the minibatch (moved to the run's device here).

    Returns:
        The loss and the logits (for the epoch's running sums).
    """
    inputs = inputs.to(exp.device, non_blocking=True)
    targets = targets.to(exp.device, non_blocking=True)
    exp.optimizer.zero_grad(set_to_none=True)
    with exp.autocast():
        logits = exp.train_model(inputs)
        loss = exp.loss_fn(logits, targets)
    clip = exp.config.optim.grad_clip
    if exp.scaler is not None:
        exp.scaler.scale(loss).backward()
        if clip is not None:
            exp.scaler.unscale_(exp.optimizer)
            torch.nn.utils.clip_grad_norm_(exp.model.parameters(), clip)
        exp.scaler.step(exp.optimizer)
        exp.scaler.update()
    else:
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(exp.model.parameters(), clip)
        exp.optimizer.step()
    return loss, logits


def epoch_record(exp: Experiment, running: RunningSums, *, epoch: int, step: int, mask_sparsity: float, lr: float,
                 elapsed: Callable[[], float]) -> dict[str, Any]:
    """Evaluate the end of an epoch: its line of ``metrics.jsonl`` (a collective call in a data-parallel run).

    Args:
        exp: the run's experiment.
        running: the epoch's running sums of the training loss and accuracy.
        epoch / step: the epoch just finished and the step it ends at.
        mask_sparsity: the masks' sparsity (the density trace's last entry).
        lr: the learning rate of the last step.
        elapsed: the training wall time so far, read after the evaluation (it counts in the run's time).

    Returns:
        The record: training, validation and test loss and accuracy, the sparsity measured from the weights and
        the masks', the learning rate, the ITOP rate overall and per layer, and the time.
    """
    exp.parallel.sync_buffers(exp.model)  # evaluate rank 0's model everywhere (batch-norm statistics)
    val_loss, val_acc = evaluate(exp, exp.val_loader)
    test_loss, test_acc = evaluate(exp, exp.test_loader)
    train_loss, train_acc = running.means(exp.parallel)
    return {
        "epoch": epoch, "step": step, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
        "sparsity": run_report(exp).sparsity, "mask_sparsity": mask_sparsity, "lr": lr,
        "itop_rate": exp.sparsifier.itop_rate() if exp.sparsifier is not None else None,
        "itop_layers": itop_by_layer(exp.sparsifier.ever_active if exp.sparsifier is not None else None),
        "time": elapsed(),
    }
