"""Schedules (sparsetrain.schedules) against hand-computed values; they are pure functions of the step."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsetrain
from helpers import make_model
from sparsetrain.schedules import UpdateCadence, cosine_decay, cubic_sparsity, resolve_step

QUICK = settings(max_examples=80, deadline=None)


def test_cubic_hand_computed():
    # s_t = s_f + (s_i - s_f) * (1 - (t - t0)/(t_f - t0))^3 with s_i = 0, s_f = 0.9, t0 = 0, t_f = 100.
    # t = 25: 0.9 - 0.9 * 0.75^3 = 0.9 - 0.9 * 0.421875 = 0.5203125
    # t = 50: 0.9 - 0.9 * 0.5^3  = 0.9 - 0.1125        = 0.7875
    # t = 75: 0.9 - 0.9 * 0.25^3 = 0.9 - 0.0140625     = 0.8859375
    assert cubic_sparsity(0, 0.0, 0.9, 0, 100) == 0.0
    assert cubic_sparsity(25, 0.0, 0.9, 0, 100) == pytest.approx(0.5203125, abs=1e-15)
    assert cubic_sparsity(50, 0.0, 0.9, 0, 100) == pytest.approx(0.7875, abs=1e-15)
    assert cubic_sparsity(75, 0.0, 0.9, 0, 100) == pytest.approx(0.8859375, abs=1e-15)
    assert cubic_sparsity(100, 0.0, 0.9, 0, 100) == 0.9
    assert cubic_sparsity(10_000, 0.0, 0.9, 0, 100) == 0.9
    # GraNet-ST: s_i = 0.5, s_f = 0.9, t0 = 10, t_f = 110; t = 60: 0.9 + (0.5 - 0.9) * 0.5^3 = 0.9 - 0.05 = 0.85.
    assert cubic_sparsity(5, 0.5, 0.9, 10, 110) == 0.5
    assert cubic_sparsity(10, 0.5, 0.9, 10, 110) == 0.5
    assert cubic_sparsity(60, 0.5, 0.9, 10, 110) == pytest.approx(0.85, abs=1e-15)
    # One-shot (t0 == t_f): s_i before, s_f from t_f on.
    assert cubic_sparsity(9, 0.0, 0.9, 10, 10) == 0.0
    assert cubic_sparsity(10, 0.0, 0.9, 10, 10) == 0.9


@QUICK
@given(s_i=st.floats(0, 0.9), extra=st.floats(0, 0.09), t0=st.integers(0, 50), span=st.integers(1, 200),
       t=st.integers(0, 400))
def test_cubic_is_monotone_bounded_and_pure(s_i, extra, t0, span, t):
    s_f = s_i + extra
    value = cubic_sparsity(t, s_i, s_f, t0, t0 + span)
    assert s_i - 1e-12 <= value <= s_f + 1e-12
    assert value <= cubic_sparsity(t + 1, s_i, s_f, t0, t0 + span) + 1e-12
    assert value == cubic_sparsity(t, s_i, s_f, t0, t0 + span)  # no hidden state


def test_cosine_drop_fraction_hand_computed():
    # RigL: f(t) = alpha/2 * (1 + cos(pi t / T_end)), alpha = 0.3, T_end = 100.
    assert cosine_decay(0, 0.3, 0.0, 100) == pytest.approx(0.3, abs=1e-15)
    # t = 25: 0.15 * (1 + cos(pi/4)) = 0.15 * 1.7071067811865475 = 0.25606601717798213
    assert cosine_decay(25, 0.3, 0.0, 100) == pytest.approx(0.25606601717798213, abs=1e-15)
    assert cosine_decay(50, 0.3, 0.0, 100) == pytest.approx(0.15, abs=1e-15)
    # t = 75: 0.15 * (1 - cos(pi/4)) = 0.15 * 0.2928932188134524 = 0.04393398282201787
    assert cosine_decay(75, 0.3, 0.0, 100) == pytest.approx(0.04393398282201787, abs=1e-15)
    assert cosine_decay(100, 0.3, 0.0, 100) == 0.0
    assert cosine_decay(150, 0.3, 0.0, 100) == 0.0
    # GraNet: 0.5 -> 0.005 over the run (T = 1000); halfway: 0.005 + 0.495 * 0.5 = 0.2525.
    assert cosine_decay(0, 0.5, 0.005, 1000) == pytest.approx(0.5, abs=1e-15)
    assert cosine_decay(500, 0.5, 0.005, 1000) == pytest.approx(0.2525, abs=1e-15)
    assert cosine_decay(1000, 0.5, 0.005, 1000) == 0.005


def test_constant_drop_fraction_when_initial_equals_final():
    assert {cosine_decay(t, 0.3, 0.3, 100) for t in range(0, 300, 7)} == {0.3}


@QUICK
@given(initial=st.floats(0.01, 1.0), total=st.integers(1, 500), t=st.integers(0, 600))
def test_cosine_is_monotone_bounded_and_pure(initial, total, t):
    final = initial / 10
    value = cosine_decay(t, initial, final, total)
    assert final - 1e-12 <= value <= initial + 1e-12
    assert cosine_decay(t + 1, initial, final, total) <= value + 1e-12
    assert value == cosine_decay(t, initial, final, total)


def test_update_cadence_known_grids():
    steps = range(0, 40)
    assert [t for t in steps if UpdateCadence(10)(t)] == [10, 20, 30]
    assert [t for t in steps if UpdateCadence(10, start=5, end=27)(t)] == [15, 25]
    assert [t for t in steps if UpdateCadence(10, start=5, end=27, include_end=True)(t)] == [15, 25, 27]
    # include_end on the grid does not double anything; end itself is included when on the grid.
    assert [t for t in steps if UpdateCadence(10, start=0, end=30, include_end=True)(t)] == [10, 20, 30]
    # One-shot: start == end with include_end fires exactly once, at end.
    assert [t for t in steps if UpdateCadence(10, start=12, end=12, include_end=True)(t)] == [12]


@QUICK
@given(every=st.integers(1, 10), start=st.integers(0, 20), length=st.integers(0, 40), include_end=st.booleans())
def test_update_cadence_matches_its_definition(every, start, length, include_end):
    end = start + length
    cadence = UpdateCadence(every, start, end, include_end)
    expected = {start + k * every for k in range(1, length // every + 1)}
    if include_end:
        expected.add(end)
    expected.discard(0)  # step 0 is before the first optimizer step
    assert {t for t in range(1, end + 30) if cadence(t)} == expected


def test_resolve_step_fractions_and_steps():
    assert resolve_step(0.75, 200, "stop_at") == 150
    assert resolve_step(30, 200, "stop_at") == 30
    with pytest.raises(ValueError, match=r"stop_at=1.5.*\[0, 1\]"):
        resolve_step(1.5, 200, "stop_at")
    with pytest.raises(ValueError, match=r"prune_end=300.*total_steps=200"):
        resolve_step(300, 200, "prune_end")
    with pytest.raises(TypeError, match=r"prune_start.*'soon'"):
        resolve_step("soon", 200, "prune_start")


# -- the schedules as the methods use them, in optimizer steps --------------------------------------------------


def test_gmp_schedule_in_optimizer_steps():
    sp = sparsetrain.GMP(make_model("mlp"), None, sparsity=0.9, total_steps=200, prune_start=0, prune_end=100,
                         update_every=25)
    assert [t for t in range(1, 201) if sp.is_update_step(t)] == [25, 50, 75, 100]
    assert sp.target_sparsity(25) == pytest.approx(0.5203125, abs=1e-15)
    assert sp.target_sparsity(50) == pytest.approx(0.7875, abs=1e-15)
    assert sp.target_sparsity(150) == 0.9
    # Fractions of total_steps and an off-grid end: end is always an update step.
    sp = sparsetrain.GMP(make_model("mlp"), None, sparsity=0.9, total_steps=200, prune_start=0.1, prune_end=0.45,
                         update_every=30)
    assert [t for t in range(1, 201) if sp.is_update_step(t)] == [50, 80, 90]


def test_granet_regrowth_cadence_and_drop_fraction():
    sp = sparsetrain.GraNet(make_model("mlp"), None, sparsity=0.9, total_steps=100, prune_end=40, update_every=20)
    # Pruning at 20 and 40; drop-and-regrow continues to the end of the run by default.
    assert [t for t in range(1, 101) if sp.is_update_step(t)] == [20, 40, 60, 80, 100]
    assert sp.current_drop_fraction(50) == pytest.approx(0.2525, abs=1e-15)
    stopped = sparsetrain.GraNet(make_model("mlp"), None, sparsity=0.9, total_steps=100, prune_end=40,
                                 update_every=20, regrow_after_pruning=False)
    assert [t for t in range(1, 101) if stopped.is_update_step(t)] == [20, 40]


def test_rigl_cadence_stops_before_t_end_and_drop_fraction_follows_the_cosine():
    sp = sparsetrain.RigL(make_model("mlp"), None, sparsity=0.9, total_steps=400, update_every=100)
    # T_end = 0.75 * 400 = 300; updates at steps < T_end on the grid.
    assert [t for t in range(1, 401) if sp.is_update_step(t)] == [100, 200]
    assert sp.current_drop_fraction(100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 3)), abs=1e-15)
    assert sp.current_drop_fraction(300) == 0.0
