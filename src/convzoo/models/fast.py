"""The ``fast`` family: small, wide VGG-style nets built for time-to-accuracy on 32 px images.

The structure follows what the public speed-run literature found works (Page's ResNet-9, tysam's
hlb-CIFAR10, Jordan's airbench, arXiv 2404.00498); the code is convzoo's own:

    whiten   2x2 conv, C -> 2*C*4 channels, no padding, *frozen* weights set from the data
             (``init_from_data``: eigenvectors of the 2x2-patch second-moment matrix, scaled by
             1/sqrt(eigenvalue + eps), plus their negatives), trainable bias for the first
             ``whiten_bias_epochs`` epochs, then GELU. The bias is stored as (C', 1, 1): being
             more than 1-D it is optimised with the weights (lr x1), not with the batch-norm
             shifts (``optim.bias_lr_scale``), as airbench does
    group x3 conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
             (``depth=3``: a third conv3x3 -> BN, added to the group's first activation, GELU)
    head     global max pool -> linear (no bias) -> x ``scale`` (1/9: small initial logits)

Batch norms have their scale frozen at 1 (only the shift trains), eps 1e-12 and a fast-moving
running average (``bn_momentum`` 0.4, torch convention: the weight of each new batch). Every
3x3 conv starts as identity on its first ``in`` output channels (Dirac init: an implicit
residual path). A 32 px input goes 31 -> 15 -> 7 -> 3 -> 1.

Hooks the training loop calls (see ``convzoo.training.loop``):

* ``init_from_data(images)`` once before training, with ``data_init_images`` preprocessed
  training images (float (N, C, H, W)).
* ``set_epoch(epoch)`` at the start of each (1-based) epoch: freezes the whitening bias after
  ``whiten_bias_epochs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convzoo.models.heads import new_head
from convzoo.models.registry import register_model

WHITEN_CHUNK = 1024  # images per chunk while accumulating patch statistics (bounds memory)


class FrozenScaleBN(nn.BatchNorm2d):
    """BatchNorm2d whose scale stays 1 (no gradient); only the shift (bias) is learned."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


