"""Optimizer state at pruned and regrown positions, for any ``torch.optim`` optimizer.

Every per-parameter state tensor shaped like its parameter (SGD's ``momentum_buffer``, Adam's ``exp_avg`` and
``exp_avg_sq``, ``max_exp_avg_sq``, Adagrad's ``sum``, ...) is treated alike; scalars such as ``step`` are left
alone. This is what lets one sparsifier serve every optimizer without knowing its internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["state_tensors", "mask_optimizer_state", "swap_parameter"]


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


@torch.no_grad()
def swap_parameter(optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, carry: Callable[[Tensor], Tensor]) -> bool:
    """Put ``new`` where ``old`` is in the optimizer's param groups, with ``old``'s state carried over.

    Every state tensor shaped like ``old`` becomes ``carry(tensor)`` (e.g. its entries at the positions ``new``
    stores); other state (``step``) is kept as it is. Schedulers and scalers that hold the optimizer see the change.

    Returns:
        Whether ``old`` was in the optimizer (if not, nothing changes).
    """
    found = False
    for group in optimizer.param_groups:
        params = group["params"]
        for index, param in enumerate(params):
            if param is old:
                params[index] = new
                found = True
    state = optimizer.state.pop(old, None)
    if found and state:
        optimizer.state[new] = {key: carry(value) if isinstance(value, Tensor) and value.shape == old.shape
                                else value for key, value in state.items()}
    return found
