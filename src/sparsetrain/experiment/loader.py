"""DataLoaders whose shuffling can be checkpointed and resumed part-way through an epoch.

The training order of an epoch is ``torch.randperm`` drawn from the DataLoader's own ``torch.Generator`` when
the epoch's iterator is created. Saving that generator's state at the start of the epoch, plus the number of
batches already trained, is enough to rebuild the rest of the epoch exactly: restore the state, and the sampler
skips the first ``k`` batches' indices without loading them.

In a data-parallel run each rank reads its shard through a :class:`ResumableDistributedSampler` (a
``DistributedSampler`` seeded with the run's seed; ``set_epoch`` reshuffles every epoch; ``skip`` as above),
and evaluation splits the eval sets across ranks without padding (:class:`ShardSampler`), so every sample is
counted exactly once when the ranks' sums are added up.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["ResumableSampler", "ResumableDistributedSampler", "ShardSampler", "train_loader", "eval_loader"]


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

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the order comes from the generator (same interface as the distributed sampler)."""


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, seeded, padded to equal shards) whose ``skip`` drops this rank's first
    indices of the next epoch, for resuming part-way through an epoch."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        start, self.skip = self.skip, 0
        return iter(order[start:])


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order, without padding (for evaluation sums)."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_loader(dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0,
                 pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A shuffling DataLoader over ``dataset`` with a seeded generator and a resumable sampler.

    The last partial batch is kept, so every sample is seen once per epoch (in a data-parallel run the shards
    are padded to equal length by repeating a few samples, as ``DistributedSampler`` does).

    Args:
        dataset: the training split.
        batch_size: minibatch size of this process (in a data-parallel run: the global batch / world size).
        seed: seed of the loader's generator and of the distributed sampler's shuffling.
        num_workers: worker processes.
        pin_memory: pin batches (CUDA).
        rank: this process's rank in a data-parallel run.
        world_size: number of processes (1: a :class:`ResumableSampler` over the whole set).

    Returns:
        The DataLoader; ``loader.generator`` and ``loader.sampler`` (``skip``, ``set_epoch``) drive
        checkpointing.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler[int]
    if world_size > 1:
        sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    else:
        sampler = ResumableSampler(len(dataset), generator)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=False,
                      persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """An in-order DataLoader for evaluation (this rank's :class:`ShardSampler` share in a data-parallel run)."""
    sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else None  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory)
