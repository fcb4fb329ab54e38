"""Lottery tickets: IMP counts, rewinding, controls, and the on-disk pipeline of Trainer runs (files, resume)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sparsetrain.checkpoint_io import load_checkpoint as load
from sparsetrain.experiment import ExperimentConfig, Trainer, TrainerCallback
from sparsetrain.lottery import (
    layer_rates,
    level_count,
    level_sparsities,
    next_count,
    prune_round,
    prune_to_sparsity,
    random_mask_like,
    rewind,
    snapshot,
)
from sparsetrain.studies.lottery import (
    LotteryConfig,
    curve_table,
    lottery_curve,
    run_lottery,
)


def mlp(seed: int = 0) -> nn.Sequential:
    """Hidden tensor of 125 * 25 = 5^5 weights, output tensor of 25 * 40 = 1000 weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(125, 25), nn.ReLU(), nn.Linear(25, 40))


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


# -- IMP counts ------------------------------------------------------------------------------------------------

def test_layerwise_density_after_k_rounds_is_the_product_of_the_rates_exactly() -> None:
    model = mlp()
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    names = list(weights)
    rates = layer_rates(names, 0.2, 0.1, None)
    assert rates == {"0.weight": 0.2, "2.weight": 0.1}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for k in range(1, 4):
        new = prune_round(weights, masks, rates)
        assert all(bool((new[n] <= masks[n]).all()) for n in names)  # pruned weights stay pruned
        masks = new
        assert counts(masks) == {"0.weight": round(3125 * 0.8**k), "2.weight": round(1000 * 0.9**k)}
        assert counts(masks)["0.weight"] == 3125 * 4**k // 5**k  # exact integers: 2500, 2000, 1600
    # Survivors are the largest magnitudes of each tensor.
    for name in names:
        kept = weights[name].abs()[masks[name]]
        dropped = weights[name].abs()[~masks[name]]
        assert kept.min() >= dropped.max()


def test_rounding_rule_round_per_round_when_the_product_is_not_an_integer() -> None:
    numel, rate = 1001, 0.2
    chain = [numel]
    for _ in range(5):
        chain.append(chain[-1] - -(-2 * chain[-1] // 10))  # c - ceil(0.2 c) in integers
    assert [level_count(numel, rate, k) for k in range(6)] == chain
    assert all(abs(chain[k] - numel * 0.8**k) < k + 1 for k in range(6))
    assert next_count(5, 0.2) == 4 and next_count(4, 0.2) == 3  # ceil(0.8) = 1 weight


def test_global_scope_pools_all_but_the_output_layer() -> None:
    model = mlp(1)
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    model2 = nn.Linear(125, 25)
    weights = {"a": weights["0.weight"], "b": model2.weight.detach() * 3, "out": weights["2.weight"]}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    rates = layer_rates(list(weights), 0.2, 0.1, "out")
    new = prune_round(weights, masks, rates, scope="global", separate=("out",))
    assert new["a"].sum() + new["b"].sum() == 5000  # 6250 * 0.8 over the pool
    assert int(new["b"].sum()) > int(new["a"].sum())  # one threshold: the larger tensor keeps more
    assert int(new["out"].sum()) == 900


def test_one_shot_prunes_to_the_same_counts_as_iterative() -> None:
    model = mlp()
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    rates = layer_rates(list(weights), 0.2, 0.1, None)
    dense = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    iterative = dense
    for _ in range(3):
        iterative = prune_round(weights, iterative, rates)
    one_shot = prune_round(weights, dense, rates, levels=3)
    assert counts(one_shot) == counts(iterative)


# -- rewinding and controls ------------------------------------------------------------------------------------

def test_rewind_restores_saved_values_bit_exactly_at_survivors() -> None:
    model = small_net()
    saved = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.add_(1.0)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if p.dim() == 2}
    rewind(model, saved, masks)
    for name, value in model.state_dict().items():
        if name in masks:
            assert torch.equal(value[masks[name]], saved[name][masks[name]])
            assert bool((value[~masks[name]] == 0).all())
        else:
            assert torch.equal(value, saved[name]), name


def test_random_control_keeps_per_layer_counts_and_differs() -> None:
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(20, 30, generator=g) > 0.7, "b": torch.rand(10, 20, generator=g) > 0.2}
    control = random_mask_like(masks, seed=3)
    assert counts(control) == counts(masks)
    assert any(not torch.equal(control[n], masks[n]) for n in masks)
    assert all(torch.equal(control[n], random_mask_like(masks, seed=3)[n]) for n in masks)


