"""Tests for sparsetrain.analysis.overlap: IoU, Hamming distance, masks from state dicts."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.analysis.overlap import iou, mask_overlap, masks_from_state_dict

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _mask(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


@pytest.mark.parametrize("device", DEVICES)
def test_known_counts(device: str) -> None:
    a = {"w": _mask([1, 1, 0, 0]).to(device), "v": _mask([1, 1, 1, 1, 0, 0]).reshape(2, 3).to(device)}
    b = {"w": _mask([1, 0, 1, 0]).to(device), "v": _mask([1, 1, 1, 1, 0, 0]).reshape(2, 3).to(device)}
    rep = mask_overlap(a, b)
    w, v = rep.by_name()["w"], rep.by_name()["v"]
    assert (w.intersection, w.union, w.hamming, w.numel) == (1, 3, 2, 4)
    assert w.iou == pytest.approx(1 / 3)
    assert w.hamming_fraction == pytest.approx(0.5)
    assert (v.iou, v.hamming) == (1.0, 0)
    t = rep.total
    assert (t.numel, t.active_a, t.active_b, t.intersection, t.union, t.hamming) == (10, 6, 6, 5, 7, 2)
    assert t.iou == pytest.approx(5 / 7)
    assert [r.name for r in rep.rows] == ["w", "v"]


def test_empty_masks_have_iou_one() -> None:
    a = {"w": torch.zeros(3, 4, dtype=torch.bool)}
    rep = mask_overlap(a, {"w": torch.zeros(3, 4, dtype=torch.bool)})
    assert rep.rows[0].iou == 1.0 and rep.total.iou == 1.0
    assert rep.rows[0].hamming == 0
    assert iou(0, 0) == 1.0


def test_disjoint_masks() -> None:
    rep = mask_overlap({"w": _mask([1, 1, 0, 0])}, {"w": _mask([0, 0, 1, 1])})
    assert rep.total.iou == 0.0 and rep.total.hamming == 4 and rep.total.hamming_fraction == 1.0


def test_random_iou_baseline_known_value() -> None:
    # a full, b half: E[I] = 4*2/4 = 2, union = 4 + 2 - 2 = 4 -> 0.5, which any such pair attains.
    rep = mask_overlap({"w": _mask([1, 1, 1, 1])}, {"w": _mask([1, 0, 1, 0])})
    assert rep.total.random_iou == pytest.approx(0.5)
    assert rep.total.iou == pytest.approx(0.5)
    # two independent 10% masks of a large tensor: random_iou = 0.01 / 0.19
    rep = mask_overlap({"w": torch.arange(1000) < 100}, {"w": torch.arange(1000) >= 900})
    assert rep.total.random_iou == pytest.approx(0.01 / 0.19)


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    n_tensors = draw(st.integers(1, 3))
    a, b = {}, {}
    for i in range(n_tensors):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        numel = int(torch.tensor(shape).prod())
        bits_a = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        bits_b = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        a[f"layer{i}.weight"] = torch.tensor(bits_a).reshape(shape)
        b[f"layer{i}.weight"] = torch.tensor(bits_b).reshape(shape)
    return a, b


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_overlap_invariants(pair: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
    a, b = pair
    ab, ba, aa = mask_overlap(a, b), mask_overlap(b, a), mask_overlap(a, a)
    for row, rev in zip([*ab.rows, ab.total], [*ba.rows, ba.total]):
        assert 0.0 <= row.iou <= 1.0 and 0.0 <= row.random_iou <= 1.0
        assert row.iou == rev.iou and row.hamming == rev.hamming  # symmetric
        assert row.hamming == row.union - row.intersection
        assert row.hamming == pytest.approx(row.union * (1 - row.iou))
        assert row.hamming_fraction == pytest.approx(row.hamming / row.numel)
    for name, row in ab.by_name().items():
        assert row.hamming == int((a[name] ^ b[name]).sum())
        assert row.intersection == int((a[name] & b[name]).sum())
    assert all(r.iou == 1.0 and r.hamming == 0 for r in [*aa.rows, aa.total])
    complement = mask_overlap(a, {k: ~v for k, v in a.items()})
    assert complement.total.hamming == complement.total.numel
    assert complement.total.intersection == 0


def test_to_dict_is_json_and_str_is_a_table() -> None:
    rep = mask_overlap({"fc.weight": _mask([1, 0, 1])}, {"fc.weight": _mask([1, 1, 0])})
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["rows"][0]["name"] == "fc.weight"
    assert d["rows"][0]["intersection"] == 1 and d["total"]["union"] == 3
    text = str(rep)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["tensor", "numel"]
    assert lines[2].startswith("fc.weight") and lines[-1].startswith("total")
    assert "0.3333" in text


def test_mismatched_names_and_shapes_raise() -> None:
    a = {"fc.weight": _mask([1, 0]), "conv.weight": _mask([1])}
    with pytest.raises(ValueError, match="conv.weight"):
        mask_overlap(a, {"fc.weight": _mask([1, 0])})
    with pytest.raises(ValueError, match="fc.weight.*\\(2,\\).*\\(3,\\)"):
        mask_overlap({"fc.weight": _mask([1, 0])}, {"fc.weight": _mask([1, 0, 0])})
    with pytest.raises(TypeError, match="fc.weight.*torch.bool"):
        mask_overlap({"fc.weight": torch.ones(2)}, {"fc.weight": _mask([1, 0])})


def test_masks_from_state_dict_selects_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Conv1d(3, 2, 2))
    model.register_buffer("ids", torch.zeros(1, 4, dtype=torch.long))
    with torch.no_grad():
        model[0].weight[0] = 0
    sd = model.state_dict()
    masks = masks_from_state_dict(sd)
    assert list(masks) == ["0.weight", "2.weight"]
    assert masks["0.weight"].dtype == torch.bool
    assert torch.equal(masks["0.weight"], sd["0.weight"] != 0)
    assert int(masks["0.weight"].sum()) == 8
    only = masks_from_state_dict(sd, names=["0.bias"])
    assert list(only) == ["0.bias"]
    with pytest.raises(ValueError, match="missing.weight"):
        masks_from_state_dict(sd, names=["missing.weight"])
    # a checkpoint compared with itself overlaps fully
    assert mask_overlap(masks, masks_from_state_dict(sd)).total.iou == 1.0
