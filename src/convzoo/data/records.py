"""Packed record datasets: a few large shard files of encoded images plus an index.

The idea is MXNet's RecordIO: instead of thousands of small files, each split is written as
concatenated payloads in shard files of a few hundred MB, and a table of
``(shard, offset, length, label)`` gives random access to any record with one ``os.pread``.

Layout of a packed dataset directory::

    DEST/index.json             format version, classes, image format, shape, per-split info
    DEST/train-index.npy        int64 (N, 4): shard number, byte offset, byte length, label
    DEST/train-00000.rec ...    concatenated payloads (JPEG files, or raw uint8 C*H*W bytes)
    DEST/test-index.npy, DEST/test-00000.rec, ...

Payloads are either JPEG (``image_format == "jpeg"``; any size, decoded on the fly) or raw
uint8 in (C, H, W) order (``"raw"``; every image the same size, so loading is a reshape).
A pack is written into ``DEST.tmp-*`` and renamed into place at the end, and ``index.json``
is the last file written, so an interrupted pack never looks valid.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convzoo.data.dataset import Dataset, Split
from convzoo.errors import ConvzooError

FORMAT_NAME = "convzoo-packed"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLIT_NAMES = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm", ".pbm"}
RAW_MAX_SIDE = 64  # auto format: same-size images up to this many pixels are stored raw
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_TABLE_COLUMNS = ("shard", "offset", "length", "label")


# ----------------------------------------------------------------------------- report


@dataclass
class PackReport:
    """What ``pack`` did: images per split, files skipped (path, reason), bytes and seconds."""

    dest: Path
    image_format: str
    shape: tuple[int, int, int] | None  # (C, H, W) for raw packs, None for JPEG
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the command line."""
        splits = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        shape = f" {self.shape[0]}x{self.shape[1]}x{self.shape[2]}" if self.shape else ""
        return (f"packed {splits} images ({self.image_format}{shape}) into {self.dest}: "
                f"{self.bytes_written / 2**20:.1f} MB in {self.seconds:.1f} s, "
                f"{len(self.skipped)} skipped")


# ----------------------------------------------------------------------------- sources


def _is_cifar_source(src: Path) -> bool:
    """An official CIFAR python archive (.tar.gz) or its extracted folder."""
    from convzoo.data.cifar import is_cifar_archive, is_cifar_dir

    return is_cifar_dir(src) if src.is_dir() else is_cifar_archive(src)


def _looks_like_tar(path: Path) -> bool:
    """A tar archive by its name, or by its content (a damaged one too, so that extracting it
    gives the error)."""
    if any(path.name.lower().endswith(s) for s in (".tar", ".tar.gz", ".tgz", ".tar.bz2",
                                                    ".tar.xz")):
        return True
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError):
        return False