# -- the pipeline on disk: every stage a Trainer run ----------------------------------------------------------

def recipe(epochs: int = 2, **extra: Any) -> ExperimentConfig:
    """Synthetic data with 6 inputs and 3 classes, 4 steps per epoch; an MLP 6-16-3 (96 and 48 pruned weights)."""
    overrides = {"data.name": "synthetic", "data.options.n_train": 64, "data.options.n_test": 32,
                 "data.options.input_shape": [1, 6], "data.options.num_classes": 3, "model.name": "mlp",
                 "model.options.hidden": [16], "train.epochs": epochs, "train.batch_size": 16, "optim.lr": 0.05,
                 "train.eval_batch_size": 32}
    overrides.update(extra)
    return ExperimentConfig().with_overrides(overrides)


class Recorder(TrainerCallback):
    """Records the stages that train (``on_stage``) and each stage's weights when its training starts."""

    def __init__(self, root: Path, fail_at: str | None = None) -> None:
        self.root = root
        self.fail_at = fail_at
        self.stages: list[str] = []
        self.starts: dict[str, dict[str, torch.Tensor]] = {}

    def on_stage(self, run_dir: Path, kept: float, steps: int) -> None:
        tag = run_dir.relative_to(self.root).as_posix()
        if tag == self.fail_at:
            raise KeyboardInterrupt("stopped")
        self.stages.append(tag)

    def on_start(self, trainer: Trainer) -> None:
        self.starts[trainer.run.path.relative_to(self.root).as_posix()] = snapshot(trainer.exp.model)


def test_two_round_run_writes_the_expected_files_and_resumes(tmp_path: Path) -> None:
    config = LotteryConfig(rounds=2, prune_rate=0.5, output_rate=0.25)
    first = Recorder(tmp_path, fail_at="level_2/run")
    with pytest.raises(KeyboardInterrupt):  # the run is killed when level 2 starts training
        run_lottery(recipe(), config, tmp_path, callback=first, on_stage=first.on_stage)
    assert first.stages == ["level_0/run", "level_1/run", "level_1/reinit", "level_1/random"]

    second = Recorder(tmp_path)
    rows = run_lottery(recipe(), config, tmp_path, callback=second, on_stage=second.on_stage)
    assert second.stages == ["level_2/run", "level_2/reinit", "level_2/random"]
    for level in range(3):
        where = tmp_path / f"level_{level}"
        for name in ("masks.pt", "sparsity.json", "sparsity.txt", "run/summary.json", "run/checkpoint.pt"):
            assert (where / name).is_file(), where / name
        for control in ("reinit", "random"):
            assert ((where / control / "summary.json").is_file()) == (level > 0)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "experiment.yaml", "level_0", "level_1",
                                                     "level_2", "curve.md", "curve.png"}
    assert not list(tmp_path.rglob("*.tmp"))

    # Level 2 started from the rewind point (the dense run's state before its first step) under its mask.
    init = load(tmp_path / "level_0" / "run" / "checkpoints" / "step_0.pt")["model"]
    masks2 = load(tmp_path / "level_2" / "masks.pt")
    start = second.starts["level_2/run"]
    for name, mask in masks2.items():
        assert torch.equal(start[name][mask], init[name][mask])
        assert bool((start[name][~mask] == 0).all())
    branch = json.loads((tmp_path / "level_2" / "run" / "branch.json").read_text())
    assert branch["source"]["take"] == ["data", "model", "position"] and branch["step"] == 0
    # Counts: 1st layer 96 -> 48 -> 24, output 48 -> 36 -> 27.
    assert counts(masks2) == {"layers.0.weight": 24, "layers.2.weight": 27}
    report = json.loads((tmp_path / "level_2" / "sparsity.json").read_text())
    assert report["nonzeros"] == 51 and report["numel"] == 144
    assert counts(load(tmp_path / "level_2" / "random_masks.pt")) == counts(masks2)
    assert counts(load(tmp_path / "level_2" / "random" / "masks.pt")) == counts(masks2)  # trained with it, fixed
    reinit_start = second.starts["level_2/reinit"]
    assert not torch.equal(reinit_start["layers.0.weight"], start["layers.0.weight"])

    assert [r["level"] for r in rows] == [0, 1, 2]
    assert rows[2]["remaining"] == pytest.approx(51 / 144)
    assert rows[0]["reinit"] is None and rows[2]["reinit"] is not None
    assert rows == lottery_curve(tmp_path)
    assert "| 2 | 35.42% |" in curve_table(rows)

    third = Recorder(tmp_path)
    run_lottery(recipe(), config, tmp_path, on_stage=third.on_stage)  # everything done: nothing retrains
    assert third.stages == []
    with pytest.raises(ValueError, match="prune_rate"):
        run_lottery(recipe(), LotteryConfig(rounds=2, prune_rate=0.3, output_rate=0.25), tmp_path)
    with pytest.raises(ValueError, match="another recipe"):  # other init (train.seed): the run is not resumed
        run_lottery(recipe(**{"train.seed": 9}), config, tmp_path)


