"""Data passed from Python: ``convzoo.train(data=...)`` with arrays or a torch Dataset.

Accepted (`register`):

- ``(images, labels)``: images a NumPy array or torch tensor, uint8 ``(N, H, W)`` or
  ``(N, H, W, C)`` (C = 1 or 3; a torch tensor may also be ``(N, C, H, W)``), labels ``(N,)``
  integers; one split, ``train`` (set ``data.val_fraction``, or give splits:)
- ``{"train": (images, labels), "val": ..., "test": ...}`` (``validation`` accepted);
- a ``torch.utils.data.Dataset`` whose items are ``(image, label)``, the image a PIL image,
  an HWC uint8 array or a CHW uint8 tensor (images of several sizes are brought to one by
  the geometry rule, as a folder's are), or a dict of them by split.

Class names: ``classes=`` given to `register`, else the Dataset's ``classes`` attribute (as
torchvision's datasets have), else "0" .. str(max label).

The data is held in this process under a name that says what it is
(``python:ndarray(1000x28x28)``, ``python:MNIST(60000)``), which is what the run's
config.yaml, summary and model card record as ``data.source``. The registry
(`convzoo.data.loading.registry`) opens it by that name; a name this process does not hold
(the run is resumed or evaluated in a new process) is one error line saying to pass the data
again: ``convzoo.train(resume=RUN, data=...)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from convzoo.config import DataConfig
from convzoo.data import images
from convzoo.data.dataset import Dataset, Split
from convzoo.data.images import Geometry
from convzoo.data.sources.records import SPLIT_ALIASES
from convzoo.errors import ConvzooError

PREFIX = "python:"
_HELD: dict[str, tuple[dict[str, tuple[list[np.ndarray], np.ndarray]], list[str]]] = {}


def is_python_source(source: object) -> bool:
    """Whether ``data=`` is an object to register rather than a source name or path, or a
    section of ``data.`` keys (``data={"limit": 100}``): a dict is data when a key is a split
    name (no ``data.`` key is one)."""
    if isinstance(source, Mapping):
        return any(str(k).lower() in SPLIT_ALIASES for k in source)
    return not isinstance(source, (str, bytes)) and not hasattr(source, "__fspath__")


def _array(x: Any, where: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise ConvzooError(f"{where}: images must be uint8 (0-255), got {arr.dtype}; convert "
                           "with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]")
    return arr


def _labels(y: Any, n: int, where: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ConvzooError(f"{where}: labels must be ({n},) integers, got {arr.shape} {arr.dtype}")
    if n and arr.min() < 0:
        raise ConvzooError(f"{where}: label {int(arr.min())} is negative")
    return arr.astype(np.int64)


def _chw(image: Any, where: str, channels_first: bool = False) -> np.ndarray:
    """One image -> uint8 (C, H, W), C = 1 or 3 (a PIL image by the decoder's rules)."""
    if isinstance(image, Image.Image):
        return images.from_pil(image).numpy()
    tensor = isinstance(image, torch.Tensor)
    arr = _array(image, where)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ConvzooError(f"{where}: an image must be (H, W), (H, W, C) or a CHW tensor, got "
                           f"shape {arr.shape}")
    if (tensor or channels_first) and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3):
        chw = arr
    else:
        chw = arr.transpose(2, 0, 1)
    if chw.shape[0] == 4:  # RGBA: alpha dropped, as the decoder does
        chw = chw[:3]
    if chw.shape[0] not in (1, 3):
        raise ConvzooError(f"{where}: images need 1 or 3 channels, got shape {arr.shape}")
    return np.ascontiguousarray(chw)


def _from_arrays(x: Any, y: Any, where: str) -> tuple[list[np.ndarray], np.ndarray, str]:
    tensor = isinstance(x, torch.Tensor)
    arr = _array(x, where)
    if arr.ndim == 3:
        chw = arr[:, None]
    elif arr.ndim == 4 and tensor and arr.shape[1] in (1, 3) and arr.shape[3] not in (1, 3):
        chw = arr  # a torch tensor (N, C, H, W)
    elif arr.ndim == 4 and arr.shape[3] in (1, 3, 4):
        chw = arr.transpose(0, 3, 1, 2)[:, :3]
    else:
        raise ConvzooError(f"{where}: images must be uint8 (N, H, W) or (N, H, W, C) with C 1 or "
                           f"3, got shape {arr.shape}")
    labels = _labels(y, arr.shape[0], where)
    kind = "tensor" if tensor else "ndarray"
    return [np.ascontiguousarray(chw)], labels, f"{kind}({'x'.join(map(str, arr.shape))})"


