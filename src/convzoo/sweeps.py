"""Hyperparameter sweeps on Optuna: ``convzoo sweep`` and ``convzoo.sweep(...)``.

    convzoo sweep --recipe quickstart --param optim.lr=loguniform:1e-3:1 \\
        --param augment.policy=choice:none,trivialaugment --trials 20 --val-fraction 0.1

A sweep is an Optuna study in an RDB storage (SQLite file ``<out>/<study>/study.db`` by
default, any SQLAlchemy URL for a cluster). Each trial is an ordinary run directory
``<out>/<study>/trial-NNNN`` (``fit`` with the recipe, the sweep's fixed ``set`` and the trial's
parameters): resumable with ``convzoo train --resume``, evaluable with ``convzoo eval``.

* The objective is ``metric`` (``val_top1``, ``val_top5`` or ``val_loss``, of the weights the run
  is judged by) on the **validation split**, never test: every trial runs with
  ``data.eval_split=val``; a sweep whose data has no val split needs ``val_fraction``. The
  value of a finished trial is its last epoch's, i.e. its ``summary.json`` figure, which
  ``convzoo eval TRIAL_DIR`` repeats.
* Each evaluated epoch is reported to the trial (``trial.report(value, epoch)``) through
  ``fit``'s hook; when the pruner (median, ASHA, Hyperband) says so, the run ends at
  that epoch as early stopping ends one (its directory stays consistent) and the trial is
  PRUNED.
* Several processes on one or many machines share a study by pointing at the same storage and
  study name: Optuna's storage hands out the trials; each trial's process is written on it
  (``owner``), and trials are counted through the storage (``Budget``), so ``trials`` is the
  number of trials that finish (complete or pruned) over all of them.
* A failed trial (a ConvzooError, divergence) is FAIL, and so is an interrupted one (SIGTERM,
  Ctrl-C: the process then stops, exit 75/130) or one whose process was killed: on the next
  start on that host (``--resume``) its dead owner is seen at once; on another host Optuna's
  heartbeat fails it after ``GRACE_SECONDS``. A failed trial never counts as a result; another
  trial replaces it.
* When a process stops it writes, from the whole study: ``trials.csv`` (number, state, value,
  parameters, run directory), ``history.png``, ``importances.png`` and ``intermediate.png``
  (Optuna's matplotlib plots).

Why this is not ``study.optimize(..., n_trials=N)`` in each process: that is N trials *per
process*, and Optuna's ``MaxTrialsCallback`` counts only finished trials, so two processes that
are both mid-trial both start another one. ``Budget`` also counts the trials that run, and a
trial created in the instant between two processes' counts is recorded as FAIL with a note
(``surplus``), never trained.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from convzoo import config as C
from convzoo.data.loading.pipeline import open_source
from convzoo.errors import ConvzooError
from convzoo.files import write_file, write_text
from convzoo.report import read_summary
from convzoo.trackers import check_installed, installed, sqlite_lock
from convzoo.training.loop import fit
from convzoo.training.preempt import EXIT_PREEMPTED, Preempted
from convzoo.training.results import Event, Hook
from convzoo.training.runlock import Holder

log = logging.getLogger("convzoo")

HEARTBEAT_SECONDS = 60  # a running trial's process writes a heartbeat to the storage this often
GRACE_SECONDS = 300  # a trial without a heartbeat for this long is failed by any other process
FAILURES_IN_A_ROW = 3  # a process that fails this many trials in a row stops (a broken base)
SWEEP_FILE = "sweep.yaml"
METRIC_FIELD = {"val_top1": "top1", "val_top5": "top5", "val_loss": "loss"}  # summary.json
# Keys a trial must not set: where it runs and what it is judged on belong to the sweep.
RESERVED = {"train.out", "train.name", "data.eval_split", "stages"}
# What a process may set differently from the study it joins (its own budget and clock).
PER_PROCESS = ("trials", "timeout", "seed", "storage", "out")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep file (YAML): every key optional; ``convzoo sweep`` flags override them."""

    recipe: str = ""  # the base: a shipped recipe or a YAML file ("" = the defaults)
    # fixed overrides of the base, dotted keys: {train.epochs: 5, train.threads: 1}
    set: dict[str, Any] = field(default_factory=dict)
    # the search space, KEY: SPEC with SPEC uniform:LO:HI | loguniform:LO:HI | int:LO:HI |
    # intlog:LO:HI | choice:A,B,...  e.g. {optim.lr: "loguniform:1e-3:1"}
    params: dict[str, Any] = field(default_factory=dict)
    # the objective, on the validation split: val_top1 | val_top5 | val_loss
    metric: Literal["val_top1", "val_top5", "val_loss"] = "val_top1"
    # auto (maximise accuracy, minimise loss) | maximize | minimize
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    # trials that finish (complete or pruned), over all processes of the study (0 = no limit:
    # until `timeout`)
    trials: Annotated[int, C.In("[0, inf)")] = 20
    # seconds after which this process starts no new trial (0 = no limit)
    timeout: Annotated[float, C.In("[0, inf)")] = 0.0
    # data.val_fraction of every trial (0 = the base's; without a val split there is nothing to
    # tune on)
    val_fraction: Annotated[float, C.In("[0, 1)")] = 0.0
    # ends trials early on their per-epoch metric: none | median | asha | hyperband
    pruner: Literal["none", "median", "asha", "hyperband"] = "median"
    # epochs a trial trains before it can be pruned (asha/hyperband: their minimum resource)
    prune_warmup: Annotated[int, C.In("[0, inf)")] = 1
    prune_startup: Annotated[int, C.In("[0, inf)")] = 2  # median: trials finished before pruning
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna's TPE or random search
    # sampler seed of the process that creates the study (others draw their own: two processes
    # with one seed would propose the same points)
    seed: Annotated[int, C.In("[0, 4294967295]")] = 0
    baseline: bool = False  # the first trial runs the base's own values of the searched keys
    # trials to run first: [{optim.lr: 0.05}, ...] (values inside the search space)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    study: str = ""  # study name ("" = the sweep file's name, else <recipe>-sweep)
    storage: str = ""  # SQLAlchemy URL ("" = sqlite:///<out>/<study>/study.db)
    out: str = "runs/sweeps"  # the sweep's folder is <out>/<study>


