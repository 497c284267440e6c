"""The typed config tree: declared once here, merged from recipe + command line, validated, frozen.

Every key carries a one-line comment with its meaning and units. The tree is passed down
explicitly (``fit(cfg)`` hands ``cfg.optim`` to the optimizer builder, and so on); nothing
reads it as a global.

Sources, in order of precedence (later wins):
  1. these defaults,
  2. a recipe YAML (``--recipe NAME|FILE``),
  3. command-line shortcuts (``--model``, ``--epochs``, ...),
  4. ``--set section.key=value`` overrides (value parsed as YAML: ``0.1``, ``true``, ``[90,135]``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from convzoo.errors import ConvzooError


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # cifar10 | cifar100 | digits | path to archive / folder / packed set
    root: str = "~/.cache/convzoo"  # where downloads and decoded-array caches live
    download: bool = True  # fetch cifar10/cifar100 from the official URL if not in `root`
    val_fraction: float = 0.0  # fraction of train held out (stratified, seeded) as "val" split
    eval_split: str = "auto"  # split evaluated each epoch: auto (val if carved, else test) | val | test
    channels: int = 0  # 0 keeps the source's channels; 1 or 3 converts (grayscale <-> RGB)
    image_size: int = 0  # 0 keeps the source size; digits default is 32 (8x8 upscaled)
    loader: str = "auto"  # auto | memory (device-resident) | stream (packed records, workers)
    workers: int = 0  # CPU workers for decoding (0 = number of cores)
    skip_bad: bool = False  # skip unreadable images (counted and reported) instead of failing
    limit: int = 0  # use at most this many train (and test) images; 0 = all (smoke tests)
    # how image_size is reached: crop = shorter side to S, centre crop (torchvision/timm);
    # squash = resize to SxS ignoring the aspect ratio. Recorded in the checkpoint.
    resize: typing.Literal["crop", "squash"] = "crop"
    max_image_pixels: int = 89_478_485  # largest image decoded, width*height (Pillow's guard); 0 = off
    max_member_mb: int = 1024  # largest archive member read into memory, MiB; 0 = no limit


@dataclass(frozen=True)
class PreprocessConfig:
    # none | mean_image (seeds A/B) | global_mean (seed C) | channel (mean/std per channel, seed E)
    # | gcn (per-image contrast normalisation, seed C) | gcn_zca (gcn then ZCA whitening, seed C)
    kind: str = "channel"
    mean: list[float] | None = None  # fixed per-channel mean on the 0-255 scale (None = fit on train)
    std: list[float] | None = None  # fixed per-channel std on the 0-255 scale (None = fit on train)
    zca_eps: float = 0.01  # ZCA regulariser added to the eigenvalues
    gcn_scale: float = 1.0  # GCN target standard deviation
    # training images the statistics are fitted on (stratified, seeded sample);
    # 0 = all of them in memory, 10,000 when streaming a packed set
    fit_images: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    """Batched train-time augmentation, applied on the device in the fixed order listed here."""

    random_resized_crop: int = 0  # ImageNet-style RRC to this size (0 = off)
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RRC area range
    crop: int = 0  # random crop to this size at train, centre crop at eval (seed A: 28)
    pad: int = 4  # pad-and-random-crop back to the input size by this many pixels (seed B: 4)
    pad_mode: str = "zeros"  # zeros | reflect
    translate: int = 0  # random shift by up to N pixels, constant fill (seeds C, E)
    rotate: float = 0.0  # random rotation up to +-degrees (seed D: 15)
    shear: float = 0.0  # random shear up to +- this factor (seed D: 0.1)
    scale: list[float] | None = None  # random zoom range, e.g. [0.9, 1.1]
    flip: bool = True  # random horizontal flip with p=0.5
    flip_mode: str = "random"  # random | alternate (flip every other epoch per image, airbench)
    cutout: int = 0  # zero a random square of this side (0 = off)
    tta: str = "none"  # eval-time views averaged: none | flip | flip_translate | multicrop


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet20"  # registry name (convzoo models)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword args for the constructor


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | muon (fast family)
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (seed E)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 5e-4  # L2 (coupled) or decoupled weight decay
    decoupled_wd: bool = False  # AdamW-style decoupled decay instead of L2 in the gradient
    no_decay_norm_bias: bool = False  # exclude norm weights and biases from weight decay
    grad_clip: float = 0.0  # clip the global grad norm to this (0 = off)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    ema_decay: float = 0.0  # EMA of weights, evaluated alongside (0 = off)
    lookahead_steps: int = 0  # lookahead: sync slow weights every k steps (0 = off)
    lookahead_alpha: float = 0.5  # lookahead interpolation factor
    fused: str = "auto"  # auto | true | false: fused optimizer kernels on CUDA
    bias_lr_scale: float = 1.0  # lr multiplier for biases and norm parameters
    freeze_bn_scale: bool = False  # keep batch-norm weights fixed at 1 (airbench)
    bias_wd_scale: float = 1.0  # weight-decay multiplier for biases/norm params (airbench: 1/64)
    lookahead_pow: float = 0.0  # lookahead alpha_t = 1-(1-alpha)*(t/T)^pow, T steps (airbench 3)
    muon_lr: float = 0.0  # muon: lr of the orthogonalised conv-filter updates (0 = optim.lr)
    muon_momentum: float = 0.0  # muon: Nesterov momentum of the conv-filter updates (0 = momentum)


@dataclass(frozen=True)
class ScheduleConfig:
    # constant | multistep | cosine | onecycle | plateau. Default one-cycle: on the 3-epoch
    # CIFAR-10 default run it gave 74.1% vs cosine's 71.7% (same seed; RESULTS.md)
    name: str = "onecycle"
    milestones: list[float] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1  # multistep decay factor
    warmup_epochs: float = 0.0  # linear warmup from warmup_start * lr (epochs, may be fractional)
    warmup_start: float = 0.0  # warmup starts at this fraction of lr
    min_lr: float = 0.0  # floor for cosine / onecycle / plateau
    pct_start: float = 0.25  # onecycle: fraction of training spent rising
    anneal: str = "linear"  # onecycle: shape of the descent, linear | cos
    final_fraction: float = 0.0  # onecycle/cosine: lr at the end as a fraction of peak
    monitor: str = "val_loss"  # plateau: metric watched (val_loss | val_top1)
    factor: float = 0.316227766  # plateau: lr *= factor (seed E: sqrt(0.1))
    patience: int = 10  # plateau: epochs without improvement before reducing
    cooldown: int = 0  # plateau: epochs to wait after a reduction
    threshold: float = 1e-4  # plateau: minimum change that counts as improvement


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3  # total epochs (a resumed run continues to this number)
    batch_size: int = 128  # images per optimiser step (global, across ranks)
    eval_batch_size: int = 500  # images per eval forward
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto (= true: faster on CUDA and CPU) | true | false
    compile: bool = False  # torch.compile the model (compile time reported separately)
    seed: int = 0  # seeds data order, augmentation and init
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    out: str = "runs"  # parent directory of run directories
    name: str = ""  # run directory name (default: <model>-<data>-<timestamp>)
    log_every: int = 50  # steps between progress log lines when not on a TTY
    early_stop_patience: int = 0  # stop after this many epochs without val improvement (0 = off)
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    save_every: int = 1  # write last.pt every N epochs (the last epoch always)
    tensorboard: bool = True  # write TensorBoard event files in the run directory
    threads: int = 0  # torch CPU threads (0 = leave torch's default)


@dataclass(frozen=True)
class StageConfig:
    """One extra training stage: continue from the previous stage's end with overrides."""

    epochs: int = 0  # train until this total epoch count
    set: dict[str, Any] = field(default_factory=dict)  # dotted overrides for this stage


