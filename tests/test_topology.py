"""Topology events: the record of one update, checked against plain set arithmetic and on real sparsifiers."""

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import math

import sparsetrain.sparsifier as sparsifier_module
from sparsetrain import GMP, SET, GraNet, RigL
from helpers import watch_topology
from sparsetrain.topology import LayerTopology, TopologyEvent, TopologySubscribers, capture_masks, topology_event


def test_hand_counted_example():
    before = {"w": torch.tensor([True, True, True, False, False, False])}
    after = {"w": torch.tensor([True, False, False, True, True, False])}
    ever = {"w": before["w"] | after["w"]}
    grad = {"w": torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0, 4.0])}
    event = topology_event(7, before, after, ever, grads=grad, drop_fraction=0.5, target_sparsity={"w": 0.5})
    layer = event.layers["w"]
    # kept {0}, dropped {1, 2}, grown {3, 4}; union {0..4}: churn 1 - 1/5; ever-active 5 of 6
    assert (layer.numel, layer.active, layer.dropped, layer.grown) == (6, 3, 2, 2)
    assert layer.churn == pytest.approx(0.8)
    assert layer.itop == pytest.approx(5 / 6)
    assert layer.grad_share == pytest.approx((4 + 1) / (1 + 4 + 1 + 16))
    assert (layer.drop_fraction, layer.target_sparsity) == (0.5, 0.5)
    assert event.step == 7 and event.density == 0.5


masks_strategy = st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.lists(st.booleans(), min_size=n, max_size=n), st.lists(st.booleans(), min_size=n,
                        max_size=n), st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=60, deadline=None)
@given(st.lists(masks_strategy, min_size=1, max_size=3))
def test_counts_match_set_arithmetic(tensors):
    before, after, ever = {}, {}, {}
    for i, (b, a, e) in enumerate(tensors):
        before[f"t{i}"] = torch.tensor(b)
        after[f"t{i}"] = torch.tensor(a)
        ever[f"t{i}"] = torch.tensor(e) | torch.tensor(a) | torch.tensor(b)
    event = topology_event(1, before, after, ever)
    for name, layer in event.layers.items():
        old = {i for i, v in enumerate(before[name].tolist()) if v}
        new = {i for i, v in enumerate(after[name].tolist()) if v}
        assert layer.active == len(new)
        assert layer.dropped == len(old - new)
        assert layer.grown == len(new - old)
        union = old | new
        assert layer.churn == pytest.approx(1 - len(old & new) / len(union) if union else 0.0)
        assert layer.itop == pytest.approx(int(ever[name].sum()) / ever[name].numel())
        assert layer.grad_share is None
    assert event.active == sum(len([v for v in a if v]) for _, a, _ in tensors)
    kept = sum(int((before[n] & after[n]).sum()) for n in before)
    union = sum(int((before[n] | after[n]).sum()) for n in before)
    assert event.churn == pytest.approx(1 - kept / union if union else 0.0)


def test_round_trip_through_dict():
    before = {"a": torch.tensor([[True, False], [False, True]]), "b": torch.ones(3, dtype=torch.bool)}
    after = {"a": torch.tensor([[False, True], [False, True]]), "b": torch.tensor([True, False, True])}
    ever = {n: before[n] | after[n] for n in before}
    event = topology_event(300, before, after, ever, grads={"a": torch.randn(2, 2)}, drop_fraction=0.3)
    record = event.to_dict()
    assert record["dropped"] == 2 and record["grown"] == 1
    assert TopologyEvent.from_dict(record) == event
    with pytest.raises(ValueError, match="not a topology event"):
        TopologyEvent.from_dict({"epoch": 1})
    with pytest.raises(ValueError, match="does not fit"):
        TopologyEvent.from_dict({"step": 1, "layers": {"a": {"numel": 4}}})


