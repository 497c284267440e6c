"""Augmentation throughput: convzoo's batched per-image-random ops vs `transforms.v2` per image.

Each row times one op (or pipeline) on one batch, in ms per batch, both sides drawing fresh
random parameters for every image:

- convzoo: one call on the float (B, C, H, W) batch on ``--device`` (0-255 pixels for the colour
  ops and policies, normalised pixels for erasing and mixing), `convzoo.data.transforms.policies`,
  `convzoo.data.transforms.resample`, `convzoo.data.transforms.mixing`.
- v2 per image: the `torchvision.transforms.v2` transform called on each (C, H, W) image of the
  batch (uint8 for the pixel ops, torchvision's fast path and its usual input; float for erasing)
  and the results stacked into a batch, i.e. what a DataLoader worker does per sample. MixUp and
  CutMix are batch transforms in v2 (one lambda per batch) and are timed on the batch.
- kornia: its batched augmentations, if kornia is installed (it is not in convzoo's env: the
  column then says so).

Rows: every policy op with a per-image magnitude, ColorJitter, RandomErasing, the
random-resized crop (from 1.15x the size; the separable one, and with antialiasing, against v2's
default antialiased RRC), the three policies, mixup/cutmix, and two full pipelines (policy ->
normalise -> flip -> mixup/cutmix; at 224 px RRC first), convzoo's being the training stage
(`convzoo.data.transforms.stage.Stage`) from the uint8 batch. Timing: ``--repeats`` rounds after one
warm-up, the sides alternating within each round (so a load change hits both); the median and
the [min, max] spread are printed (``--json FILE``: every time of every row). On a shared
machine, ``--clock cpu --threads 1`` reports CPU time instead, which other jobs inflate far less
than elapsed time.

Example::

    python benchmarks/augment_throughput.py                 # CPU, 2 threads, 32 and 224 px
    python benchmarks/augment_throughput.py --device cuda   # the convzoo side on the GPU
    python benchmarks/augment_throughput.py --quick         # seconds; used by a test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.transforms import v2

from convzoo.bench import cpu_model
from convzoo.config import AugmentConfig
from convzoo.data.transforms import augment, policies, resample
from convzoo.data.transforms.mixing import MixUpCutMix
from convzoo.data.transforms.preprocess import Preprocessor
from convzoo.data.transforms.stage import Stage

MEAN = torch.tensor([125.307, 122.95, 113.865]).view(1, 3, 1, 1)  # CIFAR-10, 0-255 scale
STD = torch.tensor([62.9932, 62.0887, 66.7048]).view(1, 3, 1, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """One row: a name and a side -> callable-of-nothing for each available side."""

    def __init__(self, name: str, sides: dict[str, Callable[[], object] | str]) -> None:
        self.name = name
        self.sides = sides


def _per_image(fn: Callable[[torch.Tensor], torch.Tensor], images: list[torch.Tensor]
               ) -> Callable[[], torch.Tensor]:
    return lambda: torch.stack([fn(img) for img in images])


def _kornia_cases(x: torch.Tensor, size: int) -> dict[str, Callable[[], object] | str]:
    """kornia's batched counterparts, or a note when kornia is not installed."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return {}
    x01 = x / 255
    return {
        "ColorJitter": lambda: K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)(x01),
        "RandAugment(2, 9)": lambda: K.auto.RandAugment(n=2, m=9)(x01),
        "TrivialAugment": lambda: K.auto.TrivialAugment()(x01),
        "RandomErasing": lambda: K.RandomErasing(p=0.5)(x01),
        "RRC": lambda: K.RandomResizedCrop((size, size))(x01),
    }