def load_sweep(data: dict[str, Any], where: str = "sweep") -> SweepConfig:
    """A SweepConfig from a mapping (a loaded sweep file), checked as config keys are."""
    return C.convert(data, SweepConfig, where)


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file as a mapping (values still text until they meet their types)."""
    if not path.is_file():
        raise ConvzooError(f"sweep file not found: {path}")
    return C.read_yaml(path)


# ----------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` with its bounds, or its choices (typed as the key)."""

    key: str
    kind: str  # uniform | loguniform | int | intlog | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind in ("int", "intlog"):
            return IntDistribution(int(self.low), int(self.high), log=self.kind == "intlog")
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def check(self, value: Any, where: str) -> Any:
        """``value`` in the key's type, inside this space (an enqueued or baseline trial)."""
        value = C.check_value(self.key, value)
        inside = value in self.choices if self.kind == "choice" else \
            self.low <= value <= self.high
        if not inside:
            raise ConvzooError(f"{where}: {self.key}={value!r} is outside its search space "
                               f"{self.spec}")
        return value

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(str(c) for c in self.choices)
        return f"{self.kind}:{self.low:g}:{self.high:g}"


KINDS = ("uniform", "loguniform", "int", "intlog", "choice")


def parse_param(key: str, spec: Any) -> Param:
    """``("optim.lr", "loguniform:1e-3:1")`` -> a checked Param: the key exists and may be
    searched, its kind fits the key's type, and both bounds (or every choice) are valid values
    of the key."""
    where = f"sweep param {key}={spec}"
    keys = C.declared_keys()
    if key not in keys:
        raise ConvzooError(f"{where}: unknown config key '{key}' (`convzoo config` lists them)")
    if key in RESERVED or key.split(".")[0] == "stages":
        raise ConvzooError(f"{where}: {key} is set by the sweep itself, not searched")
    kind, _, rest = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS or not rest:
        raise ConvzooError(f"{where}: expected uniform:LO:HI, loguniform:LO:HI, int:LO:HI, "
                           "intlog:LO:HI or choice:A,B,...")
    tp, _ = C.unwrap(keys[key])
    if kind == "choice":
        values = []
        for text in rest.split(","):
            node: Any = C.parse_override(f"{key}={text.strip()}")  # YAML, as --set reads it
            for part in key.split("."):
                node = node[part]
            value = C.check_value(key, node)
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ConvzooError(f"{where}: choices must be single values (numbers, names), "
                                   f"got {value!r}")
            values.append(value)
        if len(set(map(repr, values))) != len(values):
            raise ConvzooError(f"{where}: a choice is listed twice")
        return Param(key, kind, choices=tuple(values))
    wanted = int if kind in ("int", "intlog") else float
    if tp is not wanted:
        what = "int:/intlog:" if tp is int else "uniform:/loguniform:" if tp is float \
            else "choice:"
        raise ConvzooError(f"{where}: {key} is not a {wanted.__name__} key; use {what}")
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise ConvzooError(f"{where}: expected {kind}:LO:HI")
    low, high = (C.check_value(key, b.strip()) for b in bounds)
    if not low < high:
        raise ConvzooError(f"{where}: LO must be below HI")
    if kind in ("loguniform", "intlog") and low <= 0:
        raise ConvzooError(f"{where}: a log scale needs LO > 0")
    return Param(key, kind, float(low), float(high))


