"""Checkpoint files on disk: atomic saving and safe loading.

Saving is ``torch.save`` through :func:`sparsetrain.atomic.atomic_write` (temporary file, fsync, ``os.replace``),
so a crash mid-save leaves the old checkpoint intact and never a half-written one under the real name.

Loading uses ``torch.load(..., weights_only=True)``: only tensors, primitive containers and a short list of
torch types are rebuilt, so a file crafted to run code when unpickled is refused instead of executed. A
sparsifier's ``state_dict()`` (masks, step, generator state, config) and model / optimizer state dicts load this
way. Truncated or corrupt files raise :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

__all__ = ["CheckpointError", "UnsafeCheckpointError", "save_checkpoint", "load_checkpoint"]

logger = logging.getLogger(__name__)

_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read: truncated, corrupt, or not a torch checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds Python objects that a weights-only load refuses to rebuild (it could run code)."""


def save_checkpoint(
    obj: Any, path: str | os.PathLike[str], *, keep_previous: str | os.PathLike[str] | None = None
) -> Path:
    """Save ``obj`` with ``torch.save`` atomically (see :func:`sparsetrain.atomic.atomic_write`).

    Args:
        obj: what to save (state dicts, tensors, primitive containers; keep it loadable with weights_only).
        path: the target file; its directory is created if missing.
        keep_previous: optional file that receives the previous version of ``path``.

    Returns:
        The target path.
    """
    target = atomic_write(path, lambda handle: torch.save(obj, handle), keep_previous=keep_previous)
    logger.debug("saved checkpoint %s", target)
    return target


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    *,
    safe_globals: Iterable[Any] = (),
) -> Any:
    """Load a checkpoint with ``torch.load(path, weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (default "cpu"; None keeps the devices they were saved from).
        safe_globals: extra classes or functions the file may rebuild (added with
            ``torch.serialization.safe_globals``); only name types you trust.

    Returns:
        The loaded object.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds objects a weights-only load refuses (possibly code to run).
        CheckpointError: the file is empty, truncated, corrupt or not a torch checkpoint.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist (or is not a file)")
    if source.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(source)!r} is empty (0 bytes): an interrupted save?")
    extra = list(safe_globals)
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(str(err))
        if _WEIGHTS_ONLY_REFUSAL in str(err) and "global" in detail.lower():
            raise UnsafeCheckpointError(
                f"checkpoint {str(source)!r} was refused: it holds Python objects that a weights-only load does "
                f"not rebuild, and unpickling them could run code ({detail}). Load it with torch.load(..., "
                "weights_only=False) only if you trust its origin, or pass the types as safe_globals."
            ) from err
        raise CheckpointError(
            f"checkpoint {str(source)!r} could not be read: it is corrupt, truncated, or not written by torch.save "
            f"({detail})"
        ) from err
    except Exception as err:  # the zip reader and unpickler raise many types on damaged files
        raise CheckpointError(
            f"checkpoint {str(source)!r} ({source.stat().st_size} bytes) could not be read: it is truncated, "
            f"corrupt or not a torch checkpoint ({type(err).__name__}: {_unpickler_detail(str(err))})"
        ) from err


def _unpickler_detail(message: str) -> str:
    """The informative line of torch's long load error (the WeightsUnpickler or stream-reader reason)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            rest = rest or (lines[index + 1] if index + 1 < len(lines) else "")
            return rest.split(". Please use")[0]
    return lines[0][:300] if lines else message
