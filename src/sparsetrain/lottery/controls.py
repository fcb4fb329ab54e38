"""The two controls of a lottery ticket (Frankle & Carbin 2019, §2-§3).

* **reinit**: the ticket's mask on a fresh random initialisation: does the ticket need its initial values?
* **random**: a random mask with the ticket's exact per-tensor counts, on the ticket's rewind weights: does it
  need its structure? (Under an N:M pattern: random N of every M, the ticket's count per group.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..nm import nm_mask
from ..selection import Groups
from ..topk import topk_mask

__all__ = ["random_mask_like"]


def random_mask_like(masks: Mapping[str, Tensor], seed: int,
                     groups: Mapping[str, Groups] | None = None) -> dict[str, Tensor]:
    """Random masks with exactly the same number of kept weights per tensor as ``masks`` (per group for the
    tensors in ``groups``, e.g. :func:`sparsetrain.lottery.imp.pattern_groups`).

    Drawn on the CPU from a generator seeded with ``seed`` (the same mask on every device), returned on each
    mask's device.
    """
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, mask in masks.items():
        scores = torch.rand(mask.shape, generator=generator)
        if groups is not None and name in groups:
            chosen = nm_mask(scores, groups[name].pattern, dim=groups[name].dim)
        else:
            chosen = topk_mask(scores, int(torch.count_nonzero(mask)))
        result[name] = chosen.to(mask.device)
    return result
