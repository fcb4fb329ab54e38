"""Reading masks and weights from what sparsetrain writes, for the comparison tools.

Accepted sources (a path, file or directory):

* a run directory (``runs/<method>-<hash>/seed_<n>``, and every study's runs: a lottery level's ``run/``,
  ``reinit/`` and ``random/``, a plasticity cell): ``masks.pt`` for masks, ``checkpoint.pt``'s model for weights;
* a lottery level directory (``level_<L>``): ``masks.pt``, its ticket (no weights: they are in ``level_<L>/run``);
* a file: ``masks.pt`` (``{name: bool tensor}``), a run checkpoint (``checkpoint.pt``, a kept
  ``checkpoints/step_<n>.pt``: masks from its sparsifier state, weights from its ``model``), or any saved state
  dict (``model.pt``, a lottery control's ``reinit_weights.pt``...), whose masks are its nonzero weights (tensors
  with at least 2 dims).

Files are read with ``torch.load(..., weights_only=True)`` onto the CPU: no pickled code runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsetrain.analysis.overlap import masks_from_state_dict

__all__ = ["load_masks", "load_weights", "common_names"]

logger = logging.getLogger(__name__)


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, or not a tensors-only file
        raise ValueError(f"{path}: cannot be read as a tensors-only torch file ({type(exc).__name__}: {exc})") from None


def _is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping)


def _tensor_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a dict of tensors (a state dict or masks), got {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors")
    return tensors


def _resolve(path: str | Path, kind: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        return path
    names = ("masks.pt", "checkpoint.pt", "model.pt") if kind == "masks" else ("checkpoint.pt", "model.pt")
    for name in names:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{path}: a directory without {' or '.join(names)}; give a run directory, a lottery level "
                     "directory, or a file")


def load_masks(path: str | Path) -> dict[str, Tensor]:
    """Masks ``{name: bool tensor}`` from a run or level directory, a masks file, a checkpoint or a state dict.

    Args:
        path: see the module docstring.

    Returns:
        The masks, on the CPU.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: nothing mask-like is found there.
    """
    file = _resolve(path, "masks")
    obj = _load(file)
    if _is_checkpoint(obj):
        sparsifier = obj.get("sparsifier")
        if isinstance(sparsifier, Mapping) and isinstance(sparsifier.get("masks"), Mapping):
            return {k: v.to(torch.bool) for k, v in sparsifier["masks"].items()}
        return masks_from_state_dict(obj["model"])
    tensors = _tensor_dict(obj, file)
    if all(t.dtype == torch.bool for t in tensors.values()):
        return tensors
    return masks_from_state_dict(tensors)


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """A model's state dict from a run or level directory, a checkpoint or a state-dict file.

    Args:
        path: see the module docstring (masks files hold no weights).

    Returns:
        ``{name: tensor}`` on the CPU.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: no weights there (a masks file, or a file without tensors).
    """
    file = _resolve(path, "weights")
    obj = _load(file)
    if _is_checkpoint(obj):
        return _tensor_dict(obj["model"], file)
    tensors = _tensor_dict(obj, file)
    if all(t.dtype == torch.bool for t in tensors.values()):
        raise ValueError(f"{file}: holds masks, not weights; give a checkpoint or model file")
    return tensors


def common_names(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> tuple[list[str], list[str]]:
    """Names present in both dicts with the same shape (in ``a``'s order), and the names left out.

    Returns:
        ``(shared, left_out)``.
    """
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    left_out = sorted((set(a) | set(b)) - set(shared))
    return shared, left_out
