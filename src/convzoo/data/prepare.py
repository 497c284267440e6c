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
(`convzoo.data.sources.download.fetch_archive`, under `node_lock`); a decode cache
(`convzoo.data.caches`) carries a digest of its tensors and is rebuilt when it does not match.
A file that cannot be written (read-only or full disk) is a warning, never an error
(`write_quietly`).

This module is at the base of ``convzoo.data``: the decode caches, the sources, the pack cache
of remote packs and the pipeline all prepare through it, and it imports none of them.
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
from filelock import FileLock, Timeout

log = logging.getLogger("convzoo")
T = TypeVar("T")


@contextlib.contextmanager
def node_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold ``<path>.lock``; yields True. Where no lock file can be made (a read-only folder),
    nothing can be written there either, so the work goes ahead unlocked (True too). With
    ``wait=False`` a lock another process holds is not waited for: yields False."""
    lock_path = Path(str(path) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    except OSError as e:
        log.warning(f"cannot lock {lock_path} ({e.strerror or e}); preparing without a lock")
        yield True
        return
    try:
        yield True
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
