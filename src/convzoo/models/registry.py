"""Model registry: every network is a small factory function registered under a stable name.

    @register_model(source="He et al. 2015", input_size=(3, 32, 32))
    def resnet20(num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module: ...

    model = create_model("resnet20", num_classes=100)

A project registers its own architectures the same way (``convzoo.register_model(name,
factory)``, or as a decorator); the name is then usable in recipes, ``--model`` and ``convzoo
models``. A process that did not import the project's module imports the modules named in the
environment variable ``CONVZOO_MODELS`` (comma-separated) on the first lookup of a name it does
not know: a file never names code to run (docs/models.md).

Names ``timm:<name>`` resolve to timm's architectures (``pip install 'convzoo[timm]'``),
built with ``timm.create_model(name, pretrained=False, num_classes=, in_chans=, **kwargs)``
(random init: trained weights come from ``convzoo.models.weights.load_init``). Names
``custom:<module>.<class>`` are modules passed to ``convzoo.train(model=...)`` as objects: they
resolve only while the caller supplies the object (:func:`supplied`). This module is the one
place that resolves a model name.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import importlib
import inspect
import math
import os
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from convzoo.errors import ConvzooError

ModelFactory = Callable[..., nn.Module]

MODULES_ENV = "CONVZOO_MODELS"  # modules that register a project's models, comma-separated
CUSTOM_PREFIX = "custom:"  # a module passed as an object: convzoo.train(model=net)
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class ModelEntry:
    """One registered network: its factory and the facts `convzoo models` prints."""

    name: str
    factory: ModelFactory
    source: str  # the system / paper whose structure it reproduces
    input_size: tuple[int, int, int]  # default (C, H, W)
    description: str = ""
    module: str = ""  # the Python module that registered it (a project's, or convzoo's)

    @property
    def zoo(self) -> bool:
        """One of convzoo's own models or timm's (not a project's)."""
        return self.module.startswith("convzoo.") or self.source == "timm"

    def build(self, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
        """The factory called with what it takes: ``num_classes`` (by keyword, or as the first
        argument of a factory that has no such keyword), ``in_chans`` where it accepts it."""
        accepted = _accepted_keywords(self.factory)
        if accepted is None or "in_chans" in accepted:
            kwargs = {"in_chans": in_chans, **kwargs}
        if accepted is None or "num_classes" in accepted:
            return self.factory(num_classes=num_classes, **kwargs)
        return self.factory(num_classes, **kwargs)


_REGISTRY: dict[str, ModelEntry] = {}
_SUPPLIED: dict[str, ModelEntry] = {}  # custom:... names while their caller supplies them


def register_model(name: str | None = None, factory: ModelFactory | None = None, *,
                   input_size: tuple[int, int, int] | None = None, source: str = "",
                   description: str = "") -> Any:
    """Register ``factory(num_classes[, in_chans, **kwargs]) -> nn.Module`` under ``name``.

        convzoo.register_model("tinynet", make_tinynet, input_size=(3, 32, 32))

        @convzoo.register_model("tinynet")         # or @register_model(): the function's name
        def make_tinynet(num_classes: int = 10, width: int = 16) -> nn.Module: ...

    Returns the factory (or, without one, a decorator that registers and returns it).
    input_size: the default (C, H, W) that ``convzoo models`` counts FLOPs at (default 3x32x32).
    source / description: the table's columns (default: the module and the docstring's first
    line). A factory's keyword parameters with plain default values are what ``model.kwargs``
    may set (and a saved run may pass back). A name is taken once; registering the same
    function again (a re-run notebook cell, a reloaded module) replaces it.
    """

    def decorator(fn: ModelFactory) -> ModelFactory:
        key = name or fn.__name__
        if not isinstance(key, str) or not NAME_PATTERN.fullmatch(key):
            raise ConvzooError(f"register_model: name {key!r} must be a letter or _ followed by "
                               "up to 99 letters, digits, '_', '.' or '-'")
        if not callable(fn):
            raise ConvzooError(f"register_model {key!r}: the factory is not callable")
        old = _REGISTRY.get(key)
        if old is not None and not _same_function(old.factory, fn):
            raise ConvzooError(f"model {key!r} is already registered (by {old.module}); "
                               "choose another name")
        module = getattr(fn, "__module__", "") or ""
        desc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        size = tuple(input_size) if input_size is not None else (3, 32, 32)
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ConvzooError(f"register_model {key!r}: input_size={input_size!r} is not "
                               "(channels, height, width)")
        _REGISTRY[key] = ModelEntry(key, fn, source or module, size, desc, module)  # type: ignore[arg-type]
        return fn

    return decorator if factory is None else decorator(factory)


def _same_function(a: Any, b: Any) -> bool:
    """The same definition (module and qualified name): a re-run cell or a reloaded module."""
    return all(getattr(a, k, None) == getattr(b, k, None) for k in ("__module__", "__qualname__"))


_IMPORTED: set[str] = set()  # modules of CONVZOO_MODELS imported by this process


def _import_user_modules() -> None:
    """Import the modules named in ``CONVZOO_MODELS`` not imported yet: their imports register
    a project's models. A module that cannot be imported is one line naming it."""
    for name in filter(None, (m.strip() for m in os.environ.get(MODULES_ENV, "").split(","))):
        if name in _IMPORTED:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:
            detail = str(e).splitlines()[0][:120] if str(e) else ""
            raise ConvzooError(f"{MODULES_ENV}: module {name!r} cannot be imported "
                               f"({type(e).__name__}: {detail})") from None
        _IMPORTED.add(name)


def custom_name(obj: Any) -> str:
    """The name a run records for a module (or factory) passed as an object:
    ``custom:<module>.<class or function>``."""
    target = obj if not isinstance(obj, nn.Module) else type(obj)
    return f"{CUSTOM_PREFIX}{target.__module__}.{target.__qualname__}"[:200]


def registered_name(factory: Any) -> str | None:
    """The registered name of `factory` (by identity), if it is one."""
    return next((e.name for e in _REGISTRY.values() if e.factory is factory), None)


@contextlib.contextmanager
def supplied(name: str, model: nn.Module | ModelFactory) -> Iterator[None]:
    """Resolve ``custom:`` `name` (``custom:`` alone: every such name, as ``convzoo.load(RUN,
    model=...)`` does) to `model` for the block: an ``nn.Module`` instance (every build returns
    that object, so training trains it and loading loads into it) or a factory
    ``callable(num_classes[, in_chans]) -> nn.Module``."""
    if isinstance(model, nn.Module):
        def factory(num_classes: int, in_chans: int = 3) -> nn.Module:
            return model
        module = type(model).__module__
    else:
        factory, module = model, getattr(model, "__module__", "")
    previous = _SUPPLIED.get(name)
    _SUPPLIED[name] = ModelEntry(name, factory, "your module", (3, 32, 32),
                                 f"{type(model).__name__} passed as an object", module)
    try:
        yield
    finally:
        if previous is None:
            _SUPPLIED.pop(name, None)
        else:
            _SUPPLIED[name] = previous


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
    _import_user_modules()
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


def get_entry(name: str, registered_by: str | None = None) -> ModelEntry:
    """The registry entry for `name`; unknown names raise ConvzooError listing close matches
    (a name of a project's, not yet registered in this process: after importing the modules of
    ``CONVZOO_MODELS``). `registered_by`: the module a saved run recorded for it (the hint)."""
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name)
    if name.startswith(CUSTOM_PREFIX):
        if name in _SUPPLIED or CUSTOM_PREFIX in _SUPPLIED:  # that name, or any (a load)
            return _SUPPLIED.get(name) or _SUPPLIED[CUSTOM_PREFIX]
        cls = name.removeprefix(CUSTOM_PREFIX).rpartition(".")[2]
        raise ConvzooError(f"model {name} was passed to convzoo.train as an object, so no "
                           f"name rebuilds it: pass it again from Python (convzoo.load(RUN, "
                           f"model={cls}(...)), convzoo.train(resume=RUN, model=...), "
                           f"convzoo.export.export(RUN, 'onnx', model=...)), or register its "
                           f"factory (convzoo.register_model) and set {MODULES_ENV}")
    if name not in _REGISTRY:
        _import_user_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        if registered_by and not registered_by.startswith("convzoo."):
            raise ConvzooError(f"unknown model {name!r}: it was registered by module "
                               f"{registered_by}; import it first, e.g. "
                               f"{MODULES_ENV}={registered_by}") from None
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else (
            f"available: {', '.join(list_models())}"
        )
        raise ConvzooError(f"unknown model {name!r}; {hint} (a project's own model: set "
                           f"{MODULES_ENV} to the module that registers it)") from None


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
    if name.startswith(CUSTOM_PREFIX):
        return frozenset()  # an object's constructor arguments are not recorded
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
        return entry.build(num_classes, in_chans, **kwargs)
    except ValueError as exc:  # a keyword with a bad value, e.g. shortcut="C"
        raise ConvzooError(f"model {name!r}: {exc}") from None
    except TypeError as exc:
        # A keyword the factory forwards in **kwargs but the model class rejects.
        match = re.search(r"(unexpected|multiple values for) keyword argument '(\w+)'", str(exc))
        if match is None or match.group(2) not in kwargs:
            raise
        raise ConvzooError(f"model {name!r} does not take keyword {match.group(2)!r}") from None
