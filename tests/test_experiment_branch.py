"""Branches of the trainer: start from a checkpoint or weights, kept checkpoints, replays, stop early, identity."""

import json

import pytest
import torch

import sparsetrain
from sparsetrain.checkpoint_io import save_checkpoint
from sparsetrain.experiment import (
    Branch,
    ConfigError,
    ExperimentConfig,
    RunDir,
    Trainer,
    TrainerCallback,
)
from sparsetrain.experiment.checkpoint import load_checkpoint

STEPS_PER_EPOCH = 8  # 230 training samples (256 less the validation split) in batches of 32
TOTAL = 3 * STEPS_PER_EPOCH


def tiny(method="granet", **extra):
    overrides = {
        "data.name": "synthetic", "data.options.n_train": 256, "data.options.n_test": 64,
        "data.options.input_shape": [1, 12], "model.name": "mlp", "model.options.hidden": [16],
        "train.epochs": 3, "train.batch_size": 32, "sparse.method": method, "sparse.sparsity": 0.8,
        "sparse.update_every": 3, "train.eval_batch_size": 50, "optim.lr_schedule": "cosine",
    }
    overrides.update(extra)
    return ExperimentConfig().with_overrides(overrides)


class Count(TrainerCallback):
    """Records the step after every optimizer step; raises after ``stop_at`` (a crash, not a signal)."""

    def __init__(self, stop_at=None):
        self.steps = []
        self.stop_at = stop_at

    def on_step(self, trainer):
        self.steps.append(trainer.step)
        if trainer.step == self.stop_at:
            raise RuntimeError(f"killed at step {trainer.step}")


def _metrics(run):
    return [{k: v for k, v in r.items() if k != "time"} for r in run.read_metrics()]


def _same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _final(run):
    """Masks, metrics, final weights and the summary's measured fields of a finished run."""
    summary = run.read_summary()
    fields = {k: summary[k] for k in ("density_trace", "flops", "itop_rate", "itop_layers", "layers",
                                      "masks_checksum", "final_acc", "best_acc", "sparsity")}
    return (torch.load(run.masks_file, weights_only=True), _metrics(run),
            load_checkpoint(run.checkpoint_file)["model"], fields)