def _from_dataset(ds: Any, where: str) -> tuple[list[np.ndarray], np.ndarray, str]:
    try:
        n = len(ds)
    except TypeError:
        raise ConvzooError(f"{where}: a Dataset passed as data= needs a length "
                           "(a map-style torch.utils.data.Dataset)") from None
    pictures, labels = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ConvzooError(f"{where}: item {i} is not an (image, label) pair")
        pictures.append(_chw(item[0], f"{where}: item {i}"))
        label = item[1]
        if isinstance(label, torch.Tensor):
            label = label.item()
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            raise ConvzooError(f"{where}: item {i} has label {label!r}; labels must be integers "
                               "(class names go in classes=)")
        labels.append(int(label))
    if not pictures:
        raise ConvzooError(f"{where}: the Dataset is empty")
    return pictures, _labels(np.asarray(labels, dtype=np.int64), n, where), \
        f"{type(ds).__name__}({n})"


def _split(value: Any, where: str) -> tuple[list[np.ndarray], np.ndarray, str]:
    if isinstance(value, torch.utils.data.Dataset) and not isinstance(value, (tuple, list)):
        return _from_dataset(value, where)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _from_arrays(value[0], value[1], where)
    raise ConvzooError(f"{where}: expected (images, labels) or a torch Dataset of (image, label), "
                       f"got {type(value).__name__}")


def register(data: Any, classes: Sequence[str] | None = None) -> str:
    """Hold `data` (module docstring) in this process; return its ``data.source`` name."""
    if isinstance(data, Mapping):
        parts = {}
        for key, value in data.items():
            split = SPLIT_ALIASES.get(str(key).lower())
            if split is None:
                raise ConvzooError(f"data={{'{key}': ...}}: unknown split '{key}' (expected "
                                   "train, val or test)")
            parts[split] = _split(value, f"data['{key}']")
        if "train" not in parts:
            raise ConvzooError("data={...}: no 'train' split")
    else:
        parts = {"train": _split(data, "data")}
    if classes is None:
        source = data.get("train") if isinstance(data, Mapping) else data
        found = getattr(source, "classes", None)
        classes = list(found) if found is not None else None
    for split, (_, lab, _) in parts.items():
        if not len(lab):
            raise ConvzooError(f"data: split '{split}' is empty (an empty dataset)")
    top = max(int(lab.max()) for _, lab, _ in parts.values())
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    classes = [str(c) for c in classes]
    if top >= len(classes):
        raise ConvzooError(f"data: label {top} but only {len(classes)} class names given")
    if len(set(classes)) != len(classes):
        raise ConvzooError("classes=: class names must be distinct")
    described = ",".join(desc if s == "train" else f"{s}={desc}"
                         for s, (_, _, desc) in sorted(parts.items(),
                                                       key=lambda kv: kv[0] != "train"))
    name = f"{PREFIX}{described}"
    _HELD[name] = ({s: (p, lab) for s, (p, lab, _) in parts.items()}, classes)
    return name


def load(source: str, cfg: DataConfig, geometry: Geometry | None = None) -> Dataset:
    """The data held under `source` (`register`) as a Dataset brought to one geometry."""
    if source not in _HELD:
        raise ConvzooError(f"data.source={source}: this run's data was passed from Python and is "
                           "not held by this process; pass it again: "
                           "convzoo.train(resume=RUN, data=...) (or evaluate with --data)")
    parts, classes = _HELD[source]
    name = source.removeprefix(PREFIX)
    if geometry is None:
        sizes: Counter = Counter()
        gray = True
        for pictures, _ in parts.values():
            for p in pictures:  # (n, C, H, W) arrays or single (C, H, W) images
                shape = p.shape[-3:]
                sizes[shape[1:]] += p.shape[0] if p.ndim == 4 else 1
                gray = gray and shape[0] == 1
        geometry = images.resolve_geometry(1 if gray else 3, sizes, channels=cfg.channels,
                                           image_size=cfg.image_size, resize=cfg.resize,
                                           name=name)
    splits = {}
    for split, (pictures, labels) in parts.items():
        # one (N, C, H, W) array from arrays; (C, H, W) images, maybe of several sizes, from a
        # Dataset
        whole = len(pictures) == 1 and pictures[0].ndim == 4
        batch = images.assemble([pictures[0]] if whole else [list(pictures)], geometry)
        splits[split] = Split(batch, torch.from_numpy(labels))
    return Dataset(name, list(classes), splits, geometry)
