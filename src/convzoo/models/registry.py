"""Model registry: every network is a small factory function registered under a stable name.

    @register_model(source="He et al. 2015", input_size=(3, 32, 32))
    def resnet20(num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module: ...

    model = create_model("resnet20", num_classes=100)

Names ``timm:<name>`` resolve to timm's architectures (``pip install 'convzoo[timm]'``),
built with ``timm.create_model(name, pretrained=False, num_classes=, in_chans=, **kwargs)``
(random init: trained weights come from ``convzoo.models.weights.load_init``). This module is
the one place that resolves a model name, zoo or timm.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from convzoo.errors import ConvzooError

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered network: its factory and the facts `convzoo models` prints."""

    name: str
    factory: ModelFactory
    source: str  # the system / paper whose structure it reproduces
    input_size: tuple[int, int, int]  # default (C, H, W)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *, source: str, input_size: tuple[int, int, int], description: str = ""
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory under its function name. Duplicate names raise."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        name = factory.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        desc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[name] = ModelEntry(name, factory, source, tuple(input_size), desc)
        return factory

    return decorator


TIMM_PREFIX = "timm:"
TIMM_EXTRA = "pip install 'convzoo[timm]'"


def import_timm(why: str) -> Any:
    """The timm module, or a ConvzooError saying `why` it is needed and how to install it."""
    try:
        import timm
    except ImportError:
        raise ConvzooError(f"{why} needs timm, an optional extra: {TIMM_EXTRA}") from None
    return timm


def list_models(pattern: str = "*", *, include_timm: bool = False) -> list[str]:
    """Names of registered models matching the shell-style `pattern`, sorted; with
    `include_timm`, then timm's architectures as ``timm:<name>`` (needs timm)."""
    names = [n for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, pattern)]
    if include_timm or pattern.startswith(TIMM_PREFIX):
        timm = import_timm("listing timm's models")
        timm_pattern = pattern.removeprefix(TIMM_PREFIX)
        names += [TIMM_PREFIX + n for n in timm.list_models(timm_pattern)]
    return names


@functools.cache
def _timm_entry(name: str) -> ModelEntry:
    """A ModelEntry for ``timm:<arch>`` (``<arch>`` may carry a pretrained tag, ``.a1_in1k``)."""
    timm = import_timm(f"model {name!r}")
    arch = name.removeprefix(TIMM_PREFIX)
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else (
            "see `convzoo models --all`")
        raise ConvzooError(f"unknown timm model {arch!r}; {hint}")
    cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    input_size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)

    def factory(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, **kwargs)

    factory.__name__ = name
    return ModelEntry(name, factory, "timm", input_size, f"timm {arch}")


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name`; unknown names raise ConvzooError listing close matches."""
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else (
            f"available: {', '.join(list_models())}"
        )
        raise ConvzooError(f"unknown model {name!r}; {hint}") from None


def _accepted_keywords(factory: ModelFactory) -> set[str] | None:
    """Keywords an explicit-signature factory accepts; None if it forwards **kwargs."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None  # checked by the model class it forwards to (TypeError below)
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# What a stored model_kwargs may pass to timm.create_model: the regularisation and pooling a
# recipe sets. Never pretrained*, checkpoint_path, pretrained_cfg*, cache_dir or anything else
# that loads weights or names a path (timm opens `checkpoint_path` when it builds the model).
TIMM_FILE_KEYWORDS = frozenset({
    "drop_rate", "drop_path_rate", "drop_block_rate", "attn_drop_rate", "proj_drop_rate",
    "pos_drop_rate", "global_pool", "output_stride"})


def _plain(value: Any) -> bool:
    """A value YAML writes as it is: null, true/false, a finite number, text, or a list of
    these."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list | tuple) and all(_plain(v) for v in value)


def stored_keywords(name: str) -> frozenset[str]:
    """The keyword arguments a stored ``model.kwargs`` may pass to model `name`: an allow-list.

    A zoo model: the keyword parameters with plain default values of its factory, or, for a
    factory that forwards ``**kwargs``, of the model class it returns (its return annotation);
    ``num_classes``/``in_chans`` come from their own fields. A ``timm:`` model:
    :data:`TIMM_FILE_KEYWORDS`. Checked for the config a run trains with and for every file a
    model is rebuilt from, so a run never stores what its own files may not pass back."""
    if name.startswith(TIMM_PREFIX):
        return TIMM_FILE_KEYWORDS
    factory = get_entry(name).factory
    target: Any = factory
    if _accepted_keywords(factory) is None:  # forwards **kwargs: to the class it returns
        try:
            target = typing.get_type_hints(factory).get("return")
        except (NameError, TypeError):
            target = None
        if not (isinstance(target, type) and issubclass(target, nn.Module)) \
                or target.__init__ is nn.Module.__init__:
            return frozenset()
        target = target.__init__
    params = inspect.signature(target).parameters.values()
    return frozenset(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.default is not p.empty and _plain(p.default)
                     and p.name not in ("num_classes", "in_chans"))


def check_stored_kwargs(name: str, kwargs: Any, where: str) -> dict[str, Any]:
    """`kwargs` if model `name` may take them from a file or a run's config
    (:func:`stored_keywords`, plain values only); else ConvzooError naming `where`."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConvzooError(f"{where}: model_kwargs must be a mapping of names to values, got "
                           f"{type(kwargs).__name__}")
    allowed = stored_keywords(name)
    for key, value in kwargs.items():
        if key not in allowed:
            raise ConvzooError(f"{where}: keyword {key!r} is not one that {name} can be rebuilt "
                               f"with from a saved file (allowed: "
                               f"{', '.join(sorted(allowed)) or 'none'})")
        if not _plain(value):
            raise ConvzooError(f"{where}: keyword {key}={str(value)[:60]!r}: only null, "
                               "true/false, finite numbers, text and lists of them")
    return kwargs


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build the registered (or ``timm:``) model `name`; bad names or keywords raise
    ConvzooError."""
    entry = get_entry(name)
    accepted = _accepted_keywords(entry.factory)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            options = ", ".join(sorted(accepted - {"num_classes", "in_chans"})) or "none"
            raise ConvzooError(
                f"model {name!r} does not take keyword {unknown[0]!r} (accepted: {options})"
            )
    try:
        return entry.factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except ValueError as exc:  # a keyword with a bad value, e.g. shortcut="C"
        raise ConvzooError(f"model {name!r}: {exc}") from None
    except TypeError as exc:
        # A keyword the factory forwards in **kwargs but the model class rejects.
        match = re.search(r"(unexpected|multiple values for) keyword argument '(\w+)'", str(exc))
        if match is None or match.group(2) not in kwargs:
            raise
        raise ConvzooError(f"model {name!r} does not take keyword {match.group(2)!r}") from None
