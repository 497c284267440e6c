"""Optimizers: the one parameter-group rule, SGD with decoupled decay, lookahead, and loading a
saved optimizer state into a new stage's optimizer.

Every param group carries ``name`` (its role: ``all``, ``decay``, ``norm_bias``/``no_decay``,
``muon``) and ``lr_scale`` (its lr relative to the base lr); the schedule
(:mod:`convzoo.training.schedule`) sets ``group["lr"] = base_lr * group["lr_scale"]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable
from typing import Any

import torch
from torch import nn

from convzoo.config import OptimConfig
from convzoo.errors import ConvzooError
from convzoo.models.heads import head_and_backbone_params, stage_parameter_names
from convzoo.training.muon import Muon

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")

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
        # fp16: a fused SGD would take GradScaler's inf check into its kernel and skip only its
        # own update, not the decay below; this makes the scaler unscale and skip step() whole.
        self._step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        for g in self.param_groups:
            wd = g.get("decoupled_wd", 0.0)
            params = [p for p in g["params"] if p.grad is not None]
            if wd and params:
                torch._foreach_mul_(params, 1.0 - float(g["lr"]) * wd)
        return super().step(closure)


def _use_fused(cfg: OptimConfig, cls: type, device_type: str) -> bool:
    """Fused kernels only on CUDA: auto (None) uses them when torch has them, True insists."""
    if cfg.fused is False or device_type != "cuda":
        return False  # never on CPU, even when asked: CPU fused kernels are not the fast path
    if "fused" not in inspect.signature(cls).parameters:
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


# ----------------------------------------------------------------------------- param groups


def group_settings(name: str, cfg: OptimConfig) -> dict[str, Any]:
    """The hyperparameters of the param group called ``name`` under ``cfg`` (the one rule).

    ``all``/``decay`` (conv and linear weights): lr x1, ``weight_decay``. ``norm_bias`` (1-D:
    norm weights and biases): lr x ``bias_lr_scale``, decay x ``bias_wd_scale``; ``no_decay``:
    the same group with decay 0 (``no_decay_norm_bias``). ``muon`` (4-D conv filters under
    Muon): lr ``muon_lr`` (0 = lr), no decay, Nesterov momentum ``muon_momentum``.
    A ``backbone`` part (``backbone:decay``; ``optim.backbone_lr_scale != 1``) multiplies
    the lr by ``backbone_lr_scale``; ``head:`` groups keep the rule's lr. A ``depthK`` part
    (``depth2:decay``, ``backbone/depth2:decay``; ``optim.layer_decay``) multiplies it by
    ``layer_decay ** K``.
    """
    part, _, role = name.rpartition(":")
    tokens = part.split("/") if part else []
    scale = float(cfg.backbone_lr_scale) if "backbone" in tokens else 1.0
    for token in tokens:
        if token.startswith("depth") and cfg.layer_decay is not None:
            scale *= float(cfg.layer_decay) ** int(token.removeprefix("depth"))
    if role == "muon":
        return {"lr_scale": scale * (cfg.muon_lr or cfg.lr) / cfg.lr, "weight_decay": 0.0,
                "momentum": cfg.muon_momentum or cfg.momentum, "nesterov": True}
    if role in ("norm_bias", "no_decay"):
        wd = 0.0 if role == "no_decay" else cfg.weight_decay * cfg.bias_wd_scale
        return {"lr_scale": scale * float(cfg.bias_lr_scale), "weight_decay": wd}
    return {"lr_scale": scale, "weight_decay": cfg.weight_decay}


def param_groups(model: nn.Module, cfg: OptimConfig,
                 trainable: Collection[str] | None = None) -> list[dict[str, Any]]:
    """``model``'s trainable params in groups for every optimizer (and for resume, which
    rebuilds a checkpoint's layout with it): ``muon`` (4-D filters, ``optim.name=muon`` only),
    ``decay`` (other >= 2-D weights), ``norm_bias``/``no_decay`` (1-D), each with
    :func:`group_settings`. With no option that treats 1-D params apart, and not Muon, one
    ``all`` group. With ``backbone_lr_scale != 1`` each of these is split into ``head:<role>``
    and ``backbone:<role>`` (the head: ``heads.head_and_backbone_params``); with
    ``layer_decay`` set, by depth from the head, ``depthK:<role>`` (:func:`stage_depths`).

    ``trainable``: the names of the parameters to group (default: those with
    ``requires_grad``); resume passes the layout a checkpoint was saved with when a stage
    freezes or unfreezes part of the model (``model.freeze``)."""
    named = [(n, p) for n, p in model.named_parameters()
             if (p.requires_grad if trainable is None else n in trainable)]
    if not named:
        raise ConvzooError("the model has no trainable parameters (model.freeze froze them all?)")
    muon = cfg.name == "muon"
    split = muon or cfg.no_decay_norm_bias or cfg.bias_lr_scale != 1 or cfg.bias_wd_scale != 1
    vector = "no_decay" if cfg.no_decay_norm_bias else "norm_bias"
    head: set[str] | None = None
    if cfg.backbone_lr_scale != 1:
        head = set(head_and_backbone_params(model)[0])
    depths = stage_depths(model) if cfg.layer_decay is not None else None

    def part_of(name: str) -> tuple[int, int, str]:
        """(sort key..., prefix): head before backbone, then by depth."""
        tokens, side, depth = [], 0, 0
        if head is not None:
            side = 0 if name in head else 1
            tokens.append(("head", "backbone")[side])
        if depths is not None:
            depth = depths.get(name, 0)
            tokens.append(f"depth{depth}")
        return side, depth, "/".join(tokens) + ":" if tokens else ""

    parts = [p for *_, p in sorted({part_of(n) for n, _ in named})]

    def role(name: str, p: nn.Parameter) -> str:
        part = part_of(name)[2]
        if muon and p.ndim == 4:
            return part + "muon"
        if not split:
            return part + "all"
        return part + (vector if p.ndim <= 1 else "decay")

    groups = []
    roles = {n: role(n, p) for n, p in named}
    for part in parts:
        for name in (part + r for r in ("muon", "all", "decay", vector)):
            members = [p for n, p in named if roles[n] == name]
            if members:
                groups.append({"params": members, "name": name, **group_settings(name, cfg)})
                groups[-1]["lr"] = cfg.lr * groups[-1]["lr_scale"]  # until the schedule sets it
                if muon:
                    groups[-1]["use_muon"] = name.endswith("muon")
    if muon and not any(g["use_muon"] for g in groups):
        raise ConvzooError("optim.name=muon needs a model with conv layers (4-D weights)")
    return groups


def stage_depths(model: nn.Module) -> dict[str, int]:
    """Each parameter's depth from the head for ``optim.layer_decay``: with N stages (stem
    first, ``heads.stage_parameter_names``), stage i is at depth N - i; the head and anything
    after the last stage (pre-logits) at 0."""
    try:
        stages = stage_parameter_names(model)
    except ConvzooError as e:
        raise ConvzooError(f"optim.layer_decay: {e}") from None
    return {n: len(stages) - i for i, stage in enumerate(stages) for n in stage}


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device_type: str, total_steps: int = 0
) -> torch.optim.Optimizer | Lookahead:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable params (:func:`param_groups`).

    Build it after the model is on its device (fused kernels need CUDA params). Returns a
    ``torch.optim.Optimizer``, wrapped in :class:`Lookahead` when ``cfg.lookahead_steps > 0``.
    ``total_steps`` (optimizer steps of the stage, counted from the start of the run) is where
    lookahead ends on its slow weights and what ``lookahead_pow`` is measured against.
    """
    name = cfg.name  # names, ranges and the nesterov/momentum rule: checked by config.from_dict
    if cfg.freeze_bn_scale:
        freeze_bn_scale(model)
    groups = param_groups(model, cfg)
    if name == "muon":
        optimizer: Any = Muon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              ns_dtype=None if device_type == "cuda" else torch.float32)
    else:
        if name == "sgd":
            cls: type = SGDW if cfg.decoupled_wd else torch.optim.SGD
            kwargs: dict[str, Any] = {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
        else:  # adam + decoupled_wd is AdamW; adamw is always decoupled
            cls = torch.optim.AdamW if (name == "adamw" or cfg.decoupled_wd) else torch.optim.Adam
            kwargs = {"betas": tuple(cfg.betas), "eps": cfg.eps}
        if _use_fused(cfg, torch.optim.SGD if cls is SGDW else cls, device_type):
            kwargs["fused"] = True
        optimizer = cls(groups, lr=cfg.lr, **kwargs)
    if cfg.lookahead_steps > 0:
        optimizer = Lookahead(optimizer, k=cfg.lookahead_steps, alpha=cfg.lookahead_alpha,
                              pow=cfg.lookahead_pow, total_steps=total_steps)
    return optimizer


def _family(name: str) -> str:
    return "adam" if name.lower() in ("adam", "adamw") else name.lower()


def load_optimizer_state(optimizer: Any, saved: dict[str, Any], model: nn.Module,
                         saved_cfg: OptimConfig, cfg: OptimConfig,
                         saved_trainable: Collection[str] | None = None) -> None:
    """Load a checkpoint's optimizer state into ``optimizer``, built for a (new) stage's ``cfg``.

    The per-parameter state (momentum buffers, Adam moments, lookahead's slow weights) is
    matched to parameters through the checkpoint's own layout, rebuilt with the same rule
    (:func:`param_groups` under ``saved_cfg``); the group hyperparameters stay those of
    ``cfg``. So a stage may change any of them, the grouping options included; only the kind
    of optimizer cannot change (its state would not fit). ``saved_trainable``: the names of the
    parameters the checkpoint's optimizer held, when they differ from those trainable now (a
    stage that freezes or unfreezes part of the model); parameters it did not hold start with
    fresh state.
    """
    if _family(saved_cfg.name) != _family(cfg.name):
        raise ConvzooError(f"optim.name={cfg.name}: the checkpoint was trained with "
                           f"{saved_cfg.name}, whose state does not carry over; a resumed stage "
                           "keeps its optimizer")
    inner_saved = saved["optimizer"] if "lookahead" in saved else saved
    saved_order = [p for g in param_groups(model, saved_cfg, saved_trainable)
                   for p in g["params"]]
    saved_count = sum(len(g["params"]) for g in inner_saved["param_groups"])
    if saved_count != len(saved_order):
        raise ConvzooError(f"the checkpoint's optimizer holds {saved_count} parameters, this "
                           f"model {len(saved_order)} trainable ones: not the same model")
    by_param = {id(p): inner_saved["state"][i] for i, p in enumerate(saved_order)
                if i in inner_saved["state"]}
    inner = optimizer.optimizer if isinstance(optimizer, Lookahead) else optimizer
    order = [p for g in inner.param_groups for p in g["params"]]
    index = {id(p): i for i, p in enumerate(order)}
    groups, start = [], 0
    for g in inner.param_groups:
        groups.append({**{k: v for k, v in g.items() if k != "params"},
                       "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    inner.load_state_dict({"state": {index[id(p)]: by_param[id(p)] for p in order
                                     if id(p) in by_param}, "param_groups": groups})
    if not isinstance(optimizer, Lookahead):
        return
    with torch.no_grad():
        if "lookahead" not in saved:  # switched on in this stage: start from the loaded weights
            torch._foreach_copy_(optimizer.slow, [p.detach() for p in optimizer._params])
            return
        slow = dict(zip((id(p) for p in saved_order), saved["slow"], strict=True))
        optimizer.fast_steps = int(saved["lookahead"]["fast_steps"])
        for s, p in zip(optimizer.slow, optimizer._params, strict=True):
            s.copy_(slow[id(p)] if id(p) in slow else p.detach())  # unfrozen now: from here


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
        if pow > 0 and total_steps < 1:  # k, alpha, pow ranges: checked by config.from_dict
            raise ValueError(f"lookahead_pow={pow} needs the run's total steps, got {total_steps}")
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
        elif self.fast_steps == self.total_steps:
            # The stage's last step falls between syncs: end on the slow weights, discarding
            # the fast steps since the last sync (airbench's final ``update(decay=1.0)``).
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
