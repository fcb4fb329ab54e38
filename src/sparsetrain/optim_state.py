"""Optimizer state at pruned and regrown positions, for any ``torch.optim`` optimizer.

Every per-parameter state tensor shaped like its parameter (SGD's ``momentum_buffer``, Adam's ``exp_avg`` and
``exp_avg_sq``, ``max_exp_avg_sq``, Adagrad's ``sum``, ...) is treated alike; scalars such as ``step`` are left
alone. This is what lets one sparsifier serve every optimizer without knowing its internals.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["state_tensors", "mask_optimizer_state"]


def state_tensors(optimizer: torch.optim.Optimizer, param: Tensor) -> list[Tensor]:
    """The optimizer's state tensors for ``param`` that have the parameter's shape."""
    state = optimizer.state.get(param, {})
    return [v for v in state.values() if isinstance(v, Tensor) and v.shape == param.shape]


@torch.no_grad()
def mask_optimizer_state(
    optimizer: torch.optim.Optimizer | None, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> None:
    """Zero every state tensor outside the mask (state at inactive positions becomes exactly 0)."""
    if optimizer is None:
        return
    tensors, factors = [], []
    for name, mask in masks.items():
        for buf in state_tensors(optimizer, params[name]):
            tensors.append(buf)
            factors.append(mask)
    if tensors:
        torch._foreach_mul_(tensors, factors)
