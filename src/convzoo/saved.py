"""The saved model: the one module that knows convzoo's files of a trained model, how they are
written, read and verified, and how a model is built back from them.

The files: a run's checkpoints (``last.pt``, ``best.pt``, ``epoch-NNNN.pt``) and its
``model.safetensors``, and ``convzoo export --format safetensors``. A checkpoint is a plain dict
of tensors and primitives so that ``torch.load(weights_only=True)`` can read it without
executing pickled code. It carries everything ``eval``/``predict`` need (config, class names,
geometry, preprocessing statistics) and everything ``--resume`` needs (optimizer, schedule, EMA,
RNG, epoch). A ``.safetensors`` file holds one set of weights with the metadata of
:func:`weights_metadata`, enough to rebuild the model and feed it images alone.

Nothing is trusted that was not checked. Every checkpoint is sealed with a content digest of
all its values (``integrity.content_digest``, the ``digest`` key) and every convzoo
``.safetensors`` file with one of its tensors and metadata (its ``digest`` metadata entry):
``torch.load`` reads a flipped byte back silently (PyTorch does not check its zip records'
CRCs) and safetensors has no checksum. The readers here (:func:`load_checkpoint`,
:func:`read_torch_file`, :func:`read_safetensors`) read only regular files, verify the digest
where the file is convzoo's (a convzoo file without one is refused), check that every floating
tensor is finite, and then check the stored fields by type and range
(:func:`check_training_fields` for what a resume continues, :func:`check_model_fields` for what
describes the model). Every refusal is one ConvzooError line naming the file.

What the rest of convzoo takes from here: :func:`read_checkpoint` (a run directory, a ``.pt`` or
a convzoo ``.safetensors`` as one checkpoint dict), :func:`checkpoint_geometry`,
:func:`select_weights` and :func:`load_model_for_eval` (eval, predict, export, ``convzoo.load``);
:func:`atomic_save` / :func:`save_safetensors` (training, export); :func:`load_init` (a new
model started from saved weights, or through ``models.weights`` from foreign ones).

Where it sits: above ``models`` and ``data`` (it builds the model and its preprocessing from the
stored fields, which it checks against their rules) and below training, the API and export,
which all read and write through it (docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from convzoo import config as C
from convzoo import files
from convzoo.data.images import RESIZE_RULES, SPLITS, Geometry
from convzoo.data.transforms.preprocess import KINDS, Preprocessor, state_shapes
from convzoo.errors import ConvzooError
from convzoo.integrity import check_finite, content_digest, named_tensors, regular_file
from convzoo.jsonio import dumps_json, loads_json
from convzoo.models import weights as W
from convzoo.models.registry import check_stored_kwargs, create_model, get_entry

FORMAT = "convzoo-checkpoint"
VERSION = 2  # 2: sealed with a content digest
SAFETENSORS_FORMAT = "convzoo-weights"  # metadata "format" of convzoo's .safetensors files
DIGEST = "digest"  # the checkpoint key / safetensors metadata entry holding the digest
WEIGHTS = ("auto", "ema", "raw")  # which weights of a checkpoint: select_weights
MAX_EPOCHS = 10**6  # far above any schedule, far below what breaks an int in a tensor


# ----------------------------------------------------------------------------- writing


class _Sink:
    """The file torch.save writes to, keeping the OSError of a failed write: torch itself
    reports a full disk as ``RuntimeError: unexpected pos ...``, losing the reason."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def seal(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`ckpt` with its content digest (over every value but the digest itself)."""
    body = {k: v for k, v in ckpt.items() if k != DIGEST}
    return {**body, DIGEST: content_digest(body)}


def atomic_save(ckpt: dict[str, Any], path: Path) -> None:
    """A checkpoint dict, sealed (:func:`seal`), by torch.save through ``files.atomic_write``: the
    old checkpoint or the new, never a torn one. A disk problem surfaces as the OSError it is
    (ENOSPC, EDQUOT...)."""
    sealed = seal(ckpt)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(sealed, sink)
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise

    files.atomic_write(path, write)


def safetensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The digest of a ``.safetensors`` file's tensors and metadata (but its digest entry)."""
    return content_digest({"metadata": {k: v for k, v in metadata.items() if k != DIGEST},
                           "tensors": tensors})


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """Weights only, shareable and safe to load, sealed with :func:`safetensors_digest` in the
    metadata; written atomically like the checkpoint."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {**metadata, DIGEST: safetensors_digest(tensors, metadata)}
    # Serialised in memory and written by Python: safetensors' own file writer reports a full
    # disk as a SafetensorError, not as the OSError it is.
    data = safetensors_save(tensors, metadata=metadata)
    files.atomic_write(path, lambda tmp: tmp.write_bytes(data))


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
        **({"model_module": ckpt["model_module"]} if ckpt.get("model_module") else {}),
        "weights": weights,  # "ema" or "raw" (select_weights)
        "epoch": str(ckpt["epoch"]),
        "image_shape": dumps_json(list(geometry.shape)),
        "geometry": dumps_json(geometry.state()),
        "preprocess": dumps_json({"kind": pre["kind"], **stats}),
        "eval_view": dumps_json({"crop": augment.get("crop", 0),
                                 "random_resized_crop": augment.get("random_resized_crop", 0)}),
        "eval_split": str(ckpt.get("eval_split", "")),
        "config": dumps_json(ckpt["config"]),
    }


# ----------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file from a run directory (``last.pt`` or ``best.pt``) or a file path."""
    p = Path(path)
    if p.is_dir():
        candidate = p / f"{which}.pt"
        if not candidate.exists():
            raise ConvzooError(f"no {which}.pt in run directory {p}")
        return candidate
    if not p.exists():
        raise ConvzooError(f"checkpoint not found: {p}")
    return p


def instead(path: str | Path) -> str:
    """What to use when `path` cannot be: the run's other checkpoint, or an earlier copy."""
    return {"last.pt": "use best.pt or an earlier copy",
            "best.pt": "use last.pt or an earlier copy",
            "model.safetensors": "use the run's last.pt or best.pt, or an earlier copy",
            }.get(Path(path).name, "use an earlier copy")


