"""Sparsity-aware initialisation: each unit's initial weights scaled to its *active* fan-in.

Evci et al., *Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win*, AAAI 2022 (arXiv 2010.03533),
§ "Sparse initialisation": a dense initialisation (Glorot, He, or PyTorch's default) sets the variance of every
weight from the layer's fan-in, as if every input were connected. In a sparse network a unit sees only its
active inputs, so the variance of its pre-activation shrinks by its density, layer after layer, and with it the
signal and the gradient. Their fix draws each unit's weights with the variance of the initialisation *at that
unit's own fan-in in the sparse network*: ``Var(w_ij) = scale / max(1, fan_in_i)``, with ``fan_in_i`` the number
of active weights feeding unit ``i`` (official code: google-research/rigl, ``rigl/rigl_tf2/init_utils.py``,
``unit_scaled_init``).

Here the weights the model's own initialisation drew are *rescaled*, unit by unit::

    w[i] *= sqrt(fan_in / active_fan_in_i)

which gives each unit's active weights exactly the distribution its initialisation has at fan-in
``active_fan_in_i`` for every initialisation whose scale is ``1 / sqrt(fan_in)`` (PyTorch's default, Kaiming,
LeCun, Glorot up to the fan-out term). Deviations from the official code, both deliberate: the model keeps its
own initialisation family (the official code redraws from one Keras ``VarianceScaling``), and no random number is
drawn, so a run's random stream is the same with and without it. A unit is a slice along dim 0 of the weight
(an output unit of ``nn.Linear``, an output channel of a convolution, a gate row of an RNN weight, a row of an
embedding), the slicing PyTorch's own initialisers use to compute the fan-in; a unit with no active weight is left
as it is (its weights are pruned anyway), as is a tensor whose mask is dense (bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["SPARSE_INITS", "active_fan_in", "scale_to_active_fan_in", "unit_factors"]

#: Initialisations of a sparse start: "fan_in" (Evci et al. 2022) or "none" (the dense initialisation as drawn).
SPARSE_INITS = ("fan_in", "none")


def active_fan_in(mask: Tensor) -> Tensor:
    """The active fan-in of every unit (slice along dim 0) of ``mask``: a 1-D int64 tensor of length ``shape[0]``."""
    return mask.reshape(mask.shape[0], -1).sum(dim=1)


@torch.no_grad()
def scale_to_active_fan_in(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Rescale each unit's weights by ``sqrt(fan_in / active fan_in)``, in place (see the module docstring).

    Args:
        params: name -> weight tensor (the initialisation to rescale).
        masks: name -> bool mask of the same shape (tensors without a mask are left alone).

    Returns:
        name -> the RMS of the applied factors over the units with an active weight, for the tensors that were
        rescaled (dense tensors are left out: nothing changes there).
    """
    applied = {}
    for name, mask in masks.items():
        if bool(mask.all()) or mask.dim() == 0:
            continue
        param = params[name]
        factors, applied[name] = unit_factors(active_fan_in(mask), mask[0].numel(), param.dtype)
        param.mul_(factors.view(-1, *([1] * (param.dim() - 1))))
    return applied


def unit_factors(active: Tensor, fan_in: int, dtype: torch.dtype) -> tuple[Tensor, float]:
    """Each unit's factor ``sqrt(fan_in / active fan_in)`` (1 for a unit with no active weight), and their RMS over
    the units with an active weight (1.0 without any): what :func:`scale_to_active_fan_in` applies, for a storage
    that holds only the active weights (:mod:`sparsetrain.sparse.backend`).

    Args:
        active: the active fan-in of every unit (:func:`active_fan_in`).
        fan_in: a unit's dense fan-in.
        dtype: the weights' dtype.
    """
    active = active.to(dtype)
    alive = active > 0
    factors = torch.where(alive, torch.sqrt(fan_in / active.clamp(min=1)), torch.ones_like(active))
    return factors, math.sqrt(float(factors[alive].square().mean())) if bool(alive.any()) else 1.0
