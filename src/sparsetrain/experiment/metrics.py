"""Per-epoch metrics (``metrics.jsonl``) and the run summary (``summary.json``).

``metrics.jsonl`` gets one JSON object per finished epoch, appended and fsync'ed before that epoch's
checkpoint is written. A crash between the two leaves a line for an epoch the checkpoint does not have; on
resume :func:`truncate_metrics` drops it, and the epoch is trained again and logged once. The JSON-lines helpers
(:func:`append_metrics`, :func:`read_jsonl`, :func:`truncate_jsonl`) serve every such log of a run
(``topology.jsonl`` too).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

__all__ = ["append_metrics", "truncate_metrics", "write_summary", "best_epoch", "jsonable", "read_jsonl",
           "truncate_jsonl"]

logger = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts only; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return jsonable(value.item())
    return value


def append_metrics(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line and fsync it.

    Args:
        path: the metrics.jsonl file.
        record: the epoch's metrics.
    """
    line = json.dumps(jsonable(record), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, in order; a torn or malformed line (a crash mid-write) is skipped with a
    warning, and a missing file has none.

    Args:
        path: the file.

    Returns:
        One dict per line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: ignoring a malformed line", path)
    return records


def truncate_jsonl(path: str | Path, key: str, last: int) -> int:
    """Keep only the records whose ``key`` is ``<= last`` (and drop a torn last line); atomic.

    Args:
        path: the JSON-lines file.
        key: the record's position field ("epoch" in metrics.jsonl, "step" in topology.jsonl).
        last: the last position the checkpoint holds.

    Returns:
        The number of records kept.
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get(key, 0) <= last:
            kept.append(line)
    atomic_write_text("".join(line + "\n" for line in kept), path)
    return len(kept)


def truncate_metrics(path: str | Path, epochs_done: int) -> int:
    """Keep only the records of epochs ``<= epochs_done`` (and drop a torn last line); atomic.

    Args:
        path: the metrics.jsonl file.
        epochs_done: the number of epochs the checkpoint holds (records count epochs from 1).

    Returns:
        The number of records kept.
    """
    return truncate_jsonl(path, "epoch", epochs_done)


def best_epoch(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record with the best validation accuracy (the earliest on ties); by test accuracy if no val split."""
    key = "val_acc" if any(r.get("val_acc") is not None for r in records) else "test_acc"
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (r[key], -r["epoch"]))


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json atomically (its presence marks a finished run)."""
    atomic_write_text(json.dumps(jsonable(summary), indent=2) + "\n", path)
