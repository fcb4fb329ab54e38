"""DataLoaders whose shuffling can be checkpointed and resumed part-way through an epoch.

The training order of an epoch is ``torch.randperm`` drawn from the DataLoader's own ``torch.Generator`` when
the epoch's iterator is created. Saving that generator's state at the start of the epoch, plus the number of
batches already trained, is enough to rebuild the rest of the epoch exactly: restore the state, and the sampler
skips the first ``k`` batches' indices without loading them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableSampler", "train_loader", "eval_loader"]


class ResumableSampler(Sampler[int]):
    """A fresh random permutation per epoch from ``generator``; ``skip`` drops the first indices of the next epoch.

    Args:
        num_samples: dataset length.
        generator: the DataLoader's generator (shared, so one state describes both).
    """

    def __init__(self, num_samples: int, generator: torch.Generator) -> None:
        self.num_samples = num_samples
        self.generator = generator
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        start, self.skip = self.skip, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.num_samples


def train_loader(dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A shuffling DataLoader over ``dataset`` with a seeded generator and a :class:`ResumableSampler`.

    The last partial batch is kept, so every sample is seen once per epoch.

    Args:
        dataset: the training split.
        batch_size: minibatch size.
        seed: seed of the loader's generator.
        num_workers: worker processes.
        pin_memory: pin batches (CUDA).

    Returns:
        The DataLoader; ``loader.generator`` and ``loader.sampler`` drive checkpointing.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = ResumableSampler(len(dataset), generator)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=False,
                      persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """An in-order DataLoader for evaluation."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
