"""The training loop: ``fit(cfg)`` checks a run, then trains its stages; ``run_stage`` is the
epoch loop, ``train_one_epoch`` the steps, ``evaluate_run`` the per-epoch evaluation.

Read it top to bottom: there is one hook (:class:`Hook`: sweeps' pruning and
``convzoo.train``'s callbacks) and no trainer class. What a stage is built from
(model, optimizer, schedule, scaler, EMA) lives in ``training/setup.py`` and is shared with
``convzoo bench``. Exact resume works because everything random in epoch ``e`` is seeded from
``(seed, e)`` (``data/sampler.py``: the table of random streams) and all other state is in ``last.pt``, written atomically.

Every file of a run directory is written by ``training/rundir.py``: config.yaml when a stage
starts, and after each epoch the metrics row, weights, best.pt, (at a stage's end) the summary,
then last.pt, in the order that survives a kill at any point. ``fit`` owns the directory
(``runlock.RunLock``) from start to exit.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from convzoo import config as C
from convzoo import runconfig, trackers
from convzoo import saved as ckpt_io
from convzoo.data.loading.pipeline import Loader, build_pipeline
from convzoo.data.sampler import torch_seed
from convzoo.data.sources import inmemory
from convzoo.data.transforms.augment import mixes
from convzoo.errors import ConvzooError
from convzoo.evaluate import evaluate
from convzoo.log import format_seconds, log
from convzoo.predictor import Predictor
from convzoo.runtime import Runtime, autocast, configure_backends, resolve_runtime
from convzoo.training import preempt, rundir
from convzoo.training.distributed import all_ranks, broadcast_buffers, check_global_batch, no_sync
from convzoo.training.divergence import Diverged, DivergenceCheck, check_losses
from convzoo.training.logging import Eta, MetricsWriter, Progress
from convzoo.training.results import (
    Event,
    Hook,
    TrainResult,
    callback_hook,
    check_same_model,
    is_model_object,
    model_override,
)
from convzoo.training.runlock import RunLock
from convzoo.training.schedule import monitor_mode, set_lr
from convzoo.training.setup import (
    Run,
    build_run,
    check_checkpoint_fits,
    checkpoint_state,
    restore,
)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- steps

# after_step(step, loss_sum, correct, mixed, count): this rank's running sums after a step
# (1-based; mixed: images whose targets were mixed)
AfterStep = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, int], None]


def train_one_epoch(run: Run, loader: Loader, lrs: list[float],
                    progress: Progress | None = None, *, epoch: int | None = None,
                    start: int = 0, sums: tuple[float, int, int, int] | None = None,
                    after_step: AfterStep | None = None) -> dict[str, float]:
    """One pass over ``loader``, step ``i`` at base lr ``lrs[i]``. Loss and accuracy sums stay on
    the device (no per-step sync). Under fp16 the loss is scaled (``run.scaler``): steps whose
    gradients overflow are skipped and the scale lowered; in bf16/fp32 the scaler is a no-op.

    With ``train.accum_steps = A`` each step's batch runs as A equal micro-batches whose
    gradients add up (each loss divided by A, so the step's gradient is that of the whole
    batch); under DDP only the last one all-reduces. ``start``/``sums``: the epoch continues
    from its step ``start`` (the loader set to it) with this rank's running (loss sum, correct,
    mixed, count) so far (a mid-epoch checkpoint). ``after_step(step, *those sums)`` runs
    after each step (1-based; ``training/preempt.py``: checkpoints and stop requests).

    A non-finite loss raises ``divergence.Diverged`` (epoch, step, lr) at the next progress read or
    at the epoch end, before anything of the epoch is saved."""
    model, optimizer, scaler, rt = run.step_model, run.optimizer, run.scaler, run.rt
    grad_clip = run.cfg.optim.grad_clip
    accum = run.cfg.train.accum_steps
    watch = DivergenceCheck(lrs, rt.device, epoch=epoch, early=rt.world_size == 1)
    model.train()
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    mixed = torch.zeros((), device=rt.device, dtype=torch.int64)  # images with mixed targets
    count = 0
    if sums is not None:
        loss_sum += sums[0]
        correct += sums[1]
        mixed += sums[2]
        count = sums[3]
    for step, (images, labels) in enumerate(loader, start=start):
        set_lr(optimizer, lrs[step])
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=rt.device)
        for i, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum))):
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with no_sync(model, skip=i < accum - 1):
                with autocast(rt.device, rt.amp_dtype):
                    logits = model(x)
                    loss = run.loss_fn(logits, y)
                scaler.scale(loss / accum if accum > 1 else loss).backward()
            step_loss += loss.detach().float()
            loss_sum += loss.detach().double() * y.shape[0]
            # mixup/cutmix: y is (B, K) class probabilities; top-1 counts the dominant label
            correct += (logits.detach().argmax(dim=1) == (y if y.ndim == 1 else y.argmax(1))).sum()
            if y.ndim > 1:
                mixed += (y.amax(1) < 1).sum()
            count += y.shape[0]
        if grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
        watch.update(step + 1, step_loss)
        if progress is not None:
            progress.update(step + 1, labels.shape[0],
                            lambda s=loss_sum, n=count: watch.running(s.item() / n))
        if after_step is not None:
            after_step(step + 1, loss_sum, correct, mixed, count)
    totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(count), device=rt.device,
                                                                   dtype=torch.float64),
                          mixed.double()])
    if rt.world_size > 1:  # figures over all ranks' images, not rank 0's share
        torch.distributed.all_reduce(totals)
    loss_total, correct_total, n, mixed_total = totals.tolist()
    watch.finish(loss_total / n, run.model.parameters())
    return {"loss": loss_total / n, "top1": 100.0 * correct_total / n, "count": int(n),
            "mixed": mixed_total / n}


def evaluate_run(run: Run) -> dict[str, Any]:
    """This epoch's eval figures: the trained weights, and the EMA weights when the run keeps
    an EMA (those are the weights best.pt and the summary go by)."""
    rt = run.rt
    if rt.world_size > 1:  # one model on every rank: rank 0's, the one its checkpoint holds
        broadcast_buffers(run.model)
        if run.ema is not None:
            broadcast_buffers(run.ema.module)
    t0 = time.perf_counter()  # evaluate() ends with .item(): the device is synced
    # each rank its shard; every rank gets the figures
    raw = evaluate(Predictor(run.eval_model, rt, views=run.views), run.data.eval,
                   world_size=rt.world_size)
    row = {"eval_loss": raw["loss"], "eval_top1": raw["top1"], "eval_top5": raw["top5"],
           "eval_split": run.data.eval_split}
    if run.ema is not None:
        ema = evaluate(Predictor(run.ema.module, rt, views=run.views), run.data.eval,
                       world_size=rt.world_size)
        row.update({"ema_eval_loss": ema["loss"], "ema_eval_top1": ema["top1"],
                    "ema_eval_top5": ema["top5"]})
    row["eval_seconds"] = time.perf_counter() - t0
    return row


def judged(run: Run, row: dict[str, Any], metric: str = "val_top1") -> float:
    """``metric`` (``val_top1``, ``val_top5``, ``val_loss``: on the eval split, whichever it
    is) of the weights the run is judged by (the EMA when it keeps one), from an evaluated
    epoch's row."""
    name = metric.split("_", 1)[1]
    return row[f"ema_eval_{name}"] if run.ema is not None else row[f"eval_{name}"]


