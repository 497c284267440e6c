"""What a training stage is built from, shared by ``fit`` and ``convzoo bench`` (as pycls's
``time_model`` reuses ``setup_model``): ``build_run`` (model, optimizer, schedule, scaler, EMA
from a config, the data and the runtime of ``convzoo.runtime``), ``restore`` (a checkpoint into
a freshly built run, validated first) and ``checkpoint_state`` (the run back into a dict).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.errors import ConvzooError
from convzoo.models import create_model
from convzoo.models.freeze import freeze, frozen_parameter_names
from convzoo.models.info import check_input_shape, count_params
from convzoo.models.registry import check_stored_kwargs, get_entry
from convzoo.models.weights import InitReport
from convzoo.predictor import tta_views_of
from convzoo.runtime import Runtime
from convzoo.saved import load_init
from convzoo.training.distributed import convert_sync_batchnorm, wrap_ddp
from convzoo.training.ema import ModelEMA
from convzoo.training.optim import build_optimizer, load_optimizer_state
from convzoo.training.schedule import EarlyStopping, Schedule, peak_lr

log = logging.getLogger("convzoo")

# ----------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """The counters a checkpoint carries beside the weights and optimizer."""

    epoch: int = 0  # epochs finished
    best_top1: float = -math.inf  # best eval top-1 of the weights best.pt keeps (EMA or raw)
    train_seconds: float = 0.0  # training epochs only
    train_images: int = 0
    init_seconds: float = 0.0  # data-dependent init (part of the timed work)
    compile_seconds: float = 0.0  # torch.compile warm-up (not timed work)
    stopped: bool = False  # early stopping ended the stage at `epoch`
    steps: int = 0  # optimizer steps of the finished epochs (the loggers' x-axis)
    # best.pt's epoch and its value of train.best_metric (None: no evaluated epoch yet)
    best_value: float | None = None
    best_epoch: int = 0


@dataclass
class Run:
    """One stage's model, optimizer, schedule, scaler, EMA and data (``build_run``)."""

    cfg: C.Config
    rt: Runtime
    data: Any  # pipeline.Pipeline, or bench's synthetic stand-in (classes, image_shape, train)
    model: nn.Module  # the plain module: checkpoints hold its state
    step_model: nn.Module  # what training steps call: DDP and/or torch.compile around `model`
    eval_model: nn.Module  # what evaluation calls (compiled when the run compiles)
    optimizer: Any
    schedule: Schedule
    scaler: torch.amp.GradScaler  # enabled for fp16 only: loss scaling against underflow
    ema: ModelEMA | None
    stopper: EarlyStopping | None
    loss_fn: nn.Module
    params: int  # trainable parameters
    views: Any = None  # test-time augmentation: images -> list of views, or None
    state: RunState = field(default_factory=RunState)
    stage: int = 0  # index of the stage in the run's plan (0 = the first)
    position: Any = None  # preempt.Position inside an epoch to continue from (None: its start)
    init_report: InitReport | None = None  # what model.init loaded (a fresh run with one)
    frozen: list[str] = field(default_factory=list)  # parameter names model.freeze froze
    halted: bool = False  # the caller's epoch_end ended the whole run (loop.EpochEnd)

    @property
    def weights(self) -> str:
        """Which weights the run evaluates for its figures and best.pt: 'ema' or 'raw'."""
        return "ema" if self.ema is not None else "raw"


