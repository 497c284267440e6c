"""The run directory: one owner, files that are never torn, and an order that survives a kill.

Everything ``train`` writes into ``runs/<name>/`` goes through this module:

    .lock               the owner: pid, host, start time (held from start to exit)
    config.yaml         the resolved config (rewritten with a new stage's overrides)
    init.json           what model.init loaded (a run started from trained weights)
    metrics.jsonl       one JSON line per epoch, appended and fsync'd, never truncated in place
    model.safetensors   weights of the newest checkpoint epoch
    best.pt             the checkpoint of the best evaluated epoch (train.best_metric)
    epoch-NNNN.pt       the checkpoints of the last train.keep_last saved epochs (when > 0)
    summary.json, metrics.csv, curves.png     written at the end of each stage
    last.pt             the checkpoint ``--resume`` continues from
    tracking.json, steps.csv, tensorboard/, wandb/    the loggers' (``train/trackers.py``)

What a reader can rely on after a kill at any point (SIGKILL, OOM, power loss):

* Every file is absent, complete-old or complete-new, never torn (temp + fsync + rename, then
  the directory fsync'd: ``files.atomic_write``). A hidden ``.<name>.*.tmp*`` is garbage
  from a killed writer; the next owner deletes it. metrics.jsonl can end in one torn line
  (a killed append); readers skip it and the next owner rewrites the file without it.
* ``last.pt`` is the commit point and is written last in every epoch (:func:`save_epoch`):
  metrics row -> model.safetensors -> best.pt -> summary.json / metrics.csv / curves.png ->
  epoch-NNNN.pt -> last.pt (then older epoch-NNNN.pt beyond ``keep_last`` go). So every other file is at least as new as ``last.pt``, and once ``last.pt`` holds a
  stage's final epoch, that stage's best.pt and summary are already complete. Anything newer
  than ``last.pt`` belongs to an epoch that ``--resume`` trains again; since that replay is
  exact (same seed per epoch), it rewrites those files with the same content, and drops
  metrics rows after ``last.pt``'s epoch.
* A checkpoint inside an epoch (``train.checkpoint_every_steps``/``_minutes``, or a stop
  request: ``train/preempt.py``) advances ``last.pt`` alone (:func:`save_step`), to a position
  ``(epoch, step)``: ``epoch`` epochs done and ``step`` steps of the next. The files of
  finished epochs (metrics rows, model.safetensors, best.pt, summary) are then of epochs up to
  ``epoch``, so the rule above still holds, and the resume replays the rest of the epoch
  exactly (the epoch's metrics row comes out as if it had never stopped).
* No file ever holds non-finite weights: a diverged epoch raises :class:`Diverged` before its
  first write, so the last good epoch's files stay untouched.
* At most one process trains in a directory (:class:`RunLock`); ``--resume`` of a finished run
  rebuilds a missing summary.json / metrics.csv / curves.png / model.safetensors
  (:func:`complete`) and says what it rebuilt.

A write that fails (full or read-only disk) raises a one-line ``ConvzooError`` naming the file;
the directory is then as a kill at that point would have left it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from convzoo import config as C
from convzoo import files
from convzoo import saved as ckpt_io
from convzoo.errors import ConvzooError
from convzoo.files import write_file, write_text
from convzoo.jsonio import dumps_json

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL lock file alone (no kernel lock, pid check only)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("convzoo")

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
INIT_FILE = "init.json"


# ----------------------------------------------------------------------------- writing


def write_config(run_dir: Path, cfg: C.Config) -> None:
    """config.yaml: the resolved config that actually runs."""
    write_text(run_dir / "config.yaml", yaml.safe_dump(C.to_dict(cfg), sort_keys=False))


def write_init_report(run_dir: Path, report: dict[str, Any]) -> None:
    """init.json: what ``model.init`` loaded into a new run (``weights.InitReport``)."""
    write_text(run_dir / INIT_FILE, dumps_json(report, indent=1) + "\n")


def save_weights(ckpt: dict[str, Any], path: Path) -> None:
    """model.safetensors: the run's weights (EMA when it keeps one) with what rebuilds the
    model and feeds it images (``saved.weights_metadata``)."""
    state, weights = ckpt_io.select_weights(ckpt, "auto")
    with files.writing(path):  # the format export writes too: eval/predict/export read it alone
        ckpt_io.save_safetensors(state, path, ckpt_io.weights_metadata(ckpt, weights))


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    with files.writing(path):
        ckpt_io.atomic_save(ckpt, path)


# ----------------------------------------------------------------------------- metrics.jsonl


class MetricsLog:
    """metrics.jsonl, owned here: rows appended with fsync, the file never truncated in place.

    Opening it for a run that continues from epoch ``keep_through`` drops later rows (epochs
    that will be trained again) and a torn last line, by rewriting the file atomically; a file
    that needs neither is left untouched.
    """

    def __init__(self, run_dir: Path, keep_through: int = 0) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if not self.path.exists():
            return
        from convzoo.report import read_metrics_file

        try:
            text = self.path.read_text()
        except OSError as e:
            raise ConvzooError(f"cannot read {self.path}: {e.strerror}") from None
        rows = read_metrics_file(self.path, text)
        kept = [r for r in rows if int(r["epoch"]) <= keep_through]
        if len(kept) != len(rows) or (text and not text.endswith("\n")):
            write_text(self.path, "".join(dumps_json(r) + "\n" for r in kept))

    def append(self, row: dict[str, Any]) -> None:
        """One line, on disk (fsync'd) when this returns."""
        with files.writing(self.path):
            files.append_line(self.path, dumps_json(row) + "\n")


# ----------------------------------------------------------------------------- an epoch's files


def save_epoch(
    run_dir: Path,
    ckpt: dict[str, Any],
    metrics: Any,
    *,
    checkpoint: bool,
    best: bool,
    summary: dict[str, Any] | None = None,
    keep_last: int = 0,
) -> None:
    """Write epoch ``ckpt['epoch']``'s files in the order the module docstring relies on.

    ``metrics`` has ``write(row)`` (``logging.MetricsWriter``: this module's MetricsLog plus
    the loggers of ``train.loggers``); the row is ``ckpt['metrics']``. ``checkpoint``: advance last.pt and
    model.safetensors; ``best``: this epoch is the best so far; ``summary``: the stage ends here
    (summary.json, metrics.csv, curves.png are written before last.pt advances);
    ``keep_last``: also keep this checkpoint as epoch-NNNN.pt, and the last N of those
    (:func:`keep_epoch_checkpoints`).
    """
    check_losses(ckpt["metrics"])  # a last line of defence: the loop checks before this
    if not weights_finite(ckpt["model"].values()):
        raise Diverged(f"training diverged: the weights after epoch {ckpt['epoch']} are not "
                       "finite; nothing of that epoch was saved")
    metrics.write(ckpt["metrics"])
    if checkpoint:
        save_weights(ckpt, run_dir / "model.safetensors")
    if best:
        save_checkpoint(ckpt, run_dir / "best.pt")
    if summary is not None:
        write_summary(run_dir, summary)
    if checkpoint and keep_last:
        save_checkpoint(ckpt, run_dir / epoch_checkpoint(ckpt["epoch"]))
    if checkpoint:
        save_checkpoint(ckpt, run_dir / "last.pt")
    if checkpoint and keep_last:
        keep_epoch_checkpoints(run_dir, ckpt["epoch"], keep_last)


EPOCH_CHECKPOINT = re.compile(r"epoch-(\d{4,})\.pt")  # only these names are ever deleted


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def keep_epoch_checkpoints(run_dir: Path, epoch: int, keep: int) -> list[str]:
    """After ``epoch``'s last.pt: delete the epoch-NNNN.pt files (the names this module writes,
    and nothing else) of all but the ``keep`` latest epochs up to ``epoch``, and those after it
    (left by a timeline a resume with a new stage replaced). Returns the deleted names."""
    found = sorted((int(m[1]), p) for p in run_dir.iterdir()
                   if (m := EPOCH_CHECKPOINT.fullmatch(p.name)) and p.is_file())
    kept = {n for n, _ in found if n <= epoch}
    kept = set(sorted(kept)[-keep:])
    gone = []
    for n, path in found:
        if n not in kept:
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


def save_step(run_dir: Path, ckpt: dict[str, Any]) -> None:
    """A mid-epoch checkpoint (``ckpt['step']`` steps into epoch ``ckpt['epoch'] + 1``):
    last.pt alone, the commit point as at an epoch end (module docstring). The caller has
    checked that the epoch's losses so far are finite."""
    if not weights_finite(ckpt["model"].values()):
        raise Diverged(f"training diverged in epoch {ckpt['epoch'] + 1}: the weights after step "
                       f"{ckpt['step']} are not finite; nothing of that epoch was saved")
    save_checkpoint(ckpt, run_dir / "last.pt")


def summary(ckpt: dict[str, Any], params: int, peak_memory_mb: float, device: str,
            precision: str | None = None) -> dict[str, Any]:
    """summary.json's figures, from the stage's last checkpoint and its final metrics row.

    ``top1``/``top5``/``loss`` are those of ``weights`` (EMA when the run keeps one; the trained
    weights' figures are then ``raw_*``); ``best_split`` says where best.pt was chosen.
    """
    cfg = ckpt["config"]
    row = ckpt["metrics"]
    epochs = max(int(ckpt["epoch"]), 1)
    train_seconds = ckpt["train_seconds"]
    weights = ckpt.get("weights", "raw")
    prefix = "ema_eval_" if weights == "ema" else "eval_"
    out = {
        "model": ckpt["model_name"],
        "recipe": cfg.get("name"),
        "data": cfg["data"]["source"],
        "params": params,
        "input": "x".join(str(v) for v in ckpt["image_shape"]),  # stored (C, H, W)
        "epochs": ckpt["epoch"],
        "split": ckpt["eval_split"],
        "weights": weights,
        "top1": row.get(prefix + "top1"),
        "top5": row.get(prefix + "top5"),
        "loss": row.get(prefix + "loss"),
        "best_top1": ckpt["best_top1"],
        "best_metric": ckpt.get("best_metric", "val_top1"),  # what chose best.pt ...
        "best_value": ckpt.get("best_value"),  # ... its value there, and that epoch
        "best_epoch": ckpt.get("best_epoch"),
        "best_split": ckpt["eval_split"],
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / epochs,
        "images_per_second": ckpt["train_images"] / max(train_seconds, 1e-9),
        "train_images_per_epoch": ckpt["train_images"] // epochs,
        "peak_memory_mb": peak_memory_mb,
        "device": device,
        "precision": precision,
        "torch": torch.__version__,
    }
    if weights == "ema":
        out.update({"ema_top1": row.get("ema_eval_top1"), "raw_top1": row.get("eval_top1"),
                    "raw_top5": row.get("eval_top5"), "raw_loss": row.get("eval_loss")})
    if ckpt["eval_split"] == "test":
        out["best_note"] = ("best.pt was chosen on the test split, so its test figure is "
                            "optimistic; set data.val_fraction (or give the data a val/ split) "
                            "to choose on held-out data")
    # What airbench's timer covers: data-dependent init + training epochs + final evaluation.
    # Excluded, as there: data loading, model construction, compilation, logging, checkpoints.
    out["init_seconds"] = ckpt.get("init_seconds", 0.0)
    out["compile_seconds"] = ckpt.get("compile_seconds", 0.0)
    out["final_eval_seconds"] = row.get("eval_seconds", 0.0)
    out["timed_seconds"] = out["init_seconds"] + train_seconds + out["final_eval_seconds"]
    return out


def write_summary(run_dir: Path, figures: dict[str, Any]) -> None:
    """summary.json, then metrics.csv and curves.png from the metric log (a plotting problem is
    a warning: it must never lose a finished run)."""
    write_text(run_dir / "summary.json", dumps_json(figures, indent=2) + "\n")
    _write_reports(run_dir)
    top1, top5 = figures.get("top1"), figures.get("top5")
    if figures.get("best_note"):
        log.warning(f"note: {figures['best_note']}")
    log.info(
        f"done: {figures['model']} {figures['split']} top1 {_pct(top1)} top5 {_pct(top5)} "
        f"({figures.get('weights', 'raw')} weights) in {figures['train_seconds']:.1f}s "
        f"-> {run_dir}"
    )


def _pct(v: Any) -> str:
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "n/a"


def _write_reports(run_dir: Path, which: Iterable[str] = ("metrics.csv", "curves.png")) -> None:
    """metrics.csv and curves.png from metrics.jsonl. A full or read-only disk is an error like
    any other write; anything else (a plotting problem) only a warning."""
    from convzoo import report

    writers: dict[str, Callable[[Path], Any]] = {
        "metrics.csv": lambda tmp: report.write_metrics_csv(run_dir, out=tmp),
        "curves.png": lambda tmp: report.plot_curves(run_dir, out=tmp),
    }
    for name in which:
        try:
            write_file(run_dir / name, writers[name])
        except ConvzooError:
            raise
        except Exception as e:
            log.warning(f"could not write {run_dir / name}: {e}")


def complete(run_dir: Path, ckpt: dict[str, Any], device: str) -> list[str]:
    """A finished run resumed: rebuild what a run end must have left but is missing.

    Rebuilds model.safetensors (from last.pt), summary.json (missing, unreadable, or of an
    older epoch; its peak memory then comes from the last metrics row, ``device`` is this
    process's, and the file says ``"rebuilt": true``), metrics.csv and curves.png; logs what it
    did and returns the rebuilt names.
    """
    from convzoo.report import read_summary

    done: list[str] = []
    if not (run_dir / "model.safetensors").is_file():
        save_weights(ckpt, run_dir / "model.safetensors")
        done.append("model.safetensors")
    try:
        stale = read_summary(run_dir).get("epochs") != ckpt["epoch"]
    except ConvzooError:  # e.g. a 0-byte file from a torn write by an older convzoo
        stale = True
    if stale:
        figures = summary(ckpt, _count_params(ckpt), ckpt["metrics"].get("peak_memory_mb", 0.0),
                          device)
        figures["rebuilt"] = True
        write_text(run_dir / "summary.json", dumps_json(figures, indent=2) + "\n")
        done.append("summary.json")
    missing = [n for n in ("metrics.csv", "curves.png") if not (run_dir / n).is_file()]
    if missing:
        _write_reports(run_dir, missing)
        done.extend(n for n in missing if (run_dir / n).is_file())
    what = f"rebuilt {', '.join(done)}" if done else "nothing to do"
    log.info(f"{run_dir}: already trained to epoch {ckpt['epoch']}; {what}")
    return done


def _count_params(ckpt: dict[str, Any]) -> int:
    """Trainable parameters of the checkpoint's model, built on the meta device (no memory)."""
    from convzoo.models import create_model

    with torch.device("meta"):
        model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"],
                             in_chans=ckpt["in_chans"], **ckpt["model_kwargs"])
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- divergence


