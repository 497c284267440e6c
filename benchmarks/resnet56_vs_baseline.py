"""ResNet-56, neon protocol (seed B): seconds per epoch and peak memory, convzoo vs plain PyTorch.

Same model (convzoo's ``resnet56``), same batch (128), same augmentation (pad 4 + random crop +
horizontal flip, per-channel normalisation), SGD momentum 0.9 lr 0.1 wd 1e-4, same images (an
image-folder tree of JPEGs, by default the CIFAR-10 copy):

- baseline: the textbook loop: ``torchvision.datasets.ImageFolder`` + ``DataLoader(workers,
  shuffle, pin_memory)`` + ``transforms.v2`` per image, fp32, default memory format, and
  ``loss.item()`` every step for the running loss;
- convzoo: ``fit`` with the same settings: device-resident uint8 data, batched augmentation on
  the device, bf16 autocast and channels_last on CUDA (fp32 on CPU), fused SGD, no host sync
  per step; ``--compile`` adds torch.compile (compile time reported separately).

Each side runs in its own process (so peak memory is its own): ``--epochs`` epochs, the first is
a warm-up (cuDNN autotuning, worker start-up, compilation) and is not counted; the figure is the
mean of the rest. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak
RSS on CPU.

    python benchmarks/resnet56_vs_baseline.py --epochs 3 --workers 8
    python benchmarks/resnet56_vs_baseline.py --quick    # CPU, resnet20, 64 images: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get(
    "CONVZOO_CIFAR10_JPEG", ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))
MEAN = [125.307, 122.961, 113.8575]  # CIFAR-10 channel statistics, 0-255 scale
STD = [62.985, 62.0925, 66.708]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image_folder(data: str, workdir: Path, limit: int, size: int = 32) -> Path:
    """An image-folder tree (``train/<class>/*``) of ``data``: the extracted tarball, the folder
    itself, or (``digits``, ``limit``) a small PNG tree written from convzoo's sources."""
    path = Path(data)
    if path.is_dir() and (path / "train").is_dir() and not limit:
        return path
    if path.suffixes[-2:] == [".tar", ".gz"] and not limit:
        out = workdir / "extracted"
        if not out.is_dir():
            with tarfile.open(path) as tar:
                tar.extractall(out, filter="data")
        return next(p for p in out.iterdir() if (p / "train").is_dir())
    # a subset (or a named set): write PNGs from convzoo's decoded arrays
    from PIL import Image

    from convzoo.config import DataConfig
    from convzoo.data.loading.registry import load_dataset

    out = workdir / f"folder-{path.name}-{limit}-{size}"
    if (out / "train").is_dir():
        return out
    ds = load_dataset(DataConfig(source=data, limit=limit, download=False, image_size=size,
                                 channels=3))
    tmp = out.with_name(out.name + ".making")
    for name in ("train", "test"):  # convzoo evaluates on test at the end (not timed)
        split = ds.splits[name]
        for i, (img, label) in enumerate(zip(split.images, split.labels.tolist(), strict=True)):
            f = tmp / name / ds.classes[label] / f"{i:05d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(f)
    tmp.rename(out)
    return out


def run_baseline(folder: Path, args: argparse.Namespace) -> dict:
    """The plain PyTorch loop; returns per-epoch seconds and peak memory."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    from convzoo.models import create_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    transform = v2.Compose([
        v2.RandomCrop(args.image_size, padding=4), v2.RandomHorizontalFlip(), v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD]),
    ])
    data = datasets.ImageFolder(str(folder / "train"), transform=transform)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        pin_memory=device.type == "cuda")
    model = create_model(args.model, num_classes=len(data.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.epochs):
        t0, running = time.perf_counter(), 0.0
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()  # what plain loops do: one host sync per step
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return {"epoch_seconds": seconds, "peak_memory_mb": peak_memory_mb(device),
            "images": len(loader) * args.batch_size}


def run_convzoo(folder: Path, args: argparse.Namespace) -> dict:
    """The same training through convzoo's ``fit``; per-epoch seconds from metrics.jsonl."""
    from convzoo import config as C
    from convzoo.training.loop import fit

    cfg = C.from_dict({
        "data": {"source": str(folder), "loader": "memory"},
        "preprocess": {"kind": "channel", "mean": MEAN, "std": STD},
        "augment": {"pad": 4, "flip": True},
        "model": {"name": args.model},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "constant"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device,
                  "compile": args.compile, "out": str(args.workdir / "runs"), "name": "convzoo",
                  "loggers": [], "log_every": 10**6, "eval_every": 10**6,
                  "save_every": 10**6, "eval_batch_size": 1000},
    })
    run_dir = fit(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"epoch_seconds": [r["seconds"] for r in rows], "peak_memory_mb": max(
        r["peak_memory_mb"] for r in rows), "compile_seconds": summary["compile_seconds"],
        "images": summary["images_per_second"] * summary["train_seconds"] / len(rows)}


def measure(side: str, args: argparse.Namespace) -> dict:
    """Run one side in a fresh process (its own peak memory); returns its JSON result."""
    cmd = [sys.executable, __file__, "--side", side, "--data", args.data, "--model", args.model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers",
           str(args.workers), "--device", args.device, "--limit", str(args.limit),
           "--workdir", str(args.workdir), "--image-size", str(args.image_size)]
    cmd += ["--compile"] if args.compile else []
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"resnet56_vs_baseline: the {side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="resnet56")
    p.add_argument("--epochs", type=int, default=3, help="epochs per side; the first is warm-up")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--limit", type=int, default=0, help="train images (0 = all)")
    p.add_argument("--image-size", type=int, default=32, help="image size of a --limit subset")
    p.add_argument("--compile", action="store_true", help="torch.compile on the convzoo side")
    p.add_argument("--workdir", type=Path, default=Path("bench-resnet56"))
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--side", choices=("baseline", "convzoo"), help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="CPU check: resnet20, 64 digits images at 16 px, 2 epochs, 1 worker")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments (``--quick`` applied): counts in range, the model known."""
    from convzoo.errors import ConvzooError
    from convzoo.models import get_entry

    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.model, args.limit, args.epochs = "digits", "resnet20", 64, 2
        args.batch_size, args.workers, args.device, args.image_size = 32, 1, "cpu", 16
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    if args.batch_size < 1 or args.workers < 0 or args.limit < 0 or args.image_size < 1:
        p.error("--batch-size and --image-size must be >= 1, --workers and --limit >= 0")
    try:
        get_entry(args.model)
    except ConvzooError as e:
        p.error(f"--model: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = image_folder(args.data, args.workdir, args.limit, args.image_size)

    if args.side:  # child process: one side, one JSON line on stdout
        import convzoo.models  # noqa: F401

        result = (run_baseline if args.side == "baseline" else run_convzoo)(folder, args)
        print(json.dumps(result))
        return 0

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"resnet56_vs_baseline: torch {torch.__version__}, device {device}, {os.cpu_count()} "
          f"CPU cores, model {args.model}, batch {args.batch_size}, workers {args.workers}, "
          f"data {folder}, {args.epochs} epochs per side (first = warm-up)")
    results = {side: measure(side, args) for side in ("baseline", "convzoo")}
    rate = {}
    for side, r in results.items():
        timed = r["epoch_seconds"][1:]
        sec = sum(timed) / len(timed)
        rate[side] = 1.0 / sec
        r.update(seconds_per_epoch=sec, images_per_second=r["images"] / sec)
        extra = f", compile {r['compile_seconds']:.1f}s" if r.get("compile_seconds") else ""
        print(f"  {side:<8} {sec:8.2f} s/epoch  {r['images'] / sec:8.0f} img/s  peak memory "
              f"{r['peak_memory_mb']:8.0f} MB{extra}")
    goal = "goal >= 3x on GPU" if device != "cpu" else "CPU: loader-and-step overhead only"
    ratio = rate["convzoo"] / rate["baseline"]
    print(f"ratio: convzoo {rate['convzoo']:.3f} epochs/s vs baseline {rate['baseline']:.3f} "
          f"epochs/s = {ratio:.2f}x ({goal})")
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "device": device, "batch_size": args.batch_size,
            "workers": args.workers, "epochs": args.epochs, "compile": args.compile,
            "memory_kind": "torch.cuda.max_memory_allocated" if device != "cpu"
            else "peak RSS", "sides": results, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