def search_space(sweep: SweepConfig) -> list[Param]:
    if not sweep.params:
        raise ConvzooError("the sweep searches nothing: give params (--param KEY=SPEC, e.g. "
                           "--param optim.lr=loguniform:1e-3:1)")
    return [parse_param(k, v) for k, v in sweep.params.items()]


# ----------------------------------------------------------------------------- configs


def base_config(sweep: SweepConfig) -> dict[str, Any]:
    """The recipe with the sweep's fixed ``set``, as a nested mapping (checked)."""
    base: dict[str, Any] = C.load_recipe(sweep.recipe) if sweep.recipe else {}
    for key, value in sweep.set.items():
        if key in RESERVED:
            raise ConvzooError(f"sweep set {key}: set by the sweep itself")
        base = C.merge(base, C.dotted_to_nested(key, value))
    C.from_dict(base)
    return base


def trial_config(sweep: SweepConfig, base: dict[str, Any], params: dict[str, Any],
                 folder: Path, number: int) -> C.Config:
    """What trial ``number`` trains: the base, its parameters, then what the sweep fixes (the
    folder, the run's name, the validation split)."""
    data = base
    for key, value in params.items():
        data = C.merge(data, C.dotted_to_nested(key, value))
    fixed: dict[str, Any] = {"data": {"eval_split": "val"},
                             "train": {"out": str(folder), "name": trial_name(number)}}
    if sweep.val_fraction:
        fixed["data"]["val_fraction"] = sweep.val_fraction
    if "mlflow.experiment" not in sweep.set:  # a sweep's runs are one MLflow experiment
        fixed["mlflow"] = {"experiment": study_name(sweep)}
    return C.from_dict(C.merge(data, fixed))


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def study_name(sweep: SweepConfig) -> str:
    return sweep.study or f"{Path(sweep.recipe).stem if sweep.recipe else 'defaults'}-sweep"


def sweep_folder(sweep: SweepConfig) -> Path:
    return Path(sweep.out).expanduser() / study_name(sweep)


def storage_url(sweep: SweepConfig) -> str:
    return sweep.storage or f"sqlite:///{(sweep_folder(sweep) / 'study.db').resolve()}"


def direction(sweep: SweepConfig) -> str:
    if sweep.direction != "auto":
        return sweep.direction
    return "minimize" if sweep.metric == "val_loss" else "maximize"


def definition(sweep: SweepConfig) -> dict[str, Any]:
    """What every process of a study must agree on (the sweep without ``PER_PROCESS``)."""
    out = C.to_dict(sweep)
    for key in PER_PROCESS:
        out.pop(key)
    out["study"] = study_name(sweep)
    out["direction"] = direction(sweep)
    return out


def check_validation_split(cfg: C.Config) -> None:
    """A sweep tunes on the validation split: refuse data without one (before any trial)."""
    if cfg.data.val_fraction:
        return
    splits = open_source(cfg).splits
    if "val" not in splits:
        raise ConvzooError(f"data {cfg.data.source} has no val split (has: "
                           f"{', '.join(sorted(splits))}); a sweep tunes on held-out data, never "
                           "on test: set val_fraction (e.g. --val-fraction 0.1)")


# ----------------------------------------------------------------------------- the study


