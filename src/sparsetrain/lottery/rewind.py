"""Rewinding: the weights at step k are saved once and reloaded, masked, at the start of every round.

Frankle & Carbin (2019) rewind to the initialisation (k = 0); Frankle et al. (2020) to an early step k of the
dense run, which makes tickets stable in deeper networks. The saved state is the model's whole
``state_dict`` (BatchNorm statistics included); pruned weights are zeroed after loading, survivors get their
saved values bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..masks import apply_masks

__all__ = ["snapshot", "rewind", "reinitialize"]

logger = logging.getLogger(__name__)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of the model's ``state_dict`` (the rewind point)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


@torch.no_grad()
def rewind(model: nn.Module, state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> nn.Module:
    """Load the rewind point ``state`` into ``model`` and zero the weights outside ``masks``, in place.

    Returns:
        The same model.
    """
    model.load_state_dict(state)
    params = dict(model.named_parameters())
    apply_masks(params, {name: mask.to(params[name].device) for name, mask in masks.items()})
    return model


@torch.no_grad()
def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """A fresh random initialisation, in place: ``reset_parameters()`` of every module that has one, seeded.

    The global random generator is left as it was. Parameters no module resets (a bare ``nn.Parameter`` of a
    custom module) keep their values; they are logged as a warning.

    Returns:
        The same model.
    """
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
    kept = [name for name, p in model.named_parameters()
            if p.numel() > 1 and torch.equal(p.detach(), before[name]) and p.detach().std() > 0]
    if kept:
        logger.warning("reinitialize: no module resets %s; they keep their values", ", ".join(kept))
    return model
