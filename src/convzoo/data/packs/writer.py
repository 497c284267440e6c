"""``convzoo pack``: write an image folder (or a tar archive of one), a CIFAR archive, a label
file, a Hugging Face dataset or WebDataset shards (`convzoo.data.sources.labelled`) as a
packed record dataset (the format and its reader are `convzoo.data.packs.reader`).

Images are read by the one scanner and decoded by the one decoder of `convzoo.data.images`
(so a 16-bit PNG packs as it trains), optionally resized (shorter side, bilinear with
antialiasing) and stored as JPEG or raw uint8. A JPEG file that needs no change is stored byte
for byte after a full decode has checked it. A pack is written into ``DEST.tmp-<pid>-*`` and
renamed into place at the end, ``index.json`` last; temporary folders left by a pack that was
killed are removed by the next pack into the same parent folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convzoo.data import images
from convzoo.data.images import DEFAULT_LIMITS, DecodeError, Limits
from convzoo.data.packs.reader import FORMAT_NAME, FORMAT_VERSION, INDEX_NAME, TABLE_COLUMNS
from convzoo.data.progress import progress
from convzoo.data.sources.cifar import is_cifar_archive, is_cifar_dir, load_cifar
from convzoo.data.sources.labelled import open_records
from convzoo.errors import ConvzooError
from convzoo.outputs import kind_of

RAW_MAX_SIDE = 64  # auto format: same-size images up to this many pixels are stored raw


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


def extract_tree(archive: Path, into: Path, limits: Limits) -> None:
    """Extract a tar archive of an image-folder tree with ``tarfile.data_filter`` (no links out,
    absolute paths or devices), refusing members over the size limit. A Python without the
    filter (< 3.10.12 / 3.11.4) is refused: a plain ``extractall`` trusts the archive."""
    if not hasattr(tarfile, "data_filter"):
        raise ConvzooError(f"{archive}: this Python's tarfile has no data_filter, so the archive "
                           "cannot be extracted safely; extract it yourself, or use Python "
                           ">= 3.10.12 / 3.11.4")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if m.isfile():
                    limits.check_member(archive, m.name, m.size)
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ConvzooError(f"{archive}: cannot extract archive ({e})") from None


# What a pack is written from: {split: [(a file's path or its bytes, label, the name shown in
# errors and the skipped list)]}, in order.
Items = dict[str, list[tuple[str | bytes, int, str]]]


def _scan(src: Path, name_of: Callable[[Path], str] = str) -> tuple[str, list[str], Items]:
    """(name, classes, items) of a folder by the one scanner of `convzoo.data.images`."""
    if not src.is_dir():
        raise ConvzooError(f"{src}: not an image folder, a tar archive of one, or an official "
                           "CIFAR archive")
    root, tree, _ = images.scan_folder(src)
    if "train" not in tree or not tree["train"]:
        raise ConvzooError(f"{src}: not an image-folder tree (no train/<class>/ folders) "
                           "and not a CIFAR archive")
    classes, files = images.index_tree(tree, lambda rel: str(root / rel))
    items = {s: [(k, lab, name_of(Path(k))) for k, lab in zip(f.keys, f.labels)]
             for s, f in files.items()}
    return root.name, classes, items


# ----------------------------------------------------------------------------- per-image work
# These run in worker processes: module-level, plain arguments, errors returned as strings.


def _target_hw(h: int, w: int, resize: int) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to ``resize`` (0 = unchanged)."""
    if resize <= 0 or min(h, w) == resize:
        return h, w
    return images.covering_size((h, w), (resize, resize))


def _probe_file(task: tuple[str | bytes, Limits]) -> tuple[int, int, bool] | str:
    """(height, width, gray) from the header of a file (path) or of its bytes, or an error
    message."""
    path, limits = task
    try:
        with images.pil_open(path, limits) as im:
            gray = im.mode in images.GRAY_PIL_MODES
            return im.size[1], im.size[0], gray
    except Exception as e:  # noqa: BLE001 - any decoder failure means "bad file"
        return f"{type(e).__name__}: {e}"


