"""Learning-rate schedules, reduce-on-plateau and early stopping.

The lr is a pure function of the position in training (:func:`lr_at`; nanoGPT's ``get_lr``),
``e`` = epochs done + the fraction of the current epoch, plus two small pieces of state: the
plateau multiplier (changed once per epoch from the eval metrics) and the *anchor* of a later
stage that asked for a new lr. Written by hand rather than with ``torch.optim.lr_scheduler``
for the reason timm's scheduler gives: torch's schedulers are step counters whose value depends
on the calls made so far, while a function of the position lands on the right lr after a
resume, after a change of batch size, and at the start of a new stage without replaying steps.

How a run's stages continue (docs/training.md has the table):

* the first stage follows its schedule from epoch 0 (warmup / one-cycle rise included);
* a later stage that keeps the lr continues the same curve, stretched to its new end epoch;
* a later stage that sets a new lr ``L`` at epoch ``s`` starts at exactly ``L`` and then
  follows the schedule's decay from there to its end epoch ``E`` (no second warmup or rise):
  constant stays at ``L``; multistep multiplies by ``gamma`` at each milestone after ``s``;
  cosine and one-cycle anneal from ``L`` at ``s`` to their end lr at ``E``; plateau starts at
  ``L`` with its multiplier reset to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from convzoo.config import OptimConfig, ScheduleConfig
from convzoo.errors import ConvzooError

SCHEDULES = ("constant", "multistep", "cosine", "onecycle", "plateau")


@dataclass(frozen=True)
class Anchor:
    """Where a later stage with a new lr began: its first epoch position and that lr."""

    epoch: float
    lr: float


def _anneal(p: float, start: float, end: float, shape: str) -> float:
    """From ``start`` at p = 0 to ``end`` at p = 1, linearly or along half a cosine."""
    p = min(max(p, 0.0), 1.0)
    if shape == "cos":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    return start + (end - start) * p


def lr_at(e: float, cfg: ScheduleConfig, peak: float, epochs: int, anchor: Anchor | None = None,
          plateau_scale: float = 1.0) -> float:
    """The base lr (param-group scale 1) at epoch position ``e`` of a stage ending at ``epochs``.

    Without ``anchor`` (the first stage), with ``W = warmup_epochs`` and ``E = epochs``:

    * warmup (all but onecycle): for ``e < W`` the lr is multiplied by
      ``warmup_start + (1 - warmup_start) * e / W``;
    * constant: ``peak``; multistep: ``peak * gamma ** (milestones <= e)`` (epochs);
    * cosine: half a cosine from ``peak`` at ``W`` to ``end = max(min_lr, final_fraction * peak)``
      at ``E``;
    * onecycle (triangular, as airbench): linear from ``warmup_start * peak`` at 0 to ``peak`` at
      ``pct_start * E``, then ``anneal`` (linear or cos) to ``end`` at ``E``;
    * plateau: ``max(peak * plateau_scale, min_lr)``.

    With ``anchor`` (a later stage that set lr ``L`` at epoch ``s``) the stage starts at ``L``:
    constant ``L``; multistep ``L * gamma ** (milestones in (s, e])``; cosine and onecycle from
    ``L`` at ``s`` to ``max(min_lr, final_fraction * L)`` at ``E`` (cosine: half a cosine;
    onecycle: its ``anneal`` shape); plateau ``max(L * plateau_scale, min_lr)``.
    """
    c = cfg
    if anchor is not None:
        s, top = anchor.epoch, anchor.lr
        end = max(c.min_lr, c.final_fraction * top)
        p = (e - s) / (epochs - s) if epochs > s else 1.0
        if c.name == "multistep":
            return top * c.gamma ** sum(1 for m in c.milestones if s < m <= e)
        if c.name == "cosine":
            return _anneal(p, top, end, "cos")
        if c.name == "onecycle":
            return _anneal(p, top, end, c.anneal)
        if c.name == "plateau":
            return max(top * plateau_scale, c.min_lr)
        return top
    end = max(c.min_lr, c.final_fraction * peak)
    if c.name == "onecycle":
        rise = c.pct_start * epochs
        if e < rise:
            return _anneal(e / rise, c.warmup_start * peak, peak, "linear")
        return _anneal((e - rise) / (epochs - rise), peak, end, c.anneal)
    w = c.warmup_epochs
    warm = c.warmup_start + (1.0 - c.warmup_start) * e / w if w > 0 and e < w else 1.0
    if c.name == "multistep":
        lr = peak * c.gamma ** sum(1 for m in c.milestones if m <= e)
    elif c.name == "cosine":
        lr = _anneal((e - w) / (epochs - w), peak, end, "cos") if w < epochs else end
    elif c.name == "plateau":
        lr = max(peak * plateau_scale, c.min_lr)
    else:
        lr = peak
    return lr * warm


def peak_lr(optim: OptimConfig, batch_size: int) -> float:
    """The peak lr a run trains at: ``optim.lr``, or with ``optim.lr_base_batch = N`` that lr
    scaled from a global batch of N images to ``batch_size`` (``train.batch_size``, the global
    batch): linearly (Goyal et al., "0.1 per 256") or by the square root (Adam-style, Krizhevsky).
    The global batch does not change with the number of processes, so neither does the lr."""
    if not optim.lr_base_batch:
        return optim.lr
    ratio = batch_size / optim.lr_base_batch
    return optim.lr * (ratio if optim.lr_scaling == "linear" else math.sqrt(ratio))


def set_lr(optimizer: Any, lr: float) -> None:
    """Every param group's lr = ``lr * group["lr_scale"]`` (the groups move together)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------- monitored metrics


