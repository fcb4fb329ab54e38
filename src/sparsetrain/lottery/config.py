"""The lottery experiment's hyperparameters: one frozen dataclass, saved as ``config.json`` in the run directory.

Iterative magnitude pruning (IMP) after Frankle & Carbin (ICLR 2019, *The Lottery Ticket Hypothesis*) and
Frankle et al. (ICML 2020, *Linear Mode Connectivity and the Lottery Ticket Hypothesis*, rewinding to step k).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["LotteryConfig", "SCOPES", "CONTROLS"]

#: How each round's pruning is ranked: per tensor, or one threshold over all tensors but the output layer.
SCOPES = ("layerwise", "global")
#: The controls of a ticket: the same mask with a fresh random initialisation, and a random mask with the
#: ticket's per-tensor counts (trained from the same rewind point).
CONTROLS = ("reinit", "random")


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is not allowed: a pruning rate must be a number in [0, 1)")
    return float(value)


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an int >= {minimum}")
    return value


@dataclass(frozen=True)
class LotteryConfig:
    """What a lottery run does (every field is saved to ``config.json``; a resumed run must match it).

    Attributes:
        rounds: pruning rounds after the dense level 0; the run has ``level_0 .. level_<rounds>``.
        prune_rate: fraction of the *remaining* weights pruned per round (0.2 in both papers).
        output_rate: rate for the output layer (0.1 in Frankle & Carbin's conv nets); None: ``prune_rate``.
        output_layer: name of the output tensor; None: the last selected tensor.
        scope: "layerwise" (each tensor loses its rate of its own remaining weights, as Frankle & Carbin) or
            "global" (one magnitude threshold over all tensors but the output layer, as OpenLTH's default;
            the output layer is pruned on its own at ``output_rate``).
        rewind_step: rewind survivors to their values at step 0 (initialisation, Frankle & Carbin) or at
            optimizer step k of the dense run (Frankle et al. 2020).
        one_shot: level k prunes the dense level-0 weights straight to level k's counts, instead of pruning
            the weights retrained at level k-1.
        controls: which controls to train at each level >= 1: "reinit", "random".
        include / exclude: which tensors are pruned, as :func:`sparsetrain.masks.select_prunable`.
        seed: seeds training (each stage seeds the global generator from it) and the controls.
        notes: free-form JSON-able record of the training recipe (saved with the config and compared on
            resume, so a run is never continued with another recipe; the runner does not read it).
    """

    rounds: int = 3
    prune_rate: float = 0.2
    output_rate: float | None = 0.1
    output_layer: str | None = None
    scope: str = "layerwise"
    rewind_step: int = 0
    one_shot: bool = False
    controls: tuple[str, ...] = CONTROLS
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    seed: int = 0
    notes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _int("rounds", self.rounds, 0)
        _rate("prune_rate", self.prune_rate)
        if self.output_rate is not None:
            _rate("output_rate", self.output_rate)
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is not allowed; choose one of {', '.join(map(repr, SCOPES))}")
        _int("rewind_step", self.rewind_step, 0)
        if not isinstance(self.one_shot, bool):
            raise TypeError(f"one_shot={self.one_shot!r} must be a bool")
        controls = (self.controls,) if isinstance(self.controls, str) else tuple(self.controls)
        unknown = [c for c in controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"controls={self.controls!r}: {unknown} unknown; allowed: {', '.join(CONTROLS)}")
        object.__setattr__(self, "controls", controls)
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        _int("seed", self.seed, -(2**63))
        object.__setattr__(self, "notes", dict(self.notes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LotteryConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown lottery config keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
