"""Pruning plasticity: magnitude masks with known answers, the regenerating sparsifier, and a study on tiny data
whose table holds the expected cells, numbers consistent with the stored runs, cells configured as GraNet's
neuroregeneration (run-wide drop fraction, ΔT as a fraction of the run), the learning-rate control, seeds
summarised, and stages that are skipped. The masks against GraNet's official procedure: test_plasticity_reference."""

import csv
import io
import json

import pytest
import torch
from torch import nn

from sparsetrain import GraNet
from sparsetrain.analysis.plasticity import (
    format_plasticity,
    magnitude_masks,
    summarize_plasticity,
)
from sparsetrain.cli import main
from sparsetrain.experiment import ExperimentConfig, Trainer
from sparsetrain.experiment.checkpoint import load_checkpoint
from sparsetrain.studies.plasticity import (
    GRANET_UPDATE_FRACTION,
    PlasticityCell,
    PlasticityStudy,
    default_prune_epochs,
    late_decay_config,
    lr_decay_epochs,
    plasticity_cells,
    regrowth_interval,
    run_plasticity,
    study_dir,
)


def tiny(**extra):
    overrides = {
        "data.name": "synthetic", "data.options.n_train": 200, "data.options.n_test": 64,
        "data.options.input_shape": [1, 12], "model.name": "mlp", "model.options.hidden": [16],
        "train.epochs": 4, "train.batch_size": 50, "optim.lr_schedule": "multistep", "optim.milestones": [0.5],
        "train.eval_batch_size": 64,
    }
    overrides.update(extra)
    return ExperimentConfig().with_overrides(overrides)


def test_global_magnitude_masks_keep_the_largest_over_all_layers():
    params = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([[-4.0, 0.3, 2.0]])}
    masks = magnitude_masks(params, 0.5, "global")  # keep int(7 * 0.5) = 3: |-5|, |-4|, |3|
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [[True, False, False]]


def test_per_layer_magnitude_masks_prune_each_layer_at_the_rate():
    params = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([[-4.0, 0.3, 2.0, 0.01]])}
    masks = magnitude_masks(params, 0.5, "layer")
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [[True, False, True, False]]


def test_magnitude_masks_count_the_nonzero_weights_only():
    params = {"a": torch.tensor([[0.0, -5.0, 0.0, 1.0, 2.0, 3.0]])}  # 4 nonzeros: prune ceil(0.5 * 4) = 2
    for scope in ("layer", "global"):
        assert magnitude_masks(params, 0.5, scope)["a"].tolist() == [[False, True, False, False, False, True]]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, True, "0.5"])
def test_magnitude_masks_refuse_bad_rates(bad):
    with pytest.raises(ValueError, match="rate"):
        magnitude_masks({"a": torch.ones(2, 2)}, bad)


def test_magnitude_masks_refuse_a_bad_scope():
    with pytest.raises(ValueError, match="scope='uniform'"):
        magnitude_masks({"a": torch.ones(2, 2)}, 0.5, "uniform")


def test_cells_are_every_combination_in_order_and_named():
    cells = plasticity_cells([5, 2], [0.8, 0.2], (False, True))
    assert [(c.epoch, c.rate, c.regeneration) for c in cells] == [
        (2, 0.2, False), (2, 0.2, True), (2, 0.8, False), (2, 0.8, True),
        (5, 0.2, False), (5, 0.2, True), (5, 0.8, False), (5, 0.8, True)]
    assert cells[1].name == "t2-r0.2-regen" and cells[2].name == "t2-r0.8-fixed"
    with pytest.raises(ValueError, match="epoch"):
        plasticity_cells([0], [0.5])
    with pytest.raises(TypeError, match="regeneration"):
        plasticity_cells([1], [0.5], ["yes"])


def test_prune_points_bracket_each_lr_decay():
    config = tiny(**{"train.epochs": 20, "optim.milestones": [0.5, 0.75]})
    assert lr_decay_epochs(config) == [10.0, 15.0]
    assert default_prune_epochs(config) == (2, 9, 11, 14, 16)
    cosine = tiny(**{"train.epochs": 12, "optim.lr_schedule": "cosine"})
    assert lr_decay_epochs(cosine) == [] and default_prune_epochs(cosine) == (1, 2, 4, 6, 8, 10)


