"""Writing files that must never be torn: the atomic write (temp + fsync + rename + directory
fsync), the append with fsync, and the names of the temp files a killed writer leaves.

The bottom of convzoo's file handling: checkpoints (``saved``), run directories
(``training.rundir``), every output a command writes (``outputs``), reports and the loggers'
files all write through :func:`atomic_write` or :func:`append_line`, so one function decides
what a kill at any moment can leave behind. Nothing here knows what the files hold.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from convzoo.errors import ConvzooError

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


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TEMP_TAG))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is an :func:`atomic_write` temp: ``.<name>.<8 hex digits>.tmp<suffix>``
    (a hidden file of the user's such as ``.notes.tmp`` is not)."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(run_dir: Path) -> int:
    """Delete temp files a killed writer left in `run_dir` (never taken as good); returns count.

    Call it only while owning the directory (``training.runlock.RunLock``): a live writer's temp matches
    the same pattern.
    """
    stale = [p for p in Path(run_dir).glob(f".*{TEMP_TAG}*") if is_temp_name(p.name)
             and p.is_file() and not p.is_symlink()]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` with O_APPEND and fsync it (and the directory, for a new file).

    The one append primitive, beside :func:`atomic_write`: a kill leaves the file with
    or without the line, or with a torn last line (no newline) that readers skip.
    """
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(line.encode())
        while view:  # a short write (signal, quota) continues where it stopped
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing `path` (disk full, read-only, quota) into one line."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConvzooError(f"cannot write {path}: {reason}") from None


def write_file(path: Path, write: Callable[[Path], Any]) -> None:
    """:func:`atomic_write` with a disk problem reported as one line."""
    with writing(path):
        atomic_write(path, write)


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda tmp: tmp.write_text(text))
