"""The reproduction benchmark: its grid, IMP's levels, claim checks on made-up numbers, and ``reproduce --tiny``
end to end (every file written, numbers traceable to the run directories, a rerun trains nothing)."""

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.experiment import RunDir
from sparsetrain.studies.reproduce import (
    METHOD_LABELS,
    SETTINGS,
    imp_levels,
    imp_rate,
    method_label,
    plan_jobs,
    run_config,
)
from sparsetrain.studies.reproduce_report import Cell, check_claims


def test_full_grid_is_the_one_asked_for():
    full = SETTINGS["full"]
    assert set(full.methods) == set(METHOD_LABELS)
    assert full.sparsities == (0.9, 0.95, 0.98) and full.seeds == (0, 1, 2)
    assert [b.model for b in full.benchmarks] == ["cnn1d", "mlp", "lenet300"]
    jobs = plan_jobs(full, "runs")
    kinds = [j.kind for j in jobs]
    # 3 pairs x (3 dense + 10 sparse methods x 3 sparsities x 3 seeds) harness runs, 3 x 3 IMP runs, 36 cells
    assert kinds.count("train") == 3 * (3 + 10 * 9) and kinds.count("imp") == 9
    assert kinds.count("plasticity-cell") == 6 * 3 * 2 and kinds[0] == "plasticity-dense"
    names = {j.name for j in jobs}
    assert len(names) == len(jobs)


def test_imp_rate_lands_on_the_largest_sparsity():
    full = SETTINGS["full"]
    p = imp_rate(full)
    assert (1 - p) ** full.imp_rounds == pytest.approx(0.02)
    assert imp_levels(full) == {0.9: 3, 0.95: 4, 0.98: 5}
    assert 1 - (1 - p) ** 3 == pytest.approx(0.904, abs=1e-3)


@pytest.mark.parametrize("method", [m for m in METHOD_LABELS if m != "imp"])
def test_method_label_inverts_the_overrides(method):
    config = run_config(SETTINGS["full"].benchmarks[0], SETTINGS["full"], method, 0.95, 1)
    assert method_label(config) == method
    assert config.train.seed == 1
    assert config.sparse.sparsity == (0.9 if method == "dense" else 0.95)  # dense keeps the default section


def _cell(*accs):
    return Cell(acc=list(accs))


def test_claims_are_checked_case_by_case():
    setting = dataclasses.replace(SETTINGS["quick"], sparsities=(0.9,))  # one pair, one sparsity
    key = setting.benchmarks[0].key
    cells = {("granet", 0.9): _cell(0.80, 0.82), ("gmp", 0.9): _cell(0.70, 0.72),
             ("granet_st", 0.9): _cell(0.9, 0.9), ("rigl", 0.9): _cell(0.8, 0.8), ("set", 0.9): _cell(0.85, 0.85),
             ("static", 0.9): _cell(0.5, 0.5), ("snip", 0.9): _cell(0.6, 0.6), ("synflow", 0.9): _cell(0.75, 0.75),
             ("imp", 0.9): Cell(acc=[0.9, 0.8], sparsity=[0.9, 0.9]), ("imp_reinit", 0.9): _cell(0.6, 0.7)}
    granet, chain, during, imp = check_claims(setting, {key: cells})
    assert granet.verdict == "holds (all 1 cases)"
    assert "+10.00 pts" in granet.cases[0][2] and "beyond 2 s.e." in granet.cases[0][2]
    assert chain.verdict.startswith("does not hold")  # SET 0.85 > RigL 0.80 breaks the chain
    assert "granet_st 90.00 > set 85.00 > rigl 80.00 > static 50.00" in chain.cases[0][2]
    # the worst during-training method (GMP, 71%) is below the best at init (SynFlow, 75%)
    assert during.verdict.startswith("does not hold")
    assert "worst during-training (gmp) 71.00 vs best at-init (synflow) 75.00: -4.00 pts" in during.cases[0][2]
    assert imp.cases[0][1] is True and "ticket 85.00 vs re-init 65.00" in imp.cases[0][2]


def test_claims_without_data_are_not_measured():
    claims = check_claims(SETTINGS["quick"], {})
    assert [c.verdict for c in claims] == ["not measured"] * 4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    runs, out = root / "runs", root / "results"
    code = main(["reproduce", "--tiny", "--runs-dir", str(runs), "--out", str(out), "--workers", "1"])
    return code, runs / "tiny", out


def test_reproduce_tiny_end_to_end(tiny_run, capsys):
    code, runs, out = tiny_run
    assert code == 0
    setting = SETTINGS["tiny"]
    for name in ("reproduction.md", "reproduction.csv", "accuracy_vs_sparsity_synthetic-mlp.png", "plasticity.png",
                 "plasticity.csv"):
        assert (out / name).stat().st_size > 100, name
    text = (out / "reproduction.md").read_text()
    assert "Trained by `sparsetrain reproduce --tiny" in text and "(12 jobs trained, 0 failed" in text
    assert "## Claims of MISSION.md §5 at this scale" in text and "## Pruning plasticity" in text
    rows = list(csv.DictReader(io.StringIO((out / "reproduction.csv").read_text())))
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "gmp", "granet", "rigl", "static", "snip", "imp", "imp_reinit"}
    bench = setting.benchmarks[0]
    for row in rows:
        if row["method"].startswith("imp"):
            continue
        sparsity = float(row["target_sparsity"])
        summary = RunDir.for_config(runs, run_config(bench, setting, row["method"], sparsity, 0)).read_summary()
        assert float(row["acc_mean"]) == pytest.approx(summary["final_acc"])
        assert row["n"] == "1" and float(row["acc_std"]) == 0.0
        if row["method"] != "dense":
            assert float(row["sparsity"]) == pytest.approx(0.8, abs=0.02)
            assert float(row["train_flops_ratio"]) < 1.0
    imp = next(r for r in rows if r["method"] == "imp")
    (level,) = Path(runs / "imp").glob("*/seed_0/level_1/run/summary.json")
    assert float(imp["acc_mean"]) == pytest.approx(json.loads(level.read_text())["final_acc"])
    recipe = RunDir(level.parent).read_config()  # IMP trains with the recipe of every other row
    dense = RunDir.for_config(runs, run_config(bench, setting, "dense", 0.0, 0)).read_config()
    assert recipe.optim == dense.optim and recipe.train == dense.train and recipe.optim.nesterov
    snip = RunDir.for_config(runs, run_config(bench, setting, "snip", 0.8, 0)).read_config()
    assert snip.sparse.options["init"] == "snip"


def test_reproduce_rerun_trains_nothing(tiny_run, capsys):
    code, runs, out = tiny_run
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}
    assert main(["reproduce", "--tiny", "--runs-dir", str(runs.parent), "--out", str(out), "--workers", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == stamps
    assert "reproduction.md" in capsys.readouterr().out


def test_reproduce_report_only_and_bad_workers(tiny_run, tmp_path, capsys):
    code, runs, _ = tiny_run
    assert main(["reproduce", "--tiny", "--runs-dir", str(runs.parent), "--out", str(tmp_path), "--report-only"]) == 0
    assert (tmp_path / "reproduction.md").exists()
    assert main(["reproduce", "--tiny", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