def _encode(image: torch.Tensor, fmt: str, quality: int) -> bytes:
    """uint8 (C, H, W) -> a raw (C, H, W) payload or a JPEG file."""
    if fmt == "raw":
        return image.contiguous().numpy().tobytes()
    from torchvision.io import encode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision >= 0.29: TorchCodec
        return bytes(encode_jpeg(image.contiguous(), quality=quality).numpy())


def _encode_file(task: tuple[str | bytes, str, int, int, int, Limits]
                 ) -> tuple[bytes, int, int] | str:
    """Read one image file -> (payload, height, width) or an error message.

    task = (path or the file's bytes, image_format, channels, resize, quality, limits). JPEG files that need no
    change are stored byte for byte (after a full decode to check them); others are decoded,
    converted to `channels`, resized and re-encoded.
    """
    path, fmt, channels, resize, quality, limits = task
    try:
        data = images.read_file(path) if isinstance(path, str) else path
        image = images.decode(data, limits)  # full decode: truncated or corrupt files fail here
    except (OSError, DecodeError) as e:
        return f"{type(e).__name__}: {e}"
    _, h, w = image.shape
    size = _target_hw(h, w, resize)
    if fmt == "jpeg" and data[:2] == b"\xff\xd8" and size == (h, w):
        return data, h, w  # readers convert a gray JPEG's channels as they decode it
    image = images.convert_channels(image, channels)
    if size != (h, w):
        image = images.fit(image, size)
    return _encode(image, fmt, quality), size[0], size[1]


def _encode_array(task: tuple[np.ndarray, str, int]) -> tuple[bytes, int, int]:
    """A (C, H, W) uint8 array -> (payload, height, width)."""
    arr, fmt, quality = task
    return _encode(torch.from_numpy(arr), fmt, quality), arr.shape[1], arr.shape[2]


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
        self.sizes: Counter = Counter()

    def write(self, payload: bytes, label: int, hw: tuple[int, int]) -> None:
        if self.file is None or (self.pos > 0 and self.pos + len(payload) > self.shard_bytes):
            self._next_shard()
        self.file.write(payload)
        self.rows.append((len(self.names) - 1, self.pos, len(payload), label))
        self.pos += len(payload)
        self.bytes += len(payload)
        self.sizes[hw] += 1

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
        return {"shards": self.names, "table": table_name, "columns": list(TABLE_COLUMNS),
                "count": int(table.shape[0]), "bytes": int(self.bytes)}


def _map(fn: Any, tasks: Iterable[Any], pool: Any, total: int, desc: str,
         show: bool) -> Iterator[Any]:
    """Ordered map, in a process pool when one is given, with progress."""
    results = pool.imap(fn, tasks, chunksize=32) if pool is not None else map(fn, tasks)
    with progress(total, desc, unit="img", enabled=show) as bar:
        for r in results:
            bar.update(1)
            yield r


def _image_shape_error(path: str, got: tuple[int, int], want: tuple[int, int],
                       first: str) -> ConvzooError:
    return ConvzooError(
        f"{path}: image is {got[1]}x{got[0]} but a raw pack needs every image at "
        f"{want[1]}x{want[0]} (the size of {first}); pack with fmt='jpeg' or resize")


def _sizes_entry(writers: list[_ShardWriter]) -> list[list[int]]:
    total = sum((w.sizes for w in writers), Counter())
    return [[h, w, n] for (h, w), n in total.most_common()]


