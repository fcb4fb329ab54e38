"""``sparsetrain report`` and ``sparsetrain plot`` on a lottery run: rows per level, controls, curve.png."""

import csv
import io
import json
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.studies.lottery.report import (
    find_lottery_runs,
    format_lottery_rows,
    lottery_rows,
)

TINY = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=64",
        "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
        "--epochs", "1", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs") / "runs"
    assert main(["lottery", *TINY, "--rounds", "1", "--prune-rate", "0.5", "--controls", "random",
                 "--runs-dir", str(runs_dir)]) == 0
    return runs_dir


def test_report_lists_every_level_of_a_lottery_run_with_its_controls(runs, capsys):
    (run,) = find_lottery_runs(runs)
    capsys.readouterr()
    assert main(["report", "--runs-dir", str(runs), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["level"] for r in rows] == ["0", "1"]
    assert all(r["run"] == f"{run.parent.name}/{run.name}" for r in rows)
    for row in rows:
        level = run / f"level_{row['level']}"
        ticket = json.loads((level / "run" / "summary.json").read_text())["final_acc"]
        sparsity = json.loads((level / "sparsity.json").read_text())
        assert float(row["ticket"]) == pytest.approx(ticket)
        assert float(row["remaining"]) == pytest.approx(sparsity["nonzeros"] / sparsity["numel"])
        assert row["reinit"] == ""  # not run
    assert float(rows[0]["remaining"]) == 1.0 and rows[0]["random"] == ""
    assert 0.4 < float(rows[1]["remaining"]) < 0.7  # half of the hidden layer, a tenth of the output layer
    random = json.loads((run / "level_1" / "random" / "summary.json").read_text())["final_acc"]
    assert float(rows[1]["random"]) == pytest.approx(random)


def test_report_table_and_markdown(runs, capsys):
    assert main(["report", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "lottery runs" in out and "100.00%" in out
    text = format_lottery_rows(lottery_rows(runs), "markdown")
    assert text.splitlines()[0] == "| run | level | remaining | ticket | reinit | random |"
    assert len(text.splitlines()) == 2 + 2
    with pytest.raises(ValueError, match="format='html'"):
        format_lottery_rows([], "html")


def test_plot_writes_each_lottery_runs_curve(runs, capsys):
    (run,) = find_lottery_runs(runs)
    (run / "curve.png").unlink()
    assert main(["plot", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert str(run / "curve.png") in capsys.readouterr().out
    assert (run / "curve.png").stat().st_size > 1000


def test_no_lottery_runs_is_empty(tmp_path: Path):
    assert find_lottery_runs(tmp_path) == [] and lottery_rows(tmp_path / "missing") == []
