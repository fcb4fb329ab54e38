"""The trainer in-process on tiny synthetic data: files, exact resume after SIGINT mid-epoch, rerun skip."""

import json
import os
import signal

import pytest
import torch

from sparsetrain.experiment import ConfigError, ExperimentConfig, RunDir, Trainer, TrainerCallback, TrainingInterrupted
from sparsetrain.experiment.checkpoint import load_checkpoint
from sparsetrain.analysis.flops import dense_gradient_steps


def tiny(method="granet", **extra):
    overrides = {
        "data.name": "synthetic", "data.options.n_train": 256, "data.options.n_test": 64,
        "data.options.input_shape": [1, 12], "model.name": "mlp", "model.options.hidden": [16],
        "train.epochs": 3, "train.batch_size": 32, "sparse.method": method, "sparse.sparsity": 0.8,
        "sparse.update_every": 3, "train.eval_batch_size": 50,
    }
    overrides.update(extra)
    return ExperimentConfig().with_overrides(overrides)


def _metrics(run):
    return [{k: v for k, v in r.items() if k != "time"} for r in run.read_metrics()]


def _masks(run):
    return torch.load(run.masks_file, weights_only=True)


class StopAt(TrainerCallback):
    """Sends this process SIGINT after optimizer step ``step`` (as Ctrl-C would)."""

    def __init__(self, step):
        self.step = step

    def on_step(self, trainer):
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_run_writes_its_files_and_sparsity(tmp_path):
    config = tiny()
    summary = Trainer(config, tmp_path, plots=False).fit()
    run = RunDir.for_config(tmp_path, config)
    assert run.path == tmp_path / config.run_name() / "seed_0"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "masks.pt", "checkpoint.pt"} <= set(os.listdir(run.path))
    assert run.read_config() == config
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["step"] == summary["total_steps"] == 3 * 8  # 230 train samples / 32 -> 8 steps
    assert set(records[0]) >= {"step", "epoch", "train_loss", "train_acc", "val_acc", "test_acc", "sparsity",
                               "lr", "itop_rate", "time"}
    masks = _masks(run)
    assert all(m.dtype == torch.bool for m in masks.values())
    density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert density == pytest.approx(0.2, abs=0.01)
    assert summary["target_sparsity"] == 0.8
    assert summary["final_acc"] == records[-1]["test_acc"]
    assert summary["density_trace"]["steps"][0] == 0 and summary["density_trace"]["density"][0] == 1.0
    assert summary["density_trace"]["density"][-1] == pytest.approx(0.2, abs=0.01)
    assert summary["dense"] is None
    checkpoint = load_checkpoint(run.checkpoint_file)  # weights_only=True
    assert checkpoint["step"] == 24 and checkpoint["epoch"] == 3


def test_sigint_mid_epoch_then_resume_is_bit_identical(tmp_path):
    config = tiny()
    Trainer(config, tmp_path / "straight", plots=False).fit()
    straight = RunDir.for_config(tmp_path / "straight", config)

    with pytest.raises(TrainingInterrupted) as info:
        Trainer(config, tmp_path / "cut", callback=StopAt(11), plots=False).fit()
    assert (info.value.step, info.value.epoch, info.value.exit_code) == (11, 1, 130)
    cut = RunDir.for_config(tmp_path / "cut", config)
    assert cut.status() == "interrupted"
    assert load_checkpoint(cut.checkpoint_file)["batch_in_epoch"] == 3
    assert len(cut.read_metrics()) == 1

    resumed = Trainer(config, tmp_path / "cut", plots=False)
    summary = resumed.fit()
    assert resumed.resumed_from == 11 and summary["resumed"]
    assert _metrics(cut) == _metrics(straight)
    assert _masks(cut).keys() == _masks(straight).keys()
    assert all(torch.equal(_masks(cut)[k], _masks(straight)[k]) for k in _masks(cut))
    model_a = load_checkpoint(cut.checkpoint_file)["model"]
    model_b = load_checkpoint(straight.checkpoint_file)["model"]
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_finished_run_is_not_retrained(tmp_path):
    config = tiny("rigl")
    first = Trainer(config, tmp_path, plots=False).fit()
    run = RunDir.for_config(tmp_path, config)
    before = run.metrics_file.read_text()
    trainer = Trainer(config, tmp_path, plots=False)
    assert trainer.status() == "finished"
    assert trainer.fit() == json.loads(run.summary_file.read_text()) == first
    assert trainer.exp is None  # nothing was even built
    assert run.metrics_file.read_text() == before


