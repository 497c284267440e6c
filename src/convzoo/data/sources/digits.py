"""scikit-learn's bundled handwritten digits: a real, offline, 10-class image data set.

1,797 grayscale 8x8 images with values 0..16 (UCI optical digits), upscaled so that the
CIFAR-sized models run on them unchanged. Good for quick, meaningful smoke runs.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split
from torchvision.transforms.v2 import functional as TF

from convzoo.data.dataset import Dataset, Split
from convzoo.errors import ConvzooError


def load_digits(
    image_size: int = 32, channels: int = 3, seed: int = 0, test_fraction: float = 0.25
) -> Dataset:
    """Digits as a Dataset with stratified, seeded "train"/"test" splits.

    Pixel values 0..16 are scaled to 0..255 uint8, images resized (bilinear, antialiased)
    from 8x8 to `image_size`, and replicated to RGB when `channels` is 3.
    Classes are "0".."9"; images are (N, channels, image_size, image_size) uint8.
    """
    if channels not in (1, 3):
        raise ConvzooError(f"digits: channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise ConvzooError(f"digits: image_size must be positive, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise ConvzooError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (N, 8, 8)
    images = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != images.shape[-1]:
        images = TF.resize(images, [image_size, image_size],
                           interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    train_idx = torch.from_numpy(np.sort(train_idx))
    test_idx = torch.from_numpy(np.sort(test_idx))
    whole = Split(images, labels)
    return Dataset(
        name="digits",
        classes=[str(i) for i in range(10)],
        splits={"train": whole.subset(train_idx), "test": whole.subset(test_idx)},
    )