def _extract_tree(archive: Path, into: Path) -> None:
    """Extract a tar archive of an image-folder tree (``convzoo pack tree.tar.gz``)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):  # refuses links out, absolute paths, devices
                tar.extractall(into, filter="data")
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(into)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ConvzooError(f"{archive}: cannot extract archive ({e})") from None


def _folder_root(src: Path) -> Path:
    """The directory holding ``train/``; accepts one wrapping folder (an extracted tarball)."""
    if not src.is_dir():
        raise ConvzooError(f"{src}: not an image folder, a tar archive of one, or an official "
                           "CIFAR archive")
    if (src / "train").is_dir():
        return src
    children = [p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(children) == 1 and (children[0] / "train").is_dir():
        return children[0]
    raise ConvzooError(f"{src}: not an image-folder tree (no train/<class>/ folders) "
                       "and not a CIFAR archive")


def _scan_folder(src: Path) -> tuple[str, list[str], dict[str, list[tuple[Path, int]]]]:
    """(name, classes, {split: [(file, label)]}); class order = sorted train folder names."""
    root = _folder_root(src)
    classes = sorted(p.name for p in (root / "train").iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConvzooError(f"{root / 'train'}: no class folders")
    label_of = {c: i for i, c in enumerate(classes)}
    items: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLIT_NAMES:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        entries: list[tuple[Path, int]] = []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name.startswith("."):
                continue
            if class_dir.name not in label_of:
                raise ConvzooError(f"{class_dir}: class '{class_dir.name}' is not a folder "
                                   f"of {root / 'train'}")
            files = sorted(f for f in class_dir.iterdir()
                           if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
            entries.extend((f, label_of[class_dir.name]) for f in files)
        if entries:
            items[split] = entries
    if not items.get("train"):
        raise ConvzooError(f"{root / 'train'}: no images (looked for {sorted(IMAGE_SUFFIXES)})")
    return root.name, classes, items


# ----------------------------------------------------------------------------- per-image work
# These run in worker processes: module-level, plain arguments, errors returned as strings.


def _target_size(w: int, h: int, resize: int) -> tuple[int, int]:
    """(w, h) after scaling the shorter side to ``resize`` (0 = unchanged)."""
    if resize <= 0 or min(w, h) == resize:
        return w, h
    if w <= h:
        return resize, max(1, round(h * resize / w))
    return max(1, round(w * resize / h)), resize


def _probe_file(path: str) -> tuple[int, int, str] | str:
    """(width, height, mode) from the header, or an error message."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode
    except Exception as e:  # noqa: BLE001 - any decoder failure means "bad file"
        return f"{type(e).__name__}: {e}"


def _encode_file(task: tuple[str, str, int, int, int]) -> tuple[bytes, int, int] | str:
    """Read one image file -> (payload, width, height) or an error message.

    task = (path, image_format, channels, resize, quality). JPEG files that need no change
    are stored byte for byte (after a full decode to check them); others are re-encoded.
    Raw payloads are uint8 in (C, H, W) order.
    """
    from PIL import Image

    path, fmt, channels, resize, quality = task
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as im:
            size = _target_size(im.size[0], im.size[1], resize)
            passthrough = (fmt == "jpeg" and im.format == "JPEG" and size == im.size
                           and im.mode in ("L", "RGB"))
            if size != im.size and im.format == "JPEG":
                im.draft(im.mode, size)  # DCT-domain downscale: much faster for big photos
            im.load()  # full decode: truncated or corrupt files fail here
            if passthrough:
                with open(path, "rb") as f:
                    return f.read(), size[0], size[1]
            img = im.convert(mode)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    if img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return _encode_pil(img, fmt, quality), size[0], size[1]


def _encode_pil(img: Any, fmt: str, quality: int) -> bytes:
    if fmt == "raw":
        arr = np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, C)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr).tobytes()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _encode_array(task: tuple[np.ndarray, str, int]) -> tuple[bytes, int, int]:
    """A (C, H, W) uint8 array -> (payload, width, height)."""
    from PIL import Image

    arr, fmt, quality = task
    c, h, w = arr.shape
    if fmt == "raw":
        return np.ascontiguousarray(arr).tobytes(), w, h
    img = Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0))
    return _encode_pil(img, fmt, quality), w, h


# ----------------------------------------------------------------------------- writing


