"""The two loaders: two sources of (uint8 images, labels, indices) feeding one device stage.

- `ResidentLoader`: the whole split as one uint8 tensor on the training device (CIFAR,
  digits, small folders): one index gather per batch, no DataLoader, no per-image Python.
- `StreamLoader`: a packed split (`convzoo pack`) that stays on disk; DataLoader workers read
  each batch with ``pread`` and decode it (or, on CUDA with a JPEG pack, send the compressed
  bytes to be decoded by nvJPEG).

Both take their batches from one `EpochPlan` (`convzoo.data.sampler`: order, rank shards,
remainders) and apply one `Stage` (`convzoo.data.transforms.stage`: preprocess, then augment or
the eval view, with one generator per batch), so for the same images they yield the same
batches.
Both yield ``(images float (B, C, H, W), targets)`` on the device: int64 (B,) labels, or
(B, num_classes) float class probabilities when the augmentation mixes images (mixup/cutmix),
and have ``set_epoch(e, start=0)`` (``start``: the first batch to make), ``len()``,
``head(n)`` and ``.preprocess``.

Where the stage runs: on the training device, except for the streaming loader on a CPU, where
the workers run it (the "device" is the same cores, and the workers share the work) into
reused shared-memory buffers (`convzoo.data.transforms.cpu_stage.Slots`). On CUDA, worker
batches stay uint8 until they reach the GPU (4x fewer bytes to copy than float), as
(B, H, W, C) viewed as (B, C, H, W) with channels-last strides.
"""

from __future__ import annotations

import math
import os
import signal
import weakref
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from convzoo.data.dataset import Split
from convzoo.data.images import (
    DEFAULT_LIMITS,
    Geometry,
    Limits,
    convert_channels,
    decode_jpegs,
)
from convzoo.data.packs.reader import PackedSplit, stack_images
from convzoo.data.sampler import EpochPlan
from convzoo.data.transforms.cpu_stage import Slots
from convzoo.data.transforms.stage import Stage
from convzoo.errors import ConvzooError


class _Loader:
    """What both loaders share: the plan, the stage, the epoch and where it starts."""

    def __init__(self, n: int, batch_size: int, *, device: torch.device | str,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
                 augment: Callable[..., torch.Tensor] | None,
                 eval_transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 shuffle: bool, drop_last: bool, seed: int, rank: int, world_size: int) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.plan = EpochPlan(n, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                              rank=rank, world_size=world_size)
        self.stage = Stage(preprocess, augment, eval_transform, seed=seed, rank=rank)
        self.epoch, self.start = 0, 0

    @property
    def preprocess(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.stage.preprocess

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        return self.plan.num_samples

    def __len__(self) -> int:
        """Batches this rank makes per epoch."""
        return len(self.plan)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch the next iteration makes, from its batch `start` (0 = the whole epoch)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} out of range for {len(self)} batches")
        self.epoch, self.start = epoch, start


