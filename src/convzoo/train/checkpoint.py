"""Checkpoints: atomic writes, safe loads (``weights_only``), safetensors export.

A checkpoint is a plain dict of tensors and primitives so that ``torch.load(weights_only=True)``
can read it without executing pickled code. It carries everything ``eval``/``predict`` need
(config, class names, preprocessing statistics) and everything ``--resume`` needs (optimizer,
schedule, EMA, RNG, epoch).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from convzoo.errors import ConvzooError

FORMAT = "convzoo-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over `path`.

    A process killed at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(run_dir: Path) -> int:
    """Delete temp files a killed writer left in `run_dir` (never taken as good); returns count."""
    stale = list(Path(run_dir).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """Weights only, shareable and safe to load; written atomically like the checkpoint."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
