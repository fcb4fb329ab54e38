"""TensorBoard and MLflow loggers, read back with those packages' own readers; the mapping of run figures to tags."""

import importlib.util
import math
import sys

import pytest
import torch

from sparsetrain.experiment.config import ExperimentConfig
from sparsetrain.experiment.loggers import MLflowLogger, TensorBoardLogger, open_logger
from sparsetrain.experiment.rundir import RunDir
from sparsetrain.experiment.tracking import (
    active_magnitudes,
    epoch_scalars,
    hyperparameters,
    step_scalars,
    topology_scalars,
)
from sparsetrain.topology import topology_event

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard extra is not installed (pip install "
                                              "'sparsetrain[tensorboard]')")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None or importlib.util.find_spec(
    "sqlalchemy") is None, reason="the mlflow extra is not installed (pip install 'sparsetrain[mlflow]')")


def _figures():
    """A topology event, weights and masks of two tensors, and a config, as a run would log them."""
    torch.manual_seed(0)
    params = {"fc1.weight": torch.randn(8, 6), "fc2.weight": torch.randn(4, 8)}
    before = {n: torch.rand(p.shape) < 0.5 for n, p in params.items()}
    after = {n: torch.rand(p.shape) < 0.4 for n, p in params.items()}
    ever = {n: before[n] | after[n] for n in params}
    grads = {n: torch.randn(p.shape) for n, p in params.items()}
    event = topology_event(100, before, after, ever, grads=grads, drop_fraction=0.3, target_sparsity=0.6)
    config = ExperimentConfig().to_dict()
    return params, after, event, config


def test_topology_scalars_name_every_figure():
    params, masks, event, _ = _figures()
    values = topology_scalars(event)
    layer = event.layers["fc2.weight"]
    assert values["density/fc2.weight"] == layer.density == int(masks["fc2.weight"].sum()) / 32
    assert values["churn/fc2.weight"] == layer.churn and values["grad_share/fc2.weight"] == layer.grad_share
    assert values["topology/density"] == event.density and values["topology/itop"] == event.itop
    assert values["topology/drop_fraction"] == 0.3 and values["topology/target_sparsity"] == 0.6
    per_layer = topology_scalars(topology_event(1, masks, masks, masks, target_sparsity={"fc1.weight": 0.5,
                                                                                         "fc2.weight": 0.7}))
    assert per_layer["target_sparsity/fc2.weight"] == 0.7 and "topology/target_sparsity" not in per_layer
    assert per_layer["topology/drop_fraction"] is None
    magnitudes = active_magnitudes(params, masks)
    assert magnitudes["weights/fc1.weight"].numel() == int(masks["fc1.weight"].sum())
    assert (magnitudes["weights/fc1.weight"] >= 0).all()


def test_hyperparameters_flatten_the_config():
    flat = hyperparameters(ExperimentConfig().to_dict())
    assert flat["optim.lr"] == 0.05 and flat["sparse.method"] == "granet" and flat["optim.nesterov"] is True
    assert flat["optim.betas"] == "[0.9, 0.999]" and flat["optim.grad_clip"] == "null"
    assert flat["sparse.options"] == "{}"
    assert hyperparameters({"a": {"b": {"c": 1}}}) == {"a.b.c": 1}


def _log_run(run_logger, params, masks, event, config, steps=range(1, 11), shift=0.0):
    run_logger.log_config(hyperparameters(config))
    for step in steps:
        run_logger.log_scalars(step_scalars(1.0 / step + shift, 0.1, 0.6), step)
    run_logger.log_scalars(epoch_scalars({"step": 10, "train_loss": 0.5, "test_acc": 0.75}), 10)
    run_logger.log_scalars(topology_scalars(event), event.step)
    for tag, values in active_magnitudes(params, masks).items():
        run_logger.log_histogram(tag, values, event.step)


@needs_tensorboard
def test_tensorboard_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    params, masks, event, config = _figures()
    run = RunDir(tmp_path / "granet-abc" / "seed_0")
    with open_logger("tensorboard", run) as run_logger:
        assert isinstance(run_logger, TensorBoardLogger)
        _log_run(run_logger, params, masks, event, config)

    acc = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [s.step for s in losses] == list(range(1, 11))
    assert [s.value for s in losses] == pytest.approx([1.0 / s for s in range(1, 11)])
    assert acc.Scalars("epoch/test_acc")[0].value == pytest.approx(0.75)
    assert "epoch/val_acc" not in acc.Tags()["scalars"]  # None values are not logged
    churn = acc.Scalars("churn/fc1.weight")[0]
    assert (churn.step, churn.value) == (100, pytest.approx(event.layers["fc1.weight"].churn))
    histogram = acc.Histograms("weights/fc2.weight")[0]
    active = params["fc2.weight"][masks["fc2.weight"]].abs()
    assert histogram.step == 100 and histogram.histogram_value.num == active.numel()
    assert histogram.histogram_value.min == pytest.approx(float(active.min()))
    assert histogram.histogram_value.max == pytest.approx(float(active.max()))
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(0.05)
    assert hparams["sparse.method"].string_value == "granet"


