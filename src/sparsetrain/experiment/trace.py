"""A run's masks as measured, and their density trace over the run (the schedule plot and training FLOPs).

The trace holds the density of every sparsified tensor at step 0 and after every topology change. A tensor that
is not masked at some point (a dense run's, or one a branch's source did not mask) counts as dense there, so the
history stays one row per recorded step however the set of masked tensors changes at a branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import sparsetrain
from sparsetrain.masks import sparsity_report

from .build import Experiment

__all__ = ["DensityTrace", "run_masks", "run_report", "run_weights"]


def run_masks(exp: Experiment) -> dict[str, Tensor]:
    """The sparsifier's masks on the CPU, or (dense run) the nonzero pattern of the prunable tensors."""
    if exp.sparsifier is not None:
        return {n: m.detach().cpu().clone() for n, m in exp.sparsifier.masks.items()}
    return {n: (p.detach() != 0).cpu() for n, p in sparsetrain.select_prunable(exp.model).items()}


def run_weights(exp: Experiment) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The sparsified tensors and their masks, on their device (for a dense run: the prunable tensors and their
    nonzero patterns)."""
    if exp.sparsifier is not None:
        return dict(exp.sparsifier.params), dict(exp.sparsifier.masks)
    params = sparsetrain.select_prunable(exp.model)
    return dict(params), {n: p.detach() != 0 for n, p in params.items()}


def run_report(exp: Experiment) -> sparsetrain.SparsityReport:
    """Sparsity measured from the weights of the sparsified tensors (the prunable ones for dense runs)."""
    if exp.sparsifier is not None:
        return exp.sparsifier.report()
    return sparsity_report(sparsetrain.select_prunable(exp.model))


class DensityTrace:
    """Per-tensor densities at the steps where the masks changed.

    Args:
        state: a :meth:`state_dict` to continue (None: an empty trace).
    """

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.steps: list[int] = list(state.get("steps", []))
        self.sparsity: list[float] = list(state.get("sparsity", []))
        self.layers: dict[str, list[float]] = {n: list(v) for n, v in state.get("layers", {}).items()}
        self.branch_steps: list[int] = list(state.get("branch_steps", []))

    @property
    def last_sparsity(self) -> float:
        """The overall sparsity of the last record (0 before any)."""
        return self.sparsity[-1] if self.sparsity else 0.0

    def record(self, step: int, masks: Mapping[str, Tensor]) -> float:
        """Append the densities of ``masks`` after optimizer step ``step``; return their overall sparsity."""
        total = sum(m.numel() for m in masks.values())
        active = {n: int(torch.count_nonzero(m)) for n, m in masks.items()}
        sparsity = 1.0 - sum(active.values()) / total if total else 0.0
        earlier = len(self.steps)
        self.steps.append(step)
        self.sparsity.append(sparsity)
        for name, values in self.layers.items():
            if name not in masks:
                values.append(1.0)  # not masked from here on: dense
        for name, mask in masks.items():
            self.layers.setdefault(name, [1.0] * earlier).append(active[name] / mask.numel())
        return sparsity

    def branch(self, step: int, masks: Mapping[str, Tensor]) -> float:
        """Record the masks a branch starts with at ``step`` (they replace a record at that very step)."""
        if self.steps and self.steps[-1] == step:
            self.steps.pop()
            self.sparsity.pop()
            for values in self.layers.values():
                values.pop()
        else:
            self.branch_steps.append(step)
        return self.record(step, masks)

    def history(self) -> list[tuple[int, dict[str, float]]]:
        """``[(start_step, {name: density}), ...]`` for :func:`~sparsetrain.analysis.training_flops`."""
        return [(step, {name: values[i] for name, values in self.layers.items()}) for i, step in enumerate(self.steps)]

    def update_steps(self) -> list[int]:
        """The steps after which a topology update changed the masks (not the start, nor a branch point)."""
        return [s for s in self.steps[1:] if s not in self.branch_steps]

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and dicts, for the checkpoint."""
        state: dict[str, Any] = {"steps": list(self.steps), "sparsity": list(self.sparsity),
                                 "layers": {n: list(v) for n, v in self.layers.items()}}
        if self.branch_steps:
            state["branch_steps"] = list(self.branch_steps)
        return state

    def summary(self) -> dict[str, Any]:
        """The summary's ``density_trace``: steps, overall density and per-tensor densities."""
        return {"steps": list(self.steps), "density": [1.0 - s for s in self.sparsity],
                "layers": {n: list(v) for n, v in self.layers.items()}}
