"""Paper recipes shipped with the package: listed, loaded, and trained end to end on tiny generated CIFAR files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_data import write_cifar

from sparsetrain.cli import main
from sparsetrain.experiment import ConfigError, ExperimentConfig
from sparsetrain.experiment.recipe import list_recipes, load_recipe, recipe_info

RECIPES = sorted(list_recipes())


def test_the_shipped_recipes_are_the_papers_runs() -> None:
    granet = [f"{v}-{d}-{m}" for v in ("granet", "granet-st") for d in ("cifar10", "cifar100")
              for m in ("resnet32", "resnet50", "vgg19")]
    assert RECIPES == sorted([*granet, "rigl-cifar10-wrn22-2"])
    for name in RECIPES:
        info = recipe_info(name)
        assert {"description", "reference", "model", "deviations"} <= set(info), name
        assert load_recipe(name).data.data_dir is None  # the user gives --data-dir


def test_granet_recipes_follow_the_official_cifar_script() -> None:
    """VITA-Group/GraNet CIFAR/scripts/script: --epochs 160 --lr 0.1 --l2 0.0005 --batch-size 128
    --update-frequency 1000 --final-prune-epoch 80 --prune-rate 0.5 --sparse-init ERK; MultiStepLR at 80/120,
    Nesterov (main.py)."""
    for name in RECIPES:
        if not name.startswith("granet"):
            continue
        config = load_recipe(name)
        assert (config.train.epochs, config.train.batch_size) == (160, 128)
        optim = config.optim
        assert (optim.name, optim.lr, optim.momentum, optim.nesterov, optim.weight_decay) == ("sgd", 0.1, 0.9, True,
                                                                                             5e-4)
        assert (optim.lr_schedule, optim.milestones, optim.gamma) == ("multistep", [0.5, 0.75], 0.1)
        sparse = config.sparse
        assert (sparse.method, sparse.update_every, sparse.scope) == ("granet", 1000, None)
        expected_si = 0.5 if name.startswith("granet-st") else 0.0
        assert sparse.options == {"initial_sparsity": expected_si, "prune_end": 0.5, "drop_fraction": 0.5,
                                  "sparse_init": "none"}
        assert config.data.options == {"augment": True}
        assert config.data.val_fraction == (0.1 if "-cifar10-" in name else 0.0)


def test_the_rigl_recipe_follows_the_official_cifar_code() -> None:
    """google-research/rigl cifar_resnet/resnet_train_eval.py: 97,656 steps at batch 128 (250 epochs), lr 0.1 / 5
    at 30k/60k/90k, Nesterov 0.9, L2 5e-4, ΔT = 100 until step 75,000, first layer dense."""
    config = load_recipe("rigl-cifar10-wrn22-2")
    steps = 97_656
    assert [round(m * steps) for m in config.optim.milestones] == [30_000, 60_000, 90_000]
    assert config.optim.gamma == 0.2 and config.train.epochs == 250 and config.train.batch_size == 128
    assert round(config.sparse.options["stop_at"] * steps, -2) == 75_000
    assert config.sparse.update_every == 100 and config.sparse.options["dense_first"] is True
    assert (config.model.name, config.model.options) == ("wrn", {"depth": 22, "width": 2})


def test_flags_and_config_files_apply_on_top_of_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 7\n")
    argv = ["train", "--recipe", "granet-cifar10-resnet32", "--config", str(tmp_path / "mine.yaml"), "--sparsity",
            "0.95", "--set", "optim.lr=0.05", "--print-config"]
    assert main(argv) == 0
    printed = ExperimentConfig.from_yaml(capsys.readouterr().out)
    expected = load_recipe("granet-cifar10-resnet32").with_overrides(
        {"train.epochs": 7, "sparse.sparsity": 0.95, "optim.lr": 0.05})
    assert printed.to_dict() == expected.to_dict()


def test_recipe_list_and_an_unknown_recipe(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--recipe", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES) and "GraNet s_i = 0.5" in out
    assert main(["train", "--recipe", "nosuch"]) == 2
    assert "recipe 'nosuch' is not allowed; choose one of granet-cifar10-resnet32" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load_recipe("nosuch")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_end_to_end_on_tiny_cifar_files(name: str, tmp_path: Path) -> None:
    """The whole recipe, with only the budget cut (1 epoch at batch 8 on generated files of 6 images per CIFAR-10
    file, 24 per CIFAR-100 file), so that it runs in seconds; the saved config is the recipe with those overrides."""
    kind = "cifar100" if "cifar100" in name else "cifar10"
    write_cifar(tmp_path / "data", kind, per_batch=24 if kind == "cifar100" else 6)
    runs = tmp_path / "runs"
    argv = ["train", "--recipe", name, "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8",
            "--eval-batch-size", "64", "--threads", "1", "--runs-dir", str(runs), "--no-baseline", "--no-progress",
            "--no-plots"]
    assert main(argv) == 0
    (run,) = runs.glob("*/seed_0")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    expected = load_recipe(name).with_overrides({"train.epochs": 1, "train.batch_size": 8,
                                                 "train.eval_batch_size": 64, "train.threads": 1,
                                                 "data.data_dir": str(tmp_path / "data")})
    assert saved == expected.to_dict()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(expected.sparse.sparsity, abs=2e-3)
    assert summary["final_acc"] is not None