def build_cases(size: int, batch: int, device: torch.device, seed: int = 0) -> list[Case]:
    g = torch.Generator(device=device).manual_seed(seed)
    src = int(round(size * 1.15))  # RRC source size: 256 -> 224, 37 -> 32
    u8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(seed))
    x = u8.float().to(device)  # convzoo: float 0-255 on the device
    images = list(u8.to(device).unbind(0))  # v2: per-image uint8 tensors
    big_u8 = torch.randint(0, 256, (batch, 3, src, src), dtype=torch.uint8)
    big = big_u8.float().to(device)
    big_images = list(big_u8.to(device).unbind(0))
    normed = ((x - MEAN.to(device)) / STD.to(device)).contiguous()
    normed_images = list(normed.unbind(0))
    labels = torch.randint(0, 10, (batch,), device=device)
    r = torch.Generator().manual_seed(seed + 1)  # v2's functional parameters

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=r))

    def magnitudes(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=g, device=device)

    F = v2.functional
    kornia = _kornia_cases(x, size)
    cases: list[Case] = []

    def add(name: str, convzoo: Callable[[], object], torchvision: Callable[[], object]) -> None:
        sides: dict[str, Callable[[], object] | str] = {"convzoo": convzoo, "v2": torchvision}
        if name in kornia:
            sides["kornia"] = kornia[name]
        cases.append(Case(name, sides))

    P = policies
    add("Brightness", lambda: P.adjust_brightness(x, magnitudes(0.1, 1.9)),
        _per_image(lambda i: F.adjust_brightness(i, u(0.1, 1.9)), images))
    add("Contrast", lambda: P.adjust_contrast(x, magnitudes(0.1, 1.9)),
        _per_image(lambda i: F.adjust_contrast(i, u(0.1, 1.9)), images))
    add("Saturation", lambda: P.adjust_saturation(x, magnitudes(0.1, 1.9)),
        _per_image(lambda i: F.adjust_saturation(i, u(0.1, 1.9)), images))
    add("Hue", lambda: P.adjust_hue(x, magnitudes(-0.5, 0.5)),
        _per_image(lambda i: F.adjust_hue(i, u(-0.5, 0.5)), images))
    add("Sharpness", lambda: P.adjust_sharpness(x, magnitudes(0.1, 1.9)),
        _per_image(lambda i: F.adjust_sharpness(i, u(0.1, 1.9)), images))
    add("Posterize", lambda: P.posterize(x, magnitudes(2, 8).round()),
        _per_image(lambda i: F.posterize(i, int(round(u(2, 8)))), images))
    add("Solarize", lambda: P.solarize(x, magnitudes(0, 255)),
        _per_image(lambda i: F.solarize(i, u(0, 255)), images))
    add("AutoContrast", lambda: P.autocontrast(x), _per_image(F.autocontrast, images))
    add("Equalize", lambda: P.equalize(x), _per_image(F.equalize, images))
    add("Rotate", lambda: P.rotate(x, magnitudes(-30, 30)),
        _per_image(lambda i: F.rotate(i, u(-30, 30)), images))
    add("ShearX", lambda: P.shear_x(x, magnitudes(-0.3, 0.3)),
        _per_image(lambda i: F.affine(i, 0.0, [0, 0], 1.0, [u(-16.7, 16.7), 0.0],
                                      center=[0, 0]), images))
    add("TranslateX", lambda: P.translate_x(x, magnitudes(-size / 3, size / 3)),
        _per_image(lambda i: F.affine(i, 0.0, [int(u(-size / 3, size / 3)), 0], 1.0,
                                      [0.0, 0.0]), images))
    jitter, tv_jitter = P.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    add("ColorJitter", lambda: jitter(x, g), _per_image(tv_jitter, images))
    erase, tv_erase = P.RandomErasing(p=0.5, mode="pixel"), v2.RandomErasing(p=0.5, value="random")
    add("RandomErasing", lambda: erase(normed, g), _per_image(tv_erase, normed_images))
    tv_rrc = v2.RandomResizedCrop(size, antialias=True)
    add("RRC", lambda: resample.random_resized_crop(big, size, g), _per_image(tv_rrc, big_images))
    add("RRC antialias", lambda: resample.random_resized_crop(big, size, g, antialias=True),
        _per_image(tv_rrc, big_images))
    ra, tv_ra = P.RandAugment(2, 9), v2.RandAugment(2, 9)
    add("RandAugment(2, 9)", lambda: ra(x, g), _per_image(tv_ra, images))
    ta, tv_ta = P.TrivialAugmentWide(), v2.TrivialAugmentWide()
    add("TrivialAugment", lambda: ta(x, g), _per_image(tv_ta, images))
    aa = P.AutoAugment("imagenet")
    tv_aa = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    add("AutoAugment imagenet", lambda: aa(x, g), _per_image(tv_aa, images))
    mix = MixUpCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")
    tv_mix = v2.RandomChoice([v2.MixUp(alpha=0.8, num_classes=10),
                              v2.CutMix(alpha=1.0, num_classes=10)])
    add("MixUp/CutMix (per image)", lambda: mix(normed, labels, g).targets(10),
        lambda: tv_mix(normed, labels))

    # Full pipelines: [RRC ->] policy -> normalise -> flip -> mixup/cutmix, giving the batch and
    # its soft targets. convzoo: the training stage itself (`Stage`, as both loaders run it: on a
    # CPU the policy on the whole batch, then crop/flip and normalisation in one pass per
    # image), from the uint8 batch. v2: the per-image part in one Compose per image, then the
    # batch mix.
    pre = Preprocessor("channel", {"mean": MEAN.flatten(), "std": STD.flatten()}).to(device)
    index = torch.arange(batch, device=device)
    for pname, tv_policy in (("TrivialAugment", tv_ta), ("RandAugment", tv_ra)):
        rrc = size >= 64
        tv_steps = ([tv_rrc] if rrc else []) + [tv_policy, v2.ToDtype(torch.float32, scale=True),
                                                v2.Normalize((MEAN / 255).flatten().tolist(),
                                                             (STD / 255).flatten().tolist()),
                                                v2.RandomHorizontalFlip()]
        tv_pipe = v2.Compose(tv_steps)
        source, source_images = (big_u8, big_images) if rrc else (u8, images)
        cfg = AugmentConfig(random_resized_crop=size if rrc else 0, pad=0, flip=True,
                            policy=pname.lower(), mixup_alpha=0.8, cutmix_alpha=1.0,
                            mix_mode="elem")
        stage = Stage(pre, augment.build_train_augment(cfg, num_classes=10))
        on_device = source.to(device)
        batches = iter(range(10**9))  # a fresh batch number (fresh draws) per call

        def convzoo_pipe(stage=stage, source=on_device, batches=batches):
            return stage(source, labels, index, 0, next(batches))

        def tv_pipeline(tv_pipe=tv_pipe, source_images=source_images):
            return tv_mix(torch.stack([tv_pipe(i) for i in source_images]), labels)

        name = f"pipeline: {'RRC + ' if rrc else ''}{pname} + mixup/cutmix"
        add(name, convzoo_pipe, tv_pipeline)
    return cases