class ResidentLoader(_Loader):
    """Batches of a split held in memory on the training device (see the module docstring).

    ``batch_size`` is per rank. ``augment(x, generator, epoch, index)`` for training batches
    or ``eval_transform(x)`` for evaluation ones; ``shuffle``/``drop_last``/``seed``/``rank``/
    ``world_size`` as `EpochPlan` (drop_last=True is the training partition).
    """

    def __init__(self, split: Split, batch_size: int, *, device: torch.device | str = "cpu",
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 augment: Callable[..., torch.Tensor] | None = None,
                 eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(len(split), batch_size, device=device, preprocess=preprocess,
                         augment=augment, eval_transform=eval_transform, shuffle=shuffle,
                         drop_last=drop_last, seed=seed, rank=rank, world_size=world_size)
        self.images = split.images.to(self.device)  # (N, C, H, W) uint8, resident
        self.labels = split.labels.to(self.device)  # (N,) int64

    def close(self) -> None:
        """Nothing to stop (no worker processes); here so that every loader can be closed."""

    def head(self, n: int) -> torch.Tensor:
        """The first `n` images of the split (0 = all), uint8 (n, C, H, W) on the device."""
        return self.images[:n] if n else self.images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        for k, index in self.plan.batches(epoch, self.start):
            index = index.to(self.device, non_blocking=True)
            yield self.stage(self.images[index], self.labels[index], index, epoch, k)


# ----------------------------------------------------------------------------- streaming


Key = tuple[int, int, list[int], "tuple[int, torch.Tensor] | None"]


class _Keys(Sampler[Key]):
    """The DataLoader's sampler: this rank's batches, each with an output slot."""

    def __init__(self, loader: StreamLoader) -> None:
        # A weak reference: a strong one closes a cycle (loader -> DataLoader -> sampler ->
        # loader), and a StreamLoader in a cycle is freed by the cyclic collector, whose
        # teardown order left each persistent worker 5 s to time out on exit.
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> StreamLoader:
        loader = self._loader()
        assert loader is not None, "the StreamLoader of this sampler was freed"
        return loader

    def __len__(self) -> int:
        return len(self.loader) - self.loader.start

    def __iter__(self) -> Iterator[Key]:
        # A generator body runs on the first request, which the DataLoader makes only after
        # its workers have finished (and it has discarded) an abandoned earlier epoch.
        slots = self.loader.slots
        if slots is not None:
            slots.reset()
        epoch = self.loader.epoch
        for k, index in self.loader.plan.batches(epoch, self.loader.start):
            yield epoch, k, index.tolist(), slots.take(k) if slots is not None else None


class _BatchReader(torch.utils.data.Dataset):
    """``reader[(epoch, batch number, indices, slot)]`` -> one batch; runs in a DataLoader
    worker.

    Returns (images, labels, index), or (images, targets, index) once the stage has run (targets:
    the labels, or soft targets when the augmentation mixes). images is, by mode: "encoded" the compressed bytes (one
    uint8 buffer + lengths) for decoding on the GPU; "decoded" uint8 (B, H, W, C) decoded on
    the CPU; "transformed" float (B, C, H, W) after the CPU stage as well. Decoded and
    transformed batches are written into the slot's buffer when it is large enough.
    """

    def __init__(self, split: PackedSplit, geometry: Geometry | None, limits: Limits,
                 mode: str = "decoded", stage: Stage | None = None) -> None:
        self.split, self.geometry, self.limits = split, geometry, limits
        self.mode, self.stage = mode, stage
        self.held: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.split)

    def _output(self, slot: tuple[int, torch.Tensor] | None, shape: tuple[int, ...],
                dtype: torch.dtype) -> torch.Tensor:
        """A (shape, dtype) tensor in the slot's buffer if it fits, else a fresh one (shared
        memory in a worker, so handing it over costs no copy)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if slot is not None:
            number, buffer = slot
            # Keep this process's mapping of the buffer: the next batch in this slot then
            # finds it (torch's sharing cache) with its pages already mapped.
            self.held[number] = buffer
            if buffer.numel() >= nbytes:
                return buffer[:nbytes].view(dtype).view(shape)
        if torch.utils.data.get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(nbytes)
            return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
        return torch.empty(shape, dtype=dtype)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, ...]:
        epoch, batch, indices, slot = key
        index = torch.tensor(indices, dtype=torch.int64)
        labels = torch.from_numpy(self.split.table[index.numpy(), 3].copy())
        if self.mode == "encoded":
            data, lengths = self.split.read_many(indices)
            return data, lengths, labels, index
        images = self.split.decode_images(indices, self.geometry, self.limits)
        if isinstance(images, torch.Tensor):  # a raw batch: one size by construction
            c, h, w = images.shape[1:]
        else:
            shapes = {tuple(x.shape) for x in images}
            if len(shapes) != 1:
                raise ConvzooError(f"{self.split.where}: images have different sizes "
                                   f"{sorted(shapes)[:2]}...; set data.image_size")
            c, h, w = shapes.pop()
        if self.mode == "decoded":
            out = self._output(slot, (len(indices), h, w, c), torch.uint8)
            x = stack_images(images, where=self.split.where, out=out)
        else:
            assert self.stage is not None
            x, labels = self.stage.run_cpu(images, (len(indices), c, h, w), labels, index, epoch,
                                           batch, lambda shape, dtype: self._output(slot, shape,
                                                                                    dtype))
        return x, labels, index


def _default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def _ignore_sigint(worker_id: int) -> None:
    """A Ctrl-C at a terminal reaches the whole process group: the decode workers ignore it,
    and the trainer decides (a checkpoint at the current step, ``training/preempt.py``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StreamLoader(_Loader):
    """Batches streamed from a packed split (see the module docstring).

    Same arguments as `ResidentLoader`, plus ``workers`` (decode processes; None = min(cores,
    8), 0 = decode in this process), ``geometry`` (what every image is brought to; None: the
    stored size, which must then be one size), ``limits`` (bounds on the records), ``prefetch``
    (batches per worker in flight) and ``gpu_decode`` (nvJPEG; default on CUDA for a JPEG pack).
    """

    def __init__(
        self,
        split: PackedSplit,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment: Callable[..., torch.Tensor] | None = None,
        eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int | None = None,
        geometry: Geometry | None = None,
        limits: Limits = DEFAULT_LIMITS,
        prefetch: int = 2,
        gpu_decode: bool | None = None,
    ) -> None:
        super().__init__(len(split), batch_size, device=device, preprocess=preprocess,
                         augment=augment, eval_transform=eval_transform, shuffle=shuffle,
                         drop_last=drop_last, seed=seed, rank=rank, world_size=world_size)
        self.split, self.geometry, self.limits = split, geometry, limits
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
        reader = _BatchReader(split, geometry, limits, self.mode, self.stage)
        extra = {}
        if self.workers > 0:
            extra = dict(prefetch_factor=prefetch, persistent_workers=True,
                         worker_init_fn=_ignore_sigint)
        # Enough slots for the batches in flight, the one being handed out and the caller's
        # previous one: a loop that keeps no batches always finds a free slot.
        self.slots = None if self.mode == "encoded" else Slots(prefetch * self.workers + 2)
        # batch_size=None: the sampler yields whole batches of indices, a worker builds one
        # batch per call, and no collate copy happens.
        self.loader = DataLoader(reader, sampler=_Keys(self), batch_size=None,
                                 num_workers=self.workers, pin_memory=cuda, **extra)

    def close(self) -> None:
        """Stop the worker processes now. Left to the garbage collector, the shutdown of
        persistent workers took 5 s per worker (their join timed out); explicit, 20 ms."""
        iterator = self.loader._iterator  # where torch keeps the persistent workers
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None

    def head(self, n: int) -> torch.Tensor:
        """The first `n` records of the split (0 = all), uint8 (n, C, H, W) on the device."""
        n = min(n or len(self.split), len(self.split))
        return self.split.images_at(range(n), self.geometry, self.limits).to(self.device)

    def _on_device(self, item: tuple[torch.Tensor, ...], epoch: int,
                   batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 worker output (decoded or still encoded) -> the stage's output on the device:
        (images, targets)."""
        dev = self.device
        if self.mode == "encoded":
            data, lengths, _, index = item
            images = decode_jpegs(data, lengths, self.limits, device=dev, where=self.split.where)
            images = [self.geometry.apply(x) if self.geometry is not None
                      else convert_channels(x, self.split.channels) for x in images]
            x = stack_images(images, where=self.split.where)
        else:
            x, _, index = item
            x = x.to(dev, non_blocking=True)
        # (B, H, W, C) -> (B, C, H, W): a view with channels-last strides, no copy.
        x = x.permute(0, 3, 1, 2)
        index = index.to(dev, non_blocking=True)
        labels = item[-2].to(dev, non_blocking=True)
        return self.stage.apply(x, labels, index, self.stage.generator(dev, epoch, batch), epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        for batch, item in enumerate(self.loader, start=self.start):
            if self.slots is not None:
                self.slots.received(batch, item[0])
            if self.mode == "transformed":  # the stage already ran on the CPU: (x, targets)
                yield item[0], item[1]
            else:
                yield self._on_device(item, epoch, batch)
