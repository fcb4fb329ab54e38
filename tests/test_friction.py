"""First-use friction (issue 16, point 7): what a new user sees in a log, in the sparsity line and in the plots."""

from __future__ import annotations

import json
import re

from PIL import Image

from sparsetrain.cli import main
from sparsetrain.experiment.plots import plot_accuracy_vs_sparsity
from sparsetrain.experiment.report import describe_sparsity

TINY = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=32", "--data-option",
        "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]", "--epochs", "2", "--batch-size",
        "32", "--no-plots", "--no-baseline", "--runs-dir", "runs"]


def test_a_redirected_log_gets_plain_lines_and_the_sparsity_of_the_masks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--method", "rigl", "--sparsity", "0.9"]) == 0
    err = capsys.readouterr()
    assert "\r" not in err.err  # no tqdm bar: stderr is not a terminal here
    assert any(" epoch 2/2 " in line for line in err.err.splitlines())
    line = next(line for line in err.out.splitlines() if line.strip().startswith("rigl"))
    shown = re.search(r"sparsity (0\.\d{4}) \(target 0\.90\)", line)
    summary = json.loads(next(tmp_path.glob("runs/rigl-*/seed_0/summary.json")).read_text())
    assert shown and float(shown[1]) == round(summary["mask_sparsity"], 4)  # the masks' sparsity, not the zeros


def test_active_weights_that_are_exactly_zero_are_said_apart_from_the_masked_ones():
    assert describe_sparsity({"mask_sparsity": 0.9, "sparsity": 0.9, "target_sparsity": 0.9}) == \
        "0.9000 (target 0.90)"
    text = describe_sparsity({"mask_sparsity": 0.9001, "sparsity": 0.9173, "target_sparsity": 0.9})
    assert text == "0.9001 (target 0.90; 0.9173 of the weights are 0: 0.0172 active weights are exactly 0)"


def _summary(recipe: str, method: str, sparsity: float, acc: float) -> dict:
    return {"data": "synthetic", "model": "mlp", "recipe": recipe, "method": method, "target_sparsity": sparsity,
            "final_acc": acc}


def test_runs_of_two_recipes_are_two_panels_never_one_curve(tmp_path):
    one = [_summary("aaaa", "rigl", 0.9, 0.8), _summary("aaaa", "rigl", 0.95, 0.7), _summary("aaaa", "dense", 0, 0.9)]
    two = one + [_summary("bbbb", "rigl", 0.9, 0.5), _summary("bbbb", "dense", 0, 0.6)]
    height_one = Image.open(plot_accuracy_vs_sparsity(one, tmp_path / "one.png")).height
    height_two = Image.open(plot_accuracy_vs_sparsity(two, tmp_path / "two.png")).height
    assert height_two >= 1.9 * height_one  # a panel per recipe, each with its own dense line
