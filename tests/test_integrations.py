"""Framework adapters with the real packages: PyTorch Lightning's Trainer and the Hugging Face Trainer on CPU.

Each trains a tiny model a few dozen optimizer steps with gradient accumulation and checks: the sparsifier
counts optimizer steps (not batches), the sparsity is exact and the pruned weights are exactly zero, and a run
resumed from the framework's own checkpoint ends with the same masks and weights as the uninterrupted run.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.checkpoint_io import load_checkpoint

SPARSITY = 0.8
ACCUMULATE = 2


def _data(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=generator)
    teacher = torch.randn(16, 4, generator=generator)
    return x, (x @ teacher).argmax(dim=1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _assert_exact(sparsifier: sparsetrain.Sparsifier) -> None:
    for name, param in sparsifier.params.items():
        assert not bool(param.detach()[~sparsifier.masks[name]].any()), name
    assert sparsifier.current_sparsity() == pytest.approx(SPARSITY, abs=2e-3)
    assert sparsifier.report().sparsity >= sparsifier.current_sparsity()


METHOD_OPTIONS = {
    "granet": dict(sparsity=SPARSITY, update_every=3, prune_end=0.5, seed=3),
    "rigl": dict(sparsity=SPARSITY, update_every=3, seed=3),
}


# ---------------------------------------------------------------------------------------------------------------
# PyTorch Lightning
# ---------------------------------------------------------------------------------------------------------------
def _lightning_run(root: Path, method: str, max_epochs: int, ckpt_path: Path | None = None):
    pl = pytest.importorskip("lightning.pytorch")
    from sparsetrain.integrations.lightning import SparsifierCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    callback = SparsifierCallback(method, **METHOD_OPTIONS[method])
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1,
                                               filename="{epoch}-{step}")
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, accumulate_grad_batches=ACCUMULATE,
                         callbacks=[callback, checkpoints], logger=pl.loggers.CSVLogger(root, name="csv"),
                         log_every_n_steps=4, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, num_sanity_val_steps=0)
    module = Module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers etc.
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, callback, module


@pytest.mark.parametrize("method", ["granet", "rigl"])
def test_lightning_callback_counts_optimizer_steps_and_resumes(tmp_path: Path, method: str) -> None:
    logging.getLogger("lightning").setLevel(logging.ERROR)
    # 128 samples / batch 8 = 16 batches per epoch; accumulate 2 -> 8 optimizer steps per epoch; 3 epochs.
    trainer, callback, module = _lightning_run(tmp_path / "a", method, max_epochs=3)
    sparsifier = callback.sparsifier
    assert trainer.global_step == 24 == sparsifier.step_count
    assert sparsifier.total_steps == 24  # trainer.estimated_stepping_batches: optimizer steps, not batches
    _assert_exact(sparsifier)
    logged = trainer.callback_metrics["train/sparsity"]  # logged with pl_module.log at every step
    assert float(logged) == pytest.approx(sparsifier.current_sparsity(), abs=1e-6)
    _check_lightning_csv(trainer, sparsifier, first_step=1)

    # The callback's state is inside Lightning's checkpoint, and loads weights-only.
    first = tmp_path / "a" / "epoch=0-step=8.ckpt"
    ckpt = load_checkpoint(first)
    state = ckpt["callbacks"][callback.state_key]["sparsifier"]
    assert state["step"] == 8 and state["method"] == method

    # Resume from the end of epoch 1 in a fresh process state: same masks and weights as the uninterrupted run.
    second = tmp_path / "a" / "epoch=1-step=16.ckpt"
    trainer_b, callback_b, module_b = _lightning_run(tmp_path / "b", method, max_epochs=3, ckpt_path=second)
    assert trainer_b.global_step == 24 == callback_b.sparsifier.step_count
    for name, mask in sparsifier.masks.items():
        assert torch.equal(mask, callback_b.sparsifier.masks[name]), name
    for (name, p), (_, q) in zip(module.named_parameters(), module_b.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert list(callback_b.sparsifier.masks) == ["net.0.weight", "net.2.weight", "net.4.weight"]
    _check_lightning_csv(trainer_b, callback_b.sparsifier, first_step=17)  # the resumed run logs on from step 17


def _check_lightning_csv(trainer, sparsifier, first_step):
    """Read back what the callback logged, from Lightning's CSVLogger file (metrics.csv)."""
    import csv

    with open(Path(trainer.logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))

    def logged(key):
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]

    # every topology update at its own step, though log_every_n_steps is 4
    updates = [s for s in range(first_step, 25) if sparsifier.is_update_step(s)]
    assert [step for step, _ in logged("topology/churn")] == updates
    masks = sparsifier.masks
    if updates:  # (RigL's last update, at step 15, comes before the resumed run's steps)
        assert logged("density/net.2.weight")[-1][1] == pytest.approx(float(masks["net.2.weight"].float().mean()))
        assert logged("topology/itop")[-1][1] == pytest.approx(sparsifier.itop_rate())
    assert len(updates) >= 2 or first_step > 1
    assert all(0.0 <= share <= 1.0 for _, share in logged("grad_share/net.0.weight"))
    # per-step scalars through pl_module.log, written every log_every_n_steps as the module's own
    assert [step for step, _ in logged("train/lr")] == [s for s in range(first_step, 25) if (s + 1) % 4 == 0]
    assert logged("train/loss") and logged("train/sparsity")[-1][1] == pytest.approx(sparsifier.current_sparsity())
    # the active weights' magnitudes once per epoch (8 optimizer steps)
    medians = logged("weights/net.0.weight/median")
    assert [step for step, _ in medians] == [s for s in (8, 16, 24) if s >= first_step]
    active = sparsifier.params["net.0.weight"].detach()[masks["net.0.weight"]].abs().double()
    assert medians[-1][1] == pytest.approx(float(active.quantile(0.5)))


