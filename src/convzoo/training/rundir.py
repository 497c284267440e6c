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
    README.md           the model card (``convzoo/card.py``), after them at each stage end
    last.pt             the checkpoint ``--resume`` continues from
    tracking.json, steps.csv, tensorboard/, wandb/    the loggers' (``convzoo/trackers.py``)

What a reader can rely on after a kill at any point (SIGKILL, OOM, power loss):

* Every file is absent, complete-old or complete-new, never torn (temp + fsync + rename, then
  the directory fsync'd: ``files.atomic_write``). A hidden ``.<name>.*.tmp*`` is garbage
  from a killed writer; the next owner deletes it. metrics.jsonl can end in one torn line
  (a killed append); readers skip it and the next owner rewrites the file without it.
* ``last.pt`` is the commit point and is written last in every epoch (:func:`save_epoch`):
  metrics row -> model.safetensors -> best.pt -> summary.json / metrics.csv / curves.png ->
  README.md -> epoch-NNNN.pt -> last.pt (then older epoch-NNNN.pt beyond ``keep_last`` go). So every other
  file is at least as new as ``last.pt``, and once ``last.pt`` holds a stage's final epoch, that stage's best.pt and summary are already complete. Anything newer
  than ``last.pt`` belongs to an epoch that ``--resume`` trains again; since that replay is
  exact (same seed per epoch), it rewrites those files with the same content, and drops
  metrics rows after ``last.pt``'s epoch.
* A checkpoint inside an epoch (``train.checkpoint_every_steps``/``_minutes``, or a stop
  request: ``training/preempt.py``) advances ``last.pt`` alone (:func:`save_step`), to a position
  ``(epoch, step)``: ``epoch`` epochs done and ``step`` steps of the next. The files of
  finished epochs (metrics rows, model.safetensors, best.pt, summary) are then of epochs up to
  ``epoch``, so the rule above still holds, and the resume replays the rest of the epoch
  exactly (the epoch's metrics row comes out as if it had never stopped).
* No file ever holds non-finite weights: a diverged epoch raises ``divergence.Diverged`` before
  its first write, so the last good epoch's files stay untouched.
* At most one process trains in a directory (``runlock.RunLock``), created atomically
  (:func:`create`, :func:`claim`); a fresh run that fails before its first checkpoint removes
  exactly what it wrote (:func:`discard`). ``--resume`` of a finished run
  rebuilds a missing summary.json / metrics.csv / curves.png / model.safetensors /
  README.md (:func:`complete`) and says what it rebuilt.

A write that fails (full or read-only disk) raises a one-line ``ConvzooError`` naming the file;
the directory is then as a kill at that point would have left it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from convzoo import card, files, report
from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.errors import ConvzooError
from convzoo.files import write_file, write_text
from convzoo.jsonio import dumps_json
from convzoo.models import create_model
from convzoo.outputs import kind_of
from convzoo.trackers import discard_wandb
from convzoo.training.divergence import Diverged, check_losses, weights_finite
from convzoo.training.runlock import LOCK_FILE, Holder, RunLock, create_lock, entries

log = logging.getLogger("convzoo")

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
        try:
            text = self.path.read_text()
        except OSError as e:
            raise ConvzooError(f"cannot read {self.path}: {e.strerror}") from None
        rows = report.read_metrics_file(self.path, text)
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
    (summary.json, metrics.csv, curves.png and the README.md model card are written before
    last.pt advances);
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
        write_card(run_dir, ckpt, summary)
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

    ``top1``/``top5``/``loss`` are the run's headline: the final epoch's figures (``headline``)
    of ``weights`` (EMA when the run keeps one; the trained weights' figures are then
    ``raw_*``), never the best epoch's, since picking the best of several epochs on the split
    that reports it flatters the figure. ``best_split`` says where best.pt was chosen; chosen
    on the test split (no validation split), ``best_note`` says its figure is not a result.
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
        "headline": "final epoch",
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
        f"(final epoch, {figures.get('weights', 'raw')} weights) in "
        f"{figures['train_seconds']:.1f}s "
        f"-> {run_dir}"
    )


def write_card(run_dir: Path, ckpt: dict[str, Any], figures: dict[str, Any]) -> None:
    """README.md, the model card (``convzoo.card``), after the summary it reads. A disk problem
    is an error like any other write; anything else only a warning: the card must never lose
    a finished run."""
    try:
        card.write_card(run_dir, ckpt, figures)
    except ConvzooError:
        raise
    except Exception as e:
        log.warning(f"could not write {run_dir / card.CARD_FILE}: {type(e).__name__}: {e}")


def _pct(v: Any) -> str:
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "n/a"


def _write_reports(run_dir: Path, which: Iterable[str] = ("metrics.csv", "curves.png")) -> None:
    """metrics.csv and curves.png from metrics.jsonl. A full or read-only disk is an error like
    any other write; anything else (a plotting problem) only a warning."""
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
    process's, and the file says ``"rebuilt": true``), metrics.csv, curves.png and the model
    card README.md (missing, or its summary rebuilt); logs what it did and returns the rebuilt
    names.
    """
    done: list[str] = []
    if not (run_dir / "model.safetensors").is_file():
        save_weights(ckpt, run_dir / "model.safetensors")
        done.append("model.safetensors")
    try:
        stale = report.read_summary(run_dir).get("epochs") != ckpt["epoch"]
    except ConvzooError:  # unreadable (a 0-byte file, say): rebuilt
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
    if stale or not (run_dir / "README.md").is_file():  # the card reads the summary
        write_card(run_dir, ckpt, report.read_summary(run_dir))
        done.append("README.md")
    what = f"rebuilt {', '.join(done)}" if done else "nothing to do"
    log.info(f"{run_dir}: already trained to epoch {ckpt['epoch']}; {what}")
    return done


def _count_params(ckpt: dict[str, Any]) -> int:
    """Trainable parameters of the checkpoint's model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"],
                             in_chans=ckpt["in_chans"], **ckpt["model_kwargs"])
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- creation, removal


