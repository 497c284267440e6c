"""From ``cfg.data`` to the trainer's two loaders: resident or streaming, one interface.

``build_pipeline`` decides where the images live:

- ``memory``: ``registry.load_dataset`` decodes every split into one uint8 tensor, which
  ``ResidentLoader`` keeps on the training device (CIFAR, digits, folders, small packs).
- ``stream``: a packed dataset (``convzoo pack``) stays on disk; ``StreamLoader`` reads and
  decodes each batch in worker processes (or on the GPU with nvJPEG).
- ``auto``: ``stream`` for a packed dataset whose decoded train split would exceed
  ``MEMORY_BUDGET_BYTES``, ``memory`` otherwise.

Either way the images are brought to one `Geometry` (``data.channels``, ``image_size``,
``resize``; for eval, the run's own), which the checkpoint records; the trainer gets
``(images float (B, C, H, W) normalised, targets)`` on the device (int64 labels, or soft
targets under mixup/cutmix), and the
preprocessing is fitted on the training split (a seeded, stratified sample of
``preprocess.fit_images`` images when streaming).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from convzoo import config as C
from convzoo.data.dataset import (
    ImageSplit,
    Indices,
    SplitImages,
    carve_val,
    limit_splits,
    stratified_pick,
)
from convzoo.data.images import Geometry, Limits
from convzoo.data.loading.loaders import ResidentLoader, StreamLoader
from convzoo.data.loading.registry import load_dataset, packed_path
from convzoo.data.packs import reader as packed_io
from convzoo.data.packs.remote import fetch_metadata, is_url
from convzoo.data.prepare import once_per_node
from convzoo.data.transforms.augment import build_eval_transform, build_train_augment
from convzoo.data.transforms.preprocess import Preprocessor, fit_preprocessor
from convzoo.errors import ConvzooError

MEMORY_BUDGET_BYTES = 8 * 2**30  # decoded uint8 train split that `auto` still keeps in memory
STREAM_FIT_IMAGES = 10_000  # images decoded to fit preprocessing when streaming (fit_images=0)

Loader = ResidentLoader | StreamLoader


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
    geometry: Geometry  # what every image is brought to; goes into the checkpoint

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def close(self) -> None:
        """Stop both loaders' worker processes (a stage's data is done with)."""
        self.train.close()
        self.eval.close()


def resolve_eval_split(requested: str, available: list[str], source: str) -> str:
    """``auto`` -> val if there is one, else test; otherwise the split must exist."""
    split = requested
    if split == "auto":
        split = "val" if "val" in available else "test"
    if split not in available:
        raise ConvzooError(f"data.eval_split: split '{split}' not in data source {source} "
                           f"(has: {', '.join(sorted(available))})")
    return split


def heldout_split(available: list[str]) -> str:
    """The split to evaluate a run on when it meets new data: test, else val, else the only
    split there is (a split-less ``<class>/*`` folder)."""
    for name in ("test", "val"):
        if name in available:
            return name
    return sorted(available)[0]


def choose_loader(cfg: C.DataConfig, pack: packed_io.PackedDataset | None = None) -> str:
    """``memory`` or ``stream`` for ``cfg.loader`` (see the module docstring). `pack`: the
    source already opened (`open_source` opens a pack once, to size it here and then to read
    it); without it a pack is opened here to be sized."""
    path = packed_path(cfg.source)
    if cfg.loader == "stream" and path is None:
        raise ConvzooError(f"data.loader=stream needs a packed dataset (made by `convzoo pack`); "
                           f"'{cfg.source}' is not one")
    if cfg.loader != "auto" or path is None:
        return "memory" if cfg.loader == "auto" else cfg.loader
    opened = pack if pack is not None else packed_io.open_packed(path, cfg.root)
    try:
        train = opened.splits.get("train")
        if train is None:
            raise ConvzooError(f"{path}: packed dataset has no train split")
        c, h, w = opened.geometry_for(channels=cfg.channels, image_size=cfg.image_size,
                                      resize=cfg.resize).shape
        return "stream" if len(train) * c * h * w > MEMORY_BUDGET_BYTES else "memory"
    finally:
        if opened is not pack:
            opened.close()


# ----------------------------------------------------------------------------- building


@dataclass
class Source:
    """The data of one run, opened: in-memory ``Split``s or packed ``PackedSplit`` views by
    split name (`convzoo.data.dataset.ImageSet`), with ``limit`` and ``val_fraction``
    applied, the `geometry` every image is brought to and the decoding `limits`. `kind` is the
    loader chosen for it: ``memory`` (resident) or ``stream``."""

    name: str
    classes: list[str]
    splits: dict[str, ImageSplit]
    kind: str  # "memory" | "stream"
    geometry: Geometry
    limits: Limits

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images(self, split: str, indices: Indices | None = None) -> torch.Tensor:
        """uint8 (n, C, H, W) images of `split` at `indices` (None: all), at the source's
        geometry: the split's own (in memory: a view; packed: decoded now)."""
        return self.splits[split].images_at(indices, self.geometry, self.limits)

    def view(self, split: str) -> SplitImages:
        """``view[i]`` -> uint8 (C, H, W) image i of `split`, read when asked (a report)."""
        return SplitImages(self.splits[split], self.geometry, self.limits)


def open_source(cfg: C.Config, geometry: Geometry | None = None) -> Source:
    """Load (memory) or open (stream) ``cfg.data`` with ``limit`` and ``val_fraction`` applied,
    brought to `geometry` (default: the one ``cfg.data`` describes). Under torchrun, local
    rank 0 prepares (downloads, decodes, caches) before the node's other ranks. A pack is
    opened once: sized for ``data.loader=auto``, then streamed or decoded into memory."""
    path = packed_path(cfg.data.source)
    if path is not None and is_url(path):  # the remote index into this node's cache, once
        once_per_node(lambda: fetch_metadata(cfg.data.source, cfg.data.root))
    limits = Limits.from_config(cfg.data)
    pack = packed_io.open_packed(path, cfg.data.root) if path is not None else None
    kind = choose_loader(cfg.data, pack)
    if kind == "memory":
        try:
            ds = once_per_node(lambda: load_dataset(cfg.data, seed=cfg.train.seed,
                                                    geometry=geometry, pack=pack))
        finally:
            if pack is not None:
                pack.close()  # decoded into memory: its shard files are done with
        assert ds.geometry is not None
        return Source(ds.name, list(ds.classes), dict(ds.splits), kind, ds.geometry, limits)
    assert pack is not None  # only a pack streams (choose_loader)
    splits: dict[str, ImageSplit] = dict(pack.splits)
    if "train" not in splits and geometry is None:
        raise ConvzooError(f"{cfg.data.source}: packed dataset has no train split")
    if cfg.data.limit:
        limit_splits(splits, cfg.data.limit, cfg.train.seed)
    if cfg.data.val_fraction:
        carve_val(splits, cfg.data.val_fraction, cfg.train.seed, cfg.data.source)
    geo = geometry or pack.geometry_for(channels=cfg.data.channels,
                                        image_size=cfg.data.image_size, resize=cfg.data.resize)
    return Source(pack.name, list(pack.classes), splits, kind, geo, limits)


def remap_classes(source: Source, classes: list[str]) -> Source:
    """`source` with its labels renumbered to `classes` (a run's), matched by name: a subset
    of a run's classes, in any order, is fine; a class the run does not know is an error."""
    if list(source.classes) == list(classes):
        return source
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in source.classes if c not in index]
    if unknown:
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise ConvzooError(f"{source.name}: class '{unknown[0]}' is not one the model knows "
                           f"(its {len(classes)} classes: {shown})")
    mapping = torch.tensor([index[c] for c in source.classes], dtype=torch.int64)
    splits = {name: split.relabel(mapping) for name, split in source.splits.items()}
    return replace(source, classes=list(classes), splits=splits)


def make_loader(source: Source, split: str, cfg: C.Config, device: torch.device,
                preprocess: Preprocessor, *, train: bool, rank: int = 0,
                world_size: int = 1, batch_size: int | None = None) -> Loader:
    """A training loader (shuffled, augmented, training partition over the ranks) or an
    evaluation loader (in order, exact partition over the ranks)."""
    common: dict[str, Any] = dict(device=device, preprocess=preprocess, seed=cfg.train.seed,
                                  rank=rank, world_size=world_size)
    if train:
        common.update(augment=build_train_augment(cfg.augment, seed=cfg.train.seed,
                                                   num_classes=len(source.classes),
                                                   channels=source.geometry.shape[0]),
                      shuffle=True, drop_last=True)
        batch = batch_size or cfg.train.batch_size // world_size
    else:
        common.update(eval_transform=build_eval_transform(cfg.augment))
        batch = batch_size or cfg.train.eval_batch_size
    if source.kind == "stream":
        return StreamLoader(source.splits[split], batch,  # type: ignore[arg-type]
                            workers=cfg.data.workers or None, geometry=source.geometry,
                            limits=source.limits, **common)
    return ResidentLoader(source.splits[split], batch, **common)  # type: ignore[arg-type]


def fit_on_train(cfg: C.Config, source: Source) -> Preprocessor:
    """Fit ``cfg.preprocess`` on the training split: all of it, or a stratified sample of
    ``preprocess.fit_images`` (default when streaming: `STREAM_FIT_IMAGES`, each one decoded
    for the fit)."""
    train = source.splits["train"]
    n = cfg.preprocess.fit_images or (STREAM_FIT_IMAGES if source.kind == "stream" else 0)
    pick = None
    if 0 < n < len(train):
        pick = stratified_pick(train.labels, n, torch.Generator().manual_seed(cfg.train.seed))
    return fit_preprocessor(cfg.preprocess, source.images("train", pick))


def build_pipeline(cfg: C.Config, device: torch.device, *, rank: int = 0, world_size: int = 1,
                   preprocess_state: dict[str, Any] | None = None) -> Pipeline:
    """Loaders for training and per-epoch evaluation.

    `preprocess_state` (from a checkpoint) is used instead of fitting, so a resumed run
    normalises exactly as before. The train batch is ``train.batch_size // world_size`` per
    rank (``train.distributed.check_global_batch`` has checked it divides); each rank
    evaluates its own block of whole eval batches (the exact partition), and
    ``evaluate.evaluate`` gathers the figures.
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
    evaluation = make_loader(source, split, cfg, device, preprocess, train=False, rank=rank,
                             world_size=world_size)
    return Pipeline(source.name, source.classes, source.geometry.shape, split, train,
                    evaluation, preprocess, len(source.splits["train"]),
                    len(source.splits[split]), source.kind, source.geometry)
