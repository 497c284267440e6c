"""One owner per run directory: the lock file, who holds it, and taking over a stale one.

``RUN_DIR/.lock`` is created with O_EXCL and holds :class:`Holder` (pid, host, start time,
and the torchrun job and round) as JSON; the owner also holds ``flock`` on it, which the kernel
drops however the owner dies. :class:`RunLock` is that ownership, from ``acquire`` to
``release``: a lock left by a dead process on this host (or by a stopped round of this
torchrun job, on any node) is taken over, a live one or another host's is an error naming its
holder. ``rundir`` creates and claims run directories with it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from convzoo import files
from convzoo.errors import ConvzooError
from convzoo.training.distributed import torchrun_round

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL lock file alone (no kernel lock, pid check only)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("convzoo")

LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory: what the lock file says."""

    pid: int
    host: str
    started: str  # local ISO time the lock was taken
    boot_start: int | None = None  # /proc/<pid>/stat start time: tells a reused pid apart
    job: str | None = None  # torchrun job id (TORCHELASTIC_RUN_ID), when run under torchrun
    round: int | None = None  # its restart round (TORCHELASTIC_RESTART_COUNT)

    @staticmethod
    def this_process() -> Holder:
        stat = _proc_stat(os.getpid())
        job, round_ = torchrun_round() or (None, None)
        return Holder(os.getpid(), socket.gethostname(),
                      datetime.now().isoformat(timespec="seconds"),
                      stat[1] if stat else None, job, round_)

    @staticmethod
    def parse(data: bytes) -> Holder | None:
        try:
            d = json.loads(data)
            return Holder(int(d["pid"]), str(d["host"]), str(d["started"]),
                          None if d.get("boot_start") is None else int(d["boot_start"]),
                          None if d.get("job") is None else str(d["job"]),
                          None if d.get("round") is None else int(d["round"]))
        except (ValueError, KeyError, TypeError):
            return None

    def earlier_round_of(self, me: Holder) -> bool:
        """Whether this holder was a worker of an earlier round of ``me``'s torchrun job:
        torchrun's agents stop every worker of a round before the next one starts, so such a
        holder is gone wherever it ran (another node's lock is safe to take over)."""
        return (self.job is not None and self.job == me.job and self.round is not None
                and me.round is not None and self.round < me.round)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started}"

    def alive(self) -> bool:
        """Whether the process is still running (only meaningful on its own host)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # EPERM: alive, another user's
            pass
        stat = _proc_stat(self.pid)
        if stat is not None:
            state, start = stat
            if state in "ZX":  # exited, not yet reaped
                return False
            if self.boot_start is not None and start != self.boot_start:
                return False  # the pid now belongs to another process
        return True


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) from /proc (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[19])


class RunLock:
    """Exclusive ownership of a run directory, held from ``acquire`` to ``release``.

    The lock is ``RUN_DIR/.lock``, created with O_EXCL (atomic, also on NFS) and holding
    :class:`Holder` as JSON; the owner also holds ``flock`` on it, which the kernel drops when
    the process dies, however it dies. Another process then finds:

    * the flock taken: the owner is alive; fail at once naming it.
    * the flock free, the lock from this host, its pid gone: stale (the owner was killed).
      It is taken over in place while holding the flock, so of two processes taking over the
      same stale lock exactly one wins.
    * the lock from another host: never broken (its liveness cannot be checked from here);
      the error says how to remove it.

    Children forked while the lock is held (DataLoader workers) close their copy at once, so a
    killed trainer's lingering workers never keep its lock. SIGTERM and SIGUSR1 are turned into
    SystemExit while the lock is held, so ``finally`` blocks release it, as they do on errors
    and Ctrl-C; while the loop trains, ``training/preempt.py`` takes the two signals over
    (finish the step, checkpoint, exit 75) and gives them back after.
    """

    def __init__(self, run_dir: Path, fd: int, holder: Holder, *, made: tuple[Path, ...] = (),
                 before: frozenset[str] = frozenset()) -> None:
        self.run_dir, self.path, self.fd, self.holder = run_dir, run_dir / LOCK_FILE, fd, holder
        # What this process may remove if its fresh run fails (``discard``): the folders it
        # created (deepest first) and, by omission, everything that was there before it.
        self.made, self.before = made, before
        self._handlers: dict[int, Any] = {}  # the handlers to restore, while ours are set
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                old = signal.signal(sig, _sigterm)
                self._handlers[sig] = signal.SIG_DFL if old is None else old
        _HELD.add(self)

    @classmethod
    def acquire(cls, run_dir: Path, *, wait: float = 2.0,
                made: tuple[Path, ...] = ()) -> RunLock:
        """Own ``run_dir`` or raise ConvzooError naming the holder; removes stale temp files.

        ``wait``: seconds to wait for a lock file that is being written or taken over.
        ``made``: the folders the caller created for this run (see ``discard``).
        """
        run_dir = Path(run_dir)
        path = run_dir / LOCK_FILE
        me = Holder.this_process()
        deadline = time.monotonic() + wait
        while True:
            fd = create_lock(path, me)
            if fd is None:
                fd = _take_over(path, me, patient=time.monotonic() < deadline)
            if fd is None:  # released, being written or being taken over: look again
                time.sleep(0.05)
                continue
            before = frozenset(n for n in entries(run_dir) if n != LOCK_FILE)
            lock = cls(run_dir, fd, me, made=made, before=before)
            n = files.remove_stale_temps(run_dir)  # safe now: no other writer can be here
            if n:
                log.info(f"{run_dir}: removed {n} temp file(s) left by a killed writer")
            return lock

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):  # gone if a failed fresh run removed its dir
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None
            _HELD.discard(self)
            for sig, old in self._handlers.items():
                signal.signal(sig, old)
            self._handlers.clear()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_HELD: set[RunLock] = set()


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep its parent's lock alive."""
    for lock in list(_HELD):
        if lock.fd is not None:
            os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _sigterm(signum: int, frame: Any) -> None:
    log.warning(f"convzoo: terminated ({signal.Signals(signum).name}); the run directory keeps "
                "its last checkpoint")
    raise SystemExit(128 + signum)


