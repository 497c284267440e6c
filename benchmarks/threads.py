"""Torch CPU threads (``train.threads``) against wall time of a whole ``convzoo train`` run.

On a machine whose cores are shared (other jobs running), torch's default of one thread per
core makes every parallel region wait for its slowest thread; one thread can then be several
times faster. This script measures it for a recipe: each setting of ``--threads`` runs the
same ``convzoo train`` command in its own process, the settings alternate (1, 2, 1, 2, ...) so
that a change of load hits both sides, and every run's wall time and the 1-minute load average
before it are printed, then the median per setting and the ratio.

Example::

    python benchmarks/threads.py --recipe quickstart --threads 1 2 --repeats 3
    python benchmarks/threads.py --quick   # seconds, used by a test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from convzoo.bench import cpu_model


def train_once(recipe: str, threads: int, out: Path, name: str, extra: list[str]) -> dict:
    """One ``convzoo train`` in a fresh process; wall seconds, load before, top-1."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "convzoo", "train", "--recipe", recipe, "--out", str(out),
           "--name", name, "--set", f"train.threads={threads}",
           "--set", "train.loggers=[]", *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"threads: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / name / "summary.json").read_text())
    return {"threads": threads, "wall": wall, "load": load, "top1": summary.get("top1")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="quickstart")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides for every run")
    p.add_argument("--quick", action="store_true",
                   help="one tiny epoch per setting (200 digits at 8 px): checks the script")
    args = p.parse_args(argv)
    extra = [a for s in args.set for a in ("--set", s)]
    if args.quick:
        args.repeats = 1
        extra += ["--set", "data.limit=200", "--set", "data.image_size=8", "--epochs", "1"]

    print(f"# {date.today()}, {cpu_model()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}")
    print(f"# command: python benchmarks/threads.py {' '.join(argv or sys.argv[1:])}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for n in args.threads:  # alternate the settings within each repeat
                row = train_once(args.recipe, n, Path(tmp), f"t{n}-{rep}", extra)
                rows.append(row)
                print(f"run {len(rows)}: threads {n}: {row['wall']:.1f} s wall, "
                      f"load {row['load']:.2f} before, top1 {row['top1']:.2f}%", flush=True)
    medians = {n: statistics.median(r["wall"] for r in rows if r["threads"] == n)
               for n in args.threads}
    for n, m in medians.items():
        walls = ", ".join(f"{r['wall']:.1f}" for r in rows if r["threads"] == n)
        print(f"threads {n}: median {m:.1f} s ({walls})")
    base = args.threads[0]
    for n in args.threads[1:]:
        print(f"ratio: threads {n} / threads {base} wall time = {medians[n] / medians[base]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