def test_rewind_to_step_k_keeps_the_dense_run_after_k_steps(tmp_path: Path) -> None:
    k = 3
    run_lottery(recipe(), LotteryConfig(rounds=1, rewind_step=k, controls=()), tmp_path / "lottery", plots=False)
    saved = load(tmp_path / "lottery" / "level_0" / "run" / "checkpoints" / f"step_{k}.pt")
    assert saved["step"] == k
    alone = Trainer(recipe().dense_baseline(), run_dir=tmp_path / "dense", keep_steps=(k,), plots=False)
    alone.fit_until(step=k)
    expected = load(alone.run.kept_checkpoint(k))
    for name, value in expected["model"].items():  # the weights after k steps of the dense run, bit for bit
        assert torch.equal(saved["model"][name], value), name
    level = json.loads((tmp_path / "lottery" / "level_1" / "run" / "summary.json").read_text())
    assert level["branch"]["step"] == k and level["total_steps"] == 8  # it trains the remaining 8 - k steps
    records = [json.loads(line) for line in
               (tmp_path / "lottery" / "level_1" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]


class KillAt(TrainerCallback):
    """Raises after optimizer step ``step`` of the run in ``run_dir`` (a kill mid-level)."""

    def __init__(self, run_dir: Path, step: int) -> None:
        self.run_dir, self.step = run_dir, step

    def on_step(self, trainer: Trainer) -> None:
        if trainer.run.path == self.run_dir and trainer.step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def _fingerprint(root: Path) -> dict[str, Any]:
    """Every stage's final masks and per-epoch metrics (wall time left out)."""
    out = {}
    for masks in sorted(root.rglob("run/masks.pt")) + sorted(root.rglob("reinit/masks.pt")):
        records = [json.loads(line) for line in (masks.parent / "metrics.jsonl").read_text().splitlines()]
        out[masks.parent.relative_to(root).as_posix()] = (
            {n: m.tolist() for n, m in load(masks).items()}, [{k: v for k, v in r.items() if k != "time"}
                                                               for r in records])
    return out


def test_a_level_killed_mid_level_resumes_mid_level_to_the_same_result(tmp_path: Path) -> None:
    config = LotteryConfig(rounds=1, prune_rate=0.5, controls=("reinit",), rewind_step=2)
    whole = run_lottery(recipe(epochs=3), config, tmp_path / "whole", plots=False)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # level 1 starts at step 2; killed at step 10, in its third epoch
        run_lottery(recipe(epochs=3), config, killed, callback=KillAt(killed / "level_1" / "run", 10), plots=False)
    assert not (killed / "level_1" / "run" / "summary.json").exists()
    assert load(killed / "level_1" / "run" / "checkpoint.pt")["step"] == 8  # the end of its second epoch
    resumed = run_lottery(recipe(epochs=3), config, killed, plots=False)
    summary = json.loads((killed / "level_1" / "run" / "summary.json").read_text())
    assert summary["resumed"] is True  # it continued from step 8, not from the level's start
    assert resumed == whole
    assert _fingerprint(killed) == _fingerprint(tmp_path / "whole")


def test_a_lottery_directory_of_the_old_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "level_0").mkdir()
    (tmp_path / "level_0" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="older sparsetrain"):
        run_lottery(recipe(), LotteryConfig(rounds=1), tmp_path)