def data_dependent_init(model: nn.Module, loader: Any, device: torch.device) -> float:
    """Call ``model.init_from_data(images)`` once, if the model has it; returns its seconds.

    ``images`` are the first ``model.data_init_images`` (0 = all) training images of this rank,
    preprocessed (float (N, C, H, W) on the device) but not augmented. The fast family uses it
    to set its patch-whitening filters. The time is part of the run's timed work.
    """
    init = getattr(model, "init_from_data", None)
    if init is None:
        return 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        init(loader.preprocess(loader.head(getattr(model, "data_init_images", 0))))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def check_model_outputs(model: nn.Module, shape: tuple[int, ...], num_classes: int,
                        name: str) -> None:
    """One image of the run's (C, H, W) `shape` through a project's `model` (eval mode, no
    gradient, on its device) must give (1, num_classes) logits; else one line saying what it
    gave. It also materialises lazy modules (``nn.LazyLinear``) before the optimizer is built."""
    param = next(model.parameters(), None)
    x = torch.zeros((1, *shape), device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise ConvzooError(f"model {name}: an input of shape {tuple(x.shape)} (the data's images) "
                           f"fails in its forward ({type(e).__name__}: {detail})") from None
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (1, num_classes):
        raise ConvzooError(f"model {name}: an input of shape {tuple(x.shape)} gives {got}, not "
                           f"logits (1, {num_classes}) for the data's {num_classes} classes")


def init_model(model: nn.Module, cfg: C.ModelConfig, classes: list[str]) -> InitReport | None:
    """Load ``model.init`` into a freshly built ``model`` (``load_init``: the head replaced
    when the classes differ) and log what was loaded; None when the run has no ``model.init``."""
    if not cfg.init:
        return None
    source = cfg.init
    if not source.startswith(("torchvision:", "timm:")):  # a path: the report says which one
        source = str(Path(source).expanduser().resolve())
    report = load_init(model, source, classes=classes, arch=cfg.name, head=cfg.init_head,
                       weights=cfg.init_weights)
    log.info(report.summary())
    report.took = dict(cfg.init_took)
    if report.took:  # runconfig.take_init_shape: the source's shape, unless the config set it
        log.info(f"model.init {cfg.init}: took " + ", ".join(
            f"{k}={_short(v)}" for k, v in report.took.items())
            + " from it (set them to choose otherwise); recorded in init.json")
    return report


def _short(value: Any) -> str:
    """A taken value for the log line: numbers to 4 digits."""
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_run(cfg: C.Config, rt: Runtime, data: Any, *, steps_per_epoch: int | None = None,
              init_from_data: bool = True) -> Run:
    """Model, optimizer, schedule, scaler, EMA, early stopping and loss for ``cfg`` on ``data``.

    ``steps_per_epoch`` defaults to ``len(data.train)``; the schedule and lookahead count in it.
    ``init_from_data``: a fresh start (False when a checkpoint will be loaded next): the model
    starts from ``model.init`` when set (``load_init``; ``run.init_report`` says what was
    loaded), else runs its data-dependent init. ``model.freeze`` is applied before the
    optimizer is built (it then holds only the trainable parameters), fresh or not, and
    ``optim.backbone_lr_scale`` gives the backbone its own lr (``optim.param_groups``).
    """
    spe = steps_per_epoch or len(data.train)
    if spe < 1:
        raise ConvzooError(f"the training split ({getattr(data, 'train_count', 0)} images on "
                           f"this rank) is smaller than one batch: lower train.batch_size "
                           f"(now {cfg.train.batch_size})")
    count = getattr(data, "train_count", 0)
    dropped = count - spe * (cfg.train.batch_size // max(rt.world_size, 1)) if count else 0
    if steps_per_epoch is None and dropped > 0.1 * count:
        # Batches are kept full (stable batch norm, one compiled shape); say what that costs
        # when it is a real share of a small split.
        per = cfg.train.batch_size // rt.world_size
        log.warning(f"note: the training split has {count:,} images on this rank; each epoch "
                    f"trains on {spe * per:,} of them ({spe} step{'s' * (spe > 1)} of {per}) and "
                    f"leaves {dropped} ({100 * dropped / count:.0f}%) out, other ones each "
                    "epoch; lower train.batch_size to use them all")
    # What a run keeps in its files, a file may pass back: refused here, before training
    check_stored_kwargs(cfg.model.name, dict(cfg.model.kwargs), "model.kwargs")
    # Say now, in one line, if the model cannot take the data's images: the zoo's on the meta
    # device before it is built (no arithmetic); a project's with one real image (its forward
    # may not run on meta, and it must also give the right logits)
    zoo = get_entry(cfg.model.name).zoo
    if zoo:
        check_input_shape(cfg.model.name, tuple(data.image_shape), len(data.classes),
                          **cfg.model.kwargs)
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, num_classes=len(data.classes),
                         in_chans=data.image_shape[0], **cfg.model.kwargs)
    if not zoo:
        check_model_outputs(model, tuple(data.image_shape), len(data.classes), cfg.model.name)
    init_report = init_model(model, cfg.model, list(data.classes)) if init_from_data else None
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_params(model)
    state = RunState()
    if init_from_data and init_report is None:  # trained weights need no data-dependent init
        state.init_seconds = data_dependent_init(model, data.train, rt.device)
    frozen = freeze(model, cfg.model.freeze)  # before the optimizer: it holds trainable ones
    if frozen:
        log.info(f"model.freeze={cfg.model.freeze}: {len(frozen)} parameter tensors frozen, "
                 f"{count_params(model):,} of {params:,} parameters train")
    optimizer = build_optimizer(model, cfg.optim, rt.device.type,
                                total_steps=cfg.train.epochs * spe)
    schedule = Schedule(cfg.schedule, peak_lr(cfg.optim, cfg.train.batch_size), cfg.train.epochs,
                        spe)
    # Loss scaling for fp16 only (small gradients underflow there); disabled it is a no-op.
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    ema = ModelEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    stopper = (EarlyStopping(cfg.train.early_stop_patience, cfg.schedule.monitor)
               if cfg.train.early_stop_patience > 0 else None)
    step_model: nn.Module = model
    if rt.world_size > 1:  # gradients all-reduced across ranks; checkpoints hold `model`
        if cfg.train.sync_bn:  # same parameters and buffers: the optimizer and EMA still fit
            model = convert_sync_batchnorm(model, rt.device)
        step_model = wrap_ddp(model, cfg.train, rt.device)
    eval_model: nn.Module = model  # each rank evaluates its shard; evaluate() gathers
    if cfg.train.compile:  # mode None: torch's default
        mode = cfg.train.compile_mode
        step_model, eval_model = torch.compile(step_model, mode=mode), torch.compile(model,
                                                                                     mode=mode)
    views = tta_views_of(cfg.augment)
    return Run(cfg, rt, data, model, step_model, eval_model, optimizer, schedule, scaler, ema,
               stopper, nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing), params,
               views, state, init_report=init_report, frozen=frozen)


