"""The typed config tree: declared once here, merged from recipe + command line, validated, frozen.

Every key is declared once, with its type, its valid values and a comment giving its meaning and
units, e.g. ``lr: Annotated[float, In("(0, inf)")] = 0.1  # peak learning rate``. The declared
type is the truth, and :func:`from_dict` is the one place that checks it:

- ``int`` / ``float`` keys take every spelling a user writes, in a recipe and in ``--set``:
  ``5e-4``, ``1E-3``, ``.1``, ``1_000``, ``-1e-2`` (YAML 1.1 reads ``5e-4`` as text; the text is
  parsed where it meets its declared type). An ``int`` key takes ``1e3`` but not ``2.5``.
- ``In("[lo, hi)")`` is the key's valid range in interval notation (for a list: of each element);
  ``inf`` bounds are open, so every ranged float is finite.
- ``bool`` takes true/false/yes/no/on/off; ``bool | None`` is a tri-state whose None (``null``,
  or ``auto``) means "decide per device".
- ``Literal[...]`` keys take one of the listed choices (case-insensitive); the error lists them.
- ``Len``, ``Ordered`` and ``Match`` constrain list lengths, list order and text.
- Rules that join several keys (a stage's epochs, onecycle without warmup, ...) are in
  :func:`check_rules`.

Code that receives a Config therefore never re-checks a choice or a range. The tree is passed
down explicitly (``fit(cfg)`` hands ``cfg.optim`` to the optimizer builder, and so on); nothing
reads it as a global.

Sources, in order of precedence (later wins):
  1. these defaults,
  2. a recipe YAML (``--recipe NAME|FILE``),
  3. command-line shortcuts (``--model``, ``--epochs``, ...),
  4. ``--set section.key=value`` overrides (the value is YAML: ``0.1``, ``true``, ``[90, 135]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from convzoo.errors import ConvzooError

# ----------------------------------------------------------------------------- what a key may hold


class In:
    """A key's valid range in interval notation: ``In("[0, 1)")``, ``In("(0, inf)")``.

    Checks a number, or every number of a list. Infinite bounds are open and NaN is in no
    range, so a ranged float is always finite.
    """

    _FORM = re.compile(r"([\[(])\s*([-+.\w]+)\s*,\s*([-+.\w]+)\s*([\])])")

    def __init__(self, interval: str) -> None:
        m = self._FORM.fullmatch(interval.strip())
        if m is None:
            raise ValueError(f"not an interval: {interval!r} (write e.g. '[0, 1)')")
        self.text = interval
        self.lo, self.hi = float(m[2]), float(m[3])
        self.lo_closed, self.hi_closed = m[1] == "[", m[4] == "]"

    def contains(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        above = x >= self.lo if self.lo_closed else x > self.lo
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below

    def check(self, value: Any, where: str) -> None:
        if value is None:
            return
        if isinstance(value, list):
            if not all(self.contains(v) for v in value):
                raise ConvzooError(f"{where}={_show(value)}: each value must be in {self.text}")
        elif not self.contains(value):
            raise ConvzooError(f"{where}={_show(value)} is outside its valid range {self.text}")

    def __repr__(self) -> str:
        return f"In({self.text!r})"


@dataclass(frozen=True)
class Len:
    """A list of exactly ``lo`` values, or of ``lo`` to ``hi``."""

    lo: int
    hi: int | None = None

    def check(self, value: Any, where: str) -> None:
        hi = self.lo if self.hi is None else self.hi
        if value is not None and not self.lo <= len(value) <= hi:
            n = f"{self.lo}" if hi == self.lo else f"{self.lo} to {hi}"
            raise ConvzooError(f"{where}={_show(value)}: expected a list of {n} values")


@dataclass(frozen=True)
class Ordered:
    """A list in increasing order (``strict``: no value twice)."""

    strict: bool = False

    def check(self, value: Any, where: str) -> None:
        if value is None:
            return
        pairs = list(zip(value, value[1:]))
        if any(a > b or (self.strict and a == b) for a, b in pairs):
            order = "strictly increasing" if self.strict else "in increasing order"
            raise ConvzooError(f"{where}={_show(value)}: the values must be {order}")


@dataclass(frozen=True)
class Match:
    """Text that matches ``pattern`` (whole string); ``means`` says what in the error."""

    pattern: str
    means: str

    def check(self, value: Any, where: str) -> None:
        if value is not None and re.fullmatch(self.pattern, value) is None:
            raise ConvzooError(f"{where}={value!r}: expected {self.means}")


DEVICE = r"auto|cpu|mps|cuda(:\d+)?"  # train.device, eval/predict --device
# Shortcuts for the most used keys: the CLI's flags (--model, --batch-size ...) and the
# keywords of convzoo.train (model=, batch_size= ...).
SHORTCUTS = [("model", "model.name"), ("data", "data.source"), ("epochs", "train.epochs"),
             ("batch_size", "train.batch_size"), ("lr", "optim.lr"), ("out", "train.out"),
             ("name", "train.name"), ("device", "train.device"), ("seed", "train.seed")]
FOLDER_NAME = r"(?!\.\.?$)[^/\\\0]*"  # train.name: one path component, never . or ..

# ----------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # cifar10 | cifar100 | digits | path to archive / folder / packed set
    root: str = "~/.cache/convzoo"  # where downloads and decoded-array caches live
    download: bool = True  # fetch cifar10/cifar100 from the official URL if not in `root`
    # fraction of train held out (stratified, seeded) as the "val" split
    val_fraction: Annotated[float, In("[0, 1)")] = 0.0
    # split evaluated each epoch: auto (val if there is one, else test) | val | test
    eval_split: Literal["auto", "val", "test"] = "auto"
    channels: Literal[0, 1, 3] = 0  # 0 keeps the source's channels; 1 or 3 converts (gray <-> RGB)
    # 0 keeps the source size; digits default is 32 (8x8 upscaled)
    image_size: Annotated[int, In("[0, 8192]")] = 0
    # auto (stream only a packed set too big for memory) | memory (device-resident)
    # | stream (packed records, decoded by workers)
    loader: Literal["auto", "memory", "stream"] = "auto"
    workers: Annotated[int, In("[0, 1024]")] = 0  # CPU workers for decoding (0 = number of cores)
    skip_bad: bool = False  # skip unreadable images (counted and reported) instead of failing
    # use at most this many train (and test) images; 0 = all (smoke tests, quick looks)
    limit: Annotated[int, In("[0, inf)")] = 0
    # how image_size is reached: crop = shorter side to S, centre crop (torchvision/timm);
    # squash = resize to SxS ignoring the aspect ratio. Recorded in the checkpoint.
    resize: Literal["crop", "squash"] = "crop"
    # largest image decoded, width*height pixels (Pillow's decompression-bomb guard); 0 = off
    max_image_pixels: Annotated[int, In("[0, inf)")] = 89_478_485
    # largest archive member read into memory, MiB; 0 = no limit
    max_member_mb: Annotated[int, In("[0, inf)")] = 1024


@dataclass(frozen=True)
class PreprocessConfig:
    # none | mean_image (seeds A/B) | global_mean (seed C) | channel (mean/std per channel, seed E)
    # | gcn (per-image contrast normalisation, seed C) | gcn_zca (gcn then ZCA whitening, seed C)
    kind: Literal["none", "mean_image", "global_mean", "channel", "gcn", "gcn_zca"] = "channel"
    # fixed per-channel mean on the 0-255 scale (null = fit on train)
    mean: Annotated[list[float] | None, Len(1, 3), In("[0, 255]")] = None
    # fixed per-channel std on the 0-255 scale (null = fit on train)
    std: Annotated[list[float] | None, Len(1, 3), In("(0, 255]")] = None
    # ZCA regulariser added to the eigenvalues (> 0: a gcn'd set always has one ~0 eigenvalue)
    zca_eps: Annotated[float, In("(0, inf)")] = 0.01
    gcn_scale: Annotated[float, In("(0, inf)")] = 1.0  # GCN target standard deviation
    # training images the statistics are fitted on (stratified, seeded sample);
    # 0 = all of them in memory, 10,000 when streaming a packed set
    fit_images: Annotated[int, In("[0, inf)")] = 0


@dataclass(frozen=True)
class AugmentConfig:
    """Batched train-time augmentation, per image random, on the device. Order of the steps
    (docs/augmentation.md): policy and colour jitter on the 0-255 pixels, preprocessing, then
    rrc, crop, pad, translate, affine, flip, cutout, random erasing, and mixup/cutmix last."""

    # ImageNet-style random resized crop to this size (0 = off)
    random_resized_crop: Annotated[int, In("[0, 8192]")] = 0
    # RRC area range [lo, hi], fractions of the image
    rrc_scale: Annotated[list[float], Len(2), In("(0, 1]"), Ordered()] = field(
        default_factory=lambda: [0.08, 1.0])
    # RRC aspect-ratio (width / height) range [lo, hi], log-uniform
    rrc_ratio: Annotated[list[float], Len(2), In("(0, inf)"), Ordered()] = field(
        default_factory=lambda: [0.75, 1.3333333333333333])
    # RRC with torchvision's antialiasing (the transforms.v2 default) instead of plain bilinear
    rrc_antialias: bool = False
    # random crop to this size at train, centre crop at eval (seed A: 28; 0 = off)
    crop: Annotated[int, In("[0, 8192]")] = 0
    # pad-and-random-crop back to the input size by this many pixels (seed B: 4)
    pad: Annotated[int, In("[0, 8192]")] = 4
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # fill of the padding
    # random shift by up to N pixels, constant fill (seeds C, E)
    translate: Annotated[int, In("[0, 8192]")] = 0
    rotate: Annotated[float, In("[0, 180]")] = 0.0  # random rotation up to +-degrees (seed D: 15)
    shear: Annotated[float, In("[0, 1]")] = 0.0  # random shear up to +- this factor (seed D: 0.1)
    # random zoom range [lo, hi], e.g. [0.9, 1.1] (null = off)
    scale: Annotated[list[float] | None, Len(2), In("(0, 10]"), Ordered()] = None
    flip: bool = True  # random horizontal flip with p=0.5
    # random | alternate (flip every other epoch per image, airbench)
    flip_mode: Literal["random", "alternate"] = "random"
    cutout: Annotated[int, In("[0, 8192]")] = 0  # zero a random square of this side (0 = off)
    # eval-time views averaged: none | flip | flip_translate | multicrop
    tta: Literal["none", "flip", "flip_translate", "multicrop"] = "none"
    # per-image policy on the 0-255 pixels, before preprocessing (docs/augmentation.md):
    # none | randaugment | trivialaugment | autoaugment-imagenet | -cifar10 | -svhn
    policy: Literal["none", "randaugment", "trivialaugment", "autoaugment-imagenet",
                    "autoaugment-cifar10", "autoaugment-svhn"] = "none"
    randaugment_ops: Annotated[int, In("[0, 16]")] = 2  # RandAugment N: ops per image
    # RandAugment M: magnitude bin in [0, policy_bins - 1] (torchvision's M)
    randaugment_magnitude: Annotated[int, In("[0, 1000]")] = 9
    # magnitude bins of randaugment/trivialaugment (torchvision: 31; timm's "m9" strengths: 11)
    policy_bins: Annotated[int, In("[2, 1000]")] = 31
    # resampling of the policy's rotate/shear/translate: nearest | bilinear
    policy_interpolation: Literal["nearest", "bilinear"] = "nearest"
    # fill of the policy's geometric ops, 0-255 per channel (null = 0; timm: [124, 116, 104])
    policy_fill: Annotated[list[float] | None, Len(1, 3), In("[0, 255]")] = None
    # colour jitter per image: brightness, contrast, saturation, hue (torchvision; 0 = off;
    # hue <= 0.5)
    color_jitter: Annotated[list[float], Len(4), In("[0, inf)")] = field(
        default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    # random erasing probability per image, on the normalised batch (timm re_prob; 0 = off)
    erase_prob: Annotated[float, In("[0, 1]")] = 0.0
    # erased area range [lo, hi], fractions of the image (split over the boxes of an image)
    erase_area: Annotated[list[float], Len(2), In("(0, 1]"), Ordered()] = field(
        default_factory=lambda: [0.02, 0.3333333333333333])
    # erased box height / width range [lo, hi], log-uniform
    erase_aspect: Annotated[list[float], Len(2), In("(0, inf)"), Ordered()] = field(
        default_factory=lambda: [0.3, 3.3333333333333335])
    # erasing fill: const (0 = the mean) | rand (a normal per channel) | pixel (per pixel)
    erase_mode: Literal["const", "rand", "pixel"] = "const"
    # boxes per erased image [lo, hi], uniform
    erase_count: Annotated[list[int], Len(2), In("[1, 100]"), Ordered()] = field(
        default_factory=lambda: [1, 1])
    # mixup: Beta(alpha, alpha) of the mixing weight (0 = off; timm recipes 0.8)
    mixup_alpha: Annotated[float, In("[0, inf)")] = 0.0
    # cutmix: Beta(alpha, alpha) of the kept area (0 = off; timm recipes 1.0)
    cutmix_alpha: Annotated[float, In("[0, inf)")] = 0.0
    # probability that a batch (or an image, mix_mode=elem) is mixed
    mix_prob: Annotated[float, In("[0, 1]")] = 1.0
    # with mixup and cutmix both on: probability of cutmix rather than mixup
    mix_switch_prob: Annotated[float, In("[0, 1]")] = 0.5
    # batch (one draw per batch) | elem (every image its own kind, weight and box)
    mix_mode: Literal["batch", "elem"] = "batch"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet20"  # registry name (convzoo models)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword args for the constructor
    # start from trained weights: a run directory, a .pt/.pth/.safetensors file,
    # torchvision:<Weights>.<TAG> or timm:<name>.<tag> ("" = the model's own random init;
    # docs/models.md). Only a new run loads it; a resume continues from its checkpoint.
    init: str = ""
    # the classifier head of model.init: auto (loaded if its shape and class names fit, else
    # re-initialised) | new (always re-initialised) | keep (must fit)
    init_head: Literal["auto", "new", "keep"] = "auto"
    # which weights of a run in model.init: auto (the EMA when the run kept one) | ema | raw
    init_weights: Literal["auto", "ema", "raw"] = "auto"
    # what model.init's source gave the keys this config left unset: model name and kwargs,
    # input geometry, normalisation (a record, written by train; docs/models.md)
    init_took: dict[str, Any] = field(default_factory=dict)
    # train only part of the model: none | backbone (only the classifier head: a linear probe)
    # | all_but_last_stage (the last stage and the head); frozen batch norms keep their stats
    freeze: Literal["none", "backbone", "all_but_last_stage"] = "none"


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "muon"] = "sgd"  # sgd | adam | adamw | muon (fast family)
    lr: Annotated[float, In("(0, inf)")] = 0.1  # peak learning rate
    momentum: Annotated[float, In("[0, 1)")] = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (seed E; needs momentum > 0)
    betas: Annotated[list[float], Len(2), In("[0, 1)")] = field(
        default_factory=lambda: [0.9, 0.999])  # Adam betas
    eps: Annotated[float, In("(0, 1]")] = 1e-8  # Adam epsilon
    # L2 (coupled) or decoupled weight decay
    weight_decay: Annotated[float, In("[0, inf)")] = 5e-4
    decoupled_wd: bool = False  # AdamW-style decoupled decay instead of L2 in the gradient
    no_decay_norm_bias: bool = False  # exclude norm weights and biases from weight decay
    grad_clip: Annotated[float, In("[0, inf)")] = 0.0  # clip the global grad norm to this (0 = off)
    label_smoothing: Annotated[float, In("[0, 1)")] = 0.0  # cross-entropy label smoothing
    # EMA of weights, evaluated alongside (0 = off)
    ema_decay: Annotated[float, In("[0, 1)")] = 0.0
    # lookahead: sync slow weights every k steps (0 = off)
    lookahead_steps: Annotated[int, In("[0, inf)")] = 0
    lookahead_alpha: Annotated[float, In("(0, 1]")] = 0.5  # lookahead interpolation factor
    fused: bool | None = None  # fused optimizer kernels on CUDA: auto (null) | true | false
    # lr multiplier for biases and norm parameters
    bias_lr_scale: Annotated[float, In("[0, inf)")] = 1.0
    freeze_bn_scale: bool = False  # keep batch-norm weights fixed at 1 (airbench)
    # weight-decay multiplier for biases/norm params (airbench: 1/64)
    bias_wd_scale: Annotated[float, In("[0, inf)")] = 1.0
    # lookahead alpha_t = 1-(1-alpha)*(t/T)^pow, T steps (airbench 3; 0 = constant alpha)
    lookahead_pow: Annotated[float, In("[0, inf)")] = 0.0
    # muon: lr of the orthogonalised conv-filter updates (0 = optim.lr)
    muon_lr: Annotated[float, In("[0, inf)")] = 0.0
    # muon: Nesterov momentum of the conv-filter updates (0 = momentum)
    muon_momentum: Annotated[float, In("[0, 1)")] = 0.0
    # lr scaling with the global batch (docs/training.md): 0 = optim.lr is the lr; N = optim.lr
    # is the lr of a global batch of N images, scaled to train.batch_size by lr_scaling
    lr_base_batch: Annotated[int, In("[0, inf)")] = 0
    # linear: lr * batch_size / lr_base_batch (Goyal et al.) | sqrt: lr * sqrt(that ratio)
    lr_scaling: Literal["linear", "sqrt"] = "linear"
    # lr multiplier for the backbone (every parameter but the classifier head), e.g. 0.1 to
    # fine-tune trained weights gently while a new head learns at optim.lr
    backbone_lr_scale: Annotated[float, In("(0, inf)")] = 1.0
    # layer-wise lr decay (BEiT, timm's layer_decay): the model's stages get lr *
    # layer_decay**depth, depth counted from the head (head 0, last stage 1, ... stem N), times
    # backbone_lr_scale; null = off. Needs a model that names its stages (zoo, timm)
    layer_decay: Annotated[float | None, In("(0, 1]")] = None


@dataclass(frozen=True)
class ScheduleConfig:
    # constant | multistep | cosine | onecycle | plateau. Default one-cycle: on the 3-epoch
    # CIFAR-10 default run it gave 74.1% vs cosine's 71.7% (same seed; RESULTS.md)
    name: Literal["constant", "multistep", "cosine", "onecycle", "plateau"] = "onecycle"
    # multistep: epochs at which lr *= gamma
    milestones: Annotated[list[float], In("[0, inf)"), Ordered(strict=True)] = field(
        default_factory=list)
    gamma: Annotated[float, In("(0, 1]")] = 0.1  # multistep decay factor
    # linear warmup from warmup_start * lr (epochs, may be fractional; not for onecycle)
    warmup_epochs: Annotated[float, In("[0, inf)")] = 0.0
    # warmup (and onecycle's rise) starts at this fraction of lr
    warmup_start: Annotated[float, In("[0, 1]")] = 0.0
    # floor for cosine / onecycle / plateau (at most optim.lr)
    min_lr: Annotated[float, In("[0, inf)")] = 0.0
    pct_start: Annotated[float, In("[0, 1)")] = 0.25  # onecycle: fraction of training spent rising
    anneal: Literal["linear", "cos"] = "linear"  # onecycle: shape of the descent, linear | cos
    # onecycle/cosine: lr at the end as a fraction of peak
    final_fraction: Annotated[float, In("[0, 1]")] = 0.0
    monitor: Literal["val_loss", "val_top1"] = "val_loss"  # plateau: metric watched
    # plateau: lr *= factor (seed E: sqrt(0.1))
    factor: Annotated[float, In("(0, 1)")] = 0.316227766
    # plateau: epochs without improvement before reducing
    patience: Annotated[int, In("[0, inf)")] = 10
    cooldown: Annotated[int, In("[0, inf)")] = 0  # plateau: epochs to wait after a reduction
    # plateau: minimum relative change that counts as improvement
    threshold: Annotated[float, In("[0, 1)")] = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    # total epochs (a resumed run continues to this number)
    epochs: Annotated[int, In("[1, inf)")] = 3
    # images per optimiser step (global, across ranks)
    batch_size: Annotated[int, In("[1, inf)")] = 128
    eval_batch_size: Annotated[int, In("[1, inf)")] = 500  # images per eval forward
    # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    device: Annotated[str, Match(DEVICE, "auto, cpu, cuda, cuda:N or mps")] = "auto"
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # channels-last memory format: auto (null: yes, faster on CUDA and CPU) | true | false
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the model (compile time reported separately)
    # torch.compile's mode (with train.compile): null = torch's default | default |
    # reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] | None = None
    # seeds data order, augmentation and init (numpy's range)
    seed: Annotated[int, In("[0, 4294967295]")] = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    out: str = "runs"  # parent directory of run directories
    # run directory name (default: <model>-<data>-<timestamp>)
    name: Annotated[str, Match(FOLDER_NAME, "a folder name (no / or \\, not . or ..)")] = ""
    # steps between progress log lines when not on a TTY
    log_every: Annotated[int, In("[1, inf)")] = 50
    # stop after this many epochs without val improvement (0 = off)
    early_stop_patience: Annotated[int, In("[0, inf)")] = 0
    # evaluate every N epochs (the last epoch always)
    eval_every: Annotated[int, In("[1, inf)")] = 1
    # write last.pt every N epochs (the last epoch always)
    save_every: Annotated[int, In("[1, inf)")] = 1
    # where the metrics go besides metrics.jsonl (docs/tracking.md): tensorboard (tensorboard/)
    # | csv (metrics.csv after every epoch, steps.csv) | mlflow (section mlflow) | wandb
    # (section wandb); [] = metrics.jsonl, metrics.csv and curves.png only
    loggers: list[Literal["tensorboard", "csv", "mlflow", "wandb"]] = field(
        default_factory=lambda: ["tensorboard", "csv"])
    # also keep the checkpoints of the N most recent saved epochs as epoch-NNNN.pt (0 = only
    # last.pt and best.pt; timm --checkpoint-hist, Lightning save_top_k)
    keep_last: Annotated[int, In("[0, inf)")] = 0
    # best.pt: the evaluated epoch with the best value of this metric of the judged weights (the
    # EMA when kept) on the eval split: val_top1 | val_top5 (higher is better) | val_loss (lower)
    best_metric: Literal["val_top1", "val_top5", "val_loss"] = "val_top1"
    # torch CPU threads (0 = torch's default, one per core; on a busy machine 1 can be much
    # faster: README)
    threads: Annotated[int, In("[0, 4096]")] = 0
    # also write last.pt every N optimizer steps inside an epoch (0 = at epoch ends only); a
    # resume continues from that step bit-identically (docs/training.md, preemption)
    checkpoint_every_steps: Annotated[int, In("[0, inf)")] = 0
    # also write last.pt once this many minutes have passed since the last one (0 = off)
    checkpoint_every_minutes: Annotated[float, In("[0, inf)")] = 0.0
    # gradient accumulation: each optimizer step runs as this many forward/backward passes
    # (micro-batches); train.batch_size stays the images per step, so lr and schedule keep
    accum_steps: Annotated[int, In("[1, inf)")] = 1
    # under torchrun: batch-norm statistics over the global batch (SyncBatchNorm) instead of
    # each process's share (no effect in one process)
    sync_bn: bool = False
    # DDP static graph: auto (null: on unless the model skips parameters in some steps, as
    # stochastic depth and epoch-dependent freezing do) | true | false
    ddp_static_graph: bool | None = None


@dataclass(frozen=True)
class MlflowConfig:
    """The MLflow logger (``train.loggers: [..., mlflow]``; pip install 'convzoo[mlflow]')."""

    # tracking URI: "" = sqlite:///<train.out>/mlflow.db with artifacts in <train.out>/mlartifacts
    # (no server: `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`); or any URI MLflow
    # takes: http://host:5000, sqlite:///path.db, postgresql://..., databricks
    tracking_uri: str = ""
    experiment: str = "convzoo"  # experiment the runs are logged to (created when missing)


@dataclass(frozen=True)
class WandbConfig:
    """The Weights & Biases logger (``train.loggers: [..., wandb]``; pip install
    'convzoo[wandb]')."""

    project: str = "convzoo"  # W&B project
    entity: str = ""  # W&B team or user ("" = the API key's default)
    # auto: online when an API key is configured (WANDB_API_KEY or `wandb login`), else offline
    # (files in RUN/wandb/, `wandb sync` them later) | offline | online
    mode: Literal["auto", "offline", "online"] = "auto"


@dataclass(frozen=True)
class StageConfig:
    """One extra training stage: continue from the previous stage's end with overrides."""

    epochs: Annotated[int, In("[1, inf)")] = 0  # train until this total epoch count (required)
    set: dict[str, Any] = field(default_factory=dict)  # dotted overrides for this stage
    from_epoch: int = 0  # epoch it continued from (written when it starts; 0 = not yet)
    started: str = ""  # local time it started, ISO 8601 (written by train; "" = not yet)