def test_rejects_mismatched_masks():
    mask = {"w": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ValueError, match="missing"):
        topology_event(1, mask, {**mask, "v": torch.ones(2, dtype=torch.bool)}, mask)
    with pytest.raises(ValueError, match="shape"):
        topology_event(1, {"w": torch.ones(5, dtype=torch.bool)}, mask, mask)
    with pytest.raises(TypeError, match="bool"):
        topology_event(1, {"w": torch.ones(4)}, mask, mask)


def _train_and_watch(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    return watch_topology(method, model, steps=60, update_every=10, sparsity=0.8, distribution="uniform",
                          batch=(torch.randn(32, 20), torch.randint(0, 10, (32,))))


def test_rigl_events_describe_a_zero_cost_swap():
    sparsifier, events = _train_and_watch(RigL)
    assert [e.step for e in events] == [10, 20, 30, 40]  # until 75% of the run
    for event in events:
        for name, layer in event.layers.items():
            assert layer.dropped == layer.grown > 0
            assert layer.active == int(sparsifier.masks[name].sum())
            assert layer.target_sparsity == 0.8
    assert events[-1].itop == pytest.approx(sparsifier.itop_rate())
    assert events[0].layers["0.weight"].drop_fraction == pytest.approx(sparsifier.current_drop_fraction(10))


def test_rigl_grows_more_gradient_than_set():
    """RigL grows the largest-gradient positions, SET random ones: RigL's grown weights hold more of the gradient."""
    _, rigl = _train_and_watch(RigL)
    _, set_ = _train_and_watch(SET)
    for a, b in zip(rigl, set_, strict=True):  # same schedule: about as many weights grown per update
        for name, layer in a.layers.items():
            assert layer.grad_share > 2 * b.layers[name].grad_share


def test_subscribers_publish_remove_and_copy():
    subscribers = TopologySubscribers()
    seen, other = [], []
    first = subscribers.subscribe(seen.append)
    subscribers.subscribe(lambda e: other.append(e.step))
    event = TopologyEvent(step=5, layers={"w": LayerTopology(4, 2, 1, 1, 2 / 3, 0.75)})
    subscribers.publish(event)
    first.remove()
    subscribers.publish(TopologyEvent(step=6))
    assert seen == [event] and other == [5, 6] and len(subscribers) == 1
    assert not copy.deepcopy(subscribers) and not pickle.loads(pickle.dumps(subscribers))
    with pytest.raises(TypeError, match="callable"):
        subscribers.subscribe("not a function")

    def broken(event):
        raise OSError("disk full")

    subscribers.subscribe(broken)
    with pytest.raises(OSError, match="disk full"):
        subscribers.publish(event)


# -- published by the sparsifier -----------------------------------------------------------------------------------
def _rigl_fraction(step):  # RigL's f(t) with alpha 0.3, final 0, T_end = 0.75 * 60 = 45
    return 0.15 * (1 + math.cos(math.pi * step / 45))


def _gmp_target(step):  # cubic from 0 to 0.8 between steps 0 and 30
    return 0.8 * (1 - (1 - min(step, 30) / 30) ** 3)


@pytest.mark.parametrize("method, options, fraction, target", [
    (RigL, {}, _rigl_fraction, lambda step: 0.8),
    (GMP, {"prune_end": 30}, lambda step: None, _gmp_target),
    (GraNet, {"prune_end": 30, "drop_fraction": 0.4, "drop_fraction_final": 0.1},
     lambda step: 0.1 + 0.15 * (1 + math.cos(math.pi * step / 60)), _gmp_target),
])
def test_published_events_match_a_record_taken_by_hand(method, options, fraction, target):
    """Two identical runs: one subscribed, one recorded by hand around ``step()`` (masks copied before, gradients
    cloned, the schedule computed from the papers' formulas). Same events, and the subscription changes nothing."""
    batch = (torch.randn(32, 20), torch.randint(0, 10, (32,)))
    runs = []
    for subscribed in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sparsifier = method(model, optimizer, total_steps=60, update_every=10, sparsity=0.8, **options)
        events = []
        if subscribed:
            sparsifier.subscribe(events.append)
        for _ in range(60):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
            optimizer.step()
            before, grads = capture_masks(sparsifier.masks), {n: p.grad.clone() for n, p in sparsifier.params.items()}
            if sparsifier.step() and not subscribed:
                step = sparsifier.step_count
                events.append(topology_event(step, before, sparsifier.masks, sparsifier.ever_active, grads=grads,
                                             drop_fraction=fraction(step), target_sparsity=target(step)))
        runs.append((events, [p.detach().clone() for p in model.parameters()]))
    (published, weights), (by_hand, reference) = runs
    assert len(published) == len(by_hand) >= 3
    for ours, theirs in zip(published, by_hand, strict=True):
        assert ours.step == theirs.step
        for name, layer in ours.layers.items():
            expected = theirs.layers[name]
            for key in ("numel", "active", "dropped", "grown"):
                assert getattr(layer, key) == getattr(expected, key)
            for key in ("churn", "itop", "drop_fraction", "target_sparsity", "grad_share"):
                assert getattr(layer, key) == pytest.approx(getattr(expected, key))
    assert all(torch.equal(a, b) for a, b in zip(weights, reference))


def test_granet_prune_only_update_has_no_drop_fraction():
    """GraNet without regrowth after pruning: the off-grid update at prune_end only prunes."""
    _, events = watch_topology(GraNet, nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)), steps=60,
                               update_every=10, sparsity=0.8, prune_end=25, regrow_after_pruning=False)
    assert [e.step for e in events] == [10, 20, 25]
    assert events[1].layers["0.weight"].drop_fraction is not None and events[1].grown > 0
    assert events[-1].layers["0.weight"].drop_fraction is None and events[-1].grown == 0
    assert events[-1].layers["0.weight"].target_sparsity == pytest.approx(0.8)


