"""The lottery experiment's hyperparameters: one frozen dataclass, saved as ``config.json`` in the run directory.

Iterative magnitude pruning (IMP) after Frankle & Carbin (ICLR 2019, *The Lottery Ticket Hypothesis*) and
Frankle et al. (ICML 2020, *Linear Mode Connectivity and the Lottery Ticket Hypothesis*, rewinding to step k).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sparsetrain.nm import check_pattern
from sparsetrain.selection import SCOPES, check_scope
from sparsetrain.validation import check_bool, check_int, check_number

__all__ = ["LotteryConfig", "SCOPES", "CONTROLS"]

logger = logging.getLogger(__name__)

#: The controls of a ticket: the same mask with a fresh random initialisation, and a random mask with the
#: ticket's per-tensor counts (trained from the same rewind point).
CONTROLS = ("reinit", "random")
#: At most this many rounds: at a rate of 0.2 per round, 100 rounds keep 2e-10 of the weights.
MAX_ROUNDS = 100


def _rate(name: str, value: Any) -> float:
    return check_number(name, value, "[0, 1)", "a pruning rate must be a number")


@dataclass(frozen=True)
class LotteryConfig:
    """What a lottery run does (every field is saved to ``config.json``; a resumed run must match it).

    Attributes:
        rounds: pruning rounds after the dense level 0; the run has ``level_0 .. level_<rounds>``.
        prune_rate: fraction of the *remaining* weights pruned per round (0.2 in both papers).
        output_rate: rate for the output layer (0.1 in Frankle & Carbin's conv nets); None: ``prune_rate``.
        output_layer: name of the output tensor; None: the last selected tensor.
        scope: "layer" (each tensor loses its rate of its own remaining weights, as Frankle & Carbin) or
            "global" (one magnitude threshold over all tensors but the output layer, as OpenLTH's default;
            the output layer is pruned on its own at ``output_rate``).
        rewind_step: rewind survivors to their values at step 0 (initialisation, Frankle & Carbin) or at
            optimizer step k of the dense run (Frankle et al. 2020); the levels start at that step, with the
            learning-rate schedule and data order of the dense run there.
        one_shot: level k prunes the dense level-0 weights straight to level k's counts, instead of pruning
            the weights retrained at level k-1.
        controls: which controls to train at each level >= 1: "reinit", "random".
        include / exclude: which tensors are pruned, as :func:`sparsetrain.masks.select_prunable`.
        seed: seeds the controls (the random mask and the re-initialisation); training is seeded by the
            recipe's ``train.seed``.
        notes: free-form JSON-able notes (saved with the config and compared on resume; the runner does not read
            them). The recipe itself is saved as ``experiment.yaml`` and checked on resume.
        pattern: ``"N:M"``: every level is an N:M pattern, each round applying the rate to the groups' counts
            down to N (:mod:`sparsetrain.lottery.imp`); layer scope only. None: unstructured.
    """

    rounds: int = 3
    prune_rate: float = 0.2
    output_rate: float | None = 0.1
    output_layer: str | None = None
    scope: str = "layer"
    rewind_step: int = 0
    one_shot: bool = False
    controls: tuple[str, ...] = CONTROLS
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    seed: int = 0
    notes: Mapping[str, Any] = field(default_factory=dict)
    pattern: str | None = None

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, 0)
        if self.rounds > MAX_ROUNDS:
            raise ValueError(f"rounds={self.rounds} is not allowed: at most {MAX_ROUNDS} (each round prunes a share "
                             "of the remaining weights)")
        _rate("prune_rate", self.prune_rate)
        if self.output_rate is not None:
            _rate("output_rate", self.output_rate)
        check_scope(self.scope)
        check_int("rewind_step", self.rewind_step, 0)
        check_bool("one_shot", self.one_shot)
        controls = (self.controls,) if isinstance(self.controls, str) else tuple(self.controls)
        unknown = [c for c in controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"controls={self.controls!r}: {unknown} unknown; allowed: {', '.join(CONTROLS)}")
        object.__setattr__(self, "controls", controls)
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        check_int("seed", self.seed, -(2**63))
        object.__setattr__(self, "notes", dict(self.notes))
        if self.pattern is not None:
            object.__setattr__(self, "pattern", check_pattern("pattern", self.pattern))
            if self.scope != "layer":
                raise ValueError(f"scope={self.scope!r} is not allowed with pattern={self.pattern!r}: under a pattern "
                                 "each group is pruned on its own; use scope='layer'")

    def check_run(self, names: Sequence[str], total_steps: int) -> None:
        """Check the options whose meaning depends on the model and the run, before anything is trained.

        Args:
            names: the tensors the lottery prunes (``select_prunable`` with ``include`` / ``exclude``).
            total_steps: optimizer steps of one training run.

        Raises:
            ValueError: ``output_layer`` names none of ``names``, or ``rewind_step`` is not a step of the run.
        """
        if not names:
            raise ValueError("the model has no tensors to prune (check include / exclude)")
        if self.output_layer is not None and self.output_layer not in names:
            raise ValueError(f"output_layer={self.output_layer!r} is not allowed: it is not a pruned tensor; they are "
                             f"{', '.join(names)}")
        if self.rewind_step >= total_steps:
            raise ValueError(f"rewind_step={self.rewind_step} is not allowed: a run has {total_steps} optimizer "
                             f"steps; rewind to a step in [0, {total_steps - 1}]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists); ``pattern`` only when set, so unstructured runs keep their names."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k != "pattern" or v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LotteryConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them.

        A ``config.json`` saved before the scope's spelling was unified (``"scope": "layerwise"``) is read as
        ``"layer"``, with a warning.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown lottery config keys {unknown}; known: {sorted(names)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if values.get("scope") == "layerwise":
            logger.warning("lottery config: scope='layerwise' (the old spelling) read as scope='layer'")
            values["scope"] = "layer"
        return cls(**values)
