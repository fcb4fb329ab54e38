"""``sparsetrain compare`` and the loaders behind it, on hand-made files with known answers."""

import json

import pytest
import torch

from sparsetrain.analysis.sources import common_names, load_masks, load_weights
from sparsetrain.cli import main
from sparsetrain.experiment import ExperimentConfig, RunDir, Trainer


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _row(section, name):
    return next(r for r in section["rows"] if r["name"] == name)


@pytest.fixture
def two_masks(tmp_path):
    # w: a = {0, 1, 2}, b = {1, 2, 3}: intersection 2, union 4, IoU 0.5, Hamming 2.
    # v: a = {0}, b = {1}: IoU 0, Hamming 2.  Total: intersection 2, union 6, IoU 1/3.
    a = {"w": torch.tensor([True, True, True, False, False, False]), "v": torch.tensor([[True, False], [False, False]])}
    b = {"w": torch.tensor([False, True, True, True, False, False]), "v": torch.tensor([[False, True], [False, False]])}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    return tmp_path / "a.pt", tmp_path / "b.pt"


def test_mask_overlap_known_iou_and_hamming(two_masks, capsys):
    assert main(["compare", str(two_masks[0]), str(two_masks[1]), "--format", "json"]) == 0
    (section,) = _json(capsys)["sections"]
    w, v = _row(section, "w"), _row(section, "v")
    assert (w["intersection"], w["union"], w["iou"], w["hamming"]) == (2, 4, 0.5, 2)
    assert (v["iou"], v["hamming"], v["hamming_fraction"]) == (0.0, 2, 0.5)
    assert section["total"]["iou"] == pytest.approx(1 / 3) and section["total"]["hamming"] == 4


def test_mask_overlap_table_output_and_file(two_masks, tmp_path, capsys):
    out = tmp_path / "overlap.txt"
    assert main(["compare", str(two_masks[0]), str(two_masks[1]), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mask overlap" in text and "0.5000" in text and "total" in text
    assert out.read_text().strip() == text.strip()


@pytest.fixture
def checkpoints(tmp_path):
    """before -> after changes exactly w[0, 1] and w[2, 0] (and b[1] by 1e-4); before -> other changes w[0, 1]."""
    before = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.zeros(3)}
    after = {k: v.clone() for k, v in before.items()}
    after["w"][0, 1] += 1.0
    after["w"][2, 0] -= 2.0
    after["b"][1] += 1e-4
    other = {k: v.clone() for k, v in before.items()}
    other["w"][0, 1] += 3.0
    other["w"][1, 1] += 3.0
    paths = []
    for name, sd in (("before", before), ("after", after), ("other", other)):
        torch.save(sd, tmp_path / f"{name}.pt")
        paths.append(str(tmp_path / f"{name}.pt"))
    return paths


def test_update_sparsity_counts_exactly_the_changed_entries(checkpoints, capsys):
    before, after, _ = checkpoints
    assert main(["compare", before, after, "--update", "--format", "json"]) == 0
    (section,) = _json(capsys)["sections"]
    w, b = _row(section, "w"), _row(section, "b")
    assert (w["changed"], w["fraction_changed"]) == (2, pytest.approx(2 / 12))
    assert (w["rank"], w["full_rank"]) == (2, 3)  # two entries in different rows and columns
    assert b["changed"] == 1 and b["rank"] is None
    assert section["total"]["changed"] == 3 and section["total"]["numel"] == 15


def test_update_sparsity_tolerance_ignores_small_changes(checkpoints, capsys):
    before, after, _ = checkpoints
    assert main(["compare", before, after, "--update", "--atol", "1e-3", "--no-rank", "--format", "json"]) == 0
    (section,) = _json(capsys)["sections"]
    assert _row(section, "b")["changed"] == 0 and _row(section, "w")["changed"] == 2
    assert _row(section, "w")["rank"] is None


def test_overlap_of_changed_sets_across_runs(checkpoints, capsys):
    before, after, other = checkpoints
    # run 1 changed w{(0,1), (2,0)}, b{1}; run 2 changed w{(0,1), (1,1)}: in w, IoU = 1/3.
    for args in (["compare", before, after, before, other], ["compare", before, after, "--against", before, other]):
        assert main([*args, "--format", "json"]) == 0
        sections = _json(capsys)["sections"]
        assert len(sections) == 3
        overlap = sections[2]
        assert _row(overlap, "w")["iou"] == pytest.approx(1 / 3)
        assert _row(overlap, "b")["intersection"] == 0 and _row(overlap, "b")["union"] == 1
        assert overlap["total"]["intersection"] == 1 and overlap["total"]["union"] == 4


def test_compare_refuses_bad_arguments(two_masks, checkpoints, tmp_path, capsys):
    a, b = map(str, two_masks)
    assert main(["compare", a]) == 2
    assert "2 or 4 paths" in capsys.readouterr().err
    assert main(["compare", a, b, a, b, "--against", a, b]) == 2
    assert main(["compare", a, str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["compare", a, b, "--update"]) == 2  # masks hold no weights
    assert "holds masks, not weights" in capsys.readouterr().err
    assert main(["compare", checkpoints[0], checkpoints[1], "--update", "--atol", "-1"]) == 2


def _tiny(method, seed=0):
    return ExperimentConfig().with_overrides({
        "data.name": "synthetic", "data.options.n_train": 128, "data.options.n_test": 32,
        "data.options.input_shape": [1, 12], "model.name": "mlp", "model.options.hidden": [16],
        "train.epochs": 2, "train.batch_size": 32, "sparse.method": method, "sparse.sparsity": 0.75,
        "sparse.update_every": 2, "train.seed": seed})


def test_run_directories_and_checkpoints_as_sources(tmp_path, capsys):
    runs = [RunDir.for_config(tmp_path, _tiny("rigl", seed)) for seed in (0, 1)]
    for seed in (0, 1):
        Trainer(_tiny("rigl", seed), tmp_path, plots=False).fit()
    masks = load_masks(runs[0].path)
    assert masks.keys() == torch.load(runs[0].masks_file, weights_only=True).keys()
    from_checkpoint = load_masks(runs[0].checkpoint_file)  # the sparsifier's masks in the checkpoint
    assert all(torch.equal(masks[n], from_checkpoint[n]) for n in masks)
    weights = load_weights(runs[0].path)
    assert set(masks) <= set(weights)
    assert main(["compare", str(runs[0].path), str(runs[1].path), "--format", "json"]) == 0
    (section,) = _json(capsys)["sections"]
    own = [int(m.sum()) for m in masks.values()]
    assert [r["active_a"] for r in section["rows"]] == own
    assert 0.0 < section["total"]["iou"] < 1.0  # different seeds, different random masks
    assert main(["compare", str(runs[0].path), str(runs[0].checkpoint_file), "--format", "json"]) == 0
    assert _json(capsys)["sections"][0]["total"]["iou"] == 1.0


def test_common_names_leaves_out_mismatches():
    a = {"x": torch.zeros(2), "y": torch.zeros(3), "z": torch.zeros(1)}
    b = {"y": torch.zeros(3), "x": torch.zeros(4), "q": torch.zeros(1)}
    assert common_names(a, b) == (["y"], ["q", "x", "z"])