# -- the command line ------------------------------------------------------------------------------------------

def test_cli_lottery_runs_the_harness_recipe_and_skips_finished_stages(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    args = ["lottery", "--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=64",
            "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
            "--epochs", "1", "--batch-size", "32", "--rounds", "1", "--prune-rate", "0.5", "--controls", "random",
            "--rewind-step", "2", "--runs-dir", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "training level_0" in first.err and "training level_1/random" in first.err
    (run,) = tmp_path.glob("lottery-*/seed_0")
    for name in ("config.json", "experiment.yaml", "level_0/run/checkpoints/step_2.pt", "curve.md", "curve.png",
                 "level_0/run/summary.json", "level_1/masks.pt", "level_1/run/summary.json",
                 "level_1/random/summary.json"):
        assert (run / name).is_file(), name
    assert not (run / "level_1" / "reinit").exists()
    metrics = json.loads((run / "level_1" / "run" / "summary.json").read_text())
    assert metrics["total_steps"] - metrics["branch"]["step"] == 4 - 2  # 128 / 32 = 4 steps, rewound to step 2
    assert "| 1 | " in first.out and "| 0 | 100.00% |" in first.out

    assert main(args) == 0  # everything done: nothing retrains
    assert "training" not in capsys.readouterr().err
    assert main([*args, "--method", "rigl"]) == 2
    assert "sparse section is not used" in capsys.readouterr().err


# -- rounds by target sparsity, biases pruned with their weights, ranking at a chosen step ----------------------

def test_existing_lottery_runs_keep_their_names() -> None:
    """The options added later are left out of the identity while at their defaults: the directories named before
    them (these hashes were computed before the options existed) are found again."""
    from sparsetrain.studies.lottery import lottery_identity

    base = ExperimentConfig()
    assert lottery_identity(base, LotteryConfig()) == "c6f34f89"
    assert lottery_identity(base, LotteryConfig(rounds=5, prune_rate=0.5427, output_rate=None, scope="global",
                                                controls=("reinit",))) == "480d2844"
    assert lottery_identity(base, LotteryConfig(rewind_step=10, one_shot=True)) == "a19a374d"
    assert lottery_identity(base, LotteryConfig(prune_biases=True)) != "c6f34f89"
    assert lottery_identity(base.with_overrides({"model.name": "mine:make"}), LotteryConfig()) != "c6f34f89"


def test_schedules_give_each_levels_sparsity() -> None:
    assert level_sparsities("geometric", 3) is None
    assert level_sparsities("linear", 4, final_sparsity=0.8) == pytest.approx((0.2, 0.4, 0.6, 0.8))
    assert level_sparsities("targets", 2, sparsities=(0.5, 0.9)) == (0.5, 0.9)
    config = LotteryConfig(sparsities=[0.5, 0.75, 0.9])
    assert (config.schedule, config.rounds, config.prune_rate) == ("targets", 3, None)
    assert LotteryConfig(final_sparsity=0.9).schedule == "linear"
    assert (LotteryConfig().prune_rate, LotteryConfig().rounds) == (0.2, 3)
    assert LotteryConfig.from_dict(config.to_dict()) == config


def reference_unit_top(weights: dict[str, torch.Tensor], members: tuple[str, ...], keep: int) -> dict:
    """The ``keep`` largest |values| of the members' entries concatenated (ties to the lowest index)."""
    flat = torch.cat([weights[m].abs().reshape(-1) for m in members])
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:keep]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order] = True
    out, start = {}, 0
    for m in members:
        n = weights[m].numel()
        out[m] = chosen[start:start + n].view_as(weights[m])
        start += n
    return out


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_a_bias_is_ranked_with_its_weight_in_one_vector(scope: str) -> None:
    model = mlp()
    with torch.no_grad():  # make some biases large, so that they compete with the weights
        model[0].bias.mul_(4.0)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    units = {"0.weight": ("0.weight", "0.bias"), "2.weight": ("2.weight", "2.bias")}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    rates = layer_rates(["0.weight", "2.weight"], 0.5, 0.25, None)
    new = prune_round(weights, masks, rates, scope=scope, separate=("2.weight",), units=units)
    assert set(new) == set(weights)  # masks stay per tensor, biases included
    out_keep = next_count(25 * 40 + 40, 0.25)
    assert torch.equal(torch.cat([new["2.weight"].reshape(-1), new["2.bias"]]),
                       torch.cat([v.reshape(-1) for v in reference_unit_top(weights, units["2.weight"],
                                                                            out_keep).values()]))
    first = reference_unit_top(weights, units["0.weight"], next_count(125 * 25 + 25, 0.5))
    assert all(torch.equal(new[n], first[n]) for n in units["0.weight"])  # one pooled unit = the layer's unit
    assert 0 < int(new["0.bias"].sum()) < 25  # some biases were pruned and some kept, ranked with the weights


