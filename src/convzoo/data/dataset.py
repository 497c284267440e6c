"""The containers of images and labels, and the one interface they share.

Two kinds of split hold a set's images:

- `Split`: decoded, in memory, one uint8 (N, C, H, W) tensor (CIFAR, digits, folders, a pack
  loaded whole).
- `convzoo.data.packs.reader.PackedSplit`: records in a pack, decoded when read.

Both satisfy `ImageSplit`: ``len``, ``labels``, ``names``, ``subset`` (limit, val carving),
``relabel`` (a run's class numbering) and ``images_at`` (uint8 images brought to a geometry).
The containers of splits, `Dataset` (in memory), `PackedDataset` (a pack) and the pipeline's
`Source` (either, opened for one run), satisfy `ImageSet`: ``name``, ``classes``,
``num_classes`` and ``splits``. Code that takes a set (the pipeline, `convzoo eval`'s report)
reads it through these and never asks which kind it holds; only the choice of loader does
(resident for a `Split`, streaming for a `PackedSplit`).

This module sits above `convzoo.data.images` (decoding, `Geometry`) and nothing in that module
imports it back: `images.decode_splits` returns plain tensors, which the sources wrap in
`Split`s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from convzoo.data.images import DEFAULT_LIMITS, Geometry, Limits, resolve_geometry
from convzoo.errors import ConvzooError

Indices = Sequence[int] | torch.Tensor


class ImageSplit(Protocol):
    """One split of a set, wherever its images are (see the module docstring)."""

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels, in image order."""
        ...

    @property
    def names(self) -> list[str] | None:
        """(N,) file of each image, where the source has files; else None."""
        ...

    def __len__(self) -> int: ...

    def subset(self, index: Indices) -> ImageSplit:
        """The images at `index`, in that order (no copy of encoded data)."""
        ...

    def relabel(self, mapping: torch.Tensor) -> ImageSplit:
        """The split with label l read as ``mapping[l]``."""
        ...

    def images_at(self, indices: Indices | None = None, geometry: Geometry | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
        """uint8 (n, C, H, W) images at `indices` (None: all), brought to `geometry`."""
        ...


class ImageSet(Protocol):
    """Classes and splits: `Dataset`, `PackedDataset` and the pipeline's `Source`."""

    name: str
    classes: list[str]

    @property
    def splits(self) -> Mapping[str, ImageSplit]: ...

    @property
    def num_classes(self) -> int: ...


@dataclass
class Split:
    """One split held in memory: images as one uint8 tensor, labels as int64."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    names: list[str] | None = None  # (N,) file of each image, where the source has files

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (N,) and match the number of images")
        if self.names is not None and len(self.names) != len(self.labels):
            raise ValueError("names must match the number of images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> Split:
        names = None if self.names is None else [self.names[i] for i in index.tolist()]
        return Split(self.images[index], self.labels[index], names)

    def relabel(self, mapping: torch.Tensor) -> Split:
        """The same images with label l read as ``mapping[l]`` (classes renumbered to a run's)."""
        return Split(self.images, mapping[self.labels], self.names)

    def images_at(self, indices: Indices | None = None, geometry: Geometry | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
        """uint8 (n, C, H, W) images at `indices` (None: all, without a copy). They are decoded
        already (`limits` has nothing left to bound) and at their set's geometry, which
        `geometry.apply` leaves as they are."""
        images = self.images if indices is None else self.images[indices]
        return images if geometry is None else geometry.apply(images)


@dataclass
class Dataset:
    """A named dataset: class names, its splits ("train", "val", "test"), the geometry its
    images were brought to, and the files skipped as unreadable (``data.skip_bad``)."""

    name: str
    classes: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    geometry: Geometry | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images."""
        return tuple(next(iter(self.splits.values())).images.shape[1:])  # type: ignore[return-value]

    def geometry_for(self, *, channels: int, image_size: int, resize: str) -> Geometry:
        """What its images become under ``data.channels`` / ``image_size`` / ``resize``
        (`images.resolve_geometry` of their one stored shape)."""
        c, h, w = self.image_shape
        count = sum(len(s) for s in self.splits.values())
        return resolve_geometry(c, Counter({(h, w): count}), channels=channels,
                                image_size=image_size, resize=resize, name=self.name)


def from_decoded(decoded: Mapping[str, tuple[torch.Tensor, torch.Tensor, list[str]]]
                 ) -> dict[str, Split]:
    """`Split`s of `images.decode_splits`' (images, labels, names) per split."""
    return {name: Split(*parts) for name, parts in decoded.items()}


class SplitImages:
    """``view[i]`` -> uint8 (C, H, W) image i of a split, read when asked: a report reads only
    the images it shows, so a packed split decodes just those."""

    def __init__(self, split: ImageSplit, geometry: Geometry | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.split, self.geometry, self.limits = split, geometry, limits

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.split.images_at([i], self.geometry, self.limits)[0]


# ----------------------------------------------------------------------------- splitting


def stratified_pick(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of `k` items drawn at random with each class in proportion.

    Each class c of n_c items gets floor(k * n_c / n) picks; the picks left over go to the
    classes with the largest remainders, so the total is exactly k.
    """
    n = len(labels)
    k = max(0, min(k, n))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * k / n
    quota = exact.floor().long()
    short = k - int(quota.sum())
    if short > 0:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:short]] += 1
    picks = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:q]])
    return torch.sort(torch.cat(picks)).values if picks else torch.empty(0, dtype=torch.long)


def limit_splits(splits: dict[str, Any], limit: int, seed: int) -> None:
    """Cap every split (any `ImageSplit`) at `limit` items (stratified, seeded), in place."""
    gen = torch.Generator().manual_seed(seed)
    for name in sorted(splits):
        split = splits[name]
        if len(split) > limit:
            splits[name] = split.subset(stratified_pick(split.labels, limit, gen))


def carve_val(splits: dict[str, Any], fraction: float, seed: int, source: str) -> None:
    """Move a stratified, seeded `fraction` of "train" into a new "val" split, in place."""
    if "val" in splits:
        raise ConvzooError(f"data.val_fraction={fraction} but data source '{source}' already "
                           f"has a val split; set data.val_fraction=0")
    train = splits["train"]
    k = round(fraction * len(train))
    if k < 1 or k >= len(train):
        raise ConvzooError(f"data.val_fraction={fraction} of {len(train)} train images leaves "
                           f"an empty train or val split")
    gen = torch.Generator().manual_seed(seed)
    val_idx = stratified_pick(train.labels, k, gen)
    mask = torch.ones(len(train), dtype=torch.bool)
    mask[val_idx] = False
    splits["val"] = train.subset(val_idx)
    splits["train"] = train.subset(torch.nonzero(mask).flatten())