def _same_run(a, b, first_epoch=0):
    """``a`` (which trained from epoch ``first_epoch`` on) ends as ``b`` did, and logged the same epochs."""
    masks_a, metrics_a, model_a, fields_a = a
    masks_b, metrics_b, model_b, fields_b = b
    assert _same_tensors(masks_a, masks_b)
    assert metrics_a == metrics_b[first_epoch:]
    assert _same_tensors(model_a, model_b)
    assert fields_a == fields_b


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted GraNet run keeping checkpoints at step 11 (mid-epoch 2) and after epoch 1 (step 8)."""
    where = tmp_path_factory.mktemp("straight") / "run"
    Trainer(tiny(), run_dir=where, keep_steps=(11,), keep_epochs=(1,), plots=False).fit()
    return RunDir(where)


@pytest.mark.parametrize("k", [11, 8])
def test_a_branch_taking_everything_at_step_k_ends_bit_identical(straight, tmp_path, k):
    count = Count()
    branch = Trainer(tiny(), run_dir=tmp_path / "b", branch=Branch(checkpoint=straight.kept_checkpoint(k)),
                     callback=count, plots=False)
    summary = branch.fit()
    assert count.steps == list(range(k + 1, TOTAL + 1))  # trained from k on, never from 0
    _same_run(_final(RunDir(tmp_path / "b")), _final(straight), first_epoch=k // STEPS_PER_EPOCH)
    assert len(RunDir(tmp_path / "b").read_metrics()) == 3 - k // STEPS_PER_EPOCH
    assert summary["branch"]["step"] == k and summary["branch"]["source"]["take"] == sorted(
        ["data", "model", "optimizer", "position", "rng", "sparsifier"])
    assert summary["branch"]["source"]["checkpoint"] == f"../../straight0/run/checkpoints/step_{k}.pt"


def test_kept_checkpoints_exist_and_load_as_branch_sources(straight):
    kept = straight.kept_checkpoints()
    assert list(kept) == [8, 11]
    for step, path in kept.items():
        state = load_checkpoint(path)
        assert state["step"] == step and state["epoch"] == step // STEPS_PER_EPOCH
        assert state["batch_in_epoch"] == step % STEPS_PER_EPOCH
        assert state["sparsifier"]["step"] == step
        # after epoch 1: the state after its evaluation (the epoch's sums logged and reset); mid-epoch: 3 batches
        assert state["running"]["count"] == (0 if step == 8 else 3 * 32)
    assert not (straight.path / "replay").exists()


def test_a_finished_run_replays_from_its_nearest_earlier_kept_checkpoint(tmp_path):
    config = tiny()
    count = Count()
    where = tmp_path / "run"
    Trainer(config, run_dir=where, keep_steps=(5, 11), plots=False).fit()
    finished = Trainer(config, run_dir=where, callback=count, plots=False)
    assert finished.checkpoint_at(step=11) == RunDir(where).kept_checkpoint(11)
    assert count.steps == []  # kept already: nothing trained
    path = finished.checkpoint_at(step=15)
    assert count.steps == [12, 13, 14, 15]  # from step_11.pt, not from step 0
    assert not (where / "replay").exists()
    count.steps.clear()
    finished.checkpoint_at(epoch=1)
    assert count.steps == [6, 7, 8]  # from step_5.pt
    count.steps.clear()
    finished.checkpoint_at(step=3)
    assert count.steps == [1, 2, 3]  # nothing earlier kept: from the start
    finished.checkpoint_at(step=TOTAL)
    assert count.steps == [1, 2, 3]  # the final checkpoint.pt is the state at the last step: copied, not trained
    assert _same_tensors(load_checkpoint(RunDir(where).kept_checkpoint(TOTAL))["model"],
                         load_checkpoint(RunDir(where).checkpoint_file)["model"])
    # the replayed states are those of an uninterrupted run that kept them
    reference = tmp_path / "reference"
    Trainer(config, run_dir=reference, keep_steps=(3, 15), keep_epochs=(1,), plots=False).fit()
    for step in (3, 8, 15):
        ours, theirs = load_checkpoint(RunDir(where).kept_checkpoint(step)), load_checkpoint(
            RunDir(reference).kept_checkpoint(step))
        assert _same_tensors(ours["model"], theirs["model"])
        assert _same_tensors(ours["sparsifier"]["masks"], theirs["sparsifier"]["masks"])
        momentum = [state["optimizer"]["state"][0]["momentum_buffer"] for state in (ours, theirs)]
        assert torch.equal(*momentum)
    assert path.exists() and RunDir(where).status() == "finished"


def test_an_unfinished_run_trains_only_up_to_the_asked_checkpoint_then_fit_continues(straight, tmp_path):
    count = Count()
    trainer = Trainer(tiny(), run_dir=tmp_path / "run", keep_epochs=(1,), callback=count, plots=False)
    path = trainer.checkpoint_at(step=11)
    assert count.steps == list(range(1, 12))
    assert RunDir(tmp_path / "run").status() == "interrupted" and path.exists()
    assert load_checkpoint(path)["step"] == load_checkpoint(RunDir(tmp_path / "run").checkpoint_file)["step"] == 11
    Trainer(tiny(), run_dir=tmp_path / "run", keep_epochs=(1,), plots=False).fit()
    _same_run(_final(RunDir(tmp_path / "run")), _final(straight))


def test_fit_until_stops_unfinished_and_a_later_fit_matches_the_straight_run(straight, tmp_path):
    trainer = Trainer(tiny(), run_dir=tmp_path / "run", plots=False)
    assert trainer.fit_until(epoch=2) == 16
    run = RunDir(tmp_path / "run")
    assert run.status() == "interrupted" and run.read_summary() is None and len(run.read_metrics()) == 2
    with pytest.raises(ValueError, match="past step 3"):
        Trainer(tiny(), run_dir=tmp_path / "run", plots=False).fit_until(step=3)
    Trainer(tiny(), run_dir=tmp_path / "run", plots=False).fit()
    _same_run(_final(run), _final(straight))


def _masks_file(tmp_path, seed=0):
    """Random bool masks (20% kept) for the tiny MLP's prunable weights, saved as a masks.pt."""
    exp = Trainer(tiny("dense"), run_dir=tmp_path / "probe").prepare()
    generator = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(p.shape, generator=generator) < 0.2
             for name, p in sparsetrain.select_prunable(exp.model).items()}
    save_checkpoint(masks, tmp_path / "masks.pt")
    return masks, str(tmp_path / "masks.pt")