def test_regeneration_keeps_each_layer_count_and_moves_the_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    masks = magnitude_masks(params, 0.75, "layer")
    sparsifier = GraNet(model, optimizer, masks=masks, total_steps=20, update_every=5, prune_end=0)
    start = {n: m.clone() for n, m in sparsifier.masks.items()}
    assert sparsifier.current_sparsity() == pytest.approx(0.75)
    for _ in range(10):
        loss = model(torch.randn(32, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsifier.step()
    for name, mask in sparsifier.masks.items():
        assert int(mask.sum()) == int(start[name].sum())  # zero-cost: counts unchanged
        assert bool((params[name].detach()[~mask] == 0).all())
    assert any(not torch.equal(sparsifier.masks[n], start[n]) for n in start)  # the topology moved
    assert sparsifier.itop_rate() > 0.25


def test_regrowth_interval_is_granets_fraction_of_the_run():
    assert GRANET_UPDATE_FRACTION == pytest.approx(1000 / 56320)
    assert regrowth_interval(GRANET_UPDATE_FRACTION, 160 * 352) == 1000  # GraNet's CIFAR run: ΔT = 1000
    assert regrowth_interval(GRANET_UPDATE_FRACTION, 580) == 10  # 20 epochs of MNIST-1D at batch 128
    assert regrowth_interval(GRANET_UPDATE_FRACTION, 16) == 1  # at least one step
    assert regrowth_interval(7, 580) == 7 and regrowth_interval(0.1, 580) == 58
    for bad in (0, 0.0, -1, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="regrow_every"):
            regrowth_interval(bad, 100)


def test_late_decay_moves_the_milestones_later():
    config = tiny(**{"train.epochs": 20, "optim.milestones": [0.5, 0.75]})
    control = late_decay_config(config, [0.85, 0.95])
    assert control.optim.milestones == [0.85, 0.95] and lr_decay_epochs(control) == [17.0, 19.0]
    assert control.train == config.train and control.model == config.model
    with pytest.raises(ValueError, match="one milestone per decay"):
        late_decay_config(config, [0.85])
    with pytest.raises(ValueError, match="at or after the recipe's"):
        late_decay_config(config, [0.4, 0.95])
    with pytest.raises(ValueError, match="multistep"):
        late_decay_config(tiny(**{"optim.lr_schedule": "cosine"}), [0.9])


def test_summary_is_mean_and_std_over_seeds():
    rows = [{"schedule": "recipe", "seed": s, "epoch": 2, "lr": 0.1, "rate": 0.9, "regeneration": True, "acc": a,
             "dense_acc": 0.8, "drop": (a - 0.8) / 0.8} for s, a in ((0, 0.6), (1, 0.7), (2, 0.8))]
    rows.append({**rows[0], "schedule": "late-decay", "acc": None, "drop": None})
    recipe, late = summarize_plasticity(rows)
    assert recipe["n"] == 3 and recipe["acc"] == pytest.approx(0.7) and recipe["acc_std"] == pytest.approx(0.1)
    assert recipe["drop"] == pytest.approx(-0.125) and recipe["drop_std"] == pytest.approx(0.125)
    assert late["schedule"] == "late-decay" and late["n"] == 0 and late["drop"] is None
    assert "| recipe | 2 | 0.1 | 0.9 | yes | 3 | 70.00 ± 10.00 | 80.00 | -12.50 ± 12.50 |" in \
        format_plasticity(rows, "markdown")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("plasticity")
    rows = run_plasticity(tiny(), out, prune_epochs=[1, 3], rates=[0.5, 0.9], regeneration=(False, True),
                          regrow_every=2)
    return study_dir(out, "recipe", 0), rows


def test_study_table_has_every_cell_and_consistent_numbers(study):
    out, rows = study
    assert [(r["epoch"], r["rate"], r["regeneration"]) for r in rows] == [
        (1, 0.5, False), (1, 0.5, True), (1, 0.9, False), (1, 0.9, True),
        (3, 0.5, False), (3, 0.5, True), (3, 0.9, False), (3, 0.9, True)]
    dense = json.loads(next((out / "runs").glob("dense-*/seed_0/summary.json")).read_text())
    for row in rows:
        cell = PlasticityCell(row["epoch"], row["rate"], row["regeneration"])
        summary = json.loads((out / "cells" / cell.name / "summary.json").read_text())
        assert row["acc"] == summary["final_acc"]
        assert row["dense_acc"] == dense["final_acc"]
        assert row["drop"] == pytest.approx((summary["final_acc"] - dense["final_acc"]) / dense["final_acc"])
        assert row["diff"] == pytest.approx(summary["final_acc"] - dense["final_acc"])
        records = [json.loads(line) for line in (out / "cells" / cell.name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == list(range(row["epoch"] + 1, 5))  # trained on from t to the end
        assert summary["total_steps"] == 16 and records[-1]["step"] == 16
    # lr after t: 0.05 before the decay at epoch 2, 0.005 after it
    assert {r["epoch"]: r["lr"] for r in rows} == {1: pytest.approx(0.05), 3: pytest.approx(0.005)}
    fixed = [r for r in rows if not r["regeneration"]]
    assert all(r["sparsity"] == pytest.approx(r["rate"], abs=0.01) for r in fixed)
    assert {(r["schedule"], r["seed"]) for r in rows} == {("recipe", 0)}
    top = out.parent.parent
    table = list(csv.DictReader(io.StringIO((top / "plasticity.csv").read_text())))
    assert len(table) == 8 and float(table[0]["drop"]) == pytest.approx(rows[0]["drop"])
    assert (top / "plasticity.png").stat().st_size > 5000
    assert "| recipe | 3 | 0.005 | 0.9 | yes | 1 |" in (top / "plasticity.md").read_text()


def test_regenerating_cell_is_granet_on_the_run_wide_schedule(study):
    out, _ = study
    for t in (1, 3):
        cell = out / "cells" / f"t{t}-r0.9-regen"
        config = ExperimentConfig.from_yaml((cell / "config.yaml").read_text())
        assert config.sparse.method == "granet" and config.sparse.update_every == 2
        assert config.sparse.options["prune_end"] == 0 and config.sparse.options["drop_fraction"] == 0.5
        record = json.loads((cell / "branch.json").read_text())
        assert record["source"]["sparsifier_start"] == "branch"
        assert record["step"] == 4 * t and record["sparsifier_total_steps"] == 16  # the whole run, not 16 - 4t
        state = load_checkpoint(cell / "checkpoint.pt")["sparsifier"]
        assert state["step"] == 16 and state["config"]["total_steps"] == 16  # the counter continued from 4t
        fixed = ExperimentConfig.from_yaml((cell.parent / f"t{t}-r0.9-fixed" / "config.yaml").read_text())
        assert fixed.sparse.method == "static"


def test_dense_checkpoints_are_the_dense_run_at_t(study):
    out, _ = study
    dense_dir = next((out / "runs").glob("dense-*/seed_0"))
    first = [json.loads(line) for line in (dense_dir / "metrics.jsonl").read_text().splitlines()]
    for t in (1, 3):
        path = PlasticityStudy(tiny(), out, regrow_every=2).dense_checkpoint(t)
        assert path == dense_dir / "checkpoints" / f"step_{4 * t}.pt"  # kept by the dense run itself
        state = load_checkpoint(path)
        assert state["epoch"] == t and state["step"] == 4 * t
        assert state["sparsifier"] is None and first[t - 1]["step"] == state["step"]


def test_fixed_cell_pruned_exactly_the_smallest_dense_weights(study):
    out, _ = study
    state = load_checkpoint(next((out / "runs").glob("dense-*/seed_0/checkpoints/step_12.pt")))
    expected = magnitude_masks({k: v for k, v in state["model"].items() if v.dim() >= 2}, 0.9, "global")
    masks = torch.load(out / "cells" / "t3-r0.9-fixed" / "masks.pt", weights_only=True)
    assert set(masks) == set(expected)
    for name in masks:
        assert torch.equal(masks[name], expected[name])


def test_rerun_skips_every_stage(study):
    out, rows = study
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    again = run_plasticity(tiny(), out.parent.parent, prune_epochs=[1, 3], rates=[0.5, 0.9],
                           regeneration=(False, True), regrow_every=2)
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == stamps


def test_a_study_with_other_options_is_refused(study):
    out, _ = study
    with pytest.raises(ValueError, match="regrow_every"):
        PlasticityStudy(tiny(), out, regrow_every=3).train_cell(PlasticityCell(1, 0.5, True))


def test_missing_checkpoint_after_the_dense_run_finished_is_recreated(study, tmp_path):
    out, _ = study
    config = tiny()
    fresh = PlasticityStudy(config, tmp_path, regrow_every=2)
    fresh.train_dense([1])
    assert not fresh.dense_run.kept_checkpoint(8).exists()
    fresh.train_dense([1, 2])  # the dense run is finished: replayed from its checkpoint after epoch 1
    saved = load_checkpoint(fresh.dense_run.kept_checkpoint(8))
    assert saved["step"] == 8 and not (fresh.dense_run.path / "replay").exists()
    original = load_checkpoint(next((out / "runs").glob("dense-*/seed_0/checkpoints/step_4.pt")))
    again = load_checkpoint(fresh.dense_run.kept_checkpoint(4))
    direct = Trainer(config.dense_baseline(), run_dir=tmp_path / "direct", plots=False)
    direct.fit_until(step=8)
    straight = load_checkpoint(direct.run.checkpoint_file)
    for key, value in original["model"].items():  # the same computation, bit for bit
        assert torch.equal(value, again["model"][key])
        assert torch.equal(straight["model"][key], saved["model"][key])


def test_a_cell_before_the_dense_run_trains_the_dense_run_only_to_its_epoch(study, tmp_path):
    out, rows = study
    fresh = PlasticityStudy(tiny(), tmp_path, regrow_every=2)
    row = fresh.train_cell(PlasticityCell(1, 0.5, False))  # the dense run trains to epoch 1 and stops there
    assert fresh.dense_run.status() == "interrupted" and row["dense_acc"] is None
    assert load_checkpoint(fresh.dense_run.checkpoint_file)["step"] == 4
    assert row["acc"] == rows[0]["acc"]  # the same cell as the study's
    fresh.train_dense([1])  # resumes the dense run from epoch 1 to the end
    theirs = next((out / "runs").glob("dense-*/seed_0/metrics.jsonl")).read_text().splitlines()
    mine = fresh.dense_run.metrics_file.read_text().splitlines()
    assert [{k: v for k, v in json.loads(line).items() if k != "time"} for line in mine] == \
        [{k: v for k, v in json.loads(line).items() if k != "time"} for line in theirs]


def test_format_plasticity_rejects_unknown_formats():
    with pytest.raises(ValueError, match="fmt='html'"):
        format_plasticity([], "html")


def test_cli_plasticity_runs_seeds_and_the_control_and_prints_the_table(tmp_path, capsys):
    def args(t, *extra):
        return ["plasticity", "--data", "synthetic", "--data-option", "n_train=120", "--data-option", "n_test=40",
                "--data-option", "input_shape=[1, 8]", "--model", "mlp", "--model-option", "hidden=[8]", "--epochs",
                "3", "--batch-size", "40", "--lr-schedule", "multistep", "--milestones", "0.5", "--prune-epochs", t,
                "--rates", "0.5", "--regeneration", "no", "--runs-dir", str(tmp_path), "--no-progress", *extra]

    assert main(args("1", "--seeds", "0", "1", "--late-decay", "0.9")) == 0
    out = capsys.readouterr().out
    assert "| recipe | 1 | 0.05 | 0.5 | no | 2 |" in out and "| late-decay | 1 | 0.05 | 0.5 | no | 2 |" in out
    (top,) = (tmp_path / "plasticity").glob("dense-*")
    assert (top / "plasticity.png").exists()
    for schedule in ("recipe", "late-decay"):
        for seed in (0, 1):
            assert (top / schedule / f"seed_{seed}" / "cells" / "t1-r0.5-fixed" / "summary.json").exists()
    control = next((top / "late-decay" / "seed_1" / "runs").glob("dense-*/seed_1"))
    assert ExperimentConfig.from_yaml((control / "config.yaml").read_text()).optim.milestones == [0.9]
    rows = list(csv.DictReader(io.StringIO((top / "plasticity.csv").read_text())))
    assert sorted((r["schedule"], r["seed"]) for r in rows) == [("late-decay", "0"), ("late-decay", "1"),
                                                                ("recipe", "0"), ("recipe", "1")]
    assert main(args("3")) == 2  # t must leave epochs to train
    assert "prune_epochs [3]" in capsys.readouterr().err
    assert main(args("1", "--late-decay", "0.2")) == 2
    assert "at or after the recipe's" in capsys.readouterr().err
