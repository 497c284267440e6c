"""Data prepared once per node: downloads and decode caches, safe under concurrent processes.

Preparation (download + verify an archive, decode an image tree into a cache file) is guarded
twice:

- a **file lock** next to the file being made (``filelock.FileLock``: ``fcntl.flock`` on a
  ``.lock`` file, released by the kernel when its process dies, so a killed preparer never
  leaves a stale lock). Any number of processes, with or without torchrun, may ask for the
  same data: the first makes it, the others wait, then find it made and verified.
- under torchrun, **local rank 0 first** (`once_per_node`): it prepares while the node's other
  ranks wait at a barrier, then they find everything ready (they still take the lock, which is
  then free).

Nothing half-made is ever used: downloads land under a temporary name and are renamed after
their MD5 matched, and an archive already present is verified before use
(`convzoo.data.sources.download.fetch_archive`, under `node_lock`); a decode cache carries a
digest of its tensors and is rebuilt when it does not match. A cache that cannot be written
(read-only or full disk) is a warning, never an error (`write_quietly`).

This module is at the base of ``convzoo.data``: the sources, the pack cache of remote packs and
the pipeline all prepare through it, and it imports none of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock

from convzoo.integrity import content_digest

log = logging.getLogger("convzoo")
T = TypeVar("T")
CACHE_FORMAT = "convzoo-decode-cache"


@contextlib.contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` (blocking). Where no lock file can be made (a read-only folder),
    nothing can be written there either, so the work goes ahead unlocked."""
    lock_path = Path(str(path) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        lock.acquire()
    except OSError as e:
        log.warning(f"cannot lock {lock_path} ({e.strerror or e}); preparing without a lock")
        yield
        return
    try:
        yield
    finally:
        lock.release()


def once_per_node(fn: Callable[[], T]) -> T:
    """Run ``fn`` on local rank 0 first, then on the node's other ranks (torchrun), so that
    what it prepares is made once per node. Without a process group it just runs ``fn``.

    A failure on rank 0 still reaches the barrier (so no rank hangs); the others then run
    ``fn`` themselves and report the same problem.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as e:  # re-raised after the barrier
            error = e
        dist.barrier()
        if error is not None:
            raise error
        return result
    dist.barrier()
    return fn()


# ----------------------------------------------------------------------------- decode caches


def _digest(payload: dict[str, Any]) -> str:
    """The cache's ``integrity.content_digest`` (every value but the digest itself): detects a
    damaged cache, which ``torch.load`` alone does not (it reads a flipped byte back
    silently)."""
    return content_digest({k: v for k, v in payload.items() if k != "digest"})


def _payload_tensors(payload: dict[str, Any]) -> list[torch.Tensor]:
    return [t for name in sorted(payload["splits"])
            for t in (payload["splits"][name]["images"], payload["splits"][name]["labels"])]


def read_cache(path: Path) -> dict[str, Any] | None:
    """The payload `write_cache` stored at `path`, or None when it is missing, unreadable or
    fails its digest (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        ok = (isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT
              and payload.get("digest") == _digest(payload))
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        log.warning(f"ignoring unreadable cache {path} ({type(e).__name__}); rebuilding it")
        return None
    if not ok:
        log.warning(f"ignoring damaged cache {path} (digest mismatch); rebuilding it")
        return None
    return payload


def write_cache(path: Path, payload: dict[str, Any]) -> bool:
    """Write `payload` (with its digest) atomically; a write that fails is a warning. Older
    caches of the same source (``<stem>-*.pt``) are removed once the new one is in place."""
    payload = {**payload, "format": CACHE_FORMAT}
    payload["digest"] = _digest(payload)
    nbytes = sum(t.numel() * t.element_size() for t in _payload_tensors(payload))
    log.info(f"writing decode cache {path} ({nbytes / 2**20:,.0f} MB)")
    buffer = _serialise(payload)
    if not write_quietly(path, buffer):
        return False
    for old in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return True


def _serialise(payload: dict[str, Any]) -> Any:
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getbuffer()


def write_quietly(path: Path, data: Any) -> bool:
    """temp file + fsync + rename; an OSError (read-only, disk full) is a warning, and leaves
    nothing behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as readable as its data
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning(f"could not write {path}: {e.strerror or e} (continuing without it)")
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return False
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
