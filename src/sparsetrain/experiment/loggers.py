"""Experiment trackers a run reports to: one small interface, TensorBoard and MLflow behind it.

:class:`RunLogger` is what a run needs from a tracker: scalars at an optimizer step, a histogram, the config as
hyperparameters, flush and close. Two backends:

* :class:`TensorBoardLogger`: event files in a directory (``tensorboard --logdir runs`` shows every run), written
  by PyTorch's ``SummaryWriter``; needs the ``tensorboard`` package (``pip install 'sparsetrain[tensorboard]'``).
* :class:`MLflowLogger`: an MLflow run in a local SQLite store (``sqlite:///runs/mlflow.db``; ``mlflow ui
  --backend-store-uri sqlite:///runs/mlflow.db`` shows it); needs ``pip install 'sparsetrain[mlflow]'``
  (``mlflow-skinny`` with the SQL store's packages). MLflow's plain-file store (``./mlruns``) is in maintenance
  mode since MLflow 3 and refuses to open unless ``MLFLOW_ALLOW_FILE_STORE=true``; a ``file:`` URI still works
  where the user has set that. MLflow has no histogram type: a histogram is logged as summary metrics
  (``<tag>/min``, ``/p25``, ``/median``, ``/p75``, ``/max``, ``/mean``).

What is logged under which name is :mod:`.tracking`'s business; :func:`open_logger` opens a backend for a run
directory, continuing the same tracker run when the run resumes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import Tensor

from sparsetrain.atomic import write_text

from .rundir import RunDir
from .tracking import RunTracker, histogram_scalars

__all__ = ["LOGGERS", "RunLogger", "TensorBoardLogger", "MLflowLogger", "open_logger", "open_tracker",
           "tracking_session", "check_installed", "discard_logs"]

logger = logging.getLogger(__name__)

#: The backends :func:`open_logger` knows.
LOGGERS = ("tensorboard", "mlflow")

Scalar = int | float | str | bool


class RunLogger(ABC):
    """Where one run's figures go. Steps are optimizer steps; every method may be called any number of times."""

    @abstractmethod
    def log_scalars(self, values: Mapping[str, float | None], step: int) -> None:
        """Log ``{tag: value}`` at ``step``; None values are skipped."""

    @abstractmethod
    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of ``values`` (any shape, flattened) under ``tag`` at ``step``."""

    @abstractmethod
    def log_config(self, params: Mapping[str, Scalar]) -> None:
        """Log flat hyperparameters (``{"optim.lr": 0.1, ...}``, see :func:`.tracking.hyperparameters`)."""

    def flush(self) -> None:
        """Write out whatever is buffered."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the tracker; later calls are errors."""

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_TENSORBOARD_DIR = "tensorboard"
_MLFLOW_RUN_ID = "mlflow_run_id"
#: The packages each backend needs (the extra of the same name installs them).
_PACKAGES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy")}


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"{extra} logging needs the {package!r} package: pip install 'sparsetrain[{extra}]'")


def check_installed(kind: str) -> None:
    """Check, without importing it, that the ``kind`` backend's packages are installed.

    Raises:
        ValueError: an unknown ``kind``.
        ImportError: a package is missing; the message names the extra to install.
    """
    if kind not in LOGGERS:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(map(repr, LOGGERS))}")
    for package in _PACKAGES[kind]:
        if importlib.util.find_spec(package) is None:
            raise _missing(package, kind)


