"""The streaming loader: batches decoded on the fly from a packed dataset that does not fit
in memory, yielding the same ``(images, labels)`` batches as the device-resident loader.

Per batch: the main process picks the record indices (a seeded permutation per epoch, one
disjoint equal-size slice per rank); a DataLoader worker reads the payloads with ``pread``
and decodes them (``torchvision.io.decode_jpeg`` on a list, or a view of the bytes for raw
packs).

- On CUDA the worker stacks the batch into one uint8 (B, H, W, C) tensor; it stays uint8
  until it reaches the device (4x fewer bytes to copy than float), where it is permuted to
  (B, C, H, W) (channels-last memory), preprocessed and augmented as one batch — exactly as
  in memory. With a JPEG pack, ``gpu_decode=True`` sends the compressed bytes instead and
  decodes them with nvJPEG (``decode_jpeg(..., device="cuda")``); workers then only read.
- On a CPU the workers run the preprocess/augment stage too. For large images whose
  preprocessing is pixelwise (none, global_mean, channel) and whose augmentation is integer
  geometry (crop, zero pad, translate, flip, cutout), each image goes from its decoded
  uint8 pixels to its normalised, augmented place in the output in one pass
  (``augment.apply_windows``); otherwise the batched stage runs in cache-sized chunks.

Workers write each batch into shared-memory buffers that are reused once the batch handed out
from them is no longer referenced (``_Slots``): fresh memory costs a page fault per 4 KiB
page when it is first written, which at 224 px took longer than decoding the image.

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

from convzoo.data.augment import Windows, _per_image, apply_windows
from convzoo.data.preprocess import Preprocessor
from convzoo.data.records import PackedSplit, check_same_size, decode_jpegs, stack_images
from convzoo.errors import ConvzooError

Key = tuple[int, int, list[int], "tuple[int, torch.Tensor] | None"]


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


# The batched CPU stage works on chunks of about this many float bytes: small enough to stay
# in cache between preprocess and augment steps (3x faster than whole 224 px batches).
_CPU_CHUNK_BYTES = 4 * 2**20

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


class _Stage:
    """The "device" stage: uint8 (B, C, H, W) -> preprocessed, augmented float batch.

    The random generator is reseeded per batch from (seed, epoch, rank, batch number), so a
    batch gets the same augmentation wherever it is computed (worker or main process).
    """

    def __init__(self, preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
                 augment: Callable[..., torch.Tensor] | None,
                 eval_transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 seed: int, rank: int, world_size: int) -> None:
        self.preprocess = preprocess if preprocess is not None else Preprocessor("none")
        self.augment, self.eval_transform = augment, eval_transform
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def generator(self, device: torch.device, epoch: int, batch: int) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(_epoch_seed(self.seed, epoch, 1 + batch * self.world_size + self.rank))
        return g

    def __call__(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator,
                 epoch: int) -> torch.Tensor:
        x = self.preprocess(x)
        if self.augment is not None:
            return self.augment(x, generator, epoch, index)
        if self.eval_transform is not None:
            return self.eval_transform(x)
        return x

    def _windows(self, shape: tuple[int, ...], generator: torch.Generator, epoch: int,
                 index: torch.Tensor) -> Windows | None:
        """The augmentation (or eval view) as a per-image plan, if it is integer geometry.
        Draws nothing when it is not."""
        if self.augment is not None:
            plan = getattr(self.augment, "windows", None)
            return plan(shape, generator, epoch, index) if plan is not None else None
        if self.eval_transform is not None:
            plan = getattr(self.eval_transform, "windows", None)
            return plan(shape) if plan is not None else None
        return Windows.identity(shape[0], *shape[2:])

    def run_cpu(self, images: list[torch.Tensor] | torch.Tensor, shape: tuple[int, ...],
                index: torch.Tensor, epoch: int, batch: int, alloc: Alloc) -> torch.Tensor:
        """The stage on the CPU for B decoded uint8 (C, H, W) images of one `shape` (B, C, H, W),
        written into ``alloc(shape, dtype)``: image by image in one pass where the stage allows
        it, else batched in cache-sized chunks. Both give the same values."""
        g = self.generator(torch.device("cpu"), epoch, batch)
        pixelwise = getattr(self.preprocess, "pixelwise", None)
        affine = pixelwise() if pixelwise is not None else None
        plan = None
        if affine is not None and _per_image(shape, torch.device("cpu")):
            plan = self._windows(shape, g, epoch, index)
        if plan is not None:
            out = alloc((shape[0], shape[1], *plan.size), torch.float32)
            return apply_windows(images, plan, out, affine)
        x = images if isinstance(images, torch.Tensor) else torch.stack(images)
        return self._run_chunked(x, index, g, epoch, alloc)

    def _run_chunked(self, x: torch.Tensor, index: torch.Tensor, g: torch.Generator, epoch: int,
                     alloc: Alloc) -> torch.Tensor:
        per_image = 4 * x[0].numel()
        step = max(1, _CPU_CHUNK_BYTES // per_image)
        first = self(x[:step], index[:step], g, epoch)
        out = alloc((x.shape[0], *first.shape[1:]), first.dtype)
        out[:step] = first
        for i in range(step, x.shape[0], step):
            out[i:i + step] = self(x[i:i + step], index[i:i + step], g, epoch)
        return out


# torch's count of references to a tensor's memory (storage). Absent from some CPU-only builds
# of older torch, where output buffers are then simply not reused.
_storage_refs = getattr(torch._C, "_storage_Use_Count", None)


def _refs(buffer: torch.Tensor) -> int:
    return _storage_refs(buffer.untyped_storage()._cdata)  # type: ignore[misc]


class _Slots:
    """Shared-memory output buffers for worker batches, reused once nothing refers to them.

    The main process gives each dispatched batch a free slot (``take``); the worker writes the
    batch into it and returns a view of it, which torch's sharing maps back onto the same
    memory here. A slot is free again when no batch from it is in flight and torch counts no
    reference to its memory beyond the pool's own (the count is measured when the buffer is
    made, not assumed). A batch a caller keeps is therefore never overwritten; when every
    slot is held the worker just allocates a fresh buffer. The buffer size is learnt from the
    first batch (which is always fresh), and grows if a larger batch comes back.
    """

    def __init__(self, count: int) -> None:
        self.count = count if _storage_refs is not None else 0
        self.nbytes = 0
        self.buffers: list[torch.Tensor | None] = [None] * self.count
        self.baseline = [0] * self.count
        self.busy: dict[int, int] = {}  # batch number -> slot, for batches in flight

    def reset(self) -> None:
        """Forget batches in flight (call when the workers are known to be idle)."""
        self.busy.clear()

    def take(self, batch: int) -> tuple[int, torch.Tensor] | None:
        """(slot number, flat uint8 shared buffer) for `batch`, or None if none is free."""
        if not self.nbytes:
            return None
        busy = set(self.busy.values())
        for i in range(self.count):
            buffer = self.buffers[i]
            if i in busy or (buffer is not None and buffer.numel() >= self.nbytes
                             and _refs(buffer) != self.baseline[i]):
                continue
            if buffer is None or buffer.numel() < self.nbytes:
                buffer = torch.empty(self.nbytes, dtype=torch.uint8).share_memory_()
                self.buffers[i], self.baseline[i] = buffer, _refs(buffer)
            self.busy[batch] = i
            return i, buffer
        return None

    def received(self, batch: int, images: torch.Tensor) -> None:
        """`batch` is back from its worker; later batches need buffers of at least its size."""
        self.busy.pop(batch, None)
        self.nbytes = max(self.nbytes, images.numel() * images.element_size())


class _Keys(Sampler[Key]):
    """The DataLoader's sampler: this rank's batches of `batches`, each with an output slot."""

    def __init__(self, batches: EpochBatches, slots: _Slots | None) -> None:
        self.batches, self.slots = batches, slots

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Key]:
        # A generator body runs on the first request, which the DataLoader makes only after
        # its workers have finished (and it has discarded) an abandoned earlier epoch.
        if self.slots is not None:
            self.slots.reset()
        for epoch, i, indices in self.batches:
            yield epoch, i, indices, self.slots.take(i) if self.slots is not None else None


class _BatchReader(torch.utils.data.Dataset):
    """``reader[(epoch, batch number, indices, slot)]`` -> one batch; runs in a DataLoader
    worker.

    Returns (images, labels, index). images is, by mode: "encoded" the compressed bytes (one
    uint8 buffer + lengths) for decoding on the GPU; "decoded" uint8 (B, H, W, C) decoded on
    the CPU; "transformed" float (B, C, H, W) after the CPU stage as well. Decoded and
    transformed batches are written into the slot's buffer when it is large enough.
    """

    def __init__(self, split: PackedSplit, size: int | None, mode: str = "decoded",
                 stage: _Stage | None = None) -> None:
        self.split, self.size, self.mode, self.stage = split, size, mode, stage
        self.where = f"{split.root} ({split.name})"
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
        images = self.split.decode_images(indices, self.size)
        c, h, w = check_same_size(images, self.where)
        if self.mode == "decoded":
            out = self._output(slot, (len(indices), h, w, c), torch.uint8)
            x = stack_images(images, where=self.where, out=out)
        else:
            assert self.stage is not None
            x = self.stage.run_cpu(images, (len(indices), c, h, w), index, epoch, batch,
                                   lambda shape, dtype: self._output(slot, shape, dtype))
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
        # Enough slots for the batches in flight, the one being handed out and the caller's
        # previous one: a loop that keeps no batches always finds a free slot.
        self.slots = None if self.mode == "encoded" else _Slots(prefetch * self.workers + 2)
        # batch_size=None: the sampler yields whole batches of indices, a worker builds one
        # batch per call, and no collate copy happens.
        self.loader = DataLoader(reader, sampler=_Keys(self.sampler, self.slots), batch_size=None,
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
            if self.slots is not None:
                self.slots.received(batch, item[0])
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
    chunks = [(0, k, list(range(i, min(i + chunk, n))), None)
              for k, i in enumerate(range(0, n, chunk))]
    loader = DataLoader(_BatchReader(split, size), sampler=chunks, batch_size=None,
                        num_workers=workers)
    out: torch.Tensor | None = None
    for (_, _, idx, _), (batch, _, _) in zip(chunks, loader):
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
