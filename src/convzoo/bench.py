"""``convzoo bench``: the neon table (seed B) for any list of recipes, models and finished runs.

For a recipe or a model, the run is built by training's own ``setup.build_run`` (config from
the recipe, or convzoo's defaults with ``--model``), then ``steps`` real training steps are timed
after ``warmup`` untimed ones, with the project's own step (``loop.train_one_epoch``:
preprocessing, augmentation, autocast and loss scaling, channels_last, loss, backward, optimizer
step at the schedule's lr, EMA) on synthetic uint8 images resident on the device, at the
recipe's batch size. Each row is logged as it starts and ends, with the time left. Reported:

* params: trainable parameter count;
* peak memory (MiB): CUDA ``max_memory_allocated`` over the timed steps (model, optimizer state,
  activations, one batch; the resident training set a real run holds is not included), or on
  CPU the increase of the process's peak resident set size over its size before the model was
  built (freed heap returned to the OS first, the CPU runtime's one-time set-up excluded; the
  ``memory kind`` column says which);
* images/s over the timed steps, and s/epoch = (training-set size // batch) steps at that rate,
  the training-set size coming from the recipe's data source (50,000 for CIFAR, 1,281,167 for
  ImageNet) without loading it.

For a finished run directory the same columns come from its summary.json (``report.summary_row``):
measured s/epoch, images/s, peak memory and the final error (100 - top-1, percent).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import platform
import resource
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convzoo import config as C
from convzoo import report
from convzoo.data.images import resolve_geometry
from convzoo.data.transforms.augment import EVAL_CROP_FRACTION, build_train_augment
from convzoo.data.transforms.preprocess import fit_preprocessor
from convzoo.data.transforms.stage import Stage
from convzoo.errors import ConvzooError
from convzoo.log import format_seconds
from convzoo.models import get_entry
from convzoo.models.info import default_num_classes
from convzoo.outputs import write_output
from convzoo.runtime import configure_backends, resolve_runtime
from convzoo.tables import UNLIMITED, WIDTH, fit_table
from convzoo.training.loop import train_one_epoch
from convzoo.training.setup import build_run

log = logging.getLogger("convzoo")

CIFAR_TRAIN = 50_000
IMAGENET_TRAIN = 1_281_167
DIGITS_TRAIN = 1347  # scikit-learn's 1,797 digits less convzoo's 25% test split (450)

# name -> (classes, channels, stored side, training images)
KNOWN_SOURCES: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (10, 3, 32, CIFAR_TRAIN),
    "cifar100": (100, 3, 32, CIFAR_TRAIN),
    "cifar100-coarse": (20, 3, 32, CIFAR_TRAIN),
    "digits": (10, 3, 32, DIGITS_TRAIN),
    "imagenet": (1000, 3, 256, IMAGENET_TRAIN),
}


# ----------------------------------------------------------------------------- data facts


@dataclass(frozen=True)
class DataFacts:
    """What a benchmark needs to know about a data source, without loading it."""

    name: str  # the known source it was matched to, or "<model>-default"
    num_classes: int
    image_shape: tuple[int, int, int]  # stored (C, H, W), before augmentation crops
    train_images: int  # images in one training epoch


def _known_name(source: str) -> str | None:
    """Match a source name or path to a known data set (``cifar10-jpeg.tar.gz`` -> cifar10)."""
    s = source.strip()
    if s in KNOWN_SOURCES:
        return s
    low = Path(s).name.lower().replace("_", "-")
    if "cifar-100" in low or "cifar100" in low:
        return "cifar100"
    if "cifar-10" in low or "cifar10" in low:
        return "cifar10"
    if "imagenet" in low or "ilsvrc" in low:
        return "imagenet"
    return None


def _packed_facts(path: Path) -> tuple[int, tuple[int, ...] | None, int] | None:
    """(classes, shape or None, train count) from a packed data set's index.json, if any."""
    index = path / "index.json"
    if not index.is_file():
        return None
    try:
        info = json.loads(index.read_text())
        shape = tuple(int(v) for v in info["shape"]) if info.get("shape") else None
        return len(info["classes"]), shape, int(info["splits"]["train"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConvzooError(f"{index}: not a readable packed-dataset index") from None


def data_facts(cfg: C.Config, *, model_default: bool = False) -> DataFacts:
    """Classes, stored image shape and training-set size of ``cfg.data`` (nothing is loaded).

    Known names (and paths whose file name says cifar10 / cifar100 / imagenet) use the data set's
    published figures; a packed data set uses its index.json. With ``model_default`` (a bare
    ``--model``), or a source that cannot be identified, the model's registry defaults are used:
    its input size and class count, and 50,000 training images for inputs up to 64 px (CIFAR)
    or 1,281,167 above (ImageNet). ``data.image_size`` and ``channels`` are applied by the
    one geometry rule (`convzoo.data.images.resolve_geometry`), ``limit`` and ``val_fraction``
    as ``load_dataset`` would.
    """
    entry = get_entry(cfg.model.name)
    name = None if model_default else _known_name(cfg.data.source)
    shape: tuple[int, ...] | None = None
    if name is not None:
        classes, channels, side, train = KNOWN_SOURCES[name]
        if name == "imagenet" and cfg.augment.random_resized_crop:
            side = round(cfg.augment.random_resized_crop / EVAL_CROP_FRACTION)
        shape = (channels, side, side)
    else:
        packed = None if model_default else _packed_facts(Path(cfg.data.source).expanduser())
        if packed is not None:
            classes, shape, train = packed
            name = Path(cfg.data.source).name
        else:
            name = f"{entry.name}-default"
            classes = default_num_classes(entry.name)
            train = CIFAR_TRAIN if entry.input_size[1] <= 64 else IMAGENET_TRAIN
            if not model_default:
                log.warning(f"bench: data source '{cfg.data.source}' not identified without "
                            f"loading it; using {entry.name}'s defaults ({classes} classes, "
                            f"{train:,} images/epoch; set --train-images)")
        if shape is None:  # a model default, or a pack of mixed sizes (JPEG)
            rrc = cfg.augment.random_resized_crop
            side = round(rrc / EVAL_CROP_FRACTION) if rrc else entry.input_size[1]
            shape = (entry.input_size[0], side, side)
    c, h, w = shape
    geometry = resolve_geometry(c, Counter({(h, w): 1}), channels=cfg.data.channels,
                                image_size=cfg.data.image_size, resize=cfg.data.resize,
                                name=name)
    if cfg.data.limit:
        train = min(train, cfg.data.limit)
    if cfg.data.val_fraction:
        train -= round(cfg.data.val_fraction * train)
    return DataFacts(name, classes, geometry.shape, train)


# ----------------------------------------------------------------------------- memory


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``); a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_cpu_primed = False


def _prime_cpu_runtime() -> None:
    """Run one tiny training step once per process, so that the CPU runtime's one-time
    allocations (thread pools, kernel caches) are not charged to the first row measured."""
    global _cpu_primed
    if _cpu_primed:
        return
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    nn.functional.cross_entropy(net(x), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()
    _cpu_primed = True


class CpuPeakMemory:
    """Peak RSS increase of this process over a region, in MiB.

    On Linux the kernel's peak (VmHWM) is reset first (``/proc/self/clear_refs``), so the peak
    is that of the region alone. Elsewhere ``ru_maxrss`` is used, which only grows: the figure
    is then a lower bound when an earlier peak of the process was higher.
    """

    def __init__(self) -> None:
        _prime_cpu_runtime()
        gc.collect()
        _release_free_heap()  # else memory freed by an earlier row still counts as resident
        self.exact = False
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the RSS
            self.exact = _proc_status_kib("VmHWM") is not None
        except OSError:
            pass
        self.base_kib = _proc_status_kib("VmRSS") if self.exact else self._maxrss_kib()

    @staticmethod
    def _maxrss_kib() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss // 1024 if platform.system() == "Darwin" else rss  # bytes on macOS

    def increase_mb(self) -> float:
        peak = _proc_status_kib("VmHWM") if self.exact else self._maxrss_kib()
        return max(0, (peak or 0) - (self.base_kib or 0)) / 1024


# ----------------------------------------------------------------------------- timing


class SyntheticLoader:
    """``steps`` training batches drawn from one resident pool of random uint8 images.

    Each batch is a random permutation of the pool, preprocessed and augmented on the device
    by the loaders' one stage (`Stage.apply`); like a loader it has ``preprocess``, ``head``
    and ``set_epoch`` (``data_dependent_init`` uses the first two).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int, preprocess: Any,
                 augment: Any, seed: int = 0) -> None:
        self.images, self.labels = images, labels  # (B, C, H, W) uint8, (B,) int64 on the device
        self.steps, self.preprocess, self.augment, self.seed = steps, preprocess, augment, seed
        self.stage = Stage(preprocess, augment, seed=seed)

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        pass  # every synthetic epoch draws from the same seeded generator

    def head(self, n: int) -> torch.Tensor:
        """The first `n` pool images (0 = all), uint8 (n, C, H, W) on the device."""
        return self.images[:n] if n else self.images

    def __iter__(self) -> Any:
        generator = torch.Generator(device=self.images.device).manual_seed(self.seed)
        n = self.images.shape[0]
        for _ in range(self.steps):
            index = torch.randperm(n, generator=generator, device=self.images.device)
            # the stage's batched steps, as training runs them: policy, preprocess, augment,
            # erasing, mixing (targets soft when the recipe mixes)
            yield self.stage.apply(self.images[index], self.labels[index], index, generator, 1)


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU's, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


@dataclass
class SyntheticData:
    """What ``build_run`` needs of a data pipeline, for synthetic images (see ``synthetic_data``)."""

    classes: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W)
    train: SyntheticLoader
    preprocess: Any


def synthetic_data(cfg: C.Config, facts: DataFacts, rt: Any) -> SyntheticData:
    """One batch of random uint8 images and labels on the device, preprocessed (fitted on
    them) and augmented as the recipe's real data would be."""
    batch = cfg.train.batch_size
    gen = torch.Generator().manual_seed(cfg.train.seed)
    images = torch.randint(0, 256, (batch, *facts.image_shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, facts.num_classes, (batch,), generator=gen)
    preprocess = fit_preprocessor(cfg.preprocess, images).to(rt.device)
    augment = build_train_augment(cfg.augment, seed=cfg.train.seed,
                                  num_classes=facts.num_classes, channels=facts.image_shape[0])
    loader = SyntheticLoader(images.to(rt.device), labels.to(rt.device), 1, preprocess, augment)
    return SyntheticData([str(i) for i in range(facts.num_classes)], facts.image_shape, loader,
                         preprocess)


def _timed_steps(cfg: C.Config, facts: DataFacts, rt: Any, steps: int, warmup: int,
                 steps_per_epoch: int) -> tuple[int, float]:
    """Build the run exactly as training does (``setup.build_run``: model, data-dependent init,
    optimizer, schedule, scaler, EMA, compile), run ``warmup`` steps, then time ``steps``.

    Returns (trainable params, seconds of the timed steps). Everything built here is freed on
    return.
    """
    data = synthetic_data(cfg, facts, rt)
    run = build_run(cfg, rt, data, steps_per_epoch=steps_per_epoch)
    if hasattr(run.model, "set_epoch"):  # model-side schedule (fast family), as in epoch 1
        run.model.set_epoch(1)
    lrs = run.schedule.epoch_lrs(1)

    def steps_of(n: int, seed: int) -> None:
        loader = SyntheticLoader(data.train.images, data.train.labels, n, data.preprocess,
                                 data.train.augment, seed=seed)
        train_one_epoch(run, loader, [lrs[i % len(lrs)] for i in range(n)])

    if warmup:
        steps_of(warmup, seed=1)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    t0 = time.perf_counter()
    steps_of(steps, seed=2)  # train_one_epoch ends with .tolist(): the device has finished
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    return run.params, time.perf_counter() - t0


def bench_config(cfg: C.Config, facts: DataFacts, *, steps: int = 20, warmup: int = 3,
                 label: str = "") -> dict[str, Any]:
    """Time ``steps`` training steps of ``cfg``'s model on synthetic data; one table row."""
    if steps < 1 or warmup < 0:
        raise ConvzooError(f"bench: --steps must be >= 1 and --warmup >= 0 (got {steps}, {warmup})")
    rt = resolve_runtime(cfg.train)
    if rt.world_size > 1:
        raise ConvzooError("bench runs in one process: do not launch it with torchrun")
    configure_backends(cfg.train, rt.device)  # threads, determinism, cuDNN autotuning
    if cfg.train.compile:
        warmup = max(warmup, 1)  # the first step compiles: never time it
    batch = cfg.train.batch_size
    if batch < 1:
        raise ConvzooError(f"train.batch_size must be >= 1, got {batch}")
    steps_per_epoch = max(1, facts.train_images // batch)  # drop_last, as training does

    if rt.device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(rt.device)
        memory_kind = "cuda max allocated"
    else:
        cpu_memory = CpuPeakMemory()
        memory_kind = "cpu peak RSS increase" if cpu_memory.exact else "cpu peak RSS (lower bound)"
    params, seconds = _timed_steps(cfg, facts, rt, steps, warmup, steps_per_epoch)
    if rt.device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(rt.device) / 2**20
    else:
        memory = cpu_memory.increase_mb()
    gc.collect()
    if rt.device.type == "cuda":
        torch.cuda.empty_cache()

    per_step = seconds / steps
    return {
        "model": cfg.model.name,
        "recipe": cfg.name,
        "source": label or (f"recipe {cfg.name}" if cfg.name else "defaults"),
        "params": params,
        "batch_size": batch,
        "peak_memory_mb": memory,
        "memory_kind": memory_kind,
        "seconds_per_epoch": per_step * steps_per_epoch,
        "images_per_second": batch / per_step,
        "error": None,
        "data": facts.name,
        "num_classes": facts.num_classes,
        "input": "x".join(str(v) for v in facts.image_shape),
        "train_images": facts.train_images,
        "steps": steps,
        "warmup": warmup,
        "device": str(rt.device),
        "device_name": device_name(rt.device),
        "precision": rt.precision,
        "channels_last": rt.channels_last,
        "compile": cfg.train.compile,
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- runs


def run_row(run_dir: str | Path) -> dict[str, Any]:
    """A table row from a finished run: measured s/epoch, images/s, peak memory, final error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (
        (run_dir / "summary.json").is_file() or (run_dir / "metrics.jsonl").is_file()
    ):
        raise ConvzooError(f"--runs {run_dir}: not a run directory (no summary.json)")
    if not (run_dir / "summary.json").is_file():
        raise ConvzooError(f"--runs {run_dir}: no summary.json (has the run finished?)")
    row = report.summary_row(run_dir)
    summary = report.read_summary(run_dir)
    device = str(summary.get("device") or "")
    row.update({
        "source": f"run {run_dir}",
        "memory_kind": "cuda max allocated" if device.startswith("cuda") else
        ("cpu peak RSS (process)" if device else ""),
        "data": summary.get("data"),
        "epochs": summary.get("epochs"),
        "device": device,
        "torch": summary.get("torch"),
    })
    return row


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class BenchJob:
    """One row to measure: a validated config and the data facts it trains on."""

    cfg: C.Config
    facts: DataFacts
    label: str


def plan_jobs(recipes: list[str], models: list[str], overrides: dict[str, Any],
              train_images: int | None = None) -> list[BenchJob]:
    """Validated configs for every recipe and bare model (all errors before any timing)."""
    jobs = []
    explicit_source = "source" in overrides.get("data", {})
    for name in recipes:
        cfg = C.from_dict(C.merge(C.load_recipe(name), overrides))
        jobs.append(BenchJob(cfg, data_facts(cfg), f"recipe {cfg.name or name}"))
    for name in models:
        get_entry(name)  # unknown names fail here, with suggestions
        cfg = C.from_dict(C.merge({"model": {"name": name}}, overrides))
        facts = data_facts(cfg, model_default=not explicit_source)
        jobs.append(BenchJob(cfg, facts, "defaults" if not explicit_source
                             else f"defaults, data {cfg.data.source}"))
    if train_images is not None:
        if train_images < 1:
            raise ConvzooError(f"--train-images must be >= 1, got {train_images}")
        jobs = [BenchJob(j.cfg, C.replace(j.facts, train_images=train_images), j.label)
                for j in jobs]
    return jobs


def bench(recipes: list[str], models: list[str], runs: list[str | Path], *,
          overrides: dict[str, Any] | None = None, steps: int = 20, warmup: int = 3,
          train_images: int | None = None) -> list[dict[str, Any]]:
    """Rows for each recipe, then each bare model (timed), then each run directory (read)."""
    if not (recipes or models or runs):
        raise ConvzooError("bench: give at least one --recipe, --model or --runs")
    jobs = plan_jobs(recipes, models, overrides or {}, train_images)
    run_rows = [run_row(r) for r in runs]  # read first: a bad path fails before any timing
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, j in enumerate(jobs, 1):
        log.info(f"bench {i}/{len(jobs)}: {j.label} ({j.cfg.model.name}, batch "
                 f"{j.cfg.train.batch_size}, {warmup} + {steps} steps)")
        rows.append(bench_config(j.cfg, j.facts, steps=steps, warmup=warmup, label=j.label))
        spent = time.perf_counter() - t0
        left = spent / i * (len(jobs) - i)
        log.info(f"bench {i}/{len(jobs)}: {rows[-1]['images_per_second']:.0f} img/s in "
                 f"{format_seconds(spent)} so far" + (f", about {format_seconds(left)} left"
                                                       if i < len(jobs) else ""))
    return rows + run_rows


# ----------------------------------------------------------------------------- output


def environment(rows: list[dict[str, Any]]) -> str:
    """The header line: device(s) measured on, torch version, date."""
    devices = sorted({r["device_name"] for r in rows if r.get("device_name")})
    if not devices:
        devices = [device_name(torch.device("cpu"))]
    return (f"convzoo bench on {'; '.join(devices)} | torch {torch.__version__} | "
            f"{datetime.now().strftime('%Y-%m-%d %H:%M')}")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The header line, then the Markdown table (one line per row, '-' where unknown)."""
    return environment(rows) + "\n\n" + report.bench_table(rows)


# Columns that, when every row has the same value, a terminal table states once in its header
# line instead (they cost 35 columns; the Markdown of --out-md keeps them).
SHARED_COLUMNS = {"memory_kind": "memory", "train_images": "images/epoch"}


def text(rows: list[dict[str, Any]], *, wide: bool = False) -> str:
    """The header line, then the table for a terminal: within 100 columns (``SHARED_COLUMNS``
    said once in the header line, long sources and models shortened; --out-md keeps the full
    Markdown), every column with ``wide``."""
    columns = list(report.BENCH_COLUMNS)
    shared = []
    for key, label in SHARED_COLUMNS.items():
        spec = next(c for c in columns if c[0] == key)
        values = {report.format_bench_value(key, report.bench_value(r, key, spec[2]))
                  for r in rows}
        if not wide and len(values) == 1:
            columns.remove(spec)
            shared.append(f"{label}: {values.pop()}")
    header = [h for _, h, _ in columns]
    body = [[report.format_bench_value(k, report.bench_value(row, k, a)) for k, _, a in columns]
            for row in rows]
    numbers = [h for k, h, _ in columns if k not in report.TEXT_COLUMNS]
    table = fit_table(body, header, UNLIMITED if wide else WIDTH, shrink=("source", "model"),
                      right=numbers)
    head = [environment(rows)] + (["; ".join(shared)] if shared else [])
    if not wide:
        head = [line for text in head for line in textwrap.wrap(text, WIDTH)]
    return "\n".join(head) + "\n\n" + table


def write_outputs(rows: list[dict[str, Any]], out_md: str | Path | None = None,
                  out_csv: str | Path | None = None) -> list[Path]:
    """Write the Markdown table and/or the CSV (raw values, via ``report.write_bench_csv``),
    each checked and written atomically (``outputs.write_output``)."""
    written = []
    if out_md:
        text = markdown(rows)
        written.append(write_output(Path(out_md), lambda tmp: tmp.write_text(text),
                                    option="--out-md", suffixes=(".md",)))
    if out_csv:
        written.append(write_output(Path(out_csv), lambda tmp: report.write_bench_csv(rows, tmp),
                                    option="--out-csv", suffixes=(".csv",)))
    return written
