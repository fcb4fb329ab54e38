"""The reproduction benchmark: its grid, IMP's levels, verdicts on made-up numbers (like with like, the
significance rule, FLOPs beside accuracy), and ``reproduce --tiny`` end to end (every file written, numbers
traceable to the run directories, a rerun trains nothing)."""

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
    plasticity_dir,
    run_config,
)
from sparsetrain.studies.reproduce_results import Cell
from sparsetrain.studies.reproduce_verdicts import check_claims, pairwise_table


def test_full_grid_is_the_one_asked_for():
    full = SETTINGS["full"]
    assert set(full.methods) == set(METHOD_LABELS)
    assert full.sparsities == (0.9, 0.95, 0.98) and full.seeds == (0, 1, 2)
    assert [b.model for b in full.benchmarks] == ["cnn1d", "mlp", "lenet300"]
    jobs = plan_jobs(full, "runs")
    kinds = [j.kind for j in jobs]
    # 3 pairs x (3 dense + 12 sparse methods x 3 sparsities x 3 seeds) harness runs, 3 x 3 IMP runs; plasticity:
    # 2 schedules x 3 seeds dense runs, each with 6 points x 3 rates x 2 (fixed, regeneration) cells
    assert kinds.count("train") == 3 * (3 + 12 * 9) and kinds.count("imp") == 9
    assert kinds[:6] == ["plasticity-dense"] * 6 and kinds.count("plasticity-cell") == 6 * 6 * 3 * 2
    names = {j.name for j in jobs}
    assert len(names) == len(jobs)
    dense = {j.name: j for j in jobs if j.kind == "plasticity-dense"}
    for job in jobs:  # a cell waits for the dense run of its own study, which comes earlier
        if job.kind == "plasticity-cell":
            assert dense[job.after].payload["seed"] == job.payload["seed"]
            assert dense[job.after].payload["schedule"] == job.payload["schedule"]
    assert plasticity_dir(full, "runs").parent == Path("runs") / "plasticity"


def test_longer_rigl_and_global_gmp_are_the_same_recipe_otherwise():
    full = SETTINGS["full"]
    bench = full.benchmarks[0]
    rigl, longer = (run_config(bench, full, m, 0.9, 0) for m in ("rigl", "rigl_3x"))
    assert longer.train.epochs == 3 * rigl.train.epochs == 60
    assert longer.sparse == rigl.sparse and longer.optim == rigl.optim
    gmp, global_gmp = (run_config(bench, full, m, 0.9, 0) for m in ("gmp", "gmp_global"))
    assert global_gmp.sparse.scope == "global" and gmp.sparse.scope is None


def test_imp_rate_lands_on_the_largest_sparsity():
    full = SETTINGS["full"]
    p = imp_rate(full)
    assert (1 - p) ** full.imp_rounds == pytest.approx(0.02)
    assert imp_levels(full) == {0.9: 3, 0.95: 4, 0.98: 5}
    assert 1 - (1 - p) ** 3 == pytest.approx(0.904, abs=1e-3)


@pytest.mark.parametrize("method", [m for m in METHOD_LABELS if m != "imp"])
def test_method_label_inverts_the_overrides(method):
    config = run_config(SETTINGS["full"].benchmarks[0], SETTINGS["full"], method, 0.95, 1)
    assert method_label(config, SETTINGS["full"]) == method
    assert config.train.seed == 1
    assert config.sparse.sparsity == (0.9 if method == "dense" else 0.95)  # dense keeps the default section


def _cell(*accs, flops=None):
    return Cell(acc=list(accs), train_flops=[] if flops is None else [flops] * len(accs))


