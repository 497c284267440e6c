"""Bring trained weights of any origin into a model: match them by name and shape, replace the
classifier head where it does not fit, adapt the first conv to another channel count, and say
what was done (:class:`InitReport`).

    src = read_named("torchvision:DEFAULT", arch="resnet18")   # or saved.read_init_source
    report = init_from(model, src, classes=new_classes)
    print(report.summary())

Reading weights that are not convzoo's is here too: named weights, ``torchvision:<Enum>.<TAG>``
(``ResNet18_Weights.IMAGENET1K_V1``), or ``torchvision:DEFAULT`` / ``torchvision:<TAG>`` for the
model ``arch`` names, and ``timm:<name>.<tag>``, downloaded (cached) where the machine is
online (offline, the error names the file to fetch); and the state dict inside a torchvision or
timm file (``.pth``/``.pt``/``.bin``), plain or wrapped in ``{"state_dict" | "model" |
"model_state_dict" | "module": ...}`` (:func:`foreign_state`). Files are read, and convzoo's
own runs and checkpoints verified, by ``convzoo.saved`` (``saved.load_init``: any source, the
one entry ``model.init`` takes), which sits above this package and hands the tensors down as a
:class:`WeightsSource`; nothing here imports it.

What is loaded (:func:`init_from`): every key of the model whose name and shape match.
Prefixes that wrappers add to every key (DDP ``module.``, torch.compile ``_orig_mod.``,
Lightning ``model.``) are stripped when that matches the model better. The classifier head
(``model.get_classifier()``) is re-initialised instead when its shape differs, when the
source's class names are known and differ from ``classes``, or when ``head="new"``. Any other
shape mismatch is an error naming the key and both shapes, except the first conv reading a
different number of input channels, which is adapted as timm adapts it (summed over RGB for 1
channel, repeated and rescaled otherwise). Keys of the model missing from the source keep
their initialisation and keys of the source the model lacks are ignored; both are reported,
and ``strict=True`` makes either (outside the head) an error.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import urllib.error
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from convzoo.errors import ConvzooError
from convzoo.integrity import check_finite
from convzoo.models.heads import head_state_keys, num_outputs
from convzoo.models.registry import TIMM_PREFIX, import_timm

TORCHVISION_PREFIX = "torchvision:"
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
KEY_PREFIXES = ("module.", "_orig_mod.", "model.")

HeadPolicy = Literal["auto", "new", "keep"]


@dataclass
class InitReport:
    """What ``load_init`` did, key by key (state-dict keys of the model)."""

    source: str  # what was read: a path, or the named weights with their URL
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # head keys left at a fresh init
    missing: list[str] = field(default_factory=list)  # model keys the source lacks (kept)
    unexpected: list[str] = field(default_factory=list)  # source keys the model lacks
    adapted: list[str] = field(default_factory=list)  # first conv adapted to in_chans
    head_reason: str = ""  # why the head was re-initialised ("" = it was loaded)
    source_classes: list[str] | None = None  # class names stored with the weights, if any
    took: dict[str, Any] = field(default_factory=dict)  # config keys taken from the source

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"init from {self.source}: {len(self.loaded)} tensors loaded"]
        if self.reinitialised:
            parts.append(f"head re-initialised ({self.head_reason})")
        if self.adapted:
            parts.append(f"adapted {', '.join(self.adapted)}")
        for label, keys in (("missing (kept at init)", self.missing),
                            ("unexpected (ignored)", self.unexpected)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- reading sources


@dataclass
class WeightsSource:
    """Tensors to start a model from: their state dict, what they were read from (for the
    report and messages), and their class names where the source stores them."""

    state: dict[str, Tensor]
    description: str
    classes: list[str] | None = None


def _tensor_dict(obj: Any, where: str) -> dict[str, Tensor]:
    """The state dict inside a loaded file (unwrapping the usual wrapper keys)."""
    for _ in range(3):  # e.g. {"state_dict": {"model": {...}}}
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if isinstance(obj, Mapping):
        keys = ", ".join(map(str, list(obj)[:6]))
        raise ConvzooError(f"{where}: no state dict found (top-level keys: {keys}); expected "
                           f"tensors by name, or one of {', '.join(WRAPPER_KEYS)} holding them")
    raise ConvzooError(f"{where}: holds a {type(obj).__name__}, not a state dict")


def _offline_hint(what: str, url: str, reason: Exception) -> ConvzooError:
    filename = url.rstrip("/").rsplit("/", 1)[-1] or "the weights file"
    return ConvzooError(
        f"could not download {what} from {url} ({type(reason).__name__}: "
        f"{str(reason).splitlines()[0][:120] if str(reason) else 'no detail'}); offline? fetch "
        f"{filename} on a machine with internet access and pass its path instead, e.g. "
        f"--set model.init=/path/to/{filename}")


OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url``'s host answers on its port within ``timeout`` seconds (False when
    HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set). Asked before a download, because offline
    the libraries retry for a minute (timm via the hub: 62 s measured) before they fail."""
    if any(os.environ.get(k, "").strip().lower() in ("1", "on", "yes", "true")
           for k in OFFLINE_ENV):
        return False
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """The Hugging Face hub in offline mode for the block: files come from the local cache,
    with no network round trips (``huggingface_hub.constants.HF_HUB_OFFLINE``, read at call
    time; the environment variable is read only when the library is imported)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _read_torchvision(spec: str, arch: str | None) -> WeightsSource:
    import torchvision.models as tvm

    name = spec.removeprefix(TORCHVISION_PREFIX)
    try:
        if "." in name:  # ResNet18_Weights.IMAGENET1K_V1
            w = tvm.get_weight(name)
        else:  # DEFAULT or a tag of the model's own weights enum
            if arch is None or arch.startswith(TIMM_PREFIX):
                raise ConvzooError(f"{spec}: name the weights in full for this model, e.g. "
                                   "torchvision:ResNet18_Weights.IMAGENET1K_V1")
            w = tvm.get_model_weights(arch)[name]
    except (KeyError, ValueError, AttributeError) as e:
        raise ConvzooError(f"{spec}: unknown torchvision weights ({e}); see "
                           "torchvision.models.list_models() and get_model_weights(name)") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / w.url.rsplit("/", 1)[-1]
    if not cached.is_file() and not reachable(w.url):
        raise _offline_hint(f"torchvision weights {w}", w.url, OSError("no network")) from None
    try:
        state = w.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise _offline_hint(f"torchvision weights {w}", w.url, e) from None
    check_finite(state.items(), f"torchvision {w} ({w.url})", "delete the cached download")
    return WeightsSource(dict(state), f"torchvision {w} ({w.url})",
                         list(w.meta.get("categories", [])))


def _read_timm(spec: str) -> WeightsSource:
    timm = import_timm(f"model.init {spec!r}")
    name = spec.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        raise ConvzooError(f"{spec}: unknown timm model; see `convzoo models --all`")
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    url = (f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
           if cfg is not None and cfg.hf_hub_id else (cfg.url if cfg is not None else ""))
    if not url:
        raise ConvzooError(f"{spec}: timm has no pretrained weights for this name "
                           "(name a tag, e.g. timm:resnet18.a1_in1k)")
    offline = contextlib.nullcontext()
    if not reachable(url):  # the cache, or one line now (not a minute of retries)
        if not _in_hub_cache(cfg):
            raise _offline_hint(f"timm weights {name}", url, OSError("no network")) from None
        offline = hub_offline()
    try:
        with offline:
            source_model = timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as e:  # hub/URL errors are OSErrors
        raise _offline_hint(f"timm weights {name}", url, e) from None
    label_names = getattr(source_model, "pretrained_cfg", {}).get("label_names")
    check_finite(source_model.state_dict().items(), f"timm {name} ({url})",
                 "delete the cached download")
    return WeightsSource(source_model.state_dict(), f"timm {name} ({url})",
                   list(label_names) if label_names else None)


def _in_hub_cache(cfg: Any) -> bool:
    """Whether timm's weights for pretrained config ``cfg`` are in the local hub cache."""
    if cfg is None or not cfg.hf_hub_id:
        return False
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.hf_hub_id.split("@")[0]
    return any(isinstance(try_to_load_from_cache(repo, f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def foreign_state(obj: Any, where: str) -> WeightsSource:
    """The state dict inside a state-dict file of others (torchvision, timm; read by
    ``saved.read_torch_file``): unwrapped, and checked for finite values (such files carry no
    digest)."""
    state = _tensor_dict(obj, where)
    check_finite(state.items(), where, "use another copy of these weights")
    return WeightsSource(state, where)


def is_named(source: str) -> bool:
    """Whether `source` names downloadable weights (``torchvision:...``, ``timm:...``)."""
    return source.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def read_named(spec: str, arch: str | None = None) -> WeightsSource:
    """The tensors (and class names) that ``torchvision:...`` or ``timm:...`` names."""
    if spec.startswith(TORCHVISION_PREFIX):
        return _read_torchvision(spec, arch)
    return _read_timm(spec)


# ----------------------------------------------------------------------------- matching


def _align_prefix(state: dict[str, Tensor], target: set[str]) -> dict[str, Tensor]:
    """Strip wrapper prefixes every key carries (DDP, torch.compile, Lightning) when that
    makes more keys match the model."""
    best, best_hits = state, len(set(state) & target)
    changed = True
    while changed:
        changed = False
        for prefix in KEY_PREFIXES:
            if best and all(k.startswith(prefix) for k in best):
                stripped = {k[len(prefix):]: v for k, v in best.items()}
                hits = len(set(stripped) & target)
                if hits > best_hits or (hits == best_hits and hits == 0):
                    best, best_hits, changed = stripped, hits, True
    return best


def _adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """(O, I, k, k) conv weights for `in_chans` inputs, as timm's ``adapt_input_conv``: the sum
    over input channels for 1, else the weights tiled over the channels and rescaled by
    I / in_chans, so a grey or multi-band image of the same intensity gives the same output."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def shape_text(t: Tensor) -> str:
    """``(64, 3, 7, 7)``: a tensor's shape in messages."""
    return "(" + ", ".join(map(str, t.shape)) + ")"


def check_head(head: str) -> None:
    if head not in ("auto", "new", "keep"):
        raise ConvzooError(f"head={head!r}: choose auto, new or keep")


def init_from(
    model: nn.Module,
    src: WeightsSource,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    arch: str | None = None,
    head: HeadPolicy = "auto",
    strict: bool = False,
) -> InitReport:
    """Load `src`'s tensors into `model` in place (see the module docstring); what
    ``saved.load_init`` does once it has read the source.

    num_classes: the class count the model should end with; its head is reset to it first if
        it has another. classes: the target class names; a source that stores different ones
        gets a new head even when the shapes agree (classes 0-4 -> classes 5-9).
    arch: the model's registry name (used in messages).
    head: auto (re-initialise when needed, see above), new (always), keep (never: a head of
        another shape is an error).
    """
    check_head(head)
    if num_classes is not None and num_outputs(model.get_classifier()) != num_classes:
        model.reset_classifier(num_classes)
    name = arch or type(model).__name__
    target = model.state_dict()
    state = _align_prefix(src.state, set(target))
    head_keys = head_state_keys(model)
    report = InitReport(src.description, source_classes=src.classes)

    # The head: loaded when every key is there with its shape and the classes agree.
    reasons = ["asked for a new head"] if head == "new" else []
    misfit = [k for k in sorted(head_keys) if k in state and state[k].shape != target[k].shape]
    reasons += [f"{k} {shape_text(state[k])} in the source, {shape_text(target[k])} here"
                for k in misfit]
    reasons += [f"{k} not in the source" for k in sorted(head_keys) if k not in state]
    if classes is not None and src.classes and list(classes) != list(src.classes):
        reasons.append(f"classes differ ({len(src.classes)} in the source: "
                       f"{', '.join(src.classes[:3])}...; {len(classes)} here: "
                       f"{', '.join(list(classes)[:3])}...)")
    if head == "keep" and misfit:
        raise ConvzooError(f"{src.description}: head does not fit {name} ({reasons[0]}) and "
                           "head=keep")
    new_head = bool(reasons) and head != "keep"
    report.head_reason = "; ".join(reasons[:2]) if new_head else ""

    first_conv = next((k for k, v in target.items() if v.ndim == 4), None)
    to_load: dict[str, Tensor] = {}
    for k, t in target.items():
        if k in head_keys and new_head:
            report.reinitialised.append(k)
            continue
        if k not in state:
            report.missing.append(k)
            continue
        s = state[k]
        if s.shape == t.shape:
            to_load[k] = s
            report.loaded.append(k)
        elif (k == first_conv and s.ndim == 4 and s.shape[0] == t.shape[0]
              and s.shape[2:] == t.shape[2:]):
            to_load[k] = _adapt_input_conv(s.float(), t.shape[1]).to(s.dtype)
            report.adapted.append(f"{k} {shape_text(s)} -> {shape_text(t)}")
            report.loaded.append(k)
        else:
            raise ConvzooError(
                f"{src.description}: {k} has shape {shape_text(s)} there but {shape_text(t)} in "
                f"{name}; "
                "only the classifier head may differ (is it another architecture or variant?)")
    model_keys = set(target)
    report.unexpected = [k for k in state if k not in model_keys]
    if not report.loaded:
        raise ConvzooError(
            f"{src.description}: none of its {len(state)} tensors match {name} (first there: "
            f"{next(iter(state), '-')}; first here: {next(iter(target), '-')}); weights of "
            "another architecture?")
    if strict and (report.missing or report.unexpected):
        what, key = ("missing from the source", report.missing[0]) if report.missing else (
            "not in the model", report.unexpected[0])
        raise ConvzooError(f"{src.description}: {key} is {what} (strict)")
    model.load_state_dict(to_load, strict=False)
    return report