def open_storage(url: str) -> Any:
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):  # concurrent writers wait for the file lock, not fail at 5 s
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:
        with warnings.catch_warnings():  # Optuna marks the heartbeat experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=GRACE_SECONDS, **kwargs)
    except Exception as e:
        raise ConvzooError(f"sweep storage {url}: cannot open it ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def make_sampler(sweep: SweepConfig, seed: int) -> Any:
    import optuna

    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Optuna's default of 10 random startup trials would make a 12-trial sweep a random search.
    startup = max(2, min(10, sweep.trials // 3)) if sweep.trials else 10
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(sweep: SweepConfig, epochs: int) -> Any:
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sweep.prune_startup,
                                           n_warmup_steps=sweep.prune_warmup)
    if sweep.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, sweep.prune_warmup),
                                                      reduction_factor=3)
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, sweep.prune_warmup),
                                              max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(sweep: SweepConfig, queue: list[dict[str, Any]], base: C.Config, *,
               resume: bool) -> tuple[Any, bool]:
    """The study (created with the trials of ``queue`` first, or joined when it exists) and
    whether this process created it."""
    import optuna

    url, name = storage_url(sweep), study_name(sweep)
    mine = definition(sweep)
    with sqlite_lock(url):
        storage = open_storage(url)
        pruner = make_pruner(sweep, base.stages[-1].epochs if base.stages else base.train.epochs)
        if not resume:
            try:
                study = optuna.create_study(storage=storage, study_name=name,
                                            direction=direction(sweep),  # type: ignore[arg-type]
                                            sampler=make_sampler(sweep, sweep.seed),
                                            pruner=pruner)
                study.set_user_attr("convzoo_sweep", mine)
                for params in queue:
                    study.enqueue_trial(params)
                return study, True
            except optuna.exceptions.DuplicatedStudyError:  # another process made it: join
                pass
        elif name not in optuna.get_all_study_names(storage):
            raise ConvzooError(f"--resume: no study {name!r} in {url}")
        # A joining process draws its own points: seed from the study's and this process.
        seed = zlib.crc32(f"{sweep.seed}:{socket.gethostname()}:{os.getpid()}".encode())
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=make_sampler(sweep, seed), pruner=pruner)
    theirs = study.user_attrs.get("convzoo_sweep")
    if theirs is not None and theirs != mine:
        key = next(k for k in sorted(mine.keys() | theirs.keys())
                   if mine.get(k) != theirs.get(k))
        raise ConvzooError(f"study {name!r} in {url} was started with {key}="
                           f"{theirs.get(key)!r}, this sweep has {mine.get(key)!r}; give "
                           "another study name, or continue it with --resume "
                           f"{sweep_folder(sweep)}")
    return study, False


def enqueued(sweep: SweepConfig, space: list[Param], base: C.Config) -> list[dict[str, Any]]:
    """The trials to run first: the baseline (the base's own values), then ``enqueue``."""
    by_key = {p.key: p for p in space}
    out = []
    if sweep.baseline:
        flat = C.to_dict(base)
        values = {}
        for p in space:
            node: Any = flat
            for part in p.key.split("."):
                node = node[part]
            values[p.key] = p.check(node, "sweep baseline")
        out.append(values)
    for i, params in enumerate(sweep.enqueue):
        unknown = set(params) - set(by_key)
        if unknown:
            raise ConvzooError(f"sweep enqueue[{i}]: {sorted(unknown)[0]} is not a searched key")
        out.append({k: by_key[k].check(v, f"sweep enqueue[{i}]") for k, v in params.items()})
    return out


def fail_dead_trials(study: Any) -> list[int]:
    """RUNNING trials whose owner ran on this host and is gone (killed): FAIL now. Trials of
    other hosts are left to the heartbeat (their liveness cannot be checked from here)."""
    from optuna.trial import TrialState

    me = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner")
        holder = Holder(**owner) if isinstance(owner, dict) else None
        if holder is not None and holder.host == me and not holder.alive():
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.set_user_attr(f"note_{trial.number}", "its process was killed")
            failed.append(trial.number)
    if failed:
        log.warning(f"trial(s) {', '.join(map(str, failed))} of a killed process on this host: "
                    "recorded as failed")
    return failed


# ----------------------------------------------------------------------------- trials

COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # not WAITING: an enqueued trial not yet started


def counted(study: Any, below: int | None = None) -> int:
    """Trials that finished or run (numbers below ``below``, when given): the budget's count."""
    from optuna.trial import TrialState

    states = tuple(TrialState[s] for s in COUNTED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if below is None or t.number < below)