class _ShardWriter:
    """Appends payloads to ``<split>-NNNNN.rec`` files, starting a new one past the size limit."""

    def __init__(self, root: Path, split: str, shard_bytes: int) -> None:
        self.root, self.split, self.shard_bytes = root, split, shard_bytes
        self.names: list[str] = []
        self.file: Any = None
        self.pos = 0
        self.rows: list[tuple[int, int, int, int]] = []
        self.bytes = 0

    def write(self, payload: bytes, label: int) -> None:
        if self.file is None or (self.pos > 0 and self.pos + len(payload) > self.shard_bytes):
            self._next_shard()
        self.file.write(payload)
        self.rows.append((len(self.names) - 1, self.pos, len(payload), label))
        self.pos += len(payload)
        self.bytes += len(payload)

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.names):05d}.rec"
        self.names.append(name)
        self.file = open(self.root / name, "wb")  # noqa: SIM115 - closed in close()
        self.pos = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

    def finish(self) -> dict[str, Any]:
        """Close, write the table and return this split's index entry."""
        self.close()
        table = np.asarray(self.rows, dtype=np.int64).reshape(-1, 4)
        table_name = f"{self.split}-index.npy"
        np.save(self.root / table_name, table)
        return {"shards": self.names, "table": table_name, "columns": list(_TABLE_COLUMNS),
                "count": int(table.shape[0]), "bytes": int(self.bytes)}


def _map(fn: Any, tasks: Iterable[Any], pool: Any, total: int, desc: str,
         progress: bool) -> Iterator[Any]:
    """Ordered map, in a process pool when one is given, with a tqdm bar."""
    from tqdm import tqdm

    results = pool.imap(fn, tasks, chunksize=32) if pool is not None else map(fn, tasks)
    yield from tqdm(results, total=total, desc=desc, unit="img",
                    disable=None if progress else True,  # None: no bar when not a terminal
                    leave=False, dynamic_ncols=True)


def _image_shape_error(path: Path | str, got: tuple[int, int], want: tuple[int, int],
                       first: Path | str) -> ConvzooError:
    return ConvzooError(
        f"{path}: image is {got[0]}x{got[1]} but a raw pack needs every image at "
        f"{want[0]}x{want[1]} (the size of {first}); pack with fmt='jpeg' or resize")


def _pack_folder(src: Path, tmp: Path, report: PackReport, *, fmt: str, resize: int,
                 quality: int, skip_bad: bool, shard_bytes: int, pool: Any,
                 progress: bool, name_of: Callable[[Path], str] = str) -> dict[str, Any]:
    """``name_of`` names a file in errors and the skipped list (an archive member's name for
    a folder extracted from an archive)."""
    name, classes, items = _scan_folder(src)

    # Pass 1: headers only (cheap) -> bad files, channel count, sizes for the format choice.
    sizes: dict[Path, tuple[int, int]] = {}
    modes: set[str] = set()
    all_files = [(split, f, label) for split, entries in items.items() for f, label in entries]
    probes = _map(_probe_file, [str(f) for _, f, _ in all_files], pool, len(all_files),
                  "checking", progress)
    kept: dict[str, list[tuple[Path, int]]] = {s: [] for s in items}
    for (split, f, label), probe in zip(all_files, probes):
        if isinstance(probe, str):
            if not skip_bad:
                raise ConvzooError(f"{name_of(f)}: cannot read image ({probe})")
            report.skipped.append((name_of(f), probe))
            continue
        w, h, mode = probe
        sizes[f] = _target_size(w, h, resize)
        modes.add(mode)
        kept[split].append((f, label))
    if not kept.get("train"):
        raise ConvzooError(f"{src}: no readable training images")
    channels = 1 if modes <= _GRAY_MODES else 3
    first = kept["train"][0][0]
    distinct = set(sizes.values())
    if fmt == "auto":
        w, h = sizes[first]
        fmt = "raw" if len(distinct) == 1 and max(w, h) <= RAW_MAX_SIDE else "jpeg"
    shape = None
    if fmt == "raw":
        want = sizes[first]
        for f, got in sizes.items():
            if got != want:
                raise _image_shape_error(f, got, want, first)
        shape = (channels, want[1], want[0])

    # Pass 2: decode, check, (resize, re-encode) and write in order.
    splits: dict[str, Any] = {}
    for split, entries in kept.items():
        if not entries:
            continue
        writer = _ShardWriter(tmp, split, shard_bytes)
        tasks = [(str(f), fmt, channels, resize, quality) for f, _ in entries]
        for (f, label), out in zip(entries, _map(_encode_file, tasks, pool, len(tasks),
                                                 f"packing {split}", progress)):
            if isinstance(out, str):
                if not skip_bad:
                    raise ConvzooError(f"{name_of(f)}: cannot read image ({out})")
                report.skipped.append((name_of(f), out))
                continue
            payload, w, h = out
            if shape is not None and (w, h) != (shape[2], shape[1]):
                raise _image_shape_error(f, (w, h), (shape[2], shape[1]), first)
            writer.write(payload, label)
        splits[split] = writer.finish()
        report.counts[split] = splits[split]["count"]
        report.bytes_written += splits[split]["bytes"]
    report.image_format, report.shape = fmt, shape
    return {"name": name, "classes": classes, "image_format": fmt,
            "shape": list(shape) if shape else None, "channels": channels, "splits": splits}


