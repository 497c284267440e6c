"""Image-folder trees: ``root/train/<class>/*`` plus ``root/test/<class>/*`` and/or ``val/``.

Images of any format Pillow or torchvision can read are decoded in parallel (a process
pool over chunks of files; torchvision's libjpeg-turbo/libpng decoders, Pillow as the
fallback) into one uint8 array per split. The same tree packed in a tar archive is
decoded straight from the archive's members (`load_image_tar`). The decoded arrays are
cached in `cache_dir` under a key made of the root path, the file list, sizes and
modification times (for an archive: its path, size and mtime), so the second load of an
unchanged tree reads one file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import tarfile
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from convzoo.data.dataset import Dataset, Split
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
CACHE_VERSION = 1  # bump when the decoded layout or the decoding rules change
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_PIL_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_MIN_FILES_PER_WORKER = 512  # below this, a process pool costs more than it saves


# A tree as found on disk or in an archive: {split folder: {class folder: [file keys]}}.
Tree = dict[str, dict[str, list[str]]]
_LAYOUT = "expected <root>/train/<class>/*.jpg plus <root>/test/<class>/* or <root>/val/<class>/*"


@dataclass
class _SplitFiles:
    paths: list[str] = field(default_factory=list)  # file keys, in load order
    labels: list[int] = field(default_factory=list)


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------- scanning


def _entries(path: Path) -> list[os.DirEntry]:
    """Directory entries sorted by name, hidden ones dropped; OSError -> ConvzooError."""
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        raise ConvzooError(f"cannot read directory {path}: {e.strerror or e}") from None
    return sorted(entries, key=lambda e: e.name)


def _walk_dir(root: Path) -> tuple[Tree, list[str]]:
    """The tree under `root` (keys: file paths) and 'path|size|mtime' lines for the cache key."""
    if not root.is_dir():
        raise ConvzooError(f"image folder not found: {root}")
    tree: Tree = {}
    stats: list[str] = []
    for sub in ("train", "test", "val"):
        if not (root / sub).is_dir():
            continue
        tree[sub] = {}
        for cls in _entries(root / sub):
            if not cls.is_dir():
                continue
            files = [f for f in _entries(Path(cls.path)) if _is_image(f.name) and f.is_file()]
            tree[sub][cls.name] = [f.path for f in files]
            for f in files:
                st = f.stat()
                stats.append(f"{f.path}|{st.st_size}|{st.st_mtime_ns}")
    return tree, stats


def _walk_tar(archive: Path) -> tuple[str, Tree, dict[str, bytes]]:
    """(prefix, tree, {member name: bytes}) of an image-folder tree inside a tar archive.

    The tree may sit at the top of the archive or in one top-level folder
    (``cifar10-jpeg/train/...``); `prefix` is that folder with a trailing slash, or "".
    """
    data: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./").strip("/")
                if any(part.startswith(".") for part in name.split("/")):
                    continue
                names.append(name)
                if member.isfile() and _is_image(name):
                    f = tar.extractfile(member)
                    assert f is not None  # regular file members always have data
                    data[name] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ConvzooError(f"cannot read archive {archive}: {e}") from None
    tops = {n.split("/")[0] for n in names}
    prefix = ""
    if "train" not in tops:
        with_train = sorted(t for t in tops if any(n.startswith(f"{t}/train/") for n in names))
        prefix = f"{with_train[0]}/" if len(with_train) == 1 else ""
    tree: Tree = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")
        if parts[0] not in ("train", "test", "val"):
            continue
        classes = tree.setdefault(parts[0], {})
        if len(parts) >= 2:
            files = classes.setdefault(parts[1], [])
            if len(parts) == 3 and name in data:
                files.append(name)
    for classes in tree.values():
        for files in classes.values():
            files.sort()
    return prefix, tree, data


def _index(tree: Tree, where: Callable[[str], str]) -> tuple[list[str], dict[str, _SplitFiles]]:
    """Check a tree and number its classes; `where(relative path)` names places in errors.

    Classes are the sorted train/ folders. With test/ and val/ both present both are
    loaded; a tree with val/ only (ImageNet style) evaluates on it, so it becomes "test".
    """
    if "train" not in tree:
        raise ConvzooError(f"{where('')}: no train/ folder ({_LAYOUT})")
    classes = sorted(tree["train"])
    if not classes:
        raise ConvzooError(f"{where('train')}: no class folders ({_LAYOUT})")
    index = {c: i for i, c in enumerate(classes)}
    rename = {"train": "train", "test": "test", "val": "val" if "test" in tree else "test"}
    splits: dict[str, _SplitFiles] = {}
    for sub in ("train", "test", "val"):
        if sub not in tree:
            continue
        class_files = tree[sub]
        if not class_files:
            raise ConvzooError(f"{where(sub)}: no class folders, no images ({_LAYOUT})")
        files = _SplitFiles()
        for cls in sorted(class_files):
            if cls not in index:
                raise ConvzooError(f"{where(f'{sub}/{cls}')}: class '{cls}' has no folder in "
                                   f"train/ (train classes: {', '.join(classes)})")
            if not class_files[cls]:
                raise ConvzooError(f"{where(f'{sub}/{cls}')}: empty class folder (no images)")
            files.paths += class_files[cls]
            files.labels += [index[cls]] * len(class_files[cls])
        splits[rename[sub]] = files
    return classes, splits


# ----------------------------------------------------------------------------- decoding


def _fix_channels(t: torch.Tensor) -> torch.Tensor:
    """(C, H, W) with C in 1..4 -> 1 (gray) or 3 (RGB) channels, alpha dropped."""
    if t.ndim == 4:  # animated GIF: (frames, C, H, W), keep the first frame
        t = t[0]
    if t.shape[0] == 2:
        return t[:1]
    if t.shape[0] == 4:
        return t[:3]
    return t


def _decode_one(source: str | bytes, channels: int) -> np.ndarray:
    """Decode an image (file path or encoded bytes) to (C, H, W) uint8 with C = 1 or 3.

    `channels` 0 keeps gray images gray, 1 or 3 asks the codec for gray or RGB.
    """
    if isinstance(source, str):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source
    mode = {0: ImageReadMode.UNCHANGED, 1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}[channels]
    if mode == ImageReadMode.UNCHANGED and data[:8] == _PNG_SIGNATURE and data[25:26] == b"\x03":
        mode = ImageReadMode.RGB  # palette PNG: UNCHANGED would return palette indices
    try:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        t = decode_image(buf, mode=mode)
        if t.shape[-3] == 4 and mode == ImageReadMode.UNCHANGED:
            t = decode_image(buf, mode=ImageReadMode.RGB)  # RGBA or CMYK: let the codec convert
        t = _fix_channels(t)
        if t.dtype != torch.uint8:  # 16-bit PNG
            t = (t.to(torch.float32) / 257.0).round().to(torch.uint8)
        return t.numpy()
    except RuntimeError:
        pass  # a format torchvision does not decode (BMP, TIFF, ...) or a corrupt file
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            gray = channels == 1 or (channels == 0 and im.mode in _GRAY_PIL_MODES)
            arr = np.asarray(im.convert("L" if gray else "RGB"))
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


# A decoded chunk: one (n, C, H, W) array when all its files decoded to the same shape (the
# common case: cheap to send between processes and to concatenate), else one entry per file,
# an array or the error message of a file that failed.
Chunk = np.ndarray | list  # list[np.ndarray | str]


def _decode_chunk(sources: list[str | bytes], channels: int) -> Chunk:
    """Decode images; one that fails gives its error message (str) instead of an array."""
    out: list[np.ndarray | str] = []
    with warnings.catch_warnings():
        # torchvision >= 0.29 warns on every decode that TorchCodec will replace it; its
        # libjpeg-turbo decoder is still ~2.5x cheaper per CIFAR JPEG than Pillow here.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        for source in sources:
            try:
                out.append(_decode_one(source, channels))
            except Exception as e:  # any decoder failure is reported per file by the caller
                out.append(str(e) or type(e).__name__)
    shapes = {a.shape if isinstance(a, np.ndarray) else None for a in out}
    if len(shapes) == 1 and None not in shapes:
        return np.stack(out)
    return out


def _decode_splits(split_paths: list[list[str | bytes]], channels: int,
                   workers: int) -> list[list[Chunk]]:
    """Decode every split's images, in a process pool over chunks when there are enough."""
    total = sum(len(p) for p in split_paths)
    workers = max(1, min(workers, total // _MIN_FILES_PER_WORKER))
    size = max(64, -(-total // (workers * 8)))  # ~8 chunks per worker balances the load
    jobs = [(s, paths[i:i + size]) for s, paths in enumerate(split_paths)
            for i in range(0, len(paths), size)]
    results: list[list[Chunk]] = [[] for _ in split_paths]
    with tqdm(total=total, unit="img", desc="decoding", disable=None) as bar:
        if workers == 1:
            for s, paths in jobs:
                results[s].append(_decode_chunk(paths, channels))
                bar.update(len(paths))
            return results
        # fork starts workers at once (no re-import of torch); DataLoader does the same.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            done = pool.map(_decode_chunk, [p for _, p in jobs], [channels] * len(jobs))
            for (s, paths), chunk in zip(jobs, done):
                results[s].append(chunk)
                bar.update(len(paths))
    return results


def _items(chunk: Chunk) -> list:
    """Per-file entries of a chunk (arrays or error strings)."""
    return list(chunk) if isinstance(chunk, np.ndarray) else chunk


# ----------------------------------------------------------------------------- image ops


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) uint8 to `channels` (1 or 3; 0 = unchanged): gray replicated, RGB -> luma."""
    c = images.shape[1]
    if channels in (0, c):
        return images
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        return TF.rgb_to_grayscale(images, num_output_channels=1)
    raise ConvzooError(f"cannot convert {c}-channel images to {channels} channels (use 0, 1 or 3)")


def resize_images(images: torch.Tensor, size: int | tuple[int, int],
                  chunk: int = 4096) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 to `size` (square int or (H, W)), bilinear with antialiasing."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    # Chunks bound the float intermediates the resize kernel may allocate.
    parts = [TF.resize(images[i:i + chunk], list(hw), antialias=True)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts) if parts else images.new_empty((0, images.shape[1], *hw))


def _assemble(chunks: list[Chunk], channels: int, hw: tuple[int, int]) -> torch.Tensor:
    """Join decoded chunks (failures already removed or absent) into (N, channels, *hw)."""
    if all(isinstance(c, np.ndarray) and c.shape[1:] == (channels, *hw) for c in chunks):
        return torch.from_numpy(np.concatenate(chunks))  # fast path: nothing to convert
    arrays = [a for c in chunks for a in _items(c) if isinstance(a, np.ndarray)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    out = torch.empty((len(arrays), channels, *hw), dtype=torch.uint8)
    for idx in groups.values():
        batch = torch.from_numpy(np.stack([arrays[i] for i in idx]))
        out[torch.tensor(idx)] = resize_images(convert_channels(batch, channels), hw)
    return out


# ----------------------------------------------------------------------------- caching


def _cache_path(cache_dir: Path, source: Path, lines: list[str], channels: int,
                image_size: int) -> Path:
    """Cache file for `source`, keyed by the decoding options and `lines` (files, stats)."""
    tag = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    h = hashlib.sha256(f"v{CACHE_VERSION}|{source}|{channels}|{image_size}\n".encode())
    h.update("\n".join(lines).encode())
    return Path(cache_dir).expanduser() / f"folder-{tag}-{h.hexdigest()[:20]}.pt"


def _from_cache(path: Path | None, skip_bad: bool) -> Dataset | None:
    """The cached Dataset, or None when there is no readable cache file."""
    if path is None or not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True)
        splits = {k: Split(v["images"], v["labels"]) for k, v in cached["splits"].items()}
        name, classes, skipped = cached["name"], list(cached["classes"]), list(cached["skipped"])
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None
    if skipped and not skip_bad:
        raise ConvzooError(f"cannot decode image {skipped[0]} (set data.skip_bad=true to skip "
                           f"the {len(skipped)} unreadable file(s))")
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), first: %s", name, len(skipped),
                    skipped[0])
    log.info("loaded %s from cache %s", name, path)
    ds = Dataset(name=name, classes=classes, splits=splits)
    ds.skipped = skipped  # type: ignore[attr-defined]
    return ds


def _save_cache(path: Path, ds: Dataset) -> None:
    """Write atomically (a temp file in the same folder, then os.replace); never fatal."""
    payload = {
        "name": ds.name,
        "classes": ds.classes,
        "skipped": ds.skipped,  # type: ignore[attr-defined]
        "splits": {k: {"images": s.images, "labels": s.labels} for k, s in ds.splits.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError as e:  # caching is an optimisation: a read-only cache dir is not fatal
        log.warning("could not write cache %s: %s", path, e)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as readable as its data
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        log.warning("could not write cache %s: %s", path, e)
        return
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Older caches of the same source (its files have changed since) are dead weight.
    for old in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- loading


def _failures(keys: list[str], chunks: list[Chunk]) -> list[tuple[str, str]]:
    """(file key, error message) of every image of a split that did not decode."""
    if all(isinstance(c, np.ndarray) for c in chunks):
        return []
    entries = [e for c in chunks for e in _items(c)]
    return [(k, e) for k, e in zip(keys, entries) if isinstance(e, str)]


def _shape_counts(chunks: list[Chunk]) -> Counter:
    """Counter of (C, H, W) over the decoded images of a split."""
    counts: Counter = Counter()
    for c in chunks:
        if isinstance(c, np.ndarray):
            counts[c.shape[1:]] += len(c)
        else:
            counts.update(a.shape for a in c if isinstance(a, np.ndarray))
    return counts


def _decode_dataset(name: str, classes: list[str], files: dict[str, _SplitFiles],
                    inputs: dict[str, list[str | bytes]], show: Callable[[str], str],
                    channels: int, skip_bad: bool, workers: int, image_size: int) -> Dataset:
    """Decode every split (`inputs`: paths or bytes per split) into one in-memory Dataset.

    `show(key)` turns a file key into the name used in messages.
    """
    names = list(files)
    decoded = _decode_splits([inputs[n] for n in names], channels, workers)
    failures = {n: _failures(files[n].paths, d) for n, d in zip(names, decoded)}
    skipped = [show(k) for n in names for k, _ in failures[n]]
    if skipped and not skip_bad:
        key, why = next(f for n in names for f in failures[n])
        raise ConvzooError(f"cannot decode image {show(key)}: {why}")
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), first: %s", name, len(skipped),
                    skipped[0])

    shapes = sum((_shape_counts(d) for d in decoded), Counter())
    if not shapes:
        raise ConvzooError(f"{name}: no readable images")
    # channels 0 keeps the source's: gray only if every image is gray.
    out_channels = channels or (3 if any(s[0] == 3 for s in shapes) else 1)
    sizes: Counter = Counter()
    for (_, h, w), n in shapes.items():
        sizes[(h, w)] += n
    if image_size:
        hw = (image_size, image_size)
    else:
        hw = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            log.warning("%s: images have %d different sizes; resizing all to the most common "
                        "size %dx%d (set data.image_size to choose)", name, len(sizes), *hw)

    splits: dict[str, Split] = {}
    for split, chunks in zip(names, decoded):
        bad = {k for k, _ in failures[split]}
        labels = [lab for k, lab in zip(files[split].paths, files[split].labels) if k not in bad]
        if not labels:
            raise ConvzooError(f"{name}: no readable images in split '{split}'")
        images = _assemble(chunks, out_channels, hw)
        splits[split] = Split(images, torch.tensor(labels, dtype=torch.int64))
    ds = Dataset(name=name, classes=classes, splits=splits)
    ds.skipped = skipped  # type: ignore[attr-defined]
    return ds


def load_image_folder(
    root: Path,
    channels: int = 0,
    skip_bad: bool = False,
    workers: int = 0,
    cache_dir: Path | None = None,
    image_size: int = 0,
) -> Dataset:
    """Load ``root/{train,test,val}/<class>/*`` into memory as a Dataset.

    Classes are the sorted folder names under train/. A tree with test/ and val/ gives
    both splits; with val/ only, val/ becomes "test". `channels` 0 keeps gray images gray
    (unless the set mixes gray and colour: then all RGB), 1 or 3 converts. Images of
    different sizes are resized to `image_size` (if > 0) or else to the most common size,
    with a warning. Corrupt files raise ConvzooError naming the file, or with `skip_bad`
    are skipped: their paths are in ``dataset.skipped`` and logged. `workers` 0 = all
    cores. With `cache_dir`, decoded arrays are cached there and reused while no file
    changes (same paths, sizes and modification times).
    """
    _check_channels(channels)
    root = Path(root).expanduser().resolve()
    tree, stats = _walk_dir(root)
    classes, files = _index(tree, lambda rel: str(root / rel))
    cache = _cache_path(cache_dir, root, stats, channels, image_size) if cache_dir else None
    ds = _from_cache(cache, skip_bad)
    if ds is None:
        ds = _decode_dataset(root.name, classes, files, {n: f.paths for n, f in files.items()},
                             str, channels, skip_bad, workers or default_workers(), image_size)
        if cache is not None:
            _save_cache(cache, ds)
    return ds


def load_image_tar(
    archive: Path,
    channels: int = 0,
    skip_bad: bool = False,
    workers: int = 0,
    cache_dir: Path | None = None,
    image_size: int = 0,
) -> Dataset:
    """Load an image-folder tree packed in a tar archive (.tar.gz, .tgz, .tar) into memory.

    Same layout and options as `load_image_folder`; the tree may sit in one top-level
    folder of the archive. Members are decoded straight from the archive (writing tens of
    thousands of small files to disk costs more than decoding them). The cache is keyed by
    the archive's path, size and modification time.
    """
    _check_channels(channels)
    archive = Path(archive).expanduser().resolve()
    if not archive.is_file():
        raise ConvzooError(f"archive not found: {archive}")
    st = archive.stat()
    lines = [f"{st.st_size}|{st.st_mtime_ns}"]
    cache = _cache_path(cache_dir, archive, lines, channels, image_size) if cache_dir else None
    ds = _from_cache(cache, skip_bad)
    if ds is not None:
        return ds
    prefix, tree, data = _walk_tar(archive)
    classes, files = _index(tree, lambda rel: f"{archive}:{prefix}{rel}")
    inputs: dict[str, list[str | bytes]] = {n: [data[k] for k in f.paths]
                                           for n, f in files.items()}
    del data
    name = prefix.strip("/") or archive.name.split(".")[0]
    ds = _decode_dataset(name, classes, files, inputs, lambda k: f"{archive}:{k}", channels,
                         skip_bad, workers or default_workers(), image_size)
    if cache is not None:
        _save_cache(cache, ds)
    return ds


def _check_channels(channels: int) -> None:
    if channels not in (0, 1, 3):
        raise ConvzooError(f"channels must be 0, 1 or 3, got {channels}")
