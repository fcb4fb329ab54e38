"""ITOP rates and FLOPs in metrics.jsonl, summary.json and ``sparsetrain report``: known values and consistency
with :mod:`sparsetrain.analysis` recomputed from what the run recorded."""


import pytest
import torch
from torch import nn

from sparsetrain.analysis import inference_flops, training_flops
from sparsetrain.cli import main
from sparsetrain.experiment import ExperimentConfig, RunDir, Trainer
from sparsetrain.itop import itop_by_layer
from sparsetrain.experiment.report import layer_rows
from sparsetrain.sparsifier import Sparsifier


class Scripted(Sparsifier):
    """A sparsifier whose masks follow a script (step -> masks), started from given masks."""

    method = "scripted"
    script: dict = {}

    def is_update_step(self, step):
        return step in self.script

    def update(self, step):
        self.masks = {n: m.clone() for n, m in self.script[step].items()}
        return {}


def test_itop_of_a_scripted_topology_change():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    t = torch.tensor
    first = {"0.weight": t([[True, False], [False, False]]), "1.weight": t([[True, True], [False, False]])}
    script = {
        1: {"0.weight": t([[False, True], [False, False]]), "1.weight": t([[True, True], [False, False]])},
        2: {"0.weight": t([[False, False], [True, False]]), "1.weight": t([[False, False], [True, True]])},
    }
    sparsifier = Scripted(model, optimizer, masks=first, sparsity=0.5, total_steps=10)
    sparsifier.script = script
    assert itop_by_layer(sparsifier.ever_active) == {"0.weight": 0.25, "1.weight": 0.5}
    for _ in range(3):
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        sparsifier.step()
    # layer 0 visited (0,0), (0,1), (1,0): 3 of 4; layer 1 visited all 4.
    assert itop_by_layer(sparsifier.ever_active) == {"0.weight": 0.75, "1.weight": 1.0}
    assert sparsifier.itop_rate() == pytest.approx(7 / 8)
    assert itop_by_layer(None) is None