def test_a_weights_and_masks_branch_trains_with_exactly_the_given_masks(straight, tmp_path):
    masks, masks_path = _masks_file(tmp_path)
    weights = load_checkpoint(straight.kept_checkpoint(8))["model"]
    save_checkpoint(weights, tmp_path / "weights.pt")
    config = tiny("static", **{"sparse.options.masks": masks_path})
    trainer = Trainer(config, run_dir=tmp_path / "b", branch=Branch(weights=tmp_path / "weights.pt"), plots=False)
    exp = trainer.prepare()
    for name, p in exp.model.named_parameters():  # the given weights, masked
        expected = weights[name] * masks[name] if name in masks else weights[name]
        assert torch.equal(p.detach(), expected), name
    summary = trainer.fit()
    assert summary["branch"]["step"] == 0 and summary["total_steps"] == TOTAL
    trained = torch.load(RunDir(tmp_path / "b").masks_file, weights_only=True)
    assert _same_tensors(trained, masks)
    for name, p in exp.model.named_parameters():
        if name in masks:
            assert not p.detach()[~masks[name]].any() and p.detach()[masks[name]].ne(weights[name][masks[name]]).any()


@pytest.mark.parametrize("optimizer", [False, True])
def test_a_rewind_branch_takes_the_position_and_data_with_a_fresh_or_kept_optimizer(straight, tmp_path, optimizer):
    masks, masks_path = _masks_file(tmp_path)
    source = load_checkpoint(straight.kept_checkpoint(11))
    take = {"model", "position", "data"} | ({"optimizer"} if optimizer else set())
    count = Count()
    trainer = Trainer(tiny("static", **{"sparse.options.masks": masks_path}), run_dir=tmp_path / "b",
                      branch=Branch(checkpoint=straight.kept_checkpoint(11), take=take), callback=count, plots=False)
    exp = trainer.prepare()
    state = exp.optimizer.state_dict()
    assert state["param_groups"][0]["lr"] == source["optimizer"]["param_groups"][0]["lr"]  # the schedule at step 11
    assert exp.scheduler.last_epoch == 11
    names = [n for n, _ in exp.model.named_parameters()]
    if optimizer:  # the source's momentum, zero where the new masks prune
        for index, name in enumerate(names):
            expected = source["optimizer"]["state"][index]["momentum_buffer"]
            if name in masks:
                expected = expected * masks[name]
            assert torch.equal(state["state"][index]["momentum_buffer"], expected), name
    else:
        assert state["state"] == {}  # a fresh optimizer (Frankle et al. 2020; OpenLTH)
    summary = trainer.fit()
    assert count.steps == list(range(12, TOTAL + 1))
    assert _same_tensors(torch.load(RunDir(tmp_path / "b").masks_file, weights_only=True), masks)
    trace = summary["density_trace"]  # the source's history to step 11, then the branch's fixed masks
    assert trace["steps"] == source["trace"]["steps"] + [11]
    assert trace["density"][-1] == sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def test_the_sparsifier_of_a_branch_starts_at_the_branch_step_or_at_zero(straight, tmp_path):
    dense = tmp_path / "dense"
    Trainer(tiny("dense"), run_dir=dense, keep_steps=(11,), plots=False).fit()
    source = RunDir(dense).kept_checkpoint(11)
    everything_else = {"model", "optimizer", "position", "data", "rng"}
    trainer = Trainer(tiny(), run_dir=tmp_path / "a", branch=Branch(checkpoint=source, take=everything_else),
                      plots=False)
    at_branch = trainer.prepare().sparsifier
    assert (at_branch.step_count, at_branch.total_steps) == (11, TOTAL)
    summary = trainer.fit()
    steps = summary["density_trace"]["steps"]
    assert steps[:2] == [0, 11] and summary["density_trace"]["density"][:2] == [1.0, 1.0]  # dense, GraNet starts dense
    assert steps[2] % 3 == 0  # GraNet's updates keep the run-wide cadence
    assert summary["flops"]["dense_grad_steps"] == [s - 1 for s in steps[2:]]  # the branch point is no update
    at_zero = Trainer(tiny(), run_dir=tmp_path / "z", plots=False,
                      branch=Branch(checkpoint=source, take=everything_else, sparsifier_start="zero")).prepare()
    assert (at_zero.sparsifier.step_count, at_zero.sparsifier.total_steps) == (0, TOTAL - 11)
    with pytest.raises(ConfigError, match="holds no sparsifier state"):
        Trainer(tiny(), run_dir=tmp_path / "x", branch=Branch(checkpoint=source)).prepare()


