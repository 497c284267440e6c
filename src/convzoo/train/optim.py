"""Optimizers, learning-rate schedules, lookahead and early stopping.

Conventions the training loop relies on:

* Every param group carries ``lr_scale`` (its lr relative to the base lr: 1.0, or
  ``optim.bias_lr_scale`` for the norm/bias group) and ``initial_lr`` (= cfg.lr * lr_scale).
  :class:`LRSchedule` writes ``group["lr"] = base_lr_now * group["lr_scale"]``, so all groups
  move together.
* The schedule is a pure function of the global optimizer step (plus, for ``plateau``, a small
  state updated once per epoch), so resuming from ``state_dict()`` continues exactly.
* Call order per step: ``optimizer.step()`` then ``schedule.step()`` (which sets the lr used by
  the *next* step). Per epoch: ``schedule.epoch_end({"val_loss": ..., "val_top1": ...})``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import nn

from convzoo.config import OptimConfig, ScheduleConfig
from convzoo.errors import ConvzooError

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle", "plateau")

# ----------------------------------------------------------------------------- optimizers


class SGDW(torch.optim.SGD):
    """SGD with *decoupled* weight decay (Loshchilov & Hutter): ``p <- p * (1 - lr * wd)``.

    torch's SGD only has coupled L2 decay (added to the gradient, then amplified by momentum).
    Here each group's ``decoupled_wd`` shrinks the weights right before the ordinary SGD update
    (which runs with ``weight_decay=0``), so decay does not pass through the momentum buffer.
    """

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        default_wd = kwargs.pop("weight_decay", 0.0)
        for g in groups:
            g["decoupled_wd"] = g.pop("weight_decay", default_wd)
            g["weight_decay"] = 0.0
        super().__init__(groups, weight_decay=0.0, **kwargs)
        # With fused kernels GradScaler would hand inf checks to the kernel, but our decay runs
        # outside it; make the scaler unscale and skip whole steps itself instead.
        self._step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        for g in self.param_groups:
            wd = g.get("decoupled_wd", 0.0)
            params = [p for p in g["params"] if p.grad is not None]
            if wd and params:
                torch._foreach_mul_(params, 1.0 - float(g["lr"]) * wd)
        return super().step(closure)


def _fused_supported(cls: type) -> bool:
    return "fused" in inspect.signature(cls).parameters


def _use_fused(cfg: OptimConfig, cls: type, device_type: str) -> bool:
    """Fused kernels only on CUDA: auto (None) uses them when torch has them, True insists."""
    if cfg.fused is False or device_type != "cuda":
        return False  # never on CPU, even when asked: CPU fused kernels are not the fast path
    if not _fused_supported(cls):
        if cfg.fused is True:
            raise ConvzooError(
                f"optim.fused=true but this torch has no fused {cls.__name__} (use auto or false)"
            )
        return False
    return True


def freeze_bn_scale(model: nn.Module) -> int:
    """Fix every batch-norm weight (scale) at 1 and stop its gradient; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.fill_(1.0)
            m.weight.requires_grad_(False)
            n += 1
    return n


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Split trainable params into 'decay' (>=2-D: conv/linear weights) and 'no_decay'.

    The 1-D group (norm weights, biases) gets weight_decay 0 when ``no_decay_norm_bias`` (else
    ``weight_decay * bias_wd_scale``) and lr_scale ``bias_lr_scale``. With none of these options
    there is a single group.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConvzooError("the model has no trainable parameters")
    wd = cfg.weight_decay
    if not cfg.no_decay_norm_bias and cfg.bias_lr_scale == 1.0 and cfg.bias_wd_scale == 1.0:
        return [{"params": params, "weight_decay": wd, "lr_scale": 1.0, "name": "all"}]
    matrix = [p for p in params if p.ndim > 1]
    vector = [p for p in params if p.ndim <= 1]
    groups = []
    if matrix:
        groups.append({"params": matrix, "weight_decay": wd, "lr_scale": 1.0, "name": "decay"})
    if vector:
        groups.append(
            {
                "params": vector,
                "weight_decay": 0.0 if cfg.no_decay_norm_bias else wd * cfg.bias_wd_scale,
                "lr_scale": float(cfg.bias_lr_scale),
                "name": "no_decay" if cfg.no_decay_norm_bias else "norm_bias",
            }
        )
    return groups


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device_type: str, total_steps: int = 0
) -> torch.optim.Optimizer | Lookahead:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable params.

    Build it after the model is on its device (fused kernels need CUDA params). Returns a
    ``torch.optim.Optimizer``, wrapped in :class:`Lookahead` when ``cfg.lookahead_steps > 0``
    (the wrapper has the same step/zero_grad/param_groups/state_dict interface).
    ``total_steps`` (optimizer steps of the whole run) is needed by ``lookahead_pow > 0``.
    ``muon`` puts conv filters (4-D) under :class:`convzoo.train.muon.Muon`'s orthogonalised
    update and the rest under SGD with momentum (see ``muon_param_groups``).
    """
    name = cfg.name.lower()
    if name not in OPTIMIZERS:
        raise ConvzooError(f"unknown optim.name '{cfg.name}' (options: {', '.join(OPTIMIZERS)})")
    if cfg.lr <= 0:
        raise ConvzooError(f"optim.lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConvzooError(f"optim.weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.freeze_bn_scale:
        freeze_bn_scale(model)
    if name == "muon":
        from convzoo.train.muon import Muon, muon_param_groups

        optimizer: Any = Muon(muon_param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, ns_dtype=None if device_type == "cuda"
                              else torch.float32)
        return _maybe_lookahead(optimizer, cfg, total_steps)
    groups = param_groups(model, cfg)
    for g in groups:
        g["initial_lr"] = cfg.lr * g["lr_scale"]
        g["lr"] = g["initial_lr"]

    if name == "sgd":
        cls: type = SGDW if cfg.decoupled_wd else torch.optim.SGD
        kwargs: dict[str, Any] = {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
        if cfg.nesterov and cfg.momentum <= 0:
            raise ConvzooError("optim.nesterov=true needs optim.momentum > 0")
    else:
        if len(cfg.betas) != 2:
            raise ConvzooError(f"optim.betas must be two numbers, got {cfg.betas}")
        # adam + decoupled_wd is AdamW; adamw is always decoupled.
        cls = torch.optim.AdamW if (name == "adamw" or cfg.decoupled_wd) else torch.optim.Adam
        kwargs = {"betas": tuple(cfg.betas), "eps": cfg.eps}
    if _use_fused(cfg, torch.optim.SGD if cls is SGDW else cls, device_type):
        kwargs["fused"] = True
    optimizer = cls(groups, lr=cfg.lr, **kwargs)
    return _maybe_lookahead(optimizer, cfg, total_steps)


def _maybe_lookahead(optimizer: Any, cfg: OptimConfig, total_steps: int) -> Any:
    if cfg.lookahead_steps <= 0:
        return optimizer
    return Lookahead(optimizer, k=cfg.lookahead_steps, alpha=cfg.lookahead_alpha,
                     pow=cfg.lookahead_pow, total_steps=total_steps)


def apply_hparams(optimizer: torch.optim.Optimizer | Lookahead, cfg: OptimConfig) -> None:
    """Re-apply ``cfg``'s hyperparameters to an optimizer whose state was just loaded.

    ``optimizer.load_state_dict`` restores the *saved* group settings (weight decay, momentum,
    betas, lr scales); call this after it when a resumed stage changes them. The lr itself is
    the schedule's business (:meth:`LRSchedule.retarget`). The group layout must match.
    """
    for g in optimizer.param_groups:
        name = g.get("name", "all")
        if name == "no_decay" and not cfg.no_decay_norm_bias:
            raise ConvzooError(
                "optim.no_decay_norm_bias differs from the checkpoint's param groups; "
                "it cannot change when resuming"
            )
        wd = 0.0 if name in ("no_decay", "muon") else cfg.weight_decay
        if name == "norm_bias":
            wd *= cfg.bias_wd_scale
        g["lr_scale"] = cfg.bias_lr_scale if name in ("no_decay", "norm_bias") else 1.0
        if name == "muon":
            g["lr_scale"] = (cfg.muon_lr or cfg.lr) / cfg.lr
        g["initial_lr"] = cfg.lr * g["lr_scale"]
        if "decoupled_wd" in g:  # SGDW
            g["decoupled_wd"] = wd
        else:
            g["weight_decay"] = wd
        if "momentum" in g:
            g["momentum"], g["nesterov"] = cfg.momentum, cfg.nesterov
            if name == "muon":  # Muon's filter group: its own momentum, always Nesterov
                g["momentum"], g["nesterov"] = cfg.muon_momentum or cfg.momentum, True
        if "betas" in g:
            g["betas"], g["eps"] = tuple(cfg.betas), cfg.eps


# ----------------------------------------------------------------------------- lookahead


class Lookahead:
    """Lookahead (Zhang et al. 2019) around any optimizer.

    The inner ("fast") optimizer steps as usual; every ``k`` steps the slow weights move
    ``alpha`` of the way to the fast ones, ``slow += alpha * (fast - slow)``, and the fast
    weights restart from there. Exposes the optimizer interface the loop and GradScaler use.

    With ``pow > 0`` alpha follows airbench's schedule over ``total_steps`` optimizer steps:
    ``alpha_t = 1 - (1 - alpha) * (t / total_steps) ** pow`` (t = steps taken), i.e. almost no
    averaging early and the strongest averaging (``alpha``) at the end of training.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        pow: float = 0.0,
        total_steps: int = 0,
    ) -> None:
        if k < 1:
            raise ConvzooError(f"optim.lookahead_steps must be >= 1, got {k}")
        if not 0.0 < alpha <= 1.0:
            raise ConvzooError(f"optim.lookahead_alpha must be in (0, 1], got {alpha}")
        if pow < 0 or (pow > 0 and total_steps < 1):
            raise ConvzooError(
                f"optim.lookahead_pow={pow} needs pow >= 0 and the run's total steps "
                f"(got {total_steps})"
            )
        self.optimizer = optimizer
        self.k = k
        self.alpha = alpha
        self.pow = float(pow)
        self.total_steps = int(total_steps)
        self.fast_steps = 0  # inner steps since the start (host int: no device sync)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self.slow = [p.detach().clone() for p in self._params]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = self.optimizer.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            torch._foreach_lerp_(self.slow, self._params, self.current_alpha())
            torch._foreach_copy_(self._params, self.slow)
        return loss

    def current_alpha(self) -> float:
        """Interpolation factor of a sync at the current step (a host float: no device sync)."""
        if self.pow <= 0:
            return self.alpha
        frac = min(self.fast_steps / self.total_steps, 1.0)
        return 1.0 - (1.0 - self.alpha) * frac**self.pow

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lookahead": {"k": self.k, "alpha": self.alpha, "fast_steps": self.fast_steps},
            "slow": [s.clone() for s in self.slow],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lookahead" not in state:
            raise ConvzooError("checkpoint optimizer state has no lookahead state")
        self.optimizer.load_state_dict(state["optimizer"])
        self.fast_steps = int(state["lookahead"]["fast_steps"])
        with torch.no_grad():
            for s, saved in zip(self.slow, state["slow"], strict=True):
                s.copy_(saved)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, {self.optimizer!r})"


