"""The significance rule: a difference of means counts when it exceeds the combined std of the seeds."""

import math

from sparsetrain.analysis.significance import SIGNIFICANCE_RULE, difference


def test_beyond_noise_when_the_difference_exceeds_the_combined_std():
    d = difference(0.875, 0.375, 3, 0.25, 0.5, 3)  # combined std 0.625 (exact in binary): not above it
    assert d.diff == 0.625 and d.noise == 0.625
    assert not d.beyond_noise and d.words == "within noise"
    d = difference(0.70, 0.03, 3, 0.80, 0.04, 3)
    assert d.beyond_noise and d.diff < 0 and d.words == "beyond noise"  # either sign


def test_one_seed_has_no_noise_estimate():
    d = difference(0.9, 0.0, 1, 0.1, 0.0, 3)
    assert d.seeds == 1 and not d.beyond_noise and d.words == "one seed: no noise estimate"


def test_the_rule_is_stated_as_computed():
    assert "sqrt(s_a^2 + s_b^2)" in SIGNIFICANCE_RULE
    assert difference(0, 3, 2, 0, 4, 2).noise == math.hypot(3, 4)