def test_lightning_callback_rejects_bad_arguments() -> None:
    pytest.importorskip("lightning.pytorch")
    from sparsetrain.integrations.lightning import SparsifierCallback

    with pytest.raises(ValueError, match="sparsity"):
        SparsifierCallback("granet")
    with pytest.raises(ValueError, match="method='magic'"):
        SparsifierCallback("magic", sparsity=0.5)
    with pytest.raises(ValueError, match="optimizer_index"):
        SparsifierCallback("rigl", sparsity=0.5, optimizer_index=-1)
    assert SparsifierCallback(sparsetrain.SET, sparsity=0.5).method is sparsetrain.SET


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face Trainer
# ---------------------------------------------------------------------------------------------------------------
class _HFNet(nn.Module):
    """A plain module in the Trainer's contract: keyword inputs, a dict with "loss"."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _hf_run(output_dir: Path, method: str, resume: str | bool | None = None):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from sparsetrain.integrations.huggingface import SparsifierTrainerCallback

    x, y = _data()
    dataset = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=8, gradient_accumulation_steps=ACCUMULATE,
        max_steps=24, save_steps=12, learning_rate=0.05, lr_scheduler_type="constant", optim="sgd",
        weight_decay=0.0, logging_steps=1000, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    callback = SparsifierTrainerCallback(method, **METHOD_OPTIONS[method])
    model = _HFNet()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)
    return trainer, callback, model


@pytest.mark.parametrize("method", ["granet", "rigl"])
def test_hf_trainer_callback_counts_optimizer_steps_and_resumes(tmp_path: Path, method: str) -> None:
    pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    trainer, callback, model = _hf_run(tmp_path / "a", method)
    sparsifier = callback.sparsifier
    assert sparsifier.sparse_init == "none"  # a Hugging Face model is usually pretrained: never rescaled by default
    assert trainer.state.global_step == 24 == sparsifier.step_count  # 48 batches, accumulate 2
    assert sparsifier.total_steps == 24
    _assert_exact(sparsifier)
    _check_hf_log_history(trainer, sparsifier)
    saved = load_checkpoint(tmp_path / "a" / "checkpoint-12" / "sparsifier.pt")
    assert saved["step"] == 12 and saved["method"] == method

    # Copy the step-12 checkpoint into a fresh output dir and resume with resume_from_checkpoint=True.
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoint-12", tmp_path / "b" / "checkpoint-12")
    trainer_b, callback_b, model_b = _hf_run(tmp_path / "b", method, resume=True)
    assert trainer_b.state.global_step == 24 == callback_b.sparsifier.step_count
    for name, mask in sparsifier.masks.items():
        assert torch.equal(mask, callback_b.sparsifier.masks[name]), name
    for (name, p), (_, q) in zip(model.named_parameters(), model_b.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def _check_hf_log_history(trainer, sparsifier):
    """What the callback added to the Trainer's log records (``trainer.state.log_history``)."""
    history = trainer.state.log_history

    def logged(key):
        return [(r["step"], r[key]) for r in history if key in r]

    updates = [s for s in range(1, 25) if sparsifier.is_update_step(s)]
    assert [step for step, _ in logged("topology/churn")] == updates and len(updates) >= 4
    for record in history:
        if "topology/churn" in record:  # the Trainer's own record of that step, with its loss
            assert "loss" in record and 0.0 <= record["grad_share/net.0.weight"] <= 1.0
    masks = sparsifier.masks
    assert logged("density/net.2.weight")[-1][1] == pytest.approx(float(masks["net.2.weight"].float().mean()))
    assert logged("topology/itop")[-1][1] == pytest.approx(sparsifier.itop_rate())
    assert logged("train/sparsity")[-1][1] == pytest.approx(sparsifier.current_sparsity())
    medians = logged("weights/net.0.weight/median")  # 8 optimizer steps per epoch
    assert [step for step, _ in medians] == [8, 16, 24]
    active = sparsifier.params["net.0.weight"].detach()[masks["net.0.weight"]].abs().double()
    assert medians[-1][1] == pytest.approx(float(active.quantile(0.5)))


