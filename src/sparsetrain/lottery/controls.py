"""The two controls of a lottery ticket (Frankle & Carbin 2019, §2-§3).

* **reinit**: the ticket's mask on a fresh random initialisation: does the ticket need its initial values?
* **random**: a random mask with the ticket's exact per-tensor counts, on the ticket's rewind weights: does it
  need its structure?
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..topk import topk_mask

__all__ = ["random_mask_like"]


def random_mask_like(masks: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Random masks with exactly the same number of kept weights per tensor as ``masks``.

    Drawn on the CPU from a generator seeded with ``seed`` (the same mask on every device), returned on each
    mask's device.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        name: topk_mask(torch.rand(mask.shape, generator=generator), int(torch.count_nonzero(mask))).to(mask.device)
        for name, mask in masks.items()
    }