def test_claims_compare_like_with_like():
    setting = dataclasses.replace(SETTINGS["quick"], sparsities=(0.9,),
                                  methods=SETTINGS["quick"].methods + ("rigl_3x",))  # one pair, one sparsity
    key = setting.benchmarks[0].key
    cells = {("granet", 0.9): _cell(0.80, 0.82, flops=0.25), ("gmp", 0.9): _cell(0.70, 0.72),
             ("gmp_global", 0.9): _cell(0.80, 0.81), ("granet_st", 0.9): _cell(0.9, 0.9),
             ("rigl", 0.9): _cell(0.5, 0.6), ("rigl_3x", 0.9): _cell(0.78, 0.76, flops=0.3),
             ("set", 0.9): _cell(0.85, 0.85), ("static", 0.9): _cell(0.5, 0.5), ("snip", 0.9): _cell(0.6, 0.6),
             ("synflow", 0.9): _cell(0.75, 0.77, flops=0.1),
             ("imp", 0.9): Cell(acc=[0.9, 0.8], sparsity=[0.9, 0.9], train_flops=[2.0, 2.0]),
             ("imp_reinit", 0.9): _cell(0.6, 0.7)}
    gmp, gmp_global, chain, best, gradual, dynamic, longer, longer_init, imp = check_claims(setting, {key: cells})
    assert gmp.verdict == "holds in all 1 cases (1 beyond noise; 0 reversed beyond noise)"
    assert "granet 81.00 ± 1.41 (0.25x) vs gmp 71.00 ± 1.41: +10.00 pts, beyond noise" in gmp.cases[0].detail
    # GraNet 81.0 vs global GMP 80.5: holds, but within the combined std sqrt(1.41^2 + 0.71^2) = 1.58
    assert gmp_global.cases[0].holds and not gmp_global.cases[0].beyond
    assert chain.verdict.startswith("does not hold") and chain.cases[0].reversed  # SET 85 > RigL 55, beyond noise
    # best against best: GraNet-ST (90) vs SynFlow (76); by family: gradual GraNet (81) and dynamic GraNet-ST
    assert "granet_st 90.00" in best.cases[0].detail and "synflow 76.00 ± 1.41 (0.10x)" in best.cases[0].detail
    assert gradual.cases[0].holds and "granet 81.00" in gradual.cases[0].detail
    assert dynamic.cases[0].beyond
    assert longer.cases[0].beyond and "(0.30x)" in longer.cases[0].detail
    assert longer_init.cases[0].holds and not longer_init.cases[0].beyond  # 77 vs 76, combined std 2
    assert imp.cases[0].holds and "(2.00x)" in imp.cases[0].detail
    table = pairwise_table(setting, {key: cells})
    # RigL 55 ± 7.07 is below SNIP 60 within noise (combined std 7.07), below SynFlow 76 beyond it
    assert "| rigl | 0/1 (+0, -0) | 0/1 (+0, -1) |" in table
    assert "| granet | 1/1 (+1, -0) | 1/1 (+1, -0) |" in table


def test_claims_without_data_are_not_measured():
    claims = check_claims(SETTINGS["quick"], {})
    assert [c.verdict for c in claims] == ["not measured"] * 9


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
    assert "Trained by `sparsetrain reproduce --tiny" in text and "(19 jobs trained, 0 failed" in text
    assert "## Verdicts at this scale" in text and "## Pruning plasticity" in text
    assert "combined standard deviation" in text and "| late-decay | 1 |" in text
    rows = list(csv.DictReader(io.StringIO((out / "reproduction.csv").read_text())))
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "gmp", "gmp_global", "granet", "rigl", "rigl_3x", "static", "snip", "imp",
                       "imp_reinit"}
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
            ratio = summary["flops"]["training_ratio"]
            assert ratio < 1.0  # in dense trainings of the recipe: RigL trained 3x the epochs costs 3x its ratio
            assert float(row["train_flops"]) == pytest.approx(ratio * (3 if row["method"] == "rigl_3x" else 1))
    imp = next(r for r in rows if r["method"] == "imp")
    (level,) = Path(runs / "imp").glob("*/seed_0/level_1/run/summary.json")
    assert float(imp["acc_mean"]) == pytest.approx(json.loads(level.read_text())["final_acc"])
    (level_0,) = Path(runs / "imp").glob("*/seed_0/level_0/run/summary.json")
    costs = [json.loads(p.read_text())["flops"]["training_ratio"] for p in (level_0, level)]
    assert float(imp["train_flops"]) == pytest.approx(sum(costs)) and float(imp["train_flops"]) > 1.0
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