def test_target_sparsities_give_exact_counts_per_tensor_and_pooled() -> None:
    model = mlp()
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    dense = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    layer = prune_to_sparsity(weights, dense, 0.6, separate={"2.weight": 900})
    assert counts(layer) == {"0.weight": round(0.4 * 3125), "2.weight": 900}
    pooled = prune_to_sparsity(weights, dense, 0.6, scope="global")
    assert sum(counts(pooled).values()) == round(0.4 * 4125)
    again = prune_to_sparsity(weights, layer, 0.8)  # from a sparser mask: only its active weights can stay
    assert all(bool((again[n] <= layer[n]).all()) for n in weights)
    assert counts(again) == {"0.weight": 625, "2.weight": 200}


def test_a_target_schedule_with_biases_and_ranking_at_a_step_on_disk(tmp_path: Path) -> None:
    """Levels at 50% then 75% of the pooled weights and biases (output layer at its own 25% per round), each
    ranked by the previous level's weights at step 2 (kept as a checkpoint there), no validation split."""
    config = LotteryConfig(sparsities=(0.5, 0.75), scope="global", output_rate=0.25, prune_biases=True,
                           rank_step=2, rewind_step=1, controls=("random",))
    recipe_ = recipe(**{"data.val_fraction": 0.0, "optim.lr": 0.5})
    run_lottery(recipe_, config, tmp_path, plots=False)
    for level in (0, 1, 2):
        assert (tmp_path / f"level_{level}" / "run" / "checkpoints" / "step_2.pt").is_file()
    masks1, masks2 = load(tmp_path / "level_1" / "masks.pt"), load(tmp_path / "level_2" / "masks.pt")
    assert set(masks1) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}
    hidden = ("layers.0.weight", "layers.0.bias")
    assert sum(int(masks2[n].sum()) for n in hidden) == round(0.25 * (96 + 16))  # the pooled target
    assert sum(int(masks2[n].sum()) for n in ("layers.2.weight", "layers.2.bias")) == level_count(48 + 3, 0.25, 2)
    # level 2 is level 1's mask pruned by level 1's weights at step 2, not by its final weights
    at_step = load(tmp_path / "level_1" / "run" / "checkpoints" / "step_2.pt")["model"]
    final = load(tmp_path / "level_1" / "run" / "checkpoint.pt")["model"]
    units = {"layers.0.weight": hidden, "layers.2.weight": ("layers.2.weight", "layers.2.bias")}
    own = {"layers.2.weight": level_count(51, 0.25, 2)}
    expected = prune_to_sparsity(at_step, masks1, 0.75, scope="global", separate=own, units=units)
    assert all(torch.equal(masks2[n], expected[n]) for n in masks2)
    by_final = prune_to_sparsity(final, masks1, 0.75, scope="global", separate=own, units=units)
    assert not all(torch.equal(masks2[n], by_final[n]) for n in masks2)  # the step made a difference
    summary = json.loads((tmp_path / "level_2" / "run" / "summary.json").read_text())
    assert summary["best_by"] == "last epoch (no validation split)" and summary["final_val_acc"] is None
    trained = load(tmp_path / "level_2" / "run" / "masks.pt")
    assert torch.equal(trained["layers.0.bias"], masks2["layers.0.bias"])  # the bias mask held during training