class Surplus(Exception):
    """The budget was reached by other processes while this trial was created: not run."""


class Interrupted(Exception):
    """The process was asked to stop (a signal) during a trial: the trial is FAIL, the process
    ends with ``code`` (75 after a checkpoint, like ``convzoo train``)."""

    def __init__(self, code: int, folder: Path | None = None) -> None:
        super().__init__(f"stopped (exit {code})")
        self.code, self.folder = code, folder


class Reporter:
    """``fit``'s hook for one trial (``results.Hook``): each evaluated epoch's value to the
    trial; True (end the run) when the pruner says so, before the last epoch (the result)."""

    def __init__(self, trial: Any, metric: str, last_epoch: int) -> None:
        self.trial, self.metric, self.last_epoch = trial, metric, last_epoch
        self.pruned_at: int | None = None

    def __call__(self, event: Event) -> bool:
        if event.name != "eval_end":
            return False
        row = event.metrics
        name = METRIC_FIELD[self.metric]
        value = row.get(f"ema_eval_{name}", row.get(f"eval_{name}"))
        if value is None or row.get("eval_split") != "val":
            return False
        if not math.isfinite(value):  # reported as the worst value there is
            value = math.inf if self.metric == "val_loss" else -math.inf
        self.trial.report(float(value), int(row["epoch"]))
        if int(row["epoch"]) < self.last_epoch and self.trial.should_prune():
            self.pruned_at = int(row["epoch"])
            return True
        return False


@dataclass
class Objective:
    """Trains one trial: its parameters, its run directory, its value."""

    sweep: SweepConfig
    space: list[Param]
    base: dict[str, Any]
    folder: Path

    def __call__(self, trial: Any) -> float:
        import optuna

        trial.set_user_attr("owner", asdict(Holder.this_process()))
        if self.sweep.trials and counted(trial.study, below=trial.number) >= self.sweep.trials:
            trial.set_user_attr("note", "surplus: the budget was reached by other processes "
                                        "as this trial was created; not run")
            trial.study.stop()
            raise Surplus()
        params = {p.key: suggest(trial, p) for p in self.space}
        cfg = trial_config(self.sweep, self.base, params, self.folder, trial.number)
        run_dir = self.folder / trial_name(trial.number)
        if run_dir.is_dir() and any(run_dir.iterdir()):  # another study's, in this folder
            raise ConvzooError(f"{run_dir} exists and is not this trial's: give the sweep "
                               "another study name or folder")
        trial.set_user_attr("run_dir", str(run_dir))
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in params.items())
        log.info(f"trial {trial.number}: {shown} -> {run_dir}")
        reporter = Reporter(trial, self.sweep.metric,
                            cfg.stages[-1].epochs if cfg.stages else cfg.train.epochs)
        try:
            fit(cfg, claim=run_dir, hook=Hook(reporter))
        except SystemExit as e:  # a signal before the loop (runlock.RunLock): not a result
            raise Interrupted(e.code if isinstance(e.code, int) else 1) from None
        figures = read_summary(run_dir)
        if figures.get("split") != "val":
            raise ConvzooError(f"{run_dir}: evaluated on {figures.get('split')}, not val")
        value = float(figures[METRIC_FIELD[self.sweep.metric]])
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"at epoch {reporter.pruned_at}")
        return value


def suggest(trial: Any, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.kind in ("int", "intlog"):
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.kind == "intlog")
    return trial.suggest_float(p.key, p.low, p.high, log=p.kind == "loguniform")


@dataclass
class Budget:
    """After each trial of this process: stop when the study's finished and running trials
    reach ``trials`` (all processes), or when this process failed ``FAILURES_IN_A_ROW`` trials
    in a row (a base config every trial fails on); logs each trial's outcome."""

    trials: int
    metric: str
    failures: int = 0
    last_error: str = ""

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        if trial.state == TrialState.COMPLETE:
            self.failures = 0
            log.info(f"trial {trial.number} finished: {self.metric} {trial.value:.6g}")
        elif trial.state == TrialState.PRUNED:
            self.failures = 0
            epoch = max(trial.intermediate_values, default=0)
            log.info(f"trial {trial.number} pruned at epoch {epoch}: {self.metric} "
                     f"{trial.intermediate_values.get(epoch, math.nan):.6g}")
        elif trial.state == TrialState.FAIL and "surplus" not in trial.user_attrs.get("note", ""):
            self.failures += 1
            self.last_error = trial.user_attrs.get("error", "")
            log.warning(f"trial {trial.number} failed: {self.last_error}")
            if self.failures >= FAILURES_IN_A_ROW:
                study.stop()
        if self.trials and counted(study) >= self.trials:
            study.stop()


