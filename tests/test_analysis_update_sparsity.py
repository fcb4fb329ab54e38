"""Tests for sparsetrain.analysis.update_sparsity: changed fractions, update overlap, update rank."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.analysis.update_sparsity import (
    UpdateSparsityReport,
    changed_masks,
    update_overlap,
    update_rank,
    update_sparsity,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _checkpoints(device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    before = {
        "fc.weight": torch.randn(4, 5, generator=g),
        "fc.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(3),
    }
    after = {k: v.clone() for k, v in before.items()}
    after["fc.weight"][0, :3] += 1.0  # 3 entries, one row: rank 1
    after["fc.weight"][1, 0] += 1e-4  # a tiny change
    after["bn.num_batches_tracked"] += 10
    return {k: v.to(device) for k, v in before.items()}, {k: v.to(device) for k, v in after.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_known_fractions_and_rank(device: str) -> None:
    before, after = _checkpoints(device)
    rep = update_sparsity(before, after)
    rows = rep.by_name()
    assert list(rows) == ["fc.weight", "fc.bias"]  # integer buffers are left out
    assert rows["fc.weight"].changed == 4
    assert rows["fc.weight"].fraction_changed == pytest.approx(4 / 20)
    assert rows["fc.weight"].rank == 2 and rows["fc.weight"].full_rank == 4
    assert rows["fc.bias"].changed == 0 and rows["fc.bias"].rank is None
    assert rep.total.numel == 24 and rep.total.changed == 4
    assert rep.changed_masks["fc.weight"].device.type == device
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0, :3] = True
    expected[1, 0] = True
    assert torch.equal(rep.changed_masks["fc.weight"].cpu(), expected)


def test_atol_ignores_small_changes() -> None:
    before, after = _checkpoints()
    rep = update_sparsity(before, after, atol=1e-3)
    assert rep.by_name()["fc.weight"].changed == 3
    # a change of exactly atol is not "beyond" it
    b, a = {"w": torch.zeros(3)}, {"w": torch.tensor([0.5, 0.25, 0.75])}
    assert changed_masks(b, a, atol=0.5)["w"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="atol"):
        changed_masks(b, a, atol=-1.0)


def test_special_values() -> None:
    inf, nan = float("inf"), float("nan")
    b = {"w": torch.tensor([inf, nan, 0.0, 1.0, -0.0])}
    a = {"w": torch.tensor([inf, nan, -0.0, 1.0, 2.0])}
    assert changed_masks(b, a)["w"].tolist() == [False, True, False, False, True]
    assert changed_masks(b, a, atol=0.1)["w"].tolist() == [False, True, False, False, True]


def test_low_precision_changes_are_seen() -> None:
    b = {"w": torch.full((2, 2), 256.0, dtype=torch.bfloat16)}
    a = {"w": b["w"].clone()}
    a["w"][0, 0] = 258.0  # one bf16 ulp at 256
    rep = update_sparsity(b, a)
    assert rep.total.changed == 1 and rep.rows[0].rank == 1


def test_rank_of_structured_updates() -> None:
    g = torch.Generator().manual_seed(1)
    before = torch.randn(6, 8, generator=g, dtype=torch.float64)
    u, v = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)
    assert update_rank(before, before + u @ v) == 3
    assert update_rank(before, before + u[:, :1] @ v[:1]) == 1
    assert update_rank(before, before) == 0
    # conv kernel (out=4, in=2, 3, 3): rows of the (4, 18) reshape span 2 dims
    k0 = torch.randn(4, 2, 3, 3, generator=g)
    delta = (torch.randn(4, 2, generator=g) @ torch.randn(2, 18, generator=g)).reshape(4, 2, 3, 3)
    assert update_rank(k0, k0 + delta) == 2
    # tolerance: rank 1 plus tiny noise is full rank by default, rank 1 with an absolute tolerance
    noisy = before + u[:, :1] @ v[:1] + 1e-6 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    assert update_rank(before, noisy) == 6
    assert update_rank(before, noisy, atol=1e-3) == 1
    rep = update_sparsity({"w": before}, {"w": noisy}, rank_atol=1e-3)
    assert rep.rows[0].rank == 1
    assert update_sparsity({"w": before}, {"w": noisy}, compute_rank=False).rows[0].rank is None
    with pytest.raises(ValueError, match="2 dims"):
        update_rank(torch.zeros(3), torch.ones(3))


def test_update_overlap_across_runs() -> None:
    start = {"w": torch.zeros(2, 4), "b": torch.zeros(3)}
    run_a = {"w": torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0]]), "b": torch.zeros(3)}
    run_b = {"w": torch.tensor([[0.0, 1, 1, 1], [0, 0, 0, 0]]), "b": torch.zeros(3)}
    rep_a, rep_b = update_sparsity(start, run_a), update_sparsity(start, run_b)
    ov = update_overlap(rep_a, rep_b)
    w = ov.by_name()["w"]
    assert (w.intersection, w.union) == (2, 4) and w.iou == 0.5
    assert ov.by_name()["b"].iou == 1.0  # neither run changed the bias
    same = update_overlap(changed_masks(start, run_a), rep_b.changed_masks)
    assert same.to_dict() == ov.to_dict()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_changed_count_matches_direct_comparison(rows: int, cols: int, data: st.DataObject) -> None:
    bits = data.draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    where = torch.tensor(bits).reshape(rows, cols)
    before = torch.randn(rows, cols)
    after = before + where.float() * 0.5
    rep = update_sparsity({"w": before}, {"w": after})
    assert rep.total.changed == int(where.sum())
    assert torch.equal(rep.changed_masks["w"], where)
    assert 0 <= rep.rows[0].rank <= min(rows, cols)


def test_names_selection_and_errors() -> None:
    before, after = _checkpoints()
    rep = update_sparsity(before, after, names=["fc.bias"])
    assert [r.name for r in rep.rows] == ["fc.bias"]
    with pytest.raises(ValueError, match="fc.extra"):
        update_sparsity(before, {**after, "fc.extra": torch.zeros(2)})
    with pytest.raises(ValueError, match="fc.weight"):
        update_sparsity(before, {**after, "fc.weight": torch.zeros(5, 4)})
    with pytest.raises(ValueError, match="nope"):
        update_sparsity(before, after, names=["nope"])


def test_report_serialises() -> None:
    before, after = _checkpoints()
    rep = update_sparsity(before, after)
    assert isinstance(rep, UpdateSparsityReport)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["rows"][0]["shape"] == [4, 5] and d["rows"][0]["rank"] == 2
    assert d["total"]["changed"] == 4 and "changed_masks" not in d
    text = str(rep)
    assert text.splitlines()[2].startswith("fc.weight") and text.splitlines()[-1].startswith("total")
