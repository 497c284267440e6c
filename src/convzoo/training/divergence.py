"""Divergence: a non-finite loss or weights ends training before anything of that epoch is
written.

``DivergenceCheck`` finds the first bad optimizer step of an epoch without a host sync per
step: the step number stays on the device and is read only where the loop syncs anyway (a
progress line, the epoch end). ``check_losses`` and ``weights_finite`` are the last checks
before an epoch's files are written (``rundir.save_epoch``, ``rundir.save_step``), so no
file of a run ever holds non-finite weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from convzoo.errors import ConvzooError


class Diverged(ConvzooError):
    """Training produced a non-finite loss or weights; nothing of that epoch was written."""


def weights_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every floating tensor is finite (one host sync for all of them)."""
    checks = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def check_losses(row: dict[str, Any]) -> None:
    """Raise Diverged if a loss of an epoch's metrics row (train, eval, EMA eval) is not finite:
    finite weights whose outputs overflow on the eval data are as useless as NaN weights."""
    for key in ("train_loss", "eval_loss", "ema_eval_loss"):
        value = row.get(key)
        if value is not None and not math.isfinite(value):
            split = row.get("eval_split", "eval")
            what = {"train_loss": "training", "eval_loss": split,
                    "ema_eval_loss": f"EMA {split}"}[key]
            raise Diverged(f"training diverged in epoch {row['epoch']}: the {what} loss is "
                           f"{value} (lr {row.get('lr', float('nan')):.4g} at the epoch start); "
                           f"nothing of epoch {row['epoch']} was saved; lower optim.lr or set "
                           "optim.grad_clip")


class DivergenceCheck:
    """Finds the first optimizer step of an epoch whose loss is not finite, without a host sync
    per step: the step number is kept on the device (``update``) and read only where the loop
    syncs anyway, at a progress read (``running``) and at the epoch end (``finish``).

    ``lrs``: the base lr of each of the epoch's steps (named in the error). ``early`` (single
    process) lets a progress read stop the run at once; with several ranks only the epoch end
    decides, on the all-reduced loss, so that every rank stops together.
    """

    def __init__(self, lrs: list[float], device: torch.device, *, epoch: int | None = None,
                 early: bool = True) -> None:
        self.lrs, self.epoch, self.early = lrs, epoch, early
        self.first = torch.zeros((), dtype=torch.int64, device=device)  # 0 = all finite so far

    def update(self, step: int, loss: torch.Tensor) -> None:
        """After step ``step`` (1-based in the epoch): remember it if it is the first bad one."""
        self.first = torch.where(torch.isfinite(loss.detach()) | (self.first > 0),
                                 self.first, step)

    def running(self, value: float) -> float:
        """A progress read of the running mean loss: stop here if it is no longer finite."""
        if self.early and not math.isfinite(value):
            self._raise(value)
        return value

    def finish(self, loss: float, parameters: Iterable[torch.Tensor]) -> None:
        """Epoch end (``loss``: the epoch's mean over all ranks; equal weights on every rank)."""
        if not math.isfinite(loss):
            self._raise(loss)
        if not weights_finite(parameters):  # the last step's update overflowed: loss still finite
            raise Diverged(f"training diverged{self._where()}: the weights are not finite after "
                           f"its last step (lr {self._lr(None)}); {self._advice()}")

    def _raise(self, value: float) -> None:
        step = int(self.first.item()) or None  # None: only another rank saw it (DDP)
        at = f", step {step}/{len(self.lrs)}" if step else ""
        raise Diverged(f"training diverged{self._where()}{at}: the loss is {value} "
                       f"(lr {self._lr(step)}); {self._advice()}")

    def _where(self) -> str:
        return f" in epoch {self.epoch}" if self.epoch is not None else ""

    def _lr(self, step: int | None) -> str:
        """The lr step ``step`` of this epoch used (None: the last step's)."""
        if not self.lrs:
            return "unknown"
        return f"{self.lrs[step - 1 if step else -1]:.4g}"

    def _advice(self) -> str:
        what = f"epoch {self.epoch}" if self.epoch is not None else "this epoch"
        return f"nothing of {what} was saved; lower optim.lr or set optim.grad_clip"
