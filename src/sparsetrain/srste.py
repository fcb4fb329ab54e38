"""SR-STE's step as pure functions: the N:M mask from the weights, the straight-through forward, the decay term.

Zhou et al., ICLR 2021, *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch* (official
code: NM-sparsity/NM-sparsity). The network keeps **dense** weights ``W``. Every step:

1. the N:M mask ``E`` is recomputed from ``|W|`` (:func:`srste_mask`): in every group of M along the reduction
   dim, the N largest magnitudes;
2. the forward pass uses ``W~ = E ⊙ W``; the backward pass hands the gradient w.r.t. ``W~`` straight to ``W``
   (the straight-through estimator, :func:`straight_through`);
3. the *sparse-refined* term decays the pruned weights (:func:`srste_gradient`)::

       W <- W - lr * (g(W~) + lambda_W * (Ē ⊙ W))        (Ē = 1 - E, the pruned positions)

   with ``lambda_W = 2e-4`` (:data:`SRSTE_DECAY`, the paper's value and the official code's default). The term
   is added to the gradient, so a momentum optimizer carries it in its buffer, as in the official code (which
   adds it inside the autograd backward).

Deviations from the official code, both deliberate: ties within a group go to the lowest index (its
``argsort`` leaves them unspecified), and the decay is added once per optimizer step by :func:`srste_gradient`
rather than once per backward pass, so gradient accumulation over micro-batches does not multiply it.
Groups run along the reduction dim of :mod:`sparsetrain.nm` (for a convolution the input channels, as the
official ``Sparse_NHWC`` does for its convolutions); layers that do not fit are kept dense.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .nm import NMPattern, nm_mask

__all__ = ["SRSTE_DECAY", "srste_mask", "straight_through", "srste_gradient"]

#: The paper's lambda_W (and the official code's default ``decay``).
SRSTE_DECAY = 2e-4


@torch.no_grad()
def srste_mask(weight: Tensor, pattern: NMPattern | str, *, dim: int = 1) -> Tensor:
    """The N:M mask SR-STE uses this step: the N largest ``|w|`` of every group of M along ``dim``.

    Args:
        weight: the dense weight.
        pattern: the N:M pattern.
        dim: the reduction dimension (:func:`sparsetrain.nm.reduction_dim`).

    Returns:
        A bool mask shaped like ``weight``, exactly N per group (ties to the lowest index).
    """
    return nm_mask(weight.detach().abs(), pattern, dim=dim)


class _StraightThrough(torch.autograd.Function):
    """Forward ``weight * mask``; backward passes the gradient to ``weight`` unchanged."""

    @staticmethod
    def forward(ctx: object, weight: Tensor, mask: Tensor) -> Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through(weight: Tensor, mask: Tensor) -> Tensor:
    """``mask ⊙ weight`` for the forward pass, with the gradient passed straight through to ``weight``.

    The gradient ``weight`` receives is the gradient w.r.t. the masked weight ``W~``, at every position,
    pruned ones included (SR-STE's ``g(W~)``).

    Args:
        weight: the dense weight (usually requires grad).
        mask: bool mask shaped like ``weight``.

    Returns:
        The masked weight, differentiable w.r.t. ``weight`` with the identity as its Jacobian.
    """
    return _StraightThrough.apply(weight, mask)


@torch.no_grad()
def srste_gradient(grad: Tensor, weight: Tensor, mask: Tensor, decay: float = SRSTE_DECAY) -> Tensor:
    """SR-STE's gradient: ``g(W~) + decay * (Ē ⊙ W)``, i.e. the pruned weights decay, kept ones are untouched.

    Args:
        grad: the straight-through gradient ``g(W~)`` (what ``weight.grad`` holds after the backward pass).
        weight: the dense weight ``W``.
        mask: this step's bool N:M mask ``E``.
        decay: ``lambda_W`` (>= 0); 0 gives the plain straight-through estimator.

    Returns:
        A new tensor; kept positions are bit-identical to ``grad``.
    """
    if not decay >= 0.0:
        raise ValueError(f"decay must be a number >= 0 (the paper uses {SRSTE_DECAY}), got {decay!r}")
    return torch.where(mask, grad, torch.add(grad, weight, alpha=decay))