def _damaged(path: Path, what: str) -> ConvzooError:
    return ConvzooError(f"{path}: {what}, the file is damaged; {instead(path)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def read_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of the regular file `path` onto the CPU: the one way
    convzoo reads a ``.pt``/``.pth``/``.bin``. A file torch cannot read is one line."""
    regular_file(path, "weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/damaged/foreign files
        raise ConvzooError(f"{path}: not a readable PyTorch weights file ({_first_line(e)}); "
                           f"the file is damaged or not one; {instead(path)}") from None


def load_checkpoint(path: str | Path, which: str = "last") -> dict[str, Any]:
    """A convzoo checkpoint (a file, or a run directory's ``<which>.pt``) onto the CPU,
    verified: :func:`read_torch_file`, then :func:`verify_checkpoint`."""
    p = resolve_checkpoint(path, which)
    return verify_checkpoint(read_torch_file(p), p)


def verify_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    """`ckpt` as read from `path` if it is a convzoo checkpoint of this format whose digest
    matches, whose floating tensors are finite and whose fields have their types and ranges;
    else one ConvzooError line naming the file."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConvzooError(f"{path} is not a convzoo checkpoint")
    version = ckpt.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        raise ConvzooError(f"{path}: checkpoint format {version!r}, this convzoo reads format "
                           f"{VERSION}" + (" (written by a newer convzoo)" if newer else ""))
    digest = ckpt.get(DIGEST)
    if not isinstance(digest, str):
        raise _damaged(path, "no content digest")
    if content_digest({k: v for k, v in ckpt.items() if k != DIGEST}) != digest:
        raise _damaged(path, "digest mismatch")
    check_finite(named_tensors(ckpt), str(path), instead(path))
    check_training_fields(ckpt, path)
    check_model_fields(ckpt, path)
    return ckpt


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the regular ``.safetensors`` file `path`, verified: a convzoo file
    (metadata format ``convzoo-weights``, or any file with a digest entry) must match its
    digest; every file's floating tensors must be finite. Files of others (timm, Hugging Face)
    have no digest: they are checked for readability and finiteness only."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    regular_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConvzooError(f"{path}: not a readable safetensors file ({_first_line(e)}); "
                           f"the file is damaged or not one; {instead(path)}") from None
    if meta.get("format") == SAFETENSORS_FORMAT or DIGEST in meta:
        if DIGEST not in meta:
            raise _damaged(path, "no content digest")
        if safetensors_digest(state, meta) != meta[DIGEST]:
            raise _damaged(path, "digest mismatch")
    check_finite(state.items(), str(path), instead(path))
    return state, meta


def read_checkpoint(path: str | Path, which: str = "last", weights: str = "auto"
                    ) -> dict[str, Any]:
    """What eval, predict, export and ``convzoo.load`` read a model from, as a checkpoint dict.

    `path`: a run directory (its ``<which>.pt``; for ``last``, its ``model.safetensors`` when
    last.pt is gone), a ``.pt`` checkpoint, or a convzoo ``.safetensors`` file (a run's
    model.safetensors or an export). A weights file becomes a checkpoint with the keys
    ``load_model_for_eval``, ``checkpoint_geometry`` and ``select_weights`` use (``model``, and
    ``ema`` when the file holds the EMA weights); it holds one set of weights, so `weights`
    must be ``auto`` or that set.
    """
    p = Path(path)
    if p.is_dir() and not (p / f"{which}.pt").exists() and which == "last" \
            and (p / "model.safetensors").is_file():
        p = p / "model.safetensors"
    if p.suffix != ".safetensors":
        return load_checkpoint(p, which)
    model, meta = load_weights_file(p)
    check_file_weights(p, meta, weights)
    if meta["preprocess"] is None:
        raise ConvzooError(f"{p}: its preprocessing statistics are not in the file (too large "
                           "for metadata, e.g. ZCA); use the run's last.pt or best.pt")
    geometry = meta["geometry"]
    if geometry is None and meta["image_shape"] is None:
        raise ConvzooError(f"{p}: no input geometry in its metadata; use the run's last.pt or "
                           "best.pt")
    config = meta["config"]
    if config is None:
        raise ConvzooError(f"{p}: no config in its metadata; use the run's last.pt or best.pt")
    state = model.state_dict()
    return {"format": FORMAT, "weights_file": str(p), "config": config,
            "model_name": meta["model"], "model_kwargs": meta["model_kwargs"],
            "model_module": meta["model_module"],
            "num_classes": meta["num_classes"], "in_chans": meta["in_chans"],
            "classes": meta["classes"] or [str(i) for i in range(meta["num_classes"])],
            "image_shape": meta["image_shape"], "geometry": geometry,
            "eval_split": meta["eval_split"] or "test", "preprocess": meta["preprocess"],
            "epoch": meta["epoch"] or 0, "model": state,
            "ema": {"module": state} if meta["weights"] == "ema" else None}


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


def load_weights_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model a convzoo ``.safetensors`` file describes, weights loaded, CPU, eval mode.

    The file is a run's ``model.safetensors`` or ``convzoo export --format safetensors``
    output (metadata: :func:`weights_metadata`), verified by its digest
    (:func:`read_safetensors`) and its fields checked (:func:`check_model_fields`).
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
    state, raw = read_safetensors(path)
    if raw.get("format") != SAFETENSORS_FORMAT:
        raise ConvzooError(f"{path}: no convzoo metadata (format={raw.get('format')!r}); "
                           "foreign weights start a model through model.init")
    meta: dict[str, Any] = {}
    try:
        meta["model"] = raw["model"]
        meta["num_classes"] = _integer(raw["num_classes"])
        meta["in_chans"] = _integer(raw["in_chans"])
        meta["model_kwargs"] = loads_json(raw.get("model_kwargs", "{}"))
        meta["model_module"] = raw.get("model_module")
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
            raise ConvzooError(f"{path}: {k} has shape {W.shape_text(state[k])} but "
                               f"{meta['model']} built from the metadata expects "
                               f"{W.shape_text(t)}")
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


def _field(path: Path, key: str, value: Any, kind: type | tuple[type, ...],
           interval: str | None = None) -> None:
    """`value` (the stored `key`) is a `kind` (bool is no int) within `interval`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and interval is not None:
        ok = C.In(interval).contains(value)
    if not ok:
        names = {int: "an integer", float: "a number", str: "text", bool: "true or false",
                 dict: "a mapping", list: "a list", type(None): "empty"}
        expected = " or ".join(names.get(k, k.__name__) for k in kinds)
        raise ConvzooError(f"{path}: stored {key}={_show(value)} is not {expected}"
                           + (f" in {interval}" if interval else ""))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _check_states(ckpt: dict[str, Any], path: Path) -> None:
    """The shapes of the state dicts ``training.setup.restore`` hands to the optimizer, schedule,
    early stopping, EMA and the RNG: containers and scalars of the types they read (the
    tensors inside are torch's to check against the model)."""
    number = (int, float)
    rng = ckpt["rng"]
    generator = rng.get("torch")
    ok = (isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8
          and tuple(generator.shape) == tuple(torch.get_rng_state().shape))
    if not ok or not isinstance(rng.get("cuda", []), list):
        raise ConvzooError(f"{path}: stored rng is not a state of this torch's generator")
    schedule = ckpt["schedule"]
    _field(path, "schedule peak", schedule.get("peak"), number, "(0, inf)")
    anchor = schedule.get("anchor")
    if anchor is not None:
        _field(path, "schedule anchor", anchor, list)
        if len(anchor) != 2:
            raise ConvzooError(f"{path}: stored schedule anchor={_show(anchor)} is not "
                               "[epoch, lr]")
        _field(path, "schedule anchor epoch", anchor[0], number, f"[0, {MAX_EPOCHS}]")
        _field(path, "schedule anchor lr", anchor[1], number, "[0, inf)")
    plateau = schedule.get("plateau")
    _field(path, "schedule plateau", plateau, (dict, type(None)))
    for key, state in (("schedule plateau", plateau), ("early_stop", ckpt["early_stop"])):
        if state is None:
            continue
        _field(path, f"{key} best", state.get("best"), number)  # +-inf before any epoch
        _field(path, f"{key} bad_epochs", state.get("bad_epochs"), int, "[0, inf)")
        if key == "schedule plateau":
            _field(path, f"{key} scale", state.get("scale"), number, "(0, inf)")
            _field(path, f"{key} cooldown_left", state.get("cooldown_left"), int, "[0, inf)")
    ema = ckpt["ema"]
    if ema is not None:
        _field(path, "ema module", ema.get("module"), dict)
        _field(path, "ema updates", ema.get("updates"), int, "[0, inf)")
        _field(path, "ema decay", ema.get("decay"), number, "[0, 1]")
    optimizer = ckpt["optimizer"]
    inner = optimizer.get("optimizer") if "lookahead" in optimizer else optimizer
    _field(path, "optimizer state", inner.get("state") if isinstance(inner, dict) else inner,
           dict)
    groups = inner.get("param_groups")
    _field(path, "optimizer param_groups", groups, list)
    for g in groups:
        if not (isinstance(g, dict) and isinstance(g.get("params"), list)
                and all(isinstance(i, int) for i in g["params"])):
            raise ConvzooError(f"{path}: stored optimizer param_groups hold "
                               f"{_show(g)}, not groups of parameter indices")


def check_training_fields(ckpt: dict[str, Any], path: Path) -> None:
    """The types and ranges of the fields ``--resume`` continues from (``training.setup.restore``,
    ``preempt.position_from``): counters, times, the containers of the optimizer, schedule,
    EMA and RNG states, and a mid-epoch position."""
    number = (int, float)
    for key, kind, interval in (
            ("epoch", int, f"[0, {MAX_EPOCHS}]"), ("stage", int, "[0, 10000]"),
            ("stopped", bool, None), ("best_top1", number, None),
            ("train_seconds", number, "[0, inf)"), ("train_images", int, "[0, inf)"),
            ("init_seconds", number, "[0, inf)"), ("compile_seconds", number, "[0, inf)"),
            ("weights", str, None), ("optimizer", dict, None), ("schedule", dict, None),
            ("scaler", dict, None), ("ema", (dict, type(None)), None),
            ("early_stop", (dict, type(None)), None), ("rng", dict, None),
            ("metrics", dict, None), ("model", dict, None)):
        if key not in ckpt:
            raise ConvzooError(f"{path}: no stored {key}; not a complete convzoo checkpoint")
        _field(path, key, ckpt[key], kind, interval)
    if ckpt["best_top1"] != -math.inf:  # -inf: no evaluation yet
        _field(path, "best_top1", ckpt["best_top1"], number, "[0, 100]")
    if ckpt["weights"] not in ("ema", "raw"):
        raise ConvzooError(f"{path}: stored weights={_show(ckpt['weights'])} is not ema or raw")
    # The run's step count and best.pt's choice (train.best_metric): absent before convzoo kept
    # them, so checked when present.
    if "steps" in ckpt:
        _field(path, "steps", ckpt["steps"], int, "[0, inf)")
    if "best_metric" in ckpt:
        _field(path, "best_metric", ckpt["best_metric"], str)
        if ckpt["best_metric"] not in C.choices("train.best_metric"):
            raise ConvzooError(f"{path}: stored best_metric={_show(ckpt['best_metric'])} is not "
                               f"one of {', '.join(C.choices('train.best_metric'))}")
        _field(path, "best_value", ckpt.get("best_value"), (int, float, type(None)),
               None if ckpt.get("best_value") is None else "(-inf, inf)")
        _field(path, "best_epoch", ckpt.get("best_epoch"), int, f"[0, {MAX_EPOCHS}]")
    _check_states(ckpt, path)
    if "step" in ckpt:  # a mid-epoch position (preempt.position_fields)
        _field(path, "steps_per_epoch", ckpt.get("steps_per_epoch"), int, "[1, inf)")
        _field(path, "step", ckpt["step"], int, f"[0, {ckpt['steps_per_epoch'] - 1}]")
        _field(path, "epoch_seconds", ckpt.get("epoch_seconds", 0.0), number, "[0, inf)")
        ranks = ckpt.get("epoch_ranks")
        _field(path, "epoch_ranks", ranks, list)
        for r, rank in enumerate(ranks):
            if not (isinstance(rank, dict) and isinstance(rank.get("rng"), dict)):
                raise ConvzooError(f"{path}: stored epoch_ranks[{r}] is not a rank's state")
            _field(path, f"epoch_ranks[{r}].loss_sum", rank.get("loss_sum"), number)
            for key in ("correct", "mixed", "count"):
                _field(path, f"epoch_ranks[{r}].{key}", rank.get(key), int, "[0, inf)")


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
    module = fields.get("model_module")  # who registered it (a project's model): the hint
    _check(path, "model_module", module, module is None or (
        isinstance(module, str) and len(module) <= 200), "a module name")
    try:
        get_entry(name, registered_by=module)
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
    _check(path, "epoch", epoch, epoch is None or _is_int(epoch, 0, MAX_EPOCHS),
           f"an integer in [0, {MAX_EPOCHS}]")
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
               f"<a {t.dtype} tensor of shape {W.shape_text(t)}>" if isinstance(t, Tensor)
               else None)
        if key in ("std", "gcn_scale"):
            _check(path, f"preprocess {key}", t, bool((t > 0).all()), "positive",
                   f"<a tensor with minimum {float(t.min()):g}>" if t.numel() else None)


# ----------------------------------------------------------------------------- the model


def select_weights(ckpt: dict[str, Any], weights: str = "auto") -> tuple[dict[str, Any], str]:
    """The model state dict to use from a checkpoint, and which weights it is.

    ``auto`` is the EMA of the weights when the run kept one (``optim.ema_decay > 0``: the
    weights its figures and best.pt were chosen on), else the trained weights; ``ema`` insists
    on the EMA, ``raw`` takes the trained weights. Returns ``(state_dict, "ema" | "raw")``.
    """
    if weights not in WEIGHTS:
        raise ConvzooError(f"--weights {weights}: expected one of {', '.join(WEIGHTS)}")
    ema = ckpt.get("ema")
    if weights == "raw" or (weights == "auto" and ema is None):
        return ckpt["model"], "raw"
    if ema is None:
        raise ConvzooError("--weights ema: this checkpoint has no EMA weights (the run had "
                           "optim.ema_decay=0); use --weights raw")
    return ema["module"], "ema"


def checkpoint_geometry(ckpt: dict[str, Any]) -> Geometry:
    """The input geometry a checkpoint was trained with.

    Checkpoints written before the geometry was recorded: their stored image shape, squashed
    to it as the in-memory loader and predict then did (cropped for a streamed run)."""
    if ckpt.get("geometry") is not None:
        return Geometry.from_state(ckpt["geometry"])
    c, h, w = (int(v) for v in ckpt["image_shape"])
    streamed = ckpt.get("config", {}).get("data", {}).get("loader") == "stream"
    return Geometry(c, h, w, "crop" if streamed else "squash")


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


def load_model_for_eval(ckpt: dict[str, Any], device: torch.device,
                        weights: str = "auto") -> tuple[nn.Module, Preprocessor]:
    """Rebuild the model and its preprocessing from a checkpoint (nothing else needed): one
    that :func:`read_checkpoint` read, so verified and its fields checked.

    ``weights``: ``auto`` (the EMA weights when the run kept an EMA, else the trained ones),
    ``ema`` or ``raw`` (:func:`select_weights`).
    """
    state, _ = select_weights(ckpt, weights)
    model = build_stored_model(ckpt["model_name"], ckpt["num_classes"], ckpt["in_chans"],
                               dict(ckpt["model_kwargs"]), ckpt.get("weights_file", "checkpoint"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConvzooError(f"the checkpoint's weights do not fit its model {ckpt['model_name']} "
                           f"with {ckpt['num_classes']} classes: "
                           f"{str(e).strip().splitlines()[-1].strip()}") from None
    model.to(device).eval()
    preprocess = Preprocessor.from_state(ckpt["preprocess"]).to(device)
    return model, preprocess


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- model.init


def _from_checkpoint(ckpt: dict[str, Any], where: str, weights: str) -> W.WeightsSource:
    try:
        state, used = select_weights(ckpt, weights)
    except ConvzooError as e:
        raise ConvzooError(f"{where}: {e}") from None
    what = f"{where} ({ckpt.get('model_name')}, epoch {ckpt.get('epoch')}" \
        f"{', EMA' if used == 'ema' else ''})"
    return W.WeightsSource(dict(state), what, list(ckpt["classes"]))


def _read_init_file(path: Path, weights: str) -> W.WeightsSource:
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
        check_file_weights(path, meta, weights)
        return W.WeightsSource(state, str(path), _classes_from_meta(meta, str(path)))
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        ckpt = verify_checkpoint(obj, path)
        return _from_checkpoint(ckpt, str(path), weights)
    check_file_weights(path, {}, weights)
    return W.foreign_state(obj, str(path))


def _read_run_dir(path: Path, which: str, weights: str) -> W.WeightsSource:
    if (path / f"{which}.pt").exists():
        ckpt = load_checkpoint(path, which)
        return _from_checkpoint(ckpt, str(path / f"{which}.pt"), weights)
    # model.safetensors holds the last checkpoint's judged weights: no stand-in for best.pt
    if (path / "model.safetensors").exists() and which == "last":
        return _read_init_file(path / "model.safetensors", weights)
    what = f"{which}.pt" + (" or model.safetensors" if which == "last" else "")
    raise ConvzooError(f"{path}: not a run directory with {what}")


def read_init_source(source: str | Path, *, which: str = "last", weights: str = "auto",
                     arch: str | None = None) -> W.WeightsSource:
    """The tensors (and class names, where stored) that ``model.init`` names: a convzoo run
    directory (its ``<which>.pt``; for ``last``, its ``model.safetensors`` when the checkpoints
    are gone) or checkpoint, verified and its ``weights`` (auto|ema|raw) chosen; any
    ``.safetensors`` file (convzoo's verified by its digest); a state-dict file of others
    (``models.weights.foreign_state``); or named weights, ``torchvision:...`` / ``timm:...``
    (``models.weights.read_named``)."""
    if weights not in WEIGHTS:
        raise ConvzooError(f"weights={weights!r}: choose {', '.join(WEIGHTS)}")
    text = str(source)
    if W.is_named(text):
        return W.read_named(text, arch)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_run_dir(path, which, weights)
    if not path.exists():  # anything else that is not a regular file: the readers say what
        raise ConvzooError(f"model.init {path}: no such file or directory (expected a run "
                           "directory, .pt/.pth/.safetensors file, torchvision:... or timm:...)")
    return _read_init_file(path, weights)


def load_init(
    model: nn.Module,
    source: str | Path,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    arch: str | None = None,
    which: str = "last",
    weights: str = "auto",
    head: W.HeadPolicy = "auto",
    strict: bool = False,
) -> W.InitReport:
    """Load trained weights from `source` into `model` in place: :func:`read_init_source`, then
    ``models.weights.init_from`` (what is loaded, the head, the report: its docstring).

        report = load_init(model, "runs/cifar10-r20", classes=new_classes)   # fine-tune a run
        report = load_init(model, "resnet18-f37072fd.pth")                   # torchvision file
        report = load_init(model, "torchvision:DEFAULT", arch="resnet18")    # named (online)
        report = load_init(model, "timm:resnet18.a1_in1k")                   # timm tag (online)
        print(report.summary())

    num_classes: the class count the model should end with; its head is reset to it first if
        it has another. classes: the target class names; a source that stores different ones
        gets a new head even when the shapes agree (classes 0-4 -> classes 5-9).
    arch: the model's registry name (needed by ``torchvision:DEFAULT``; used in messages).
    which / weights: the checkpoint of a run directory (last|best) and its weights: auto (the
        EMA when the run kept one, as its figures), ema or raw (:func:`select_weights`).
    head: auto (re-initialise when needed), new (always), keep (never: a head of another shape
        is an error).
    """
    W.check_head(head)
    src = read_init_source(source, which=which, weights=weights, arch=arch)
    return W.init_from(model, src, num_classes=num_classes, classes=classes, arch=arch,
                       head=head, strict=strict)
