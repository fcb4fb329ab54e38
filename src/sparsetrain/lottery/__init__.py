"""Lottery tickets: iterative magnitude pruning with rewinding and its controls, and lottery jackpots.

* :func:`run_lottery` — IMP rounds on disk (Frankle & Carbin 2019; Frankle et al. 2020), resumable.
* :func:`make_train_fn` — a default training loop for it; :func:`experiment_lottery` — the model and a train
  function from the harness's ``ExperimentConfig`` (what ``sparsetrain lottery`` runs).
* :func:`lottery_curve` / :func:`curve_table` / :func:`plot_curve` — accuracy vs weights remaining.
* :func:`find_jackpot` — a mask found in a trained model without weight updates (Chen et al. 2021).
"""

from .config import CONTROLS, SCOPES, LotteryConfig
from .controls import random_mask_like
from .experiment import experiment_lottery
from .imp import layer_rates, level_count, level_counts, next_count, prune_round
from .jackpot import find_jackpot, mask_iou, restrict_changes
from .results import curve_table, lottery_curve, plot_curve
from .rewind import reinitialize, rewind, snapshot
from .runner import level_dir, run_lottery
from .train import TrainFn, evaluate, make_train_fn

__all__ = [
    "LotteryConfig", "SCOPES", "CONTROLS", "run_lottery", "level_dir", "make_train_fn", "TrainFn", "evaluate",
    "lottery_curve", "curve_table", "plot_curve", "prune_round", "next_count", "level_count", "level_counts",
    "layer_rates", "rewind", "snapshot", "reinitialize", "random_mask_like", "find_jackpot", "restrict_changes",
    "mask_iou", "experiment_lottery",
]