def _pack_cifar(src: Path, tmp: Path, report: PackReport, *, fmt: str, resize: int,
                quality: int, shard_bytes: int, pool: Any, progress: bool) -> dict[str, Any]:
    from convzoo.data.cifar import load_cifar

    if resize:
        raise ConvzooError(f"{src}: resize is not supported for CIFAR archives (32x32 images)")
    dataset = load_cifar(src)
    fmt = "raw" if fmt == "auto" else fmt
    splits: dict[str, Any] = {}
    shape = tuple(int(s) for s in dataset.image_shape)
    for split_name, split in dataset.splits.items():
        writer = _ShardWriter(tmp, split_name, shard_bytes)
        images = split.images.numpy()  # (N, C, H, W) uint8
        labels = split.labels.tolist()
        if fmt == "raw":
            for img, label in zip(images, labels):
                writer.write(img.tobytes(), label)
        else:
            tasks = ((img, fmt, quality) for img in images)
            outs = _map(_encode_array, tasks, pool, len(images), f"packing {split_name}",
                        progress)
            for (payload, _, _), label in zip(outs, labels):
                writer.write(payload, label)
        splits[split_name] = writer.finish()
        report.counts[split_name] = splits[split_name]["count"]
        report.bytes_written += splits[split_name]["bytes"]
    report.image_format = fmt
    report.shape = shape if fmt == "raw" else None  # type: ignore[assignment]
    return {"name": dataset.name, "classes": list(dataset.classes), "image_format": fmt,
            "shape": list(shape) if fmt == "raw" else None, "channels": shape[0],
            "splits": splits}


