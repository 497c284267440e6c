"""Checkpoints: atomic writes, safe loads (``weights_only``), safetensors export.

A checkpoint is a plain dict of tensors and primitives so that ``torch.load(weights_only=True)``
can read it without executing pickled code. It carries everything ``eval``/``predict`` need
(config, class names, preprocessing statistics) and everything ``--resume`` needs (optimizer,
schedule, EMA, RNG, epoch).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save as safetensors_save

from convzoo.errors import ConvzooError

FORMAT = "convzoo-checkpoint"
VERSION = 1


TEMP_TAG = ".tmp"  # temp files are ".<name>.<random>.tmp<suffix>": hidden, and never taken as good


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """The one way convzoo writes a file it must not tear: ``write(tmp)`` fills a temp file in
    the same directory, which is fsync'd and renamed over ``path``; then the directory is fsync'd
    so that the rename itself survives a power cut.

    A process killed at any moment leaves either the old file or the new one, never a torn one
    (at worst a hidden temp file, removed by :func:`remove_stale_temps`). The temp keeps
    ``path``'s suffix so that writers choosing a format by extension (matplotlib) still work.
    On any error (also KeyboardInterrupt / SystemExit) the temp is removed and ``path`` is as it
    was; the error propagates unchanged.
    """
    path = Path(path)
    while True:  # like mkstemp, but the file gets the umask's mode (mkstemp: always 0600)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_TAG}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make renames/creations in ``directory`` durable (a no-op where directories cannot be
    opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


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


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through :func:`atomic_write`: the old checkpoint or the new, never a torn one.
    A disk problem surfaces as the OSError it is (ENOSPC, EDQUOT...)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise

    atomic_write(path, write)


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TEMP_TAG))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is an :func:`atomic_write` temp: ``.<name>.<8 hex digits>.tmp<suffix>``
    (a hidden file of the user's such as ``.notes.tmp`` is not)."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(run_dir: Path) -> int:
    """Delete temp files a killed writer left in `run_dir` (never taken as good); returns count.

    Call it only while owning the directory (``rundir.RunLock``): a live writer's temp matches
    the same pattern.
    """
    stale = [p for p in Path(run_dir).glob(f".*{TEMP_TAG}*") if is_temp_name(p.name)
             and p.is_file() and not p.is_symlink()]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """Weights only, shareable and safe to load; written atomically like the checkpoint."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    # Serialised in memory and written by Python: safetensors' own file writer reports a full
    # disk as a SafetensorError, not as the OSError it is.
    data = safetensors_save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


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


def load_checkpoint(path: str | Path, which: str = "last") -> dict[str, Any]:
    """Load a convzoo checkpoint safely onto the CPU, with a clear error if it is not one."""
    p = resolve_checkpoint(path, which)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise ConvzooError(
            f"{p} is not a readable convzoo checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConvzooError(f"{p} is not a convzoo checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise ConvzooError(f"{p} was written by a newer convzoo (format {ckpt['version']})")
    return ckpt


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