def _pack_items(src: Path | str, name: str, classes: list[str], items: Items, tmp: Path,
                report: PackReport, *, fmt: str, resize: int, quality: int, skip_bad: bool,
                shard_bytes: int, pool: Any, show: bool, limits: Limits) -> dict[str, Any]:
    """Pack `items` (files of a folder, or the records of a label file, a Hugging Face
    dataset or WebDataset shards)."""
    # Pass 1: headers only (cheap) -> bad files, channel count, sizes for the format choice.
    sizes: dict[str, tuple[int, int]] = {}
    grays: set[bool] = set()
    all_files = [(split, f, label, shown) for split, entries in items.items()
                 for f, label, shown in entries]
    probes = _map(_probe_file, [(f, limits) for _, f, _, _ in all_files], pool,
                  len(all_files), "checking", show)
    kept: dict[str, list[tuple[str | bytes, int, str]]] = {s: [] for s in items}
    for (split, f, label, shown), probe in zip(all_files, probes):
        if isinstance(probe, str):
            if not skip_bad:
                raise ConvzooError(f"{shown}: cannot read image ({probe})")
            report.skipped.append((shown, probe))
            continue
        h, w, gray = probe
        sizes[shown] = _target_hw(h, w, resize)
        grays.add(gray)
        kept[split].append((f, label, shown))
    if not kept.get("train"):
        raise ConvzooError(f"{src}: no readable training images")
    channels = 1 if grays == {True} else 3
    first = kept["train"][0][2]
    if fmt == "auto":
        h, w = sizes[first]
        fmt = "raw" if len(set(sizes.values())) == 1 and max(h, w) <= RAW_MAX_SIDE else "jpeg"
    shape = None
    if fmt == "raw":
        want = sizes[first]
        for f, got in sizes.items():
            if got != want:
                raise _image_shape_error(f, got, want, first)
        shape = (channels, *want)

    # Pass 2: decode, check, (resize, re-encode) and write in order.
    splits: dict[str, Any] = {}
    writers = []
    for split, entries in kept.items():
        if not entries:
            continue
        writer = _ShardWriter(tmp, split, shard_bytes)
        writers.append(writer)
        tasks = [(f, fmt, channels, resize, quality, limits) for f, _, _ in entries]
        for (_, label, shown), out in zip(entries, _map(_encode_file, tasks, pool, len(tasks),
                                                        f"packing {split}", show)):
            if isinstance(out, str):
                if not skip_bad:
                    raise ConvzooError(f"{shown}: cannot read image ({out})")
                report.skipped.append((shown, out))
                continue
            payload, h, w = out
            if shape is not None and (h, w) != shape[1:]:
                raise _image_shape_error(shown, (h, w), shape[1:], first)
            writer.write(payload, label, (h, w))
        splits[split] = writer.finish()
        report.counts[split] = splits[split]["count"]
        report.bytes_written += splits[split]["bytes"]
    report.image_format, report.shape = fmt, shape
    return {"name": name, "classes": classes, "image_format": fmt,
            "shape": list(shape) if shape else None, "channels": channels,
            "sizes": _sizes_entry(writers), "splits": splits}


def _pack_cifar(src: Path, tmp: Path, report: PackReport, *, fmt: str, resize: int,
                quality: int, shard_bytes: int, pool: Any, show: bool,
                limits: Limits) -> dict[str, Any]:
    if resize:
        raise ConvzooError(f"{src}: resize is not supported for CIFAR archives (32x32 images)")
    dataset = load_cifar(src, limits=limits)
    fmt = "raw" if fmt == "auto" else fmt
    splits: dict[str, Any] = {}
    writers = []
    shape = tuple(int(s) for s in dataset.image_shape)
    for split_name, split in dataset.splits.items():
        writer = _ShardWriter(tmp, split_name, shard_bytes)
        writers.append(writer)
        arrays = split.images.numpy()  # (N, C, H, W) uint8
        labels = split.labels.tolist()
        if fmt == "raw":
            for img, label in zip(arrays, labels):
                writer.write(img.tobytes(), label, shape[1:])
        else:
            tasks = ((img, fmt, quality) for img in arrays)
            outs = _map(_encode_array, tasks, pool, len(arrays), f"packing {split_name}", show)
            for (payload, h, w), label in zip(outs, labels):
                writer.write(payload, label, (h, w))
        splits[split_name] = writer.finish()
        report.counts[split_name] = splits[split_name]["count"]
        report.bytes_written += splits[split_name]["bytes"]
    report.image_format = fmt
    report.shape = shape if fmt == "raw" else None  # type: ignore[assignment]
    return {"name": dataset.name, "classes": list(dataset.classes), "image_format": fmt,
            "shape": list(shape) if fmt == "raw" else None, "channels": shape[0],
            "sizes": _sizes_entry(writers), "splits": splits}


