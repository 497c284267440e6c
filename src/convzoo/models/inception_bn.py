"""Seed A: the stem-less "sub-Inception-BN" with randomized leaky ReLU (MXNet CIFAR-100 notebook).

Inception modules straight on the 3x28x28 input: 3a, 3b (type A), 3c (type B, 28->14),
4a-4d (A), 4e (B, 14->7), 5a, 5b (A), global average pool, linear (with bias). Every conv
is Conv -> BatchNorm -> RReLU; the filter numbers are the seed's (see ``_CONFIG``).

Exactness notes (checked against the MXNet operators of the seed's time):

- Conv biases: MXNet ``Convolution`` has a bias unless ``no_bias=True``; the seed never sets
  it, so every conv carries one (``conv_bias=True``, the default). The bias is redundant in
  front of batch norm; ``conv_bias=False`` drops it (9,696 fewer parameters).
- Batch norm: MXNet's BatchNorm of 2015 had a learnable gamma and beta (no ``fix_gamma``
  yet) and two running statistics, hence 10,205,348 trainable parameters and
  2 x 9,696 = 19,392 running values for 100 classes. PyTorch's default eps/momentum are used
  (MXNet then: eps 1e-10, moving average keeping 10% of the old value).
- RReLU: MXNet ``LeakyReLU(act_type='rrelu')`` draws a slope per element from
  U(0.125, 0.334) in training and uses the mean slope (0.125 + 0.334) / 2 at test time,
  which is exactly ``torch.nn.RReLU(0.125, 0.334)``.
- Pooling: the type-B 3x3 stride-2 max pool has no padding; MXNet then rounded the output
  size up, so ``ceil_mode=True`` (28->14, 14->7, matching the stride-2 convs). The type-A
  3x3 stride-1 pad-1 average pool counts the padding in the divisor, as MXNet did.
- Global 7x7 average pool: ``AdaptiveAvgPool2d(1)`` (identical at 28x28, works at any size).
- Initialisation: the seed builds ``mx.model.FeedForward`` without an initializer, whose
  default is ``Uniform(0.01)``: every conv/linear weight ~ U(-0.01, 0.01), biases 0,
  BN gamma 1, beta 0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from convzoo.models.blocks import ConvBNAct
from convzoo.models.heads import new_head
from convzoo.models.registry import register_model

RRELU_LOWER, RRELU_UPPER = 0.125, 0.334  # MXNet LeakyReLU rrelu defaults


def _uniform_001(m: nn.Conv2d | nn.Linear) -> None:
    """MXNet FeedForward's default initializer Uniform(0.01); bias 0."""
    nn.init.uniform_(m.weight, -0.01, 0.01)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


# MXNet ConvFactory: Conv -> BatchNorm -> RReLU
ConvBNRReLU = partial(ConvBNAct, act=partial(nn.RReLU, RRELU_LOWER, RRELU_UPPER))