def test_a_branch_killed_mid_run_resumes_to_the_same_result(straight, tmp_path):
    masks, masks_path = _masks_file(tmp_path)
    config = tiny("static", **{"sparse.options.masks": masks_path})
    branch = Branch(checkpoint=straight.kept_checkpoint(11), take={"model", "position", "data"})
    Trainer(config, run_dir=tmp_path / "whole", branch=branch, plots=False).fit()
    for stop_at in (13, 19):  # before and after the branch's first own checkpoint (step 16)
        where = tmp_path / f"cut{stop_at}"
        with pytest.raises(RuntimeError, match=f"killed at step {stop_at}"):
            Trainer(config, run_dir=where, branch=branch, callback=Count(stop_at), plots=False).fit()
        resumed = Trainer(config, run_dir=where, branch=branch, plots=False)
        resumed.fit()
        assert (resumed.resumed_from is not None) == (stop_at > 16)
        _same_run(_final(RunDir(where)), _final(RunDir(tmp_path / "whole")))


def test_a_resumed_branch_with_another_source_is_a_one_line_error_naming_both(straight, tmp_path):
    where = tmp_path / "b"
    with pytest.raises(RuntimeError):
        Trainer(tiny(), run_dir=where, branch=Branch(checkpoint=straight.kept_checkpoint(11)), callback=Count(20),
                plots=False).fit()
    with pytest.raises(ConfigError) as info:
        Trainer(tiny(), run_dir=where, branch=Branch(checkpoint=straight.kept_checkpoint(8)), plots=False).fit()
    message = str(info.value)
    assert "\n" not in message and "step_11.pt" in message and "step_8.pt" in message, message
    with pytest.raises(ConfigError, match="is not a branch"):
        Trainer(tiny(), run_dir=where, plots=False).prepare()
    with pytest.raises(ConfigError, match="holds a run that is not a branch"):
        Trainer(tiny(), run_dir=straight.path, branch=Branch(checkpoint=straight.kept_checkpoint(8))).prepare()
    assert json.loads((where / "branch.json").read_text())["source"]["checkpoint"].endswith("step_11.pt")


@pytest.mark.parametrize("kwargs, words", [
    ({}, "needs a source"),
    ({"checkpoint": "c.pt", "take": {"weights"}}, "no part 'weights'"),
    ({"checkpoint": "c.pt", "take": "model"}, "expected a set of parts"),
    ({"weights": "w.pt", "take": {"model"}}, "without a checkpoint"),
    ({"checkpoint": "c.pt", "take": set()}, "take at least one part"),
    ({"checkpoint": "c.pt", "sparsifier_start": "start"}, "sparsifier_start='start'"),
    ({"checkpoint": "c.pt", "sparsifier_start": "zero"}, "continues its own step counter"),
    ({"checkpoint": "c.pt", "weights": "w.pt"}, "would not be applied"),
])
def test_branch_arguments_are_validated(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Branch(**kwargs)


def test_trainer_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match="keep_steps: -1"):
        Trainer(tiny(), run_dir=tmp_path, keep_steps=(-1,))
    with pytest.raises(ValueError, match="past the run's last step 24"):
        Trainer(tiny(), run_dir=tmp_path, keep_epochs=(4,)).fit()
    trainer = Trainer(tiny(), run_dir=tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        trainer.checkpoint_at(step=1, epoch=1)
    with pytest.raises(ValueError, match=r"step=25 is not allowed: an int in \[0, 24\]"):
        trainer.checkpoint_at(step=25)
    for branch, words in ((Branch(weights=tmp_path / "nope.pt"), "branch weights="),
                          (Branch(checkpoint=tmp_path / "nope.pt"), "branch checkpoint=")):
        with pytest.raises(ConfigError, match=f"{words}.*nope.pt'?: no such file"):
            Trainer(tiny(), run_dir=tmp_path / "b", branch=branch).prepare()
