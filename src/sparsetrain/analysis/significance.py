"""The significance rule of every verdict the studies write: when a difference between two seed-averaged results
counts.

A *result* is the mean and sample standard deviation of a measure over seeds. A difference of two means counts
("beyond noise") when it exceeds their **combined standard deviation** ``sqrt(s_a^2 + s_b^2)``: the spread a
single seed of either shows, not the standard error of the means, so a verdict says what a user who trains one
seed of each can expect. With one seed there is no spread to compare with, and a verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SIGNIFICANCE_RULE", "Difference", "difference"]

#: The rule in one sentence, for reports.
SIGNIFICANCE_RULE = ("a difference between two results (means over seeds) counts as beyond noise when it exceeds the "
                     "combined standard deviation of their seeds, sqrt(s_a^2 + s_b^2); smaller differences are "
                     "within noise")


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two seed-averaged results and what the rule says of it.

    Attributes:
        diff: ``mean_a - mean_b``.
        noise: ``sqrt(std_a^2 + std_b^2)``.
        seeds: the smaller of the two seed counts.
    """

    diff: float
    noise: float
    seeds: int

    @property
    def beyond_noise(self) -> bool:
        """Whether ``|diff|`` exceeds the combined standard deviation (never with one seed)."""
        return self.seeds >= 2 and abs(self.diff) > self.noise

    @property
    def words(self) -> str:
        """"beyond noise", "within noise" or "one seed: no noise estimate"."""
        if self.seeds < 2:
            return "one seed: no noise estimate"
        return "beyond noise" if self.beyond_noise else "within noise"


def difference(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> Difference:
    """The :class:`Difference` of result a minus result b (means, sample standard deviations, seed counts)."""
    return Difference(mean_a - mean_b, math.sqrt(std_a ** 2 + std_b ** 2), min(n_a, n_b))
