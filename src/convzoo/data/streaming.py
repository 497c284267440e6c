"""The streaming loader: batches decoded on the fly from a packed dataset that does not fit
in memory, yielding the same ``(images, labels)`` batches as the device-resident loader.

Per batch: the main process picks the record indices (a seeded permutation per epoch, one
disjoint equal-size slice per rank); a DataLoader worker reads the payloads with ``pread``
and decodes the whole batch (``torchvision.io.decode_jpeg`` on a list, or a reshape for raw
packs) into one uint8 (B, H, W, C) tensor; the batch stays uint8 until it reaches the
device (4x fewer bytes to copy than float), where it is permuted to (B, C, H, W)
(channels-last memory), preprocessed and augmented as one batch — exactly as in memory.

On CUDA with a JPEG pack, ``gpu_decode=True`` sends the compressed bytes instead and decodes
them with nvJPEG (``decode_jpeg(..., device="cuda")``); workers then only read files.

Images of different sizes are made stackable with ``decode_size``: shorter side resized to
it, then a centre crop. Random-resized-crop style augmentation then runs on the device on
those decode_size x decode_size images (set ``augment.random_resized_crop``), so decode the
training split a little larger than the training crop (e.g. 256 -> 224, or 160 -> 128).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from convzoo.data.records import PackedSplit, decode_jpegs, stack_images
from convzoo.errors import ConvzooError


def _epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Same seeding rule as the device-resident loader (distinct seed per seed/epoch/stream)."""
    from convzoo.data.loaders import epoch_seed

    return epoch_seed(seed, epoch, stream)