def monitor_mode(monitor: str, key: str) -> str:
    if monitor.endswith("loss"):
        return "min"
    if monitor.endswith(("top1", "top5")):
        return "max"
    raise ConvzooError(
        f"{key} must name a loss or accuracy, e.g. val_loss or val_top1, got '{monitor}'"
    )


def lookup(metrics: dict[str, float], monitor: str) -> float | None:
    """``val_loss`` also matches the trainer's ``eval_loss`` (and vice versa)."""
    for key in (monitor, monitor.replace("val_", "eval_", 1), monitor.replace("eval_", "val_", 1)):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


class Improvement:
    """Best-so-far tracking with a relative threshold (torch 'rel' mode)."""

    def __init__(self, mode: str, threshold: float) -> None:
        self.mode = mode
        self.threshold = threshold
        self.best = math.inf if mode == "min" else -math.inf

    def is_better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold) if self.best != math.inf else True
        return value > self.best * (1.0 + self.threshold) if self.best != -math.inf else True


class Plateau:
    """Reduce-on-plateau state: the lr multiplier ``scale`` and its counters.

    ``scale`` is multiplied by ``factor`` after ``patience`` epochs without improvement (as
    Keras: the ``patience``-th bad epoch reduces; torch waits one more), followed by
    ``cooldown`` epochs in which bad epochs are not counted; it stops falling once
    ``peak * scale`` has reached ``min_lr``. Improvement is relative (torch 'rel' mode).
    """

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg
        self.tracker = Improvement(monitor_mode(cfg.monitor, "schedule.monitor"), cfg.threshold)
        self.scale, self.bad_epochs, self.cooldown_left = 1.0, 0, 0

    def update(self, metrics: dict[str, float], peak: float) -> None:
        """Once per epoch; epochs without the monitored metric (no eval) are ignored."""
        value = lookup(metrics, self.cfg.monitor)
        if value is None or not math.isfinite(value):
            return
        better = self.tracker.is_better(value)
        if better:
            self.tracker.best = value
            self.bad_epochs = 0
        if self.cooldown_left > 0:  # resting after a cut: bad epochs do not count
            self.cooldown_left -= 1
            self.bad_epochs = 0
        elif not better:
            self.bad_epochs += 1
            if self.bad_epochs >= self.cfg.patience:
                if peak * self.scale > self.cfg.min_lr:
                    self.scale *= self.cfg.factor
                self.cooldown_left = self.cfg.cooldown
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "bad_epochs": self.bad_epochs,
                "cooldown_left": self.cooldown_left, "best": self.tracker.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.bad_epochs = int(state["bad_epochs"])
        self.cooldown_left = int(state["cooldown_left"])
        self.tracker.best = float(state["best"])


# ----------------------------------------------------------------------------- one stage's lrs