def _flock(fd: int, *, block: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as e:  # a filesystem without flock: the pid check alone decides
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def create_lock(path: Path, me: Holder) -> int | None:
    """A new lock file owned by ``me`` (its fd, flock held), or None when one exists."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    except OSError as e:
        raise ConvzooError(f"cannot lock run directory {path.parent}: {e.strerror}") from None
    _flock(fd, block=True)  # a process looking at the new, empty file holds it a moment at most
    try:
        _write_holder(fd, me)
        files.fsync_dir(path.parent)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise ConvzooError(f"cannot write {path}: {e.strerror}") from None
    return fd


def _write_holder(fd: int, holder: Holder) -> None:
    data = json.dumps(asdict(holder)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _read(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _take_over(path: Path, me: Holder, *, patient: bool) -> int | None:
    """The lock exists: return an fd owning it if it was stale, None to look again, or raise
    ConvzooError naming the holder."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None  # released meanwhile
    except OSError as e:
        raise ConvzooError(f"cannot open {path}: {e.strerror}") from None
    try:
        if not _flock(fd, block=False):  # a live process on this host holds it
            holder = Holder.parse(_read(fd))
            stale_looking = holder is None or (holder.host == me.host and not holder.alive())
            if patient and stale_looking:
                return None  # being written, or being taken over by another process right now
            raise ConvzooError(_held(path, holder))
        if not _same_file(fd, path):
            return None  # released and re-created while we opened it
        data = _read(fd)
        holder = Holder.parse(data)
        if holder is None:
            if patient or data.strip():  # being written; or not a lock convzoo wrote
                if not patient:
                    raise ConvzooError(f"{path.parent} is locked, but {path} is unreadable; "
                                       f"if no convzoo process uses it, delete {path}")
                return None
            # empty and nobody holds it after `wait`: its creator died right after creating it
            log.warning(f"taking over {path}: an empty lock left by a killed process")
        elif holder.earlier_round_of(me):
            log.warning(f"taking over the lock of {holder.describe()}: a worker of round "
                        f"{holder.round} of this torchrun job, which torchrun has stopped: {path}")
        elif holder.host != me.host:
            raise ConvzooError(
                f"{path.parent} is locked by {holder.describe()}; convzoo on {me.host} cannot "
                f"tell whether that process still runs: if it does not, delete {path}"
            )
        elif holder.alive():  # no flock but a live pid: be safe, treat it as held
            raise ConvzooError(_held(path, holder))
        else:
            log.warning(f"taking over the stale lock of {holder.describe()} (that process is "
                        f"gone): {path}")
        _write_holder(fd, me)
        owned, fd = fd, -1
        return owned
    finally:
        if fd >= 0:
            os.close(fd)


def _held(path: Path, holder: Holder | None) -> str:
    who = holder.describe() if holder is not None else "another process"
    return f"{path.parent} is in use by another convzoo run ({who}; lock {path})"


def entries(run_dir: Path) -> list[str]:
    """The names in `run_dir`, sorted; an unreadable folder is one line."""
    try:
        return sorted(e.name for e in os.scandir(run_dir))
    except OSError as e:
        raise ConvzooError(f"cannot list run directory {run_dir}: {e.strerror}") from None
