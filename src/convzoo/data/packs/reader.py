"""Packed record datasets, the format and its reader: a few large shard files of encoded
images plus an index (the writer, ``convzoo pack``, is `convzoo.data.packs.writer`).

The idea is MXNet's RecordIO: instead of thousands of small files, each split is written as
concatenated payloads in shard files of a few hundred MB, and a table of
``(shard, offset, length, label)`` gives random access to any record with one ``os.pread``.

Layout of a packed dataset directory (format version 1)::

    DEST/index.json             format, version, classes, image format, shape, sizes, splits
    DEST/train-index.npy        int64 (N, 4): shard number, byte offset, byte length, label
    DEST/train-00000.rec ...    concatenated payloads (JPEG files, or raw uint8 C*H*W bytes)
    DEST/test-index.npy, DEST/test-00000.rec, ...

Payloads are either JPEG (``image_format == "jpeg"``; any size, decoded on the fly) or raw
uint8 in (C, H, W) order (``"raw"``; every image the same size, so loading is a reshape).
``sizes`` (written since this version of convzoo; optional) lists ``[height, width, count]``
of the stored images, so a reader knows the most common size without decoding. ``index.json``
is the last file written, so an interrupted pack never looks valid.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convzoo.data import images
from convzoo.data.dataset import Dataset, Split, from_decoded
from convzoo.data.images import DEFAULT_LIMITS, Geometry, Limits
from convzoo.data.packs import remote as remote_io
from convzoo.errors import ConvzooError
from convzoo.integrity import read_regular, regular_file
from convzoo.jsonio import loads_json

log = logging.getLogger("convzoo")

FORMAT_NAME = "convzoo-packed"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLIT_NAMES = images.SPLITS
TABLE_COLUMNS = ("shard", "offset", "length", "label")
_READ_CHUNK = 1024  # records read per call when decoding a whole split into memory


def read_index(path: Path) -> dict[str, Any]:
    """The parsed ``index.json`` of a packed dataset (format and version checked)."""
    index = path / INDEX_NAME
    try:
        info = loads_json(read_regular(index, "pack index"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConvzooError(f"{index}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise ConvzooError(f"{index}: not a convzoo packed dataset index")
    if info.get("version") != FORMAT_VERSION:
        raise ConvzooError(f"{index}: format version {info.get('version')} is not supported "
                           f"(this convzoo reads version {FORMAT_VERSION})")
    return info


def is_packed(path: Path | str) -> bool:
    """True if ``path`` is a directory holding a complete, readable packed dataset."""
    path = Path(path).expanduser()
    if not (path / INDEX_NAME).is_file():
        return False
    try:
        info = read_index(path)
        for split in info["splits"].values():
            if not all((path / s).is_file() for s in split["shards"]):
                return False
            if not (path / split["table"]).is_file():
                return False
    except (ConvzooError, KeyError, TypeError, AttributeError):
        return False
    return True


def stack_images(images_: Sequence[torch.Tensor], *, where: str = "",
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (C, H, W) images of one size -> one (B, H, W, C) contiguous batch (into `out`)."""
    if not isinstance(images_, torch.Tensor):
        shapes = {tuple(x.shape) for x in images_}
        if len(shapes) > 1:
            raise ConvzooError(f"{where}: images have different sizes {sorted(shapes)[:2]}...; "
                               "set data.image_size (or pack with resize) to stack them")
    # decode_jpeg returns (C, H, W) views of (H, W, C) memory: permuting back is free.
    hwc = [x.permute(1, 2, 0) for x in images_]
    return torch.stack(hwc) if out is None else torch.stack(hwc, out=out)


