"""Studies: experiments made of Trainer runs, on disk, resumable, and their reports. The top layer of the library.

Every study trains through :class:`~sparsetrain.experiment.Trainer` (its branches start a run from another run's
checkpoint), and reads its results with :mod:`sparsetrain.analysis`:

* :mod:`.lottery` — iterative magnitude pruning with rewinding and its controls (:func:`run_lottery`, Frankle &
  Carbin 2019; Frankle et al. 2020), the curves and the report rows of lottery runs.
* :mod:`.plasticity` — pruning plasticity (:func:`run_plasticity`, :class:`PlasticityStudy`; GraNet §3).
* :mod:`.jackpot` — a lottery jackpot searched in a finished run (:func:`run_jackpot`, Chen et al. 2021).
* :mod:`.reproduce` / :mod:`.reproduce_report` — the reproduction benchmark (``sparsetrain reproduce``).
* :mod:`.html_report` — one self-contained HTML page for runs, lottery runs and study reports.

Layers (``tests/test_layers.py``): studies may import anything below them (experiment, analysis, the core); nothing
below imports a study.
"""

from .html_report import render_html_report, write_html_report
from .jackpot import jackpot_dir, run_jackpot
from .lottery import (
    CONTROLS,
    LotteryConfig,
    curve_table,
    level_dir,
    lottery_curve,
    lottery_dir,
    plot_curve,
    run_lottery,
)
from .plasticity import (
    GRANET_UPDATE_FRACTION,
    PlasticityCell,
    PlasticityStudy,
    default_prune_epochs,
    late_decay_config,
    lr_decay_epochs,
    plasticity_cells,
    run_plasticity,
)

__all__ = [
    "LotteryConfig", "CONTROLS", "run_lottery", "lottery_dir", "level_dir", "lottery_curve", "curve_table",
    "plot_curve", "PlasticityCell", "PlasticityStudy", "plasticity_cells", "lr_decay_epochs", "default_prune_epochs",
    "GRANET_UPDATE_FRACTION", "late_decay_config", "run_plasticity", "run_jackpot", "jackpot_dir", "render_html_report", "write_html_report",
]