def test_hf_figures_reach_callbacks_after_it_and_those_it_is_moved_ahead_of(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from sparsetrain.integrations.huggingface import SparsifierTrainerCallback

    logging.getLogger("transformers").setLevel(logging.ERROR)

    class Recorder(transformers.TrainerCallback):  # stands for a report_to integration
        def __init__(self):
            self.keys = set()

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.keys |= set(logs or {})

    x, y = _data()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=12,
                                          learning_rate=0.05, optim="sgd", logging_steps=1000, report_to=[],
                                          use_cpu=True, disable_tqdm=True, save_strategy="no")
    before, callback, after = Recorder(), SparsifierTrainerCallback("rigl", sparsity=0.8, update_every=3), Recorder()
    trainer = transformers.Trainer(model=_HFNet(), args=args, train_dataset=[{"x": x[i], "labels": y[i]}
                                                                             for i in range(len(x))],
                                   callbacks=[before, callback, after])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert "topology/churn" in after.keys and "topology/churn" not in before.keys
    trainer.callback_handler.callbacks.remove(callback)  # as the module docstring shows
    trainer.callback_handler.callbacks.insert(0, callback)
    before.keys = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert "topology/churn" in before.keys and "train/sparsity" in before.keys


def test_hf_resume_without_sparsifier_state_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    _hf_run(tmp_path / "a", "rigl")
    (tmp_path / "a" / "checkpoint-12" / "sparsifier.pt").unlink()
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoint-12", tmp_path / "b" / "checkpoint-12")
    with pytest.raises(FileNotFoundError, match="sparsifier.pt"):
        _hf_run(tmp_path / "b", "rigl", resume=True)


def test_build_sparsifier_resume_keeps_restored_weights_and_optimizer_state() -> None:
    """The shared resume path: building draws a fresh random mask, which must not clobber restored values."""
    from sparsetrain.integrations._common import build_sparsifier
    from sparsetrain.optim_state import state_tensors

    model = _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = sparsetrain.RigL(model, optimizer, sparsity=SPARSITY, total_steps=20, update_every=2, seed=1)
    x, y = _data(32)
    for _ in range(7):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        first.step()
    state = first.state_dict()
    weights = {n: p.detach().clone() for n, p in first.params.items()}
    moments = {n: [t.clone() for t in state_tensors(optimizer, p)] for n, p in first.params.items()}
    first.remove()
    resumed = build_sparsifier(sparsetrain.RigL, model, optimizer, 20,
                               dict(sparsity=SPARSITY, update_every=2, seed=99), state)
    assert resumed.step_count == 7
    for name, param in resumed.params.items():
        assert torch.equal(resumed.masks[name], state["masks"][name])
        assert torch.equal(param, weights[name])
        assert all(torch.equal(a, b) for a, b in zip(state_tensors(optimizer, param), moments[name], strict=True))


@pytest.mark.parametrize("method", ["rigl", "snfs", "granet"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_closure_steps_keep_pruned_weights_zero(method: str, optimizer_name: str) -> None:
    """Lightning calls ``optimizer.step(closure=...)``: the gradients appear only inside step()."""
    model = _net()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer_name == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=1e-2))
    options = dict(sparsity=SPARSITY, update_every=4, seed=0)
    if method == "granet":
        options.update(initial_sparsity=0.5, prune_end=0.5)
    sparsifier = sparsetrain.METHODS[method](model, optimizer, total_steps=20, **options)
    x, y = _data(32)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(20):
        if optimizer_name == "sgd":
            optimizer.step(closure=closure)  # keyword, as Lightning passes it
        else:
            optimizer.step(closure)  # positional
        sparsifier.step()
        for name, param in sparsifier.params.items():
            assert not bool(param.detach()[~sparsifier.masks[name]].any()), (sparsifier.step_count, name)
    assert sparsifier.step_count == 20
    if method == "snfs":
        assert all(bool(m.abs().sum() > 0) for m in sparsifier.momentum.values())  # fed from the closure's grads
