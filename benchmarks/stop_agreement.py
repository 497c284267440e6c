"""What the per-step stop agreement of ``training/preempt.py`` costs: ``StepControl.after_step``
(wait for the previous step's non-blocking 8-byte all-reduce on its own gloo group, start the
next one) between steps of a fixed CPU workload, in W processes on this machine.

Blocks of steps with and without the agreement alternate (so a change of load hits both), and
the script prints the median time of one ``after_step`` call and the median step time of each
side. The processes are started with ``torch.multiprocessing`` over gloo on 127.0.0.1.

Example::

    python benchmarks/stop_agreement.py --world 2 --steps 400 --work 256
    python benchmarks/stop_agreement.py --quick   # seconds, used by a test
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convzoo.training.preempt import StepControl, StopSignals  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="processes (2-16)")
    p.add_argument("--steps", type=int, default=400, help="steps per side (>= 10)")
    p.add_argument("--block", type=int, default=20, help="steps per alternating block")
    p.add_argument("--work", type=int, default=256,
                   help="a step is 4 matmuls of WORK x WORK floats (the compute it overlaps)")
    p.add_argument("--quick", action="store_true", help="2 processes, 40 steps, small work")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.world, args.steps, args.block, args.work = 2, 40, 10, 64
    if not 2 <= args.world <= 16:
        p.error(f"--world {args.world}: expected 2 to 16 processes")
    if args.steps < 10 or args.block < 1 or args.work < 1:
        p.error("--steps must be >= 10, --block and --work >= 1")
    return args


def worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=args.world)
    control = StepControl(StopSignals(), args.world)
    a = torch.randn(args.work, args.work)
    step_times: dict[bool, list[float]] = {True: [], False: []}
    call_times: list[float] = []
    n, agreed = 0, True
    while min(len(v) for v in step_times.values()) < args.steps:
        for _ in range(args.block):
            t0 = time.perf_counter()
            for _ in range(4):
                a = (a @ a).tanh_()
            if agreed:
                t1 = time.perf_counter()
                control.after_step(n)
                call_times.append(time.perf_counter() - t1)
            step_times[agreed].append(time.perf_counter() - t0)
            n += 1
        if agreed:
            control.epoch_end()  # drain, so the blocks without it carry nothing in flight
        torch.distributed.barrier()
        agreed = not agreed
    if rank == 0:
        Path(out).write_text(json.dumps({
            "call_us": statistics.median(call_times) * 1e6,
            "step_ms_with": statistics.median(step_times[True]) * 1e3,
            "step_ms_without": statistics.median(step_times[False]) * 1e3}))
    torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"stop_agreement-{os.getpid()}.json"
    mp.spawn(worker, args=(args, port, str(out)), nprocs=args.world)
    figures = json.loads(out.read_text())
    out.unlink()
    figures.update(world=args.world, steps=args.steps, work=args.work, date=str(date.today()),
                   torch=torch.__version__, cores=os.cpu_count())
    print(f"stop agreement, {args.world} processes (gloo, CPU), {args.steps} steps per side: "
          f"after_step {figures['call_us']:.0f} us median; step {figures['step_ms_with']:.3f} ms "
          f"with, {figures['step_ms_without']:.3f} ms without")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