def class_difference(ours: list[str], theirs: list[str], shown: int = 3) -> str:
    """How the class lists differ, in words: names only in one of them (a few), or the same
    names in another order (the first position that differs)."""
    if set(ours) == set(theirs):
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        return (f"the same {len(ours)} names in another order: class {i} is {ours[i]!r} here, "
                f"{theirs[i]!r} in the run")

    def few(names: list[str]) -> str:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return ", ".join(repr(n) for n in names[:shown]) + more

    parts = []
    if extra := [c for c in ours if c not in set(theirs)]:
        parts.append(f"only here: {few(extra)}")
    if missing := [c for c in theirs if c not in set(ours)]:
        parts.append(f"only in the run: {few(missing)}")
    return f"{len(ours)} vs {len(theirs)} classes; " + "; ".join(parts)


def check_checkpoint_fits(cfg: C.Config, data: Any, ckpt: dict[str, Any]) -> None:
    """A resume continues the same task with the same model: say so when it would not."""
    if ckpt["model_name"] != cfg.model.name or dict(ckpt["model_kwargs"]) != dict(
            cfg.model.kwargs):
        raise ConvzooError(
            f"model {cfg.model.name} {dict(cfg.model.kwargs) or ''}: the run's checkpoint is "
            f"{ckpt['model_name']} {dict(ckpt['model_kwargs']) or ''}; a resume keeps the model "
            "(start a new run from these weights with model.init)")
    if list(ckpt["classes"]) != list(data.classes):
        raise ConvzooError(
            f"data {cfg.data.source}: its classes differ from the run's "
            f"({class_difference(list(data.classes), list(ckpt['classes']))}); a resume "
            "continues the same task (to train on these classes from this run's weights, start "
            "a new run with model.init)")
    if ckpt["in_chans"] != data.image_shape[0]:
        raise ConvzooError(f"data {cfg.data.source}: {data.image_shape[0]}-channel images, the "
                           f"run's model takes {ckpt['in_chans']}; a resume keeps the model")


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Load checkpoint ``ckpt`` into a freshly built ``run`` (a resume or the next stage).

    The checkpoint is checked against the run first (model, classes, channels, optimizer), so
    a mismatch fails before anything is written. The new stage's settings win over the
    saved ones (optimizer hyperparameters, schedule; see ``Schedule.resume``); everything
    else continues exactly.
    """
    check_checkpoint_fits(run.cfg, run.data, ckpt)
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ConvzooError(f"the checkpoint's weights do not fit {run.cfg.model.name}: "
                           f"{str(e).strip().splitlines()[-1].strip()}") from None
    saved_optim = C.from_dict({"optim": ckpt["config"]["optim"]}).optim
    load_optimizer_state(run.optimizer, ckpt["optimizer"], run.model, saved_optim,
                         run.cfg.optim, saved_trainable(run, ckpt))
    run.schedule.resume(ckpt["schedule"], ckpt["epoch"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        if ckpt.get("ema") is not None:
            run.ema.load_state_dict(ckpt["ema"])
        else:  # EMA switched on in a new stage: start it from the trained weights
            run.ema.reset(run.model)
    if run.stopper is not None and ckpt.get("early_stop") is not None:
        run.stopper.load_state_dict(ckpt["early_stop"])
        if ckpt.get("stopped"):  # a new stage after an early stop: patience starts again
            run.stopper.bad_epochs = 0
    ckpt_io.set_rng_state(ckpt["rng"])
    run.state = RunState(ckpt["epoch"], ckpt["best_top1"], ckpt["train_seconds"],
                         ckpt["train_images"], ckpt["init_seconds"], ckpt["compile_seconds"])
    # Checkpoints before the loggers' step count: the steps of this stage's epoch length.
    run.state.steps = ckpt.get("steps", ckpt["epoch"] * len(run.data.train))
    best_metric = ckpt.get("best_metric", "val_top1")  # older checkpoints: best by top-1
    if best_metric == run.cfg.train.best_metric:  # a stage with another metric starts afresh
        value = ckpt.get("best_value", ckpt["best_top1"])
        run.state.best_value = value if value is not None and math.isfinite(value) else None
        run.state.best_epoch = ckpt.get("best_epoch", 0)


def saved_trainable(run: Run, ckpt: dict[str, Any]) -> set[str] | None:
    """Names of the parameters the checkpoint's optimizer held, when this stage freezes
    another part of the model than the checkpoint's did (a linear probe, then fine-tuning
    all); None when the stages freeze the same part."""
    saved = ckpt["config"]["model"].get("freeze", "none")  # older checkpoints: none
    if saved == run.cfg.model.freeze:
        return None
    now = {n for n, p in run.model.named_parameters() if p.requires_grad} | set(run.frozen)
    return now - set(frozen_parameter_names(run.model, saved))


def checkpoint_state(run: Run, row: dict[str, Any]) -> dict[str, Any]:
    """Everything ``restore`` (resume) and ``saved.load_model_for_eval`` (eval, predict,
    export) need, as a plain dict of tensors and primitives (loadable with
    ``weights_only=True``)."""
    cfg, data, s = run.cfg, run.data, run.state
    entry = get_entry(cfg.model.name)
    return {
        "format": ckpt_io.FORMAT,
        "version": ckpt_io.VERSION,
        "epoch": s.epoch,
        "config": C.to_dict(cfg),
        "model_name": cfg.model.name,
        "model_kwargs": dict(cfg.model.kwargs),
        # a project's model: the module that registered it (the hint when it is not imported)
        **({"model_module": entry.module} if not entry.zoo else {}),
        "num_classes": len(data.classes),
        "in_chans": data.image_shape[0],
        "classes": list(data.classes),
        "image_shape": list(data.image_shape),
        "geometry": data.geometry.state(),  # how images reach the model: eval/predict/export
        "eval_split": data.eval_split,
        "preprocess": data.preprocess.state(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),  # {} unless fp16
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "weights": run.weights,  # which weights best_top1 (and the summary) are of
        "early_stop": run.stopper.state_dict() if run.stopper is not None else None,
        "stage": run.stage,
        "stopped": s.stopped,
        "rng": ckpt_io.rng_state(),
        "best_top1": s.best_top1,
        "best_metric": cfg.train.best_metric,
        "best_value": s.best_value,
        "best_epoch": s.best_epoch,
        "steps": s.steps,
        "train_seconds": s.train_seconds,
        "train_images": s.train_images,
        "init_seconds": s.init_seconds,
        "compile_seconds": s.compile_seconds,
        "metrics": row,
    }
