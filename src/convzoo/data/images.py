"""Images: one suffix set, one scanner (folder | tar), one bounded decoder, one geometry rule.

Everything that turns image files into uint8 (C, H, W) tensors goes through this module, for
every consumer alike: the in-memory loader, the packed records (`convzoo pack` and the
streaming loader), `convzoo eval` and `convzoo predict`.

- **Suffixes**: torchvision's ``IMG_EXTENSIONS`` plus the two more that Pillow decodes
  (.gif, .pbm).
- **Layout**: ``root/{train,val,test}/<class>/*`` (one wrapping folder allowed, as left by
  extracting a tarball), or a split-less ``root/<class>/*`` (one split, "train"). The same
  in a tar archive, read member by member without extracting. Classes are the sorted class
  folders of train/ (or, for a tree without train/, of all its splits).
- **Decode** (`decode`): torchvision's codecs (libjpeg-turbo, libpng), Pillow for the rest;
  1 or 3 channels (gray kept gray, alpha dropped, palette and CMYK converted); 16-bit images
  scaled to 8 bits by x / 257, rounded. Bounded: the width and height are read from the header
  before anything is decoded, and an image over ``Limits.max_pixels`` is refused (Pillow's
  decompression-bomb guard does the same for the formats Pillow reads; torchvision's decoders
  have none). Archive members over ``Limits.max_member_bytes`` are refused before they are read.
- **Geometry** (`Geometry`): the channels and size every image is brought to, and the rule:
  ``crop`` (default; torchvision/timm) scales the image so that it covers H x W and takes the
  centre; ``squash`` resizes to H x W, ignoring the aspect ratio. Bilinear with antialiasing
  on uint8 (identical batched or image by image). A run's geometry is stored in its
  checkpoint, so eval, predict and export feed images exactly as training did.
"""

from __future__ import annotations

import glob
import io
import logging
import multiprocessing
import os
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from convzoo.data.progress import progress
from convzoo.errors import ConvzooError
from convzoo.integrity import read_regular, regular_file

log = logging.getLogger("convzoo")
IMAGE_EXTENSIONS = frozenset(IMG_EXTENSIONS) | {".gif", ".pbm"}
SPLITS = ("train", "val", "test")
RESIZE_RULES = ("crop", "squash")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS: ~ 9,459 x 9,459 px
DEFAULT_MAX_MEMBER_MB = 1024
LAYOUT = ("expected <root>/train/<class>/* with test/ and/or val/ beside it, or "
          "<root>/<class>/* (one split)")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAY_PIL_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_SIXTEEN_BIT_PIL_MODES = frozenset({"I", "I;16", "I;16B", "I;16L"})
_MIN_FILES_PER_WORKER = 512  # below this, a process pool costs more than it saves