class TensorBoardLogger(RunLogger):
    """TensorBoard event files in ``log_dir`` (PyTorch's ``SummaryWriter``, which writes on a background thread).

    Args:
        log_dir: the directory of the event files.
        purge_step: on resume, the first step that will be logged again; TensorBoard then hides what an earlier
            session logged at this step and later (the steps replayed after the checkpoint). None for a fresh run.

    Raises:
        ImportError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def log_scalars(self, values: Mapping[str, float | None], step: int) -> None:
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, value, step)

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        if values.numel():
            self._writer.add_histogram(tag, values.detach().float().cpu(), step)

    def log_config(self, params: Mapping[str, Scalar]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The hparams plugin's own records (written into this run's file, not a sub-run as add_hparams would).
        for summary in hparams(dict(params), {}):
            self._writer.file_writer.add_summary(summary)
        self._writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MLflowLogger(RunLogger):
    """One MLflow run, written through ``MlflowClient`` (no global active run is touched).

    Metrics are buffered and written in batches (an SQLite write costs milliseconds, more than a small model's
    optimizer step): every ``flush_every`` values, and on :meth:`flush`, :meth:`log_config` and :meth:`close`.

    Args:
        tracking_uri: the store, e.g. ``sqlite:///runs/mlflow.db`` (MLflow's local database store).
        experiment: the MLflow experiment (created if missing; its artifacts beside an SQLite store).
        run_name: the MLflow run's name (e.g. the run directory's ``<method>-<hash>/seed_<n>``).
        run_id: continue this MLflow run (a resumed training run) instead of starting one.
        flush_every: buffered metric values that trigger a write.

    Raises:
        ImportError: MLflow is not installed.
        ValueError: ``flush_every`` is not a positive int.
    """

    def __init__(self, tracking_uri: str, *, experiment: str = "sparsetrain", run_name: str | None = None,
                 run_id: str | None = None, flush_every: int = 1000) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every={flush_every!r} is not allowed: it must be an int >= 1")
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        self._metric, self._param = Metric, Param
        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        if run_id is None:
            found = self._client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                experiment_id = self._client.create_experiment(experiment, artifact_location=_artifacts(tracking_uri))
            run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.flush_every = flush_every
        self._pending: list[Any] = []

    def log_scalars(self, values: Mapping[str, float | None], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending += [self._metric(tag, float(value), now, int(step)) for tag, value in values.items()
                          if value is not None]
        if len(self._pending) >= self.flush_every:
            self.flush()

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        self.log_scalars(histogram_scalars(tag, values), step)

    def log_config(self, params: Mapping[str, Scalar]) -> None:
        """Log the parameters this MLflow run does not hold yet. MLflow never changes a logged parameter: a
        resumed run whose unhashed fields changed (device, threads) keeps the first values, with a warning."""
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self.flush()
        logged = self._client.get_run(self.run_id).data.params
        values = {key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in params.items()}
        changed = sorted(key for key, value in values.items() if key in logged and logged[key] != value)
        if changed:
            logger.warning("MLflow run %s keeps its first values of %s (MLflow parameters cannot change)",
                           self.run_id, ", ".join(changed))
        items = [self._param(key, value) for key, value in values.items() if key not in logged]
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    def flush(self) -> None:
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=pending[start:start + MAX_METRICS_PER_BATCH])

    def close(self) -> None:
        """Flush and mark the MLflow run finished (a resumed run reopens it with ``run_id``)."""
        self.flush()
        self._client.set_terminated(self.run_id)


def _artifacts(tracking_uri: str) -> str | None:
    """Artifacts beside an SQLite store (MLflow would put them under the working directory)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return (Path(tracking_uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()
    return None


def open_logger(kind: str, run: RunDir, *, resume_step: int | None = None,
                tracking_uri: str | None = None) -> RunLogger:
    """Open the ``kind`` backend for a run directory.

    TensorBoard writes into ``<run>/tensorboard/``. MLflow logs to ``tracking_uri`` (default: one SQLite store per
    runs directory, ``<runs_dir>/mlflow.db``, so the MLflow UI compares the runs; experiment "sparsetrain", MLflow
    run named after the run directory) and keeps the MLflow run id in ``<run>/mlflow_run_id``, so a resumed run
    continues the same MLflow run.

    Args:
        kind: one of :data:`LOGGERS`.
        run: the run directory (created if missing).
        resume_step: the checkpoint's step when the run resumes (steps after it are logged again), else None.
        tracking_uri: MLflow only: the store.

    Returns:
        The logger.

    Raises:
        ValueError: an unknown ``kind``.
        ImportError: the backend's package is not installed.
    """
    check_installed(kind)
    run.path.mkdir(parents=True, exist_ok=True)
    if kind == "tensorboard":
        return TensorBoardLogger(run.path / _TENSORBOARD_DIR,
                                 purge_step=None if resume_step is None else resume_step + 1)
    uri = tracking_uri or mlflow_store(run.path.parent.parent)
    id_file = run.path / _MLFLOW_RUN_ID
    run_id = id_file.read_text().strip() if resume_step is not None and id_file.exists() else None
    mlflow_logger = MLflowLogger(uri, run_name=run.name, run_id=run_id or None)
    write_text(mlflow_logger.run_id + "\n", id_file)
    return mlflow_logger


def mlflow_store(runs_dir: str | Path) -> str:
    """The MLflow tracking URI of a runs directory: its SQLite store ``<runs_dir>/mlflow.db``."""
    return f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}"


def open_tracker(kinds: Sequence[str], run: RunDir, *, resume_step: int | None = None,
                 runs_dir: str | Path | None = None) -> RunTracker:
    """A :class:`~.tracking.RunTracker` over one logger per kind (see :func:`open_logger`); a failure to open one
    closes those already open.

    Args:
        kinds: backends of :data:`LOGGERS` (none: a tracker that logs nothing).
        run: the run directory.
        resume_step: the checkpoint's step when the run resumes, else None.
        runs_dir: where the MLflow store lives (default: the run directory's grandparent).
    """
    loggers: list[RunLogger] = []
    try:
        for kind in kinds:
            loggers.append(open_logger(kind, run, resume_step=resume_step,
                                       tracking_uri=mlflow_store(runs_dir) if runs_dir is not None else None))
    except BaseException:
        RunTracker(loggers).close()
        raise
    return RunTracker(loggers)


def discard_logs(run: RunDir) -> None:
    """Forget what earlier sessions of ``run`` logged (a restart): its TensorBoard event files, and its MLflow run
    id, so that the restarted run gets a new MLflow run (the old one stays in the store)."""
    shutil.rmtree(run.path / _TENSORBOARD_DIR, ignore_errors=True)
    (run.path / _MLFLOW_RUN_ID).unlink(missing_ok=True)


@contextlib.contextmanager
def tracking_session(kinds: Sequence[str], run: RunDir, config: Mapping[str, Any], *, resume_step: int | None = None,
                     runs_dir: str | Path | None = None) -> Iterator[RunTracker]:
    """The tracker of :func:`open_tracker`, open for one training session with ``config`` logged as its
    hyperparameters, and closed however the session ends."""
    tracker = open_tracker(kinds, run, resume_step=resume_step, runs_dir=runs_dir)
    try:
        tracker.log_config(config)
        yield tracker
    finally:
        tracker.close()
