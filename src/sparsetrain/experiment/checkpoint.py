"""Checkpoints: safe loads, and the random-generator states an exact resume needs.

A checkpoint is one dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs). The RNG states of torch (CPU and CUDA), numpy and
Python's ``random`` are converted to such values here. Checkpoints are written with
:func:`sparsetrain.checkpoint_io.save_checkpoint` (atomic, see :mod:`sparsetrain.atomic`); with ``keep_previous``
the file being replaced is first renamed to ``checkpoint.prev.pt``, so a checkpoint that later turns out to be
damaged (a bad disk, a copy cut short) has a good predecessor to fall back on.

Loading checks the zip container's CRC-32 of every record before unpickling (``torch.load`` itself does not:
a flipped byte inside a tensor loads silently), then loads with ``weights_only=True``; a damaged file raises
:class:`~sparsetrain.checkpoint_io.CheckpointError` naming it.
"""

from __future__ import annotations

import logging
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain.checkpoint_io import CheckpointError
from sparsetrain.checkpoint_io import load_checkpoint as _safe_load

__all__ = ["load_checkpoint", "capture_rng", "restore_rng", "CheckpointError"]

logger = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict: CRC-check the file, then ``torch.load(..., weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (default CPU; the trainer moves them).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, truncated, corrupt (a record fails its CRC-32), not a torch
            checkpoint, or not a dict; the message names the file. (An ``UnsafeCheckpointError`` for files
            holding arbitrary Python objects.)
    """
    source = Path(path)
    if source.is_file() and source.stat().st_size > 0:
        try:
            with zipfile.ZipFile(source) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(source)!r} ({source.stat().st_size} bytes) could not be read: "
                                  f"it is truncated, corrupt or not a torch checkpoint ({exc})") from None
        if bad is not None:
            raise CheckpointError(f"checkpoint {str(source)!r} is corrupt: record {bad!r} fails its CRC-32 check")
    state = _safe_load(source, map_location=map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(source)!r} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def capture_rng() -> dict[str, Any]:
    """The global random states of torch (CPU, CUDA), numpy and Python as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning("checkpoint has %d CUDA generator states, this machine %d devices: CUDA RNG not restored",
                           len(cuda_states), torch.cuda.device_count())
