"""Start a model from trained weights, and rebuild a model from a weights file.

    report = load_init(model, "runs/cifar10-r20", classes=new_classes)   # fine-tune a run
    report = load_init(model, "resnet18-f37072fd.pth")                   # torchvision file
    report = load_init(model, "torchvision:DEFAULT", arch="resnet18")    # named (online)
    report = load_init(model, "timm:resnet18.a1_in1k")                   # timm tag (online)
    print(report.summary())

    model, meta = load_weights_file("runs/r20/model.safetensors")       # eval/predict/export

Sources ``load_init`` reads:

* a convzoo run directory (its ``last.pt``/``best.pt``, or for ``last`` its
  ``model.safetensors`` when the checkpoints are gone) or checkpoint file, read with
  ``weights_only=True`` and verified (digest, finite tensors, fields) through
  ``convzoo.train.checkpoint.load_checkpoint``; ``weights`` auto (default) takes the run's
  EMA weights when it kept an EMA, ``ema``/``raw`` insist;
* a ``.safetensors`` file (convzoo's, verified by its digest, or timm's / Hugging Face's
  ``model.safetensors``);
* a torchvision or timm state-dict file (``.pth``/``.pt``/``.bin``), plain or wrapped in
  ``{"state_dict" | "model" | "model_state_dict" | "module": ...}``; prefixes that wrappers
  add to every key (DDP ``module.``, torch.compile ``_orig_mod.``, Lightning ``model.``) are
  stripped when that matches the model better; files that are not convzoo's carry no digest and
  are checked for readability and finite values only;
* ``torchvision:<Enum>.<TAG>`` (``ResNet18_Weights.IMAGENET1K_V1``), or ``torchvision:DEFAULT``
  / ``torchvision:<TAG>`` for the model ``arch`` names, and ``timm:<name>.<tag>``: downloaded
  (cached) where the machine is online; offline, the error names the file to fetch.

What is loaded: every key of the model whose name and shape match. The classifier head
(``model.get_classifier()``) is re-initialised instead when its shape differs, when the
source's class names are known and differ from ``classes``, or when ``head="new"``. Any other
shape mismatch is an error naming the key and both shapes, except the first conv reading a
different number of input channels, which is adapted as timm adapts it (summed over RGB for 1
channel, repeated and rescaled otherwise). Keys of the model missing from the source keep
their initialisation and keys of the source the model lacks are ignored; both are reported,
and ``strict=True`` makes either (outside the head) an error.
"""

from __future__ import annotations

import math
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from convzoo import config as C
from convzoo.data.images import RESIZE_RULES, SPLITS, Geometry
from convzoo.data.transforms.preprocess import KINDS, state_shapes
from convzoo.errors import ConvzooError
from convzoo.integrity import check_finite
from convzoo.jsonio import dumps_json, loads_json
from convzoo.models.heads import head_state_keys, num_outputs
from convzoo.models.registry import (
    TIMM_PREFIX,
    check_stored_kwargs,
    create_model,
    get_entry,
    import_timm,
)
from convzoo.train import checkpoint as ckpt_io
from convzoo.train.checkpoint import SAFETENSORS_FORMAT

TORCHVISION_PREFIX = "torchvision:"
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
KEY_PREFIXES = ("module.", "_orig_mod.", "model.")

HeadPolicy = Literal["auto", "new", "keep"]
WEIGHT_CHOICES = ("auto", "ema", "raw")  # checkpoint.WEIGHTS: which weights of a run


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
class _Source:
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


def _from_checkpoint(ckpt: dict[str, Any], where: str, weights: str) -> _Source:
    try:
        state, used = ckpt_io.select_weights(ckpt, weights)
    except ConvzooError as e:
        raise ConvzooError(f"{where}: {e}") from None
    return _Source(dict(state), f"{where} ({ckpt.get('model_name')}, epoch {ckpt.get('epoch')}"
                                f"{', EMA' if used == 'ema' else ''})", list(ckpt["classes"]))


def check_file_weights(path: Path, meta: Mapping[str, str], weights: str) -> None:
    """A weights file holds one set of weights: `weights` (auto|ema|raw) must be that one."""
    held = meta.get("weights")  # convzoo files say which ("ema" or "raw"); others hold raw ones
    if weights == "auto" or weights == (held or "raw"):
        return
    what = {"ema": "the EMA weights", "raw": "the trained (raw) weights"}.get(held or "raw")
    raise ConvzooError(f"{path}: a weights file holds one set of weights ({what}); "
                       f"weights={weights} needs the run's last.pt/best.pt (or use auto)")


