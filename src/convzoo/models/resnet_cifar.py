"""CIFAR ResNets of He et al. 2015 ("Deep Residual Learning", section 4.2), 6n+2 layers.

Structure (all variants): conv3x3(16)-BN-ReLU, three stages of n basic blocks at 16/32/64
channels (the first block of stages 2 and 3 has stride 2), global average pool, linear.
A basic block is conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

Variants, selected by keyword (the defaults reproduce the paper):

- ``shortcut="A"`` (paper, "option A"): parameter-free; the input is subsampled by taking
  every second pixel and the new channels are zeros appended after the old ones. Parameter
  counts for 10 classes: 269,722 / 464,154 / 658,586 / 853,018 / 1,727,962 for
  20/32/44/56/110 (the paper's 0.27M/0.46M/0.66M/0.85M/1.7M; convs have no bias, the
  classifier has one).
- ``shortcut="projection"`` (seed B, neon ``cifar10_msra.py``): a 1x1 stride-2 conv without
  bias or BN whose weight is initialised to the identity (neon ``IdentityInit``: input
  channel i -> output channel i, the new channels start at zero); trainable.
  ``fc_bn=True`` (seed B): the classifier is a bias-free linear layer followed by
  BatchNorm1d (neon ``Affine(batch_norm=True)`` carries no bias).
- ``shortcut="chainer"`` (seed C, chainer-cifar ``ResidualBlock``): zero channels are
  concatenated *in front of* the input, then ``average_pooling_2d(x, 1, 2)``. The seed's
  pooling window is 1 (ksize=1, stride=2), i.e. plain subsampling, although the blog text
  calls it average pooling; we reproduce the code. Used by ``resnet74`` (n=12), whose convs
  and classifier have biases (Chainer's default), block convs are initialised with
  wscale=sqrt(2) (He normal) and the stem conv and classifier with wscale=1
  (N(0, 1/fan_in)), biases zero.

Stochastic depth (``drop_path=p``, seed C): during training each non-downsampling block
is skipped for the whole mini-batch with probability p_i rising linearly from 0 (first
block) to p (last block); the two downsampling blocks are never skipped. In eval mode the
residual branch is multiplied by its survival probability 1 - p_i. Under ``torch.compile``
the branch is computed and multiplied by the 0/1 coin instead of skipped (same outputs, no
graph break; its BN statistics then update as usual). The numbering follows
the seed exactly: the 3n-2 non-downsampling blocks get indices 0..3n-3 and
p_i = p * i / (3n-3).

Initialisation (He et al. / neon ``Kaiming``): every conv and linear weight ~ N(0, 2/fan_in),
biases 0, BN weight 1, bias 0. Global average pooling is adaptive, so any input size works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convzoo.models.heads import new_head
from convzoo.models.registry import register_model

SHORTCUTS = ("A", "projection", "chainer")


def _normal_fan_in(m: nn.Conv2d | nn.Linear, gain: float) -> None:
    """weight ~ N(0, gain / fan_in) (He for gain 2, LeCun / Chainer wscale 1 for gain 1), bias 0."""
    nn.init.normal_(m.weight, 0.0, math.sqrt(gain / m.weight[0].numel()))
    if m.bias is not None:
        nn.init.zeros_(m.bias)


class Shortcut(nn.Module):
    """The shortcut of a block whose shape changes: (B, Cin, H, W) -> (B, Cout, ceil(H/2), ...)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kind: str) -> None:
        super().__init__()
        self.kind, self.pad, self.stride = kind, out_ch - in_ch, stride
        self.proj: nn.Conv2d | None = None
        if kind == "projection":
            self.proj = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            with torch.no_grad():  # neon IdentityInit: W[:, :nin] = eye(nin) in (nin, nout)
                self.proj.weight.zero_()
                idx = torch.arange(in_ch)
                self.proj.weight[idx, idx, 0, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        if self.stride > 1:  # kernel-1 stride-s subsampling ("chainer": avg pool, ksize 1)
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad > 0:
            # zeros after the old channels (option A) or in front of them (Chainer concat((p, x)))
            pad = (0, 0, 0, 0, self.pad, 0) if self.kind == "chainer" else (0, 0, 0, 0, 0, self.pad)
            x = F.pad(x, pad)
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU, with optional stochastic depth."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        shortcut: str = "A",
        drop_prob: float = 0.0,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(out_ch)
        changes = stride != 1 or in_ch != out_ch
        self.shortcut = Shortcut(in_ch, out_ch, stride, shortcut) if changes else nn.Identity()
        self.drop_prob = drop_prob  # probability of skipping the residual branch in training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        keep: torch.Tensor | None = None
        if self.training and self.drop_prob > 0.0:
            if torch.compiler.is_compiling():
                # No data-dependent branch inside a compiled graph: run the branch, mask it.
                keep = (torch.rand((), device=x.device) >= self.drop_prob).to(x.dtype)
            elif torch.rand(()).item() < self.drop_prob:
                # One coin per mini-batch, as in the seed; drawn on the CPU so no device sync.
                return F.relu(identity)
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if keep is not None:
            h = h * keep
        elif not self.training and self.drop_prob > 0.0:
            h = h * (1.0 - self.drop_prob)  # expected value of the branch at test time
        return F.relu(h + identity)


class ResNetCifar(nn.Module):
    """6n+2-layer CIFAR ResNet; see the module docstring for the variants."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        fc_bn: bool = False,
        drop_path: float = 0.0,
        conv_bias: bool = False,
        fc_bias: bool | None = None,
        init: str = "kaiming",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        if init not in ("kaiming", "chainer"):
            raise ValueError(f"init must be 'kaiming' or 'chainer', got {init!r}")
        n = (depth - 2) // 6
        # Stochastic depth skips whole blocks in some steps (and on some ranks): DDP must look
        # for unused parameters every step (training/distributed.py).
        self.dynamic_graph = drop_path > 0.0
        self.depth, self.num_classes, self.init_rule = depth, num_classes, init
        self.blocks_per_stage = n
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=conv_bias),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        last_index = max(3 * n - 3, 1)  # seed C: skip_size = 3n - 3
        blocks: list[nn.Module] = []
        in_ch, index = widths[0], 0
        for stage, width in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if stride == 1 and in_ch == width:
                    prob = drop_path * index / last_index
                    index += 1
                else:
                    prob = 0.0  # downsampling blocks are never skipped (seed C)
                blocks.append(BasicBlock(in_ch, width, stride, shortcut, prob, conv_bias))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if fc_bias is None:
            fc_bias = not fc_bn  # neon's Affine with batch_norm has no bias
        self.num_features, self.fc_bias, self.has_fc_bn = in_ch, fc_bias, fc_bn
        self.fc = nn.Linear(in_ch, num_classes, bias=fc_bias)
        self.fc_bn = nn.BatchNorm1d(num_classes) if fc_bn else nn.Identity()
        self._init_weights(init)

    def _init_weights(self, init: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                    continue  # projection shortcut keeps its identity initialisation
                # Chainer wscale=1 for the stem conv and classifier, He (gain 2) elsewhere
                gain = 1.0 if init == "chainer" and (m is self.stem[0] or m is self.fc) else 2.0
                _normal_fan_in(m, gain)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """The linear classifier, followed by its BatchNorm1d on the logits with ``fc_bn``."""
        return self.fc if isinstance(self.fc_bn, nn.Identity) else nn.Sequential(self.fc,
                                                                                   self.fc_bn)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier (and logit BatchNorm1d with ``fc_bn``), initialised as at build."""
        gain = 1.0 if self.init_rule == "chainer" else 2.0
        self.fc = new_head(self.num_features, num_classes, bias=self.fc_bias,
                           init=lambda m: _normal_fan_in(m, gain))
        self.fc_bn = nn.BatchNorm1d(num_classes) if self.has_fc_bn and num_classes else nn.Identity()
        self.num_classes = num_classes

    def stage_names(self) -> list[list[str]]:
        """The stem, then the n blocks of each width."""
        n = self.blocks_per_stage
        return [["stem"]] + [[f"blocks.{i}" for i in range(s * n, (s + 1) * n)]
                             for s in range(len(self.blocks) // n)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 64) pooled features."""
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_bn(self.fc(self.forward_features(x)))


_SRC_HE = "He et al. 2015 / neon cifar10_msra (seed B)"
_CIFAR = (3, 32, 32)


def _resnet(depth: int, num_classes: int, in_chans: int, **kwargs) -> ResNetCifar:
    return ResNetCifar(depth=depth, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(source=_SRC_HE, input_size=_CIFAR, description="CIFAR ResNet-20 (n=3), option A")
def resnet20(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNetCifar:
    """ResNet-20 for CIFAR; keywords: shortcut, fc_bn, drop_path, conv_bias."""
    return _resnet(20, num_classes, in_chans, **kwargs)


@register_model(source=_SRC_HE, input_size=_CIFAR, description="CIFAR ResNet-32 (n=5), option A")
def resnet32(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNetCifar:
    """ResNet-32 for CIFAR; keywords: shortcut, fc_bn, drop_path, conv_bias."""
    return _resnet(32, num_classes, in_chans, **kwargs)


@register_model(source=_SRC_HE, input_size=_CIFAR, description="CIFAR ResNet-44 (n=7), option A")
def resnet44(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNetCifar:
    """ResNet-44 for CIFAR; keywords: shortcut, fc_bn, drop_path, conv_bias."""
    return _resnet(44, num_classes, in_chans, **kwargs)


@register_model(source=_SRC_HE, input_size=_CIFAR, description="CIFAR ResNet-56 (n=9), option A")
def resnet56(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNetCifar:
    """ResNet-56 for CIFAR; keywords: shortcut, fc_bn, drop_path, conv_bias."""
    return _resnet(56, num_classes, in_chans, **kwargs)


@register_model(
    source=_SRC_HE, input_size=_CIFAR, description="CIFAR ResNet-110 (n=18), option A"
)
def resnet110(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNetCifar:
    """ResNet-110 for CIFAR; keywords: shortcut, fc_bn, drop_path, conv_bias."""
    return _resnet(110, num_classes, in_chans, **kwargs)


@register_model(
    source="chainer-cifar ResidualNet (seed C)",
    input_size=_CIFAR,
    description="CIFAR ResNet-74 (n=12), zero-pad shortcut; drop_path=0.5 for stochastic depth",
)
def resnet74(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNetCifar:
    """Seed C's 74-layer ResNet: Chainer shortcut, conv biases, Chainer init.

    ``drop_path=0.5`` gives the seed's stochastic-depth run; ``conv_bias=False`` drops the
    (redundant, BN follows) conv biases.
    """
    kwargs.setdefault("shortcut", "chainer")
    kwargs.setdefault("conv_bias", True)
    kwargs.setdefault("init", "chainer")
    return _resnet(74, num_classes, in_chans, **kwargs)
