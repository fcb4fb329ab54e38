"""Per-epoch metrics: the epoch's running training sums, evaluation, ``metrics.jsonl`` and ``summary.json``.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparsetrain.atomic import append_line, write_json, write_text

if TYPE_CHECKING:
    from .build import Experiment
    from .parallel import Parallel

__all__ = ["RunningSums", "evaluate", "append_metrics", "truncate_metrics", "write_summary", "best_epoch",
           "best_by", "BEST_BY_VAL", "BEST_BY_LAST", "jsonable", "read_jsonl", "truncate_jsonl"]

logger = logging.getLogger(__name__)


class RunningSums:
    """This rank's sums of the current epoch's training loss and correct predictions (exact: float64 / int64).

    Args:
        device: where the sums live (the training device: no host sync per step).
        state: a :meth:`state` to continue.
    """

    def __init__(self, device: torch.device, state: Mapping[str, Any] | None = None) -> None:
        state = state or {"loss_sum": 0.0, "correct": 0, "count": 0}
        self.loss_sum = torch.tensor(state["loss_sum"], dtype=torch.float64, device=device)
        self.correct = torch.tensor(state["correct"], dtype=torch.int64, device=device)
        self.count = int(state["count"])

    @torch.no_grad()
    def add(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        """Add one minibatch: its mean ``loss`` and the ``logits`` predicted for ``targets``."""
        n = targets.numel()
        self.loss_sum += loss.detach().double() * n
        self.correct += (logits.detach().argmax(-1) == targets).sum()
        self.count += n

    def means(self, parallel: Parallel | None = None) -> tuple[float | None, float | None]:
        """Mean loss and accuracy; over every rank's sums with a data-parallel ``parallel`` (a collective call)."""
        loss_sum, correct, count = self.loss_sum, self.correct, self.count
        if parallel is not None and parallel.distributed:
            loss_sum, correct = loss_sum.clone(), correct.clone()
            total = torch.tensor(count, dtype=torch.int64, device=loss_sum.device)
            parallel.all_sum([loss_sum, correct, total])
            count = int(total)
        if not count:
            return None, None
        return float(loss_sum) / count, int(correct) / count

    def state(self) -> dict[str, Any]:
        """Plain numbers, for the checkpoint."""
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "count": self.count}


@torch.no_grad()
def evaluate(exp: Experiment, loader: torch.utils.data.DataLoader | None) -> tuple[float | None, float | None]:
    """Mean loss (cross-entropy without label smoothing) and accuracy of ``exp.model`` over ``loader``.

    In a data-parallel run each rank evaluates its share and the sums are added up (a collective call).

    Returns:
        ``(loss, accuracy)``, or ``(None, None)`` without a loader or samples.
    """
    if loader is None:
        return None, None
    model, device = exp.model, exp.device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with exp.autocast():
            logits = model(inputs)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double()
        correct += (logits.argmax(-1) == targets).sum()
        count += targets.numel()
    model.train(was_training)
    exp.parallel.all_sum([loss_sum, correct, count])  # each rank evaluated its share: the same totals everywhere
    if int(count) == 0:
        return None, None
    return float(loss_sum) / int(count), int(correct) / int(count)


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


def append_metrics(path: str | Path, record: Mapping[str, Any], *, sync: bool = True) -> None:
    """Append one record as a JSON line and fsync it.

    Args:
        path: the metrics.jsonl file.
        record: the epoch's metrics.
        sync: fsync now (see :func:`sparsetrain.atomic.append_line`).
    """
    append_line(json.dumps(jsonable(record), sort_keys=False), path, sync=sync)


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
    """Keep only the records whose ``key`` is ``<= last`` (and drop a torn or damaged line); atomic.

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
    for raw in path.read_bytes().splitlines():  # a line that is not UTF-8 JSON of a record is dropped like a torn one
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
            position = record.get(key, 0)
            if position <= last:
                kept.append(line)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
            continue
    write_text("".join(line + "\n" for line in kept), path)
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


#: How :func:`best_epoch` chose, with and without a validation split (``summary.json``'s ``best_by``).
BEST_BY_VAL = "val_acc"
BEST_BY_LAST = "last epoch (no validation split)"


def best_epoch(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record with the best validation accuracy (the earliest on ties).

    Without a validation split (``data.val_fraction = 0``) the last record: choosing the epoch by test accuracy
    would report the test set's best case as a result (see :func:`best_by`).
    """
    if not any(r.get("val_acc") is not None for r in records):
        return records[-1] if records else None
    scored = [r for r in records if r.get("val_acc") is not None]
    return max(scored, key=lambda r: (r["val_acc"], -r["epoch"]))


def best_by(records: Sequence[Mapping[str, Any]]) -> str:
    """How :func:`best_epoch` chooses for these records: :data:`BEST_BY_VAL` or :data:`BEST_BY_LAST`."""
    return BEST_BY_VAL if any(r.get("val_acc") is not None for r in records) else BEST_BY_LAST


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json atomically (its presence marks a finished run)."""
    write_json(jsonable(summary), path)
