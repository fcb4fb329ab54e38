"""SNIP: connection sensitivity at initialisation (Lee et al., *SNIP: Single-shot Network Pruning based on
Connection Sensitivity*, ICLR 2019).

The score of a weight is ``|g ⊙ w|``, the magnitude of the loss's derivative with respect to a multiplicative
gate on the connection, evaluated at the initial weights. The gradient ``g`` is the gradient of the mean loss
over all the scored samples: per-batch gradients are accumulated weighted by batch size, so scoring on ``n``
batches gives the same scores as one batch holding all of them, without that batch ever being built (as the
SynFlow authors' SNIP, which accumulates gradients over a loader). The paper normalises the scores by their
sum; that does not change the ranking and is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batches import model_output

__all__ = ["snip_scores", "mean_gradient", "LossFn"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def mean_gradient(
    model: nn.Module,
    weights: Sequence[Tensor],
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    *,
    temperature: float = 1.0,
) -> list[Tensor]:
    """Gradient of the mean loss over all samples of ``batches`` w.r.t. ``weights``, one batch at a time.

    Args:
        model: the network (its forward passes run as it is, train or eval mode).
        weights: parameters of ``model`` to differentiate.
        batches: ``(inputs, targets)`` pairs.
        loss_fn: ``loss_fn(outputs, targets)`` with mean reduction.
        temperature: outputs are divided by it before the loss (GraSP uses 200).

    Returns:
        One gradient per weight (zeros for a weight the loss does not reach).
    """
    total = [torch.zeros_like(w) for w in weights]
    count = 0
    for inputs, targets in batches:
        loss = loss_fn(model_output(model, inputs) / temperature, targets)
        grads = torch.autograd.grad(loss, list(weights), allow_unused=True)
        n = int(inputs.shape[0])
        for acc, grad in zip(total, grads, strict=True):
            if grad is not None:
                acc.add_(grad, alpha=n)
        count += n
    return [acc.div_(count) for acc in total]


def snip_scores(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, Tensor]:
    """SNIP scores ``|g ⊙ w|`` of the named parameters (higher = keep).

    Runs forward passes on ``model`` (BatchNorm statistics of a model in train mode change: call it on a copy,
    as :func:`~sparsetrain.init_pruning.prune_at_init` does).

    Args:
        model: the network at initialisation.
        names: fully-qualified names of the parameters to score.
        batches: ``(inputs, targets)`` minibatches; the gradient is the mean over all their samples.
        loss_fn: ``loss_fn(outputs, targets)``, mean reduction (default cross-entropy).

    Returns:
        name -> score tensor shaped like the parameter.
    """
    params = dict(model.named_parameters())
    weights = [params[name] for name in names]
    grads = mean_gradient(model, weights, batches, loss_fn)
    return {name: (grad * w.detach()).abs() for name, w, grad in zip(names, weights, grads, strict=True)}