@dataclass(frozen=True)
class Config:
    name: str = ""  # recipe name (informational)
    description: str = ""  # one line shown by `convzoo recipes`
    source: str = ""  # seed system reproduced (e.g. "A: MXNet Inception-BN") or "convzoo"
    reported: str = ""  # the seed's reported result, shown beside ours
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)


# ----------------------------------------------------------------------------- conversion


def to_dict(cfg: Any) -> Any:
    """Plain dict/list/scalar form of a config (YAML- and JSON-safe)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting ints to floats and lists as needed."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConvzooError as e:
                errors.append(str(e))
        raise ConvzooError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConvzooError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConvzooError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConvzooError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConvzooError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConvzooError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConvzooError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConvzooError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConvzooError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys: {', '.join(sorted(known))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    if not isinstance(data, dict):
        raise ConvzooError(f"a config must be a mapping, got {type(data).__name__}")
    return _build(Config, data, "")


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


def parse_override(text: str) -> dict[str, Any]:
    """``'optim.lr=0.01'`` -> ``{'optim': {'lr': 0.01}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConvzooError(f"--set expects key=value, got '{text}'")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConvzooError(f"--set expects key=value, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return dotted_to_nested(key, value)


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


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A new Config with nested `overrides` merged in and validated."""
    return from_dict(merge(to_dict(cfg), overrides))


# ----------------------------------------------------------------------------- recipes


RECIPE_DIR = Path(__file__).parent / "recipes"


def list_recipes() -> list[str]:
    """Names of the recipes shipped in the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConvzooError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConvzooError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConvzooError(f"{path}: a recipe must be a mapping at the top level")
    return data


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Raw dict of a shipped recipe (by name) or of a YAML file (by path)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConvzooError(f"recipe file not found: {path}")
        return read_yaml(path)
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        raise ConvzooError(
            f"unknown recipe '{name_or_path}' (known: {', '.join(list_recipes())})"
        )
    data = read_yaml(shipped)
    data.setdefault("name", name_or_path)
    return data


def load_config(path: str | Path) -> Config:
    """A Config from a resolved ``config.yaml`` (as written into a run directory)."""
    return from_dict(read_yaml(Path(path)))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a kill mid-write keeps the old file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported so callers need one import."""
    return dataclasses.replace(cfg, **changes)
