"""Seed D: GoogLeNet with batch norm after every conv (MXNet ``MxGoogLeNet``), 224x224 input.

Layers (Conv-BN-ReLU everywhere): 7x7/2 conv 64, 3x3/2 max pool, 1x1 conv 64, 3x3 conv 192,
3x3/2 max pool, inception 3a, 3b, max pool, 4a-4e, max pool, 5a, 5b, 7x7 average pool,
dropout 0.4, linear. Inception branches: 1x1 | 1x1->3x3 | 1x1->5x5 | 3x3/1 max pool->1x1.

Exactness notes:

- Conv biases: MXNet ``Convolution`` keeps its bias unless ``no_bias=True`` and the seed never
  sets it, so every conv has one (``conv_bias=True``, the default). That gives 7,013,112
  trainable parameters for 1000 classes (5,966,272 conv weights + 7,280 conv biases +
  2 x 7,280 BN gamma/beta + 1,025,000 classifier) plus 2 x 7,280 = 14,560 BN running
  values; (7,013,112 + 14,560) x 4 bytes = 28.1 MB, the seed's "28.12MB" model file.
  ``conv_bias=False`` drops the 7,280 redundant biases.
- MXNet 1.x BatchNorm defaults to ``fix_gamma=True`` (gamma pinned to 1 and never updated),
  although gamma is still stored in the parameter file and counted above. Our default keeps
  gamma learnable (PyTorch convention); ``fix_gamma=True`` reproduces MXNet's behaviour by
  freezing gamma at 1 (it then stops counting as trainable).
- Pooling: MXNet 1.x pools with ``pooling_convention='valid'`` (round down) and pad 1, so
  224 -> 112 -> 56 -> 28 -> 14 -> 7 as in the seed; PyTorch's default floor mode matches.
  The final 7x7 average pool is ``AdaptiveAvgPool2d(1)`` (identical at 224, works at any
  size, so the network also runs on small inputs).
- Initialisation: ``mx.initializer.Xavier()`` defaults (uniform, averaged fan, magnitude 3)
  equal ``torch.nn.init.xavier_uniform_`` with gain 1, for convs and the classifier;
  biases 0, BN gamma 1, beta 0 (MXNet's rules for ``*_bias``, ``*_gamma``, ``*_beta``).

Small-image stem (``stem="small"``, not in the seed): for 32x32 input the 7x7/2 conv and the
first max pool are replaced by a 3x3/1 conv 64, keeping the rest (1x1 64, 3x3 192, 3x3/2
max pool, ...). Inception 3 then runs at 16x16, 4 at 8x8 and 5 at 4x4; the global average
pool and classifier are unchanged. Only conv1's kernel shape differs from the seed
(3x3x3x64 instead of 7x7x3x64); a 32x32 forward pass costs about 0.96 GFLOPs
(0.48 G multiply-adds).
"""

from __future__ import annotations

import torch
from torch import nn

from convzoo.models.blocks import ConvBNAct
from convzoo.models.heads import new_head, split_after_pools
from convzoo.models.registry import register_model


def _xavier(m: nn.Conv2d | nn.Linear) -> None:
    """MXNet Xavier(uniform, avg, magnitude 3) = xavier_uniform_ with gain 1; bias 0."""
    nn.init.xavier_uniform_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


class Inception(nn.Module):
    """GoogLeNet inception module; output channels n1x1 + n3x3 + n5x5 + proj."""

    def __init__(
        self, in_ch: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
        proj: int, conv_bias: bool = True,
    ) -> None:
        super().__init__()
        cb = conv_bias
        self.b1 = ConvBNAct(in_ch, n1x1, 1, conv_bias=cb)
        self.b2 = nn.Sequential(
            ConvBNAct(in_ch, n3x3red, 1, conv_bias=cb),
            ConvBNAct(n3x3red, n3x3, 3, pad=1, conv_bias=cb),
        )
        self.b3 = nn.Sequential(
            ConvBNAct(in_ch, n5x5red, 1, conv_bias=cb),
            ConvBNAct(n5x5red, n5x5, 5, pad=2, conv_bias=cb),
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBNAct(in_ch, proj, 1, conv_bias=cb))
        self.out_channels = n1x1 + n3x3 + n5x5 + proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


# Inception filter numbers (n1x1, n3x3red, n3x3, n5x5red, n5x5, proj); "M" = 3x3/2 max pool.
_CONFIG: list = [
    (64, 96, 128, 16, 32, 32),  # 3a
    (128, 128, 192, 32, 96, 64),  # 3b
    "M",
    (192, 96, 208, 16, 48, 64),  # 4a
    (160, 112, 224, 24, 64, 64),  # 4b
    (128, 128, 256, 24, 64, 64),  # 4c
    (112, 144, 288, 32, 64, 64),  # 4d
    (256, 160, 320, 32, 128, 128),  # 4e
    "M",
    (256, 160, 320, 32, 128, 128),  # 5a
    (384, 192, 384, 48, 128, 128),  # 5b
]


class GoogLeNetBN(nn.Module):
    """GoogLeNet with Conv-BN-ReLU (seed D); ``stem="small"`` for 32x32 images."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        dropout: float = 0.4,
        conv_bias: bool = True,
        fix_gamma: bool = False,
    ) -> None:
        super().__init__()
        cb = conv_bias
        if stem == "imagenet":  # (3, 224, 224) -> (64, 56, 56)
            first = [ConvBNAct(in_chans, 64, 7, 2, 3, cb), nn.MaxPool2d(3, 2, 1)]
        elif stem == "small":  # (3, 32, 32) -> (64, 32, 32)
            first = [ConvBNAct(in_chans, 64, 3, 1, 1, cb)]
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        self.stem = nn.Sequential(
            *first,
            ConvBNAct(64, 64, 1, conv_bias=cb),
            ConvBNAct(64, 192, 3, pad=1, conv_bias=cb),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        ch = 192
        for item in _CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                layers.append(Inception(ch, *item, conv_bias=cb))
                ch = layers[-1].out_channels
        self.inception = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.num_features, self.num_classes = ch, num_classes
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                _xavier(m)
            elif isinstance(m, nn.BatchNorm2d) and fix_gamma:
                m.weight.requires_grad_(False)  # MXNet fix_gamma: gamma stays 1

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier, MXNet Xavier as at build."""
        self.fc = new_head(self.num_features, num_classes, init=_xavier)
        self.num_classes = num_classes

    def stage_names(self) -> list[list[str]]:
        """The stem, then inception 3 (a-b), 4 (a-e) and 5 (a-b): cut at the max pools."""
        return [["stem"], *split_after_pools(self.inception, "inception")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.inception(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))


@register_model(
    source="MXNet MxGoogLeNet (seed D)",
    input_size=(3, 224, 224),
    description="GoogLeNet with Conv-BN-ReLU, dropout 0.4, Xavier init; stem='small' for 32x32",
)
def googlenet_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNetBN:
    """Seed D's network; keywords: stem ('imagenet'|'small'), dropout, conv_bias, fix_gamma."""
    return GoogLeNetBN(num_classes=num_classes, in_chans=in_chans, **kwargs)