def test_dense_baseline_is_found_by_sparse_runs(tmp_path):
    config = tiny("set")
    dense = Trainer(config.dense_baseline(), tmp_path, plots=False).fit()
    assert dense["method"] == "dense" and dense["target_sparsity"] == 0.0 and dense["sparsity"] == 0.0
    assert dense["itop_rate"] is None
    sparse = Trainer(config, tmp_path, plots=False).fit()
    assert sparse["dense"] == {"run": dense["run"], "final_acc": dense["final_acc"], "best_acc": dense["best_acc"]}


@pytest.mark.parametrize("extra, words", [
    ({"sparse.options.drop_fraction": 3}, ["sparse (method granet)", "drop_fraction=3"]),
    ({"sparse.options.sparsity": 0.5}, ["sparse.options.sparsity", "sparse.sparsity instead"]),
    ({"sparse.options.no_such_option": 1}, ["sparse (method granet)", "no_such_option"]),
    ({"model.options.depth": 3}, ["model:", "depth"]),
    ({"data.options.n_train": -1}, ["data:", "n_train"]),
    ({"train.precision": "fp16"}, ["train.precision='fp16'", "CUDA"]),
])
def test_construction_errors_become_one_line_config_errors(tmp_path, extra, words):
    trainer = Trainer(tiny(**extra), tmp_path)
    with pytest.raises(ConfigError) as info:
        trainer.prepare()
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / trainer.run.name).exists()


@pytest.mark.parametrize("optimizer, schedule", [("adam", "multistep"), ("adamw", "constant"), ("sgd", "cosine")])
def test_optimizers_and_schedules_train_and_keep_pruned_weights_zero(tmp_path, optimizer, schedule):
    config = tiny("static", **{"optim.name": optimizer, "optim.lr": 0.01, "optim.lr_schedule": schedule,
                               "optim.warmup_epochs": 1.0, "train.label_smoothing": 0.1, "optim.grad_clip": 1.0})
    summary = Trainer(config, tmp_path, plots=False).fit()
    run = RunDir.for_config(tmp_path, config)
    lrs = [r["lr"] for r in run.read_metrics()]
    assert lrs[0] == pytest.approx(0.01)  # the last warm-up step runs at the peak lr
    if schedule == "constant":
        assert lrs == pytest.approx([0.01] * 3)
    else:
        assert lrs[-1] < 0.01
    assert summary["sparsity"] >= 0.8  # no pruned weight came back to life
    model = load_checkpoint(run.checkpoint_file)["model"]
    for name, mask in _masks(run).items():
        assert torch.count_nonzero(model[name][~mask]) == 0


def test_bf16_autocast_on_cpu_trains(tmp_path):
    summary = Trainer(tiny("gmp", **{"train.precision": "bf16"}), tmp_path, plots=False).fit()
    assert summary["final_acc"] is not None and summary["sparsity"] >= 0.8



def test_summary_flops_follow_rigls_accounting(tmp_path):
    pytest.importorskip("sparsetrain.analysis")
    static = Trainer(tiny("static"), tmp_path, plots=False).fit()
    density = 1.0 - static["mask_sparsity"]
    # A fixed mask and no dense-gradient steps: every step costs the sparse forward's share.
    assert static["flops"]["inference_ratio"] == pytest.approx(density)
    assert static["flops"]["training_ratio"] == pytest.approx(density)
    dense = Trainer(tiny().dense_baseline(), tmp_path, plots=False).fit()
    assert dense["flops"]["training_ratio"] == 1.0 and dense["flops"]["inference_ratio"] == 1.0
    rigl = Trainer(tiny("rigl"), tmp_path, plots=False).fit()
    assert rigl["flops"]["training_ratio"] > rigl["flops"]["inference_ratio"]  # regrowth needs dense gradients


def test_dense_gradient_steps_known_values():
    assert dense_gradient_steps("rigl", [3, 6, 9], 10) == [2, 5, 8]
    assert dense_gradient_steps("granet", [10], 10) == [9]
    assert dense_gradient_steps("snfs", [3], 4) == [0, 1, 2, 3]
    assert dense_gradient_steps("gmp", [3, 6], 10) == dense_gradient_steps("set", [3], 10) == []


def test_restart_discards_an_interrupted_run(tmp_path):
    config = tiny()
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path / "cut", callback=StopAt(13), plots=False).fit()
    restarted = Trainer(config, tmp_path / "cut", plots=False)
    summary = restarted.fit(restart=True)
    assert restarted.resumed_from is None and not summary["resumed"]
    straight = Trainer(config, tmp_path / "straight", plots=False).fit()
    cut = RunDir.for_config(tmp_path / "cut", config)
    assert _metrics(cut) == _metrics(RunDir.for_config(tmp_path / "straight", config))
    assert summary["final_acc"] == straight["final_acc"]
