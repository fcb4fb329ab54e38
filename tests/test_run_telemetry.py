"""A training run's telemetry: topology.jsonl beside the metrics, TensorBoard and MLflow through ``train.log``
(read back with those packages' own readers), across an interruption and resume, a restart and a replay."""

import importlib.util
import os
import sys

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.experiment import RunDir, Trainer, TrainingInterrupted
from sparsetrain.experiment.topology_log import read_events
from test_experiment_trainer import StopAt, tiny

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard extra is not installed")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not "
                                                                                     "installed")

# tiny(): 8 steps per epoch, 3 epochs; RigL's updates every 3 steps until 75% of 24 steps
UPDATES = [3, 6, 9, 12, 15]


def _lines(run):
    return run.topology_file.read_text().splitlines()


def test_topology_log_follows_the_run_and_a_resume_replays_it_once(tmp_path):
    config = tiny("rigl")
    summary = Trainer(config, tmp_path / "straight", plots=False).fit()
    straight = RunDir.for_config(tmp_path / "straight", config)
    events = read_events(straight.topology_file)
    assert [e.step for e in events] == UPDATES
    assert events[-1].itop == pytest.approx(summary["itop_rate"])
    for event in events:  # a zero-cost swap (none at the last update: 2% of 30 weights rounds down to 0)
        assert event.grown == event.dropped and event.density == pytest.approx(0.2, abs=0.01)
    assert events[0].grown > 0 and events[-1].grown == 0

    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path / "cut", callback=StopAt(11), plots=False).fit()
    cut = RunDir.for_config(tmp_path / "cut", config)
    assert _lines(cut) == _lines(straight)[:3]  # the updates at steps 3, 6 and 9, each appended as it happened
    # a session killed after an update but before its checkpoint leaves a line past the checkpoint (step 11)
    with cut.topology_file.open("a") as file:
        file.write(_lines(straight)[3].replace('"step": 12', '"step": 12, "stale": 1') + "\n")
    Trainer(config, tmp_path / "cut", plots=False).fit()
    assert _lines(cut) == _lines(straight)


def test_a_restart_forgets_the_topology_log_and_the_tracker_logs(tmp_path):
    config = tiny("rigl", **{"train.log": ["tensorboard"]} if importlib.util.find_spec("tensorboard") else {})
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path, callback=StopAt(13), plots=False).fit()
    run = RunDir.for_config(tmp_path, config)
    assert [e.step for e in read_events(run.topology_file)] == [3, 6, 9, 12]
    first = {p.name for p in (run.path / "tensorboard").iterdir()} if config.train.log else set()
    with pytest.raises(TrainingInterrupted):  # the restart is interrupted before its first update
        Trainer(config, tmp_path, callback=StopAt(2), plots=False).fit(restart=True)
    assert not run.topology_file.exists()
    if config.train.log:  # only the restart's event file: the old session's figures are gone
        files = {p.name for p in (run.path / "tensorboard").iterdir()}
        assert len(files) == 1 and not files & first
        assert [s.step for s in _tensorboard(run).Scalars("train/loss")] == [1, 2]


def test_dense_and_static_runs_have_no_topology_log(tmp_path):
    for method in ("dense", "static"):
        config = tiny(method)
        Trainer(config, tmp_path, plots=False).fit()
        assert not RunDir.for_config(tmp_path, config).topology_file.exists()


def test_a_replay_logs_nothing_into_the_run(tmp_path):
    config = tiny("rigl", **{"train.log": ["tensorboard"]} if importlib.util.find_spec("tensorboard") else {})
    trainer = Trainer(config, tmp_path, plots=False)
    trainer.fit()
    run = trainer.run
    before = run.topology_file.read_text()
    tensorboard = sorted(p.name for p in (run.path / "tensorboard").glob("*")) if config.train.log else []
    kept = Trainer(config, tmp_path, plots=False).checkpoint_at(step=10)
    assert kept.exists() and not (run.path / "replay").exists()
    assert run.topology_file.read_text() == before
    if config.train.log:
        assert sorted(p.name for p in (run.path / "tensorboard").glob("*")) == tensorboard


def _tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0,
                                                                                   "tensors": 0})
    accumulator.Reload()
    return accumulator


