"""Facts about registered models for `convzoo models`: parameters, BN statistics, FLOPs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass at
batch 1 and the model's default input size; it counts a multiply-add as 2 FLOPs (so
torchvision's "GFLOPS" column, which counts multiply-adds, is half of ours). The model is
built on the ``meta`` device, so nothing is allocated or computed and all models take well
under a second together; results are cached per (name, num_classes).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convzoo.errors import ConvzooError
from convzoo.models.registry import create_model, get_entry
from convzoo.tables import UNLIMITED, WIDTH, fit_table


def count_params(model: nn.Module) -> int:
    """Number of trainable parameter values."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_bn_running(model: nn.Module) -> int:
    """Number of batch-norm running_mean + running_var values (num_batches_tracked excluded)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            total += m.running_mean.numel() + m.running_var.numel()
    return total


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Forward FLOPs (multiply-add = 2) of `model` on one (C, H, W) input, in eval mode."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((1, *input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def default_num_classes(name: str) -> int:
    """The class count a model's factory defaults to (10 for CIFAR, 100, 1000 for ImageNet)."""
    param = inspect.signature(get_entry(name).factory).parameters.get("num_classes")
    if param is None or param.default is inspect.Parameter.empty:
        return 10
    return int(param.default)


@functools.cache
def _info(name: str, num_classes: int) -> tuple:
    entry = get_entry(name)
    try:
        with torch.device("meta"):  # no memory, no init cost, no arithmetic
            model = entry.build(num_classes, entry.input_size[0])
    except Exception:  # a project's factory may compute while it builds: on the CPU then
        if entry.zoo:
            raise
        model = entry.build(num_classes, entry.input_size[0])
    return (
        count_params(model),
        count_bn_running(model),
        count_flops(model, entry.input_size),
    )


def check_input_shape(name: str, shape: tuple[int, int, int], num_classes: int,
                      **kwargs: Any) -> None:
    """Refuse, in one line, an input shape (C, H, W) that model ``name`` cannot take (a fixed
    classifier after flattening, pooling below 1 px): a forward on the ``meta`` device, which
    computes nothing, before any training (it was an internal error at the first step)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=shape[0], **kwargs)
    model.eval()

    def forward(hw: tuple[int, ...]) -> None:
        with torch.no_grad():
            model(torch.empty((2, shape[0], *hw), device="meta"))

    try:
        forward(shape[1:])
    except (RuntimeError, ValueError) as e:
        native = "x".join(str(d) for d in get_entry(name).input_size)
        try:  # a model whose forward the meta device cannot run at all: no verdict
            forward(tuple(get_entry(name).input_size[1:]))
        except Exception:
            return
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConvzooError(
            f"model {name} cannot take {shape[0]}x{shape[1]}x{shape[2]} images ({reason}); its "
            f"native input is {native}: set data.image_size (and data.channels) to fit") from None


def model_info(name: str, num_classes: int | None = None) -> dict:
    """Name, source, trainable params, BN running values, forward FLOPs, input size, description."""
    entry = get_entry(name)
    classes = default_num_classes(name) if num_classes is None else num_classes
    params, bn_running, flops = _info(name, classes)
    return {
        "name": entry.name,
        "source": entry.source,
        "num_classes": classes,
        "params": params,
        "bn_running": bn_running,
        "flops": flops,
        "input_size": list(entry.input_size),
        "description": entry.description,
    }


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(rows: list[dict], *, wide: bool = False) -> str:
    """`model_info` rows as an aligned table (numbers right-aligned) within 100 columns: the
    source column is shortened to fit; ``wide``: every column (BN running values too) in full."""
    header = ["name", "source", "classes", "params", "flops", "input"]
    if wide:
        header.insert(4, "bn_running")
    cells = {
        "name": lambda r: r["name"], "source": lambda r: r["source"],
        "classes": lambda r: str(r.get("num_classes", "")), "params": lambda r: f"{r['params']:,}",
        "bn_running": lambda r: f"{r['bn_running']:,}", "flops": lambda r: _human(r["flops"]),
        "input": lambda r: "x".join(str(d) for d in r["input_size"]),
    }
    body = [[cells[h](r) for h in header] for r in rows]
    return fit_table(body, header, UNLIMITED if wide else WIDTH, shrink=("source",),
                     right=("classes", "params", "bn_running", "flops"))
