"""The lottery experiment's hyperparameters: one frozen dataclass, saved as ``config.json`` in the run directory.

Iterative magnitude pruning (IMP) after Frankle & Carbin (ICLR 2019, *The Lottery Ticket Hypothesis*) and
Frankle et al. (ICML 2020, *Linear Mode Connectivity and the Lottery Ticket Hypothesis*, rewinding to step k).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sparsetrain.lottery import SCHEDULES
from sparsetrain.nm import check_pattern
from sparsetrain.selection import SCOPES, check_scope
from sparsetrain.validation import check_bool, check_choice, check_int, check_number

__all__ = ["LotteryConfig", "SCOPES", "CONTROLS", "SCHEDULES", "LATER_DEFAULTS"]

logger = logging.getLogger(__name__)

#: The controls of a ticket: the same mask with a fresh random initialisation, and a random mask with the
#: ticket's per-tensor counts (trained from the same rewind point).
CONTROLS = ("reinit", "random")
#: At most this many rounds: at a rate of 0.2 per round, 100 rounds keep 2e-10 of the weights.
MAX_ROUNDS = 100

#: Fields added after the first lottery runs were named, with their defaults: left out of a run's identity while at
#: their default, so those runs keep their directory names.
LATER_DEFAULTS: dict[str, Any] = {"prune_biases": False, "schedule": "geometric", "final_sparsity": None,
                                  "sparsities": None, "rank_step": None, "pattern": None}

#: ``prune_rate`` and ``rounds`` when not given (the geometric schedule's rate; three rounds).
DEFAULT_PRUNE_RATE = 0.2
DEFAULT_ROUNDS = 3


def _rate(name: str, value: Any) -> float:
    return check_number(name, value, "[0, 1)", "a pruning rate must be a number")


@dataclass(frozen=True)
class LotteryConfig:
    """What a lottery run does (every field is saved to ``config.json``; a resumed run must match it).

    Attributes:
        rounds: pruning rounds after the dense level 0; the run has ``level_0 .. level_<rounds>`` (default 3; with
            ``sparsities``, their number).
        prune_rate: the geometric schedule's fraction of the *remaining* weights pruned per round (default 0.2, as
            both papers); other schedules set their sparsities instead.
        output_rate: the output layer's own rate per round, whatever the schedule (0.1 in Frankle & Carbin's conv
            nets); None: the output layer follows the schedule like the other tensors.
        output_layer: name of the output tensor; None: the last selected tensor.
        scope: "layer" (each tensor loses its rate of its own remaining weights, as Frankle & Carbin) or
            "global" (one magnitude threshold over all tensors but the output layer, as OpenLTH's default;
            the output layer is pruned on its own at ``output_rate``).
        schedule: the sparsity of each level: "geometric" (``prune_rate`` of the remaining weights per round),
            "linear" (``final_sparsity * k / rounds`` at level k) or "targets" (``sparsities``, one per level);
            default: the one whose field is given (geometric when none is).
            With a target schedule a tensor (or, in the global scope, the pooled tensors) keeps ``round((1 - s_k)
            * n)`` of its ``n`` weights at level k; the output layer with an ``output_rate`` keeps its geometric
            count, so ``s_k`` is then the sparsity of the other tensors.
        final_sparsity: the linear schedule's sparsity at the last level.
        sparsities: the targets schedule's sparsity after each level, increasing, in (0, 1).
        prune_biases: prune each layer's bias with its weight, ranked by magnitude in one vector per layer (the
            layer's count covers both; masks stay per tensor). Default: biases stay dense.
        rank_step: rank the weights by their magnitude at this optimizer step of the previous level's run (of the
            dense level 0's in one shot) instead of at its end; at least ``rewind_step``, since the levels start
            there. The run keeps a checkpoint at that step (``keep_steps``), replayed if it is missing.
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

    rounds: int | None = None
    prune_rate: float | None = None
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
    schedule: str | None = None
    final_sparsity: float | None = None
    sparsities: tuple[float, ...] | None = None
    prune_biases: bool = False
    rank_step: int | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.schedule is None:
            schedule = ("targets" if self.sparsities is not None else
                        "linear" if self.final_sparsity is not None else "geometric")
            object.__setattr__(self, "schedule", schedule)
        check_choice("schedule", self.schedule, SCHEDULES)
        self._resolve_schedule()
        check_int("rounds", self.rounds, 0)
        if self.rounds > MAX_ROUNDS:
            raise ValueError(f"rounds={self.rounds} is not allowed: at most {MAX_ROUNDS} (each round prunes a share "
                             "of the remaining weights)")
        if self.output_rate is not None:
            _rate("output_rate", self.output_rate)
        check_scope(self.scope)
        check_int("rewind_step", self.rewind_step, 0)
        check_bool("one_shot", self.one_shot)
        check_bool("prune_biases", self.prune_biases)
        if self.rank_step is not None:
            check_int("rank_step", self.rank_step, 0)
            if self.rank_step < self.rewind_step:
                raise ValueError(f"rank_step={self.rank_step} is not allowed with rewind_step={self.rewind_step}: "
                                 "the levels start at the rewind step, so the rank step must not come before it")
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
            if self.schedule != "geometric":
                raise ValueError(f"schedule={self.schedule!r} is not allowed with pattern={self.pattern!r}: under a "
                                 "pattern each round applies prune_rate to the groups' counts; use the geometric "
                                 "schedule")
            if self.prune_biases:
                raise ValueError(f"prune_biases=True is not allowed with pattern={self.pattern!r}: an N:M pattern "
                                 "prunes weights only")

    def _resolve_schedule(self) -> None:
        """Check the schedule's own fields, refuse the others' and fill ``rounds`` / ``prune_rate``."""
        given = {"final_sparsity": self.final_sparsity, "sparsities": self.sparsities,
                 "prune_rate": self.prune_rate}
        own = {"geometric": "prune_rate", "linear": "final_sparsity", "targets": "sparsities"}[self.schedule]
        for name, value in given.items():
            if value is not None and name != own:
                raise ValueError(f"{name}={value!r} is not allowed with schedule={self.schedule!r}: it sets "
                                 f"{own} (schedules: geometric uses prune_rate, linear final_sparsity, targets "
                                 "sparsities)")
        rounds = self.rounds
        if self.schedule == "geometric":
            rate = DEFAULT_PRUNE_RATE if self.prune_rate is None else self.prune_rate
            object.__setattr__(self, "prune_rate", _rate("prune_rate", rate))
        elif self.schedule == "linear":
            if self.final_sparsity is None:
                raise ValueError("schedule='linear' needs final_sparsity: the sparsity at the last level, in (0, 1)")
            value = check_number("final_sparsity", self.final_sparsity, "(0, 1)", "a sparsity must be a number")
            object.__setattr__(self, "final_sparsity", value)
        else:
            targets = self._check_sparsities()
            if rounds is not None and rounds != len(targets):
                raise ValueError(f"rounds={rounds!r} is not allowed with {len(targets)} sparsities: a target "
                                 "schedule has one level per sparsity; leave rounds out")
            rounds = len(targets)
        object.__setattr__(self, "rounds", DEFAULT_ROUNDS if rounds is None else rounds)
        if self.schedule == "linear" and self.rounds == 0:
            raise ValueError("rounds=0 is not allowed with schedule='linear': the last level is reached after "
                             "rounds >= 1 rounds")

    def _check_sparsities(self) -> tuple[float, ...]:
        """``sparsities`` as a tuple of increasing numbers in (0, 1)."""
        if self.sparsities is None:
            raise ValueError("schedule='targets' needs sparsities: one target sparsity per level, increasing, in "
                             "(0, 1)")
        values = (self.sparsities,) if isinstance(self.sparsities, (int, float)) else tuple(self.sparsities)
        targets = tuple(check_number("sparsities", v, "(0, 1)", "a sparsity must be a number") for v in values)
        if not targets or any(b <= a for a, b in zip(targets, targets[1:])):
            raise ValueError(f"sparsities={list(values)!r} is not allowed: expected at least one sparsity, "
                             "strictly increasing from level to level")
        object.__setattr__(self, "sparsities", targets)
        return targets

    def identity(self) -> dict[str, Any]:
        """The fields that name a run (:func:`~sparsetrain.studies.lottery.lottery_identity`): every field but the
        seed, less the later fields at their defaults."""
        return {k: v for k, v in self.to_dict().items()
                if k != "seed" and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}

    def check_run(self, names: Sequence[str], total_steps: int) -> None:
        """Check the options whose meaning depends on the model and the run, before anything is trained.

        Args:
            names: the tensors the lottery prunes (``select_prunable`` with ``include`` / ``exclude``).
            total_steps: optimizer steps of one training run.

        Raises:
            ValueError: ``output_layer`` names none of ``names``, ``rewind_step`` is not a step of the run, or
                ``rank_step`` is past its last step.
        """
        if not names:
            raise ValueError("the model has no tensors to prune (check include / exclude)")
        if self.output_layer is not None and self.output_layer not in names:
            raise ValueError(f"output_layer={self.output_layer!r} is not allowed: it is not a pruned tensor; they are "
                             f"{', '.join(names)}")
        if self.rewind_step >= total_steps:
            raise ValueError(f"rewind_step={self.rewind_step} is not allowed: a run has {total_steps} optimizer "
                             f"steps; rewind to a step in [0, {total_steps - 1}]")
        if self.rank_step is not None and self.rank_step > total_steps:
            raise ValueError(f"rank_step={self.rank_step} is not allowed: the recipe trains {total_steps} steps")

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
