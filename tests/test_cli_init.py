"""``sparsetrain train --init NAME``: the same run as ``--method-option init=NAME``; static only."""

import json

import pytest

from sparsetrain.cli import main
from sparsetrain.experiment import RunDir

TINY = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=32",
        "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
        "--epochs", "1", "--batch-size", "32", "--no-progress", "--no-plots", "--no-baseline",
        "--method", "static", "--sparsity", "0.75"]


def test_init_is_the_method_option_init(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", *TINY, "--runs-dir", str(runs), "--init", "snip"]) == 0
    (run_path,) = runs.glob("static-*/seed_0")
    assert RunDir(run_path).read_config().sparse.options["init"] == "snip"
    summary = json.loads((run_path / "summary.json").read_text())
    # the same identity: the spelled-out option finds the finished run and trains nothing new
    assert main(["train", *TINY, "--runs-dir", str(runs), "--method-option", "init=snip"]) == 0
    assert list(runs.glob("static-*/seed_0")) == [run_path]
    assert "already finished" in capsys.readouterr().err
    assert json.loads((run_path / "summary.json").read_text()) == summary
    # a different init is a different run
    assert main(["train", *TINY, "--runs-dir", str(runs), "--init", "magnitude", "--print-config"]) == 0
    assert "init: magnitude" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--method", "rigl", "--init", "snip"],
                                  ["--method", "static", "--init", "nope"],
                                  ["--method", "static", "--init", "snip", "--method-option", "init=grasp"]])
def test_bad_init_exits_2_with_one_line(tmp_path, capsys, args):
    assert main(["train", "--runs-dir", str(tmp_path / "runs"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsetrain: error:") and "init" in err[0]
    assert not (tmp_path / "runs").exists()
