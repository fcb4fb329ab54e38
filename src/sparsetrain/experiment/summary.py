"""The end of a run: its final masks (``masks.pt``, checked equal on every rank), plots and summary.

``summary.json`` is written last: it marks the run finished, and a finished run is never retrained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from sparsetrain.analysis.flops import dense_gradient_steps, run_flops
from sparsetrain.checkpoint_io import save_checkpoint
from sparsetrain.distributed import assert_masks_identical, masks_checksum
from sparsetrain.itop import itop_by_layer

from .branch import read_branch_record
from .build import Experiment
from .config import DENSE, ExperimentConfig
from .metrics import best_by, best_epoch, write_summary
from .rundir import RunDir, dense_reference
from .trace import DensityTrace, run_masks, run_report

__all__ = ["finish_run", "run_summary", "write_run_outputs"]

logger = logging.getLogger(__name__)


def run_summary(exp: Experiment, run: RunDir, *, masks: Mapping[str, Tensor], checksum: str,
                records: Sequence[Mapping[str, Any]], trace: DensityTrace,
                density_history: Sequence[tuple[int, Mapping[str, float]]], wall_time: float, resumed: bool,
                dense: dict[str, Any] | None, branch: dict[str, Any] | None) -> dict[str, Any]:
    """The summary dict of a finished run.

    Args:
        exp: the run's experiment (after training).
        run: its directory.
        masks: the final masks; checksum: theirs.
        records: the per-epoch metrics.
        trace: the density trace; density_history: its history for training FLOPs (from step 0).
        wall_time: training seconds over every session; resumed: whether a session resumed a checkpoint.
        dense: :func:`~sparsetrain.experiment.rundir.dense_reference`; branch: the run's ``branch.json`` record (None for an ordinary run).

    Returns:
        The summary (see the docs' "Run directory" section for the keys).
    """
    config = exp.config
    last = records[-1] if records else {}
    best = best_epoch(records) or {}
    report = run_report(exp)
    flops = run_flops(exp.model, exp.bundle.input_shape, token_inputs=exp.bundle.vocab_size is not None,
                      masks=masks, density_history=density_history, total_steps=exp.total_steps,
                      dense_grad_steps=dense_gradient_steps(config.sparse.method, trace.update_steps(),
                                                            exp.total_steps),
                      batch_size=config.train.batch_size)
    return {
        "run": run.name,
        "method": config.sparse.method,
        "data": config.data.name,
        "model": config.model.name,
        "seed": config.train.seed,
        "config_hash": config.config_hash(),
        "recipe": config.dense_baseline().config_hash(),
        "target_sparsity": 0.0 if config.sparse.method == DENSE else config.sparse.target_sparsity(),
        "pattern": None if config.sparse.method == DENSE else config.sparse.pattern,
        "sparsity": report.sparsity,
        "mask_sparsity": trace.last_sparsity,
        "final_acc": last.get("test_acc"),
        "final_val_acc": last.get("val_acc"),
        "best_acc": best.get("test_acc"),
        "best_val_acc": best.get("val_acc"),
        "best_epoch": best.get("epoch"),
        "best_by": best_by(records),
        "max_test_acc": max((r["test_acc"] for r in records if r.get("test_acc") is not None), default=None),
        "final_train_loss": last.get("train_loss"),
        "itop_rate": exp.sparsifier.itop_rate() if exp.sparsifier is not None else None,
        "itop_layers": itop_by_layer(exp.sparsifier.ever_active if exp.sparsifier is not None else None),
        "epochs": config.train.epochs,
        "total_steps": exp.total_steps,
        "wall_time": wall_time,
        "device": str(exp.device),
        "resumed": resumed,
        "world_size": exp.parallel.world_size,
        "masks_checksum": checksum,
        "flops": flops,
        "layers": report.to_dict(),
        "density_trace": trace.summary(),
        "dense": dense,
        "branch": branch,
    }


def write_run_outputs(run: RunDir, summary: dict[str, Any], records: Sequence[Mapping[str, Any]], *,
                      plots: bool) -> None:
    """Write the run's plots (if asked; a plotting failure is a warning) and then ``summary.json``."""
    if plots:
        try:
            from .plots import plot_run

            plot_run(run, summary=summary, records=list(records))
        except Exception as exc:  # a plotting failure must not lose the run
            logger.warning("plots not written: %s: %s", type(exc).__name__, exc)
    write_summary(run.summary_file, summary)
    logger.info("%s finished: final test acc %s, sparsity %.4f", run.name, summary["final_acc"], summary["sparsity"])


def finish_run(exp: Experiment, run: RunDir, config: ExperimentConfig, *, runs_dir: Path | None,
               trace: DensityTrace, elapsed: Callable[[], float], resumed: bool, branched: bool,
               plots: bool) -> dict[str, Any]:
    """Finish a trained run: ``masks.pt``, the plots and ``summary.json`` (rank 0 writes; a collective call).

    Args:
        exp: the run's experiment (after its last step).
        run: its directory; config: its config.
        runs_dir: where its dense baseline is looked up (None: not looked up; nor for a dense run).
        trace: its density trace.
        elapsed: the training wall time over every session, read when the summary is made.
        resumed: whether a session resumed a checkpoint; branched: whether the run is a branch (``branch.json``).
        plots: write the PNG plots.

    Returns:
        The summary dict.

    Raises:
        MaskDivergenceError: the ranks of a data-parallel run hold different masks.
    """
    par = exp.parallel
    masks = run_masks(exp)
    # The final cross-rank check; each rank logs its own checksum (equal to that of masks.pt).
    checksum = assert_masks_identical(masks, group=par.control) if par.distributed else masks_checksum(masks)
    logger.info("%s: rank %d of %d: final masks checksum %s", run.name, par.rank, par.world_size, checksum)
    if par.is_main:
        save_checkpoint(masks, run.masks_file)
    records = run.read_metrics()
    dense = dense_reference(runs_dir, config) if runs_dir is not None and config.sparse.method != DENSE else None
    summary = run_summary(exp, run, masks=masks, checksum=checksum, records=records, trace=trace,
                          density_history=trace.history(), wall_time=elapsed(), resumed=resumed, dense=dense,
                          branch=read_branch_record(run) if branched else None)
    if par.is_main:
        write_run_outputs(run, summary, records, plots=plots)
    return summary