def record_error(objective: Objective) -> Any:
    """The objective, with a failure's one-line reason kept on the trial (``error``)."""

    def run(trial: Any) -> float:
        import optuna

        try:
            return objective(trial)
        except (Surplus, optuna.TrialPruned):
            raise
        except ConvzooError as e:
            trial.set_user_attr("error", str(e))
            raise
        except Exception as e:
            trial.set_user_attr("error", f"interrupted: {e}" if isinstance(
                e, (Preempted, Interrupted)) else f"{type(e).__name__}: {e}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted: Ctrl-C")
            raise
    return run


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # the objective (last epoch) or, pruned, the last reported value
    params: dict[str, Any]
    run_dir: str
    epochs: int  # evaluated epochs reported
    seconds: float | None
    note: str


@dataclass(frozen=True)
class SweepResult:
    """What ``convzoo.sweep`` returns: the study's trials and its best finished one."""

    study: str
    storage: str
    folder: Path
    metric: str
    direction: str
    trials: list[TrialRow]

    @property
    def best(self) -> TrialRow | None:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        if not done:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(done, key=lambda t: t.value)  # type: ignore[arg-type, return-value]


def trial_rows(study: Any) -> list[TrialRow]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.state.name == "COMPLETE" else (
            t.intermediate_values[max(t.intermediate_values)]
            if t.state.name == "PRUNED" and t.intermediate_values else None)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        note = t.user_attrs.get("note") or t.user_attrs.get("error") or \
            study.user_attrs.get(f"note_{t.number}", "")
        rows.append(TrialRow(t.number, t.state.name, value, dict(t.params),
                             t.user_attrs.get("run_dir", ""), len(t.intermediate_values),
                             seconds, note))
    return rows