# The temp folders a pack makes beside DEST: DEST.tmp-<pid>-<random> (the pack being written),
# DEST.src-<pid>-<random> (an archive extracted) and DEST.old-<pid>-<random> (the pack being
# replaced). Each one that is not an old pack holds TEMP_MARK from its creation, so that a later
# pack removes only folders it can prove are a pack's own temps, never a user's file or folder
# that happens to match the name (data.old-2019-backup).
_TEMP = re.compile(r"\.(tmp|src|old)-(\d+)-")
TEMP_MARK = ".convzoo-pack-temp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def holds_pack_index(path: Path) -> bool:
    """A folder (not a link) whose index.json names convzoo's pack format: a pack, complete or
    not, that ``pack --overwrite`` may replace."""
    index = path / INDEX_NAME
    if path.is_symlink() or not path.is_dir() or index.is_symlink() or not index.is_file():
        return False
    try:
        info = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT_NAME


def _ours(path: Path) -> bool:
    """A pack's own temp folder: marked at creation, or a renamed old pack."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / TEMP_MARK).is_file() or holds_pack_index(path)


def _make_temp(dest: Path, kind: str) -> Path:
    """A new marked temp folder beside ``dest`` (module comment above)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.{kind}-{os.getpid()}-", dir=dest.parent))
        (tmp / TEMP_MARK).write_text("a temporary folder of convzoo pack; removed when done\n")
    except OSError as e:
        raise ConvzooError(f"cannot write in {dest.parent}: {e.strerror}") from None
    return tmp


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temp folders of packs into ``dest`` whose process is gone (only folders that
    are provably a pack's own: see ``_ours``)."""
    removed = []
    for p in dest.parent.glob(f"{dest.name}.*-*"):
        m = _TEMP.match(p.name[len(dest.name):])
        if m and not _alive(int(m.group(2))) and _ours(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _check_destination(src: Path, dest: Path, overwrite: bool) -> None:
    """``dest`` may receive the pack: not the source, inside it or around it; not a link, a
    file or a node; new, empty, or (with ``overwrite``) a convzoo pack."""
    a, b = src.resolve(), dest.resolve()
    if a == b or a in b.parents or b in a.parents:
        where = "is" if a == b else "is inside" if a in b.parents else "contains"
        raise ConvzooError(f"{dest}: the destination {where} the source {src}; pack into a "
                           "folder outside it")
    kind = kind_of(dest)
    if kind is None:
        return
    if kind != "directory":
        raise ConvzooError(f"{dest}: is {'a file' if kind == 'file' else kind}; convzoo pack "
                           "writes a new folder or replaces a convzoo pack, nothing else")
    if not any(dest.iterdir()):
        return
    if not overwrite:
        raise ConvzooError(f"{dest}: already exists (remove it, or pass --overwrite to replace "
                           "it once the new pack is complete)")
    if not holds_pack_index(dest):
        raise ConvzooError(f"{dest}: is not a convzoo pack (no {INDEX_NAME} of one), so "
                           "--overwrite will not replace it; name a new folder")


def pack(src: Path | str, dest: Path, *, fmt: str = "auto", resize: int = 0, quality: int = 90,
         workers: int = 0, skip_bad: bool = False, shard_size_mb: int = 256,
         overwrite: bool = False, progress: bool = True,
         limits: Limits = DEFAULT_LIMITS) -> PackReport:
    """Pack an image-folder tree (a folder, or a tar archive of one), a CIFAR archive, a
    label file (CSV/TSV), a Hugging Face dataset (``save_to_disk`` folder, parquet/arrow
    files, ``hf://datasets/OWNER/NAME``) or WebDataset shards (``shards-{000..009}.tar``,
    local or an fsspec URL) at ``src`` into record files at ``dest``.

    fmt: "jpeg" | "raw" | "auto" (raw for CIFAR archives and for folders whose images are all
    one size of at most 64 px, else jpeg). resize: scale the shorter side to this many pixels
    (0 = keep). quality: JPEG quality for re-encoded images. workers: processes (0 = all
    cores, 1 = this process). skip_bad: skip unreadable images (listed in the report) instead
    of failing. limits: pixel and archive-member bounds. The pack appears at ``dest`` only
    when complete.
    """
    start = time.perf_counter()
    src_text = str(src)
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if fmt not in ("auto", "jpeg", "raw"):
        raise ConvzooError(f"unknown pack format '{fmt}' (known: auto, jpeg, raw)")
    if not 1 <= quality <= 100:
        raise ConvzooError(f"JPEG quality must be 1..100, got {quality}")
    if resize < 0 or shard_size_mb <= 0:
        raise ConvzooError(f"resize must be >= 0 and shard size > 0, got {resize}, "
                           f"{shard_size_mb}")
    # a label file, a Hugging Face dataset or WebDataset shards (brace patterns and URLs are
    # not paths): read as training reads them
    records = open_records(src_text, limits)
    if records is None and not src.exists():
        raise ConvzooError(f"{src}: no such file or directory")
    _check_destination(src, dest, overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvzooError(f"cannot create {dest.parent}: {e.strerror}") from None
    remove_stale_temps(dest)
    workers = workers or os.cpu_count() or 1
    shard_bytes = shard_size_mb * 2**20
    report = PackReport(dest=dest, image_format=fmt, shape=None)
    tmp = _make_temp(dest, "tmp")
    pool = None
    try:
        if workers > 1:
            pool = multiprocessing.get_context().Pool(workers)
        common = dict(fmt=fmt, resize=resize, quality=quality, shard_bytes=shard_bytes,
                      pool=pool, show=progress, limits=limits)
        if records is not None:
            items = {s: records.items(s) for s in records.files}
            info = _pack_items(src, records.name, records.classes, items, tmp, report,
                               skip_bad=skip_bad, **common)
        elif _is_cifar_source(src):
            info = _pack_cifar(src, tmp, report, **common)
        elif src.is_file() and _looks_like_tar(src):
            tree = _make_temp(dest, "src")
            try:
                extract_tree(src, tree, limits)
                name, classes, items = _scan(tree, lambda f: f"{src}:{f.relative_to(tree)}")
                if name == tree.name:  # no wrapping folder in the archive
                    name = src.name.split(".")[0]
                info = _pack_items(src, name, classes, items, tmp, report, skip_bad=skip_bad,
                                   **common)
            finally:
                shutil.rmtree(tree, ignore_errors=True)
        else:
            info = _pack_items(src, *_scan(src), tmp, report, skip_bad=skip_bad, **common)
        info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **info,
                "source": src_text, "resize": resize, "quality": quality,
                "skipped": len(report.skipped),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # index.json last: its presence marks a complete pack.
        index_tmp = tmp / (INDEX_NAME + ".part")
        index_tmp.write_text(json.dumps(info, indent=1))
        os.replace(index_tmp, tmp / INDEX_NAME)
        (tmp / TEMP_MARK).unlink()
        _install(tmp, dest, overwrite)
    except OSError as e:  # a full or read-only disk while writing the pack
        shutil.rmtree(tmp, ignore_errors=True)
        where = e.filename or tmp
        raise ConvzooError(f"cannot write the pack {dest} ({where}): {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    report.seconds = time.perf_counter() - start
    return report


def _install(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished pack into place. A destination that appeared while the pack was being
    written is never replaced (two packs racing into one new name: the second one fails); with
    ``overwrite`` only a convzoo pack is, and only once the new one is complete."""
    old = None
    if overwrite and holds_pack_index(dest):
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(dest, old)
    try:
        # rename(2) onto an existing non-empty folder fails (ENOTEMPTY/EEXIST), onto a file
        # ENOTDIR: the race check and the move are one system call. An empty folder that
        # appeared meanwhile is replaced (nothing is lost).
        os.rename(tmp, dest)
    except OSError as e:
        if old is not None:
            os.rename(old, dest)  # put the old pack back
        raise ConvzooError(f"{dest}: appeared while the pack was being written "
                           f"({e.strerror}); the new pack was not installed") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
