"""Layers that more than one network file builds from."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

RELU = partial(nn.ReLU, inplace=True)


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm -> activation: MXNet's ``conv_module`` (seed D, ReLU) and
    ``ConvFactory`` (seed A, RReLU). ``act`` makes a fresh activation for each layer (RReLU
    draws its own slopes). Its children are indexed 0, 1, 2 as in any ``nn.Sequential``, so
    the parameter names (``...0.weight``, ``...1.running_mean``) are those of saved runs."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, pad: int = 0,
        conv_bias: bool = True,
        act: Callable[[], nn.Module] = RELU,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, pad, bias=conv_bias),
            nn.BatchNorm2d(out_ch),
            act(),
        )