def dirac_conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    """3x3 'same' conv without bias: default init, then identity on the first in_ch outputs."""
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(in_ch, out_ch)])
    return conv


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU (depth 2), plus a residual third conv."""

    def __init__(self, in_ch: int, out_ch: int, depth: int, bn_momentum: float) -> None:
        super().__init__()
        if depth not in (2, 3):
            raise ValueError(f"depth must be 2 or 3, got {depth}")
        self.conv1 = dirac_conv(in_ch, out_ch)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBN(out_ch, bn_momentum)
        self.conv2 = dirac_conv(out_ch, out_ch)
        self.norm2 = FrozenScaleBN(out_ch, bn_momentum)
        self.conv3 = dirac_conv(out_ch, out_ch) if depth == 3 else None
        self.norm3 = FrozenScaleBN(out_ch, bn_momentum) if depth == 3 else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        h = F.gelu(self.norm2(self.conv2(x)))
        if self.conv3 is None:
            return h
        return F.gelu(self.norm3(self.conv3(h)) + x)


def patch_second_moment(images: Tensor, k: int) -> tuple[Tensor, int]:
    """Sum of p p^T over every k x k patch p (flattened C*k*k, stride 1) of float (N, C, H, W)
    `images`, in float64, and the number of patches."""
    c = images.shape[1]
    total = torch.zeros(c * k * k, c * k * k, dtype=torch.float64, device=images.device)
    count = 0
    for chunk in images.split(WHITEN_CHUNK):
        cols = F.unfold(chunk.float(), k)  # (n, C*k*k, L): every patch as a column
        flat = cols.transpose(1, 2).reshape(-1, c * k * k)  # (n*L, C*k*k)
        total += (flat.T @ flat).double()
        count += flat.shape[0]
    return total, count


def whitening_filters(images: Tensor, k: int = 2, eps: float = 5e-4) -> Tensor:
    """(2*C*k*k, C, k, k) filters: rows V^T / sqrt(lambda + eps) of the patch second moment
    M = V diag(lambda) V^T (largest eigenvalue first), then their negatives. The first half maps
    patches to coordinates with second moment diag(lambda / (lambda + eps)) ~ identity."""
    c = images.shape[1]
    total, count = patch_second_moment(images, k)
    moment = total / max(count, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
    filters = filters.reshape(c * k * k, c, k, k).float()
    return torch.cat([filters, -filters])


class FastNet(nn.Module):
    """See the module docstring."""

    # set_epoch stops training the whitening bias after a few epochs: the parameters of a step
    # change, which DDP must be told of (training/distributed.py)
    dynamic_graph = True

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, ...] | list[int] = (64, 256, 256),
        depth: int = 2,
        whiten_kernel: int = 2,
        whiten_eps: float = 5e-4,
        whiten_bias_epochs: int = 3,
        data_init_images: int = 5000,
        bn_momentum: float = 0.4,
        scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if len(widths) < 1:
            raise ValueError("widths must name at least one conv group")
        k = whiten_kernel
        whiten_width = 2 * in_chans * k * k
        self.whiten = nn.Conv2d(in_chans, whiten_width, k, padding=0, bias=False)
        self.whiten.weight.requires_grad_(False)  # set by init_from_data, never trained
        self.whiten_bias = nn.Parameter(torch.zeros(whiten_width, 1, 1))  # (C', 1, 1): see above
        groups, in_ch = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(in_ch, width, depth, bn_momentum))
            in_ch = width
        self.groups = nn.Sequential(*groups)
        self.num_features, self.num_classes = in_ch, num_classes
        self.head = nn.Linear(in_ch, num_classes, bias=False)
        self.scale = scale
        self.whiten_eps = whiten_eps
        self.whiten_bias_epochs = whiten_bias_epochs
        self.data_init_images = data_init_images  # how many training images init_from_data wants

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """Set the whitening filters from preprocessed training images, float (N, C, H, W)."""
        w = whitening_filters(images.to(self.whiten.weight.device), self.whiten.kernel_size[0],
                              self.whiten_eps)
        self.whiten.weight.copy_(w.to(self.whiten.weight.dtype))

    def set_epoch(self, epoch: int) -> None:
        """Train the whitening bias during epochs 1..whiten_bias_epochs only (airbench), and
        never when ``convzoo.models.freeze`` froze it (it records what it froze)."""
        frozen = "whiten_bias" in getattr(self, "frozen_names", ())
        self.whiten_bias.requires_grad_(epoch <= self.whiten_bias_epochs and not frozen)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new bias-free head (PyTorch's default Linear init, as at build); 0: features."""
        self.head = new_head(self.num_features, num_classes, bias=False)
        self.num_classes = num_classes

    def stage_names(self) -> list[list[str]]:
        """The whitening layer (weights and bias), then each conv group."""
        return [["whiten", "whiten_bias"], *([f"groups.{i}"] for i in range(len(self.groups)))]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, widths[-1]) globally max-pooled features."""
        x = F.gelu(self.whiten(x) + self.whiten_bias)
        x = self.groups(x)
        return torch.amax(x, dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        features = self.forward_features(x)
        if self.num_classes == 0:  # reset_classifier(0): the pooled features, unscaled
            return features
        return self.head(features) * self.scale


_SRC = "convzoo fast family (after airbench, arXiv 2404.00498)"
_CIFAR = (3, 32, 32)


@register_model(source=_SRC, input_size=_CIFAR,
                description="whitened VGG-style speed-run net; widths/depth configurable")
def fast_net(num_classes: int = 10, in_chans: int = 3, **kwargs) -> FastNet:
    """The fast family with explicit keywords (widths, depth, whiten_kernel, bn_momentum, ...)."""
    return FastNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(source=_SRC, input_size=_CIFAR,
                description="fast net for ~94% CIFAR-10: widths 64/256/256, 2 convs per group")
def fast94(num_classes: int = 10, in_chans: int = 3, **kwargs) -> FastNet:
    """~2M-parameter net of the cifar10-fast94 recipe."""
    return FastNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(source=_SRC, input_size=_CIFAR,
                description="fast net for ~95% CIFAR-10: widths 128/384/384")
def fast95(num_classes: int = 10, in_chans: int = 3, **kwargs) -> FastNet:
    """Wider net of the cifar10-fast95 recipe."""
    kwargs.setdefault("widths", (128, 384, 384))
    return FastNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(source=_SRC, input_size=_CIFAR,
                description="fast net for ~96% CIFAR-10: widths 128/512/512, 3 convs + residual")
def fast96(num_classes: int = 10, in_chans: int = 3, **kwargs) -> FastNet:
    """Net of the cifar10-fast96 recipe: three convs per group, the last two residual."""
    kwargs.setdefault("widths", (128, 512, 512))
    kwargs.setdefault("depth", 3)
    kwargs.setdefault("bn_momentum", 0.1)
    return FastNet(num_classes=num_classes, in_chans=in_chans, **kwargs)

