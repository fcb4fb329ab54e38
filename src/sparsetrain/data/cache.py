"""Where generated datasets are cached on disk, and atomic .npz reads and writes there."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "SPARSETRAIN_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/sparsetrain")


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the cache directory: `cache_dir` if given, else $SPARSETRAIN_CACHE, else ~/.cache/sparsetrain.

    Args:
        cache_dir: explicit directory, or None to use the environment variable or the default.

    Returns:
        The expanded path (not created).
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser()


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Read every array of a cached .npz file, or return None if it is absent or unreadable.

    Args:
        path: the .npz file.

    Returns:
        A dict of arrays, or None (a corrupt cache entry is logged and treated as a miss).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable cache file %s (%s); it will be rebuilt", path, error)
        return None


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to `path` atomically (:func:`sparsetrain.atomic.atomic_write`).

    Args:
        path: destination .npz file; its parent directories are created.
        arrays: arrays to store, by name.
    """
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
    logger.info("cached %s", path)
