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

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sparsetrain.reading import MAX_YAML_BYTES, ReadError, read_json, read_text

from .config import ConfigError, ExperimentConfig
from .metrics import read_jsonl

__all__ = ["RunDir", "RunStatus", "dense_reference", "find_runs", "readable_summaries"]

logger = logging.getLogger(__name__)

RunStatus = Literal["new", "interrupted", "finished"]
#: Fields of summary.json that must be numbers (or null) for the report, the plots and a resume to use it.
_SUMMARY_NUMBERS = ("final_acc", "best_acc", "sparsity", "target_sparsity", "total_steps", "wall_time", "seed")


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
            ConfigError: no config.yaml, or one that cannot be read (not a file, not UTF-8, not valid YAML) or holds
                an invalid config.
        """
        if not self.config_file.exists():
            raise ConfigError(f"{self.path}: no config.yaml here; is this a run directory (runs/<name>/seed_<n>)?")
        try:
            text = read_text(self.config_file, limit=MAX_YAML_BYTES, what="config")
        except ReadError as exc:
            raise ConfigError(str(exc)) from None
        return ExperimentConfig.from_yaml(text, str(self.config_file))

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json as a dict, or None if the run has not finished.

        Raises:
            ReadError: summary.json cannot be read, or is not a summary (an object whose numbers are numbers); the
                message says how to write it again.
        """
        if not self.summary_file.exists():
            return None
        hint = "; delete it and run the same train command again to write it anew from the last checkpoint"
        try:
            summary = read_json(self.summary_file, what="summary")
        except ReadError as exc:
            raise ReadError(f"{exc}{hint}") from None
        if not isinstance(summary, dict):
            raise ReadError(f"{self.summary_file}: not a run summary (a JSON {type(summary).__name__}, expected an "
                            f"object){hint}")
        for key in _SUMMARY_NUMBERS:
            value = summary.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ReadError(f"{self.summary_file}: {key}={value!r} is not a number{hint}")
        return summary

    def recipe(self, summary: dict[str, Any] | None = None) -> str | None:
        """The hash of the run's recipe: its config without the sparse section (the runs of one recipe share a dense
        baseline, and only they belong on one accuracy-vs-sparsity curve). From ``summary["recipe"]`` if given, else
        from config.yaml; None when that cannot be read."""
        if summary is not None and isinstance(summary.get("recipe"), str):
            return summary["recipe"]
        try:
            return self.read_config().dense_baseline().config_hash()
        except ConfigError as exc:
            logger.warning("%s: recipe unknown (shown as -): %s", self.path, exc)
            return None

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


def readable_summaries(runs: Iterable[RunDir]) -> Iterator[tuple[RunDir, dict[str, Any]]]:
    """``(run, summary)`` of each finished run among ``runs``; one whose summary.json cannot be read is skipped
    with a warning naming it (a report or plot goes on with the others)."""
    for run in runs:
        try:
            summary = run.read_summary()
        except (ReadError, OSError) as exc:
            logger.warning("%s skipped: %s", run.name, exc)
            continue
        if summary is not None:
            yield run, summary


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
    for run, summary in readable_summaries([same_seed, *(RunDir(p) for p in others)]):
        return {"run": run.name, "final_acc": summary.get("final_acc"), "best_acc": summary.get("best_acc")}
    return None