def test_a_missing_rank_checkpoint_is_replayed_to_the_same_ticket(tmp_path: Path) -> None:
    config = LotteryConfig(rounds=1, prune_rate=0.5, rank_step=3, controls=())
    run_lottery(recipe(), config, tmp_path / "whole", plots=False)
    run_lottery(recipe(), config, tmp_path / "replayed", stop_after=0, plots=False)
    (tmp_path / "replayed" / "level_0" / "run" / "checkpoints" / "step_3.pt").unlink()
    run_lottery(recipe(), config, tmp_path / "replayed", plots=False)
    whole, replayed = load(tmp_path / "whole" / "level_1" / "masks.pt"), load(tmp_path / "replayed" / "level_1" /
                                                                            "masks.pt")
    assert all(torch.equal(whole[n], replayed[n]) for n in whole)
    assert (tmp_path / "replayed" / "level_0" / "run" / "checkpoints" / "step_3.pt").is_file()


def test_cli_lottery_on_a_users_model_with_biases_and_no_validation_split(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    (tmp_path / "lottery_user_model.py").write_text(
        "from torch import nn\n\n"
        "def build(input_shape, num_classes, width=16):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], width), nn.ReLU(),\n"
        "                         nn.Linear(width, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    args = ["lottery", "--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=64",
            "--data-option", "input_shape=[1, 12]", "--model", "lottery_user_model:build", "--model-option",
            "width=8", "--epochs", "1", "--batch-size", "32", "--val-fraction", "0", "--sparsities", "0.5",
            "--prune-biases", "--controls", "reinit", "--runs-dir", "runs", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "no validation split" in err
    (run,) = Path("runs").glob("lottery-*/seed_0")
    masks = load(run / "level_1" / "masks.pt")
    assert set(masks) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert sum(int(masks[n].sum()) for n in ("1.weight", "1.bias")) == round(0.5 * (12 * 8 + 8))
    summary = json.loads((run / "level_1" / "reinit" / "summary.json").read_text())
    assert summary["model"] == "lottery_user_model:build"
    assert json.loads((run / "config.json").read_text())["sparsities"] == [0.5]


# -- N:M ---------------------------------------------------------------------------------------------------------

def test_imp_under_a_pattern_applies_the_rate_to_each_groups_count_down_to_n() -> None:
    from sparsetrain.nm import is_nm, nm_layouts, nm_mask
    from sparsetrain.masks import select_prunable

    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))
    params = select_prunable(model)
    layouts = nm_layouts(model, params, "1:8")
    weights = {n: p.detach() for n, p in params.items()}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    seen = []
    for _ in range(6):  # 8 -> 6 -> 4 -> 3 -> 2 -> 1 -> 1 at p = 0.2 (each round removes ceil(0.2 n) >= 1)
        previous = masks
        masks = prune_round(weights, masks, {n: 0.2 for n in masks}, pattern="1:8", layouts=layouts)
        n = int(masks["0.weight"].sum()) * 8 // masks["0.weight"].numel()
        seen.append(n)
        assert is_nm(masks["0.weight"], f"{n}:8") and is_nm(masks["2.weight"], f"{n}:8")
        expected = nm_mask(weights["0.weight"].abs(), f"{n}:8", eligible=previous["0.weight"])
        assert torch.equal(masks["0.weight"], expected)
    assert seen == [6, 4, 3, 2, 1, 1]
    one_shot = prune_round(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()},
                           {n: 0.2 for n in weights}, pattern="1:8", layouts=layouts, levels=3)
    assert counts(one_shot) == {"0.weight": 3 * 16 * 24 // 8, "2.weight": 3 * 24 * 8 // 8}
    with pytest.raises(ValueError, match="scope='layer'"):
        prune_round(weights, masks, {n: 0.2 for n in masks}, scope="global", pattern="1:8", layouts=layouts)


def test_lottery_config_pattern_is_checked_and_left_out_of_unstructured_configs() -> None:
    assert "pattern" not in LotteryConfig().to_dict()
    assert LotteryConfig.from_dict(LotteryConfig().to_dict()) == LotteryConfig()
    config = LotteryConfig(pattern=" 2 : 4")
    assert config.pattern == "2:4" and LotteryConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="scope='global' is not allowed with pattern='2:4'"):
        LotteryConfig(pattern="2:4", scope="global")
    with pytest.raises(ValueError, match="pattern='3:3' is not allowed"):
        LotteryConfig(pattern="3:3")


