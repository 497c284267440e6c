"""The classifier interface every model shares, and the generic code built on it.

Every zoo model (and every timm model, which has the same two methods) offers:

    model.get_classifier() -> nn.Module     # the module mapping pooled features to logits
    model.reset_classifier(num_classes)     # a fresh head for num_classes (0: no head, the
                                            # model then returns its pooled features)

and zoo models also name their stages, stem first, in forward order:

    model.stage_names() -> list[list[str]]  # submodule / parameter names per stage

Nothing here special-cases a model: the head is found by *identity* of the tensors
``get_classifier()`` holds (so a head made of two modules, e.g. a linear layer followed by
BatchNorm1d on the logits, counts as one), and timm models' stages come from timm's own
``group_matcher(coarse=True)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from convzoo.errors import ConvzooError


def new_head(in_features: int, num_classes: int, *, bias: bool = True,
             init: Callable[[nn.Linear], None] | None = None) -> nn.Module:
    """A freshly initialised ``Linear(in_features, num_classes)``, or ``Identity`` for 0 classes.

    ``init`` applies the family's own rule (the one its constructor uses); None keeps
    PyTorch's default ``nn.Linear`` initialisation.
    """
    if num_classes < 0:
        raise ConvzooError(f"num_classes must be >= 0 (0 = no head), got {num_classes}")
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes, bias=bias)
    if init is not None:
        init(head)
    return head


def num_outputs(head: nn.Module) -> int:
    """Class count of a head (the last Linear's out_features; 0 when it has no Linear)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def _require_interface(model: nn.Module) -> None:
    if not callable(getattr(model, "get_classifier", None)):
        raise ConvzooError(f"{type(model).__name__} has no get_classifier(): not a convzoo "
                           "or timm classifier (a model of your own needs get_classifier() and "
                           "reset_classifier(k) for this; docs/models.md, your own model)")


def head_state_keys(model: nn.Module) -> set[str]:
    """``state_dict`` keys of the classifier head (parameters and buffers of get_classifier())."""
    _require_interface(model)
    head = model.get_classifier()
    ids = {id(t) for t in head.parameters()} | {id(t) for t in head.buffers()}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def head_and_backbone_params(
    model: nn.Module,
) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Split ``model.named_parameters()`` into (head, backbone), frozen ones included.

    The one answer to "which parameters are the head", for a parameter-group rule that gives
    the backbone a lower learning rate (drop the entries with ``requires_grad=False`` there).
    """
    keys = head_state_keys(model)
    head: dict[str, nn.Parameter] = {}
    backbone: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        (head if name in keys else backbone)[name] = p
    return head, backbone


def split_after_pools(layers: nn.Sequential, prefix: str) -> list[list[str]]:
    """Names ``prefix.i`` of a plain conv stack cut into stages: a stage ends with a pooling
    layer and the parameter-free layers after it (ReLU, dropout), so every stage has weights."""
    stages: list[list[str]] = [[]]
    pooled = False
    for i, layer in enumerate(layers):
        if pooled and any(True for _ in layer.parameters()):
            stages.append([])
            pooled = False
        stages[-1].append(f"{prefix}.{i}")
        pooled = pooled or isinstance(layer, nn.MaxPool2d | nn.AvgPool2d)
    return stages


def _belongs(name: str, prefixes: list[str]) -> bool:
    """Is parameter `name` the parameter or inside the submodule named by one of `prefixes`?"""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def stage_parameter_names(model: nn.Module) -> list[list[str]]:
    """Parameter names of each stage, stem first; parameters in no stage are head-side.

    Zoo models name their stages (``stage_names()``); timm models group their parameters
    with ``group_matcher(coarse=True)`` (stem, one group per stage, head last), which timm's
    own layer-decay and freezing use.
    """
    names = [n for n, _ in model.named_parameters()]
    if callable(getattr(model, "stage_names", None)):
        return [[n for n in names if _belongs(n, prefixes)] for prefixes in model.stage_names()]
    if callable(getattr(model, "group_matcher", None)):  # a timm model
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        ordered = [groups[k] for k in sorted(groups)]
        head = head_state_keys(model)
        return [g for g in ordered if not set(g) & head]  # the head's group is not a stage
    raise ConvzooError(f"{type(model).__name__} does not name its stages "
                       "(no stage_names() or group_matcher())")