def pack(src: Path, dest: Path, *, fmt: str = "auto", resize: int = 0, quality: int = 90,
         workers: int = 0, skip_bad: bool = False, shard_size_mb: int = 256,
         overwrite: bool = False, progress: bool = True) -> PackReport:
    """Pack an image-folder tree (a folder, or a tar archive of one) or a CIFAR archive at
    ``src`` into record files at ``dest``.

    fmt: "jpeg" | "raw" | "auto" (raw for CIFAR archives and for folders whose images are all
    one size of at most 64 px, else jpeg). resize: scale the shorter side to this many pixels
    (0 = keep). quality: JPEG quality for re-encoded images. workers: processes (0 = all
    cores, 1 = this process). skip_bad: skip unreadable images (listed in the report) instead
    of failing. The pack appears at ``dest`` only when complete.
    """
    start = time.perf_counter()
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if fmt not in ("auto", "jpeg", "raw"):
        raise ConvzooError(f"unknown pack format '{fmt}' (known: auto, jpeg, raw)")
    if not 1 <= quality <= 100:
        raise ConvzooError(f"JPEG quality must be 1..100, got {quality}")
    if resize < 0 or shard_size_mb <= 0:
        raise ConvzooError(f"resize must be >= 0 and shard size > 0, got {resize}, "
                           f"{shard_size_mb}")
    if not src.exists():
        raise ConvzooError(f"{src}: no such file or directory")
    if dest.exists() and not overwrite and (dest.is_file() or any(dest.iterdir())):
        raise ConvzooError(f"{dest}: already exists (remove it or pass overwrite)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    shard_bytes = shard_size_mb * 2**20
    report = PackReport(dest=dest, image_format=fmt, shape=None)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))
    pool = None
    try:
        if workers > 1:
            pool = multiprocessing.get_context().Pool(workers)
        common = dict(fmt=fmt, resize=resize, quality=quality, shard_bytes=shard_bytes,
                      pool=pool, progress=progress)
        if _is_cifar_source(src):
            info = _pack_cifar(src, tmp, report, **common)
        elif src.is_file() and _looks_like_tar(src):
            tree = Path(tempfile.mkdtemp(prefix=f"{dest.name}.src-", dir=dest.parent))
            try:
                _extract_tree(src, tree)
                info = _pack_folder(tree, tmp, report, skip_bad=skip_bad,
                                    name_of=lambda f: f"{src}:{f.relative_to(tree)}", **common)
                if info["name"] == tree.name:  # no wrapping folder in the archive
                    info["name"] = src.name.split(".")[0]
            finally:
                shutil.rmtree(tree, ignore_errors=True)
        else:
            info = _pack_folder(src, tmp, report, skip_bad=skip_bad, **common)
        info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **info,
                "source": str(src), "resize": resize, "quality": quality,
                "skipped": len(report.skipped),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # index.json last: its presence marks a complete pack.
        index_tmp = tmp / (INDEX_NAME + ".part")
        index_tmp.write_text(json.dumps(info, indent=1))
        os.replace(index_tmp, tmp / INDEX_NAME)
        _install(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    report.seconds = time.perf_counter() - start
    return report


def _install(tmp: Path, dest: Path) -> None:
    """Move the finished pack into place (replacing an old one only after it is complete)."""
    old = None
    if dest.exists():
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


# ----------------------------------------------------------------------------- reading


def _read_index(path: Path) -> dict[str, Any]:
    index = path / INDEX_NAME
    try:
        info = json.loads(index.read_text())
    except OSError as e:
        raise ConvzooError(f"{index}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
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
        info = _read_index(path)
        for split in info["splits"].values():
            if not all((path / s).is_file() for s in split["shards"]):
                return False
            if not (path / split["table"]).is_file():
                return False
    except (ConvzooError, KeyError, TypeError, AttributeError):
        return False
    return True


class PackedSplit:
    """One split of a packed dataset: random access to ``(payload bytes, label)`` by index.

    Reads use ``os.pread`` on shard files opened on first use; the object can be pickled
    into DataLoader workers (each process reopens the files).
    """

    def __init__(self, root: Path, name: str, info: dict[str, Any], image_format: str,
                 shape: tuple[int, int, int] | None, channels: int) -> None:
        self.root, self.name = root, name
        self.image_format = image_format  # "jpeg" | "raw"
        self.shape = shape  # (C, H, W) for raw packs, else None
        self.channels = channels
        self.shard_paths = [root / s for s in info["shards"]]
        table_path = root / info["table"]
        try:
            table = np.load(table_path)
        except (OSError, ValueError) as e:
            raise ConvzooError(f"{table_path}: cannot read index table ({e})") from None
        if table.ndim != 2 or table.shape[1] != 4 or table.shape[0] != info["count"]:
            raise ConvzooError(f"{table_path}: table has shape {table.shape}, expected "
                               f"({info['count']}, 4)")
        self.table = table.astype(np.int64, copy=False)  # (N, 4): shard, offset, length, label
        self._check_shard_sizes()
        self._fds: list[int] | None = None

    def _check_shard_sizes(self) -> None:
        for k, p in enumerate(self.shard_paths):
            rows = self.table[self.table[:, 0] == k]
            need = int((rows[:, 1] + rows[:, 2]).max()) if len(rows) else 0
            try:
                have = p.stat().st_size
            except OSError:
                raise ConvzooError(f"{p}: shard file missing") from None
            if have < need:
                raise ConvzooError(f"{p}: shard is truncated ({have} bytes, index needs {need})")

    def __len__(self) -> int:
        return int(self.table.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> PackedSplit:
        """A view of the records at `indices` (e.g. a carved validation split); no copying."""
        out = copy.copy(self)
        out.table = self.table[np.asarray(indices, dtype=np.int64)]
        out._fds = None  # its own descriptors: closing one view must not close the other's
        return out

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels in record order."""
        return torch.from_numpy(self.table[:, 3].copy())

    def _fd(self, shard: int) -> int:
        if self._fds is None:
            self._fds = [os.open(p, os.O_RDONLY) for p in self.shard_paths]
        return self._fds[shard]

    def read(self, i: int) -> bytes:
        """The payload of record ``i``."""
        shard, offset, length, _ = self.table[i]
        data = os.pread(self._fd(int(shard)), int(length), int(offset))
        if len(data) != length:
            raise ConvzooError(f"{self.shard_paths[int(shard)]}: short read at record {i}")
        return data

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
        pos = 0
        for shard, offset, length, _ in rows.tolist():
            view = memoryview(out)[pos:pos + length]
            if os.preadv(self._fd(shard), [view], offset) != length:
                raise ConvzooError(f"{self.shard_paths[shard]}: short read at offset {offset}")
            pos += length
        return torch.from_numpy(out), torch.from_numpy(lengths.copy())

    def decode_images(self, indices: Sequence[int],
                      size: int | None = None) -> list[torch.Tensor] | torch.Tensor:
        """Decode records into uint8 (C, H, W) images without stacking them: a list, or one
        (B, C, H, W) tensor for a raw pack (a view of the bytes read). ``size`` resizes the
        shorter side and centre-crops to size x size."""
        data, lengths = self.read_many(indices)
        if self.image_format == "raw":
            batch = data.view(len(indices), *self.shape)  # type: ignore[misc]
            if size is not None and tuple(batch.shape[-2:]) != (size, size):
                return [fit_size(x, size) for x in batch]
            return batch
        images = decode_jpegs(list(torch.split(data, lengths.tolist())), self.channels,
                              where=f"{self.root} ({self.name})")
        return [fit_size(x, size) for x in images] if size is not None else images

    def decode(self, indices: Sequence[int], size: int | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode records into one uint8 batch (B, H, W, C) (channels-last, contiguous), into
        ``out`` when given. ``size`` resizes the shorter side and centre-crops to size x size, so
        images of different sizes can be stacked; without it they must all be one size.
        """
        return stack_images(self.decode_images(indices, size), where=f"{self.root} ({self.name})",
                            out=out)

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


def decode_jpegs(payloads: list[torch.Tensor], channels: int, *, device: str = "cpu",
                 where: str = "") -> list[torch.Tensor]:
    """Decode 1-D uint8 JPEG tensors -> list of uint8 (C, H, W) on ``device`` (cpu or cuda)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        with warnings.catch_warnings():
            # torchvision >= 0.29 points to TorchCodec, which convzoo does not depend on
            warnings.simplefilter("ignore", DeprecationWarning)
            return list(decode_jpeg(payloads, mode=mode, device=device))
    except RuntimeError as e:
        raise ConvzooError(f"{where}: cannot decode a JPEG record ({e})") from None


def fit_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (C, H, W) -> (C, size, size): shorter side to ``size``, then centre crop."""
    import torchvision.transforms.v2.functional as TF

    if image.shape[-2:] == (size, size):
        return image
    if min(image.shape[-2:]) != size:
        image = TF.resize(image, [size], antialias=True)
    return TF.center_crop(image, [size, size])


def check_same_size(images: Sequence[torch.Tensor], where: str = "") -> tuple[int, ...]:
    """The one (C, H, W) shape of ``images``; an error naming two sizes if they differ."""
    if isinstance(images, torch.Tensor):  # a (B, C, H, W) batch: one size by construction
        return tuple(images.shape[1:])
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ConvzooError(f"{where}: images have different sizes {sorted(shapes)[:2]}...; "
                           "give a decode size (or pack with resize) to stack them")
    return shapes.pop() if shapes else ()


def stack_images(images: Sequence[torch.Tensor], size: int | None = None, *, where: str = "",
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (C, H, W) images -> one (B, H, W, C) contiguous batch (resized when ``size``)."""
    if size is not None:
        images = [fit_size(x, size) for x in images]
    check_same_size(images, where)
    # decode_jpeg returns (C, H, W) views of (H, W, C) memory: permuting back is free.
    hwc = [x.permute(1, 2, 0) for x in images]
    return torch.stack(hwc) if out is None else torch.stack(hwc, out=out)


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

    def close(self) -> None:
        for split in self.splits.values():
            split.close()


def open_packed(path: Path | str) -> PackedDataset:
    """Open a packed dataset directory (reads the index and tables, not the images)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ConvzooError(f"{path}: not a packed dataset directory")
    info = _read_index(path)
    try:
        fmt = info["image_format"]
        shape = tuple(info["shape"]) if info.get("shape") else None
        channels = int(info["channels"])
        splits = {name: PackedSplit(path, name, s, fmt, shape, channels)  # type: ignore[arg-type]
                  for name, s in info["splits"].items()}
        classes = list(info["classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConvzooError(f"{path / INDEX_NAME}: malformed index ({e!r})") from None
    if fmt not in ("jpeg", "raw") or (fmt == "raw" and shape is None):
        raise ConvzooError(f"{path / INDEX_NAME}: bad image format '{fmt}' / shape {shape}")
    return PackedDataset(root=path, name=info.get("name", path.name), classes=classes,
                         image_format=fmt, shape=shape, channels=channels,  # type: ignore[arg-type]
                         splits=splits, info=info)


def _load_split(split: PackedSplit, size: int | None, workers: int | None) -> Split:
    n = len(split)
    labels = split.labels
    if split.image_format == "raw" and size is None:
        c, h, w = split.shape  # type: ignore[misc]
        record = c * h * w
        images = np.empty((n, record), dtype=np.uint8)
        for k, path in enumerate(split.shard_paths):
            rows = np.nonzero(split.table[:, 0] == k)[0]
            if len(rows) == 0:
                continue
            data = np.fromfile(path, dtype=np.uint8)
            offsets = split.table[rows, 1]
            contiguous = np.array_equal(offsets, np.arange(len(rows)) * record + offsets[0])
            if contiguous:  # the usual case: records back to back, a reshape
                images[rows] = data[offsets[0]:offsets[0] + len(rows) * record].reshape(-1, record)
            else:
                for r, off in zip(rows, offsets):
                    images[r] = data[off:off + record]
        return Split(torch.from_numpy(images).view(n, c, h, w), labels)
    from convzoo.data.streaming import decode_all

    return Split(decode_all(split, size=size, workers=workers).permute(0, 3, 1, 2).contiguous(),
                 labels)


def load_packed(path: Path | str, *, size: int | None = None,
                workers: int | None = None) -> Dataset:
    """Decode a whole packed dataset into memory as a ``Dataset`` of uint8 (N, C, H, W).

    Raw packs are a reshape of the shard bytes; JPEG packs are decoded in parallel
    (``workers`` processes, default: all cores). ``size`` resizes the shorter side and
    centre-crops, needed when the JPEG images are not all one size.
    """
    packed = open_packed(path)
    try:
        splits = {name: _load_split(s, size, workers) for name, s in packed.splits.items()}
    finally:
        packed.close()
    return Dataset(name=packed.name, classes=packed.classes, splits=splits)
