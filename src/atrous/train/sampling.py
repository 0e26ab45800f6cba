"""Sample order and augmentation keyed by (seed, epoch, index): what makes resume exact by construction.

- the sample order of epoch `e` is a permutation drawn from a generator seeded with (seed, e);
- the augmentation of sample `i` in epoch `e` runs under `torch.random.fork_rng`, seeded with (seed, e, i),
  inside the dataset wrapper, so it does not depend on which process or worker computes it;
- torch's global generator (dropout) is seeded with (seed, step, rank) before every step (`loop.py`).
A checkpoint therefore needs only the weights, the optimiser, the scheduler and (epoch, batch in epoch,
step): resuming skips the consumed batches of the epoch and continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch


def seed_from(*values: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hash): (seed, epoch, index) -> seed."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SeededSamples(torch.utils.data.Dataset):
    """Items keyed by (epoch, index): `transform(*dataset[index])` under an RNG seeded with (seed, epoch,
    index), so an item's augmentation is a pure function of its key, in any process or worker."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable, *, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from(self.seed, epoch, index))
            return self.transform(image, mask)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys for one process: epoch `epoch` of a shuffled order seeded with
    (seed, epoch), global batches of `batch_size` (the incomplete last one dropped), this process's
    contiguous share `batch_size // world` of each, starting at global batch `start`."""

    def __init__(
        self,
        *,
        num_samples: int,
        batch_size: int,
        epoch: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.epoch = epoch
        self.seed = seed
        self.start = start
        self.rank = rank
        self.per_rank = batch_size // world

    def __len__(self) -> int:
        return self.num_samples // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(seed_from(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for b in range(self.start, self.num_samples // self.batch_size):
            lo = b * self.batch_size + self.rank * self.per_rank
            yield [(self.epoch, i) for i in order[lo : lo + self.per_rank]]
