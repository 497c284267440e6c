"""Checkpoints and weights files: atomic writes, and the one verified reader of each format.

A checkpoint is a plain dict of tensors and primitives so that ``torch.load(weights_only=True)``
can read it without executing pickled code. It carries everything ``eval``/``predict`` need
(config, class names, preprocessing statistics) and everything ``--resume`` needs (optimizer,
schedule, EMA, RNG, epoch).

Nothing is trusted that was not checked. Every checkpoint is sealed with a content digest of
all its values (``integrity.content_digest``, the ``digest`` key) and every convzoo
``.safetensors`` file with one of its tensors and metadata (its ``digest`` metadata entry):
``torch.load`` reads a flipped byte back silently (PyTorch does not check its zip records'
CRCs) and safetensors has no checksum. The readers here (:func:`load_checkpoint`,
:func:`read_torch_file`, :func:`read_safetensors`) read only regular files, verify the digest
where the file is convzoo's (a convzoo file without one is refused), check that every floating
tensor is finite, and then have the stored fields checked by type and range
(:func:`check_training_fields` here, ``models.weights.check_model_fields`` for what describes
the model). Every refusal is one ConvzooError line naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save as safetensors_save

from convzoo import config as C
from convzoo import files
from convzoo.errors import ConvzooError
from convzoo.integrity import check_finite, content_digest, named_tensors, regular_file

FORMAT = "convzoo-checkpoint"
VERSION = 2  # 2: sealed with a content digest
SAFETENSORS_FORMAT = "convzoo-weights"  # metadata "format" of convzoo's .safetensors files
DIGEST = "digest"  # the checkpoint key / safetensors metadata entry holding the digest


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
    from convzoo.models.weights import check_model_fields  # models import this module

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


MAX_EPOCHS = 10**6  # far above any schedule, far below what breaks an int in a tensor


def _check_states(ckpt: dict[str, Any], path: Path) -> None:
    """The shapes of the state dicts ``setup.restore`` hands to the optimizer, schedule,
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
    """The types and ranges of the fields ``--resume`` continues from (``setup.restore``,
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


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


WEIGHTS = ("auto", "ema", "raw")


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