def test_lottery_run_under_a_pattern_keeps_the_pattern_in_tickets_and_the_random_control(tmp_path: Path) -> None:
    from sparsetrain.nm import is_nm

    config = LotteryConfig(rounds=2, prune_rate=0.5, output_rate=None, pattern="1:4")
    run_lottery(recipe(epochs=1), config, tmp_path, plots=False)
    first, last = list(load(tmp_path / "level_1" / "masks.pt"))  # the MLP 6-16-3: weights of 6 and 16 inputs
    for level, n in ((1, 2), (2, 1)):  # 4 -> 2 -> 1 of every 4 at p = 0.5
        ticket = load(tmp_path / f"level_{level}" / "masks.pt")
        control = load(tmp_path / f"level_{level}" / "random_masks.pt")
        assert is_nm(ticket[last], f"{n}:4") and is_nm(control[last], f"{n}:4")
        assert not torch.equal(ticket[last], control[last])
        assert bool(ticket[first].all()) and bool(control[first].all())  # 6 inputs: kept dense


def test_cli_lottery_takes_a_pattern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from sparsetrain.cli import main
    from sparsetrain.nm import is_nm

    monkeypatch.chdir(tmp_path)
    args = ["lottery", "--data", "synthetic", "--data-option", "n_train=64", "--data-option", "n_test=32",
            "--data-option", "input_shape=[1, 8]", "--data-option", "num_classes=3", "--model", "mlp",
            "--model-option", "hidden=[16]", "--epochs", "1", "--batch-size", "16", "--rounds", "1",
            "--prune-rate", "0.5", "--output-rate", "none", "--controls", "--pattern", "1:4", "--no-progress"]
    assert main(args) == 0
    (ticket_file,) = tmp_path.glob("runs/lottery-*/seed_0/level_1/masks.pt")
    assert all(is_nm(mask, "2:4") for mask in load(ticket_file).values())  # 4 -> 2 of every 4 at p = 0.5
    assert "1:4" in json.loads((ticket_file.parents[1] / "config.json").read_text())["pattern"]


@pytest.mark.parametrize("extra, refused", [({"sparsities": (0.5, 0.8)}, "schedule='targets'"),
                                            ({"final_sparsity": 0.8}, "schedule='linear'"),
                                            ({"prune_biases": True}, "prune_biases=True")])
def test_a_pattern_refuses_what_it_cannot_follow(extra, refused):
    """An N:M lottery runs the geometric schedule on weights only: target schedules and biases are refused by name."""
    with pytest.raises(ValueError, match=re.escape(refused)):
        LotteryConfig(pattern="2:4", **extra)
