"""For the data tests: synthetic photographs (a smooth gradient with noise, realistic enough for
JPEG to compress like a photo, distinct for every seed), folders of them, and a loader's epoch
collected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def photo(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A ``w`` x ``h`` image in ``mode``; the same seed gives the same pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 255 // max(w - 1, 1) + y * 3 + seed * 17) % 256
    arr = np.stack([base, (base + 85) % 256, (base + 170) % 256], -1)
    arr = (arr + rng.integers(0, 20, arr.shape)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def write_photo(path: Path, img: Image.Image) -> None:
    """Save ``img`` at ``path`` (its format from the suffix), creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def large_tree(root: Path) -> Path:
    """``root/{train,test}/{a,b}/*.jpg``: 12 and 3 JPEGs of 80x72 per class, large enough for
    the per-image CPU stage (>= 64x64)."""
    for split, n in (("train", 12), ("test", 3)):
        for c, cls in enumerate(("a", "b")):
            for i in range(n):
                write_photo(root / split / cls / f"{i}.jpg", photo(80, 72, 7 * c + i + 40 * n))
    return root


def epoch_batches(loader, epoch: int) -> tuple[list[torch.Tensor], list[int]]:
    """Every batch of ``loader``'s epoch ``epoch``: the images batch by batch, the labels in
    order."""
    loader.set_epoch(epoch)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.extend(y.tolist())
    return xs, ys
