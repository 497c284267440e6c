"""The training loop: ``fit(cfg)`` wires data, model, optimiser and schedule, then runs
``train_one_epoch`` and ``evaluate`` once per epoch, checkpointing after each.

Read it top to bottom: there are no callbacks and no trainer class. Exact resume works because
everything random in epoch ``e`` is seeded from ``(seed, e)`` (see ``epoch_seed``) and all other
state (weights, optimiser, schedule, EMA, RNG) is in ``last.pt``, written atomically after every
epoch.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convzoo import config as C
from convzoo.data.augment import tta_views
from convzoo.data.pipeline import Loader, build_pipeline
from convzoo.data.preprocess import Preprocessor
from convzoo.data.sampler import torch_seed
from convzoo.errors import ConvzooError
from convzoo.evaluate import autocast, evaluate
from convzoo.models import create_model
from convzoo.train import checkpoint as ckpt_io
from convzoo.train.ema import ModelEMA
from convzoo.train.logging import MetricsWriter, Progress, log
from convzoo.train.optim import EarlyStopping, apply_hparams, build_optimizer, build_schedule


@dataclass
class Runtime:
    """What the config resolves to on this machine."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for fp32
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_runtime(cfg: C.TrainConfig) -> Runtime:
    """Device, precision and memory format from the config (``auto`` picks per device)."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvzooError(f"train.device: unknown device '{cfg.device}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvzooError(f"train.device={cfg.device} but CUDA is not available on this machine")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ConvzooError(f"train.precision: expected auto|fp32|bf16|fp16, got '{precision}'")
    # channels_last is faster for convolutions on CUDA and on CPU (oneDNN): ~16% for resnet20.
    channels_last = {"auto": True, "true": True, "false": False}.get(str(cfg.channels_last).lower())
    if channels_last is None:
        raise ConvzooError(
            f"train.channels_last: expected auto|true|false, got '{cfg.channels_last}'"
        )
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:  # launched by torchrun: one process per device
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, dtypes[precision], channels_last, rank, world_size)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- steps


def train_one_epoch(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    loss_fn: nn.Module,
    rt: Runtime,
    *,
    grad_clip: float = 0.0,
    ema: ModelEMA | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """One pass over `loader`. Loss and accuracy sums stay on the device (no per-step sync)."""
    model.train()
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    count = 0
    for step, (x, y) in enumerate(loader, start=1):
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(rt.device, rt.amp_dtype):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update(model)
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (logits.detach().argmax(dim=1) == y).sum()
        count += y.shape[0]
        if progress is not None:
            progress.update(step, y.shape[0], lambda s=loss_sum, n=count: s.item() / n)
    if count == 0:
        raise ConvzooError("the training split is smaller than one batch: lower train.batch_size")
    totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(count), device=rt.device,
                                                                   dtype=torch.float64)])
    if rt.world_size > 1:  # figures over all ranks' images, not rank 0's share
        torch.distributed.all_reduce(totals)
    loss_total, correct_total, n = totals.tolist()
    return {"loss": loss_total / n, "top1": 100.0 * correct_total / n, "count": int(n)}


def data_dependent_init(model: nn.Module, loader: Loader, device: torch.device) -> float:
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


def compile_warmup(
    model: nn.Module,
    step_model: nn.Module,
    eval_model: nn.Module,
    train_loader: Loader,
    eval_loader: Loader,
    loss_fn: nn.Module,
    rt: Runtime,
    views: Any,
    epochs: int,
) -> float:
    """Make torch.compile compile before the timed epochs; returns the seconds it took.

    Runs one forward+backward on a training batch for each model state the run will see
    (``set_epoch`` of the first and the last epoch: the fast family freezes a bias in between,
    which recompiles) and one evaluation of the first eval batch (all TTA views), then restores
    every weight and buffer and drops the gradients, so training is unchanged.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    x, y = next(iter(train_loader))
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_epoch = getattr(model, "set_epoch", None)
    step_model.train()
    for e in sorted({1, epochs}) if set_epoch is not None else [0]:
        if set_epoch is not None:
            set_epoch(e)
        with autocast(rt.device, rt.amp_dtype):
            loss = loss_fn(step_model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    evaluate(eval_model, [next(iter(eval_loader))], device=rt.device, amp_dtype=rt.amp_dtype,
             channels_last=rt.channels_last, views=views)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    seconds = time.perf_counter() - t0
    model.load_state_dict(saved)
    return seconds


# ----------------------------------------------------------------------------- run directory


def new_run_dir(cfg: C.Config) -> Path:
    name = cfg.train.name or (
        f"{cfg.model.name}-{Path(cfg.data.source).name or cfg.data.source}-"
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    parent = Path(cfg.train.out).expanduser()
    run_dir, n = parent / name, 1
    while run_dir.exists() and any(run_dir.iterdir()):  # never overwrite an earlier run
        n += 1
        run_dir = parent / f"{name}-{n}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvzooError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    return run_dir


def stage_plan(cfg: C.Config) -> list[C.Config]:
    """The config of each stage: the main one, then one per ``stages`` entry (seed A's lr drop)."""
    plan = [cfg]
    for i, stage in enumerate(cfg.stages):
        prev = plan[-1]
        if stage.epochs <= prev.train.epochs:
            raise ConvzooError(
                f"stages[{i}].epochs={stage.epochs} must exceed the previous "
                f"stage's {prev.train.epochs}"
            )
        overrides: dict[str, Any] = {}
        for key, value in stage.set.items():
            overrides = C.merge(overrides, C.dotted_to_nested(key, value))
        overrides = C.merge(overrides, {"train": {"epochs": stage.epochs}})
        plan.append(C.apply_overrides(prev, overrides))
    return plan


# ----------------------------------------------------------------------------- fit


def fit(cfg: C.Config, resume: Path | None = None) -> Path:
    """Train according to `cfg` (all stages) and return the run directory.

    With `resume`, continue the run in that directory: from ``last.pt`` if there is one (exact
    continuation), else from scratch with the same config (a run killed before its first
    checkpoint).
    """
    rt = resolve_runtime(cfg.train)  # under torchrun this joins the process group
    run_dir = Path(resume) if resume is not None else None
    if rt.is_main:
        if run_dir is None:
            run_dir = new_run_dir(cfg)
        else:
            ckpt_io.remove_stale_temps(run_dir)  # left by a writer killed mid-save
        C.save_config(cfg, run_dir / "config.yaml")
    if rt.world_size > 1:  # every rank works in rank 0's run directory; only rank 0 writes
        shared = [str(run_dir) if rt.is_main else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])  # type: ignore[arg-type]
    assert run_dir is not None
    state = None
    if resume is not None and (run_dir / "last.pt").exists():
        state = ckpt_io.load_checkpoint(run_dir, "last")
    try:
        for stage_cfg in stage_plan(cfg):
            done = state["epoch"] if state is not None else 0
            if done >= stage_cfg.train.epochs:
                continue
            state = run_stage(stage_cfg, run_dir, state)
    except ConvzooError:
        # Bad input found before anything was trained: leave no half-made run directory.
        if resume is None and rt.is_main and not (run_dir / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if state is None:  # nothing left to train: a resumed run that was already finished
        log.info(f"{run_dir}: already trained to epoch {cfg.train.epochs}")
    return run_dir


def run_stage(cfg: C.Config, run_dir: Path, state: dict[str, Any] | None) -> dict[str, Any]:
    """Train from ``state`` (a loaded checkpoint, or None for a fresh start) to cfg.train.epochs."""
    rt = resolve_runtime(cfg.train)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    elif rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    t_setup = time.perf_counter()

    data = build_pipeline(cfg, rt.device, rank=rt.rank, world_size=rt.world_size,
                          preprocess_state=state["preprocess"] if state is not None else None)
    split, preprocess = data.eval_split, data.preprocess
    train_loader, eval_loader = data.train, data.eval

    torch.manual_seed(cfg.train.seed)
    in_chans = data.image_shape[0]
    model = create_model(
        cfg.model.name, num_classes=data.num_classes, in_chans=in_chans, **cfg.model.kwargs
    ).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Data-dependent init (fast family: patch whitening); a resumed run loads the result instead.
    init_seconds = 0.0 if state is not None else data_dependent_init(model, train_loader, rt.device)
    optimizer = build_optimizer(
        model, cfg.optim, rt.device.type, total_steps=cfg.train.epochs * len(train_loader)
    )
    schedule = build_schedule(
        optimizer, cfg.schedule, cfg.optim.lr, cfg.train.epochs, len(train_loader)
    )
    ema = ModelEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    stopper = (
        EarlyStopping(cfg.train.early_stop_patience, cfg.schedule.monitor)
        if cfg.train.early_stop_patience > 0
        else None
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    step_model: nn.Module = model
    if rt.world_size > 1:  # gradients all-reduced across ranks; checkpoints hold `model`
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    eval_model: nn.Module = model  # every rank evaluates the whole split with the same weights
    if cfg.train.compile:
        step_model, eval_model = torch.compile(step_model), torch.compile(model)

    start_epoch, best_top1, train_seconds, train_images = 0, -math.inf, 0.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        apply_hparams(optimizer, cfg.optim)  # a new stage's lr/wd/momentum win over the saved
        schedule.resume_from(state["schedule"])  # keeps the step; settings from this config
        if ema is not None:
            if state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            else:  # EMA switched on in a new stage: start it from the trained weights
                ema.reset(model)
        if stopper is not None and state.get("early_stop") is not None:
            stopper.load_state_dict(state["early_stop"])
        ckpt_io.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        best_top1 = state["best_top1"]
        train_seconds = state["train_seconds"]
        train_images = state["train_images"]
        init_seconds = state.get("init_seconds", 0.0)
        log.info(f"continuing {run_dir} from the epoch-{start_epoch} checkpoint")
    compile_seconds = 0.0
    if cfg.train.compile:  # compile now, outside the timed epochs, and report it separately
        tta = (lambda x: tta_views(x, cfg.augment.tta, cfg.augment)) if cfg.augment.tta != "none" \
            else None
        compile_seconds = compile_warmup(model, step_model, eval_model, train_loader, eval_loader,
                                         loss_fn, rt, tta, cfg.train.epochs)
        log.info(f"torch.compile warm-up: {compile_seconds:.1f}s (not in train_seconds)")

    writer = MetricsWriter(run_dir, cfg.train.tensorboard, resume_epoch=start_epoch) \
        if rt.is_main else None
    log.info(
        f"{cfg.model.name}: {params:,} parameters; data {data.name} ({data.kind}) "
        f"train {data.train_count:,} / {split} {data.eval_count:,}; "
        f"device {rt.device}, precision {rt.amp_dtype or 'fp32'}; "
        f"setup {time.perf_counter() - t_setup:.1f}s"
    )
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)

    last_eval: dict[str, float] = {}
    ckpt: dict[str, Any] = state or {}
    epochs = cfg.train.epochs
    for epoch in range(start_epoch + 1, epochs + 1):
        # Everything random in this epoch depends only on (seed, epoch): exact resume.
        torch.manual_seed(torch_seed(cfg.train.seed, epoch, rt.rank))
        train_loader.set_epoch(epoch)
        if hasattr(model, "set_epoch"):  # model-side schedule (fast family: whitening bias)
            model.set_epoch(epoch)
        progress = Progress(len(train_loader), epoch, epochs, cfg.train.log_every, rt.is_main)
        lr_used = schedule.lr()  # the lr this epoch starts with (the seeds' "lr of epoch e")
        t0 = time.perf_counter()
        train_stats = train_one_epoch(
            step_model,
            train_loader,
            optimizer,
            schedule,
            loss_fn,
            rt,
            grad_clip=cfg.optim.grad_clip,
            ema=ema,
            progress=progress,
        )
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        seconds = time.perf_counter() - t0
        progress.close()
        train_seconds += seconds
        train_images += train_stats["count"]

        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr_used,
            "train_loss": train_stats["loss"],
            "train_top1": train_stats["top1"],
        }
        final = epoch == epochs
        if final or epoch % cfg.train.eval_every == 0:
            views = (
                (lambda x: tta_views(x, cfg.augment.tta, cfg.augment))
                if cfg.augment.tta != "none"
                else None
            )
            t_eval = time.perf_counter()  # evaluate() ends with .item(): the device is synced
            last_eval = evaluate(
                eval_model,
                eval_loader,
                device=rt.device,
                amp_dtype=rt.amp_dtype,
                channels_last=rt.channels_last,
                views=views,
            )
            row.update(
                {
                    "eval_loss": last_eval["loss"],
                    "eval_top1": last_eval["top1"],
                    "eval_top5": last_eval["top5"],
                    "eval_split": split,
                    "eval_seconds": time.perf_counter() - t_eval,
                }
            )
            if ema is not None:
                ema_eval = evaluate(
                    ema.module,
                    eval_loader,
                    device=rt.device,
                    amp_dtype=rt.amp_dtype,
                    channels_last=rt.channels_last,
                    views=views,
                )
                row.update({"ema_eval_loss": ema_eval["loss"], "ema_eval_top1": ema_eval["top1"]})
            schedule.epoch_end({"val_loss": last_eval["loss"], "val_top1": last_eval["top1"]})
        row.update(
            {
                "seconds": seconds,
                "images_per_second": train_stats["count"] / seconds,
                "peak_memory_mb": peak_memory_mb(rt.device),
            }
        )
        log.info(
            f"epoch {epoch}/{epochs} lr {lr_used:.4g} train loss {row['train_loss']:.4f} "
            f"top1 {row['train_top1']:.2f}%"
            + (
                f" | {split} loss {row['eval_loss']:.4f} top1 {row['eval_top1']:.2f}% "
                f"top5 {row['eval_top5']:.2f}%"
                if "eval_top1" in row
                else ""
            )
            + f" | {seconds:.1f}s {row['images_per_second']:.0f} img/s"
        )

        stop = False
        if stopper is not None and "eval_top1" in row:
            stop = stopper.update({"val_loss": row["eval_loss"], "val_top1": row["eval_top1"]})
        improved = "eval_top1" in row and row["eval_top1"] > best_top1
        if improved:
            best_top1 = row["eval_top1"]
        ckpt = {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "epoch": epoch,
            "config": C.to_dict(cfg),
            "model_name": cfg.model.name,
            "model_kwargs": dict(cfg.model.kwargs),
            "num_classes": data.num_classes,
            "in_chans": in_chans,
            "classes": list(data.classes),
            "image_shape": list(data.image_shape),
            "geometry": data.geometry.state(),
            "eval_split": split,
            "preprocess": preprocess.state(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "early_stop": stopper.state_dict() if stopper is not None else None,
            "rng": ckpt_io.rng_state(),
            "best_top1": best_top1,
            "train_seconds": train_seconds,
            "train_images": train_images,
            "init_seconds": init_seconds,
            "compile_seconds": compile_seconds,
            "metrics": row,
        }
        if writer is not None:
            writer.write(row)
            if final or stop or epoch % cfg.train.save_every == 0:
                ckpt_io.atomic_save(ckpt, run_dir / "last.pt")
                save_weights(ckpt, run_dir / "model.safetensors")
            if improved:
                ckpt_io.atomic_save(ckpt, run_dir / "best.pt")
        if stop:
            log.info(
                f"early stopping at epoch {epoch}: no improvement for "
                f"{cfg.train.early_stop_patience} epochs"
            )
            break
    if writer is not None:
        writer.close()

    if rt.is_main and ckpt:
        write_summary(run_dir, cfg, ckpt, params, last_eval, rt)
    return ckpt


def save_weights(ckpt: dict[str, Any], path: Path) -> None:
    """model.safetensors: weights plus the metadata needed to rebuild the model."""
    meta = {
        "model": ckpt["model_name"],
        "num_classes": str(ckpt["num_classes"]),
        "in_chans": str(ckpt["in_chans"]),
        "classes": json.dumps(ckpt["classes"]),
        "model_kwargs": json.dumps(ckpt["model_kwargs"]),
        "format": "convzoo-weights",
    }
    ckpt_io.save_safetensors(ckpt["model"], path, meta)


def write_summary(
    run_dir: Path,
    cfg: C.Config,
    ckpt: dict[str, Any],
    params: int,
    last_eval: dict[str, float],
    rt: Runtime,
) -> None:
    """summary.json (final figures) plus metrics.csv and curves.png from the metric log."""
    train_seconds = ckpt["train_seconds"]
    summary = {
        "model": cfg.model.name,
        "recipe": cfg.name,
        "data": cfg.data.source,
        "params": params,
        "input": "x".join(str(v) for v in ckpt["image_shape"]),  # stored (C, H, W)
        "epochs": ckpt["epoch"],
        "split": ckpt["eval_split"],
        "top1": last_eval.get("top1"),
        "top5": last_eval.get("top5"),
        "loss": last_eval.get("loss"),
        "best_top1": ckpt["best_top1"],
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(ckpt["epoch"], 1),
        "images_per_second": ckpt["train_images"] / max(train_seconds, 1e-9),
        "train_images_per_epoch": ckpt["train_images"] // max(ckpt["epoch"], 1),
        "peak_memory_mb": peak_memory_mb(rt.device),
        "device": str(rt.device),
        "torch": torch.__version__,
    }
    # What airbench's timer covers: data-dependent init + training epochs + final evaluation.
    # Excluded, as there: data loading, model construction, compilation, logging, checkpoints.
    summary["init_seconds"] = ckpt.get("init_seconds", 0.0)
    summary["compile_seconds"] = ckpt.get("compile_seconds", 0.0)
    summary["final_eval_seconds"] = ckpt["metrics"].get("eval_seconds", 0.0)
    summary["timed_seconds"] = (
        summary["init_seconds"] + train_seconds + summary["final_eval_seconds"]
    )
    if ckpt["metrics"].get("ema_eval_top1") is not None:
        summary["ema_top1"] = ckpt["metrics"]["ema_eval_top1"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        from convzoo import report

        report.write_metrics_csv(run_dir)
        report.plot_curves(run_dir)
    except Exception as e:  # a plotting problem must never lose a finished run
        log.warning(f"could not write curves for {run_dir}: {e}")
    log.info(
        f"done: {cfg.model.name} {summary['split']} top1 {summary['top1']:.2f}% "
        f"top5 {summary['top5']:.2f}% in {train_seconds:.1f}s -> {run_dir}"
    )


def load_model_for_eval(
    ckpt: dict[str, Any], device: torch.device
) -> tuple[nn.Module, Preprocessor]:
    """Rebuild the model and its preprocessing from a checkpoint (nothing else needed)."""
    model = create_model(
        ckpt["model_name"],
        num_classes=ckpt["num_classes"],
        in_chans=ckpt["in_chans"],
        **ckpt["model_kwargs"],
    )
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    preprocess = Preprocessor.from_state(ckpt["preprocess"]).to(device)
    return model, preprocess
