"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, *Picking Winning Tickets Before Training by
Preserving Gradient Flow*, ICLR 2020).

The score of a weight is ``S = -w ⊙ (H g)``, with ``g`` the gradient of the loss and ``H`` its Hessian, both
at initialisation and with the logits divided by a temperature ``T = 200`` (official code). Removing a weight
with a large ``S`` reduces the gradient norm the least (or raises it), so GraSP **removes the highest scores**
and keeps the lowest, over all layers together.

``g`` is the mean gradient over all scored samples (first pass, batch by batch); ``H g`` is the mean over the
same batches of the gradient of ``g_detached · ∇L_b`` (second pass, one Hessian-vector product per batch).
Deviations from the official code: no Xavier re-initialisation of Linear layers before scoring, each batch is
used whole instead of in two halves (which only saves memory), and the normalisation by ``|sum S|`` is left
out (it does not change the ranking).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batches import model_output
from .snip import LossFn, mean_gradient

__all__ = ["grasp_scores", "GRASP_TEMPERATURE"]

#: Logit temperature of the official GraSP code.
GRASP_TEMPERATURE = 200.0


def grasp_scores(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: LossFn = F.cross_entropy,
    *,
    temperature: float = GRASP_TEMPERATURE,
) -> dict[str, Tensor]:
    """GraSP scores ``S = -w ⊙ (H g)`` of the named parameters (**higher = remove**).

    Args:
        model: the network at initialisation (forward passes run on it: use a copy if it has BatchNorm in
            train mode).
        names: fully-qualified names of the parameters to score.
        batches: ``(inputs, targets)`` minibatches, used twice (gradient, then Hessian-gradient product).
        loss_fn: ``loss_fn(outputs, targets)``, mean reduction (default cross-entropy).
        temperature: logits are divided by it (default 200, as the official code).

    Returns:
        name -> ``S`` shaped like the parameter.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is not allowed: it must be a positive number")
    params = dict(model.named_parameters())
    weights = [params[name] for name in names]
    grad = mean_gradient(model, weights, batches, loss_fn, temperature=temperature)
    hess_grad = [torch.zeros_like(w) for w in weights]
    count = 0
    for inputs, targets in batches:
        loss = loss_fn(model_output(model, inputs) / temperature, targets)
        first = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
        terms = [(g * f).sum() for g, f in zip(grad, first, strict=True) if f is not None]
        if not terms:
            continue
        products = torch.autograd.grad(torch.stack(terms).sum(), weights, allow_unused=True)
        n = int(inputs.shape[0])
        for acc, product in zip(hess_grad, products, strict=True):
            if product is not None:
                acc.add_(product, alpha=n)
        count += n
    return {
        name: -(w.detach() * (hg / max(count, 1)))
        for name, w, hg in zip(names, weights, hess_grad, strict=True)
    }
