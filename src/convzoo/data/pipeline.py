"""From ``cfg.data`` to the trainer's two loaders: device-resident or streaming, one interface.

``build_pipeline`` decides where the images live:

- ``memory``: ``sources.load_dataset`` decodes every split into one uint8 tensor, which
  ``DeviceLoader`` keeps on the training device (CIFAR, digits, small folders).
- ``stream``: a packed dataset (``convzoo pack``) stays on disk; ``StreamLoader`` reads and
  decodes each batch in worker processes (or on the GPU with nvJPEG).
- ``auto``: ``stream`` for a packed dataset whose decoded train split would exceed
  ``MEMORY_BUDGET_BYTES``, ``memory`` otherwise.

Either way the trainer gets ``(images float (B, C, H, W) normalised, labels int64 (B,))`` on
the device, and the preprocessing is fitted on the training split (a seeded, stratified sample
of ``preprocess.fit_images`` images when streaming).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convzoo import config as C
from convzoo.data.augment import build_eval_transform, build_train_augment
from convzoo.data.loaders import DeviceLoader
from convzoo.data.preprocess import Preprocessor, fit_preprocessor
from convzoo.data.sources import carve_val, limit_splits, load_dataset, stratified_pick
from convzoo.errors import ConvzooError

MEMORY_BUDGET_BYTES = 8 * 2**30  # decoded uint8 train split that `auto` still keeps in memory
STREAM_FIT_IMAGES = 10_000  # images decoded to fit preprocessing when streaming (fit_images=0)

Loader = Any  # DeviceLoader | StreamLoader: set_epoch(e), len(), iteration, head(n)


@dataclass
class Pipeline:
    """The data side of one training stage."""

    name: str
    classes: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W) of the stored (pre-augmentation) images
    eval_split: str
    train: Loader
    eval: Loader
    preprocess: Preprocessor
    train_count: int
    eval_count: int
    kind: str  # "memory" | "stream"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def resolve_eval_split(requested: str, available: list[str], source: str) -> str:
    """``auto`` -> val if there is one, else test; otherwise the split must exist."""
    split = requested
    if split == "auto":
        split = "val" if "val" in available else "test"
    if split not in available:
        raise ConvzooError(f"data.eval_split: split '{split}' not in data source {source} "
                           f"(has: {', '.join(sorted(available))})")
    return split


def packed_path(source: str) -> Path | None:
    """The directory of a packed dataset named by `source`, or None if it is not one."""
    path = Path(source).expanduser()
    return path if (path / "index.json").is_file() else None


def choose_loader(cfg: C.DataConfig) -> str:
    """``memory`` or ``stream`` for ``cfg.loader`` (see the module docstring)."""
    if cfg.loader not in ("auto", "memory", "stream"):
        raise ConvzooError(f"data.loader: expected auto|memory|stream, got '{cfg.loader}'")
    packed = packed_path(cfg.source)
    if cfg.loader == "stream" and packed is None:
        raise ConvzooError(f"data.loader=stream needs a packed dataset (made by `convzoo pack`); "
                           f"'{cfg.source}' is not one")
    if cfg.loader != "auto" or packed is None:
        return "memory" if cfg.loader == "auto" else cfg.loader
    from convzoo.data.records import open_packed

    ds = open_packed(packed)
    try:
        train = ds.splits.get("train")
        if train is None:
            raise ConvzooError(f"{packed}: packed dataset has no train split")
        c, h, w = _stored_shape(train, cfg.image_size)
        return "stream" if len(train) * c * h * w > MEMORY_BUDGET_BYTES else "memory"
    finally:
        ds.close()


def _stored_shape(split: Any, size: int) -> tuple[int, int, int]:
    """(C, H, W) the loader will produce for a packed split (probes one record for JPEG)."""
    if size:
        return split.channels, size, size
    if split.shape is not None:
        return tuple(split.shape)
    if len(split) == 0:
        raise ConvzooError(f"{split.root}: split '{split.name}' is empty")
    h, w, c = split.decode([0]).shape[1:]
    return c, h, w


# ----------------------------------------------------------------------------- building


@dataclass
class Source:
    """The opened data: in-memory ``Split``s or packed ``PackedSplit`` views, by split name."""

    name: str
    classes: list[str]
    splits: dict[str, Any]
    kind: str  # "memory" | "stream"


def open_source(cfg: C.Config) -> Source:
    """Load (memory) or open (stream) ``cfg.data`` with ``limit`` and ``val_fraction`` applied."""
    kind = choose_loader(cfg.data)
    if kind == "memory":
        dataset = load_dataset(cfg.data, seed=cfg.train.seed)
        return Source(dataset.name, list(dataset.classes), dict(dataset.splits), kind)
    packed, splits = _stream_splits(cfg)
    if cfg.data.channels and cfg.data.channels != packed.channels:
        raise ConvzooError(f"data.channels={cfg.data.channels}: the streamed pack has "
                           f"{packed.channels} channels (repack, or use data.loader=memory)")
    return Source(packed.name, list(packed.classes), splits, kind)


def make_loader(source: Source, split: str, cfg: C.Config, device: torch.device,
                preprocess: Preprocessor, *, train: bool, rank: int = 0,
                world_size: int = 1, batch_size: int | None = None) -> Loader:
    """A training loader (shuffled, augmented, per-rank slice) or an evaluation loader."""
    common: dict[str, Any] = dict(device=device, preprocess=preprocess)
    if train:
        common.update(augment=build_train_augment(cfg.augment, seed=cfg.train.seed),
                      shuffle=True, drop_last=True, seed=cfg.train.seed, rank=rank,
                      world_size=world_size)
        batch = batch_size or cfg.train.batch_size // world_size
    else:
        common.update(eval_transform=build_eval_transform(cfg.augment))
        batch = batch_size or cfg.train.eval_batch_size
    if source.kind == "memory":
        return DeviceLoader(source.splits[split], batch, **common)
    from convzoo.data.streaming import StreamLoader

    return StreamLoader(source.splits[split], batch, workers=cfg.data.workers or None,
                        decode_size=cfg.data.image_size or None, **common)


def fit_on_train(cfg: C.Config, source: Source) -> Preprocessor:
    """Fit ``cfg.preprocess`` on the training split (all of it, or a stratified sample)."""
    train = source.splits["train"]
    n = cfg.preprocess.fit_images or (0 if source.kind == "memory" else STREAM_FIT_IMAGES)
    pick = None
    if 0 < n < len(train):
        pick = stratified_pick(train.labels, n, torch.Generator().manual_seed(cfg.train.seed))
    if source.kind == "memory":
        return fit_preprocessor(cfg.preprocess, train.images if pick is None else
                                train.images[pick])
    indices = list(range(len(train))) if pick is None else pick.tolist()
    sample = train.decode(indices, cfg.data.image_size or None).permute(0, 3, 1, 2)
    return fit_preprocessor(cfg.preprocess, sample)


def stored_shape(source: Source, cfg: C.DataConfig) -> tuple[int, int, int]:
    """(C, H, W) of the training images as the loader delivers them, before augmentation."""
    train = source.splits["train"]
    if source.kind == "memory":
        return tuple(train.images.shape[1:])  # type: ignore[return-value]
    return _stored_shape(train, cfg.image_size)


def build_pipeline(cfg: C.Config, device: torch.device, *, rank: int = 0, world_size: int = 1,
                   preprocess_state: dict[str, Any] | None = None) -> Pipeline:
    """Loaders for training and per-epoch evaluation.

    `preprocess_state` (from a checkpoint) is used instead of fitting, so a resumed run
    normalises exactly as before. The train batch is ``train.batch_size // world_size`` per
    rank; every rank evaluates the whole evaluation split.
    """
    source = open_source(cfg)
    split = resolve_eval_split(cfg.data.eval_split, list(source.splits), cfg.data.source)
    if preprocess_state is not None:
        preprocess = Preprocessor.from_state(preprocess_state)
    else:
        preprocess = fit_on_train(cfg, source)
    preprocess = preprocess.to(device)
    train = make_loader(source, "train", cfg, device, preprocess, train=True, rank=rank,
                        world_size=world_size)
    evaluation = make_loader(source, split, cfg, device, preprocess, train=False)
    return Pipeline(source.name, source.classes, stored_shape(source, cfg.data), split, train,
                    evaluation, preprocess, len(source.splits["train"]),
                    len(source.splits[split]), source.kind)


def _stream_splits(cfg: C.Config) -> tuple[Any, dict[str, Any]]:
    """The opened pack and its splits after ``limit`` and ``val_fraction`` (index views)."""
    from convzoo.data.records import open_packed

    packed = open_packed(packed_path(cfg.data.source))  # type: ignore[arg-type]
    splits = dict(packed.splits)
    if "train" not in splits:
        raise ConvzooError(f"{cfg.data.source}: packed dataset has no train split")
    if cfg.data.limit:
        limit_splits(splits, cfg.data.limit, cfg.train.seed)
    if cfg.data.val_fraction:
        carve_val(splits, cfg.data.val_fraction, cfg.train.seed, cfg.data.source)
    return packed, splits