@needs_tensorboard
def test_tensorboard_holds_the_runs_figures_across_a_resume(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = tiny("rigl", **{"train.log": ["tensorboard"]})
    Trainer(config, tmp_path / "straight", plots=False).fit()
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path / "cut", callback=StopAt(11), plots=False).fit()
    Trainer(config, tmp_path / "cut", plots=False).fit()
    straight, cut = (_tensorboard(RunDir.for_config(tmp_path / name, config)) for name in ("straight", "cut"))
    run = RunDir.for_config(tmp_path / "straight", config)
    events = read_events(run.topology_file)
    metrics = run.read_metrics()
    masks = torch.load(run.masks_file, weights_only=True)
    for accumulator in (straight, cut):
        losses = accumulator.Scalars("train/loss")
        assert [s.step for s in losses] == list(range(1, 25))  # every step once, the resume included
        assert [s.value for s in losses] == pytest.approx([s.value for s in straight.Scalars("train/loss")])
        assert [s.value for s in accumulator.Scalars("train/sparsity")][-1] == pytest.approx(0.8, abs=0.01)
        churn = accumulator.Scalars("churn/layers.0.weight")
        assert [(s.step, s.value) for s in churn] == [(e.step, pytest.approx(e.layers["layers.0.weight"].churn))
                                                      for e in events]
        assert [s.step for s in accumulator.Scalars("topology/drop_fraction")] == UPDATES
        accuracy = accumulator.Scalars("epoch/test_acc")
        assert [(s.step, s.value) for s in accuracy] == [(r["step"], pytest.approx(r["test_acc"])) for r in metrics]
        histograms = accumulator.Histograms("weights/layers.2.weight")
        assert [h.step for h in histograms] == [8, 16, 24]  # one per epoch
        assert histograms[-1].histogram_value.num == int(masks["layers.2.weight"].sum())  # the active weights
        content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["sparse.method"].string_value == "rigl"
        assert hparams["train.log"].string_value == '["tensorboard"]'


@needs_mlflow
def test_mlflow_continues_one_run_across_a_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    config = tiny("granet", **{"train.log": ["mlflow"]})
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path, callback=StopAt(11), plots=False).fit()
    run = RunDir.for_config(tmp_path, config)
    run_id = (run.path / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"  # closed on interruption, its figures written
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 12))
    Trainer(config, tmp_path, plots=False).fit()
    assert (run.path / "mlflow_run_id").read_text().strip() == run_id
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == run.name
    assert record.data.params["sparse.method"] == "granet" and record.data.params["train.epochs"] == "3"
    assert len(client.search_runs([record.info.experiment_id])) == 1
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 25))
    events = read_events(run.topology_file)
    density = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "topology/density"))
    assert density == [(e.step, pytest.approx(e.density)) for e in events]
    assert density[-1][1] == pytest.approx(0.2, abs=0.01)
    target = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "topology/target_sparsity"))
    assert [v for _, v in target] == sorted(v for _, v in target) and target[-1][1] == pytest.approx(0.8)
    medians = client.get_metric_history(run_id, "weights/layers.0.weight/median")
    assert sorted(m.step for m in medians) == [8, 16, 24] and all(m.value > 0 for m in medians)


def test_log_without_its_extra_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    args = ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--no-baseline", "--no-progress",
            "--runs-dir", str(tmp_path), "--log", "mlflow"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'sparsetrain[mlflow]'" in err and "train.log" in err
    assert not list(tmp_path.iterdir())  # nothing trained or written
    assert main(["train", "--log", "wandb", "--print-config"]) == 2
    assert "train.log=['wandb'] is not allowed" in capsys.readouterr().err


def test_log_is_not_part_of_the_run_identity():
    assert tiny("rigl", **{"train.log": ["tensorboard", "mlflow"]}).run_name() == tiny("rigl").run_name()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the fsync'ed files through /proc (Linux)")
def test_the_topology_log_is_synced_before_every_checkpoint(tmp_path, monkeypatch):
    """Lines are appended without an fsync each (milliseconds, more than a small model's step); the file is
    fsync'ed right before each checkpoint, so every update up to a checkpoint's step is on disk before it."""
    import sparsetrain.atomic
    import sparsetrain.experiment.trainer as trainer_module

    config = tiny("rigl")
    run = RunDir.for_config(tmp_path, config)
    calls, synced = [], []
    real_fsync, real_sync, real_save = os.fsync, trainer_module.sync_file, trainer_module.save_checkpoint

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def sync_file(path):
        calls.append(("sync", len(_lines(run))))
        real_sync(path)

    def save_checkpoint(state, path, **kwargs):
        calls.append(("checkpoint", state.get("step")))
        real_save(state, path, **kwargs)

    monkeypatch.setattr(sparsetrain.atomic.os, "fsync", fsync)
    monkeypatch.setattr(trainer_module, "sync_file", sync_file)
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_checkpoint)
    Trainer(config, tmp_path, plots=False).fit()
    after_sync = [(calls[i - 1][1], step) for i, (kind, step) in enumerate(calls)
                  if kind == "checkpoint" and calls[i - 1][0] == "sync"]
    # every epoch's checkpoint right after a sync of a file holding every update up to its step
    assert after_sync == [(sum(1 for u in UPDATES if u <= step), step) for step in (8, 16, 24)]
    assert sum(path.endswith("topology.jsonl") for path in synced) == 3  # none of the 5 appends fsync'ed