class EpochBatches(Sampler[tuple[int, int, list[int]]]):
    """Yields this rank's batches of record indices for the current epoch.

    Shuffled order is ``randperm(n)`` from a generator seeded by (seed, epoch); with
    ``world_size > 1`` it is padded by wrapping (or truncated when ``drop_last``) to a multiple
    of world_size and each rank takes its own contiguous slice, as DistributedSampler does.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.n, self.batch_size = n, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        if self.world_size == 1:
            return self.n
        w = self.world_size
        return self.n // w if self.drop_last else -(-self.n // w)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """(num_samples,) int64 record indices this rank visits this epoch, in order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            per_rank = self.num_samples
            total = per_rank * self.world_size
            if total > self.n:  # pad by wrapping (repeats several times if n < world_size)
                order = order.repeat(-(-total // self.n))[:total]
            order = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        return order

    def __iter__(self) -> Iterator[tuple[int, int, list[int]]]:
        """(epoch, batch number, record indices) per batch."""
        order = self.order()
        for i in range(len(self)):
            yield self.epoch, i, order[i * self.batch_size:(i + 1) * self.batch_size].tolist()


# A CPU device stage works on chunks of about this many float bytes: small enough to stay
# in cache between preprocess and augment steps (3x faster than whole 224 px batches).
_CPU_CHUNK_BYTES = 4 * 2**20


class _Stage:
    """The "device" stage: uint8 (B, C, H, W) -> preprocessed, augmented float batch.

    The random generator is reseeded per batch from (seed, epoch, rank, batch number), so a
    batch gets the same augmentation wherever it is computed (worker or main process).
    """

    def __init__(self, preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
                 augment: Callable[..., torch.Tensor] | None,
                 eval_transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 seed: int, rank: int, world_size: int) -> None:
        self.preprocess, self.augment, self.eval_transform = preprocess, augment, eval_transform
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def generator(self, device: torch.device, epoch: int, batch: int) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(_epoch_seed(self.seed, epoch, 1 + batch * self.world_size + self.rank))
        return g

    def __call__(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator,
                 epoch: int) -> torch.Tensor:
        x = self.preprocess(x) if self.preprocess is not None else x.float() / 255.0
        if self.augment is not None:
            return self.augment(x, generator, epoch, index)
        if self.eval_transform is not None:
            return self.eval_transform(x)
        return x

    def run_chunked(self, x: torch.Tensor, index: torch.Tensor, epoch: int,
                    batch: int) -> torch.Tensor:
        """The stage on the CPU in cache-sized chunks, written into one float batch.

        In a DataLoader worker the result goes straight into shared memory, so handing it
        to the main process costs no extra copy.
        """
        g = self.generator(x.device, epoch, batch)
        per_image = 4 * x[0].numel()
        step = max(1, _CPU_CHUNK_BYTES // per_image)
        first = self(x[:step], index[:step], g, epoch)
        shape = (x.shape[0], *first.shape[1:])
        if torch.utils.data.get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(first.element_size() * math.prod(shape))
            out = torch.empty(0, dtype=first.dtype).set_(storage, 0, shape)
        else:
            out = torch.empty(shape, dtype=first.dtype)
        out[:step] = first
        for i in range(step, x.shape[0], step):
            out[i:i + step] = self(x[i:i + step], index[i:i + step], g, epoch)
        return out


class _BatchReader(torch.utils.data.Dataset):
    """``reader[(epoch, batch number, indices)]`` -> one batch; runs in a DataLoader worker.

    Returns (images, labels, index). images is, by mode: "encoded" the compressed bytes (one
    uint8 buffer + lengths) for decoding on the GPU; "decoded" uint8 (B, H, W, C) decoded on
    the CPU; "transformed" float (B, C, H, W) after the CPU device stage as well.
    """

    def __init__(self, split: PackedSplit, size: int | None, mode: str = "decoded",
                 stage: _Stage | None = None) -> None:
        self.split, self.size, self.mode, self.stage = split, size, mode, stage

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, list[int]]) -> tuple[torch.Tensor, ...]:
        epoch, batch, indices = key
        index = torch.tensor(indices, dtype=torch.int64)
        labels = torch.from_numpy(self.split.table[index.numpy(), 3].copy())
        if self.mode == "encoded":
            data, lengths = self.split.read_many(indices)
            return data, lengths, labels, index
        x = self.split.decode(indices, self.size)  # (B, H, W, C) uint8
        if self.mode == "transformed":
            assert self.stage is not None
            x = self.stage.run_chunked(x.permute(0, 3, 1, 2), index, epoch, batch)
        return x, labels, index


def _default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


class StreamLoader:
    """Batches ``(images float (B,C,H,W) normalised, labels int64 (B,))`` from a packed split.

    Mirrors ``convzoo.data.loaders.DeviceLoader``: ``set_epoch(e)`` then iterate; ``len()`` is
    batches per epoch for this rank. ``batch_size`` is the per-rank batch. ``workers``: decode
    processes (None = min(cores, 8), 0 = decode in this process). ``preprocess`` maps the uint8
    batch on the device to normalised float (None: float scaled to 0-1). ``augment(x, generator,
    epoch, index)`` is applied to training batches, ``eval_transform(x)`` to evaluation ones.

    On a CPU device the preprocess/augment stage runs inside the workers (the "device" is the
    same cores, and the workers share the work); on CUDA it runs on the GPU in the main
    process, on uint8 batches copied from pinned memory (or decoded there by nvJPEG).
    """

    def __init__(
        self,
        split: PackedSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment: Callable[..., torch.Tensor] | None = None,
        eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        workers: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        decode_size: int | None = None,
        prefetch: int = 2,
        gpu_decode: bool | None = None,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.decode_size = decode_size
        self.sampler = EpochBatches(len(split), batch_size, shuffle=shuffle,
                                    drop_last=drop_last, seed=seed, rank=rank,
                                    world_size=world_size)
        self.stage = _Stage(preprocess, augment, eval_transform, seed, rank, world_size)
        cuda = self.device.type == "cuda"
        if gpu_decode is None:
            gpu_decode = cuda and split.image_format == "jpeg"
        if gpu_decode and not (cuda and split.image_format == "jpeg"):
            raise ConvzooError("gpu_decode needs a CUDA device and a JPEG pack")
        self.gpu_decode = gpu_decode
        self.mode = "encoded" if gpu_decode else "decoded" if cuda else "transformed"
        if self.device.type not in ("cpu", "cuda"):
            self.mode = "decoded"  # other accelerators: uint8 to the device, stage there
        self.workers = _default_workers() if workers is None else workers
        reader = _BatchReader(split, decode_size, self.mode, self.stage)
        extra = {}
        if self.workers > 0:
            extra = dict(prefetch_factor=prefetch, persistent_workers=True)
        # batch_size=None: the sampler yields whole batches of indices, a worker builds one
        # batch per call, and no collate copy happens.
        self.loader = DataLoader(reader, sampler=self.sampler, batch_size=None,
                                 num_workers=self.workers, pin_memory=cuda, **extra)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return self.sampler.num_samples

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def head(self, n: int) -> torch.Tensor:
        """The first `n` records of the split (0 = all), uint8 (n, C, H, W) on the device."""
        n = min(n or len(self.split), len(self.split))
        x = self.split.decode(list(range(n)), self.decode_size)  # (n, H, W, C)
        return x.permute(0, 3, 1, 2).to(self.device)

    def _on_device(self, item: tuple[torch.Tensor, ...], batch: int) -> torch.Tensor:
        """uint8 worker output (decoded or still encoded) -> the stage's output on the device."""
        dev = self.device
        if self.mode == "encoded":
            data, lengths, _, index = item
            payloads = list(torch.split(data, lengths.tolist()))
            images = decode_jpegs(payloads, self.split.channels, device=str(dev),
                                  where=f"{self.split.root} ({self.split.name})")
            x = stack_images(images, self.decode_size, where=str(self.split.root))
        else:
            x, _, index = item
            x = x.to(dev, non_blocking=True)
        # (B, H, W, C) -> (B, C, H, W): a view with channels-last strides, no copy.
        x = x.permute(0, 3, 1, 2)
        index = index.to(dev, non_blocking=True)
        return self.stage(x, index, self.stage.generator(dev, self.epoch, batch), self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch, item in enumerate(self.loader):
            labels = item[-2].to(self.device, non_blocking=True)
            if self.mode == "transformed":  # the stage already ran on the CPU
                yield item[0], labels
            else:
                yield self._on_device(item, batch), labels


def decode_all(split: PackedSplit, *, size: int | None = None, workers: int | None = None,
               chunk: int = 1024) -> torch.Tensor:
    """Decode every record of ``split`` in order -> uint8 (N, H, W, C), in parallel."""
    n = len(split)
    workers = _default_workers() if workers is None else workers
    if n <= 4 * chunk:
        workers = 0  # not worth starting processes
    chunks = [(0, k, list(range(i, min(i + chunk, n)))) for k, i in enumerate(range(0, n, chunk))]
    loader = DataLoader(_BatchReader(split, size), sampler=chunks, batch_size=None,
                        num_workers=workers)
    out: torch.Tensor | None = None
    for (_, _, idx), (batch, _, _) in zip(chunks, loader):
        if out is None:
            out = torch.empty((n, *batch.shape[1:]), dtype=torch.uint8)
        elif batch.shape[1:] != out.shape[1:]:
            raise ConvzooError(f"{split.root} ({split.name}): images have different sizes "
                               f"{tuple(out.shape[1:])} and {tuple(batch.shape[1:])}; give a "
                               "size (or pack with resize) to load them into memory")
        out[idx[0]:idx[-1] + 1] = batch
    if out is None:
        out = torch.empty((0, 0, 0, split.channels), dtype=torch.uint8)
    return out


__all__ = ["EpochBatches", "StreamLoader", "decode_all"]
