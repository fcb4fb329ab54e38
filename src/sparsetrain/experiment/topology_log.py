"""``topology.jsonl``: one JSON line per topology update of a run (a :class:`~sparsetrain.topology.TopologyEvent`).

Written like ``metrics.jsonl`` (:mod:`.metrics`): each event is appended as it happens, so a crash loses at most
the line being written; on resume the log is cut back to the checkpoint's step (:func:`truncate_events`), and the
updates after it are replayed and logged once. A run records its events by subscribing the writer to its
sparsifier::

    sparsifier.subscribe(functools.partial(append_event, run.topology_file))

An fsync costs milliseconds, more than a small model's training step; the ``Trainer`` therefore appends with
``sync=False`` and fsyncs the file right before each checkpoint (:func:`sparsetrain.atomic.sync_file`): every
line up to a checkpoint's step is on disk before the checkpoint is, and lines after it are cut on resume anyway.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrain.topology import TopologyEvent

from .metrics import append_metrics, read_jsonl, truncate_jsonl

__all__ = ["append_event", "read_events", "truncate_events"]


def append_event(path: str | Path, event: TopologyEvent, *, sync: bool = True) -> None:
    """Append ``event`` to ``path`` as one JSON line and fsync it.

    Args:
        path: the topology.jsonl file.
        event: the update to record.
        sync: fsync now; False leaves it to a later :func:`sparsetrain.atomic.sync_file`.
    """
    append_metrics(path, event.to_dict(), sync=sync)


def read_events(path: str | Path) -> list[TopologyEvent]:
    """The events of a topology.jsonl file in order (none if it does not exist; a torn last line is skipped).

    Raises:
        ValueError: a line is JSON but not a topology event.
    """
    return [TopologyEvent.from_dict(record) for record in read_jsonl(path)]


def truncate_events(path: str | Path, step: int) -> int:
    """Keep the events of steps ``<= step`` (the checkpoint's step), atomically; returns how many are kept."""
    return truncate_jsonl(path, "step", step)
