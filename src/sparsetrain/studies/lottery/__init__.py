"""The lottery study on disk: iterative magnitude pruning with rewinding and its controls, every stage a Trainer run.

* :func:`run_lottery` — IMP levels and controls as :class:`~sparsetrain.experiment.Trainer` runs of one recipe
  (Frankle & Carbin 2019; Frankle et al. 2020), resumable mid-level; :func:`lottery_dir` names the run of
  ``sparsetrain lottery``.
* :func:`lottery_curve` / :func:`curve_table` / :func:`plot_curve` — a run's metric against weights remaining.
* :func:`lottery_rows` and friends — the lottery runs under a runs directory, for ``sparsetrain report`` / ``plot``.

The pruning itself (counts, magnitude rounds, rewinding, the controls' masks and weights) is
:mod:`sparsetrain.lottery`'s.
"""

from .config import CONTROLS, SCOPES, LotteryConfig
from .report import (
    LOTTERY_COLUMNS,
    find_lottery_runs,
    format_lottery_rows,
    lottery_rows,
    lottery_run_rows,
    plot_lottery_runs,
)
from .results import curve_table, lottery_curve, plot_curve
from .runner import RUN, level_dir, lottery_dir, lottery_identity, run_lottery

__all__ = [
    "LotteryConfig", "SCOPES", "CONTROLS", "run_lottery", "level_dir", "lottery_dir", "lottery_identity", "RUN",
    "lottery_curve", "curve_table", "plot_curve", "LOTTERY_COLUMNS", "find_lottery_runs", "format_lottery_rows",
    "lottery_rows", "lottery_run_rows", "plot_lottery_runs",
]
