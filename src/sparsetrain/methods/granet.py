"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration.

Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration*, NeurIPS 2021
(arXiv 2106.10404; official code VITA-Group/GraNet). Every ΔT optimizer steps:

1. prune by **global** weight magnitude to the cubic-schedule sparsity ``s_t`` (between ``prune_start`` and
   ``prune_end``; see :class:`~sparsetrain.methods.gmp.GMP`);
2. then, **per layer**, drop a further fraction ``r_t`` of the remaining weights with the smallest magnitude
   and regrow the same number of inactive connections with the largest dense-gradient magnitude, starting at
   zero with zero optimizer state. The layer's count is unchanged ("zero-cost").

``r_t`` follows a cosine decay from ``drop_fraction`` (0.5) to ``drop_fraction_final`` (0.005) over the whole
run, and the drop-and-regrow step continues after ``prune_end`` to the end of training, both as in the official
code (``regrow_after_pruning=False`` stops it at ``prune_end``). ``initial_sparsity=0`` is the dense-to-sparse
form; ``initial_sparsity > 0`` (e.g. 0.5) starts from an ERK random mask ("GraNet-ST"). ``scope="layer"`` (or a
``distribution`` such as "uniform") is the paper's uniform variant (per-layer pruning instead of one global
threshold).

Under an N:M pattern the pruning follows the sparse structure decay (see :class:`~sparsetrain.methods.gmp.GMP`)
and the regrowth happens *within groups* (:func:`sparsetrain.nm.nm_drop_and_grow`): each layer drops its
``ceil(r_t * active)`` smallest magnitudes wherever they are and every group regrows as many as it lost, by
gradient magnitude, so the stage's N:M holds after every update. GraNet-ST under a pattern
(``initial_sparsity`` = the pattern's sparsity) is regrowth within groups from a random N:M mask.

Counting and tie choices follow the official code: the number dropped is ``ceil(r_t * active)``; a weight
dropped in an update may be regrown in the same update and then keeps its value (``regrow_mode="keep"``;
"zero" restarts it at zero, "forbid" excludes it).
"""

from __future__ import annotations

from torch import Tensor

from ..options import Option
from ..schedules import UpdateCadence, cosine_decay
from ..updates import REGROW_MODES
from ..validation import check_bool, check_fraction
from .gmp import GMP

__all__ = ["GraNet"]

_LIU = "Liu et al. 2021 (official code)"


class GraNet(GMP):
    """GraNet (Liu et al. 2021): gradual global magnitude pruning + per-layer gradient regrowth.

    Options (besides GMP's: ``initial_sparsity`` 0 = dense-to-sparse, > 0 = GraNet-ST from an ERK mask;
    ``prune_start`` / ``prune_end``; ``update_every`` 1000, the CIFAR recipe, 4000 on ImageNet; ``scope`` "global",
    the paper's default, or "layer" for its uniform variant):
        drop_fraction: ``r_t`` at step 0; drop_fraction_final: at the end.
        regrow_after_pruning: keep dropping and regrowing after ``prune_end`` (official code).
        regrow_mode: "keep", "zero" or "forbid" (see :func:`sparsetrain.updates.regrow`).
    """

    method = "granet"
    options = (
        Option("drop_fraction", 0.5, "r_t at step 0: the fraction of each layer's active weights dropped and "
               "regrown", "float", check_fraction, "a number in (0, 1]", reference=_LIU),
        Option("drop_fraction_final", 0.005, "r_t at the end of the run (cosine decay)", "float", check_fraction,
               "a number in (0, 1]", reference=_LIU),
        Option("regrow_after_pruning", True, "keep dropping and regrowing after prune_end, to the end of training",
               "bool", check_bool, reference=_LIU),
        Option("regrow_mode", "keep", "a weight dropped and regrown in one update: keeps its value (keep), restarts "
               "at zero (zero), or may not regrow (forbid)", "str", choices=REGROW_MODES, reference=_LIU),
    )
    option_defaults = {"scope": "global"}

    def setup(self) -> None:
        super().setup()
        end = self.total_steps if self.regrow_after_pruning else self.prune_end
        self.regrow_cadence = UpdateCadence(self.update_every, 0, end)

    def current_drop_fraction(self, step: int) -> float:
        """``r_t``: cosine decay from ``drop_fraction`` to ``drop_fraction_final`` over the run."""
        return cosine_decay(step, self.drop_fraction, self.drop_fraction_final, self.total_steps)

    def schedule_at(self, step: int) -> dict[str, float | None]:
        return {"drop_fraction": self.current_drop_fraction(step) if self.regrow_cadence(step) else None,
                "target_sparsity": self.target_sparsity(step)}

    def is_update_step(self, step: int) -> bool:
        return self.prune_cadence(step) or self.regrow_cadence(step)

    def needs_dense_gradient(self, step: int) -> bool:
        return self.regrow_cadence(step)

    def update(self, step: int) -> dict[str, Tensor]:
        if self.prune_cadence(step):
            self.prune(step)
        if not self.regrow_cadence(step):
            return {}
        stage = self.stage_pattern(step)
        return self.drop_and_grow(self.current_drop_fraction(step), "gradient", mode=self.regrow_mode,
                                  rounding="ceil", groups=None if stage is None else self.nm_budget(stage).groups)
