"""Which images each rank sees, in which order, and every random stream of the data: pure
functions of (n, epoch, seed, rank, world size), so any epoch, on any rank, from any batch,
can be replayed alone.

**The order** of an epoch is ``randperm(n)`` from the ORDER stream of (seed, epoch), the same
on every rank and device (drawn on the CPU), or ``arange(n)`` without shuffling.

**Two partitions** of that order over ``world_size`` ranks, chosen by ``drop_last``:

- training (``drop_last=True``): the order is cut into global batches of
  ``batch_size * world_size`` images; rank r takes the r-th ``batch_size`` slice of each. Every
  rank makes the same number of steps, a global batch holds the same images whatever the world
  size (so 1 and N processes train on the same batches), and the last ``n mod global batch``
  images of the order are left out of this epoch (a different few each epoch).
- exact (``drop_last=False``, evaluation): the order is cut into batches of ``batch_size``
  as one process cuts it (the last one may be short), and rank r takes one contiguous block
  of those batches, ``nb // W`` or ``nb // W + 1`` of the ``nb`` batches (the first
  ``nb mod W`` ranks take one more). Every image is seen exactly once: no padding, none
  dropped; shards may be uneven (by at most one batch), and a rank may get none. Because each
  batch is a batch of the one-process evaluation, per-batch sums gathered in rank order are
  the one-process sums, bit for bit (``evaluate.evaluate``).

With one rank both partitions are the order cut into batches (short last batch dropped or
kept). Batch k of a rank is found directly (`EpochPlan.batch`), so an epoch can start at any
batch.

**The table of random streams**: every random number of the data comes from a generator seeded
by `stream_seed(seed, epoch, stream, rank, batch)`, a hash of all five, so no two streams share
a seed (in particular no augmentation stream equals the global one):

    ORDER    (seed, epoch)                the epoch's permutation (all ranks alike)
    TORCH    (seed, epoch, rank)          torch's global RNG for the epoch: dropout, drop-path
    AUGMENT  (seed, epoch, rank, batch)   the augmentation draws of one batch of one rank
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

ORDER, TORCH, AUGMENT = 0, 1, 2  # stream ids (see the module docstring)
_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that spreads every input bit."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def stream_seed(seed: int, epoch: int, stream: int, rank: int = 0, batch: int = 0) -> int:
    """A 63-bit seed for one random stream: each field is folded in through `_mix64`, so
    seeds of different (seed, epoch, stream, rank, batch) differ (short of a 64-bit hash
    collision)."""
    h = 0x9E3779B97F4A7C15
    for field in (seed, epoch, stream, rank, batch):
        h = _mix64(h ^ (field & _MASK64))
    return h & ((1 << 63) - 1)


def torch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global RNG for an epoch on a rank (the loop's ``torch.manual_seed``)."""
    return stream_seed(seed, epoch, TORCH, rank)


def generator(seed: int, epoch: int, stream: int, rank: int = 0, batch: int = 0,
              device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded for one stream."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, epoch, stream, rank, batch))
    return g


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """(n,) int64: the epoch's order of the n images (the same on every rank)."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(seed, epoch, ORDER))


class EpochPlan:
    """This rank's batches of image indices for any epoch (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.n, self.batch_size = n, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def _block(self) -> tuple[int, int]:
        """[start, end) of this rank's block of the order under the exact partition: a run of
        whole batches of the one-process batching."""
        b = self.batch_size
        base, extra = divmod(-(-self.n // b), self.world_size)
        first = self.rank * base + min(self.rank, extra)
        last = first + base + (self.rank < extra)
        return min(first * b, self.n), min(last * b, self.n)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        if self.drop_last:
            return len(self) * self.batch_size
        start, end = self._block()
        return end - start

    def __len__(self) -> int:
        """Batches this rank makes per epoch."""
        if self.drop_last:
            return self.n // (self.batch_size * self.world_size)
        return -(-self.num_samples // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's order (cached for the current epoch)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_order(self.n, self.seed, epoch, self.shuffle))
        return self._cached[1]

    def batch(self, epoch: int, k: int) -> torch.Tensor:
        """(B,) int64 indices of this rank's batch k of `epoch`."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range for {len(self)} batches")
        b = self.batch_size
        if self.drop_last:
            start = (k * self.world_size + self.rank) * b
            return self.order(epoch)[start:start + b]
        lo, hi = self._block()
        return self.order(epoch)[lo + k * b:min(lo + (k + 1) * b, hi)]

    def shard(self, epoch: int) -> torch.Tensor:
        """Every index this rank visits in `epoch`, in order."""
        batches = [self.batch(epoch, k) for k in range(len(self))]
        return torch.cat(batches) if batches else torch.empty(0, dtype=torch.int64)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch number, indices) from batch `start` to the end of the epoch."""
        for k in range(start, len(self)):
            yield k, self.batch(epoch, k)
