"""Tests for sparsetrain.itop: the in-time over-parameterization rate."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.itop import ItopTracker, itop_rate

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _scripted_run(device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """A dynamic sparse run on a 2x4 and a 4-entry tensor, 2 and 1 active weights each, with swaps."""

    def m(bits: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(bits, dtype=torch.bool, device=device).reshape(shape)

    return [
        {"fc.weight": m([1, 1, 0, 0, 0, 0, 0, 0], (2, 4)), "out.weight": m([1, 0, 0, 0], (4,))},
        {"fc.weight": m([1, 0, 1, 0, 0, 0, 0, 0], (2, 4)), "out.weight": m([1, 0, 0, 0], (4,))},  # 1 -> 2
        {"fc.weight": m([0, 0, 1, 0, 0, 0, 0, 1], (2, 4)), "out.weight": m([0, 1, 0, 0], (4,))},  # 0 -> 7; 0 -> 1
        {"fc.weight": m([1, 0, 0, 0, 0, 0, 0, 1], (2, 4)), "out.weight": m([0, 1, 0, 0], (4,))},  # 2 -> 0 (seen)
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_scripted_topology_change(device: str) -> None:
    run = _scripted_run(device)
    tracker = ItopTracker()
    expected_rates = [3 / 12, 4 / 12, 6 / 12, 6 / 12]
    for masks, expected in zip(run, expected_rates):
        tracker.update(masks)
        assert tracker.rate() == pytest.approx(expected)
    assert tracker.per_layer() == {"fc.weight": pytest.approx(4 / 8), "out.weight": pytest.approx(2 / 4)}
    ever = tracker.ever_active()
    assert ever["fc.weight"].cpu().flatten().tolist() == [True, True, True, False, False, False, False, True]
    assert ever["out.weight"].device.type == device
    assert tracker.num_updates == 4
    assert itop_rate(run) == pytest.approx(0.5)


def test_static_mask_rate_is_its_density() -> None:
    mask = {"w": torch.arange(10) < 3}
    assert itop_rate([mask] * 5) == pytest.approx(0.3)


def test_tracker_copies_its_inputs() -> None:
    mask = {"w": torch.tensor([True, False])}
    tracker = ItopTracker()
    tracker.update(mask)
    mask["w"][1] = True  # mutating the caller's mask must not change the record
    assert tracker.rate() == 0.5
    tracker.ever_active()["w"][1] = True
    assert tracker.rate() == 0.5


def test_state_dict_round_trip_resumes_exactly() -> None:
    run = _scripted_run()
    full, first = ItopTracker(), ItopTracker()
    for masks in run:
        full.update(masks)
    for masks in run[:2]:
        first.update(masks)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = ItopTracker()
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.num_updates == 2 and resumed.rate() == pytest.approx(first.rate())
    for masks in run[2:]:
        resumed.update(masks)
    assert resumed.rate() == full.rate()
    assert all(torch.equal(resumed.ever_active()[k], v) for k, v in full.ever_active().items())
    with pytest.raises(ValueError, match="num_updates"):
        ItopTracker().load_state_dict({"ever_active": {}})
    with pytest.raises(ValueError, match="num_updates=3"):
        ItopTracker().load_state_dict({"ever_active": {}, "num_updates": 3})


def test_errors() -> None:
    tracker = ItopTracker()
    with pytest.raises(RuntimeError, match="update"):
        tracker.rate()
    tracker.update({"w": torch.zeros(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'w'.*\\(2, 2\\).*\\(4,\\)"):
        tracker.update({"w": torch.zeros(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="v"):
        tracker.update({"v": torch.zeros(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="torch.bool"):
        tracker.update({"w": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="at least one"):
        itop_rate([])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=6))
def test_rate_is_the_union_and_grows(n: int, steps: list[list[bool]]) -> None:
    masks = [{"w": torch.tensor(bits[:n])} for bits in steps]
    tracker = ItopTracker()
    previous = 0.0
    for m in masks:
        tracker.update(m)
        rate = tracker.rate()
        assert previous <= rate <= 1.0
        assert rate >= int(m["w"].sum()) / n
        previous = rate
    union = torch.stack([m["w"] for m in masks]).any(dim=0)
    assert itop_rate(masks) == int(union.sum()) / n