def is_image(name: str) -> bool:
    """Whether a file name has one of the image suffixes."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input: pixels per decoded image and bytes per archive member
    (0 = no limit)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = DEFAULT_MAX_MEMBER_MB * 2**20

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        """From a ``DataConfig`` (``max_image_pixels``, ``max_member_mb``)."""
        return cls(int(cfg.max_image_pixels), int(cfg.max_member_mb) * 2**20)

    def check_pixels(self, width: int, height: int) -> None:
        """DecodeError for an image over ``max_pixels``."""
        if self.max_pixels and width * height > self.max_pixels:
            raise DecodeError(f"image of {width}x{height} = {width * height:,} pixels exceeds "
                              f"data.max_image_pixels={self.max_pixels:,} (a decompression "
                              "bomb?); raise the limit if the image is genuine")

    def check_member(self, archive: Path | str, name: str, size: int) -> None:
        """ConvzooError for an archive member over ``max_member_bytes``."""
        if self.max_member_bytes and size > self.max_member_bytes:
            raise ConvzooError(f"{archive}:{name}: archive member of {size:,} bytes exceeds "
                               f"data.max_member_mb={self.max_member_bytes // 2**20}; raise "
                               "the limit if the file is genuine")


DEFAULT_LIMITS = Limits()


class DecodeError(ValueError):
    """One image could not be decoded (the caller names the file)."""


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """What every image becomes: ``channels`` (1 or 3) x ``height`` x ``width``, by ``resize``
    (crop: scale to cover, centre crop; squash: resize to the size)."""

    channels: int
    height: int
    width: int
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ConvzooError(f"unknown resize rule '{self.resize}' (data.resize: "
                               f"{' | '.join(RESIZE_RULES)})")
        if self.channels not in (1, 3) or self.height < 1 or self.width < 1:
            raise ConvzooError(f"bad image geometry {self.channels}x{self.height}x{self.width} "
                               "(channels 1 or 3, positive size)")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def state(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "resize": self.resize}

    @classmethod
    def from_state(cls, d: Any) -> Geometry:
        try:
            return cls(int(d["channels"]), int(d["height"]), int(d["width"]), str(d["resize"]))
        except (KeyError, TypeError, ValueError):
            raise ConvzooError(f"checkpoint geometry is malformed: {d!r}") from None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) or (N, C, H, W) of one size -> this geometry."""
        return fit(convert_channels(images, self.channels), (self.height, self.width),
                   self.resize)


def covering_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an image of size `hw` scaled (aspect kept) to just cover `target`."""
    (H, W), (h, w) = hw, target
    if H * w >= W * h:  # relatively taller than the target: the width binds
        return max(h, round(H * w / W)), w
    return h, max(w, round(W * h / H))


def fit(images: torch.Tensor, size: tuple[int, int], resize: str = "crop") -> torch.Tensor:
    """Resize uint8 (..., C, H, W) to `size` (h, w) by the rule (see the module docstring)."""
    hw = tuple(images.shape[-2:])
    if hw == tuple(size):
        return images
    if resize == "squash":
        return TF.resize(images, list(size), antialias=True)
    scaled = covering_size(hw, size)  # type: ignore[arg-type]
    if scaled != hw:
        images = TF.resize(images, list(scaled), antialias=True)
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return images[..., top:top + size[0], left:left + size[1]]


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (..., C, H, W) to `channels` (1 or 3; 0 = unchanged): gray replicated, RGB -> luma
    (ITU-R 601, as torchvision)."""
    c = images.shape[-3]
    if channels in (0, c):
        return images
    if channels == 3 and c == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if channels == 1 and c == 3:
        return TF.rgb_to_grayscale(images, num_output_channels=1)
    raise ConvzooError(f"cannot convert {c}-channel images to {channels} channels (use 0, 1 or 3)")


# ----------------------------------------------------------------------------- decoding