class Schedule:
    """The lr of every optimizer step of one stage: :func:`lr_at` plus the stage's state.

    ``epoch_lrs(epoch)`` is the list of base lrs of that (1-based) epoch's steps; the loop sets
    ``lrs[i]`` before step ``i`` (:func:`set_lr`). ``epoch_end(metrics)`` feeds plateau.
    ``state_dict`` holds the peak lr, the anchor and the plateau state; :meth:`resume` continues
    from it under this stage's settings (see the module docstring).
    """

    def __init__(self, cfg: ScheduleConfig, peak: float, epochs: int, steps_per_epoch: int):
        # name, ranges and onecycle-without-warmup: checked by config.from_dict
        if steps_per_epoch < 1:
            raise ConvzooError(f"steps per epoch must be >= 1, got {steps_per_epoch}")
        self.cfg, self.peak, self.epochs = cfg, float(peak), int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.anchor: Anchor | None = None
        self.plateau = Plateau(cfg) if cfg.name == "plateau" else None

    def lr_at(self, e: float) -> float:
        """Base lr at epoch position ``e`` (0 = the start of training)."""
        scale = self.plateau.scale if self.plateau is not None else 1.0
        return lr_at(e, self.cfg, self.peak, self.epochs, self.anchor, scale)

    def epoch_lrs(self, epoch: int) -> list[float]:
        """Base lr of each step of 1-based ``epoch`` (host floats: no device work), each at the
        step's start, except that no step trains at lr 0: where a rise starts from 0
        (``warmup_start`` 0), the first step takes the lr at its end instead."""
        n = self.steps_per_epoch
        lrs = [self.lr_at(epoch - 1 + i / n) for i in range(n)]
        return [lr if lr > 0 else self.lr_at(epoch - 1 + (i + 1) / n)
                for i, lr in enumerate(lrs)]

    def epoch_end(self, metrics: dict[str, float]) -> None:
        if self.plateau is not None:
            self.plateau.update(metrics, self.anchor.lr if self.anchor else self.peak)

    def state_dict(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "anchor": [self.anchor.epoch, self.anchor.lr] if self.anchor else None,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def resume(self, state: dict[str, Any], epoch: int) -> None:
        """Continue a schedule saved at the end of ``epoch`` under this stage's settings.

        The same peak lr continues the saved curve (its anchor kept, stretched to this stage's
        end); a new peak lr anchors the stage at ``(epoch, peak)``, so it starts at that lr.
        Plateau state carries over (its multiplier restarts at 1 with a new lr).
        """
        if "anchor" not in state:  # a checkpoint of convzoo before stages had anchors
            state = {"peak": state["base_lr"], "anchor": None, "plateau": {
                "scale": state["plateau_scale"], "bad_epochs": state["bad_epochs"],
                "cooldown_left": state["cooldown_left"],
                "best": state["best"] if state["best"] is not None else math.nan}}
        saved = Anchor(*state["anchor"]) if state["anchor"] else None
        if not math.isclose(self.peak, state["peak"], rel_tol=1e-12, abs_tol=0.0):
            self.anchor = Anchor(float(epoch), self.peak)
        else:
            self.anchor = saved
        if self.plateau is not None and state.get("plateau") is not None:
            plateau = dict(state["plateau"])
            if math.isnan(plateau["best"]):
                plateau["best"] = self.plateau.tracker.best
            self.plateau.load_state_dict(plateau)
            if self.anchor is not saved:
                self.plateau.scale = 1.0


def stage_lrs(stages: list[Any], steps_per_epoch: int = 1) -> dict[int, float]:
    """The lr each (0-based) epoch of a planned run starts with, walking its stage configs
    (``loop.stage_plan``) as training does. For docs, tests and `convzoo config`."""
    out: dict[int, float] = {}
    state: dict[str, Any] | None = None
    done = 0
    for cfg in stages:
        s = Schedule(cfg.schedule, peak_lr(cfg.optim, cfg.train.batch_size), cfg.train.epochs,
                     steps_per_epoch)
        if state is not None:
            s.resume(state, done)
        out.update({e: s.lr_at(e) for e in range(done, cfg.train.epochs)})
        state, done = s.state_dict(), cfg.train.epochs
    return out


# ----------------------------------------------------------------------------- early stopping


class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` evaluated epochs.

    ``update(metrics)`` returns True when training should stop. ``patience <= 0`` never stops.
    Improvement is relative by ``threshold`` (0 = any improvement counts).
    """

    def __init__(self, patience: int, monitor: str = "val_loss", threshold: float = 0.0) -> None:
        self.patience = patience
        self.monitor = monitor
        self.tracker = Improvement(monitor_mode(monitor, "early stopping monitor"), threshold)
        self.bad_epochs = 0

    @property
    def best(self) -> float:
        return self.tracker.best

    def update(self, metrics: dict[str, float]) -> bool:
        value = lookup(metrics, self.monitor)
        if value is None:
            return False
        if math.isfinite(value) and self.tracker.is_better(value):
            self.tracker.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1  # NaN/inf counts as no improvement
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
