"""The CPU fast path of the device stage: one pass per image, into reused shared memory.

On a CPU, batched tensor ops make several full-size float temporaries per batch and loop over
C = 3 innermost on channels-last data; for images of 64x64 and up, building each output image
with one copy is several times faster (docs/data.md). Two pieces make that path:

- `Windows` / `apply_windows`: the integer geometry of a batch (crop, zero pad, translate,
  flip, cutout, the eval centre crop) as a per-image plan, built image by image, optionally
  reading uint8 pixels and normalising on the way (``Preprocessor.pixelwise``). It gives
  exactly the batch that the batched ops give (tests/test_cpu_stage.py).
- `Slots`: shared-memory output buffers that DataLoader workers write batches into, reused
  once nothing refers to a batch any more. Fresh memory costs a page fault per 4 KiB page when
  first written, which at 224 px took longer than decoding the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- per-image windows


@dataclass(frozen=True)
class Windows:
    """The integer geometry of a batch, image by image: where each output pixel comes from.

    Output image b (``size`` = (h, w)) holds source pixel ``(i + dy[b], j + dx[b])`` at (i, j) for
    rows ``top[b] <= i < bottom[b]`` and columns ``left[b] <= j < right[b]`` and the fill value 0
    elsewhere; it is then mirrored where ``flip[b]``, and ``cut`` px squares at ``cut_at[b]`` =
    (top, left) are set to 0. Crops and shifts compose into this form (each keeps the valid part
    a rectangle), which is what lets a CPU build each image with one copy.
    """

    size: tuple[int, int]
    dy: Tensor  # (B,) int64: source row = output row + dy
    dx: Tensor
    top: Tensor  # (B,) int64: the rows/columns that come from the source, the rest is fill
    bottom: Tensor
    left: Tensor
    right: Tensor
    flip: Tensor | None = None  # (B,) bool
    cut: int = 0
    cut_at: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def identity(batch: int, height: int, width: int) -> Windows:
        zero = torch.zeros(batch, dtype=torch.int64)
        return Windows((height, width), zero, zero, zero, zero + height, zero, zero + width)

    def crop(self, top: Tensor | int, left: Tensor | int, size: tuple[int, int]) -> Windows:
        """The `size` window at (top, left) of the current output."""
        h, w = size
        return replace(self, size=size, dy=self.dy + top, dx=self.dx + left,
                       top=(self.top - top).clamp(0, h), bottom=(self.bottom - top).clamp(0, h),
                       left=(self.left - left).clamp(0, w), right=(self.right - left).clamp(0, w))

    def shift(self, dy: Tensor, dx: Tensor) -> Windows:
        """The current output moved down by dy and right by dx px, 0 shifted in."""
        h, w = self.size
        return replace(self, dy=self.dy - dy, dx=self.dx - dx,
                       top=(self.top + dy).clamp(0, h), bottom=(self.bottom + dy).clamp(0, h),
                       left=(self.left + dx).clamp(0, w), right=(self.right + dx).clamp(0, w))


def apply_windows(
    images: Sequence[Tensor] | Tensor,
    windows: Windows,
    out: Tensor | None = None,
    normalize: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Build the batch `windows` describes from `images` (B source (C, H, W) tensors, or one
    (B, C, H, W) batch, any layout), one copy per image.

    With ``normalize = (mean, scale)`` the sources are uint8 on the 0-255 scale and each copied
    pixel becomes ``(x - mean) * scale`` as float32 (``Preprocessor.pixelwise``); the result is
    then exactly preprocess-then-augment, without a full-size intermediate batch. `out` (B, C, h,
    w) receives the batch (e.g. a reused shared-memory buffer); by default a new contiguous one.
    """
    B = len(images)
    h, w = windows.size
    if out is None:
        C, dtype = images[0].shape[0], torch.float32 if normalize else images[0].dtype
        out = torch.empty(B, C, h, w, dtype=dtype)
    geometry = zip(windows.dy.tolist(), windows.dx.tolist(), windows.top.tolist(),
                   windows.bottom.tolist(), windows.left.tolist(), windows.right.tolist())
    flips = windows.flip.tolist() if windows.flip is not None else [False] * B
    cuts = zip(*(t.tolist() for t in windows.cut_at)) if windows.cut_at else [None] * B
    for b, ((dy, dx, t, bt, lf, rt), flipped, cut) in enumerate(zip(geometry, flips, cuts)):
        o = out[b]
        if t >= bt or lf >= rt:
            o.zero_()  # shifted out entirely
        else:
            src = images[b][:, t + dy:bt + dy, lf + dx:rt + dx]
            if flipped:  # mirrored: the same columns counted from the right edge
                src, lf, rt = src.flip(-1), w - rt, w - lf
            o[:, :t].zero_()
            o[:, bt:].zero_()
            o[:, t:bt, :lf].zero_()
            o[:, t:bt, rt:].zero_()
            region = o[:, t:bt, lf:rt]
            region.copy_(src)
            if normalize is not None:
                region.sub_(normalize[0]).mul_(normalize[1])
        if cut is not None:
            o[:, cut[0]:cut[0] + windows.cut, cut[1]:cut[1] + windows.cut].zero_()
    return out


def per_image(shape: torch.Size | tuple[int, ...], device: torch.device) -> bool:
    """Whether to build batches image by image (`apply_windows`): on a CPU, for images of
    64x64x3 values or more. There one pass per image beats the batched ops (a full-size
    temporary per op, per-channel loops on channels-last data) several times over; below that
    size the per-image Python overhead wins, and on a GPU the batched ops always do."""
    return device.type == "cpu" and math.prod(shape[1:]) >= 64 * 64 * 3


# ----------------------------------------------------------------------------- shared buffers


# torch's count of references to a tensor's memory (storage). Absent from some CPU-only builds
# of older torch, where output buffers are then simply not reused.
_storage_refs = getattr(torch._C, "_storage_Use_Count", None)


def _refs(buffer: torch.Tensor) -> int:
    return _storage_refs(buffer.untyped_storage()._cdata)  # type: ignore[misc]


class Slots:
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
        self.made = self.reused = 0  # buffers allocated / handed out again (tested)

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
                self.made += 1
            else:
                self.reused += 1
            self.busy[batch] = i
            return i, buffer
        return None

    def received(self, batch: int, images: torch.Tensor) -> None:
        """`batch` is back from its worker; later batches need buffers of at least its size."""
        self.busy.pop(batch, None)
        self.nbytes = max(self.nbytes, images.numel() * images.element_size())