@dataclass(frozen=True)
class Config:
    name: str = ""  # recipe name (informational)
    description: str = ""  # one line shown by `convzoo recipes`
    source: str = ""  # seed system reproduced (e.g. "A: MXNet Inception-BN") or "convzoo"
    reported: str = ""  # the seed's reported result, shown beside ours
    started: str = ""  # local time the run's first stage started, ISO 8601 (written by train)
    data: DataConfig = field(default_factory=DataConfig)  # where the images come from
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # normalisation
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # train-time augmentation, TTA
    model: ModelConfig = field(default_factory=ModelConfig)  # the network
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and regularisation
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # learning-rate schedule
    train: TrainConfig = field(default_factory=TrainConfig)  # the loop, device, logging, saving
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)  # the MLflow logger
    wandb: WandbConfig = field(default_factory=WandbConfig)  # the Weights & Biases logger
    # later stages of the same run, e.g. [{epochs: 44, set: {optim.lr: 0.01}}]
    stages: list[StageConfig] = field(default_factory=list)


# ----------------------------------------------------------------------------- conversion


def to_dict(cfg: Any) -> Any:
    """Plain dict/list/scalar form of a config (YAML- and JSON-safe; a tri-state's auto is None)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Declared types of a config class's fields, with their ``Annotated`` rules."""
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def declared_keys(cls: type | None = None) -> dict[str, Any]:
    """Every leaf key of the tree (``"optim.lr"``) with its declared type; ``stages`` is a leaf.

    Cached: do not modify the returned dict.
    """
    out: dict[str, Any] = {}
    for name, tp in hints(cls or Config).items():
        if is_dataclass(tp):
            out.update({f"{name}.{k}": t for k, t in declared_keys(tp).items()})
        else:
            out[name] = tp
    return out