class PackedSplit:
    """One split of a packed dataset: random access to ``(payload bytes, label)`` by index.

    Reads use ``os.pread`` on shard files opened on first use; the object can be pickled
    into DataLoader workers (each process reopens the files).
    """

    def __init__(self, root: Path, name: str, info: dict[str, Any], image_format: str,
                 shape: tuple[int, int, int] | None, channels: int,
                 remote: Any = None, location: str | None = None) -> None:
        self.root, self.name = root, name
        self.image_format = image_format  # "jpeg" | "raw"
        self.shape = shape  # (C, H, W) for raw packs, else None
        self.channels = channels
        self.shard_paths = [root / s for s in info["shards"]]
        # data.remote.RemoteShards for a pack behind an fsspec URL (its index is cached in
        # `root`, its shards are read through the cache), else None: local shard files.
        self.remote = remote
        self.location = location or str(root)
        table_path = root / info["table"]
        try:
            table = np.load(table_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConvzooError(f"{table_path}: cannot read index table ({e})") from None
        if table.ndim != 2 or table.shape[1] != 4 or table.shape[0] != info["count"]:
            raise ConvzooError(f"{table_path}: table has shape {table.shape}, expected "
                               f"({info['count']}, 4)")
        self.table = table.astype(np.int64, copy=False)  # (N, 4): shard, offset, length, label
        self._check_table()
        self._fds: list[int] | None = None

    @property
    def where(self) -> str:
        return f"{self.location} ({self.name})"

    def _shard_name(self, k: int) -> str:
        return self.remote.name(k) if self.remote is not None else str(self.shard_paths[k])

    def _check_table(self) -> None:
        t = self.table
        if len(t) and (t[:, 0].min() < 0 or t[:, 0].max() >= len(self.shard_paths)
                       or t[:, 1].min() < 0 or t[:, 2].min() < 0):
            raise ConvzooError(f"{self.where}: index table refers to bytes outside its shards")
        for k, p in enumerate(self.shard_paths):
            rows = t[t[:, 0] == k]
            need = int((rows[:, 1] + rows[:, 2]).max()) if len(rows) else 0
            # a local shard must be a regular file: opening a FIFO would block the reader
            have = self.remote.size(k) if self.remote is not None else regular_file(p, "shard")
            if have < need:
                raise ConvzooError(f"{self._shard_name(k)}: shard is truncated ({have} bytes, "
                                   f"index needs {need})")

    def __len__(self) -> int:
        return int(self.table.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> PackedSplit:
        """A view of the records at `indices` (e.g. a carved validation split); no copying."""
        out = copy.copy(self)
        out.table = self.table[np.asarray(indices, dtype=np.int64)]
        out._fds = None  # its own descriptors: closing one view must not close the other's
        return out

    def relabel(self, mapping: torch.Tensor) -> PackedSplit:
        """A view whose label l reads ``mapping[l]`` (classes renumbered to a run's)."""
        out = self.subset(np.arange(len(self)))
        out.table[:, 3] = mapping.numpy()[out.table[:, 3]]
        return out

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels in record order."""
        return torch.from_numpy(self.table[:, 3].copy())

    @property
    def names(self) -> None:
        """A pack keeps no file names (`convzoo.data.dataset.ImageSplit`)."""
        return None

    def _fd(self, shard: int) -> int:
        if self._fds is None:
            self._fds = [os.open(p, os.O_RDONLY) for p in self.shard_paths]
        return self._fds[shard]

    def _readinto(self, shard: int, view: memoryview, offset: int) -> int:
        if self.remote is not None:
            return self.remote.readinto(shard, view, offset)
        return os.preadv(self._fd(shard), [view], offset)

    def read(self, i: int) -> bytes:
        """The payload of record ``i``."""
        shard, offset, length, _ = (int(v) for v in self.table[i])
        data = bytearray(length)
        if self._readinto(shard, memoryview(data), offset) != length:
            raise ConvzooError(f"{self._shard_name(shard)}: short read at record {i}")
        return bytes(data)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        return self.read(i), int(self.table[i, 3])

    def read_many(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Payloads of ``indices`` concatenated into one uint8 tensor, plus (B,) int64 lengths.

        One buffer (not B small ones) is cheap to send between processes.
        """
        rows = self.table[np.asarray(indices, dtype=np.int64)]
        lengths = rows[:, 2]
        out = np.empty(int(lengths.sum()), dtype=np.uint8)
        if self.remote is not None:
            self.remote.fetch(rows)  # every missing block of the batch in one request
        pos = 0
        for shard, offset, length, _ in rows.tolist():
            view = memoryview(out)[pos:pos + length]
            if self._readinto(shard, view, offset) != length:
                raise ConvzooError(f"{self._shard_name(shard)}: short read at offset {offset}")
            pos += length
        return torch.from_numpy(out), torch.from_numpy(lengths.copy())

    def decode_images(self, indices: Sequence[int], geometry: Geometry | None = None,
                      limits: Limits = DEFAULT_LIMITS) -> list[torch.Tensor] | torch.Tensor:
        """Decode records into uint8 (C, H, W) images without stacking them: a list, or one
        (B, C, H, W) tensor for a raw pack (a view of the bytes read). With `geometry` every
        image is brought to it (`Geometry.apply`); without, images keep their stored size and
        get the pack's channels."""
        data, lengths = self.read_many(indices)
        if self.image_format == "raw":
            batch = data.view(len(indices), *self.shape)  # type: ignore[misc]
            return geometry.apply(batch) if geometry is not None else batch
        decoded = images.decode_jpegs(data, lengths, limits, where=self.where)
        if geometry is None:  # stored size; the pack's channels (a gray JPEG in a colour pack)
            c = self.channels
            return [x if x.shape[0] == c else images.convert_channels(x, c) for x in decoded]
        return [geometry.apply(x) for x in decoded]

    def decode(self, indices: Sequence[int], geometry: Geometry | None = None,
               out: torch.Tensor | None = None, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
        """Decode records into one uint8 batch (B, H, W, C) (channels-last, contiguous), into
        ``out`` when given. Without a `geometry` the images must all be one size."""
        return stack_images(self.decode_images(indices, geometry, limits), where=self.where,
                            out=out)

    def images_at(self, indices: Sequence[int] | torch.Tensor | None = None,
                  geometry: Geometry | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
        """uint8 (n, C, H, W) images of the records at `indices` (None: all), decoded and brought
        to `geometry` (`convzoo.data.dataset.ImageSplit`): a channels-last view of `decode`."""
        index = range(len(self)) if indices is None else indices
        return self.decode(list(index), geometry, limits=limits).permute(0, 3, 1, 2)

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = None  # file descriptors do not travel; reopen in the new process
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


@dataclass
class PackedDataset:
    """An opened packed dataset: class names, image format and its splits."""

    root: Path
    name: str
    classes: list[str]
    image_format: str  # "jpeg" | "raw"
    shape: tuple[int, int, int] | None  # (C, H, W) for raw packs
    channels: int
    splits: dict[str, PackedSplit]
    info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> Counter | None:
        """Counter of stored (height, width), when the index records it (or the pack is raw)."""
        if self.shape is not None:
            return Counter({self.shape[1:]: sum(len(s) for s in self.splits.values())})
        if not isinstance(self.info.get("sizes"), list):
            return None
        try:
            return Counter({(int(h), int(w)): int(n) for h, w, n in self.info["sizes"]})
        except (TypeError, ValueError):
            raise ConvzooError(f"{self.root / INDEX_NAME}: malformed 'sizes'") from None

    def geometry_for(self, *, channels: int, image_size: int, resize: str) -> Geometry:
        """What its images become under ``data.channels`` / ``image_size`` / ``resize``
        (`images.resolve_geometry`: 0 = the pack's channels; its most common size, from the
        index, or, for an index written without sizes, from record 0 of train)."""
        sizes: Counter = Counter()
        if not image_size:  # the size matters: read it
            sizes = self.sizes() or self._first_size()
        return images.resolve_geometry(self.channels, sizes, channels=channels,
                                       image_size=image_size, resize=resize,
                                       name=str(self.root))

    def _first_size(self) -> Counter:
        """{(height, width): 1} of record 0 of train (or of the first split), decoded."""
        split = self.splits.get("train") or next(iter(self.splits.values()))
        if len(split) == 0:
            raise ConvzooError(f"{self.root}: split '{split.name}' is empty")
        _, h, w = split.decode_images([0])[0].shape
        return Counter({(h, w): 1})

    def load(self, *, geometry: Geometry | None = None, image_size: int = 0, channels: int = 0,
             resize: str = "crop", limits: Limits = DEFAULT_LIMITS,
             workers: int | None = None) -> Dataset:
        """Everything decoded into memory as a ``Dataset`` of uint8 (N, C, H, W).

        Raw packs are a reshape of the shard bytes; JPEG packs are decoded in parallel
        (``workers`` processes, default: all cores) by the same decoder as image folders, and
        brought to `geometry` (default: that of ``channels``/``image_size``/``resize``, where 0
        means the pack's channels and most common size, as for a folder).
        """
        geo = geometry
        if geo is None and (image_size or self.image_format == "raw" or self.sizes()):
            geo = self.geometry_for(channels=channels, image_size=image_size, resize=resize)
        if self.image_format == "raw":
            assert geo is not None
            splits = {n: Split(geo.apply(_read_raw(s)).contiguous(), s.labels)
                      for n, s in self.splits.items()}
            return Dataset(self.name, self.classes, splits, geo)
        files: dict[str, images.SplitFiles] = {}
        inputs: dict[str, list[str | bytes]] = {}
        for name, split in self.splits.items():
            payloads: list[str | bytes] = []
            for i in range(0, len(split), _READ_CHUNK):
                data, lengths = split.read_many(range(i, min(i + _READ_CHUNK, len(split))))
                payloads += [bytes(p.numpy()) for p in torch.split(data, lengths.tolist())]
            files[name] = images.SplitFiles([str(i) for i in range(len(split))],
                                            split.labels.tolist())
            inputs[name] = payloads
        decoded, skipped, geo, _ = images.decode_splits(
            self.name, files, inputs, lambda k: f"{self.root}: record {k}", limits=limits,
            workers=workers or images.default_workers(), skip_bad=False, geometry=geo,
            channels=channels, resize=resize)
        return Dataset(self.name, self.classes, from_decoded(decoded), geo, skipped)

    def close(self) -> None:
        for split in self.splits.values():
            split.close()


def open_packed(path: Path | str, root: str | Path = "~/.cache/convzoo") -> PackedDataset:
    """Open a packed dataset directory (reads the index and tables, not the images), or a
    pack behind an fsspec URL (``s3://...``: ``data.remote``, its index cached under ``root``,
    ``data.root``)."""
    opened = remote_io.fetch_metadata(str(path), root) if remote_io.is_url(path) else None
    location = str(path)
    path = opened.cache if opened is not None else Path(path).expanduser()
    if not path.is_dir():
        raise ConvzooError(f"{path}: not a packed dataset directory")
    info = read_index(path)
    try:
        fmt = info["image_format"]
        shape = tuple(int(v) for v in info["shape"]) if info.get("shape") else None
        channels = int(info["channels"])
        splits = {str(name): PackedSplit(
            path, str(name), s, fmt, shape, channels,  # type: ignore[arg-type]
            opened.shards(list(s["shards"])) if opened is not None else None, location)
            for name, s in info["splits"].items()}
        classes = [str(c) for c in info["classes"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConvzooError(f"{path / INDEX_NAME}: malformed index ({e!r})") from None
    if fmt not in ("jpeg", "raw") or (fmt == "raw" and (shape is None or len(shape) != 3)) \
            or channels not in (1, 3):
        raise ConvzooError(f"{path / INDEX_NAME}: bad image format '{fmt}' / shape {shape} / "
                           f"channels {channels}")
    for name, split in splits.items():
        if len(split) and (split.table[:, 3].min() < 0
                           or split.table[:, 3].max() >= len(classes)):
            raise ConvzooError(f"{path}: {name} labels outside 0..{len(classes) - 1}")
    return PackedDataset(root=path, name=str(info.get("name", path.name)), classes=classes,
                         image_format=fmt, shape=shape, channels=channels,  # type: ignore[arg-type]
                         splits=splits, info=info)


def _read_raw(split: PackedSplit) -> torch.Tensor:
    """Every record of a raw split as uint8 (N, C, H, W): a reshape of the shard bytes."""
    n = len(split)
    c, h, w = split.shape  # type: ignore[misc]
    record = c * h * w
    out = np.empty((n, record), dtype=np.uint8)
    for k, path in enumerate(split.shard_paths):
        rows = np.nonzero(split.table[:, 0] == k)[0]
        if len(rows) == 0:
            continue
        data = (split.remote.read_all(k) if split.remote is not None
                else np.fromfile(path, dtype=np.uint8))
        offsets = split.table[rows, 1]
        if np.any(split.table[rows, 2] != record):
            raise ConvzooError(f"{path}: raw records are not {c}x{h}x{w} bytes")
        if np.array_equal(offsets, np.arange(len(rows)) * record + offsets[0]):
            out[rows] = data[offsets[0]:offsets[0] + len(rows) * record].reshape(-1, record)
        else:
            for r, off in zip(rows, offsets):
                out[r] = data[off:off + record]
    return torch.from_numpy(out).view(n, c, h, w)


def load_packed(path: Path | str, *, geometry: Geometry | None = None, image_size: int = 0,
                channels: int = 0, resize: str = "crop", limits: Limits = DEFAULT_LIMITS,
                workers: int | None = None, root: str | Path = "~/.cache/convzoo") -> Dataset:
    """Open the pack at `path` (a folder or an fsspec URL; `root` as `open_packed`) and decode
    it whole into memory (`PackedDataset.load`)."""
    pack = open_packed(path, root)
    try:
        return pack.load(geometry=geometry, image_size=image_size, channels=channels,
                         resize=resize, limits=limits, workers=workers)
    finally:
        pack.close()
