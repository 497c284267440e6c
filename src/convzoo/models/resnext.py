"""Seed E: ResNeXt-29 (8x16d) for CIFAR-10, from the Keras ``my_resnext`` script.

conv3x3 64 - BN - ReLU, then three sets of three bottleneck blocks with cardinality 8 and
bottleneck widths 128, 256, 512 (output widths 256, 512, 1024), global average pool,
bias-free linear classifier. Block: 1x1 conv to the width - BN - ReLU, grouped 3x3 conv
(8 groups of width/8 channels, carrying the stride) - BN - ReLU, 1x1 conv to twice the width
- BN, plus the shortcut, ReLU. The shortcut is a 1x1 conv (with the block's stride) + BN
whenever the channel count changes (first block of every set), identity otherwise.

Exactness notes:

- No conv has a bias and neither has the classifier: 5,646,656 trainable parameters and
  2 x 12,608 = 25,216 BN running values for 10 classes, Keras's "Trainable params:
  5,646,656 / Non-trainable params: 25,216" (5,671,872 in total).
- The seed slices the channels with ``Lambda`` and runs 8 separate convs; one conv with
  ``groups=8`` is the same function (same weights, group g reads channels g*w..(g+1)*w).
- Padding: Keras ``padding='same'`` with stride 2 pads asymmetrically (TensorFlow rule:
  total = max((ceil(n/s) - 1) * s + k - n, 0), the extra pixel at the bottom/right), so on
  32x32 the stride-2 3x3 conv pads 0 on top/left and 1 on bottom/right. ``tf_padding=True``
  (default) reproduces that; ``tf_padding=False`` uses PyTorch's symmetric padding=1.
  The 1x1 stride-2 shortcut needs no padding either way.
- Initialisation: Keras 2 ``he_normal`` is a normal truncated at two standard deviations
  with std sqrt(2 / fan_in) (fan_in = k*k*in_channels/groups), for every conv and the
  classifier; BN gamma 1, beta 0. PyTorch's BN eps/momentum are kept (Keras: 1e-3, 0.99).
- The seed's L2 weight decay of 5e-4 on every kernel is an optimizer setting (recipe).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convzoo.models.heads import new_head
from convzoo.models.registry import register_model


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow 'same' for one spatial dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _he_normal(m: nn.Conv2d | nn.Linear) -> None:
    """Keras 2 he_normal: normal truncated at 2 std, std sqrt(2 / fan_in), fan_in k*k*in/groups."""
    std = math.sqrt(2.0 / m.weight[0].numel())
    nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)


class GroupedConv(nn.Conv2d):
    """3x3 grouped conv with Keras/TensorFlow 'same' padding (asymmetric when stride 2)."""

    def __init__(self, ch: int, groups: int, stride: int, tf_padding: bool) -> None:
        pad = 0 if tf_padding and stride > 1 else 1
        super().__init__(ch, ch, 3, stride, pad, groups=groups, bias=False)
        self.tf_padding = tf_padding and stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_padding:
            top, bottom = _tf_same_pad(x.shape[-2], 3, self.stride[0])
            left, right = _tf_same_pad(x.shape[-1], 3, self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class Bottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 (stride) -> 1x1 (2x width), + shortcut, ReLU."""

    def __init__(
        self, in_ch: int, width: int, cardinality: int, stride: int, tf_padding: bool = True
    ) -> None:
        super().__init__()
        out_ch = 2 * width
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = GroupedConv(width, cardinality, stride, tf_padding)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if in_ch != out_ch:  # the seed's test: input channels != 2 * filters
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + self.shortcut(x))


class ResNeXtCifar(nn.Module):
    """ResNeXt for CIFAR: stem conv 64, sets of bottleneck blocks, GAP, bias-free linear."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        cardinality: int = 8,
        widths: tuple[int, ...] = (128, 256, 512),
        blocks_per_set: int = 3,
        tf_padding: bool = True,
    ) -> None:
        super().__init__()
        if any(w % cardinality for w in widths):
            raise ValueError(f"widths {widths} must be divisible by cardinality {cardinality}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        ch = 64
        for s, width in enumerate(widths):
            for i in range(blocks_per_set):
                stride = 2 if s > 0 and i == 0 else 1
                blocks.append(Bottleneck(ch, width, cardinality, stride, tf_padding))
                ch = 2 * width
        self.blocks = nn.Sequential(*blocks)
        self.blocks_per_set, self.num_features, self.num_classes = blocks_per_set, ch, num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                _he_normal(m)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new bias-free classifier, Keras he_normal as at build."""
        self.fc = new_head(self.num_features, num_classes, bias=False, init=_he_normal)
        self.num_classes = num_classes

    def stage_names(self) -> list[list[str]]:
        """The stem, then each set of bottleneck blocks."""
        b = self.blocks_per_set
        return [["stem"]] + [[f"blocks.{i}" for i in range(s * b, (s + 1) * b)]
                             for s in range(len(self.blocks) // b)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


@register_model(
    source="Keras my_resnext (seed E)",
    input_size=(3, 32, 32),
    description="ResNeXt-29 8x16d (widths 128/256/512), grouped conv, bias-free classifier",
)
def resnext29_8x16d(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNeXtCifar:
    """Seed E's network; keyword: tf_padding (Keras asymmetric 'same' padding, default True)."""
    return ResNeXtCifar(num_classes=num_classes, in_chans=in_chans, **kwargs)
