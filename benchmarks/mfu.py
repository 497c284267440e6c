"""Model FLOPs utilisation: achieved training FLOP/s of resnet56 and fast94 vs the measured peak.

- FLOPs per training step: ``torch.utils.flop_counter.FlopCounterMode`` over one forward +
  backward of a batch (matmul/conv FLOPs, 2 per multiply-add; elementwise ops not counted).
- Achieved: the same step as convzoo's trainer (autocast bf16 on CUDA / fp32 on CPU,
  channels_last, SGD step, optional torch.compile), timed over ``--steps`` steps after
  ``--warmup`` steps, synchronised only at the ends.
- Peak: measured, not the datasheet: the best of a few large square matmuls (bf16 on CUDA,
  8192^3; fp32 on CPU, 1024^3).
- Compilation: with ``--compile`` the untimed warm-up steps compile; their wall time is printed
  (and written to ``--json``) apart as ``warmup_seconds``.

    python benchmarks/mfu.py --models resnet56,fast94 --batch 512 --compile
    python benchmarks/mfu.py --quick     # CPU, tiny batch: seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import convzoo.models  # noqa: F401  (registers the zoo)
import convzoo.models.fast  # noqa: F401  (registers the fast family)
from convzoo.models import create_model
from convzoo.runtime import autocast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` on `device`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train_step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul/conv FLOPs of one forward + backward."""
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def achieved(name: str, args: argparse.Namespace,
             device: torch.device) -> tuple[float, float, float]:
    """(FLOPs per step, achieved FLOP/s, warm-up seconds incl. any compilation) of `name`
    trained as convzoo's loop does."""
    torch.manual_seed(0)
    model = create_model(name).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    flops = train_step_flops(model, x, y)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                          momentum=0.9, fused=device.type == "cuda" or None)
    step_model = torch.compile(model) if args.compile else model
    amp = torch.bfloat16 if device.type == "cuda" else None
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with autocast(device, amp):
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return flops, flops * args.steps / (time.perf_counter() - t0), warmup_seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet56,fast94")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="CPU check: batch 8, 16 px, 2 steps")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments (``--quick`` applied): counts in range, models known."""
    from convzoo.errors import ConvzooError
    from convzoo.models import get_entry

    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.steps, args.warmup, args.device = 8, 16, 2, 1, "cpu"
    if min(args.batch, args.size, args.steps, args.warmup) < 1:
        p.error("--batch, --size, --steps and --warmup must be >= 1")
    args.model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_names:
        p.error("--models: give at least one model name")
    try:
        for name in args.model_names:
            get_entry(name)
    except ConvzooError as e:
        p.error(f"--models: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        dtype, n, name = torch.bfloat16, 8192, torch.cuda.get_device_name(device)
    else:
        dtype, n, name = torch.float32, 512 if args.quick else 1024, "cpu"
    peak = measured_peak(device, dtype, n)
    what = f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} {n}^3 matmul"
    print(f"mfu: torch {torch.__version__}, device {name}, batch {args.batch}, {args.size} px, "
          f"compile {args.compile}; measured peak {peak / 1e12:.3f} TFLOP/s ({what}; measured "
          "again after the models, the better kept)")
    measured = [achieved(model_name, args, device) for model_name in args.model_names]
    # The peak again after the models, the better of the two kept: on a shared CPU one
    # measurement taken while another job ran was low enough to put fast94 at 101%.
    peak = max(peak, measured_peak(device, dtype, n))
    rows = []
    for model_name, (flops, rate, warmup) in zip(args.model_names, measured, strict=True):
        rows.append({"model": model_name, "mflop_per_image": flops / args.batch / 1e6,
                     "tflops": rate / 1e12, "mfu_percent": 100 * rate / peak,
                     "warmup_seconds": warmup})
        print(f"MFU {model_name}: {flops / args.batch / 1e6:.1f} MFLOP per training image, "
              f"achieved {rate / 1e12:.4f} TFLOP/s = {100 * rate / peak:.1f}% of measured peak "
              f"(warm-up {warmup:.1f}s{', compile included' if args.compile else ''})")
        if rate > peak:
            print("  above 100%: the kernels did fewer FLOPs than the counted direct convolution "
                  "(e.g. Winograd) or the peak was measured under load")
    if args.json:
        args.json.write_text(json.dumps({
            "device": name, "batch": args.batch, "size": args.size, "steps": args.steps,
            "compile": args.compile, "precision": "bf16" if device.type == "cuda" else "fp32",
            "peak_tflops": peak / 1e12, "peak_what": what, "models": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