def time_case(case: Case, repeats: int, device: torch.device, clock: Callable[[], float]
              ) -> dict[str, list[float]]:
    """ms per call of each side: one warm-up each, then `repeats` rounds alternating sides."""
    runnable = {k: f for k, f in case.sides.items() if callable(f)}
    for f in runnable.values():
        f()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in runnable}
    for rep in range(repeats):
        order = list(runnable) if rep % 2 == 0 else list(reversed(runnable))
        for k in order:
            _sync(device)
            t = clock()
            runnable[k]()
            _sync(device)
            times[k].append((clock() - t) * 1000)
    return times


def _fmt(ts: list[float] | None) -> str:
    if not ts:
        return "-"
    return f"{statistics.median(ts):8.2f} [{min(ts):.2f}-{max(ts):.2f}]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32,224", help="comma list of image sides")
    p.add_argument("--batch", default="128,32", help="batch size per side in --sizes")
    p.add_argument("--device", default="cpu", help="device of the convzoo side (cpu | cuda)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per row (after a warm-up)")
    p.add_argument("--only", default="", help="comma list of row-name prefixes to run")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time summed over its threads "
                        "(robust to other jobs on a shared machine; use with --threads 1 to read "
                        "it as single-core time)")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 round: checks it runs")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The checked arguments (the GPU suite's dry run calls this; no CUDA needed for it)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats = "16,64", "4,2", 1
    try:
        args.size_list = [int(s) for s in args.sizes.split(",")]
        args.batch_list = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error(f"--sizes {args.sizes} / --batch {args.batch}: comma lists of integers")
    if len(args.batch_list) != len(args.size_list):
        p.error(f"--batch needs one batch size per --sizes entry, got {args.batch}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device {args.device}: cpu or cuda")
    if args.device.startswith("cuda") and args.clock == "cpu":
        p.error("--clock cpu measures host CPU time: use the wall clock with --device cuda")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, batches = args.size_list, args.batch_list
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("augment_throughput: --device cuda: no CUDA device here")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    try:
        import kornia  # noqa: F401
        kornia_note = "kornia installed"
    except ImportError:
        kornia_note = "kornia: not installed here; its column is skipped"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"augment throughput: {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, python "
          f"{platform.python_version()}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}; load average at start "
          f"{load[0]:.2f}; {kornia_note}; {args.clock}-clock ms per batch, median [min-max] "
          f"of {args.repeats}")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    rows: list[dict] = []
    for size, batch in zip(sizes, batches):
        print(f"\n| op ({size} px, batch {batch}) | convzoo batched | v2 per image | kornia | "
              "v2 / convzoo |")
        print("| - | - | - | - | - |")
        for case in build_cases(size, batch, device):
            if only and not any(case.name.startswith(o) for o in only):
                continue
            times = time_case(case, args.repeats, device, clock)
            ratio = statistics.median(times["v2"]) / statistics.median(times["convzoo"])
            kornia_cell = _fmt(times.get("kornia")) if "kornia" in case.sides else "n/a"
            print(f"| {case.name} | {_fmt(times['convzoo'])} | {_fmt(times['v2'])} | "
                  f"{kornia_cell} | {ratio:6.2f}x |", flush=True)
            rows.append({"size": size, "batch": batch, "op": case.name,
                         **{f"{side}_ms": times[side] for side in ("convzoo", "v2", "kornia")
                            if times.get(side)}, "ratio": ratio})
    end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at end {end:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": str(device), "gpu": torch.cuda.get_device_name(device)
            if device.type == "cuda" else None, "threads": torch.get_num_threads(),
            "clock": args.clock, "repeats": args.repeats, "kornia": kornia_note, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
