"""Exponential moving average of model weights, evaluated beside the trained model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from convzoo.errors import ConvzooError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class ModelEMA:
    """``ema <- decay * ema + (1 - decay) * weights`` after every optimizer step.

    Parameters are averaged; buffers (batch-norm running statistics, counters) are copied from
    the model, since they are already running averages. With ``warmup=True`` the decay used at
    update ``n`` (0-based) is ``min(decay, (1 + n) / (10 + n))``, so early averages are not
    dominated by the random initialisation. The update count lives on the host and the math is
    one ``_foreach_lerp_``, so ``update`` never waits for the device.

    Use ``ema.module`` (a deep copy in eval mode, no gradients) for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ConvzooError(f"optim.ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s weights (e.g. EMA newly enabled on resume)."""
        self.module.load_state_dict(unwrap(model).state_dict())
        self.updates = 0

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        if self.warmup:
            return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after optimizer.step())."""
        model = unwrap(model)
        d = self.current_decay()
        ema_p = list(self.module.parameters())
        new_p = [p.detach() for p in model.parameters()]
        if len(ema_p) != len(new_p):
            raise RuntimeError("ModelEMA.update: model structure differs from the EMA copy")
        # lerp_(ema, new, w): ema += w * (new - ema), i.e. ema = d * ema + (1 - d) * new
        float_pairs = [(e, n) for e, n in zip(ema_p, new_p) if e.is_floating_point()]
        if float_pairs:
            torch._foreach_lerp_(
                [e for e, _ in float_pairs], [n.to(e.dtype) for e, n in float_pairs], 1.0 - d
            )
        ema_b = list(self.module.buffers())
        new_b = list(model.buffers())
        if ema_b:
            torch._foreach_copy_(ema_b, new_b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