class Diverged(ConvzooError):
    """Training produced a non-finite loss or weights; nothing of that epoch was written."""


def weights_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every floating tensor is finite (one host sync for all of them)."""
    checks = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def check_losses(row: dict[str, Any]) -> None:
    """Raise Diverged if a loss of an epoch's metrics row (train, eval, EMA eval) is not finite:
    finite weights whose outputs overflow on the eval data are as useless as NaN weights."""
    for key in ("train_loss", "eval_loss", "ema_eval_loss"):
        value = row.get(key)
        if value is not None and not math.isfinite(value):
            split = row.get("eval_split", "eval")
            what = {"train_loss": "training", "eval_loss": split,
                    "ema_eval_loss": f"EMA {split}"}[key]
            raise Diverged(f"training diverged in epoch {row['epoch']}: the {what} loss is "
                           f"{value} (lr {row.get('lr', float('nan')):.4g} at the epoch start); "
                           f"nothing of epoch {row['epoch']} was saved; lower optim.lr or set "
                           "optim.grad_clip")


class DivergenceCheck:
    """Finds the first optimizer step of an epoch whose loss is not finite, without a host sync
    per step: the step number is kept on the device (``update``) and read only where the loop
    syncs anyway, at a progress read (``running``) and at the epoch end (``finish``).

    ``lrs``: the base lr of each of the epoch's steps (named in the error). ``early`` (single
    process) lets a progress read stop the run at once; with several ranks only the epoch end
    decides, on the all-reduced loss, so that every rank stops together.
    """

    def __init__(self, lrs: list[float], device: torch.device, *, epoch: int | None = None,
                 early: bool = True) -> None:
        self.lrs, self.epoch, self.early = lrs, epoch, early
        self.first = torch.zeros((), dtype=torch.int64, device=device)  # 0 = all finite so far

    def update(self, step: int, loss: torch.Tensor) -> None:
        """After step ``step`` (1-based in the epoch): remember it if it is the first bad one."""
        self.first = torch.where(torch.isfinite(loss.detach()) | (self.first > 0),
                                 self.first, step)

    def running(self, value: float) -> float:
        """A progress read of the running mean loss: stop here if it is no longer finite."""
        if self.early and not math.isfinite(value):
            self._raise(value)
        return value

    def finish(self, loss: float, parameters: Iterable[torch.Tensor]) -> None:
        """Epoch end (``loss``: the epoch's mean over all ranks; equal weights on every rank)."""
        if not math.isfinite(loss):
            self._raise(loss)
        if not weights_finite(parameters):  # the last step's update overflowed: loss still finite
            raise Diverged(f"training diverged{self._where()}: the weights are not finite after "
                           f"its last step (lr {self._lr(None)}); {self._advice()}")

    def _raise(self, value: float) -> None:
        step = int(self.first.item()) or None  # None: only another rank saw it (DDP)
        at = f", step {step}/{len(self.lrs)}" if step else ""
        raise Diverged(f"training diverged{self._where()}{at}: the loss is {value} "
                       f"(lr {self._lr(step)}); {self._advice()}")

    def _where(self) -> str:
        return f" in epoch {self.epoch}" if self.epoch is not None else ""

    def _lr(self, step: int | None) -> str:
        """The lr step ``step`` of this epoch used (None: the last step's)."""
        if not self.lrs:
            return "unknown"
        return f"{self.lrs[step - 1 if step else -1]:.4g}"

    def _advice(self) -> str:
        what = f"epoch {self.epoch}" if self.epoch is not None else "this epoch"
        return f"nothing of {what} was saved; lower optim.lr or set optim.grad_clip"


# ----------------------------------------------------------------------------- the owner


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
        from convzoo.training.distributed import torchrun_round

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
    and Ctrl-C; while the loop trains, ``train/preempt.py`` takes the two signals over (finish
    the step, checkpoint, exit 75) and gives them back after.
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
            fd = _create(path, me)
            if fd is None:
                fd = _take_over(path, me, patient=time.monotonic() < deadline)
            if fd is None:  # released, being written or being taken over: look again
                time.sleep(0.05)
                continue
            before = frozenset(n for n in _entries(run_dir) if n != LOCK_FILE)
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


def _create(path: Path, me: Holder) -> int | None:
    """A new lock file owned by ``me`` (its fd), or None when one exists."""
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


def _entries(run_dir: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(run_dir))
    except OSError as e:
        raise ConvzooError(f"cannot list run directory {run_dir}: {e.strerror}") from None


def _only_ours(run_dir: Path) -> bool:
    """Whether everything in ``run_dir`` is what a convzoo run leaves before its config.yaml:
    a (stale) lock, temp files of an atomic write, TensorBoard event files."""
    for name in _entries(run_dir):
        if name == LOCK_FILE or files.is_temp_name(name):
            continue
        if name == "tensorboard" and not (run_dir / name).is_symlink() and all(
                n.startswith(TENSORBOARD_PREFIX) for n in _entries(run_dir / name)):
            continue
        return False
    return True


def _check_claimable(run_dir: Path) -> None:
    """A fresh run may start in an existing folder only when it is a folder (a link to one is
    followed) holding nothing a convzoo run did not leave there (``_only_ours``)."""
    from convzoo.outputs import kind_of

    kind = kind_of(run_dir)
    if kind is None:
        return
    if not run_dir.is_dir():
        raise ConvzooError(f"run directory {run_dir}: is {'a file' if kind == 'file' else kind}, "
                           "not a folder; give another --name or --out")
    if not _only_ours(run_dir):
        shown = ", ".join(_entries(run_dir)[:4])
        raise ConvzooError(f"run directory {run_dir}: is not a convzoo run (no config.yaml) and "
                           f"not empty ({shown}{', ...' if len(_entries(run_dir)) > 4 else ''}); "
                           "convzoo starts a run only in a new or empty folder: give another "
                           "--name or --out")


def _mkdirs(path: Path) -> tuple[Path, ...]:
    """``mkdir -p path``: the folders this call created, deepest first."""
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    made = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue  # created meanwhile by another process: not ours to remove
        except OSError as e:
            raise ConvzooError(f"cannot create run directory {path}: {e.strerror}") from None
        made.append(p)
    return tuple(reversed(made))


def claim(run_dir: Path) -> RunLock:
    """Own exactly ``run_dir`` (``--resume auto``: a scheduler's fixed command) for a fresh run,
    creating it when missing: never ``NAME-2``. An existing folder is taken only when it is
    empty or holds nothing but what a killed convzoo run left (``_only_ours``): a folder of the
    user's is refused with one line, never written into."""
    run_dir = Path(run_dir).expanduser()
    _check_claimable(run_dir)  # before the lock: a user's folder gets no .lock either
    made = _mkdirs(run_dir)
    lock = RunLock.acquire(run_dir, made=made)
    try:
        _check_claimable(run_dir)  # again, now that nobody else can write here
    except ConvzooError:
        lock.release()
        raise
    return lock


def create(parent: Path, name: str) -> RunLock:
    """A new run directory ``parent/name`` (``name-2``, ``name-3``... when taken), owned.

    Creation is atomic (``mkdir`` without exist_ok), so two runs started together with the same
    name get different directories. An existing empty directory (not a link) is taken if its
    lock can be; it stays if the run fails (``discard``), as a folder this process did not make.
    """
    parent = Path(parent).expanduser()
    if parent.exists() and not parent.is_dir():
        raise ConvzooError(f"cannot create run directory {parent / name}: {parent} is not a "
                           "folder")
    made_parents = _mkdirs(parent)
    n = 1
    while True:
        run_dir = parent / (name if n == 1 else f"{name}-{n}")
        n += 1
        try:
            run_dir.mkdir()
        except FileExistsError:
            if run_dir.is_dir() and not run_dir.is_symlink() and not any(run_dir.iterdir()):
                me = Holder.this_process()  # an empty folder made by the user: take it
                fd = _create(run_dir / LOCK_FILE, me)
                if fd is None:  # another new run got it first
                    continue
                lock = RunLock(run_dir, fd, me, made=made_parents)
                if {p.name for p in run_dir.iterdir()} == {LOCK_FILE}:
                    return lock
                lock.release()
            continue
        except OSError as e:
            raise ConvzooError(f"cannot create run directory {run_dir}: {e.strerror}") from None
        me = Holder.this_process()
        fd = _create(run_dir / LOCK_FILE, me)
        if fd is None:  # another creator took our new, still empty folder as a user-made one
            continue
        return RunLock(run_dir, fd, me, made=(run_dir, *made_parents))


# What a run writes into its directory (module docstring) and may therefore remove again.
WRITTEN = ("config.yaml", INIT_FILE, METRICS_FILE, "metrics.csv", "summary.json",
           "model.safetensors", "best.pt", "last.pt", "curves.png", "tracking.json", "steps.csv")
TENSORBOARD_PREFIX = "events.out.tfevents."


def discard(lock: RunLock) -> list[str]:
    """A fresh run failed before its first checkpoint: remove what this process wrote into its
    run directory, release the lock, and remove the folders it created if they are empty now.

    Only convzoo's own names (``WRITTEN``, epoch-NNNN.pt, TensorBoard event files in
    ``tensorboard/``, W&B's run folders in ``wandb/``, temp files) that were not there when the
    run took the directory are removed; a folder is removed
    with ``rmdir``, which removes nothing but an empty folder. So a file of the user's, put
    there before or meanwhile, is never touched. Returns the names removed.
    """
    run_dir, removed = lock.run_dir, []
    for name in WRITTEN:
        path = run_dir / name
        if name not in lock.before and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
            removed.append(name)
    board = run_dir / "tensorboard"
    if "tensorboard" not in lock.before and board.is_dir() and not board.is_symlink():
        for name in _entries(board):
            if name.startswith(TENSORBOARD_PREFIX) and (board / name).is_file():
                (board / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            board.rmdir()
            removed.append("tensorboard")
    for name in _entries(run_dir):  # epoch-NNNN.pt (train.keep_last)
        if EPOCH_CHECKPOINT.fullmatch(name) and name not in lock.before:
            (run_dir / name).unlink(missing_ok=True)
            removed.append(name)
    if "wandb" not in lock.before:  # W&B's offline files (train.loggers: wandb)
        from convzoo.trackers import discard_wandb

        removed.extend(discard_wandb(run_dir))
    files.remove_stale_temps(run_dir)  # ours: the lock is still held
    lock.release()
    for folder in lock.made:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty (the user's files, or another run's): it stays, and its parents
    return removed