def _tiny(method, **extra):
    overrides = {
        "data.name": "synthetic", "data.options.n_train": 256, "data.options.n_test": 64,
        "data.options.input_shape": [1, 12], "model.name": "mlp", "model.options.hidden": [16],
        "train.epochs": 3, "train.batch_size": 32, "sparse.method": method, "sparse.sparsity": 0.8,
        "sparse.update_every": 3,
    }
    overrides.update(extra)
    return ExperimentConfig().with_overrides(overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("rigl", "static", "granet", "dense"):
        config = _tiny(method)
        summary = Trainer(config, root, plots=False).fit()
        out[method] = (RunDir.for_config(root, config.canonical()), summary)
    return root, out


def test_itop_per_layer_in_metrics_and_summary(runs):
    _, out = runs
    run, summary = out["rigl"]
    records = run.read_metrics()
    assert all(set(r["itop_layers"]) == {"layers.0.weight", "layers.2.weight"} for r in records)
    totals = [r["itop_rate"] for r in records]
    assert totals == sorted(totals) and totals[-1] > 0.2  # RigL explores beyond its 20% density
    assert records[-1]["itop_layers"] == summary["itop_layers"]
    numel = {row["name"]: row["numel"] for row in summary["layers"]["layers"]}
    pooled = sum(summary["itop_layers"][n] * numel[n] for n in numel) / sum(numel.values())
    assert summary["itop_rate"] == pytest.approx(pooled)
    masks = torch.load(run.masks_file, weights_only=True)
    for name, mask in masks.items():
        assert summary["itop_layers"][name] >= mask.float().mean().item()


def test_static_itop_equals_its_density_and_dense_has_none(runs):
    _, out = runs
    run, summary = out["static"]
    masks = torch.load(run.masks_file, weights_only=True)
    assert summary["itop_layers"] == {n: m.float().mean().item() for n, m in masks.items()}
    assert out["dense"][1]["itop_rate"] is None and out["dense"][1]["itop_layers"] is None


def test_flops_per_layer_add_up_and_match_the_analysis(runs):
    _, out = runs
    for method in ("rigl", "static", "granet", "dense"):
        run, summary = out[method]
        flops = summary["flops"]
        layers = flops["layers"]
        assert set(layers) == {"layers.0.weight", "layers.2.weight"}
        assert sum(v["training"] for v in layers.values()) == pytest.approx(flops["training"])
        assert sum(v["training_dense"] for v in layers.values()) == pytest.approx(flops["training_dense"])
        assert sum(v["inference_sparse"] for v in layers.values()) == pytest.approx(flops["inference_sparse"])
        # 12 -> 16 -> 4 MLP: 2 * (12 * 16 + 16 * 4) = 512 dense FLOPs per sample; dense training 3x per sample-step
        assert flops["inference_dense"] == 512
        assert layers["layers.0.weight"]["inference_dense"] == 384
        assert flops["training_dense"] == 3 * 512 * 32 * summary["total_steps"]
        trace = summary["density_trace"]
        history = [(s, {n: v[i] for n, v in trace["layers"].items()}) for i, s in enumerate(trace["steps"])]
        if method == "dense":
            history = [(0, {})]
        dense_by_layer = {n: v["inference_dense"] for n, v in layers.items()}
        again = training_flops(dense_by_layer, history, summary["total_steps"],
                               dense_grad_steps=flops["dense_grad_steps"], batch_size=32)
        assert again.total == pytest.approx(flops["training"])
    assert out["dense"][1]["flops"]["training_ratio"] == 1.0
    static = out["static"][1]["flops"]
    masks = torch.load(out["static"][0].masks_file, weights_only=True)
    density = {n: m.float().mean().item() for n, m in masks.items()}
    for name, row in static["layers"].items():  # a fixed mask: every step costs its density
        assert row["inference_sparse"] == pytest.approx(row["inference_dense"] * density[name])
        assert row["training"] == pytest.approx(row["training_dense"] * density[name])
    assert static["dense_grad_steps"] == []


def test_dense_gradient_steps_are_the_gradient_growth_updates(runs):
    _, out = runs
    for method in ("rigl", "granet"):
        summary = out[method][1]
        updates = summary["density_trace"]["steps"][1:]
        assert summary["flops"]["dense_grad_steps"] == [s - 1 for s in updates]
        assert summary["flops"]["training_ratio"] > summary["flops"]["inference_ratio"] or method == "granet"


def test_inference_flops_of_the_final_masks(runs):
    root, out = runs
    run, summary = out["rigl"]
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    masks = torch.load(run.masks_file, weights_only=True)
    renamed = {"1.weight": masks["layers.0.weight"], "3.weight": masks["layers.2.weight"]}
    report = inference_flops(model, (1, 1, 12), renamed)
    assert report.sparse_total == pytest.approx(summary["flops"]["inference_sparse"])


def test_report_shows_itop_and_the_per_layer_table(runs, capsys):
    root, out = runs
    assert main(["report", "--runs-dir", str(root), "--format", "csv"]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0].split(",")
    assert "itop" in header
    rigl_line = next(line for line in text.splitlines() if line.split(",")[1] == "rigl")
    assert float(rigl_line.split(",")[header.index("itop")]) == pytest.approx(out["rigl"][1]["itop_rate"])
    assert main(["report", "--runs-dir", str(root), "--layers"]) == 0
    text = capsys.readouterr().out
    assert "layers.0.weight" in text and "train_dense" in text
    rows = layer_rows(out["rigl"][1])
    assert [r["layer"] for r in rows] == ["layers.0.weight", "layers.2.weight", "total"]
    assert rows[-1]["itop"] == out["rigl"][1]["itop_rate"]
    assert rows[0]["train_flops"] == out["rigl"][1]["flops"]["layers"]["layers.0.weight"]["training"]
