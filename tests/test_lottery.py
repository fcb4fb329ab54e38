"""Lottery tickets: IMP counts, rewinding, controls, and the on-disk pipeline (files, resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sparsetrain.lottery import (
    LotteryConfig,
    curve_table,
    layer_rates,
    level_count,
    lottery_curve,
    make_train_fn,
    next_count,
    prune_round,
    random_mask_like,
    rewind,
    run_lottery,
    snapshot,
)
from sparsetrain.lottery.rewind import load


def mlp(seed: int = 0) -> nn.Sequential:
    """Hidden tensor of 125 * 25 = 5^5 weights, output tensor of 25 * 40 = 1000 weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(125, 25), nn.ReLU(), nn.Linear(25, 40))


def toy_data(n: int = 64, n_in: int = 6, classes: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return [(x[i:i + 16], y[i:i + 16] % classes) for i in range(0, n, 16)]


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


# -- the pipeline on disk --------------------------------------------------------------------------------------

class Recorder:
    """A train function that records every call and trains with the real default loop."""

    def __init__(self, data: list, steps: int = 8, fail_at: str | None = None) -> None:
        self.inner = make_train_fn(data, data, steps=steps, lr=0.05)
        self.calls: list[tuple[str, int, dict[str, torch.Tensor]]] = []
        self.fail_at = fail_at

    def __call__(self, model: nn.Module, masks: Any, level_dir: Path, **kwargs: Any) -> dict[str, Any]:
        tag = str(Path(level_dir.parent.name) / level_dir.name)
        if tag == self.fail_at:
            raise KeyboardInterrupt("stopped")
        self.calls.append((tag, kwargs.get("start_step", 0), snapshot(model)))
        return self.inner(model, masks, level_dir, **kwargs)


def test_two_round_run_writes_the_expected_files_and_resumes(tmp_path: Path) -> None:
    data = toy_data()
    config = LotteryConfig(rounds=2, prune_rate=0.5, output_rate=0.25)
    first = Recorder(data, fail_at=f"{tmp_path.name}/level_2")
    with pytest.raises(KeyboardInterrupt):  # the run is killed when level 2 starts training
        run_lottery(small_net(), config, first, tmp_path)
    assert [c[0].split("/")[-1] for c in first.calls] == ["level_0", "level_1", "reinit", "random"]

    second = Recorder(data)
    rows = run_lottery(small_net(seed=9), config, second, tmp_path)  # other init: init.pt wins on resume
    assert [c[0].split("/")[-1] for c in second.calls] == ["level_2", "reinit", "random"]
    for level in range(3):
        where = tmp_path / f"level_{level}"
        for name in ("masks.pt", "sparsity.json", "sparsity.txt", "metrics.json", "model.pt"):
            assert (where / name).is_file(), where / name
        for control in ("reinit", "random"):
            assert ((where / control / "metrics.json").is_file()) == (level > 0)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "init.pt", "rewind.pt", "level_0", "level_1",
                                                     "level_2"}
    assert not list(tmp_path.rglob("*.tmp"))

    # Level 2 started from the rewind point (the saved init) under its mask.
    init = load(tmp_path / "init.pt")
    masks2 = load(tmp_path / "level_2" / "masks.pt")
    start = second.calls[0][2]
    for name, mask in masks2.items():
        assert torch.equal(start[name][mask], init[name][mask])
        assert bool((start[name][~mask] == 0).all())
    # Counts: 1st layer 96 -> 48 -> 24, output 48 -> 36 -> 27.
    assert counts(masks2) == {"0.weight": 24, "3.weight": 27}
    report = json.loads((tmp_path / "level_2" / "sparsity.json").read_text())
    assert report["nonzeros"] == 51 and report["numel"] == 144
    assert counts(load(tmp_path / "level_2" / "random" / "masks.pt")) == counts(masks2)
    reinit_start = second.calls[1][2]
    assert not torch.equal(reinit_start["0.weight"], start["0.weight"])

    assert [r["level"] for r in rows] == [0, 1, 2]
    assert rows[2]["remaining"] == pytest.approx(51 / 144)
    assert rows[0]["reinit"] is None and rows[2]["reinit"] is not None
    assert rows == lottery_curve(tmp_path)
    assert "| 2 | 35.42% |" in curve_table(rows)

    third = Recorder(data)
    run_lottery(small_net(), config, third, tmp_path)  # everything done: nothing retrains
    assert third.calls == []
    with pytest.raises(ValueError, match="prune_rate"):
        run_lottery(small_net(), LotteryConfig(rounds=2, prune_rate=0.3, output_rate=0.25), third, tmp_path)


def test_rewind_to_step_k_saves_the_weights_after_k_steps(tmp_path: Path) -> None:
    k = 3

    def train(model: nn.Module, masks: Any, level_dir: Path, *, start_step: int = 0, on_step: Any = None
              ) -> dict[str, Any]:
        history = getattr(train, "history", [])
        for step in range(start_step, 6):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
                    for name, mask in masks.items():
                        if model.get_parameter(name) is p:
                            p.mul_(mask)
            if on_step is not None:
                on_step(step + 1, model)
        history.append((level_dir.name, start_step))
        train.history = history  # type: ignore[attr-defined]
        return {"accuracy": 0.0}

    model = small_net()
    init = snapshot(model)
    run_lottery(model, LotteryConfig(rounds=1, rewind_step=k, controls=()), train, tmp_path)
    saved = load(tmp_path / "rewind.pt")
    expected = init["0.weight"].clone()
    for _ in range(k):
        expected += 1.0
    assert torch.equal(saved["0.weight"], expected)
    assert torch.equal(saved["1.running_mean"], init["1.running_mean"])  # buffers saved as they were
    assert train.history == [("level_0", 0), ("level_1", k)]  # type: ignore[attr-defined]
    assert all(torch.equal(v, init[n]) for n, v in model.state_dict().items())  # caller's model untouched


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
    for name in ("config.json", "experiment.yaml", "init.pt", "rewind.pt", "curve.md", "curve.png",
                 "level_0/metrics.json", "level_1/masks.pt", "level_1/metrics.json", "level_1/random/metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "level_1" / "reinit").exists()
    metrics = json.loads((run / "level_1" / "metrics.json").read_text())
    assert metrics["steps"] == 4 - 2  # 128 samples / 32 per batch = 4 steps, rewound to step 2
    assert "| 1 | " in first.out and "| 0 | 100.00% |" in first.out

    assert main(args) == 0  # everything done: nothing retrains
    assert "training" not in capsys.readouterr().err
    assert main([*args, "--method", "rigl"]) == 2
    assert "sparse section is not used" in capsys.readouterr().err


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

    def net(seed: int = 0) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    config = LotteryConfig(rounds=2, prune_rate=0.5, output_rate=None, pattern="1:4")
    run_lottery(net(), config, make_train_fn(toy_data(), toy_data(), steps=4, lr=0.05), tmp_path)
    for level, n in ((1, 2), (2, 1)):  # 4 -> 2 -> 1 of every 4 at p = 0.5
        ticket = load(tmp_path / f"level_{level}" / "masks.pt")
        control = load(tmp_path / f"level_{level}" / "random" / "masks.pt")
        assert is_nm(ticket["2.weight"], f"{n}:4") and is_nm(control["2.weight"], f"{n}:4")
        assert not torch.equal(ticket["2.weight"], control["2.weight"])
        assert bool(ticket["0.weight"].all()) and bool(control["0.weight"].all())  # 6 inputs: kept dense
