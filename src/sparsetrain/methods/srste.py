"""SR-STE: N:M sparse networks trained from scratch with dense weights and a mask recomputed at every step.

Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*, ICLR 2021 (official code
NM-sparsity/NM-sparsity). The network keeps dense weights ``W``; after every optimizer step the N:M mask ``E`` is
recomputed from ``|W|`` (in every group of M along the reduction dim, the N largest); the forward pass uses
``E ⊙ W``; the gradient of ``E ⊙ W`` reaches ``W`` straight through, plus the sparse-refined decay of the pruned
weights, ``lambda_W (Ē ⊙ W)`` with ``lambda_W = 2e-4`` (:mod:`sparsetrain.srste`).

How it is run (:class:`sparsetrain.srste.StraightThroughEnforcer`): between steps the model's parameters hold the
N:M weights ``E ⊙ W`` (so evaluation, checkpoints of the model and export see the sparse network), and the dense
weights are kept aside and saved in :meth:`state_dict` (``extra.dense``), so a resume is exact. The optimizer
state is dense, as in the paper: unlike every other method, the pruned weights' optimizer state is *not* zero, and
their dense values live on outside the model.

Deviations from the official code (both deliberate, see :mod:`sparsetrain.srste`): ties within a group go to the
lowest index, and the decay is added once per optimizer step (not per backward pass, which would multiply it under
gradient accumulation). The mask used by a step is the one computed after the previous step (at step 0: from the
initial weights), which is the mask the official code computes in that step's forward pass, since the weights do
not change in between. ``update_every``, ``distribution`` and ``scope`` have no effect (the mask is recomputed at
every step, by the pattern); tensors that cannot follow the pattern are kept dense.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..enforcement import MaskEnforcer
from ..nm import check_pattern
from ..options import Option
from ..scores import magnitude_scores
from ..selection import keep_top
from ..sparse_init import SPARSE_INITS
from ..sparsifier import Sparsifier
from ..srste import SRSTE_DECAY, StraightThroughEnforcer
from ..validation import check_number

__all__ = ["SRSTE"]

_ZHOU = "Zhou et al. 2021"


def _check_pattern(name: str, value: Any) -> str:
    if value is None:
        raise ValueError(f"SRSTE: {name}=None is not allowed: SR-STE trains an N:M pattern (e.g. '2:4')")
    return check_pattern(name, value)


class SRSTE(Sparsifier):
    """SR-STE (Zhou et al. 2021): N:M trained from scratch, the mask recomputed from dense weights at every step.

    Dense weights ``W``; the N:M mask of ``|W|`` at every step; the straight-through gradient plus the
    sparse-refined decay of the pruned weights.

    Options (besides the base options of :class:`~sparsetrain.sparsifier.Sparsifier`; ``pattern`` defaults to
    "2:4", the pattern NVIDIA's sparse tensor cores run, and is required; ``sparse_init`` defaults to "none": every
    weight is trained, the mask only gates the forward pass, so the dense initialisation is the paper's):
        decay: ``lambda_W`` of the sparse-refined term (0: the plain straight-through estimator, "STE" in the
            paper's ablation).
    """

    method = "srste"
    options = (
        Option("pattern", "2:4", "the N:M pattern trained (2:4: what NVIDIA's sparse tensor cores run); sparsity is "
               "1 - N/M", "str", _check_pattern, "'N:M' with integers 1 <= N < M, e.g. 2:4", reference=_ZHOU),
        Option("sparse_init", "none", "none: SR-STE trains every weight from the dense initialisation (the mask "
               "only gates the forward pass); fan_in rescales each unit to its active fan-in", "str",
               choices=SPARSE_INITS, reference=_ZHOU),
        Option("decay", SRSTE_DECAY, "lambda_W: decay of the pruned weights added to their gradient (0: plain STE)",
               "float", lambda name, value: check_number(name, value, "[0, inf)"), "a number >= 0",
               reference=_ZHOU),
    )

    @classmethod
    def storage_may_be_sparse(cls, options: Mapping[str, Any]) -> bool:
        """Never: SR-STE trains every weight (its own straight-through enforcer, whatever the backend)."""
        return False

    def build_enforcer(self, values: Mapping[str, Any]) -> MaskEnforcer:
        if self.optimizer is None:
            raise ValueError("optimizer=None is not allowed for SRSTE: the dense weights are restored and decayed "
                             "around optimizer.step()")
        if self.inputs.get("masks") is not None:
            raise ValueError("SRSTE: masks=... is not allowed: the mask is recomputed from |W| at every step")
        return StraightThroughEnforcer(self.params, self.optimizer, self, decay=values["decay"])

    def initial_masks(self) -> dict[str, Tensor]:
        return self._magnitude_masks()

    def is_update_step(self, step: int) -> bool:
        return True

    def update(self, step: int) -> dict[str, Tensor]:
        before = self.masks
        self.masks = self._magnitude_masks()
        self._changed = any(not torch.equal(before[n], m) for n, m in self.masks.items())
        return {}

    def step(self) -> bool:
        """Advance one optimizer step: recompute the masks from ``|W|`` and hide the pruned weights again.

        Returns:
            True if some mask changed at this step.
        """
        self._changed = False
        return super().step() and self._changed

    def _magnitude_masks(self) -> dict[str, Tensor]:
        """The N:M mask of ``|W|`` (the dense weights) through the one selection primitive."""
        return keep_top(magnitude_scores(self._enforcer().dense_weights()), self.nm_budget())

    def _extra_state(self) -> dict[str, Any]:
        return {"dense": {n: w.detach().cpu().clone() for n, w in self._enforcer().dense_weights().items()}}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        # The model holds E ⊙ W (from its own state dict); the base class re-applies the masks next, which
        # splits the saved W again: the same parameters, the same dense weights.
        dense = extra.get("dense")
        if dense is None:
            raise ValueError("SRSTE state without 'dense' (the dense weights W): cannot resume")
        enforcer = self._enforcer()
        enforcer.dense = {n: dense[n].to(device=p.device, dtype=p.dtype).clone() for n, p in self.params.items()}
        enforcer.split = True

    def _enforcer(self) -> StraightThroughEnforcer:
        assert isinstance(self.enforcer, StraightThroughEnforcer)
        return self.enforcer