@needs_tensorboard
def test_tensorboard_resume_hides_replayed_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    params, masks, event, config = _figures()
    run = RunDir(tmp_path / "granet-abc" / "seed_0")
    with open_logger("tensorboard", run) as first:  # the first session got to step 10; its checkpoint is at 5
        _log_run(first, params, masks, event, config)
    with open_logger("tensorboard", run, resume_step=5) as second:  # steps 6..8 replayed, then a crash
        for step in range(6, 9):
            second.log_scalars(step_scalars(100.0 + step, 0.1, 0.6), step)
    acc = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = {s.step: s.value for s in acc.Scalars("train/loss")}
    assert sorted(losses) == list(range(1, 9))
    assert losses[5] == pytest.approx(0.2) and losses[7] == pytest.approx(107.0)


@needs_mlflow
def test_mlflow_run_reads_back(tmp_path):
    from mlflow.tracking import MlflowClient

    params, masks, event, config = _figures()
    run = RunDir(tmp_path / "runs" / "granet-abc" / "seed_0")
    run_logger = open_logger("mlflow", run)
    assert isinstance(run_logger, MLflowLogger)
    _log_run(run_logger, params, masks, event, config)
    run_logger.close()

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    record = client.get_run(run_logger.run_id)
    assert record.info.run_name == "granet-abc/seed_0" and record.info.status == "FINISHED"
    assert record.data.params["optim.lr"] == "0.05" and record.data.params["sparse.method"] == "granet"
    history = client.get_metric_history(run_logger.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, pytest.approx(1.0 / s)) for s in range(1, 11)]
    density = client.get_metric_history(run_logger.run_id, "density/fc1.weight")[0]
    assert (density.step, density.value) == (100, pytest.approx(event.layers["fc1.weight"].density))
    active = params["fc2.weight"][masks["fc2.weight"]].abs().double()
    for name, q in (("min", 0.0), ("median", 0.5), ("max", 1.0)):
        value = client.get_metric_history(run_logger.run_id, f"weights/fc2.weight/{name}")[0].value
        assert value == pytest.approx(float(torch.quantile(active, q)))

    resumed = open_logger("mlflow", run, resume_step=5)  # the same MLflow run continues
    assert resumed.run_id == run_logger.run_id
    resumed.log_scalars({"train/loss": 9.0}, 11)
    resumed.close()
    steps = [m.step for m in client.get_metric_history(run_logger.run_id, "train/loss")]
    assert max(steps) == 11 and len(client.search_runs([record.info.experiment_id])) == 1
    fresh = open_logger("mlflow", RunDir(tmp_path / "runs" / "rigl-def" / "seed_0"))
    assert fresh.run_id != run_logger.run_id
    fresh.close()


@needs_mlflow
def test_mlflow_buffers_until_flush(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_logger = MLflowLogger(uri, run_name="r", flush_every=5)
    client = MlflowClient(tracking_uri=uri)
    run_logger.log_scalars({"a": 1.0, "b": 2.0}, 1)
    assert client.get_metric_history(run_logger.run_id, "a") == []
    run_logger.log_scalars({"a": 3.0, "b": 4.0, "c": math.nan}, 2)  # 5 values: written
    assert [m.value for m in client.get_metric_history(run_logger.run_id, "a")] == [1.0, 3.0]
    with pytest.raises(ValueError, match="flush_every"):
        MLflowLogger(uri, flush_every=0)
    run_logger.close()


def test_missing_packages_and_unknown_kind(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "x" / "seed_0")
    with pytest.raises(ValueError, match="choose one of 'tensorboard', 'mlflow'"):
        open_logger("wandb", run)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for module in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install 'sparsetrain\[tensorboard\]'"):
        open_logger("tensorboard", run)
    with pytest.raises(ImportError, match=r"pip install 'sparsetrain\[mlflow\]'"):
        open_logger("mlflow", run)
