"""torchvision's ImageNet networks, wrapped (not rewritten) into the registry.

Always built with ``weights=None``: random initialisation by torchvision's own rules, no
downloads. ``in_chans != 3`` replaces the first conv with one of the same shape otherwise,
initialised as torchvision initialises convs of that family. Extra keywords go to the
torchvision builder (e.g. ``zero_init_residual=True`` for the ResNets, ``dropout=`` for VGG).
"""

from __future__ import annotations

import torchvision
from torch import nn

from convzoo.models.registry import register_model

_SOURCE = "torchvision"
_IMAGENET = (3, 224, 224)


def _replace_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """A copy of `conv`'s configuration that reads `in_chans` channels, freshly initialised."""
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        bias=conv.bias is not None,
    )
    # torchvision's ResNet and VGG both use kaiming normal (fan_out) and zero conv biases
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


@register_model(source=_SOURCE, input_size=_IMAGENET, description="torchvision ResNet-18")
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> nn.Module:
    """torchvision ``resnet18(weights=None)``."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.conv1 = _replace_conv(model.conv1, in_chans)
    return model


@register_model(source=_SOURCE, input_size=_IMAGENET, description="torchvision ResNet-50")
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> nn.Module:
    """torchvision ``resnet50(weights=None)``."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.conv1 = _replace_conv(model.conv1, in_chans)
    return model


@register_model(source=_SOURCE, input_size=_IMAGENET, description="torchvision VGG-16 with BN")
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> nn.Module:
    """torchvision ``vgg16_bn(weights=None)``."""
    model = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.features[0] = _replace_conv(model.features[0], in_chans)
    return model
