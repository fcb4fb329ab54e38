"""``sparse.backend`` / ``--backend`` in the experiment layer: run identity, exact resume, the Trainer under DDP."""

import os
import re
import tempfile

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.experiment import ConfigError, RunDir, Trainer, TrainingInterrupted
from sparsetrain.experiment.checkpoint import load_checkpoint
from sparsetrain.sparse import TrainableSparseLinear

from test_experiment_trainer import StopAt, _masks, _metrics, tiny

CHECKSUM = re.compile(r"rank (\d) of 2: final masks checksum ([0-9a-f]{32})")


def sparse_config(**extra):
    # GraNet-ST: its pruning shrinks the held layers' active sets (values and optimizer state are compacted).
    return tiny("granet", **{"sparse.backend": "sparse", "sparse.options.initial_sparsity": 0.5, **extra})


def test_auto_is_the_default_and_renames_only_the_runs_it_may_change():
    # Runs are named against "dense" (the default when they were named): "auto" is left out of a run's identity
    # where it cannot hold a layer sparse, and named where it may.
    start_dense, start_sparse = tiny("granet"), tiny("rigl")
    assert start_dense.sparse.backend == start_sparse.sparse.backend == "auto"
    assert "sparse.backend" not in start_dense.non_default()
    assert start_dense.run_name() == tiny("granet", **{"sparse.backend": "dense"}).run_name()
    given_masks = tiny("granet", **{"sparse.options.masks": "masks.pt"})
    for config in (start_sparse, given_masks, tiny("granet", **{"sparse.options.initial_sparsity": 0.5})):
        assert config.non_default()["sparse.backend"] == "auto"
    for backend in ("dense", "sparse"):
        other = tiny("rigl", **{"sparse.backend": backend})
        assert other.run_name() != start_sparse.run_name()
    assert "sparse.backend" not in tiny("rigl", **{"sparse.backend": "dense"}).non_default()
    assert tiny("rigl", **{"sparse.backend": "sparse"}).non_default()["sparse.backend"] == "sparse"
    for extra in ({"sparse.pattern": "2:4"}, {"train.precision": "bf16"}):  # both train on the dense path
        assert "sparse.backend" not in tiny("rigl", **extra).non_default()


def test_studies_pin_auto_to_the_dense_storage_their_tables_came_from():
    from sparsetrain.studies.reproduce import SETTINGS, run_config

    setting = SETTINGS["quick"]
    bench = setting.benchmarks[0]
    config = run_config(bench, setting, "rigl", 0.9, 0)
    assert config.sparse.backend == "dense" and "sparse.backend" not in config.non_default()
    assert tiny("rigl", **{"sparse.backend": "sparse"}).pinned_storage().sparse.backend == "sparse"


def test_sparse_backend_run_holds_its_linears_sparse_and_resumes_bit_identically(tmp_path):
    config = sparse_config()
    trainer = Trainer(config, tmp_path / "straight", plots=False)
    exp = trainer.prepare()
    assert all(isinstance(m, TrainableSparseLinear) for m in exp.model.modules() if hasattr(m, "weight_values"))
    assert set(exp.sparsifier.enforcer.layers) == {"layers.0.weight", "layers.2.weight"}
    summary = trainer.fit()
    straight = RunDir.for_config(tmp_path / "straight", config)
    assert summary["sparsity"] == pytest.approx(0.8, abs=0.01)
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path / "cut", callback=StopAt(11), plots=False).fit()
    Trainer(config, tmp_path / "cut", plots=False).fit()
    cut = RunDir.for_config(tmp_path / "cut", config)
    assert _metrics(cut) == _metrics(straight)
    assert all(torch.equal(_masks(cut)[k], _masks(straight)[k]) for k in _masks(straight))
    model_a, model_b = (load_checkpoint(run.checkpoint_file)["model"] for run in (cut, straight))
    assert "layers.0.weight_values" in model_a and "layers.0.weight" not in model_a  # the checkpoint is sparse
    assert model_a.keys() == model_b.keys() and all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_sparse_backend_trains_like_the_dense_backend(tmp_path):
    dense = Trainer(sparse_config(**{"sparse.backend": "dense"}), tmp_path, plots=False).fit()
    sparse = Trainer(sparse_config(), tmp_path, plots=False).fit()
    assert sparse["sparsity"] == dense["sparsity"]
    assert abs(sparse["final_acc"] - dense["final_acc"]) <= 0.1  # float rounding differs, the recipe does not


def test_sparse_backend_refuses_autocast_and_auto_falls_back_to_dense(tmp_path):
    with pytest.raises(ConfigError, match="sparse.backend='sparse' is not allowed with train.precision='bf16'"):
        Trainer(sparse_config(**{"train.precision": "bf16"}), tmp_path, plots=False).prepare()
    config = sparse_config(**{"train.precision": "bf16", "sparse.backend": "auto"})
    assert Trainer(config, tmp_path, plots=False).prepare().sparsifier.enforcer.__class__.__name__ == \
        "DenseMaskEnforcer"


def test_cli_backend_flag_and_two_processes_keep_identical_index_sets(tmp_path):
    """``sparsetrain train --backend sparse --nproc 2`` with GraNet-ST: the Trainer rebuilds the DDP wrapper around
    the updates that shrink the values; both ranks end with the same masks."""
    args = ["train", "--data", "synthetic", "--data-option", "n_train=256", "--data-option", "n_test=64",
            "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
            "--method", "granet", "--method-option", "initial_sparsity=0.5", "--sparsity", "0.8", "--epochs", "2",
            "--batch-size", "32", "--update-every", "3", "--backend", "sparse", "--no-baseline", "--no-progress",
            "--no-plots", "-v", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2"]
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            code = main(args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    assert code == 0, stderr[-3000:]
    checksums = dict(CHECKSUM.findall(stderr))
    assert set(checksums) == {"0", "1"} and len(set(checksums.values())) == 1, stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/seed_0")
    assert RunDir(run).read_config().non_default() == sparse_config(**{
        "train.epochs": 2, "train.eval_batch_size": 1000}).non_default()
    assert "2 tensor(s) held sparse" in stderr