def image_dims(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats.

    Written by hand because torchvision's decoders have no size guard and Pillow's header
    parse costs ~50 us per CIFAR JPEG (this ~3 us, against ~45 us to decode it).
    """
    if data[:8] == _PNG_SIGNATURE and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _fix_channels(t: torch.Tensor) -> torch.Tensor:
    """(C, H, W) with C in 1..4 -> 1 (gray) or 3 (RGB) channels, alpha dropped."""
    if t.ndim == 4:  # animated GIF: (frames, C, H, W), keep the first frame
        t = t[0]
    if t.shape[0] == 2:
        return t[:1]
    if t.shape[0] == 4:
        return t[:3]
    return t


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """16-bit samples (0..65535) -> 8 bits by x / 257, rounded (65535 -> 255 exactly)."""
    if t.dtype == torch.uint8:
        return t
    return (t.to(torch.float32) / 257.0).round().clamp(0, 255).to(torch.uint8)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """Encoded image bytes -> uint8 (C, H, W), C = 1 (gray) or 3 (colour). Raises DecodeError.

    Gray images stay gray (bring them to 3 channels with `convert_channels` / `Geometry`).
    """
    dims = image_dims(data)
    if dims is not None:
        limits.check_pixels(*dims)
        mode = ImageReadMode.UNCHANGED
        if data[:8] == _PNG_SIGNATURE and data[25:26] == b"\x03":
            mode = ImageReadMode.RGB  # palette PNG: UNCHANGED would return palette indices
        try:
            with warnings.catch_warnings():
                # torchvision >= 0.29 warns on every decode that TorchCodec will replace it; its
                # libjpeg-turbo decoder is still ~2.5x cheaper per CIFAR JPEG than Pillow here.
                warnings.simplefilter("ignore", DeprecationWarning)
                buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                t = decode_image(buf, mode=mode)
                if t.shape[-3] == 4:
                    t = decode_image(buf, mode=ImageReadMode.RGB)  # RGBA or CMYK: codec converts
            return _to_uint8(_fix_channels(t))
        except RuntimeError:
            pass  # a variant torchvision does not decode (or a corrupt file): let Pillow say
    return _decode_pil(data, limits)


def pil_open(source: str | Path | bytes, limits: Limits) -> Image.Image:
    """Pillow's lazy open (header only) with our pixel bound instead of Pillow's global one
    (``Image.MAX_IMAGE_PIXELS``, which warns at 1x and fails at 2x its value): one rule and one
    message for every format."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked below, from the header, before anything is decoded
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    try:
        limits.check_pixels(*im.size)
    except DecodeError:
        im.close()
        raise
    return im


def from_pil(im: Image.Image) -> torch.Tensor:
    """A loaded Pillow image -> uint8 (C, H, W) by `decode`'s rules: gray modes stay one
    channel (16-bit scaled by x / 257), everything else (palette, RGBA, CMYK ...) becomes RGB."""
    if im.mode in _SIXTEEN_BIT_PIL_MODES:
        arr = np.asarray(im, dtype=np.int32).clip(0, 65535)
        return _to_uint8(torch.from_numpy(arr.astype(np.float32)))[None]
    # np.array, not asarray: a view of Pillow's buffer is read-only, which torch warns about
    arr = np.array(im.convert("L" if im.mode in GRAY_PIL_MODES else "RGB"))
    t = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    return t.contiguous()


def _decode_pil(data: bytes, limits: Limits) -> torch.Tensor:
    try:
        with pil_open(data, limits) as im:
            im.load()
            return from_pil(im)
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise DecodeError(str(e) or type(e).__name__) from None


def decode_jpegs(data: torch.Tensor, lengths: torch.Tensor, limits: Limits = DEFAULT_LIMITS, *,
                 device: str | torch.device = "cpu", where: str = "") -> list[torch.Tensor]:
    """JPEG records concatenated in one uint8 buffer (`data`, with their (B,) `lengths`) ->
    uint8 (C, H, W) images (C = 1 or 3) on ``device``, in one batched ``decode_jpeg`` call
    (nvJPEG on CUDA). The same codec and rules as `decode`; each record's size is checked from
    its header first (on a view of the one buffer: ~2 us per record)."""
    arr = data.numpy()
    offset = 0
    for n in lengths.tolist():
        # the frame header follows the tables, usually within a few hundred bytes (a large
        # EXIF block can push it further: then read the whole record)
        dims = (image_dims(arr[offset:offset + min(n, 2048)].tobytes())
                or image_dims(arr[offset:offset + n].tobytes()))
        if dims is None:
            raise ConvzooError(f"{where}: a record is not a JPEG image")
        try:
            limits.check_pixels(*dims)
        except DecodeError as e:
            raise ConvzooError(f"{where}: {e}") from None
        offset += n
    payloads = list(torch.split(data, lengths.tolist()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(payloads, mode=ImageReadMode.UNCHANGED, device=device)
    except RuntimeError as e:
        raise ConvzooError(f"{where}: cannot decode a JPEG record ({e})") from None
    for i, t in enumerate(images):
        if t.shape[0] not in (1, 3):
            if t.shape[0] == 4:  # CMYK: let the codec convert, as `decode` does
                t = decode_jpeg(payloads[i], mode=ImageReadMode.RGB, device=device)
            images[i] = _fix_channels(t)
    return images


def read_file(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The bytes of an image file: a regular file of at most ``limits.max_member_bytes``
    (``integrity.read_regular``: ``/dev/zero``, a FIFO, a socket or a directory is one
    ConvzooError line naming it, never a read)."""
    return read_regular(path, "image", limits.max_member_bytes)


def decode_file(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """`decode` of a file; ConvzooError naming the file when it cannot be read or decoded."""
    try:
        return decode(read_file(path, limits), limits)
    except DecodeError as e:
        raise ConvzooError(f"cannot decode image {path}: {e}") from None


# A decoded chunk: one (n, C, H, W) array when all its files decoded to the same shape (the
# common case: cheap to send between processes and to concatenate), else one entry per file,
# an array or the error message of a file that failed.
Chunk = np.ndarray | list  # list[np.ndarray | str]


def _decode_chunk(sources: list[str | bytes], limits: Limits) -> Chunk:
    """Decode images (paths or bytes); one that fails gives its error message instead."""
    out: list[np.ndarray | str] = []
    for source in sources:
        try:
            data = read_file(source, limits) if isinstance(source, str) else source
            out.append(decode(data, limits).numpy())
        except ConvzooError as e:  # read_file's line starts with the path the caller names
            out.append(str(e).removeprefix(f"{source}: "))
        except Exception as e:  # any failure is reported per file by the caller
            out.append(str(e) or type(e).__name__)
    shapes = {a.shape if isinstance(a, np.ndarray) else None for a in out}
    if len(shapes) == 1 and None not in shapes:
        return np.stack(out)
    return out


def chunk_items(chunk: Chunk) -> list:
    """Per-file entries of a chunk (arrays or error strings)."""
    return list(chunk) if isinstance(chunk, np.ndarray) else chunk


def decode_many(split_inputs: list[list[str | bytes]], limits: Limits, workers: int,
                desc: str = "decoding") -> list[list[Chunk]]:
    """Decode lists of images (one list per split), in a process pool over chunks when there
    are enough, with a progress bar."""
    total = sum(len(p) for p in split_inputs)
    workers = max(1, min(workers, total // _MIN_FILES_PER_WORKER))
    size = max(64, -(-total // (workers * 8)))  # ~8 chunks per worker balances the load
    jobs = [(s, items[i:i + size]) for s, items in enumerate(split_inputs)
            for i in range(0, len(items), size)]
    results: list[list[Chunk]] = [[] for _ in split_inputs]
    with progress(total, desc, unit="img") as bar:
        if workers == 1:
            for s, items in jobs:
                results[s].append(_decode_chunk(items, limits))
                bar.update(len(items))
            return results
        # fork starts workers at once (no re-import of torch); DataLoader does the same.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            done = pool.map(_decode_chunk, [p for _, p in jobs], [limits] * len(jobs))
            for (s, items), chunk in zip(jobs, done):
                results[s].append(chunk)
                bar.update(len(items))
    return results


# ----------------------------------------------------------------------------- scanning


# A tree as found on disk or in an archive: {split: {class folder: [file keys]}}.
Tree = dict[str, dict[str, list[str]]]


@dataclass
class SplitFiles:
    """One split's files (keys: paths or member names) and labels, in load order."""

    keys: list[str]
    labels: list[int]


def _entries(path: Path) -> list[os.DirEntry]:
    """Directory entries sorted by name, hidden ones dropped; OSError -> ConvzooError."""
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        raise ConvzooError(f"cannot read directory {path}: {e.strerror or e}") from None
    return sorted(entries, key=lambda e: e.name)


def tree_root(path: Path) -> Path:
    """The folder holding the splits: `path`, or its one subfolder that holds train/val/test."""
    if any((path / s).is_dir() for s in SPLITS):
        return path
    subs = [Path(e.path) for e in _entries(path) if e.is_dir()]
    if len(subs) == 1 and any((subs[0] / s).is_dir() for s in SPLITS):
        return subs[0]
    return path


def scan_folder(path: Path) -> tuple[Path, Tree, list[str]]:
    """(root, tree, 'path|size|mtime' lines for a cache key) of an image folder."""
    if not path.is_dir():
        raise ConvzooError(f"image folder not found: {path}")
    root = tree_root(path)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not split_dirs:
        split_dirs = {"train": root}  # split-less: <root>/<class>/*
    tree: Tree = {}
    stats: list[str] = []
    for split, folder in split_dirs.items():
        tree[split] = {}
        for cls in _entries(folder):
            if not cls.is_dir():
                continue
            files = tree[split][cls.name] = []
            for f in _entries(Path(cls.path)):
                # Not only regular files: a FIFO, socket or device with an image's name is
                # read as an image is (`read_file`), so it is reported, not silently skipped.
                if not is_image(f.name) or f.is_dir():
                    continue
                try:
                    st = f.stat()
                except OSError:  # a dangling link: nothing there
                    continue
                files.append(f.path)
                stats.append(f"{f.path}|{st.st_size}|{st.st_mtime_ns}")
    return root, tree, stats


def archive_error(archive: Path, e: BaseException, what: str = "archive") -> ConvzooError:
    """One line for an archive tarfile cannot read: its ReadError for an unknown format lists
    every compression it tried, one per line."""
    try:
        empty = os.path.getsize(archive) == 0
    except OSError:
        empty = False
    if empty:
        why = "an empty file (0 bytes)"
    elif isinstance(e, tarfile.ReadError) and "could not be opened" in str(e):
        why = "not a tar archive (plain, gzip, bzip2 or xz)"
    else:  # a truncated or corrupt one: "Compressed file ended before ...", "unexpected end"
        why = " ".join(str(e).split())[:200] or type(e).__name__
    return ConvzooError(f"cannot read {what} {archive}: {why}")


def scan_tar(archive: Path, limits: Limits = DEFAULT_LIMITS,
             progress_desc: str | None = None) -> tuple[str, Tree, dict[str, bytes]]:
    """(prefix, tree, {member name: bytes}) of an image-folder tree inside a tar archive.

    The tree may sit at the top of the archive or in one top-level folder; `prefix` is that
    folder with a trailing slash, or "". Links, devices and hidden members are ignored; a
    member over ``limits.max_member_bytes`` is an error before it is read.
    """
    data: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:*") as tar, \
                progress(None, progress_desc or f"reading {archive.name}", unit="file") as bar:
            for member in tar:
                name = member.name.removeprefix("./").strip("/")
                if any(part.startswith(".") or part == ".." for part in name.split("/")):
                    continue
                if member.isfile() and is_image(name):
                    limits.check_member(archive, name, member.size)
                    f = tar.extractfile(member)
                    assert f is not None  # regular file members always have data
                    data[name] = f.read()
                    names.append(name)
                    bar.update(1)
                elif member.isdir():
                    names.append(name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise archive_error(archive, e) from None
    tops = {n.split("/")[0] for n in names}
    prefix = ""
    if not tops & set(SPLITS):
        wrapped = sorted(t for t in tops if any(n.startswith(f"{t}/{s}/") for n in names
                                                for s in SPLITS))
        prefix = f"{wrapped[0]}/" if len(wrapped) == 1 else ""
    rel = [n[len(prefix):] for n in names if n.startswith(prefix)]
    has_splits = any(r.split("/")[0] in SPLITS and "/" in r for r in rel)
    tree: Tree = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")
        if has_splits:
            if parts[0] not in SPLITS:
                continue
            split, parts = parts[0], parts[1:]
        else:
            split = "train"
        classes = tree.setdefault(split, {})
        if parts and parts[0]:
            files = classes.setdefault(parts[0], [])
            if len(parts) == 2 and name in data:
                files.append(name)
    for classes in tree.values():
        for files in classes.values():
            files.sort()
    return prefix, tree, data


def index_tree(tree: Tree, where: Callable[[str], str]) -> tuple[list[str], dict[str, SplitFiles]]:
    """Check a tree and number its classes; `where(relative path)` names places in errors.

    Classes: the sorted class folders of train/, or of all splits for a tree without train/
    (a test-only tree, evaluated by a run that maps classes by name).
    """
    if not tree:
        raise ConvzooError(f"{where('')}: no images ({LAYOUT})")
    if "train" in tree:
        classes = sorted(tree["train"])
        if not classes:
            raise ConvzooError(f"{where('train')}: no class folders ({LAYOUT})")
    else:
        classes = sorted({c for split in tree.values() for c in split})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, SplitFiles] = {}
    for sub in SPLITS:
        if sub not in tree:
            continue
        class_files = tree[sub]
        if not class_files:
            raise ConvzooError(f"{where(sub)}: no class folders, no images ({LAYOUT})")
        files = SplitFiles([], [])
        for cls in sorted(class_files):
            if cls not in index:
                raise ConvzooError(f"{where(f'{sub}/{cls}')}: class '{cls}' has no folder in "
                                   f"train/ (train classes: {', '.join(classes)})")
            if not class_files[cls]:
                raise ConvzooError(f"{where(f'{sub}/{cls}')}: empty class folder (no images)")
            files.keys += class_files[cls]
            files.labels += [index[cls]] * len(class_files[cls])
        splits[sub] = files
    return classes, splits


GLOB_CHARS = frozenset("*?[")


def collect_files(paths: Sequence[Path | str]) -> list[Path]:
    """Image files named directly, found (recursively, sorted) in folders, or matched (sorted)
    by glob patterns (``'photos/*.jpg'``, ``'data/**/*.png'``; a path that exists is never
    taken as a pattern)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists() and GLOB_CHARS & set(str(p)):
            # any non-folder with an image's name: `read_file` refuses what is not a file
            found = sorted(Path(f) for f in glob.glob(str(p.expanduser()), recursive=True)
                           if os.path.exists(f) and not os.path.isdir(f) and is_image(f))
            if not found:
                raise ConvzooError(f"{p}: no image files match this pattern (suffixes: "
                                   f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
            files.extend(found)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if is_image(f.name) and f.exists()
                           and not f.is_dir()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise ConvzooError(f"{p}: no images found (suffixes: "
                                   f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
            files.extend(found)
        elif p.exists():
            regular_file(p, "image")  # /dev/zero, a FIFO, a socket: one line, before any work
            files.append(p)
        else:
            raise ConvzooError(f"image not found: {p}")
    return files


# ----------------------------------------------------------------------------- assembling


def chunk_failures(keys: list[str], chunks: list[Chunk]) -> list[tuple[str, str]]:
    """(key, error message) of every image of a split that did not decode."""
    if all(isinstance(c, np.ndarray) for c in chunks):
        return []
    entries = [e for c in chunks for e in chunk_items(c)]
    return [(k, e) for k, e in zip(keys, entries) if isinstance(e, str)]


def shape_counts(chunks: list[Chunk]) -> Counter:
    """Counter of (C, H, W) over the decoded images."""
    counts: Counter = Counter()
    for c in chunks:
        if isinstance(c, np.ndarray):
            counts[c.shape[1:]] += len(c)
        else:
            counts.update(a.shape for a in c if isinstance(a, np.ndarray))
    return counts


def resolve_geometry(stored_channels: int, sizes: Counter, *, channels: int, image_size: int,
                     resize: str, name: str) -> Geometry:
    """What every image of a set becomes: the one rule, for folders, archives, CIFAR, digits,
    packs (in memory or streamed) and `convzoo bench`'s estimate alike.

    ``channels`` (0 = `stored_channels`: 1 if every stored image is gray, else 3) x
    ``image_size`` x ``image_size`` (0 = the most common stored size of `sizes`, a Counter of
    (height, width) -> images, with a warning when there are several), by ``resize``. `sizes`
    is read only when ``image_size`` is 0.
    """
    out_channels = channels or stored_channels
    if image_size:
        return Geometry(out_channels, image_size, image_size, resize)
    if not sizes:
        raise ConvzooError(f"{name}: no readable images")
    h, w = sizes.most_common(1)[0][0]
    if len(sizes) > 1:
        log.warning(f"{name}: images have {len(sizes)} different sizes; bringing all to the "
                    f"most common size {h}x{w} by data.resize={resize} (set data.image_size "
                    "to choose)")
    return Geometry(out_channels, h, w, resize)


def assemble(chunks: list[Chunk], geometry: Geometry) -> torch.Tensor:
    """Join decoded chunks (failures dropped) into one uint8 (N, C, H, W) tensor of `geometry`;
    images of one shape are converted and fitted as one batch (same values as one by one)."""
    if all(isinstance(c, np.ndarray) and c.shape[1:] == geometry.shape for c in chunks):
        if not chunks:
            return torch.empty((0, *geometry.shape), dtype=torch.uint8)
        return torch.from_numpy(np.concatenate(chunks))  # fast path: nothing to convert
    arrays = [a for c in chunks for a in chunk_items(c) if isinstance(a, np.ndarray)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    out = torch.empty((len(arrays), *geometry.shape), dtype=torch.uint8)
    for idx in groups.values():
        batch = torch.from_numpy(np.stack([arrays[i] for i in idx]))
        out[torch.tensor(idx)] = geometry.apply(batch)
    return out


# One decoded split: uint8 (N, C, H, W) images of one geometry, int64 (N,) labels and each
# image's name (what `convzoo.data.dataset.Split` holds; built there, which imports this module).
DecodedSplit = tuple[torch.Tensor, torch.Tensor, list[str]]


def decode_splits(name: str, files: dict[str, SplitFiles], inputs: dict[str, list[str | bytes]],
                  show: Callable[[str], str], *, limits: Limits, workers: int, skip_bad: bool,
                  geometry: Geometry | None, channels: int = 0, image_size: int = 0,
                  resize: str = "crop") -> tuple[dict[str, DecodedSplit], list[str], Geometry]:
    """Decode every split (`inputs`: paths or bytes per split) into uint8 images of one geometry
    (the given one, or `resolve_geometry` of what was decoded). `show(key)` names a file in
    messages and is each image's entry in the names. Returns ({split: (images, labels,
    names)}, skipped files, geometry)."""
    names = list(files)
    decoded = decode_many([inputs[n] for n in names], limits, workers)
    failures = {n: chunk_failures(files[n].keys, d) for n, d in zip(names, decoded)}
    skipped = [show(k) for n in names for k, _ in failures[n]]
    if skipped and not skip_bad:
        key, why = next(f for n in names for f in failures[n])
        raise ConvzooError(f"cannot decode image {show(key)}: {why}")
    if skipped:
        log.warning(f"{name}: skipped {len(skipped)} unreadable image(s), first: {skipped[0]}")
    if geometry is None:
        shapes = sum((shape_counts(d) for d in decoded), Counter())
        if not shapes:
            raise ConvzooError(f"{name}: no readable images")
        sizes: Counter = Counter()
        for (_, h, w), n in shapes.items():
            sizes[(h, w)] += n
        geometry = resolve_geometry(3 if any(s[0] == 3 for s in shapes) else 1, sizes,
                                    channels=channels, image_size=image_size, resize=resize,
                                    name=name)
    splits: dict[str, DecodedSplit] = {}
    for split, chunks in zip(names, decoded):
        bad = {k for k, _ in failures[split]}
        kept = [(k, lab) for k, lab in zip(files[split].keys, files[split].labels) if k not in bad]
        if not kept:
            raise ConvzooError(f"{name}: no readable images in split '{split}'")
        splits[split] = (assemble(chunks, geometry),
                         torch.tensor([lab for _, lab in kept], dtype=torch.int64),
                         [show(k) for k, _ in kept])
    return splits, skipped, geometry
