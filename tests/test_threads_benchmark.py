"""benchmarks/threads.py --quick: both thread settings run `convzoo train` and the ratio prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark script in subprocesses

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "threads.py"


def test_threads_benchmark_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"run 1: threads 1: [\d.]+ s wall, load [\d.]+ before, top1 [\d.]+%", out)
    assert re.search(r"run 2: threads 2: [\d.]+ s wall", out)
    assert re.search(r"ratio: threads 2 / threads 1 wall time = [\d.]+x", out)