def unwrap(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, rule, ...]`` -> ``(T, (rule, ...))``; any other type -> ``(tp, ())``."""
    if typing.get_origin(tp) is Annotated:
        return typing.get_args(tp)[0], tuple(tp.__metadata__)
    return tp, ()


def choices(key: str) -> tuple[Any, ...]:
    """The choices of a ``Literal`` key, e.g. ``choices("augment.tta")``."""
    tp, _ = unwrap(declared_keys()[key])
    if typing.get_origin(tp) is not Literal:
        raise KeyError(f"{key} is not a choice key")
    return typing.get_args(tp)


def check_value(key: str, value: Any) -> Any:
    """``value`` in the declared type of ``key`` (dotted), checked as ``from_dict`` checks it."""
    return convert(value, declared_keys()[key], key)


# How a value is shown in an error: as the user would write it.
def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


class _Text(str):
    """A plain (unquoted) YAML scalar: its source text, plus what YAML 1.1 made of it.

    A loaded value stays text until it meets its declared type (``convert``): ``train.name: 001``
    stays "001", ``optim.weight_decay: 5e-4`` (a string to YAML 1.1) becomes 0.0005, and
    ``optim.fused: on`` becomes True. Where the type is ``Any`` (``model.kwargs``) YAML's reading
    is used.
    """

    yaml_value: Any

    def __new__(cls, text: str, yaml_value: Any) -> _Text:
        obj = super().__new__(cls, text)
        obj.yaml_value = yaml_value
        return obj


def _plain(value: Any) -> Any:
    """``value`` with every ``_Text`` inside replaced by YAML's reading of it (1.1, except that
    ``5e-4`` is a number)."""
    if isinstance(value, _Text):
        return value.yaml_value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _number(value: Any, where: str, what: str) -> int | float:
    """An int or float from a number or from any spelling of one (``5e-4``, ``.1``, ``1_000``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and not isinstance(value, bool):
        text = str(value).strip()
        if text.lower().lstrip("+-") in (".inf", ".nan"):  # YAML's spellings
            text = text.replace(".", "", 1)
        for parse in (int, lambda t: int(t, 0), float):
            try:
                return parse(text)
            except ValueError:
                pass
    raise ConvzooError(f"{where}: expected {what}, got {_show(value)}")


def convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to type ``tp`` (``int``, ``Annotated[float, In("[0, 1)")]``, ...) and
    checked against its rules; errors name ``where`` (the dotted key)."""
    tp, rules = unwrap(tp)
    value = _convert(value, tp, where)
    for rule in rules:
        rule.check(value, where)
    return value


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or _plain(value) is None):
            return None
        if bool in members and isinstance(value, str) and value.strip().lower() == "auto":
            return None  # a tri-state's "decide per device"
        for i, member in enumerate(members):
            try:
                return convert(value, member, where)
            except ConvzooError:
                if i + 1 < len(members):
                    continue
                if members == [bool]:
                    raise ConvzooError(
                        f"{where}: expected true, false or auto, got {_show(value)}") from None
                raise
    if origin is Literal:
        text = value.strip().lower() if isinstance(value, str) else None
        for choice in args:
            if isinstance(choice, str) and text == choice.lower():
                return choice
            if isinstance(choice, int) and not isinstance(value, bool):
                try:
                    if _number(value, where, "") == choice:
                        return choice
                except ConvzooError:
                    pass
        raise ConvzooError(f"{where}: {_show(value)} is not one of: "
                           f"{', '.join(str(c) for c in args)}")
    if is_dataclass(tp):
        if isinstance(value, tp):
            value = to_dict(value)
        if not isinstance(value, dict):
            raise ConvzooError(f"{where}: expected a mapping of keys, got {_show(value)}")
        return _build(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConvzooError(f"{where}: expected a list such as [1, 2], got {_show(value)}")
        (item,) = args or (Any,)
        return [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConvzooError(f"{where}: expected a mapping, got {_show(value)}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConvzooError(f"{where}: keys must be names, got {bad[0]!r}")
        return {str(k): _plain(v) for k, v in value.items()}
    if tp is Any:
        return _plain(value)
    if tp is bool:
        v = _plain(value)
        if isinstance(v, str) and v.strip().lower() in _BOOLS:
            v = _BOOLS[v.strip().lower()]
        if isinstance(v, bool):
            return v
        raise ConvzooError(f"{where}: expected true or false, got {_show(value)}")
    if tp is int:
        n = _number(value, where, "an integer")
        if isinstance(n, float):
            if not n.is_integer():
                raise ConvzooError(f"{where}: expected an integer, got {_show(value)}")
            return int(n)
        return n
    if tp is float:
        return float(_number(value, where, "a number"))
    if tp is str:
        if isinstance(value, str) or (isinstance(value, (int, float)) and
                                      not isinstance(value, bool)):
            return str(value)
        raise ConvzooError(f"{where}: expected text, got {_show(value)}")
    return value


def _unknown_key(where: str, key: Any, known: list[str]) -> ConvzooError:
    full = f"{where}.{key}" if where else str(key)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean '{where + '.' if where else ''}{close[0]}'? " if close else ""
    return ConvzooError(f"unknown config key '{full}' ({hint}known keys: {', '.join(known)})")


def _build(cls: type, data: dict[Any, Any], where: str) -> Any:
    declared = hints(cls)
    known = sorted(f.name for f in fields(cls))
    for key in data:
        if key not in declared:
            raise _unknown_key(where, key, known)
    kwargs = {k: convert(v, declared[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict.

    Every value is converted to its declared type and checked against its declared range or
    choices, then :func:`check_rules` checks the rules that join keys. Raises ConvzooError with
    one line naming the key, the value and what is valid.
    """
    if not isinstance(data, dict):
        raise ConvzooError(f"a config must be a mapping of keys, got {_show(_plain(data))}")
    return check_rules(_build(Config, _unretire(data), ""))


def _unretire(data: dict[str, Any]) -> dict[str, Any]:
    """Retired keys read as what replaced them, so that a run written before a key was retired
    (its config.yaml and checkpoints keep the keys they were written with) still evaluates,
    resumes and compares: ``train.tensorboard: BOOL`` (until 2026-12-07) is ``train.loggers``
    with TensorBoard or without it, beside the CSV every run wrote then."""
    train = data.get("train")
    if not isinstance(train, dict) or "tensorboard" not in train:
        return data
    train = dict(train)
    on = convert(train.pop("tensorboard"), bool, "train.tensorboard")
    train.setdefault("loggers", ["tensorboard", "csv"] if on else ["csv"])
    return {**data, "train": train}


def check_rules(cfg: Config) -> Config:
    """Check the rules that join several keys; returns ``cfg`` with each stage's overrides in
    their declared types (``{optim.lr: 1e-2}`` -> ``{optim.lr: 0.01}``)."""
    _check_joint(cfg)
    return _check_stages(cfg)


def _check_joint(cfg: Config) -> None:
    """The rules between keys of one stage's config."""
    o, s, a = cfg.optim, cfg.schedule, cfg.augment
    if s.name == "onecycle" and s.warmup_epochs > 0:
        raise ConvzooError(f"schedule.warmup_epochs={s.warmup_epochs} does not apply to "
                           "schedule.name=onecycle: its rise lasts schedule.pct_start of training "
                           "(from schedule.warmup_start * lr)")
    if o.name == "sgd" and o.nesterov and o.momentum == 0:
        raise ConvzooError("optim.nesterov=true needs optim.momentum > 0")
    t = cfg.train
    if t.batch_size % t.accum_steps:
        raise ConvzooError(f"train.accum_steps={t.accum_steps}: train.batch_size={t.batch_size} "
                           "(images per optimizer step) must divide into that many equal "
                           "micro-batches")
    if s.min_lr > o.lr:
        raise ConvzooError(f"schedule.min_lr={s.min_lr} is above optim.lr={o.lr}: "
                           "the floor must not exceed the peak")
    if a.policy == "randaugment" and a.randaugment_magnitude >= a.policy_bins:
        raise ConvzooError(f"augment.randaugment_magnitude={a.randaugment_magnitude} must be "
                           f"below augment.policy_bins={a.policy_bins} (bins 0 to "
                           f"{a.policy_bins - 1})")
    if a.color_jitter[3] > 0.5:
        raise ConvzooError(f"augment.color_jitter={_show(a.color_jitter)}: the hue shift (4th "
                           "value) must be in [0, 0.5] turns")
    if t.compile_mode is not None and not t.compile:
        raise ConvzooError(f"train.compile_mode={t.compile_mode} applies only with "
                           "train.compile=true (set both, or leave compile_mode null)")
    repeated = sorted({k for k in t.loggers if t.loggers.count(k) > 1})
    if repeated:
        raise ConvzooError(f"train.loggers={_show(t.loggers)}: {repeated[0]} is listed twice")
    size = cfg.data.image_size
    for key in ("crop", "cutout"):
        if size and getattr(a, key) > size:
            raise ConvzooError(f"augment.{key}={getattr(a, key)} is larger than "
                               f"data.image_size={size}")


def _check_stages(cfg: Config) -> Config:
    """Each stage trains further than the one before, and its overrides make a valid config."""
    if not cfg.stages:
        return cfg
    plan = stage_configs(cfg)
    stages = []
    for stage, stage_cfg in zip(cfg.stages, plan[1:]):
        resolved = to_dict(stage_cfg)
        stages.append(dataclasses.replace(stage, set={k: _lookup(resolved, k) for k in stage.set}))
    return dataclasses.replace(cfg, stages=stages)


def stage_configs(cfg: Config) -> list[Config]:
    """The config each stage of ``cfg`` trains with: ``cfg``, then one per ``stages`` entry (its
    ``set`` applied to the previous stage's config, ``train.epochs`` = the stage's ``epochs``).

    Each stage's config keeps only the stages after it, so each one, as recorded in a checkpoint,
    is itself a valid config describing what is left to train.
    """
    plan = [cfg]
    for i, stage in enumerate(cfg.stages):
        where, prev = f"stages[{i}]", plan[-1]
        # A stage starts where the previous one ends, or earlier where a `--resume` with
        # overrides began it (`from_epoch`, written when it starts).
        start = stage.from_epoch or prev.train.epochs
        if stage.epochs <= start:
            raise ConvzooError(f"{where}.epochs={stage.epochs} must exceed the epoch it starts "
                               f"from ({start})")
        overrides: dict[str, Any] = {}
        for key, value in stage.set.items():
            if key.split(".")[0] == "stages" or key == "train.epochs":
                raise ConvzooError(f"{where}.set: a stage cannot set '{key}' (its epochs are "
                                   f"{where}.epochs)")
            overrides = merge(overrides, dotted_to_nested(key, value))
        overrides = merge(overrides, {"train": {"epochs": stage.epochs}})
        rest = dataclasses.replace(prev, stages=cfg.stages[i + 1:])
        try:
            stage_cfg = _build(Config, merge(to_dict(rest), overrides), "")
            _check_joint(stage_cfg)  # its own later stages are checked by this loop
            plan.append(stage_cfg)
        except ConvzooError as e:
            raise ConvzooError(f"{where}.set: {e}") from None
    return plan


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------- merging


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("kwargs", "set"):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")


def parse_override(text: str) -> dict[str, Any]:
    """``'optim.lr=0.01'`` -> ``{'optim': {'lr': 0.01}}``.

    The value is YAML (``0.1``, ``true``, ``[90, 135]``, ``{shortcut: B}``), except for a key
    declared as text (``data.source``, ``train.name``), which takes the text as typed.
    """
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or _KEY.fullmatch(key) is None:
        raise ConvzooError(f"--set expects SECTION.KEY=VALUE (e.g. optim.lr=0.01), got {text!r}")
    if unwrap(declared_keys().get(key))[0] is str and raw.strip()[:1] not in ("'", '"'):
        return dotted_to_nested(key, raw.strip())
    value = load_yaml(raw, f"--set {key}={raw}", lines=False) if raw.strip() else ""
    return dotted_to_nested(key, value)


def dotted(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'optim': {'lr': 0.01}}`` -> ``{'optim.lr': 0.01}`` (``model.kwargs`` stays one value,
    as ``config.merge`` replaces it whole)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("model.kwargs",):
            out.update(dotted(value, name + "."))
        else:
            out[name] = value
    return out


def dotted_to_nested(key: str, value: Any) -> dict[str, Any]:
    """``('model.kwargs.shortcut', 'B')`` -> ``{'model': {'kwargs': {'shortcut': 'B'}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


# What a resume may change without starting a new stage: how this process runs, not what it
# trains.
RUNTIME_KEYS = frozenset({
    "train.device", "train.threads", "train.log_every", "data.workers", "data.root",
    "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.loggers",
    "train.keep_last", *(f"mlflow.{f.name}" for f in fields(MlflowConfig)),
    *(f"wandb.{f.name}" for f in fields(WandbConfig))})

# What records a run rather than configures it: the recipe's own words (which a later convzoo
# may phrase otherwise), when the run started, and where its run directory is. No comparison of
# two configs counts them.
RECORDS = frozenset({"name", "description", "source", "reported", "started", "train.out",
                     "train.name"})

# What a comparison of what two runs trained (a run beside its recipe, the ledger's rows) leaves
# out: the records, where the data are, the seed (runs over seeds differ in it by design), and
# how the process ran (RUNTIME_KEYS and compilation: neither changes what is computed).
NOT_TRAINED = RECORDS | {"data.source", "train.seed", "train.compile", *RUNTIME_KEYS}


def _flat(cfg: Config, stages: int | None = None) -> dict[str, Any]:
    """``cfg`` as dotted keys (:func:`dotted`), in the schema's order, with its ``stages`` (the
    first ``stages`` of them; all by default) as their plan only: the epochs each trains to and
    its overrides, not when it started or the epoch a resume began it from."""
    data = to_dict(cfg)
    data["stages"] = [{k: v for k, v in st.items() if k not in ("started", "from_epoch")}
                      for st in data["stages"][:stages]]
    return dotted(data)


def differences(cfg: Config, other: Config, leave_out: Collection[str] = (),
                stages: int | None = None) -> dict[str, tuple[Any, Any]]:
    """``{key: (cfg's value, other's)}`` for every key (:func:`_flat`, ``stages`` as one key)
    whose values differ, in the schema's order, less ``leave_out``; None for a key one side
    lacks. The one comparison of two configs: a reproducing command, a run beside a recipe, a
    ledger row's protocol and the check that ``--resume auto`` found this command's run all
    read it."""
    mine, theirs = _flat(cfg, stages), _flat(other, stages)
    absent = object()  # a key one side lacks (a dict value such as model.init_took's keys)
    return {k: (mine.get(k), theirs.get(k)) for k in {**mine, **theirs}
            if k not in leave_out and mine.get(k, absent) != theirs.get(k, absent)}


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A new Config with nested `overrides` merged in and validated."""
    return from_dict(merge(to_dict(cfg), overrides))


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, keeping plain scalars as ``_Text``; refuses aliases and repeated
    keys (both make a recipe mean something other than what it looks like)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not supported in a config",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key_node.value}' appears twice", key_node.start_mark)
                seen.add(key_node.value)
        mapping = super().construct_mapping(node, deep=deep)
        # keys are names: `on:` or `1:` stay the text they are
        return {str(k) if isinstance(k, _Text) else k: v for k, v in mapping.items()}


