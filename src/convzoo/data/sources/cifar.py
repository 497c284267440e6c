"""CIFAR-10 / CIFAR-100 in the official pickled "python version" format.

Reads either the downloaded ``.tar.gz`` (members are unpickled straight from the archive,
nothing is extracted) or the extracted folder (``cifar-10-batches-py`` /
``cifar-100-python``). Each batch file is a pickled dict with ``data`` (N, 3072) uint8,
rows laid out as 1024 red, 1024 green, 1024 blue values of a 32x32 image, and labels.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convzoo.data.dataset import Dataset, Split
from convzoo.data.images import DEFAULT_LIMITS, Limits, archive_error
from convzoo.errors import ConvzooError
from convzoo.integrity import read_regular

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR10_FILES = [*_CIFAR10_TRAIN, "test_batch", "batches.meta"]
_CIFAR100_FILES = ["train", "test", "meta"]

# The only globals the official pickles (and numpy-written look-alikes) reference.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict[str, Any]:
    """Load one CIFAR pickle (Python 2 era: bytes keys) into a dict with str keys."""
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ConvzooError(f"{where}: not a CIFAR python batch file ({e})") from None
    if not isinstance(obj, dict):
        raise ConvzooError(f"{where}: not a CIFAR python batch file (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_members(path: Path, limits: Limits) -> tuple[str, dict[str, dict[str, Any]]]:
    """(folder name, {file name: unpickled dict}) from an archive or an extracted folder."""
    found: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        kind = _kind_of_dir(path)
        names = _CIFAR10_FILES if kind == CIFAR10_DIR else _CIFAR100_FILES
        for name in names:
            file = path / name
            found[name] = _unpickle(read_regular(file, "CIFAR batch file",
                                                 limits.max_member_bytes), str(file))
        return kind, found
    try:
        with tarfile.open(path, "r:*") as tar:
            kind = ""
            for member in tar:
                parts = _member_parts(member.name)
                if len(parts) != 2 or not member.isfile():
                    continue
                folder, name = parts
                if folder not in (CIFAR10_DIR, CIFAR100_DIR):
                    continue
                kind = folder
                if name in _CIFAR10_FILES or name in _CIFAR100_FILES:
                    limits.check_member(path, member.name, member.size)
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file member always has data
                    found[name] = _unpickle(f.read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise archive_error(path, e, "CIFAR archive") from None
    if not kind:
        raise ConvzooError(
            f"{path}: no {CIFAR10_DIR}/ or {CIFAR100_DIR}/ inside; not an official CIFAR archive"
        )
    return kind, found


def _member_parts(name: str) -> list[str]:
    """'./cifar-10-batches-py/test_batch' -> ['cifar-10-batches-py', 'test_batch']."""
    return name.removeprefix("./").strip("/").split("/")


def _kind_of_dir(path: Path) -> str:
    if (path / "batches.meta").is_file():
        return CIFAR10_DIR
    if (path / "meta").is_file():
        return CIFAR100_DIR
    raise ConvzooError(
        f"{path}: neither batches.meta (CIFAR-10) nor meta (CIFAR-100) found; "
        f"not an extracted CIFAR python folder"
    )


def _split(batches: list[dict[str, Any]], key: str, where: str) -> Split:
    """Concatenate batch dicts into a Split of (N, 3, 32, 32) uint8 images."""
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        images = data.reshape(-1, 3, 32, 32)  # rows are channel-major: R plane, G, B
    except (KeyError, ValueError) as e:
        raise ConvzooError(f"{where}: malformed CIFAR batch ({e})") from None
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def _names(meta: dict[str, Any], key: str, where: str) -> list[str]:
    if key not in meta:
        raise ConvzooError(f"{where}: meta has no '{key}'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def load_cifar(path: Path, fine: bool = True, limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 from the official ``.tar.gz`` or its extracted folder.

    For CIFAR-100, ``fine=True`` gives the 100 fine labels, ``fine=False`` the 20 coarse
    super-classes. Splits "train" (50,000) and "test" (10,000); images (N, 3, 32, 32) uint8.
    Archive members over ``limits.max_member_bytes`` are refused before they are read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConvzooError(f"CIFAR data not found: {path}")
    kind, files = _read_members(path, limits)
    wanted = _CIFAR10_FILES if kind == CIFAR10_DIR else _CIFAR100_FILES
    missing = [n for n in wanted if n not in files]
    if missing:
        raise ConvzooError(f"{path}: CIFAR files missing: {', '.join(missing)}")
    if kind == CIFAR10_DIR:
        classes = _names(files["batches.meta"], "label_names", str(path))
        train = _split([files[n] for n in _CIFAR10_TRAIN], "labels", str(path))
        test = _split([files["test_batch"]], "labels", str(path))
        name = "cifar10"
    else:
        key = "fine" if fine else "coarse"
        classes = _names(files["meta"], f"{key}_label_names", str(path))
        train = _split([files["train"]], f"{key}_labels", str(path))
        test = _split([files["test"]], f"{key}_labels", str(path))
        name = "cifar100" if fine else "cifar100-coarse"
    for split_name, split in (("train", train), ("test", test)):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(classes)):
            raise ConvzooError(f"{path}: {split_name} labels outside 0..{len(classes) - 1}")
    return Dataset(name=name, classes=classes, splits={"train": train, "test": test})


def is_cifar_archive(path: Path) -> bool:
    """True if the first member of the tar archive is a CIFAR python folder (cheap check)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError):
        return False
    if first is None:
        return False
    return _member_parts(first.name)[0] in (CIFAR10_DIR, CIFAR100_DIR)


def is_cifar_dir(path: Path) -> bool:
    """True if `path` is an extracted CIFAR python folder."""
    return path.is_dir() and ((path / "batches.meta").is_file() or (path / "meta").is_file())
