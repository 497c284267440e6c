"""The device-resident loader: a whole split as one uint8 tensor on the training device.

Each epoch is one ``randperm`` and a sequence of index gathers; preprocessing and augmentation
run batched on the device. There is no DataLoader and no per-sample Python, which is what makes
small-image training fast. The streaming loader (``convzoo.data.streaming``) yields the same
``(images, labels)`` batches for data that does not fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from convzoo.data.dataset import Split


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, epoch, stream) so any epoch can be replayed alone.

    Resuming at an epoch boundary reproduces the uninterrupted run exactly because nothing
    random depends on what happened in earlier epochs.
    """
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    return x & ((1 << 63) - 1)


class DeviceLoader:
    """Batches ``(images float (B,C,H,W) normalised, labels int64 (B,))`` from a resident split.

    ``augment(x, generator, epoch, index)`` is applied to training batches,
    ``eval_transform(x)`` (e.g. a centre crop) to evaluation batches. With ``world_size > 1``
    every rank takes a disjoint, equal-length slice of the epoch's permutation.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device | str,
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        augment: Callable[..., torch.Tensor] | None = None,
        eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)  # (N, C, H, W) uint8, resident
        self.labels = split.labels.to(self.device)  # (N,) int64
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.augment = augment
        self.eval_transform = eval_transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        n = self.images.shape[0]
        if self.world_size == 1:
            return n
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def head(self, n: int) -> torch.Tensor:
        """The first `n` images of the split (0 = all), uint8 (n, C, H, W) on the device."""
        return self.images[:n] if n else self.images

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        if self.world_size > 1:
            per_rank = self.num_samples
            total = per_rank * self.world_size
            if total > n:  # pad by wrapping, as DistributedSampler does
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(epoch_seed(self.seed, self.epoch))
        order = self._order(generator)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.preprocess(self.images[index])  # (B, C, H, W) float32
            if self.augment is not None:
                x = self.augment(x, generator, self.epoch, index)
            elif self.eval_transform is not None:
                x = self.eval_transform(x)
            yield x, self.labels[index]