class InceptionA(nn.Module):
    """1x1 | 1x1->3x3 | 1x1->3x3->3x3 | 3x3 pool (s1, p1)->1x1, concatenated; size kept."""

    def __init__(
        self, in_ch: int, n1x1: int, n3x3red: int, n3x3: int, nd3x3red: int, nd3x3: int,
        pool: str, proj: int, conv_bias: bool = True,
    ) -> None:
        super().__init__()
        cb = conv_bias
        self.b1 = ConvBNRReLU(in_ch, n1x1, 1, conv_bias=cb)
        self.b2 = nn.Sequential(
            ConvBNRReLU(in_ch, n3x3red, 1, conv_bias=cb),
            ConvBNRReLU(n3x3red, n3x3, 3, pad=1, conv_bias=cb),
        )
        self.b3 = nn.Sequential(
            ConvBNRReLU(in_ch, nd3x3red, 1, conv_bias=cb),
            ConvBNRReLU(nd3x3red, nd3x3, 3, pad=1, conv_bias=cb),
            ConvBNRReLU(nd3x3, nd3x3, 3, pad=1, conv_bias=cb),
        )
        pool_layer = (
            nn.AvgPool2d(3, 1, 1) if pool == "avg" else nn.MaxPool2d(3, 1, 1)
        )
        self.b4 = nn.Sequential(pool_layer, ConvBNRReLU(in_ch, proj, 1, conv_bias=cb))
        self.out_channels = n1x1 + n3x3 + nd3x3 + proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class InceptionB(nn.Module):
    """1x1->3x3/2 | 1x1->3x3->3x3/2 | 3x3/2 max pool (ceil), concatenated; size halved."""

    def __init__(
        self, in_ch: int, n3x3red: int, n3x3: int, nd3x3red: int, nd3x3: int,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        cb = conv_bias
        self.b1 = nn.Sequential(
            ConvBNRReLU(in_ch, n3x3red, 1, conv_bias=cb),
            ConvBNRReLU(n3x3red, n3x3, 3, stride=2, pad=1, conv_bias=cb),
        )
        self.b2 = nn.Sequential(
            ConvBNRReLU(in_ch, nd3x3red, 1, conv_bias=cb),
            ConvBNRReLU(nd3x3red, nd3x3, 3, pad=1, conv_bias=cb),
            ConvBNRReLU(nd3x3, nd3x3, 3, stride=2, pad=1, conv_bias=cb),
        )
        self.b3 = nn.MaxPool2d(3, 2, ceil_mode=True)  # MXNet of 2015 rounded pooling up
        self.out_channels = n3x3 + nd3x3 + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)


# (type, filter numbers...) in the seed's order
_CONFIG: list[tuple] = [
    ("A", 64, 64, 64, 64, 96, "avg", 32),  # 3a
    ("A", 64, 64, 96, 64, 96, "avg", 64),  # 3b
    ("B", 128, 160, 64, 96),  # 3c: 28 -> 14
    ("A", 224, 64, 96, 96, 128, "avg", 128),  # 4a
    ("A", 192, 96, 128, 96, 128, "avg", 128),  # 4b
    ("A", 160, 128, 160, 128, 160, "avg", 128),  # 4c
    ("A", 96, 128, 192, 160, 192, "avg", 128),  # 4d
    ("B", 128, 192, 192, 256),  # 4e: 14 -> 7
    ("A", 352, 192, 320, 160, 224, "avg", 128),  # 5a
    ("A", 352, 192, 320, 192, 224, "max", 128),  # 5b
]


class InceptionBNSmall(nn.Module):
    """Stem-less Inception-BN with RReLU for 28x28 input (seed A). Output 1024 channels."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, conv_bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_chans
        for kind, *args in _CONFIG:
            block = InceptionA(ch, *args, conv_bias=conv_bias) if kind == "A" else InceptionB(
                ch, *args, conv_bias=conv_bias
            )
            layers.append(block)
            ch = block.out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features, self.num_classes = ch, num_classes
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                _uniform_001(m)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier, MXNet Uniform(0.01) as at build."""
        self.fc = new_head(self.num_features, num_classes, init=_uniform_001)
        self.num_classes = num_classes

    def stage_names(self) -> list[list[str]]:
        """3a-3c (28 px, 3c halves), 4a-4e (14 px, 4e halves), 5a-5b (7 px): cut after type B."""
        stages: list[list[str]] = [[]]
        for i, block in enumerate(self.features):
            stages[-1].append(f"features.{i}")
            if isinstance(block, InceptionB):
                stages.append([])
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model(
    source="MXNet cifar100 sub-Inception-BN + RReLU (seed A)",
    input_size=(3, 28, 28),
    description="stem-less Inception-BN, RReLU, ceil-mode pooling; 28x28 crops of CIFAR-100",
)
def inception_bn_small(num_classes: int = 100, in_chans: int = 3, **kwargs) -> InceptionBNSmall:
    """Seed A's network; keyword: conv_bias (default True, as in MXNet)."""
    return InceptionBNSmall(num_classes=num_classes, in_chans=in_chans, **kwargs)
