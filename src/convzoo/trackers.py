"""Where a run's metrics go besides metrics.jsonl: the loggers of ``train.loggers``.

    tensorboard   event files in RUN/tensorboard/ (scalars, hyperparameters, images, text)
    csv           metrics.csv rewritten after every epoch, and steps.csv (the per-step values)
    mlflow        an MLflow run (``mlflow.tracking_uri``; default a SQLite store in train.out)
    wandb         a W&B run (offline files in RUN/wandb/ unless an API key is configured)

One writer feeds them all (``training.logging.MetricsWriter``), with the same values:

* every ``train.log_every`` steps: ``step/loss`` (the epoch's running mean loss, what the
  progress line shows, read when it reads it), ``step/lr``, ``step/images_per_second``;
* each epoch's metrics row (its numbers: train/eval loss and top-1, lr, seconds ...);
* once, when a tracked run is created: the resolved config as hyperparameters (dotted keys);
* at a stage's end: the summary's numbers, curves.png, summary.json and config.yaml;
* ``convzoo eval RUN --report``: the report's figures and numbers, to the run's own trackers.

The x-axis of every value is the optimizer step counted over the whole run (a metrics row's
``step``), so per-step and per-epoch values share one axis, and a resume continues it.

Only rank 0 logs (the writer exists on rank 0 alone). A resumed run continues the same MLflow
run and the same W&B run: their ids are kept in RUN/tracking.json, written when they are
created. TensorBoard drops the events after the resumed position (``purge_step``); steps.csv
drops its rows after it. MLflow and W&B keep what they were sent: values of steps that a run
killed between two checkpoints logs again come twice, with equal values (the replay is exact).

The libraries are imported only when their logger is used (mlflow takes seconds to import);
:func:`check_installed` fails a run whose logger's library is missing before anything is
written, naming the pip extra. Opening a logger that then fails (an unreachable tracking
server) is an error before training; a logger that fails once training runs is a warning and
is dropped for the rest of the process: a tracking outage never costs a training run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import netrc
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from convzoo import config as C
from convzoo import files, report
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

TRACKING_FILE = "tracking.json"  # the MLflow and W&B run ids of a run directory
STEPS_FILE = "steps.csv"
STEP_COLUMNS = ("step", "epoch", "loss", "lr", "images_per_second")
# The library each logger needs, and what installs it.
LIBRARY = {"tensorboard": ("tensorboard", "tensorboard"),
           "mlflow": ("mlflow", "convzoo[mlflow]"),
           "wandb": ("wandb", "convzoo[wandb]")}
STATUS = ("finished", "failed", "killed")  # how a run's process ended


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_installed(loggers: Sequence[str]) -> None:
    """A ConvzooError with the install line when a logger's library is missing."""
    for name in loggers:
        if name in LIBRARY and not installed(LIBRARY[name][0]):
            module, extra = LIBRARY[name]
            raise ConvzooError(f"train.loggers: {name} needs the {module} package, which is not "
                               f"installed: pip install '{extra}' (or drop {name} from "
                               "train.loggers)")


