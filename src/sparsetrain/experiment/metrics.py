"""Per-epoch metrics (``metrics.jsonl``) and the run summary (``summary.json``).

``metrics.jsonl`` gets one JSON object per finished epoch, appended and fsync'ed before that epoch's
checkpoint is written. A crash between the two leaves a line for an epoch the checkpoint does not have; on
resume :func:`truncate_metrics` drops it, and the epoch is trained again and logged once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.atomic import append_line, write_json, write_text

__all__ = ["append_metrics", "truncate_metrics", "write_summary", "best_epoch", "jsonable"]


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
    append_line(json.dumps(jsonable(record), sort_keys=False), path)


def truncate_metrics(path: str | Path, epochs_done: int) -> int:
    """Keep only the records of epochs ``<= epochs_done`` (and drop a torn last line); atomic.

    Args:
        path: the metrics.jsonl file.
        epochs_done: the number of epochs the checkpoint holds (records count epochs from 1).

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
        if record.get("epoch", 0) <= epochs_done:
            kept.append(line)
    write_text("".join(line + "\n" for line in kept), path)
    return len(kept)


def best_epoch(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record with the best validation accuracy (the earliest on ties); by test accuracy if no val split."""
    key = "val_acc" if any(r.get("val_acc") is not None for r in records) else "test_acc"
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (r[key], -r["epoch"]))


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json atomically (its presence marks a finished run)."""
    write_json(jsonable(summary), path)
