"""torchvision's ImageNet networks, wrapped (not rewritten) into the registry.

Always built with ``weights=None``: random initialisation by torchvision's own rules, no
downloads (``convzoo.models.weights.load_init(model, "torchvision:DEFAULT", arch=name)`` loads
torchvision's named weights afterwards, head replaced when the class count differs). ``in_chans != 3`` replaces the first conv with one of the same shape otherwise,
initialised as torchvision initialises convs of that family. Extra keywords go to the
torchvision builder (e.g. ``zero_init_residual=True`` for the ResNets, ``dropout=`` for VGG).
"""

from __future__ import annotations

import torchvision
from torch import nn

from convzoo.models.heads import new_head, split_after_pools
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


# The builders stay torchvision's; the instance they return is re-classed to a subclass that
# only adds the zoo's classifier interface (no new state: state dicts, isinstance checks and
# torchvision's weights load unchanged).


class ResNet(torchvision.models.ResNet):
    """torchvision's ResNet with ``get_classifier``/``reset_classifier``/``stage_names``."""

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``fc`` (PyTorch's default Linear init, as torchvision's ResNet has)."""
        self.fc = new_head(self.num_features, num_classes)

    def stage_names(self) -> list[list[str]]:
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


class VGG(torchvision.models.VGG):
    """torchvision's VGG with ``get_classifier``/``reset_classifier``/``stage_names``."""

    def get_classifier(self) -> nn.Module:
        return self.classifier[6]

    def reset_classifier(self, num_classes: int) -> None:
        """A new last layer, N(0, 0.01) weights and zero bias as torchvision initialises it."""
        def init(m: nn.Linear) -> None:
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)

        self.classifier[6] = new_head(self.num_features, num_classes, init=init)

    def stage_names(self) -> list[list[str]]:
        """One stage per resolution (5 at 224 px): conv-BN-ReLU layers up to each max pool."""
        return split_after_pools(self.features, "features")


def _adopt(model: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """`model` re-classed to `cls`, with timm's ``num_features`` (the head's input width)."""
    model.__class__ = cls
    model.num_features = model.get_classifier().in_features
    return model


@register_model(source=_SOURCE, input_size=_IMAGENET, description="torchvision ResNet-18")
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """torchvision ``resnet18(weights=None)``."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.conv1 = _replace_conv(model.conv1, in_chans)
    return _adopt(model, ResNet)


@register_model(source=_SOURCE, input_size=_IMAGENET, description="torchvision ResNet-50")
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """torchvision ``resnet50(weights=None)``."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.conv1 = _replace_conv(model.conv1, in_chans)
    return _adopt(model, ResNet)


@register_model(source=_SOURCE, input_size=_IMAGENET, description="torchvision VGG-16 with BN")
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """torchvision ``vgg16_bn(weights=None)``."""
    model = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        model.features[0] = _replace_conv(model.features[0], in_chans)
    return _adopt(model, VGG)
