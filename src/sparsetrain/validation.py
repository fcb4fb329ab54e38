"""Argument checks shared by the whole library: one place, so that every message reads the same.

Each check takes the argument's name and value, returns the value normalised (ints accepted for numbers become
floats) and raises with one line that names the argument, its value and what is allowed::

    sparsity=1.5 is not allowed: a sparsity must be a number in [0, 1)

A wrong *type* raises ``TypeError`` and a wrong *value* ``ValueError``, as Python's own functions do. Checks of
one concept's words (a distribution, a scope) live with the concept (:mod:`sparsetrain.distributions`,
:mod:`sparsetrain.selection`) and are built on :func:`check_choice`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_number",
    "check_sparsity",
    "check_fraction",
    "check_int",
    "check_positive_int",
    "check_bool",
    "check_choice",
    "check_bool_masks",
    "check_same_layout",
    "check_optimizer_holds",
]

_BRACKETS = {"[": True, "(": False, "]": True, ")": False}


def check_number(name: str, value: Any, interval: str = "[0, 1)", what: str = "it must be a number") -> float:
    """A real number (not a bool) inside ``interval``, e.g. ``"[0, 1)"`` or ``"(0, 1]"``.

    Args:
        name: the argument's name.
        value: its value.
        interval: the allowed interval in the usual notation (brackets include, parentheses exclude the end).
        what: the start of the explanation, e.g. "a sparsity must be a number".

    Returns:
        The value as a float.

    Raises:
        ValueError: not a finite real number inside the interval (the message ends "<what> in <interval>").
    """
    low_text, high_text = interval[1:-1].split(",")
    low, high = float(low_text), float(high_text)
    low_closed, high_closed = _BRACKETS[interval[0]], _BRACKETS[interval[-1]]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low <= value if low_closed else low < value) and (value <= high if high_closed else value < high)
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: {what} in {interval}")
    return float(value)


def check_sparsity(name: str, value: Any) -> float:
    """A sparsity: a real number in [0, 1)."""
    return check_number(name, value, "[0, 1)", "a sparsity must be a number")


def check_fraction(name: str, value: Any) -> float:
    """A drop fraction: a real number in (0, 1]."""
    return check_number(name, value, "(0, 1]", "a fraction must be a number")


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """An int (not a bool), at least ``minimum`` if given.

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} is not allowed: it must be an int{bound}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an int{bound}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """A count of steps: an int > 0 (TypeError for other types, ValueError for values <= 0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} is not allowed: it must be a positive int")
    if value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: it must be a positive int (> 0)")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A switch: a real bool (``bool("no")`` is True, so strings and numbers are refused with a TypeError)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} is not allowed: it must be True or False")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """One of ``allowed`` (ValueError listing them otherwise)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_bool_masks(masks: Any, argument: str) -> None:
    """Raise unless ``masks`` maps strings to bool tensors.

    Args:
        masks: the mask dict to check.
        argument: the argument's name, used in the error message.

    Raises:
        TypeError: not a mapping, a key is not a string, a value is not a tensor, or a tensor is not of dtype bool.
        ValueError: a tensor on the meta device (no values to read).
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"{argument} must be a mapping from parameter name to bool tensor, got {type(masks).__name__}")
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"{argument}: keys must be parameter names (str), got {name!r}")
        if not isinstance(mask, Tensor):
            raise TypeError(f"{argument}[{name!r}] must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(
                f"{argument}[{name!r}] must have dtype torch.bool, got {mask.dtype}; "
                "convert a 0/1 mask with (mask != 0)"
            )
        if mask.is_meta:
            raise ValueError(f"{argument}[{name!r}] is on the meta device (a shape without values); give masks that "
                             "hold values, e.g. on cpu")


def check_same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor], name_a: str, name_b: str) -> None:
    """Raise a ValueError unless ``a`` and ``b`` have the same keys and each pair the same shape.

    Args:
        a: first tensor dict.
        b: second tensor dict.
        name_a: name of the first argument, for messages.
        name_b: name of the second argument, for messages.

    Raises:
        ValueError: naming the tensors present on one side only, or the first tensor whose shapes differ.
    """
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    if only_a or only_b:
        raise ValueError(
            f"{name_a} and {name_b} must hold the same tensor names; "
            f"only in {name_a}: {only_a}; only in {name_b}: {only_b}"
        )
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(
                f"tensor {key!r} has shape {tuple(ta.shape)} in {name_a} but {tuple(tb.shape)} in {name_b}"
            )


def check_optimizer_holds(optimizer: torch.optim.Optimizer | None, params: Mapping[str, Tensor]) -> None:
    """Raise unless ``optimizer`` (when given) updates every tensor of ``params`` (else it is another model's
    optimizer, or holds part of the model only).

    Args:
        optimizer: the optimizer, or None (nothing to check).
        params: name -> the tensors it must hold (a sparsifier's tensors to sparsify).

    Raises:
        ValueError: naming the first tensors it does not hold.
    """
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, param in params.items() if id(param) not in held]
    if missing:
        which = "none of them" if len(missing) == len(params) else f"{len(missing)} of {len(params)}"
        raise ValueError(f"optimizer does not hold the tensors to sparsify ({which}: {', '.join(missing[:4])}"
                         f"{', ...' if len(missing) > 4 else ''}): build the sparsifier with this model's optimizer, "
                         "or leave those tensors out with exclude=[...]")
