"""Plots from topology events: the per-layer density/churn heatmap and the ITOP curve, alone and with a run's plots."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TinyMLP, watch_topology
from sparsetrain import GraNet
from sparsetrain.experiment.plots import DPI, plot_itop, plot_run, plot_topology
from sparsetrain.experiment.rundir import RunDir
from sparsetrain.experiment.topology_log import append_event


@pytest.fixture(scope="module")
def granet_events():
    torch.manual_seed(0)
    _, events = watch_topology(GraNet, TinyMLP(), steps=200, update_every=10, sparsity=0.9, distribution="erk",
                               initial_sparsity=0.5)
    return events


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_heatmap_and_itop_curve(tmp_path, granet_events):
    heatmap = plot_topology(granet_events, tmp_path / "topology.png", total_steps=200, title="GraNet on TinyMLP")
    curve = plot_itop(granet_events, tmp_path / "itop.png")
    pixels = _pixels(heatmap)
    assert pixels.shape[1] == 8 * DPI and pixels.shape[0] >= 4.5 * DPI
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a coloured grid, not an empty frame
    assert _pixels(curve).shape[:2] == (int(4.5 * DPI), 8 * DPI)
    with pytest.raises(ValueError, match="at least one"):
        plot_topology([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="at least one"):
        plot_itop([], tmp_path / "none.png")


def test_granet_events_show_pruning_and_exploration(granet_events):
    """What the plots show: density falls while pruning, churn is positive, ITOP grows above the density."""
    first, last = granet_events[0], granet_events[-1]
    assert last.density < first.density
    assert all(e.churn > 0 for e in granet_events)
    assert last.itop > last.density and [e.itop for e in granet_events] == sorted(e.itop for e in granet_events)


def test_plot_run_adds_topology_plots_when_events_exist(tmp_path, granet_events):
    run = RunDir(tmp_path / "granet-abc" / "seed_0")
    run.path.mkdir(parents=True)
    summary = {"method": "granet", "target_sparsity": 0.9, "model": "tiny", "data": "random", "seed": 0,
               "total_steps": 200, "density_trace": {"steps": [0], "density": [1.0], "layers": {}},
               "layers": {"sparsity": 0.9, "layers": []}}
    records = [{"epoch": 1, "train_loss": 1.0, "test_acc": 0.5}]
    names = {p.name for p in plot_run(run, summary=summary, records=records)}
    assert names == {"curves.png", "density.png", "layers.png"}
    for event in granet_events:
        append_event(run.topology_file, event)
    names = {p.name for p in plot_run(run, summary=summary, records=records)}
    assert names == {"curves.png", "density.png", "layers.png", "topology.png", "itop.png"}
    assert json.loads(run.topology_file.read_text().splitlines()[0])["step"] == 10
