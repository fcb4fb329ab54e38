"""Branches: a run that starts from another run's checkpoint, or from given weights, instead of step 0.

OpenLTH's "branch" of a trained run, as an ordinary :class:`~sparsetrain.experiment.Trainer` run: a
:class:`Branch` names a source (a run checkpoint, e.g. a kept ``checkpoints/step_<n>.pt``, and/or a weights file)
and the parts of the source's state to take over (see :mod:`.run_state`: ``model``, ``optimizer``, ``position``,
``data``, ``rng``, ``sparsifier``); everything else is fresh, built from the branch run's own config. Masks come
through that config's sparse section (e.g. ``sparse.method=static``, ``sparse.options.masks=<a masks.pt>``); the
sparsifier is attached *after* the taken weights are loaded, so its masks apply to them.

The studies are branches:

* a **lottery level** rewound to step k (Frankle et al., *Linear Mode Connectivity and the Lottery Ticket
  Hypothesis*, ICML 2020) takes ``{"model", "position", "data"}`` of the dense run's checkpoint at step k: the
  weights, the learning-rate schedule and the data order at k, with a *fresh* optimizer. OpenLTH does the same:
  ``training/train.py`` ``train()`` builds a new optimizer and LR schedule on every call, steps the schedule
  ``start_step.iteration`` times and skips the data up to the start step, and ``lottery/runner.py``
  ``_train_level`` loads only the model saved at ``train_start_step`` (the rewind point); its optimizer state is
  never saved for it.
* the lottery's **reinit** control takes ``{"position", "data"}`` and gets its weights from a fresh
  initialisation: a ``weights`` file the study writes, or the config's model built with another ``train.seed``
  (OpenLTH's ``lottery/branch/randomly_reinitialize.py`` builds a new model and trains it from
  ``train_start_step``).
* a **plasticity cell** (GraNet §3) takes everything but the sparsifier from the dense run's checkpoint after
  epoch t: the pruned masks are the cell's own (from its config), and with ``sparsifier_start="branch"`` the
  sparsifier's step counter continues from the branch step, so a run-wide schedule (GraNet's cosine drop
  fraction) stands where the run is.
* a **replay** (:meth:`Trainer.checkpoint_at <sparsetrain.experiment.Trainer.checkpoint_at>`) takes everything.

The branch's identity (its source, relative to the run directory, the parts and the sparsifier start) is
recorded in the run directory's ``branch.json``; resuming the run with another branch is a one-line error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsetrain.atomic import write_text
from sparsetrain.checkpoint_io import CheckpointError

from .build import Experiment, attach_sparsifier
from .checkpoint import load_checkpoint
from .config import ConfigError
from .rundir import RunDir
from .run_state import EVERYTHING, PARTS, check_position, loop_state, read_run_checkpoint, restore_objects

__all__ = ["Branch", "SPARSIFIER_STARTS", "start_branch", "check_branch_record", "read_branch_record",
           "write_branch_record", "describe_branch"]

logger = logging.getLogger(__name__)

#: Where a branch's new sparsifier starts counting steps: at the branch step, or at 0.
SPARSIFIER_STARTS = ("branch", "zero")


@dataclass(frozen=True)
class Branch:
    """Where a run starts when it does not start at step 0 from its config's initialisation.

    Args:
        checkpoint: a run checkpoint (``checkpoint.pt`` or a kept ``checkpoints/step_<n>.pt`` of any run whose
            model has the same architecture).
        take: the parts of the checkpoint's state to take over, a subset of
            :data:`~sparsetrain.experiment.run_state.PARTS`; default all of them with a checkpoint (the run
            continues the source exactly), none without.
        weights: a ``state_dict`` file of the model (e.g. a fresh re-initialisation), loaded after the
            checkpoint's model part.
        sparsifier_start: with the position taken and a new sparsifier (``"sparsifier"`` not taken): ``"branch"``
            puts the sparsifier's step counter at the branch step, its schedules spanning the whole run;
            ``"zero"`` starts it at 0, its schedules spanning the steps left. Without the position the branch
            step is 0 and both are the same.

    Raises:
        ValueError: no source, an unknown part, parts without a checkpoint, a checkpoint taken for nothing,
            an unknown ``sparsifier_start``, ``"zero"`` with the sparsifier taken, or weights with the sparsifier
            taken (its masks would not be applied to them).
    """

    checkpoint: Path | str | None = None
    take: Iterable[str] | None = None
    weights: Path | str | None = None
    sparsifier_start: str = "branch"

    def __post_init__(self) -> None:
        for name in ("checkpoint", "weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name}={value!r} is not allowed: expected the path of a file")
            object.__setattr__(self, name, None if value is None else Path(value))
        if self.checkpoint is None and self.weights is None:
            raise ValueError("Branch needs a source: checkpoint= (a run checkpoint) and/or weights= (a state_dict)")
        take = self.take
        if take is None:
            take = EVERYTHING if self.checkpoint is not None else frozenset()
        elif isinstance(take, str) or not isinstance(take, Iterable):
            raise ValueError(f"take={take!r} is not allowed: expected a set of parts out of {', '.join(PARTS)}")
        take = frozenset(take)
        unknown = sorted(take - EVERYTHING)
        if unknown:
            raise ValueError(f"take={sorted(take)!r} is not allowed: no part {unknown[0]!r}; parts: {', '.join(PARTS)}")
        if take and self.checkpoint is None:
            raise ValueError(f"take={sorted(take)!r} is not allowed without a checkpoint to take them from")
        if not take and self.checkpoint is not None:
            raise ValueError(f"take=[] is not allowed with checkpoint={str(self.checkpoint)!r}: take at least one "
                             f"part of {', '.join(PARTS)}")
        object.__setattr__(self, "take", take)
        if self.sparsifier_start not in SPARSIFIER_STARTS:
            raise ValueError(f"sparsifier_start={self.sparsifier_start!r} is not allowed; choose one of "
                             f"{', '.join(map(repr, SPARSIFIER_STARTS))}")
        if "sparsifier" in take and self.sparsifier_start == "zero":
            raise ValueError("sparsifier_start='zero' is not allowed with 'sparsifier' in take: the taken sparsifier "
                             "continues its own step counter")
        if "sparsifier" in take and self.weights is not None:
            raise ValueError("weights= is not allowed with 'sparsifier' in take: the taken masks would not be applied "
                             "to the given weights; leave 'sparsifier' out of take")

    @property
    def parts(self) -> frozenset[str]:
        """The parts taken from the checkpoint (``take`` after defaults)."""
        assert isinstance(self.take, frozenset)
        return self.take

    def identity(self, run_dir: str | Path) -> dict[str, Any]:
        """What ``branch.json`` records: the sources (relative to ``run_dir``), the parts, the sparsifier start."""
        return {"checkpoint": _relative(self.checkpoint, run_dir), "weights": _relative(self.weights, run_dir),
                "take": sorted(self.parts), "sparsifier_start": self.sparsifier_start}


def _relative(path: Path | str | None, run_dir: str | Path) -> str | None:
    """``path`` relative to ``run_dir`` (so a study tree can move), or absolute on another drive."""
    if path is None:
        return None
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))
    except ValueError:
        return os.path.abspath(path)


def describe_branch(identity: dict[str, Any]) -> str:
    """One line for messages, e.g. ``checkpoint ../dense/checkpoints/step_40.pt (model, position)``."""
    words = []
    if identity.get("checkpoint") is not None:
        words.append(f"checkpoint {identity['checkpoint']} ({', '.join(identity.get('take', []))})")
    if identity.get("weights") is not None:
        words.append(f"weights {identity['weights']}")
    words.append(f"sparsifier from {'the branch step' if identity.get('sparsifier_start') == 'branch' else 'step 0'}")
    return ", ".join(words)


def read_branch_record(run: RunDir) -> dict[str, Any] | None:
    """``branch.json`` of a run directory (None for a run that is not a branch)."""
    if not run.branch_file.exists():
        return None
    return json.loads(run.branch_file.read_text())


def write_branch_record(run: RunDir, record: dict[str, Any]) -> None:
    """Write ``branch.json`` atomically."""
    write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", run.branch_file)


def check_branch_record(run: RunDir, branch: Branch | None) -> dict[str, Any] | None:
    """Check that ``run`` may be (re)started as ``branch`` (None: an ordinary run); return its record.

    Raises:
        ConfigError: the directory holds a branch of another source, a branch where an ordinary run is
            asked for, or an ordinary run where a branch is; the message names both.
    """
    record = read_branch_record(run)
    theirs = record["source"] if record is not None else None
    if branch is None:
        if theirs is not None:
            raise ConfigError(f"{run.path} holds a branch of {describe_branch(theirs)}, and this run is not a "
                              "branch: use another run directory")
        return None
    mine = branch.identity(run.path)
    if theirs is None:
        if run.config_file.exists():
            raise ConfigError(f"{run.path} holds a run that is not a branch, and this run is a branch of "
                              f"{describe_branch(mine)}: use another run directory")
        return None
    if theirs != mine:
        raise ConfigError(f"{run.path} holds a branch of {describe_branch(theirs)}, not of {describe_branch(mine)}: "
                          "use another run directory")
    return record


def _load_weights(exp: Experiment, path: Path) -> None:
    try:
        weights = load_checkpoint(path)
    except FileNotFoundError:
        raise ConfigError(f"branch weights={str(path)!r}: no such file") from None
    try:
        exp.model.load_state_dict(weights)
    except (RuntimeError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"branch weights {str(path)!r} do not fit the model ({detail})") from None


def start_branch(exp: Experiment, branch: Branch) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Build the branch's starting point into ``exp`` (built with ``sparsifier=False``) and attach its sparsifier.

    Order: with the sparsifier taken, it is attached first and the checkpoint's parts loaded over it (its masks
    and the weights agree already); otherwise the parts and the weights are loaded, then the config's sparsifier
    is attached (its masks applied to them) and, for ``sparsifier_start="branch"``, its step counter set to the
    branch step.

    Args:
        exp: the branch run's experiment.
        branch: the branch.

    Returns:
        ``(loop, start)``: the checkpoint's loop entries (:func:`~.run_state.loop_state`; None without a
        checkpoint) for the trainer, and ``{"step": the branch step, "sparsifier_total_steps": the steps the
        sparsifier's schedules span}`` for ``branch.json`` (a resume builds its sparsifier with them again).

    Raises:
        ConfigError, CheckpointError: the source is missing, damaged, or does not fit this run.
    """
    state = None
    if branch.checkpoint is not None:
        try:
            state = read_run_checkpoint(branch.checkpoint)
        except FileNotFoundError:
            raise ConfigError(f"branch checkpoint={str(branch.checkpoint)!r}: no such file") from None
    parts = branch.parts
    if state is not None and parts & {"position", "data"}:
        check_position(state, exp, branch.checkpoint)
    step = int(state["step"]) if state is not None and "position" in parts else 0
    if state is not None and "sparsifier" in parts and state.get("sparsifier") is not None:
        total = int(state["sparsifier"].get("config", {}).get("total_steps", exp.total_steps))
    elif branch.sparsifier_start == "zero":
        total = max(exp.total_steps - step, 1)
    else:
        total = exp.total_steps
    if "sparsifier" in parts:
        attach_sparsifier(exp, total)
    if state is not None:
        restore_objects(exp, state, parts, branch.checkpoint)
    if branch.weights is not None:
        _load_weights(exp, branch.weights)
    if "sparsifier" not in parts:
        attach_sparsifier(exp, total)
        if branch.sparsifier_start == "branch" and step and exp.sparsifier is not None:
            _set_sparsifier_step(exp, step)
    logger.info("branch at step %d from %s", step, describe_branch(branch.identity(".")))
    record = {"step": step, "sparsifier_total_steps": total if exp.sparsifier is not None else None}
    return (loop_state(state) if state is not None else None), record


def _set_sparsifier_step(exp: Experiment, step: int) -> None:
    """Put a freshly attached sparsifier's step counter at ``step`` (a round trip through its state dict)."""
    sparsifier = exp.sparsifier
    assert sparsifier is not None
    state = sparsifier.state_dict()
    state["step"] = step
    sparsifier.load_state_dict(state)
