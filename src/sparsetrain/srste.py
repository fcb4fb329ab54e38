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

:class:`StraightThroughEnforcer` runs these functions around ``optimizer.step()`` without a forward hook or a
reparametrisation (the method itself is :class:`sparsetrain.methods.srste.SRSTE`): between steps each parameter
*holds* ``W~ = E ⊙ W``, so the forward pass, evaluation, ``state_dict`` and export all see the N:M weights and
autograd gives ``g(W~)`` at every position, which is exactly the straight-through gradient; the dense values of
the pruned positions wait in a side buffer. The optimizer's step pre-hook puts them back and adds the decay to the
gradient, so the optimizer updates the dense ``W`` (with dense momentum or Adam moments, as in the paper); the
sparsifier's ``step()`` then recomputes ``E`` from ``|W|`` and hides the newly pruned values again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .enforcement import DenseMaskEnforcer, MaskSource
from .nm import NMPattern, nm_mask

__all__ = ["SRSTE_DECAY", "srste_mask", "straight_through", "srste_gradient", "StraightThroughEnforcer"]

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


class StraightThroughEnforcer(DenseMaskEnforcer):
    """Bool masks over dense weights whose pruned values are *kept aside*, not zeroed (SR-STE's storage).

    :class:`~sparsetrain.enforcement.DenseMaskEnforcer` keeps pruned weights, gradients and optimizer state at
    exactly zero, which is what a sparse network trained under a fixed or slowly changing mask needs. SR-STE keeps
    the opposite invariant: the weights stay dense (a pruned weight can come back at the next step with the value
    it has been trained to), the optimizer state stays dense, the gradient reaches every weight, and only the
    forward pass sees ``E ⊙ W``. That is a different storage contract, so it is a second enforcer rather than an
    option of the first. Between steps the parameter holds ``E ⊙ W`` and :attr:`dense` holds ``W``; the step
    pre-hook adds ``decay * (W - E ⊙ W)`` (= ``decay (Ē ⊙ W)``, :func:`srste_gradient`'s term, exact at the kept
    positions) to the gradient and puts ``W`` back; :meth:`apply` (after the sparsifier chose the new masks from
    ``|W|``) copies ``W`` aside and multiplies the parameter by the mask. Every pass is a copy, a subtraction or a
    multiplication by the float mask (a ``where`` or ``masked_fill`` on a bool mask costs several times more on a
    CPU). Steps are counted, closures and GradScaler are handled as by the dense enforcer; nothing is masked on
    the gradient path.

    Args:
        params / optimizer / source: as :class:`~sparsetrain.enforcement.MaskEnforcer` (an optimizer is needed).
        decay: ``lambda_W`` of the sparse-refined term (0: the plain straight-through estimator).

    Attributes:
        dense: name -> ``W``, the dense weights, while the parameters hold ``E ⊙ W`` (:attr:`split`).
        split: whether the parameters hold ``E ⊙ W`` now (False inside ``optimizer.step()`` and until the next
            :meth:`apply`).
    """

    def __init__(self, params: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                 source: MaskSource, *, decay: float = SRSTE_DECAY) -> None:
        super().__init__(params, optimizer, source, mask_gradients=True, fused_step=False)
        self.decay = decay
        self.dense: dict[str, Tensor] = {}
        self.split = False
        self._grad_scale: Tensor | None = None

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # GradScaler hands a fused optimizer the scale with the gradients still scaled: the decay term must be too.
        self._grad_scale = kwargs.get("grad_scale", getattr(optimizer, "grad_scale", None))
        return super()._before_optimizer_step(optimizer, args, kwargs)

    def dense_weights(self) -> Mapping[str, Tensor]:
        """``W`` of every sparsified tensor (the live tensors: read, do not modify)."""
        return self.dense if self.split else {name: p.detach() for name, p in self.params.items()}

    @torch.no_grad()
    def apply(self, masks: Mapping[str, Tensor], *, also_zero: Mapping[str, Tensor] | None = None,
              refresh: bool = True) -> Mapping[str, Tensor]:
        """Split the dense weights by ``masks``: :attr:`dense` keeps ``W`` (``also_zero`` positions restart at
        zero), the parameter ``E ⊙ W``. The optimizer state is left dense. Returns ``masks``."""
        if not self.split:
            for name, param in self.params.items():
                if name in self.dense:
                    self.dense[name].copy_(param)
                else:
                    self.dense[name] = param.detach().clone()
        for name, where in (also_zero or {}).items():
            self.dense[name].masked_fill_(where, 0.0)
        multipliers = self._current_multipliers(masks, refresh)
        for name, param in self.params.items():
            torch.mul(self.dense[name], multipliers[name], out=param.detach())
        self.split = True
        return masks

    @torch.no_grad()
    def _prepare_gradients(self, fusable: bool = True) -> None:
        """Before the optimizer reads the gradients: add the decay of the pruned weights and put ``W`` back."""
        for callback in self._gradient_callbacks:
            callback(self.params)
        if not self.split:  # already dense: sparsifier.step() was not called after the last optimizer step
            return
        names = [name for name, p in self.params.items() if p.grad is not None]
        if names and self.decay:
            pruned = torch._foreach_sub([self.dense[n] for n in names], [self.params[n].detach() for n in names])
            if self._grad_scale is not None:  # a fused optimizer under GradScaler unscales the gradients itself
                torch._foreach_mul_(pruned, self._grad_scale)
            torch._foreach_add_([self.params[n].grad for n in names], pruned, alpha=self.decay)
        torch._foreach_copy_([p.detach() for p in self.params.values()], list(self.dense.values()))
        self.split = False
