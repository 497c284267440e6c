"""Freeze part of a model for transfer learning: a linear probe, or train only the last stage.

    frozen = freeze(model, "backbone")             # only get_classifier() trains
    frozen = freeze(model, "all_but_last_stage")   # last stage + everything after it train
    head, backbone = head_and_backbone_params(model)   # (convzoo.models.heads) for lr groups

Frozen parameters get ``requires_grad=False`` (optimizers skip them: their values stay
bit-identical). Batch norms inside the frozen part are put in eval mode *and kept there* when
``model.train()`` is called later, so their running statistics stop moving and they normalise
with those statistics — a frozen part then computes a fixed function, as timm's
``freeze_batch_norm_2d`` and detectron2's ``FrozenBatchNorm2d`` do. Unlike those, the module
stays a ``BatchNorm`` (its ``train`` method is pinned to eval on the instance instead of the
module being swapped), so the state dict keeps its keys and ``convzoo eval`` loads it into a
plain model. Dropout, RReLU and drop-path inside frozen parts keep their training behaviour
(as with timm's freezing): they have no state to protect.

The names of everything frozen are kept in ``model.frozen_names`` so that model-side schedules
(the fast family's whitening bias, ``set_epoch``) never unfreeze them.
"""

from __future__ import annotations

import types
from typing import Literal, get_args

from torch import nn

from convzoo.errors import ConvzooError
from convzoo.models.heads import head_state_keys, stage_parameter_names

FreezeMode = Literal["none", "backbone", "all_but_last_stage"]
FREEZE_MODES: tuple[str, ...] = get_args(FreezeMode)


def frozen_parameter_names(model: nn.Module, what: str) -> list[str]:
    """Names of the parameters `what` freezes (in ``named_parameters`` order), nothing changed."""
    if what not in FREEZE_MODES:
        raise ConvzooError(f"model.freeze: {what!r} is not one of {', '.join(FREEZE_MODES)}")
    names = [n for n, _ in model.named_parameters()]
    if what == "none":
        return []
    if what == "backbone":
        head = head_state_keys(model)
        return [n for n in names if n not in head]
    stages = stage_parameter_names(model)
    if len(stages) < 2:
        raise ConvzooError(f"model.freeze=all_but_last_stage: {type(model).__name__} has "
                           f"{len(stages)} stage(s); use backbone")
    early = {n for stage in stages[:-1] for n in stage}
    return [n for n in names if n in early]


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen batch norm: always eval (running statistics used, never updated)."""
    return nn.Module.train(self, False)


def _frozen_norms(model: nn.Module, frozen: set[str]) -> list[nn.Module]:
    """Batch norms of the frozen part: all their own parameters frozen; for a norm without
    parameters (``affine=False``), those of the nearest enclosing module that has some."""
    modules = dict(model.named_modules())
    norms = []
    for name, m in modules.items():
        if not isinstance(m, nn.modules.batchnorm._NormBase) or not m.track_running_stats:
            continue
        owner = name
        while True:
            prefix = f"{owner}." if owner else ""
            params = [prefix + n for n, _ in modules[owner].named_parameters()]
            if params or not owner:
                break
            owner = owner.rpartition(".")[0]
        if params and all(p in frozen for p in params):
            norms.append(m)
    return norms


def freeze(model: nn.Module, what: str) -> list[str]:
    """Freeze part of `model` in place (see the module docstring); returns the frozen names.

    ``what``: ``none`` (nothing), ``backbone`` (every parameter but the classifier head's:
    a linear probe), ``all_but_last_stage`` (the stem and every stage but the last; the last
    stage, any pre-logits layers and the head train).
    """
    names = frozen_parameter_names(model, what)
    if not names:
        return []
    frozen = set(names)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    for norm in _frozen_norms(model, frozen):
        norm.train = types.MethodType(_eval_only, norm)  # type: ignore[method-assign]
        norm.eval()
    model.frozen_names = frozenset(getattr(model, "frozen_names", frozenset()) | frozen)
    return names