def hyperparameters(cfg: C.Config) -> dict[str, Any]:
    """The resolved config as flat ``{"optim.lr": 0.1, ...}``: numbers, text and booleans as
    they are, lists and mappings as JSON, None as ``null``. Without the run's history
    (``stages``, ``started``): config.yaml, logged beside, has it."""
    data = C.to_dict(cfg)
    data.pop("stages")
    data.pop("started")
    out: dict[str, Any] = {}
    for key, value in C.dotted(data).items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
        out[key] = "null" if value is None else value
    return out


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (no text, no booleans; not ``step``, the x-axis itself)."""
    return {k: float(v) for k, v in values.items() if k != "step"
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# ----------------------------------------------------------------------------- the loggers


class Tracker:
    """One logger. Every method defaults to nothing; ``step`` is the run's optimizer step."""

    name = ""
    ids: dict[str, Any] | None = None  # what tracking.json keeps to continue this tracked run

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Per-step values: epoch, loss, lr, images_per_second."""

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        """An epoch's metrics row (as appended to metrics.jsonl)."""

    def log_stage_end(self, step: int, figures: dict[str, Any], run_dir: Path) -> None:
        """A stage ended: the summary's figures; curves.png, summary.json, config.yaml."""

    def log_report(self, step: int, tag: str, folder: Path, values: dict[str, float]) -> None:
        """``eval --report``: the report folder's figures and files, and its numbers."""

    def close(self, status: str | None) -> None:
        """``status``: how the process ends (``STATUS``), or None to leave the run's as it is
        (an evaluation adding its report)."""


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path, params: dict[str, Any] | None,
                 resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = run_dir / "tensorboard"
        new = not any(folder.glob("events.out.tfevents.*"))
        # purge_step: TensorBoard hides the events at and after it that an earlier process
        # wrote, i.e. those of the steps this resume trains again.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=None if resume_step is None
                                    else resume_step + 1)
        if new and params is not None:
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(params, {"eval_top1": 0.0, "eval_loss": 0.0}):
                self.writer.file_writer.add_summary(summary)
            self.writer.flush()

    def _scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        for key, value in values.items():
            self.writer.add_scalar(prefix + key, value, step)
        self.writer.flush()

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self._scalars(step, {k: v for k, v in values.items() if k != "epoch"}, "step/")

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self._scalars(step, numbers(row))

    def _image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def log_stage_end(self, step: int, figures: dict[str, Any], run_dir: Path) -> None:
        if (run_dir / "curves.png").is_file():
            self._image("curves", run_dir / "curves.png", step)
        self.writer.add_text("summary", "```\n" + json.dumps(figures, indent=1) + "\n```", step)
        self.writer.flush()

    def log_report(self, step: int, tag: str, folder: Path, values: dict[str, float]) -> None:
        for png in sorted(folder.glob("*.png")):
            self._image(f"{tag}/{png.stem}", png, step)
        self._scalars(step, values, tag + "/")
        if (folder / "per_class.md").is_file():
            self.writer.add_text(f"{tag}/per_class", (folder / "per_class.md").read_text(), step)
        self.writer.flush()

    def close(self, status: str | None) -> None:
        self.writer.close()


class CsvTracker(Tracker):
    """steps.csv (one line per logged step, appended and fsync'd like metrics.jsonl) and
    metrics.csv after every epoch (at a stage's end the run directory writes it anyway)."""

    name = "csv"

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.run_dir = run_dir
        self.path = run_dir / STEPS_FILE
        if resume_step is not None and self.path.is_file():  # drop the steps trained again
            lines = self.path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [ln for ln in lines[1:] if ln.endswith("\n")
                                and _step_of(ln) is not None and _step_of(ln) <= resume_step]
            if kept != lines:
                files.write_text(self.path, "".join(kept))

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if not self.path.is_file():
            files.append_line(self.path, ",".join(STEP_COLUMNS) + "\n")
        row = {"step": step, **values}
        files.append_line(self.path, ",".join(f"{row.get(c, '')}" for c in STEP_COLUMNS) + "\n")

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        files.write_file(self.run_dir / "metrics.csv",
                          lambda tmp: report.write_metrics_csv(self.run_dir, out=tmp))


def _step_of(line: str) -> int | None:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None


def mlflow_location(cfg: C.Config, saved: dict[str, Any] | None = None
                    ) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the store's own):
    ``mlflow.tracking_uri``, else MLFLOW_TRACKING_URI, else the store a continuing run was
    logged to (tracking.json), else the SQLite store in train.out."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or (
        saved or {}).get("tracking_uri", "")
    if uri:
        return uri, None
    out = Path(cfg.train.out).expanduser().resolve()
    return f"sqlite:///{out / 'mlflow.db'}", (out / "mlartifacts").as_uri()


