"""Seed C's plain models (chainer-cifar): ``cnn``, ``cnn_bn`` and the VGG-like ``vgg_c``.

cnn:    3x [conv5x5 (64, 64, 128), pad 2 -> ReLU -> 3x3/2 max pool] -> dropout(0.5) ->
        linear 1000 -> ReLU -> dropout(0.5) -> linear 10.
cnn_bn: the same with Conv -> BN -> ReLU (Chainer ``BatchConv2D``).
vgg_c:  conv3x3-BN-ReLU 64, 64, 2x2 max pool, dropout 0.25; 128, 128, pool, dropout 0.25;
        256 x4, pool, dropout 0.25; dropout(0.5) -> linear 1024 -> ReLU -> dropout(0.5) ->
        linear 1024 -> ReLU -> linear 10.

Exactness notes:

- Pooling: Chainer's ``max_pooling_2d`` defaults to ``cover_all=True`` (output size rounded
  up), so ``ceil_mode=True``: 32 -> 16 -> 8 -> 4 with the 3x3/2 pools of ``cnn``, which is
  why the seed's first linear layer takes 4*4*128 inputs. The pool stride defaults to the
  window size, hence 2x2/2 in ``vgg_c``.
- Biases: Chainer's ``Convolution2D`` and ``Linear`` have biases unless ``nobias=True``;
  the seed keeps them, also in front of batch norm (``conv_bias=True``, the default;
  ``conv_bias=False`` drops those redundant ones in ``cnn_bn``/``vgg_c``).
- Initialisation: Chainer's default for both links, W ~ N(0, 1/fan_in) (LeCun normal,
  wscale 1), biases 0; BN gamma 1, beta 0. PyTorch's BN eps/momentum are kept.
- The classifier's input size is fixed by the seed (4x4 after three pools at 32x32); for
  other image sizes pass ``image_size`` and the first linear layer is sized to match.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from convzoo.models.heads import new_head, split_after_pools
from convzoo.models.registry import register_model

_SOURCE = "chainer-cifar (seed C)"


def _pool_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a ceil-mode (Chainer cover_all) pool without padding."""
    return math.ceil((size - kernel) / stride) + 1


def _lecun(m: nn.Conv2d | nn.Linear) -> None:
    """Chainer's default: W ~ N(0, 1/fan_in), bias 0."""
    nn.init.normal_(m.weight, 0.0, math.sqrt(1.0 / m.weight[0].numel()))
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _lecun_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            _lecun(m)


class _ChainerClassifier(nn.Module):
    """The classifier interface of both Chainer nets: the last layer of ``self.classifier``
    maps the hidden features (1000 or 1024) to logits."""

    classifier: nn.Sequential
    features: nn.Sequential

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A new last layer, Chainer's LeCun normal as at build."""
        self.classifier[-1] = new_head(self.num_features, num_classes, init=_lecun)
        self.num_classes = num_classes

    def stage_names(self) -> list[list[str]]:
        """One stage per resolution: the conv blocks up to and including each pool."""
        return split_after_pools(self.features, "features")


def _conv_block(in_ch: int, out_ch: int, kernel: int, bn: bool, conv_bias: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, bias=conv_bias)]
    if bn:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return layers


class ChainerCNN(_ChainerClassifier):
    """Seed C's CNN / CNNBN: three conv5x5 + 3x3/2 max-pool stages, two linear layers."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        batch_norm: bool = False,
        conv_bias: bool = True,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch, size = in_chans, image_size
        for out_ch in (64, 64, 128):
            layers += _conv_block(ch, out_ch, 5, batch_norm, conv_bias or not batch_norm)
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            ch, size = out_ch, _pool_out(size, 3, 2)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(ch * size * size, 1000),  # 4*4*128 at 32x32
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1000, num_classes),
        )
        self.num_features, self.num_classes = 1000, num_classes
        _lecun_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ChainerVGG(_ChainerClassifier):
    """Seed C's VGG-like network (conv3x3-BN-ReLU stacks, dropout 0.25 after each pool)."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, conv_bias: bool = True, image_size: int = 32
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch, size = in_chans, image_size
        for widths in ((64, 64), (128, 128), (256, 256, 256, 256)):
            for out_ch in widths:
                layers += _conv_block(ch, out_ch, 3, True, conv_bias)
                ch = out_ch
            layers += [nn.MaxPool2d(2, 2, ceil_mode=True), nn.Dropout(0.25)]
            size = _pool_out(size, 2, 2)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(ch * size * size, 1024),  # 4*4*256 at 32x32
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )
        self.num_features, self.num_classes = 1024, num_classes
        _lecun_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(source=_SOURCE, input_size=(3, 32, 32), description="3x conv5x5+maxpool, FC 1000")
def cnn(num_classes: int = 10, in_chans: int = 3, image_size: int = 32) -> ChainerCNN:
    """Seed C's plain CNN."""
    return ChainerCNN(num_classes, in_chans, batch_norm=False, image_size=image_size)


@register_model(source=_SOURCE, input_size=(3, 32, 32), description="cnn with batch norm")
def cnn_bn(
    num_classes: int = 10, in_chans: int = 3, conv_bias: bool = True, image_size: int = 32
) -> ChainerCNN:
    """Seed C's CNN with batch norm (conv_bias=False drops the biases in front of BN)."""
    return ChainerCNN(num_classes, in_chans, True, conv_bias, image_size)


@register_model(
    source=_SOURCE, input_size=(3, 32, 32), description="VGG-like conv3x3-BN stacks, FC 1024x2"
)
def vgg_c(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ChainerVGG:
    """Seed C's VGG-like network; keywords: conv_bias, image_size."""
    return ChainerVGG(num_classes=num_classes, in_chans=in_chans, **kwargs)
