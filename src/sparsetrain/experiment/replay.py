"""Replaying a run to a step it has passed, to keep its full checkpoint there (``Trainer.checkpoint_at``).

A run keeps full checkpoints only at the steps it was asked for. When a study asks later for the state at a step
the run has already passed, the run is trained again in ``<run>/replay/`` from its nearest checkpoint at or before
that step (a kept one, or ``checkpoint(.prev).pt``: a full restore continues bit-identically on CPU), or from its
own start (step 0, or its branch) when it has none. The replay's checkpoint at the step is moved to
``checkpoints/step_<n>.pt`` and the replay directory removed; a replay cut short is simply started again.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from sparsetrain.atomic import replace_durably

from .branch import Branch
from .rundir import RunDir
from .run_state import nearest_checkpoint

__all__ = ["REPLAY_DIR", "replay_to_step"]

logger = logging.getLogger(__name__)

#: The replay's run directory, inside the run it replays.
REPLAY_DIR = "replay"


def replay_to_step(run: RunDir, target: int, branch: Branch | None,
                   train_to: Callable[[Path, Branch | None], Path]) -> Path:
    """Replay ``run`` up to step ``target`` and keep its checkpoint there.

    Args:
        run: the run directory, past ``target``.
        target: the step whose checkpoint is wanted.
        branch: the run's own branch (where a replay without an earlier checkpoint starts), or None.
        train_to: trains the run's config in the given directory from the given branch to ``target``, keeping its
            checkpoint there, and returns that checkpoint's file (the trainer's part).

    Returns:
        ``run``'s kept checkpoint file at ``target``.
    """
    nearest = nearest_checkpoint(run, target)
    source = Branch(checkpoint=nearest[1]) if nearest is not None else branch
    where = run.path / REPLAY_DIR
    shutil.rmtree(where, ignore_errors=True)  # a replay cut short is started again (it is short)
    logger.info("%s: replaying from step %d to keep the checkpoint at step %d", run.name,
                nearest[0] if nearest is not None else 0, target)
    replayed = train_to(where, source)
    kept = run.kept_checkpoint(target)
    kept.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(replayed, kept)
    shutil.rmtree(where, ignore_errors=True)
    return kept