@contextlib.contextmanager
def sqlite_lock(uri: str) -> Iterator[None]:
    """Hold a file lock beside a SQLite database (a no-op for any other URL) while it is
    opened: the first opener creates its tables (MLflow's store, Optuna's storage), and two
    processes starting together must not both do it."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path.strip("/"):
        yield
        return
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvzooError(f"{uri}: cannot create {db.parent}: {e.strerror}") from None
    with FileLock(str(db) + ".lock", timeout=600):
        yield


class MlflowTracker(Tracker):
    """An MLflow run through ``MlflowClient`` (no global active run: a sweep's trials, one
    process, are runs of their own)."""

    name = "mlflow"

    def __init__(self, cfg: C.Config, run_dir: Path, params: dict[str, Any] | None,
                 saved: dict[str, Any] | None, *, create: bool = True) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri, artifacts = mlflow_location(cfg, saved)
        self.client = MlflowClient(uri)
        self.run_id: str | None = None
        with sqlite_lock(uri):
            if saved is not None and saved.get("tracking_uri") == uri:
                try:
                    self.run_id = self.client.get_run(saved["run_id"]).info.run_id
                except MlflowException as e:
                    log.warning(f"mlflow: run {saved['run_id']} of {run_dir} is not in {uri} "
                                f"({str(e).splitlines()[0]}); starting a new MLflow run")
            if self.run_id is None and create:
                exp = self.client.get_experiment_by_name(cfg.mlflow.experiment)
                exp_id = exp.experiment_id if exp is not None else \
                    self.client.create_experiment(cfg.mlflow.experiment,
                                                  artifact_location=artifacts)
                run = self.client.create_run(exp_id, run_name=run_dir.name, tags={
                    "convzoo.run_dir": str(run_dir.resolve()), "mlflow.source.name": "convzoo"})
                self.run_id = run.info.run_id
                items = [Param(k, str(v)) for k, v in (params or {}).items()]
                for i in range(0, len(items), 100):  # MLflow takes 100 params per batch
                    self.client.log_batch(self.run_id, params=items[i:i + 100])
                if (run_dir / "config.yaml").is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / "config.yaml"))
            elif self.run_id is not None and create:
                self.client.update_run(self.run_id, status="RUNNING")
        self.ids = {"tracking_uri": uri, "run_id": self.run_id}

    def _metrics(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(prefix + k, v, now, step)
                                                    for k, v in values.items()])

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self._metrics(step, {k: v for k, v in values.items() if k != "epoch"}, "step/")

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self._metrics(step, numbers(row))

    def log_stage_end(self, step: int, figures: dict[str, Any], run_dir: Path) -> None:
        self._metrics(step, numbers(figures), "summary/")
        for name in ("curves.png", "summary.json", "config.yaml"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))

    def log_report(self, step: int, tag: str, folder: Path, values: dict[str, float]) -> None:
        self._metrics(step, values, tag + "/")
        self.client.log_artifacts(self.run_id, str(folder), tag)

    def close(self, status: str | None) -> None:
        if status is not None:
            self.client.set_terminated(self.run_id, {"finished": "FINISHED", "failed": "FAILED",
                                                     "killed": "KILLED"}[status])


def wandb_mode(mode: str) -> str:
    """``wandb.mode``: auto = WANDB_MODE if set, else online with an API key, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:  # `wandb login` stores the key in ~/.netrc
        return "online" if netrc.netrc().authenticators(host or "") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbTracker(Tracker):
    """A W&B run, its files in RUN/wandb/. Offline it never touches the network; ``wandb sync
    RUN/wandb/offline-run-*`` uploads it later (a resumed run's folders are one run: same
    id)."""

    name = "wandb"

    def __init__(self, cfg: C.Config, run_dir: Path, params: dict[str, Any] | None,
                 saved: dict[str, Any] | None) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        mode = wandb_mode(cfg.wandb.mode)
        run_id = saved["id"] if saved else secrets.token_hex(4)  # W&B's own ids: 8 of [a-z0-9]
        settings = wandb.Settings(console="off", x_disable_stats=True, disable_git=True,
                                  save_code=False, silent=True)
        self.wandb = wandb
        self.run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity or None,
                              dir=str(run_dir), id=run_id, name=run_dir.name, resume="allow",
                              mode=mode, config=params, settings=settings)
        self.ids = {"id": run_id, "project": cfg.wandb.project, "mode": mode}

    def _log(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        self.run.log({prefix + k: v for k, v in values.items()}, step=step)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self._log(step, {k: v for k, v in values.items() if k != "epoch"}, "step/")

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self._log(step, numbers(row))

    def log_stage_end(self, step: int, figures: dict[str, Any], run_dir: Path) -> None:
        self.run.summary.update(numbers(figures))
        if (run_dir / "curves.png").is_file():
            self._log(step, {"curves": self.wandb.Image(str(run_dir / "curves.png"))})

    def log_report(self, step: int, tag: str, folder: Path, values: dict[str, float]) -> None:
        images = {f"{tag}/{png.stem}": self.wandb.Image(str(png))
                  for png in sorted(folder.glob("*.png"))}
        self._log(step, {**{f"{tag}/{k}": v for k, v in values.items()}, **images})

    def close(self, status: str | None) -> None:
        self.run.finish(exit_code=1 if status in ("failed", "killed") else 0)


# ----------------------------------------------------------------------------- the set


class Trackers:
    """The run's loggers, called together; one that fails is dropped with a warning."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:
                log.warning(f"{tracker.name} logging failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); nothing more goes to "
                            f"{tracker.name} in this process")
                self.trackers.remove(tracker)
                with contextlib.suppress(Exception):
                    tracker.close("failed")

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self._each("log_step", step, values)

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self._each("log_epoch", step, row)

    def log_stage_end(self, step: int, figures: dict[str, Any], run_dir: Path) -> None:
        self._each("log_stage_end", step, figures, run_dir)

    def log_report(self, step: int, tag: str, folder: Path, values: dict[str, float]) -> None:
        self._each("log_report", step, tag, folder, values)

    def close(self, status: str | None = "finished") -> None:
        for tracker in self.trackers:
            try:
                tracker.close(status)
            except Exception as e:
                log.warning(f"{tracker.name}: closing failed ({type(e).__name__}: {e})")
        self.trackers = []


def read_ids(run_dir: Path) -> dict[str, Any]:
    """tracking.json: {"mlflow": {...}, "wandb": {...}} ({} when absent or unreadable)."""
    try:
        data = json.loads((run_dir / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_trackers(cfg: C.Config, run_dir: Path, *, resume_step: int | None) -> Trackers:
    """The loggers of ``cfg.train.loggers`` for a run starting (``resume_step`` None) or
    continuing after optimizer step ``resume_step``; MLflow and W&B continue the runs named in
    tracking.json. Raises ConvzooError when one cannot start (nothing has trained yet)."""
    check_installed(cfg.train.loggers)
    saved = read_ids(run_dir)
    params = hyperparameters(cfg)
    made: list[Tracker] = []
    name = ""
    try:
        for name in cfg.train.loggers:
            if name == "tensorboard":
                made.append(TensorBoardTracker(run_dir, params, resume_step))
            elif name == "csv":
                made.append(CsvTracker(run_dir, resume_step))
            elif name == "mlflow":
                made.append(MlflowTracker(cfg, run_dir, params, saved.get("mlflow")))
            else:
                made.append(WandbTracker(cfg, run_dir, params, saved.get("wandb")))
    except Exception as e:
        Trackers(made).close("failed")
        if isinstance(e, ConvzooError):
            raise
        raise ConvzooError(f"train.loggers: {name} could not start ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    ids = {t.name: t.ids for t in made if t.ids is not None}
    if ids and ids != {k: v for k, v in saved.items() if k in ids}:
        files.write_text(run_dir / TRACKING_FILE, json.dumps({**saved, **ids}, indent=1) + "\n")
    return Trackers(made)


def open_for_report(cfg: C.Config, run_dir: Path) -> Trackers:
    """The trackers a finished run logged to, to add an evaluation report: TensorBoard when the
    run has its folder, MLflow and W&B when tracking.json names their runs. A tracker that
    cannot be reached is a warning (the report files are written anyway)."""
    saved = read_ids(run_dir)
    made: list[Tracker] = []
    for name in cfg.train.loggers:
        if name in LIBRARY and not installed(LIBRARY[name][0]):
            continue
        try:
            if name == "tensorboard" and (run_dir / "tensorboard").is_dir():
                made.append(TensorBoardTracker(run_dir, None, None))
            elif name == "mlflow" and saved.get("mlflow"):
                tracker = MlflowTracker(cfg, run_dir, None, saved["mlflow"], create=False)
                if tracker.run_id is not None:
                    made.append(tracker)
            elif name == "wandb" and saved.get("wandb"):
                made.append(WandbTracker(cfg, run_dir, None, saved["wandb"]))
        except Exception as e:
            log.warning(f"the report does not go to {name}: {type(e).__name__}: {e}")
    return Trackers(made)


# What wandb.init(dir=RUN) makes in RUN/wandb: its run folders and its log links.
WANDB_NAMES = re.compile(r"(offline-)?run-\d{8}_\d{6}-[a-z0-9]+|latest-run|debug(-internal)?\.log")


def discard_wandb(run_dir: Path) -> list[str]:
    """A failed new run's W&B files (``training.rundir.discard``): the names W&B makes in
    RUN/wandb/, then the folder if that left it empty. Returns what went."""
    folder = run_dir / "wandb"
    if not folder.is_dir() or folder.is_symlink():
        return []
    for entry in folder.iterdir():
        if WANDB_NAMES.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else is in there: it stays
        return []
    return ["wandb"]


def step_of_epoch(run_dir: Path, epoch: int) -> int:
    """The run's optimizer step at the end of ``epoch`` (its metrics row's ``step``; the epoch
    itself when the run's metrics cannot be read or lack that epoch)."""
    try:
        rows = report.read_metrics(run_dir)
    except ConvzooError:
        return epoch
    return next((int(r["step"]) for r in rows if r.get("epoch") == epoch), epoch)