def _only_ours(run_dir: Path) -> bool:
    """Whether everything in ``run_dir`` is what a convzoo run leaves before its config.yaml:
    a (stale) lock, temp files of an atomic write, TensorBoard event files."""
    for name in entries(run_dir):
        if name == LOCK_FILE or files.is_temp_name(name):
            continue
        if name == "tensorboard" and not (run_dir / name).is_symlink() and all(
                n.startswith(TENSORBOARD_PREFIX) for n in entries(run_dir / name)):
            continue
        return False
    return True


def _check_claimable(run_dir: Path) -> None:
    """A fresh run may start in an existing folder only when it is a folder (a link to one is
    followed) holding nothing a convzoo run did not leave there (``_only_ours``)."""
    kind = kind_of(run_dir)
    if kind is None:
        return
    if not run_dir.is_dir():
        raise ConvzooError(f"run directory {run_dir}: is {'a file' if kind == 'file' else kind}, "
                           "not a folder; give another --name or --out")
    if not _only_ours(run_dir):
        shown = ", ".join(entries(run_dir)[:4])
        raise ConvzooError(f"run directory {run_dir}: is not a convzoo run (no config.yaml) and "
                           f"not empty ({shown}{', ...' if len(entries(run_dir)) > 4 else ''}); "
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
                fd = create_lock(run_dir / LOCK_FILE, me)
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
        fd = create_lock(run_dir / LOCK_FILE, me)
        if fd is None:  # another creator took our new, still empty folder as a user-made one
            continue
        return RunLock(run_dir, fd, me, made=(run_dir, *made_parents))


# What a run writes into its directory (module docstring) and may therefore remove again.
WRITTEN = ("config.yaml", INIT_FILE, METRICS_FILE, "metrics.csv", "summary.json",
           "model.safetensors", "best.pt", "last.pt", "curves.png", "README.md", "tracking.json",
           "steps.csv")
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
        for name in entries(board):
            if name.startswith(TENSORBOARD_PREFIX) and (board / name).is_file():
                (board / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            board.rmdir()
            removed.append("tensorboard")
    for name in entries(run_dir):  # epoch-NNNN.pt (train.keep_last)
        if EPOCH_CHECKPOINT.fullmatch(name) and name not in lock.before:
            (run_dir / name).unlink(missing_ok=True)
            removed.append(name)
    if "wandb" not in lock.before:  # W&B's offline files (train.loggers: wandb)
        removed.extend(discard_wandb(run_dir))
    files.remove_stale_temps(run_dir)  # ours: the lock is still held
    lock.release()
    for folder in lock.made:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty (the user's files, or another run's): it stays, and its parents
    return removed


def rebuild_card(run_dir: str | Path) -> Path:
    """``convzoo card RUN``: the card of a finished run from its last checkpoint (or its
    model.safetensors) and summary.json, rewritten while this process owns the run (a run
    still training refuses with the holder's name)."""
    run = Path(run_dir)
    with RunLock.acquire(card.run_dir_of(run)):
        ckpt, figures = card.finished_run(run)
        kind = kind_of(run / card.CARD_FILE)
        if kind not in (None, "file"):  # a link or node the user put there stays as it is
            raise ConvzooError(f"{run / card.CARD_FILE}: is {kind}; convzoo replaces only a regular "
                               "file")
        return card.write_card(run, ckpt, figures)