def _classes_from_meta(meta: Mapping[str, str], where: str) -> list[str] | None:
    if "classes" not in meta:
        return None
    try:
        classes = loads_json(meta["classes"])
    except ValueError:
        raise ConvzooError(f"{where}: metadata 'classes' is not JSON") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConvzooError(f"{where}: metadata 'classes' is not a list of names")
    return classes


def _read_file(path: Path, which: str, weights: str) -> _Source:
    if path.suffix == ".safetensors":
        state, meta = ckpt_io.read_safetensors(path)
        check_file_weights(path, meta, weights)
        return _Source(state, str(path), _classes_from_meta(meta, str(path)))
    obj = ckpt_io.read_torch_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == ckpt_io.FORMAT:
        ckpt = ckpt_io.verify_checkpoint(obj, path)
        return _from_checkpoint(ckpt, str(path), weights)
    check_file_weights(path, {}, weights)
    state = _tensor_dict(obj, str(path))
    check_finite(state.items(), str(path), "use another copy of these weights")
    return _Source(state, str(path))


def _read_run_dir(path: Path, which: str, weights: str) -> _Source:
    if (path / f"{which}.pt").exists():
        ckpt = ckpt_io.load_checkpoint(path, which)
        return _from_checkpoint(ckpt, str(path / f"{which}.pt"), weights)
    # model.safetensors holds the last checkpoint's judged weights: no stand-in for best.pt
    if (path / "model.safetensors").exists() and which == "last":
        return _read_file(path / "model.safetensors", which, weights)
    what = f"{which}.pt" + (" or model.safetensors" if which == "last" else "")
    raise ConvzooError(f"{path}: not a run directory with {what}")


def _offline_hint(what: str, url: str, reason: Exception) -> ConvzooError:
    filename = url.rstrip("/").rsplit("/", 1)[-1] or "the weights file"
    return ConvzooError(
        f"could not download {what} from {url} ({type(reason).__name__}: "
        f"{str(reason).splitlines()[0][:120] if str(reason) else 'no detail'}); offline? fetch "
        f"{filename} on a machine with internet access and pass its path instead, e.g. "
        f"--set model.init=/path/to/{filename}")


def _read_torchvision(spec: str, arch: str | None) -> _Source:
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
    try:
        state = w.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise _offline_hint(f"torchvision weights {w}", w.url, e) from None
    check_finite(state.items(), f"torchvision {w} ({w.url})", "delete the cached download")
    return _Source(dict(state), f"torchvision {w} ({w.url})", list(w.meta.get("categories", [])))


def _read_timm(spec: str) -> _Source:
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
    try:
        source_model = timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as e:  # hub/URL errors are OSErrors
        raise _offline_hint(f"timm weights {name}", url, e) from None
    label_names = getattr(source_model, "pretrained_cfg", {}).get("label_names")
    check_finite(source_model.state_dict().items(), f"timm {name} ({url})",
                 "delete the cached download")
    return _Source(source_model.state_dict(), f"timm {name} ({url})",
                   list(label_names) if label_names else None)