def test_nobody_listening_copies_nothing(monkeypatch):
    """Without subscribers (none yet, or all removed) an update neither copies the masks nor computes an event."""
    def forbidden(*args, **kwargs):
        raise AssertionError("called with nobody listening")

    monkeypatch.setattr(sparsifier_module, "capture_masks", forbidden)
    monkeypatch.setattr(sparsifier_module, "topology_event", forbidden)
    model = nn.Sequential(nn.Linear(20, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = RigL(model, optimizer, total_steps=100, update_every=10, sparsity=0.8)

    def train(steps):
        changed = 0
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.randn(4, 20)).sum().backward()
            optimizer.step()
            changed += sparsifier.step()
        return changed

    assert train(20) == 2
    sparsifier.subscribe(lambda event: None).remove()
    assert train(10) == 1
    sparsifier.subscribe(lambda event: None)
    with pytest.raises(AssertionError, match="nobody listening"):
        train(10)


def test_copies_start_without_subscribers():
    sparsifier, events = watch_topology(RigL, nn.Sequential(nn.Linear(20, 5)), steps=20, update_every=5,
                                        sparsity=0.8)
    assert len(events) == 2 and len(sparsifier.subscribers) == 1
    for copied in (copy.deepcopy(sparsifier), pickle.loads(pickle.dumps(sparsifier))):
        assert not copied.subscribers and len(sparsifier.subscribers) == 1
        copied.subscribe(events.append)  # a copy can be watched on its own
        assert len(copied.subscribers) == 1 and len(sparsifier.subscribers) == 1


def test_a_skipped_update_publishes_nothing():
    sparsifier, events = watch_topology(RigL, nn.Sequential(nn.Linear(20, 5)), steps=9, update_every=10,
                                        sparsity=0.8)
    model, optimizer = sparsifier.model, sparsifier.optimizer
    optimizer.zero_grad()
    model(torch.randn(4, 20)).sum().backward()
    model[0].weight.grad[0, 0] = float("nan")
    optimizer.step()
    assert sparsifier.step() is False and events == []
