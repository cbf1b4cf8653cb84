"""The training loader's pieces: items seeded by (seed, epoch, index), a sampler told its epoch,
and a prefetch depth sized by memory.

Workers are kept alive across epochs (``persistent_workers``): starting 14 of them costs
seconds per epoch. A kept worker's random state would carry over from the last epoch, so each
item seeds its own randomness instead: its views depend on the seed, the epoch and the image,
not on which worker made it, how many there are, or whether they lived through earlier
epochs. A run resumed at an epoch boundary therefore replays the uninterrupted one.
"""

import os
import random

import torch
from torch.utils.data import Dataset, Sampler

MAX_PREFETCH = 4  # batches per worker; more buys nothing once the step is the bottleneck
FALLBACK_BUDGET = 2 * 2**30  # bytes in flight when /dev/shm cannot be read


def item_seed(seed, epoch, index):
    return (seed * 1_000_003 + epoch * 1_000_000_007 + index) % (2**63)


class EpochItems(Dataset):
    """``dataset`` indexed by ``(index, epoch)`` (``EpochSampler``'s keys), each item drawn
    from torch's and Python's generators seeded for it; the caller's generator states are
    restored after (with ``num_workers: 0`` the items are made in the training process)."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key
        seed = item_seed(self.seed, epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` in ``order``'s order; ``set_epoch`` reshuffles ``order``
    (``reseed(epoch)``) for the next pass, as a new loader per epoch used to."""

    def __init__(self, order, reseed):
        self.order = order
        self.reseed = reseed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.reseed(epoch)

    def __iter__(self):
        return ((index, self.epoch) for index in self.order)

    def __len__(self):
        return len(self.order)


def shared_memory_budget(path="/dev/shm"):
    """Half of the free shared memory, where workers put the batches they hand over."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return FALLBACK_BUDGET
    return stats.f_bavail * stats.f_frsize // 2


def prefetch_factor(batch_bytes, workers, budget):
    """Batches each worker prepares ahead: all workers' together within ``budget`` bytes,
    between 1 and ``MAX_PREFETCH`` (four float32 two-view ImageNet batches of 256 in each of
    14 workers would be 17 GB)."""
    fits = budget // max(1, workers * batch_bytes)
    return int(max(1, min(MAX_PREFETCH, fits)))


def item_bytes(item):
    """Bytes of the tensors in one dataset item (nested lists and tuples)."""
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, (list, tuple)):
        return sum(item_bytes(part) for part in item)
    return 0