def read_source(source: str | Path, *, which: str = "last", weights: str = "auto",
                arch: str | None = None) -> _Source:
    """The state dict (and class names, where stored) that `source` names."""
    if weights not in WEIGHT_CHOICES:
        raise ConvzooError(f"weights={weights!r}: choose {', '.join(WEIGHT_CHOICES)}")
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        return _read_torchvision(text, arch)
    if text.startswith(TIMM_PREFIX):
        return _read_timm(text)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_run_dir(path, which, weights)
    if not path.exists():  # anything else that is not a regular file: _read_file says what
        raise ConvzooError(f"model.init {path}: no such file or directory (expected a run "
                           "directory, .pt/.pth/.safetensors file, torchvision:... or timm:...)")
    return _read_file(path, which, weights)


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


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def load_init(
    model: nn.Module,
    source: str | Path,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    arch: str | None = None,
    which: str = "last",
    weights: str = "auto",
    head: HeadPolicy = "auto",
    strict: bool = False,
) -> InitReport:
    """Load trained weights from `source` into `model` in place (see the module docstring).

    num_classes: the class count the model should end with; its head is reset to it first if
        it has another. classes: the target class names; a source that stores different ones
        gets a new head even when the shapes agree (classes 0-4 -> classes 5-9).
    arch: the model's registry name (needed by ``torchvision:DEFAULT``; used in messages).
    which / weights: the checkpoint of a run directory (last|best) and its weights: auto (the
        EMA when the run kept one, as its figures), ema or raw (``checkpoint.select_weights``).
    head: auto (re-initialise when needed, see above), new (always), keep (never: a head of
        another shape is an error).
    """
    if head not in ("auto", "new", "keep"):
        raise ConvzooError(f"head={head!r}: choose auto, new or keep")
    if num_classes is not None and num_outputs(model.get_classifier()) != num_classes:
        model.reset_classifier(num_classes)
    src = read_source(source, which=which, weights=weights, arch=arch)
    name = arch or type(model).__name__
    target = model.state_dict()
    state = _align_prefix(src.state, set(target))
    head_keys = head_state_keys(model)
    report = InitReport(src.description, source_classes=src.classes)

    # The head: loaded when every key is there with its shape and the classes agree.
    reasons = ["asked for a new head"] if head == "new" else []
    misfit = [k for k in sorted(head_keys) if k in state and state[k].shape != target[k].shape]
    reasons += [f"{k} {_shape(state[k])} in the source, {_shape(target[k])} here" for k in misfit]
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
            report.adapted.append(f"{k} {_shape(s)} -> {_shape(t)}")
            report.loaded.append(k)
        else:
            raise ConvzooError(
                f"{src.description}: {k} has shape {_shape(s)} there but {_shape(t)} in {name}; "
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


# ----------------------------------------------------------------------------- weights files


# Preprocessing statistics up to this many values go into the metadata as JSON: channel
# mean/std, a mean image up to 3x224x224 (150,528); a ZCA matrix (D x D, 9.4 M values at
# 3x32x32) does not, and a file of such a run names the checkpoint to use instead.
MAX_META_VALUES = 262_144


def weights_metadata(ckpt: dict[str, Any], weights: str) -> dict[str, str]:
    """The one metadata format of convzoo's ``.safetensors`` files (a run's model.safetensors
    and ``convzoo export --format safetensors``), all values text, read by
    :func:`load_weights_file`: what rebuilds the model (``model``, ``num_classes``,
    ``in_chans``, ``model_kwargs``), ``classes``, which ``weights`` (ema|raw) of which
    ``epoch``, and what feeds it images as training did: ``geometry`` (channels, size, resize
    rule; ``image_shape`` too), ``preprocess`` (kind and statistics), ``eval_view`` (the centre
    crop of the eval view), ``eval_split`` and the resolved ``config`` (JSON)."""
    from convzoo.inference import checkpoint_geometry

    geometry = checkpoint_geometry(ckpt)
    pre = dict(ckpt["preprocess"])
    stats = {k: v.tolist() for k, v in pre.items() if k != "kind"}
    if sum(torch.as_tensor(v).numel() for v in pre.values() if isinstance(v, Tensor)) \
            > MAX_META_VALUES:
        stats = {"omitted": sorted(stats)}  # too big: the checkpoint keeps them
    augment = ckpt["config"].get("augment", {})
    return {
        "format": SAFETENSORS_FORMAT,
        "model": ckpt["model_name"],
        "num_classes": str(ckpt["num_classes"]),
        "in_chans": str(ckpt["in_chans"]),
        "classes": dumps_json(list(ckpt["classes"])),
        "model_kwargs": dumps_json(dict(ckpt["model_kwargs"])),
        "weights": weights,  # "ema" or "raw" (checkpoint.select_weights)
        "epoch": str(ckpt["epoch"]),
        "image_shape": dumps_json(list(geometry.shape)),
        "geometry": dumps_json(geometry.state()),
        "preprocess": dumps_json({"kind": pre["kind"], **stats}),
        "eval_view": dumps_json({"crop": augment.get("crop", 0),
                                 "random_resized_crop": augment.get("random_resized_crop", 0)}),
        "eval_split": str(ckpt.get("eval_split", "")),
        "config": dumps_json(ckpt["config"]),
    }


def load_weights_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model a convzoo ``.safetensors`` file describes, weights loaded, CPU, eval mode.

    The file is a run's ``model.safetensors`` or ``convzoo export --format safetensors``
    output (metadata: :func:`weights_metadata`), verified by its digest
    (``checkpoint.read_safetensors``) and its fields checked (:func:`check_model_fields`).
    ``meta``: ``model``, ``num_classes``, ``in_chans``, ``model_kwargs``, ``classes`` and,
    where the file has them, ``weights``, ``epoch``, ``image_shape``, ``geometry`` (a
    ``Geometry`` state), ``eval_view``, ``eval_split``, ``config`` (the resolved config as a
    dict) and ``preprocess`` (``{"kind": str, <stat>: float32 tensor}``,
    ``Preprocessor.from_state``'s input; None when the statistics were too large for metadata,
    e.g. ZCA).
    """
    path = Path(path)
    if not path.exists():
        raise ConvzooError(f"weights file not found: {path}")
    state, raw = ckpt_io.read_safetensors(path)
    if raw.get("format") != SAFETENSORS_FORMAT:
        raise ConvzooError(f"{path}: no convzoo metadata (format={raw.get('format')!r}); "
                           "foreign weights start a model through model.init")
    meta: dict[str, Any] = {}
    try:
        meta["model"] = raw["model"]
        meta["num_classes"] = _integer(raw["num_classes"])
        meta["in_chans"] = _integer(raw["in_chans"])
        meta["model_kwargs"] = loads_json(raw.get("model_kwargs", "{}"))
        meta["classes"] = _classes_from_meta(raw, str(path))
        for key in ("image_shape", "eval_view", "geometry", "config"):
            meta[key] = loads_json(raw[key]) if key in raw else None
        meta["epoch"] = _integer(raw["epoch"]) if "epoch" in raw else None
        meta["weights"] = raw.get("weights")
        meta["eval_split"] = raw.get("eval_split") or None
        meta["preprocess"] = _preprocess_state(raw.get("preprocess"))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ConvzooError(f"{path}: bad convzoo metadata ({type(e).__name__}: {e})") from None
    if meta["weights"] not in (None, "ema", "raw"):
        raise ConvzooError(f"{path}: stored weights={meta['weights']!r} is not ema or raw")
    check_model_fields({"model_name": meta["model"], **meta}, path, optional=(
        "classes", "image_shape", "geometry", "eval_split", "preprocess", "epoch", "config"))
    model = build_stored_model(meta["model"], meta["num_classes"], meta["in_chans"],
                               meta["model_kwargs"], path)
    expected = model.state_dict()
    for k, t in expected.items():
        if k not in state:
            raise ConvzooError(f"{path}: tensor {k} of {meta['model']} is missing")
        if state[k].shape != t.shape:
            raise ConvzooError(f"{path}: {k} has shape {_shape(state[k])} but {meta['model']} "
                               f"built from the metadata expects {_shape(t)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ConvzooError(f"{path}: tensor {extra[0]} is not part of {meta['model']}")
    model.load_state_dict(state)
    return model.eval(), meta


def _integer(text: Any) -> int:
    """A metadata integer: decimal digits only (``int()`` also takes ``" 1_0 "``)."""
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _preprocess_state(text: str | None) -> dict[str, Any] | None:
    """The metadata's JSON preprocessing (kind + statistics) as tensors; None if they were
    omitted (too large) or incomplete."""
    if text is None:
        return None
    raw = loads_json(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise ValueError("preprocess is not a mapping with a kind")
    if "omitted" in raw:
        return None
    state: dict[str, Any] = {"kind": raw.pop("kind")}
    state.update({k: torch.tensor(v, dtype=torch.float32) for k, v in raw.items()})
    return state if len(state) > 1 or state["kind"] == "none" else None


# ----------------------------------------------------------------------------- stored fields


MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a head of 10^11 classes would need 25.6 TB
MAX_SIDE = 65_535  # pixels per image side (PNG's and JPEG's own limits)


def _check(where: Path | str, key: str, value: Any, ok: bool, expected: str,
           shown: str | None = None) -> None:
    """ConvzooError "<file>: stored <key>=<value> is not <expected>" unless `ok`; `shown`
    stands for a value too long to print."""
    if not ok:
        text = shown or repr(value)
        raise ConvzooError(f"{where}: stored {key}="
                           f"{text if len(text) <= 60 else text[:57] + '...'} is not {expected}")


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def check_model_fields(fields: Mapping[str, Any], path: Path | str,
                       optional: Sequence[str] = ()) -> None:
    """The fields that describe a saved model, by type and range, before anything uses them:
    one ConvzooError line naming the file, the field, its value and what it may be.

    `fields` uses the checkpoint's names (``model_name``, ``model_kwargs``, ``num_classes``,
    ``in_chans``, ``classes``, ``image_shape``, ``geometry``, ``eval_split``, ``preprocess``,
    ``epoch``, ``config``); a weights file's metadata is checked under the same names. Keys in
    `optional` may be absent or None (a weights file that omits them; its reader then says
    what it lacks). ``model_kwargs`` pass the registry's allow-list
    (``registry.check_stored_kwargs``): a file never passes a model factory a keyword that
    loads weights or names a path.
    """
    def value(key: str) -> Any:
        if fields.get(key) is None and key not in optional:
            raise ConvzooError(f"{path}: no stored {key}; not a complete convzoo file")
        return fields.get(key)

    name = value("model_name")
    _check(path, "model_name", name, isinstance(name, str) and 0 < len(name) <= 200,
           "a model name")
    try:
        get_entry(name)
    except ConvzooError as e:
        raise ConvzooError(f"{path}: stored model_name: {e}") from None
    check_stored_kwargs(name, value("model_kwargs"), str(path))
    num_classes = value("num_classes")
    _check(path, "num_classes", num_classes, _is_int(num_classes, 1, MAX_CLASSES),
           f"an integer in [1, {MAX_CLASSES}]")
    in_chans = value("in_chans")
    _check(path, "in_chans", in_chans, _is_int(in_chans, 1, 3) and in_chans != 2, "1 or 3")
    classes = value("classes")
    if classes is not None:
        _check(path, "classes", classes, isinstance(classes, list)
               and len(classes) == num_classes and all(isinstance(c, str) for c in classes),
               f"a list of {num_classes} class names (num_classes)",
               f"<a list of {len(classes)}>" if isinstance(classes, list) else None)
    shape = None
    geometry = value("geometry")
    if geometry is not None:
        limit = C.DataConfig().max_image_pixels
        ok = (isinstance(geometry, dict) and _is_int(geometry.get("channels"), 1, 3)
              and geometry["channels"] == in_chans
              and geometry.get("resize") in RESIZE_RULES
              and all(_is_int(geometry.get(k), 1, MAX_SIDE) for k in ("height", "width")))
        ok = ok and (not limit or geometry["height"] * geometry["width"] <= limit)
        _check(path, "geometry", geometry, ok, f"{in_chans} channels by at most {MAX_SIDE} x "
               f"{MAX_SIDE} pixels (data.max_image_pixels={limit:,}), "
               f"{' or '.join(RESIZE_RULES)}")
        shape = Geometry.from_state(geometry).shape
    image_shape = value("image_shape")
    if image_shape is not None:
        _check(path, "image_shape", image_shape, isinstance(image_shape, list)
               and len(image_shape) == 3 and image_shape[0] == in_chans
               and all(_is_int(v, 1, MAX_SIDE) for v in image_shape),
               f"[channels={in_chans}, height, width] with sides in [1, {MAX_SIDE}]")
        shape = shape or tuple(image_shape)
    split = value("eval_split")
    _check(path, "eval_split", split, split is None or split in SPLITS, " or ".join(SPLITS))
    epoch = value("epoch")
    _check(path, "epoch", epoch, epoch is None or _is_int(epoch, 0, ckpt_io.MAX_EPOCHS),
           f"an integer in [0, {ckpt_io.MAX_EPOCHS}]")
    preprocess = value("preprocess")
    if preprocess is not None:
        _check_preprocess(preprocess, shape, path)
    config = value("config")
    if config is not None:
        if not isinstance(config, dict):
            _check(path, "config", config, False, "a mapping")
        try:
            C.from_dict(config)
        except ConvzooError as e:
            raise ConvzooError(f"{path}: stored config: {e}") from None


def _check_preprocess(state: Any, shape: tuple[int, int, int] | None, path: Path | str) -> None:
    """A preprocessing state: a known kind, and each of its statistics a tensor of the shape
    that kind stores for images of `shape`, with positive scales."""
    kind = state.get("kind") if isinstance(state, dict) else None
    _check(path, "preprocess kind", kind, kind in KINDS, " or ".join(KINDS))
    for key, want in state_shapes(kind, shape or (0, 0, 0)).items():
        t = state.get(key)
        ok = isinstance(t, Tensor) and t.is_floating_point() and (
            shape is None and t.ndim == len(want) or tuple(t.shape) == want)
        _check(path, f"preprocess {key}", t, ok, f"a float tensor of shape {want}",
               f"<a {t.dtype} tensor of shape {_shape(t)}>" if isinstance(t, Tensor) else None)
        if key in ("std", "gcn_scale"):
            _check(path, f"preprocess {key}", t, bool((t > 0).all()), "positive",
                   f"<a tensor with minimum {float(t.min()):g}>" if t.numel() else None)


def build_stored_model(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any],
                       path: Path | str) -> nn.Module:
    """``create_model`` from a file's checked fields (:func:`check_model_fields`); any failure
    of the factory on them (a keyword of the wrong type, say) is one line naming the file."""
    try:
        return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except ConvzooError as e:
        raise ConvzooError(f"{path}: {e}") from None
    except Exception as e:  # the stored values were checked by type, not by meaning
        raise ConvzooError(f"{path}: stored model {name} with model_kwargs {kwargs} cannot be "
                           f"built ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                           ) from None
