"""SynFlow: iterative synaptic flow pruning (Tanaka, Kunin, Yamins & Ganguli, *Pruning neural networks without
any data by iteratively conserving synaptic flow*, NeurIPS 2020).

Data-free. The network is *linearised*: a double-precision copy with every parameter and floating buffer
replaced by its absolute value, in eval mode (BatchNorm uses its running statistics, as in the authors' code,
which runs the pruning loop in eval mode). With an all-ones input, ``R = sum(outputs)`` and the score of a
weight is ``|w ⊙ dR/dw|``. Pruning is iterative: round ``k`` of ``n`` keeps the density ``d^(k/n)``
(exponential schedule), masking the weights between rounds; that is what avoids layer collapse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..batches import model_output

__all__ = ["synflow_scores", "linearize", "ones_input"]


@torch.no_grad()
def linearize(model: nn.Module) -> nn.Module:
    """Turn ``model`` (in place) into its SynFlow form: float64, ``|·|`` of every parameter and floating buffer,
    eval mode. Call it on a copy.

    Returns:
        The same model.
    """
    model.double()
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.abs_()
    return model.eval()


def ones_input(input_shape: Sequence[int], *, integer: bool = False,
               device: torch.device | str | None = None) -> Tensor:
    """The all-ones input ``[1, *input_shape]``: float64, or int64 for models that take token indices."""
    return torch.ones((1, *input_shape), dtype=torch.int64 if integer else torch.float64, device=device)


def synflow_scores(model: nn.Module, names: Sequence[str], inputs: Tensor) -> dict[str, Tensor]:
    """SynFlow scores ``|w ⊙ dR/dw|`` with ``R = sum(model(inputs))`` (higher = keep).

    Args:
        model: a linearised network (see :func:`linearize`) whose pruned weights are already zero.
        names: fully-qualified names of the parameters to score.
        inputs: the all-ones input (see :func:`ones_input`).

    Returns:
        name -> score tensor shaped like the parameter (float64).
    """
    params = dict(model.named_parameters())
    weights = [params[name] for name in names]
    flow = model_output(model, inputs).sum()
    grads = torch.autograd.grad(flow, weights, allow_unused=True)
    return {
        name: (w.detach() * g).abs() if g is not None else torch.zeros_like(w, requires_grad=False)
        for name, w, g in zip(names, weights, grads, strict=True)
    }