# ----------------------------------------------------------------------------- schedules


def _monitor_mode(monitor: str, key: str) -> str:
    if monitor.endswith("loss"):
        return "min"
    if monitor.endswith(("top1", "top5")):
        return "max"
    raise ConvzooError(
        f"{key} must name a loss or accuracy, e.g. val_loss or val_top1, got '{monitor}'"
    )


def _lookup(metrics: dict[str, float], monitor: str) -> float | None:
    """``val_loss`` also matches the trainer's ``eval_loss`` (and vice versa)."""
    for key in (monitor, monitor.replace("val_", "eval_", 1), monitor.replace("eval_", "val_", 1)):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


class _Improvement:
    """Best-so-far tracking with a relative threshold (torch 'rel' mode)."""

    def __init__(self, mode: str, threshold: float) -> None:
        self.mode = mode
        self.threshold = threshold
        self.best = math.inf if mode == "min" else -math.inf

    def is_better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold) if self.best != math.inf else True
        return value > self.best * (1.0 + self.threshold) if self.best != -math.inf else True


class LRSchedule:
    """Per-step learning rate, a pure function of the global optimizer step.

    ``lr_at(t)`` is the base lr for step ``t`` (0-based count of optimizer steps already taken);
    epoch position ``e = t / steps_per_epoch``. With ``W = warmup_epochs``, ``E = epochs``,
    ``peak`` = base lr:

    * warmup (all but onecycle): for ``e < W`` the lr is multiplied by
      ``warmup_start + (1 - warmup_start) * e / W``.
    * constant: ``peak``.
    * multistep: ``peak * gamma ** (number of milestones <= e)`` (milestones in epochs).
    * cosine: from ``peak`` at ``e = W`` to ``end = max(min_lr, final_fraction * peak)`` at
      ``e = E`` along half a cosine.
    * onecycle (triangular, as airbench): linear from ``warmup_start * peak`` at 0 to ``peak`` at
      ``pct_start * E``, then linear (or cosine) to ``end`` at ``E``.
    * plateau: ``max(peak * scale, min_lr)``; ``scale`` is multiplied by ``factor`` in
      :meth:`epoch_end` after ``patience`` epochs without improvement (as Keras: the
      ``patience``-th bad epoch reduces; torch waits one more), then ``cooldown`` epochs in
      which bad epochs are not counted. Improvement is relative (torch 'rel' mode).

    Re-targeting (new training stage): :meth:`retarget` / :meth:`set_base_lr` keep the global
    step and change lr / epochs / settings; the lr then follows the new settings at that step
    (milestones and warmup stay in absolute epochs).
    """

    def __init__(
        self,
        optimizer: Any,
        cfg: ScheduleConfig,
        base_lr: float,
        epochs: int,
        steps_per_epoch: int,
        anneal: str = "linear",
    ) -> None:
        self.optimizer = optimizer
        self.global_step = 0
        # plateau state: lr multiplier, epochs without improvement, cooldown left, best value
        self.plateau_scale = 1.0
        self.bad_epochs = 0
        self.cooldown_left = 0
        self._configure(cfg, base_lr, epochs, steps_per_epoch, anneal)
        self._tracker = _Improvement(self.mode, cfg.threshold) if self.mode else None
        self._apply()

    # -- settings

    def _configure(
        self, cfg: ScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int, anneal: str
    ) -> None:
        if cfg.name not in SCHEDULES:
            raise ConvzooError(
                f"unknown schedule.name '{cfg.name}' (options: {', '.join(SCHEDULES)})"
            )
        if base_lr <= 0:
            raise ConvzooError(f"optim.lr must be > 0, got {base_lr}")
        if epochs < 1:
            raise ConvzooError(f"train.epochs must be >= 1, got {epochs}")
        if steps_per_epoch < 1:
            raise ConvzooError(f"steps per epoch must be >= 1, got {steps_per_epoch}")
        if cfg.warmup_epochs < 0:
            raise ConvzooError(f"schedule.warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
        if cfg.name == "onecycle":
            if cfg.warmup_epochs > 0:
                raise ConvzooError(
                    "schedule.warmup_epochs does not apply to onecycle: its rise lasts "
                    "schedule.pct_start of training (from schedule.warmup_start * lr)"
                )
            if not 0.0 <= cfg.pct_start < 1.0:
                raise ConvzooError(f"schedule.pct_start must be in [0, 1), got {cfg.pct_start}")
        if cfg.name == "multistep" and any(m < 0 for m in cfg.milestones):
            raise ConvzooError(f"schedule.milestones must be >= 0, got {cfg.milestones}")
        if anneal not in ("linear", "cos"):
            raise ConvzooError(f"onecycle anneal must be linear or cos, got '{anneal}'")
        if cfg.name == "plateau":
            if not 0.0 < cfg.factor < 1.0:
                raise ConvzooError(f"schedule.factor must be in (0, 1), got {cfg.factor}")
            self.mode: str | None = _monitor_mode(cfg.monitor, "schedule.monitor")
        else:
            self.mode = None
        self.cfg = cfg
        self.base_lr = float(base_lr)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.anneal = anneal
        self.milestones = sorted(float(m) for m in cfg.milestones)

    def retarget(
        self,
        base_lr: float | None = None,
        epochs: int | None = None,
        cfg: ScheduleConfig | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        """Continue from the current global step with new settings (a new training stage).

        A new ``steps_per_epoch`` (e.g. a new batch size) keeps the epoch position.
        Plateau state (scale, best, counters) carries over when the schedule stays plateau.
        """
        new_cfg = cfg or self.cfg
        new_spe = steps_per_epoch or self.steps_per_epoch
        if new_spe != self.steps_per_epoch:
            self.global_step = round(self.global_step * new_spe / self.steps_per_epoch)
        old_mode = self.mode
        self._configure(
            new_cfg,
            self.base_lr if base_lr is None else base_lr,
            self.epochs if epochs is None else epochs,
            new_spe,
            self.anneal,
        )
        if self.mode != old_mode:
            self._tracker = _Improvement(self.mode, new_cfg.threshold) if self.mode else None
            self.plateau_scale, self.bad_epochs, self.cooldown_left = 1.0, 0, 0
        elif self._tracker is not None:
            self._tracker.threshold = new_cfg.threshold
        self._apply()

    def set_base_lr(self, lr: float) -> None:
        """New peak lr from the current step on (e.g. ``--set optim.lr=0.01`` on resume)."""
        self.retarget(base_lr=lr)

    # -- the function of the step

    def _warmup_factor(self, e: float) -> float:
        w = self.cfg.warmup_epochs
        if self.cfg.name == "onecycle" or w <= 0 or e >= w:
            return 1.0
        s = self.cfg.warmup_start
        return s + (1.0 - s) * e / w

    def lr_at(self, step: int) -> float:
        """Base lr (group scale 1) for global step ``step``."""
        c, peak = self.cfg, self.base_lr
        e = step / self.steps_per_epoch
        E = float(self.epochs)
        end = max(c.min_lr, c.final_fraction * peak)
        if c.name == "constant":
            lr = peak
        elif c.name == "multistep":
            lr = peak * c.gamma ** sum(1 for m in self.milestones if e >= m)
        elif c.name == "cosine":
            w = c.warmup_epochs
            p = min(max((e - w) / (E - w), 0.0), 1.0) if w < E else 1.0
            lr = end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * p))
        elif c.name == "onecycle":
            rise = c.pct_start * E
            start = c.warmup_start * peak
            if e < rise:
                lr = start + (peak - start) * e / rise
            else:
                p = min((e - rise) / (E - rise), 1.0)
                if self.anneal == "cos":
                    lr = end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * p))
                else:
                    lr = peak + (end - peak) * p
        else:  # plateau
            lr = max(peak * self.plateau_scale, c.min_lr)
        return lr * self._warmup_factor(e)

    def lr(self) -> float:
        """The base lr (group scale 1) the next optimizer step uses."""
        return self.lr_at(self.global_step)

    def _apply(self) -> None:
        lr = self.lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    # -- the loop's calls

    def step(self) -> None:
        """Call after each optimizer step: sets the lr for the next step."""
        self.global_step += 1
        self._apply()

    def epoch_end(self, metrics: dict[str, float]) -> None:
        """Once per epoch with the eval metrics; only plateau uses them.

        Epochs without the monitored metric (no eval that epoch) are ignored.
        """
        if self.cfg.name != "plateau" or self._tracker is None:
            return
        value = _lookup(metrics, self.cfg.monitor)
        if value is None or not math.isfinite(value):
            return
        c = self.cfg
        better = self._tracker.is_better(value)
        if better:
            self._tracker.best = value
            self.bad_epochs = 0
        if self.cooldown_left > 0:  # resting after a cut: bad epochs do not count
            self.cooldown_left -= 1
            self.bad_epochs = 0
        elif not better:
            self.bad_epochs += 1
            if self.bad_epochs >= c.patience:
                if self.base_lr * self.plateau_scale > c.min_lr:
                    self.plateau_scale *= c.factor
                self.cooldown_left = c.cooldown
                self.bad_epochs = 0
        self._apply()

    # -- checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "base_lr": self.base_lr,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "anneal": self.anneal,
            "cfg": asdict(self.cfg),
            "plateau_scale": self.plateau_scale,
            "bad_epochs": self.bad_epochs,
            "cooldown_left": self.cooldown_left,
            "best": self._tracker.best if self._tracker else None,
        }

    def resume_from(self, state: dict[str, Any]) -> None:
        """Resume a checkpointed schedule under *this* schedule's settings.

        Takes the position (global step) and plateau state from ``state`` and keeps the lr,
        epochs, steps per epoch and ScheduleConfig this object was built with, so a resumed
        run with ``--set optim.lr=0.01 --epochs 44`` continues on the new curve. With unchanged
        settings this equals :meth:`load_state_dict`, i.e. the continuation is exact.
        """
        settings = (self.base_lr, self.epochs, self.cfg, self.steps_per_epoch)
        self.load_state_dict(state)
        base_lr, epochs, cfg, spe = settings
        self.retarget(base_lr=base_lr, epochs=epochs, cfg=cfg, steps_per_epoch=spe)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore position *and* settings exactly; call :meth:`retarget` after for a new stage."""
        known = {f.name for f in fields(ScheduleConfig)}
        cfg = ScheduleConfig(**{k: v for k, v in state["cfg"].items() if k in known})
        self._configure(
            cfg, state["base_lr"], state["epochs"], state["steps_per_epoch"], state["anneal"]
        )
        self.global_step = int(state["global_step"])
        self.plateau_scale = float(state["plateau_scale"])
        self.bad_epochs = int(state["bad_epochs"])
        self.cooldown_left = int(state["cooldown_left"])
        self._tracker = _Improvement(self.mode, cfg.threshold) if self.mode else None
        if self._tracker is not None and state["best"] is not None:
            self._tracker.best = float(state["best"])
        self._apply()


def build_schedule(
    optimizer: Any, cfg: ScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int
) -> LRSchedule:
    """The :class:`LRSchedule` for ``cfg``; sets the lr of step 0 on ``optimizer`` right away."""
    # `anneal` (onecycle's descent: linear | cos) is read if the config ever grows that key.
    anneal = getattr(cfg, "anneal", "linear")
    return LRSchedule(optimizer, cfg, base_lr, epochs, steps_per_epoch, anneal=anneal)


# ----------------------------------------------------------------------------- early stopping


class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` evaluated epochs.

    ``update(metrics)`` returns True when training should stop. ``patience <= 0`` never stops.
    Improvement is relative by ``threshold`` (0 = any improvement counts).
    """

    def __init__(self, patience: int, monitor: str = "val_loss", threshold: float = 0.0) -> None:
        self.patience = patience
        self.monitor = monitor
        self._tracker = _Improvement(_monitor_mode(monitor, "early stopping monitor"), threshold)
        self.bad_epochs = 0

    @property
    def best(self) -> float:
        return self._tracker.best

    def update(self, metrics: dict[str, float]) -> bool:
        value = _lookup(metrics, self.monitor)
        if value is None:
            return False
        if math.isfinite(value) and self._tracker.is_better(value):
            self._tracker.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1  # NaN/inf counts as no improvement
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._tracker.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._tracker.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