def write_table(rows: list[TrialRow], space: list[Param], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = [p.key for p in space]
    writer.writerow(["number", "state", "value", *keys, "epochs", "seconds", "run_dir", "note"])
    for r in rows:
        writer.writerow([r.number, r.state, "" if r.value is None else repr(r.value),
                         *[r.params.get(k, "") for k in keys], r.epochs,
                         "" if r.seconds is None else f"{r.seconds:.1f}", r.run_dir, r.note])
    write_text(path, buffer.getvalue())


def write_plots(study: Any, folder: Path, metric: str) -> list[Path]:
    """Optuna's matplotlib plots of the study (those it has the trials for) as PNG."""
    import matplotlib.pyplot as plt  # Optuna's plots are pyplot figures: closed once saved
    from optuna.visualization import matplotlib as plots

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    wanted = {"history.png": (plots.plot_optimization_history, len(done) >= 1),
              "importances.png": (plots.plot_param_importances,
                                  len(done) >= 2 and len(study.best_trial.params) >= 1
                                  if done else False),
              "intermediate.png": (plots.plot_intermediate_values, len(reported) >= 1)}
    made = []
    for name, (plot, possible) in wanted.items():
        if not possible:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                kwargs = {"target_name": metric} if plot is not plots.plot_intermediate_values \
                    else {}
                ax = plot(study, **kwargs)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4.5)
            write_file(folder / name, lambda tmp, f=fig: f.savefig(tmp, dpi=110,
                                                                   bbox_inches="tight"))
            plt.close(fig)
            made.append(folder / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials for it
            log.warning(f"sweep: no {name} ({e})")
    return made


def write_outputs(study: Any, sweep: SweepConfig, space: list[Param],
                  folder: Path) -> list[TrialRow]:
    rows = trial_rows(study)
    write_table(rows, space, folder / "trials.csv")
    write_plots(study, folder, sweep.metric)
    return rows


# ----------------------------------------------------------------------------- sweep()


def resolve(spec: str | Path | dict[str, Any] | SweepConfig | None = None, *,
            resume: str | Path | None = None, **keys: Any) -> SweepConfig:
    """The sweep to run: defaults <- the sweep file (or a mapping) <- ``keys``; with
    ``resume``, the sweep.yaml of that sweep folder instead of a file."""
    data: dict[str, Any] = {}
    if resume is not None:
        if spec is not None:
            raise ConvzooError("--resume continues a sweep with its own sweep.yaml; drop the "
                               "sweep file")
        saved = Path(resume) / SWEEP_FILE
        if not saved.is_file():
            raise ConvzooError(f"--resume {resume}: not a sweep folder (no {SWEEP_FILE})")
        data = dict(C.read_yaml(saved))
        data.update(out=str(Path(resume).parent), study=Path(resume).name)  # wherever it is now
    elif isinstance(spec, SweepConfig):
        data = C.to_dict(spec)
    elif isinstance(spec, dict):
        data = dict(spec)
    elif spec is not None:
        path = Path(spec)
        data = dict(read_sweep_file(path))
        data.setdefault("study", path.stem)
    for key, value in keys.items():
        if key in ("params", "set") and isinstance(value, dict):
            data[key] = {**dict(data.get(key) or {}), **value}
        else:
            data[key] = value
    return load_sweep(data)


def sweep(spec: str | Path | dict[str, Any] | SweepConfig | None = None, *,
          resume: str | Path | None = None, **keys: Any) -> SweepResult:
    """Run a hyperparameter sweep (or this process's share of one) and return its trials.

    spec: a sweep file (YAML: the keys of ``SweepConfig``), a mapping of those keys, or None.
    resume: a sweep folder (``<out>/<study>``) to continue with its own sweep.yaml: its study
        must exist; trials a killed process left running on this host are failed first.
    keys: any ``SweepConfig`` key, over the file's (``params`` and ``set`` add to its
        mappings): ``convzoo.sweep(recipe="quickstart", params={"optim.lr":
        "loguniform:1e-3:1"}, trials=12, val_fraction=0.1)``.
    """
    if not installed("optuna"):
        raise ConvzooError("convzoo sweep needs optuna, which is not installed: pip install "
                           "'convzoo[sweep]'")
    import optuna

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConvzooError("convzoo sweep runs each trial in one process: start one sweep "
                           "process per GPU (CUDA_VISIBLE_DEVICES) on the same storage, not "
                           "torchrun")
    cfg = resolve(spec, resume=resume, **keys)
    space = search_space(cfg)
    base = base_config(cfg)
    folder = sweep_folder(cfg)
    probe = trial_config(cfg, base, {}, folder, 0)  # the base as a trial sees it
    queue = enqueued(cfg, space, probe)
    check_validation_split(probe)
    check_installed(probe.train.loggers)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvzooError(f"cannot create sweep folder {folder}: {e.strerror}") from None
    optuna.logging.disable_default_handler()  # its lines are logged here, one per trial
    try:
        study, created = open_study(cfg, queue, probe, resume=resume is not None)
        if created or not (folder / SWEEP_FILE).is_file():
            write_text(folder / SWEEP_FILE, yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
        fail_dead_trials(study)
        log.info(f"sweep {study.study_name}: {direction(cfg)} {cfg.metric} over "
                 f"{', '.join(f'{p.key} {p.spec}' for p in space)}; storage {storage_url(cfg)}; "
                 f"{counted(study)} of {cfg.trials or 'unlimited'} trials done or running")
        budget = Budget(cfg.trials, cfg.metric)
        try:
            if not cfg.trials or counted(study) < cfg.trials:
                study.optimize(record_error(Objective(cfg, space, base, folder)),
                               timeout=cfg.timeout or None, catch=(ConvzooError, Surplus),
                               callbacks=[budget])
        except (Preempted, Interrupted) as e:  # the trial is FAIL (Optuna recorded it)
            raise Interrupted(getattr(e, "code", EXIT_PREEMPTED), folder) from None
        finally:
            rows = write_outputs(study, cfg, space, folder)
        if budget.failures >= FAILURES_IN_A_ROW:
            raise ConvzooError(f"sweep {study.study_name}: {budget.failures} trials failed in "
                               f"a row; the last: {budget.last_error}")
    finally:
        optuna.logging.enable_default_handler()
    result = SweepResult(study.study_name, storage_url(cfg), folder, cfg.metric,
                         direction(cfg), rows)
    best = result.best
    if best is not None:
        log.info(f"best: trial {best.number} {cfg.metric} {best.value:.6g} "
                 f"({', '.join(f'{k}={v}' for k, v in best.params.items())}) -> {best.run_dir}")
    log.info(f"sweep -> {folder}: trials.csv, history.png, importances.png")
    return result
