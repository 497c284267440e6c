"""In-memory dataset containers shared by every data source and loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from convzoo.data.images import Geometry


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