def improves(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (None: nothing yet); NaN never does."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if monitor_mode(metric, "train.best_metric") == "min" else value > best


def compile_warmup(run: Run) -> float:
    """Make torch.compile compile before the timed epochs; returns the seconds it took.

    Runs one forward+backward on a training batch for each model state the run will see
    (``set_epoch`` of the first and the last epoch: the fast family freezes a bias in between,
    which recompiles) and one evaluation of the first eval batch (all TTA views), then restores
    every weight and buffer and drops the gradients, so training is unchanged.
    """
    model, rt = run.model, run.rt
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    x, y = next(iter(run.data.train))
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_epoch = getattr(model, "set_epoch", None)
    run.step_model.train()
    for e in sorted({1, run.cfg.train.epochs}) if set_epoch is not None else [0]:
        if set_epoch is not None:
            set_epoch(e)
        with autocast(rt.device, rt.amp_dtype):
            loss = run.loss_fn(run.step_model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    evaluate(Predictor(run.eval_model, rt, views=run.views), [next(iter(run.data.eval))])
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    seconds = time.perf_counter() - t0
    model.load_state_dict(saved)
    return seconds


# ----------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """One stage of a run's plan: its index, full config and the epoch it starts from."""

    index: int
    cfg: C.Config
    start: int  # epoch it continues from (the previous stage's end, or where it began)

    @property
    def end(self) -> int:
        return self.cfg.train.epochs


def stage_plan(cfg: C.Config) -> list[C.Config]:
    """The config of each stage: the main one, then one per ``stages`` entry (seed A's lr drop,
    or a ``--resume`` with overrides), each the previous one with the entry's overrides."""
    return C.stage_configs(cfg)


def pending_stages(cfg: C.Config, ckpt: dict[str, Any] | None) -> list[Stage]:
    """The stages still to train after checkpoint ``ckpt`` (all of them without one).

    Stage ``i`` ends at its ``epochs``, or earlier where the next stage began (a ``--resume``
    with overrides starts a stage where the run stood), or where early stopping ended it.
    """
    plan = stage_plan(cfg)
    done = ckpt["epoch"] if ckpt is not None else 0
    stopped = ckpt.get("stage", 0) if ckpt is not None and ckpt.get("stopped") else -1
    began = [s.from_epoch for s in cfg.stages] + [0]  # where stage i + 1 began (0: not yet)
    todo: list[Stage] = []
    for i, stage_cfg in enumerate(plan):
        end = min(stage_cfg.train.epochs, began[i]) if began[i] else stage_cfg.train.epochs
        if i > stopped and end > done:
            start = done if not todo else (began[i - 1] or plan[i - 1].train.epochs)
            todo.append(Stage(i, stage_cfg, start))
    return todo


def mark_started(cfg: C.Config, stage: Stage, epoch: int) -> C.Config:
    """``cfg`` recording that ``stage`` started now, from ``epoch`` (kept if already set)."""
    now = datetime.now().isoformat(timespec="seconds")
    if stage.index == 0:
        return C.replace(cfg, started=now) if epoch == 0 else cfg
    stages = list(cfg.stages)
    entry = stages[stage.index - 1]
    if not entry.started:
        stages[stage.index - 1] = C.replace(entry, started=now, from_epoch=epoch)
    return C.replace(cfg, stages=stages)


# ----------------------------------------------------------------------------- fit


def new_run_dir(cfg: C.Config) -> RunLock:
    """A new run directory, created atomically (never an earlier run's) and owned."""
    model = cfg.model.name.replace(":", "-")  # timm:<name> -> a plain folder name
    name = cfg.train.name or (
        f"{model}-{Path(cfg.data.source).name or cfg.data.source}-"
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    return rundir.create(Path(cfg.train.out), name)


def prepare_stage(stage: Stage, rt: Runtime, ckpt: dict[str, Any] | None) -> Run:
    """Data, model, optimizer ... of ``stage``, with ``ckpt`` loaded: everything a stage needs,
    checked before anything is written."""
    check_global_batch(stage.cfg.train, rt.world_size)
    data = build_pipeline(stage.cfg, rt.device, rank=rt.rank, world_size=rt.world_size,
                          preprocess_state=ckpt["preprocess"] if ckpt is not None else None)
    if ckpt is not None:
        check_checkpoint_fits(stage.cfg, data, ckpt)  # before building: the clearer error
    run = build_run(stage.cfg, rt, data, init_from_data=ckpt is None)
    run.stage = stage.index
    if ckpt is not None:
        restore(run, ckpt)
        run.position = preempt.position_from(ckpt, rt.rank, rt.world_size, len(data.train))
    return run


def check(cfg: C.Config, resume: Path | None = None,
          ckpt: dict[str, Any] | None = None) -> tuple[Runtime, list[Stage], Run | None]:
    """Build the first stage left to train (data, model, optimizer; ``ckpt`` loaded into it):
    the validation ``fit`` does before it writes anything, and all that ``--dry-run`` does.
    Returns the runtime, the stages left and the built run (None: nothing left to train)."""
    rt = resolve_runtime(cfg.train)  # under torchrun this joins the process group
    trackers.check_installed(cfg.train.loggers)  # before minutes of data preparation
    configure_backends(cfg.train, rt.device)
    if ckpt is None and resume is not None and (Path(resume) / "last.pt").exists():
        ckpt = ckpt_io.load_checkpoint(resume, "last")
    todo = pending_stages(cfg, ckpt)
    return rt, todo, prepare_stage(todo[0], rt, ckpt) if todo else None


def fit(cfg: C.Config, resume: Path | None = None, *,
        ckpt: dict[str, Any] | None = None, claim: Path | None = None,
        hook: Hook | None = None) -> Path:
    """Train according to ``cfg`` (all stages) and return the run directory.

    With ``resume``, continue the run in that directory from ``last.pt`` (``ckpt``, if the
    caller has loaded it), or from scratch with its config when it has no checkpoint yet. A run
    with nothing left to train is not trained again; end-of-run files it misses are rebuilt.
    Rank 0 owns the run directory (``runlock.RunLock``) for the whole call: a resumed run's lock
    is taken before anything is read, a new run's directory is created only once everything
    has been validated, so bad input leaves no directory behind. ``claim``: start the new run
    in exactly this directory (``--resume auto``), not in a fresh ``NAME-2``. ``hook``: see
    :class:`Hook` (sweeps' pruning, ``convzoo.train``'s callbacks).
    """
    rt = resolve_runtime(cfg.train)  # under torchrun this joins the process group
    with contextlib.ExitStack() as owner:
        lock = None
        if resume is not None and rt.is_main:
            lock = owner.enter_context(RunLock.acquire(Path(resume)))
        if ckpt is None and resume is not None and (Path(resume) / "last.pt").exists():
            ckpt = ckpt_io.load_checkpoint(resume, "last")
        rt, todo, run = check(cfg, resume, ckpt)
        if run is None:  # a finished run: rebuild what its end must have left, if missing
            if rt.is_main and ckpt is not None:
                rundir.complete(Path(resume), ckpt, str(rt.device))  # type: ignore[arg-type]
            return Path(resume)  # type: ignore[arg-type]
        if resume is None and rt.is_main:
            lock = owner.enter_context(rundir.claim(claim) if claim is not None
                                       else new_run_dir(cfg))
        run_dir = lock.run_dir if lock is not None else None
        if rt.world_size > 1:  # every rank works in rank 0's run directory; only rank 0 writes
            shared = [str(run_dir) if rt.is_main else None]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_dir = Path(shared[0])  # type: ignore[arg-type]
        assert run_dir is not None
        train_stages(cfg, run_dir, rt, todo, run, fresh=resume is None, lock=lock,
                     hook=hook)
        return run_dir


def train(config_or_recipe: str | Path | C.Config | dict[str, Any] | None = None, *,
          resume: str | Path | None = None, classes: Sequence[str] | None = None,
          callbacks: Sequence[Any] = (), **overrides: Any) -> TrainResult:
    """Train, as ``convzoo train`` does: ``convzoo.train``, the Python API's entry (its config
    built by ``runconfig``, as the command line's is). Returns a ``TrainResult`` (run
    directory, summary, per-epoch history; it stands for the run directory as a path).

    config_or_recipe: a shipped recipe name (``"quickstart"``), a YAML file, a config dict or
        a ``Config`` (default: the defaults).
    overrides: the CLI's shortcuts (``model``, ``data``, ``epochs``, ``batch_size``, ``lr``,
        ``out``, ``name``, ``device``, ``seed``), sections (``optim={"momentum": 0.8}``) and
        dotted keys (``**{"model.init": "runs/a"}``), checked like ``--set``. ``model`` may
        also be a module (``nn.Module``, trained in place) or a factory
        ``callable(num_classes) -> nn.Module``: a registered factory runs under its name,
        anything else as ``custom:<module>.<class>`` (docs/models.md: your own model).
    callbacks: objects with any of ``on_step_end(info)``, ``on_epoch_end(info)``,
        ``on_eval_end(info)`` (info: ``results.Event``: epoch, step, metrics, run_dir); one
        returning True ends the run at that epoch's end, as a finished run.
    resume: continue this run directory instead (overrides then start a new stage).
    data: besides a source name or path, data held in Python
        (`convzoo.data.sources.inmemory`): ``(images, labels)`` uint8 arrays or tensors
        ``(N, H, W[, C])``, a ``torch.utils.data.Dataset`` of ``(image, label)``, or a dict of
        them by split; recorded as ``data.source: python:...``. A resume of such a run (in a
        new process) needs the data passed again.
    classes: the class names of data held in Python (default: the Dataset's ``classes``
        attribute, else "0", "1", ...).
    """
    if overrides.get("data") is not None and inmemory.is_python_source(overrides["data"]):
        overrides["data"] = inmemory.register(overrides["data"], classes)
        if resume is not None and (Path(resume) / "config.yaml").is_file() and \
                C.load_config(Path(resume) / "config.yaml").data.source == overrides["data"]:
            del overrides["data"]  # the run's own data, passed again: not a new stage
    elif classes is not None:
        raise ConvzooError("classes= names the classes of data passed from Python (arrays or a "
                           "Dataset); other sources carry their own")
    hook = callback_hook(callbacks)
    model = overrides.pop("model") if is_model_object(overrides.get("model")) else None
    nested = runconfig.overrides_from_keywords(overrides)
    if resume is not None and config_or_recipe is not None:
        raise ConvzooError("--resume continues a run with its own config; drop the recipe")
    with (model_override(model, resume is not None) if model is not None
          else contextlib.nullcontext()) as name:
        if resume is not None:
            cfg, ckpt = runconfig.resume_run_config(Path(resume), nested)
            if name is not None:
                check_same_model(name, cfg.model.name, model)
            return TrainResult.read(fit(cfg, Path(resume), ckpt=ckpt, hook=hook))
        if name is not None:
            nested = C.merge(nested, {"model": {"name": name}})
        return TrainResult.read(fit(runconfig.train_config(config_or_recipe, nested), hook=hook))


def train_stages(cfg: C.Config, run_dir: Path, rt: Runtime, todo: list[Stage], run: Run, *,
                 fresh: bool, lock: RunLock | None = None,
                 hook: Hook | None = None) -> None:
    """Train the stages ``todo`` in ``run_dir``, the first one already built (``run``).
    ``lock``: rank 0's ownership of the directory (a fresh run that fails is discarded)."""
    writer: MetricsWriter | None = None
    done_steps = run.position.step if run.position is not None else 0
    eta = Eta(sum((s.end - max(s.start, run.state.epoch)) for s in todo) * len(run.data.train)
              - done_steps,
              sum(evals_between(s.cfg.train, max(s.start, run.state.epoch)) for s in todo))
    ckpt_out: dict[str, Any] = {}
    status = "failed"  # how the loggers record the end of this process's part of the run
    try:
        with preempt.StopSignals() as signals:  # SIGTERM/SIGUSR1: checkpoint at a step, exit 75
            control = preempt.StepControl(signals, rt.world_size)
            for i, stage in enumerate(todo):
                if i > 0:  # the next stage of a recipe, from the previous stage's last state
                    if control.stop:  # asked to stop at the previous stage's end
                        raise preempt.Preempted(control.stop, run_dir, run.state.epoch, 0, 0)
                    run.data.close()
                    run = prepare_stage(stage, rt, ckpt_out)
                cfg = mark_started(cfg, stage, run.state.epoch)
                if rt.is_main:
                    rundir.write_config(run_dir, cfg)  # the whole plan and history so far
                    if run.init_report is not None:  # what model.init loaded, key by key
                        rundir.write_init_report(run_dir, run.init_report.to_dict())
                    if writer is None:  # rank 0 logs, once the directory holds its config; a
                        # logger that cannot start fails here, before training
                        writer = MetricsWriter(run_dir, cfg, resume_epoch=run.state.epoch,
                                               resume_step=None if fresh else
                                               run.state.steps + done_steps)
                ckpt_out = run_stage(run, run_dir, writer, eta, control, hook)
                if run.halted:  # the hook ended the run: no later stage
                    break
        status = "finished"
    except BaseException as e:
        if isinstance(e, (preempt.Preempted, KeyboardInterrupt, SystemExit)):
            status = "killed"
        # A fresh run that failed before its first checkpoint (bad input found late, divergence
        # in epoch 1, a full disk, an internal error): remove what it wrote, and nothing else.
        if fresh and lock is not None and not (run_dir / "last.pt").exists():
            run.data.close()
            if writer is not None:  # its loggers write into the directory: close them first
                writer.close(status)
                writer = None
            removed = rundir.discard(lock)
            log.debug(f"{run_dir}: removed {', '.join(removed) or 'nothing'} of the failed run")
        raise
    finally:
        run.data.close()  # the streaming workers stop now, not whenever they are collected
        if writer is not None:
            writer.close(status)


def evals_between(cfg: C.TrainConfig, start: int) -> int:
    """Evaluations from epoch ``start`` to the end: every ``eval_every``-th epoch and the last."""
    marks = set(range(cfg.eval_every, cfg.epochs + 1, cfg.eval_every)) | {cfg.epochs}
    return sum(1 for e in marks if e > start)


def step_logger(writer: MetricsWriter | None, epoch: int, before: int, lrs: list[float],
                world_size: int) -> Callable[[int, float, float], None] | None:
    """``Progress``'s ``on_log`` for one epoch: its step ``k`` (1-based) is the run's optimizer
    step ``before + k``; images/s over all processes (each counts its own share)."""
    if writer is None:
        return None

    def on_log(step: int, loss: float, images_per_second: float) -> None:
        writer.step(before + step, {"epoch": epoch, "loss": loss, "lr": lrs[step - 1],
                                    "images_per_second": images_per_second * world_size})
    return on_log


def run_stage(run: Run, run_dir: Path, writer: MetricsWriter | None, eta: Eta,
              control: preempt.StepControl | None = None,
              hook: Hook | None = None) -> dict[str, Any]:
    """Train ``run`` from its state's epoch (and step, ``run.position``) to its config's last
    one (or an early stop); returns the last epoch's checkpoint dict. ``control`` decides after
    each step, the same on every rank, whether to write a mid-epoch checkpoint or to stop
    (``training/preempt.py``): a stop writes a checkpoint at that step and raises
    ``preempt.Preempted``. ``hook`` (:class:`Hook`) True ends the run at that epoch
    (``halted``)."""
    cfg, rt, s = run.cfg, run.rt, run.state
    if control is None:
        control = preempt.StepControl(preempt.StopSignals(), rt.world_size)
    control.configure(cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_minutes)
    if run.position is not None:
        log.info(f"continuing {run_dir} from the checkpoint in epoch {run.position.epoch} after "
                 f"step {run.position.step}/{len(run.data.train)}")
    elif s.epoch:
        log.info(f"continuing {run_dir} from the epoch-{s.epoch} checkpoint")
    if cfg.train.compile:  # compile now, outside the timed epochs, and report it separately
        s.compile_seconds = compile_warmup(run)
        log.info(f"torch.compile warm-up: {s.compile_seconds:.1f}s (not in train_seconds)")
    log.info(f"{cfg.model.name}: {run.params:,} parameters; data {run.data.name} "
             f"({run.data.kind}) train {run.data.train_count:,} / {run.data.eval_split} "
             f"{run.data.eval_count:,}; device {rt.device}, precision {rt.precision}; "
             f"weights judged: {run.weights}")
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    ckpt: dict[str, Any] = {}
    for epoch in range(s.epoch + 1, cfg.train.epochs + 1):
        # Everything random in this epoch depends only on (seed, epoch): exact resume. Inside
        # an epoch, a checkpoint kept each rank's RNG state and running sums.
        pos, run.position = run.position, None
        seed = torch_seed(cfg.train.seed, epoch, rt.rank)
        start, sums, before = 0, None, 0.0
        if pos is not None:
            pos.apply_rng(seed)
            start, before = pos.step, pos.seconds
            sums = (pos.loss_sum, pos.correct, pos.mixed, pos.count)
        else:
            torch.manual_seed(seed)
        run.data.train.set_epoch(epoch, start=start)
        if hasattr(run.model, "set_epoch"):  # model-side schedule (fast family: whitening bias)
            run.model.set_epoch(epoch)
        lrs = run.schedule.epoch_lrs(epoch)
        progress = Progress(len(run.data.train), epoch, cfg.train.epochs, cfg.train.log_every,
                            rt.is_main, eta=eta, first_step=start,
                            on_log=step_logger(writer, epoch, s.steps, lrs, rt.world_size))
        t0 = time.perf_counter()
        mid = MidEpoch(run, run_dir, control, epoch, len(lrs), progress, t0, before,
                       hook if hook is not None and hook.steps else None, s.steps, lrs)
        stats = train_one_epoch(run, run.data.train, lrs, progress, epoch=epoch, start=start,
                                sums=sums, after_step=mid)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        seconds = before + time.perf_counter() - t0
        progress.close()
        eta.done(steps=len(lrs) - start, seconds=seconds - before)
        s.epoch, s.train_seconds, s.train_images = epoch, s.train_seconds + seconds, \
            s.train_images + stats["count"]
        s.steps += len(lrs)
        # lr: the mean over the epoch's steps (what it trained at); its first and last step too;
        # step: optimizer steps so far in the run (the loggers' x-axis)
        row: dict[str, Any] = {"epoch": epoch, "step": s.steps, "lr": sum(lrs) / len(lrs),
                               "lr_start": lrs[0], "lr_end": lrs[-1],
                               "train_loss": stats["loss"], "train_top1": stats["top1"]}
        if mixes(cfg.augment):  # train_top1 is then against the dominant label of mixed images
            row["train_mixed"] = stats["mixed"]
        halt = hook is not None and rank0_says(mid.halt, rt.world_size)  # a step's True
        if epoch == cfg.train.epochs or epoch % cfg.train.eval_every == 0 or halt:
            evaluate_epoch(run, row, eta)
        row.update({"seconds": seconds, "images_per_second": stats["count"] / seconds,
                    "peak_memory_mb": peak_memory_mb(rt.device)})
        if hook is not None:
            halt = "eval_top1" in row and tell(hook, "eval_end", row, run_dir)
            halt = rank0_says(tell(hook, "epoch_end", row, run_dir) | halt | mid.halt,
                              rt.world_size)
            if halt and "eval_top1" not in row:  # the run ends here: with this epoch's figures
                evaluate_epoch(run, row, eta)
                tell(hook, "eval_end", row, run_dir)
        s.stopped = run.stopper is not None and "eval_top1" in row and run.stopper.update(row)
        improved = "eval_top1" in row and improves(
            cfg.train.best_metric, judged(run, row, cfg.train.best_metric), s.best_value)
        if improved:
            s.best_value, s.best_epoch = judged(run, row, cfg.train.best_metric), epoch
        if "eval_top1" in row:
            s.best_top1 = max(s.best_top1, judged(run, row))
        log.info(epoch_line(run, row, eta))
        if halt:
            run.halted = s.stopped = True
        check_losses(row)  # finite weights whose eval outputs overflow: stop here too
        asked = mid.at_end | control.epoch_end()  # the same on every rank
        ckpt = checkpoint_state(run, row)
        end = s.stopped or epoch == cfg.train.epochs
        save = end or epoch % cfg.train.save_every == 0 or asked.save or bool(asked.stop)
        if rt.is_main:  # metrics row, weights, best.pt, summary (stage end), then last.pt
            figures = rundir.summary(ckpt, run.params, peak_memory_mb(rt.device),
                                     str(rt.device), rt.precision) if end else None
            if figures is not None:  # the split sizes (the model card says them)
                figures.update(train_count=run.data.train_count, eval_count=run.data.eval_count)
            rundir.save_epoch(run_dir, ckpt, writer, best=improved, summary=figures,
                              checkpoint=save, keep_last=cfg.train.keep_last)
            if figures is not None and writer is not None:
                writer.stage_end(s.steps, figures, run_dir)
        if save:
            control.saved()
        if asked.stop and not end:
            agree(rt.world_size)  # nobody exits before rank 0 has committed last.pt
            raise preempt.Preempted(asked.stop, run_dir, epoch, len(lrs), len(lrs))
        if run.halted:
            log.info(f"run ended at epoch {epoch} by its caller (a callback or a pruner)")
            break
        if s.stopped:
            log.info(f"early stopping at epoch {epoch}: no improvement for "
                     f"{cfg.train.early_stop_patience} epochs")
            break
    return ckpt


def evaluate_epoch(run: Run, row: dict[str, Any], eta: Eta) -> None:
    """The epoch's evaluation into its metrics `row`, then the plateau schedule and the ETA."""
    row.update(evaluate_run(run))
    eta.done(evals=1, eval_seconds=row["eval_seconds"])
    run.schedule.epoch_end(row)


def tell(hook: Hook, name: str, row: dict[str, Any], run_dir: Path) -> bool:
    """``hook`` told of event `name` of the epoch whose metrics are `row`; True: end the run."""
    return bool(hook.call(Event(name, int(row["epoch"]), int(row["step"]), dict(row), run_dir)))


@dataclass
class MidEpoch:
    """``train_one_epoch``'s after-step hook for one epoch: asks ``control`` after each step and
    writes a mid-epoch checkpoint (``save_position``) or stops there, as it decides. A
    request at the epoch's last step is left to the epoch end (``at_end``), which writes
    last.pt anyway."""

    run: Run
    run_dir: Path
    control: preempt.StepControl
    epoch: int
    steps: int
    progress: Progress
    t0: float  # perf_counter when this process started the epoch
    before: float  # training seconds of the epoch before that (a mid-epoch resume)
    hook: Hook | None = None  # told of every step (a hook with steps=True)
    steps_before: int = 0  # the run's optimizer steps before this epoch
    lrs: list[float] = field(default_factory=list)
    halt: bool = False  # the hook asked to end the run (at this epoch's end)
    at_end: preempt.Decision = field(default_factory=preempt.Decision)

    def __call__(self, step: int, loss_sum: torch.Tensor, correct: torch.Tensor,
                 mixed: torch.Tensor, count: int) -> None:
        if self.hook is not None:
            metrics = {"loss": loss_sum.item() / max(count, 1), "lr": self.lrs[step - 1]}
            self.halt |= bool(self.hook.call(Event("step_end", self.epoch,
                                                   self.steps_before + step, metrics,
                                                   self.run_dir)))
        decision = self.control.after_step((self.epoch - 1) * self.steps + step)
        if not (decision.save or decision.stop):
            return
        if step == self.steps:
            self.at_end = self.at_end | decision
            return
        save_position(self.run, self.run_dir, self.epoch, step, self.steps,
                      (loss_sum, correct, mixed, count),
                      self.before + time.perf_counter() - self.t0)
        self.control.saved()
        if decision.stop:
            self.progress.close()
            raise preempt.Preempted(decision.stop, self.run_dir, self.epoch, step, self.steps)


def rank0_says(flag: bool, world_size: int) -> bool:
    """Rank 0's `flag` on every rank (a hook's answer: all ranks end the run together)."""
    if world_size == 1:
        return flag
    box = [flag]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


def agree(world_size: int, error: str | None = None) -> None:
    """Wait until every rank gets here; rank 0's ``error`` (a failed write) is raised on all."""
    if world_size == 1:
        return
    box = [error]
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise ConvzooError(box[0])


def save_position(run: Run, run_dir: Path, epoch: int, step: int, steps: int,
                  sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int],
                  seconds: float) -> None:
    """A checkpoint after ``step`` of ``steps`` in ``epoch`` (every rank calls it at the same
    step): every rank's RNG state and running sums gathered, last.pt written by rank 0 alone
    (``rundir.save_step``), and no rank goes on before it is committed."""
    rt = run.rt
    ranks = all_ranks(preempt.rank_state(*sums), rt.world_size)
    if not preempt.finite(ranks):  # the same answer on every rank: all stop together
        raise Diverged(f"training diverged in epoch {epoch} before step {step}: the "
                              "loss is not finite; nothing of that epoch was saved; lower "
                              "optim.lr or set optim.grad_clip")
    error = None
    if rt.is_main:
        ckpt = checkpoint_state(run, {})
        ckpt["epoch"] = epoch - 1  # epochs done; the position is `step` steps into the next
        ckpt.update(preempt.position_fields(step, steps, ranks, seconds))
        try:
            rundir.save_step(run_dir, ckpt)
            log.info(f"checkpoint in epoch {epoch} after step {step}/{steps} -> "
                     f"{run_dir / 'last.pt'}")
        except ConvzooError as e:
            error = str(e)
    agree(rt.world_size, error)
    if error is not None:
        raise ConvzooError(error)


def epoch_line(run: Run, row: dict[str, Any], eta: Eta) -> str:
    """The log line of one epoch: lr (mean, and its range when it moved), train and eval
    figures (EMA too), speed and the time left in the run."""
    lr = f"lr {row['lr']:.4g}"
    if not math.isclose(row["lr_start"], row["lr_end"]):
        lr += f" ({row['lr_start']:.3g}->{row['lr_end']:.3g})"
    text = (f"epoch {row['epoch']}/{run.cfg.train.epochs} {lr} train loss "
            f"{row['train_loss']:.4f} top1 {row['train_top1']:.2f}%")
    if "train_mixed" in row:
        text += f" (dominant label, {100 * row['train_mixed']:.0f}% mixed)"
    if "eval_top1" in row:
        text += (f" | {row['eval_split']} loss {row['eval_loss']:.4f} top1 "
                 f"{row['eval_top1']:.2f}% top5 {row['eval_top5']:.2f}%")
        if "ema_eval_top1" in row:
            text += f" EMA top1 {row['ema_eval_top1']:.2f}%"
    text += f" | {row['seconds']:.1f}s {row['images_per_second']:.0f} img/s"
    left = eta.left()
    return text + (f" | run ETA {format_seconds(left)}" if left else "")


def describe(run: Run, todo: list[Stage]) -> str:
    """One paragraph for ``--dry-run``: what would be trained, on what, where."""
    d, rt = run.data, run.rt
    stages = ", ".join(f"stage {s.index + 1}: epochs {s.start}->{s.end} at lr {s.cfg.optim.lr:g}"
                       for s in todo)
    return (f"dry run: {run.cfg.model.name} ({run.params:,} parameters) on {d.name} ({d.kind}): "
            f"train {d.train_count:,} / {d.eval_split} {d.eval_count:,} images, "
            f"{len(d.train)} steps per epoch; device {rt.device}, precision {rt.precision}; "
            f"{stages}; nothing trained, nothing written")