# A number as YAML 1.2 (and JSON, and Python) writes it; YAML 1.1 wants a dot before an exponent.
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?")


def _plain_scalar(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    value = yaml.SafeLoader.yaml_constructors[node.tag](loader, node)
    if node.style is not None:  # quoted: text, as written
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = float(value)  # `5e-4` is a number wherever the type is open (model.kwargs)
    return _Text(node.value, value)


for _tag in ("null", "bool", "int", "float", "str", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _plain_scalar)


def load_yaml(text: str, where: str, lines: bool = True) -> Any:
    """Parse config YAML; errors become one line ``where:LINE:COL: invalid YAML (problem)``
    (``where: invalid YAML (problem)`` with ``lines=False``, for a --set value)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = where
        if mark is not None and lines:
            at = f"{where}:{mark.line + 1}:{mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConvzooError(f"{at}: invalid YAML ({problem})") from None
    except RecursionError:
        raise ConvzooError(f"{where}: invalid YAML (nested too deeply)") from None


# ----------------------------------------------------------------------------- recipes


RECIPE_DIR = Path(__file__).parent / "recipes"


def list_recipes() -> list[str]:
    """Names of the recipes shipped in the package (a ``_name.yaml`` is a base that other
    recipes build on, not listed)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def read_yaml(path: Path) -> dict[str, Any]:
    """A recipe or config file as a mapping (values still text until they meet their types)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConvzooError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConvzooError(f"cannot read {path}: not UTF-8 text") from None
    data = load_yaml(text, str(path))
    if data is None or (isinstance(data, _Text) and data.yaml_value is None):
        return {}
    if not isinstance(data, dict):
        raise ConvzooError(f"{path}: a recipe must be a mapping of keys at the top level, "
                           f"got {type(_plain(data)).__name__}")
    return data


def _recipe_file(name_or_path: str, relative_to: Path | None = None) -> tuple[Path, str | None]:
    """(the file of a recipe, its shipped name or None for a file given by path). A path is
    resolved against ``relative_to`` (the folder of the recipe naming it as its base)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path or path.exists():
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.exists():
            raise ConvzooError(f"recipe file not found: {path}")
        return path, None
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConvzooError(
            f"unknown recipe '{name_or_path}' (known: {', '.join(list_recipes())})"
        )
    return shipped, name_or_path


def recipe_layers(name_or_path: str, relative_to: Path | None = None,
                  chain: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The layers a recipe is made of, first to last: its ``base`` recipes' layers (a shipped
    name or a file, relative to the recipe's own folder; one or a list, merged left to right),
    then its own keys. Each layer is ``(label, keys)``; a base's ``name`` is not inherited."""
    path, shipped = _recipe_file(name_or_path, relative_to)
    key = str(path.resolve())
    if key in chain:
        raise ConvzooError(f"{path}: recipe base cycle ({' -> '.join([*chain, key])})")
    data = read_yaml(path)
    bases = data.pop("base", None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if bases is not None:
        bases = bases if isinstance(bases, list) else [bases]
        for base in bases:
            if not isinstance(_plain(base), str) or not str(base):
                raise ConvzooError(f"{path}: base: expected a recipe name or file, or a list "
                                   f"of them, got {_plain(base)!r}")
            for label, keys in recipe_layers(str(base), path.parent, (*chain, key)):
                layers.append((label, {k: v for k, v in keys.items() if k != "name"}))
    if shipped is not None:
        data.setdefault("name", shipped)
    layers.append((f"recipe {shipped or path}", data))
    return layers


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Raw dict of a shipped recipe (by name) or of a YAML file (by path), its bases merged
    under its own keys (``recipe_layers``)."""
    out: dict[str, Any] = {}
    for _, keys in recipe_layers(name_or_path):
        out = merge(out, keys)
    return out


def load_recipes(names: str | list[str] | None) -> dict[str, Any]:
    """Several recipes (``--recipe A --recipe B``) merged left to right; the config's name is
    the last one's that has a name."""
    out: dict[str, Any] = {}
    for name in [names] if isinstance(names, str) else names or []:
        out = merge(out, load_recipe(name))
    return out


def load_config(path: str | Path) -> Config:
    """A Config from a resolved ``config.yaml`` (as written into a run directory)."""
    return from_dict(read_yaml(Path(path)))


def section_of(cls: type) -> str | None:
    """``TrainConfig`` -> ``"train"`` (None for a class that is not a section of Config)."""
    return next((name for name, tp in hints(Config).items() if tp is cls), None)


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace; for a config (or one of its sections) the result is validated."""
    new = dataclasses.replace(cfg, **changes)
    if type(new) is Config:
        return from_dict(to_dict(new))
    section = section_of(type(new))
    if section is None:
        return new  # not part of the config tree
    return _build(type(new), to_dict(new), section)
