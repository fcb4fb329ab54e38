"""Run directories: where one run's files live, and whether it is new, interrupted or finished.

Layout (OpenLTH style, one directory per experiment hash and one per seed)::

    <runs_dir>/<method>-<hash>/seed_<n>/
        config.yaml       the full config
        metrics.jsonl     one JSON line per epoch
        topology.jsonl    one JSON line per topology update (see sparsetrain.topology)
        checkpoint.pt     the latest checkpoint (every epoch and on interruption)
        checkpoint.prev.pt  the one before it (the fallback when checkpoint.pt is damaged)
        masks.pt          the final bool masks
        summary.json      written last: its presence marks the run finished
        *.png             the run's plots
        checkpoints/step_<n>.pt  full checkpoints kept at requested steps (never rotated; branch sources)
        branch.json       a branch's source (see :mod:`.branch`); a resumed branch must match it

``<hash>`` hashes the config's non-default identifying fields (see
:meth:`~sparsetrain.experiment.config.ExperimentConfig.config_hash`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import ConfigError, ExperimentConfig
from .metrics import read_jsonl

__all__ = ["RunDir", "RunStatus", "dense_reference", "find_runs"]

logger = logging.getLogger(__name__)

RunStatus = Literal["new", "interrupted", "finished"]


@dataclass(frozen=True)
class RunDir:
    """The files of one run (one config, one seed)."""

    path: Path

    @classmethod
    def for_config(cls, runs_dir: str | Path, config: ExperimentConfig) -> RunDir:
        """The directory of ``config`` (its seed included) under ``runs_dir``."""
        return cls(Path(runs_dir) / config.run_name() / f"seed_{config.train.seed}")

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def topology_file(self) -> Path:
        return self.path / "topology.jsonl"

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def previous_checkpoint_file(self) -> Path:
        return self.path / "checkpoint.prev.pt"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def kept_checkpoint(self, step: int) -> Path:
        """``checkpoints/step_<step>.pt``: the full checkpoint kept at optimizer step ``step``."""
        return self.checkpoints_dir / f"step_{step}.pt"

    def kept_checkpoints(self) -> dict[int, Path]:
        """The kept checkpoints on disk, by step."""
        found = {}
        if self.checkpoints_dir.is_dir():
            for path in self.checkpoints_dir.glob("step_*.pt"):
                number = path.stem[len("step_"):]
                if number.isdigit():
                    found[int(number)] = path
        return dict(sorted(found.items()))

    @property
    def branch_file(self) -> Path:
        return self.path / "branch.json"

    @property
    def masks_file(self) -> Path:
        return self.path / "masks.pt"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def name(self) -> str:
        """``<method>-<hash>/seed_<n>``."""
        return f"{self.path.parent.name}/{self.path.name}"

    def status(self) -> RunStatus:
        """"finished" once summary.json exists, "interrupted" with a checkpoint or config only, else "new"."""
        if self.summary_file.exists():
            return "finished"
        if self.checkpoint_file.exists() or self.previous_checkpoint_file.exists() or self.config_file.exists():
            return "interrupted"
        return "new"

    def read_config(self) -> ExperimentConfig:
        """The run's saved config.

        Raises:
            ConfigError: no config.yaml, or an invalid one.
        """
        if not self.config_file.exists():
            raise ConfigError(f"{self.path}: no config.yaml here; is this a run directory (runs/<name>/seed_<n>)?")
        return ExperimentConfig.from_yaml(self.config_file.read_text(), str(self.config_file))

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json as a dict, or None if the run has not finished."""
        if not self.summary_file.exists():
            return None
        return json.loads(self.summary_file.read_text())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records of metrics.jsonl (a torn last line, from a crash mid-write, is ignored)."""
        return read_jsonl(self.metrics_file)


def find_runs(runs_dir: str | Path, *, finished_only: bool = True) -> Iterator[RunDir]:
    """Every run directory under ``runs_dir`` (``*/seed_*`` holding a config.yaml), sorted by path.

    Args:
        runs_dir: the runs directory.
        finished_only: only runs with a summary.json.

    Returns:
        An iterator of :class:`RunDir`.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        return
    for config_file in sorted(root.glob("*/seed_*/config.yaml")):
        run = RunDir(config_file.parent)
        if finished_only and not run.summary_file.exists():
            continue
        yield run


def dense_reference(runs_dir: str | Path, config: ExperimentConfig) -> dict[str, Any] | None:
    """Accuracy of the finished dense baseline of ``config`` (same seed preferred), or None.

    Args:
        runs_dir: the runs directory.
        config: a (sparse) config.

    Returns:
        ``{"run", "final_acc", "best_acc"}`` or None.
    """
    same_seed = RunDir.for_config(runs_dir, config.dense_baseline())
    others = sorted(same_seed.path.parent.glob("seed_*")) if same_seed.path.parent.is_dir() else []
    for run in [same_seed, *(RunDir(p) for p in others)]:
        summary = run.read_summary()
        if summary is not None:
            return {"run": run.name, "final_acc": summary.get("final_acc"), "best_acc": summary.get("best_acc")}
    return None
