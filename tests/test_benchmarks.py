"""The benchmark scripts' --quick CPU modes run and print their result lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *extra],
                          cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_airbench_compare_quick(tmp_path):
    out = run("airbench_compare.py", tmp_path, "--workdir", "ab")
    # the converter wrote airbench's input format
    train = torch.load(tmp_path / "ab" / "cifar10" / "train.pt")
    assert train["images"].dtype == torch.uint8 and train["images"].shape[1:] == (32, 32, 3)
    assert train["labels"].shape == (train["images"].shape[0],) and len(train["classes"]) == 10
    assert re.search(r"convzoo cifar10-fast94 \(tiny, cpu\): top1 [\d.]+%, timed [\d.]+s", out)
    if not torch.cuda.is_available():
        assert "airbench: needs CUDA" in out and "ratio: n/a" in out


def test_airbench_output_parser():
    sys.path.insert(0, str(BENCH))
    try:
        from airbench_compare import parse_airbench_output
    finally:
        sys.path.remove(str(BENCH))
    text = "\n".join([
        "|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |",
        "|       0  |      1  |     0.5000  |   0.6000  |               |        1.0000  |",
        "|          |   eval  |     0.9000  |   0.9300  |       0.9412  |        2.5000  |",
        "|       1  |   eval  |     0.9000  |   0.9300  |       0.9390  |        2.7000  |",
    ])
    assert parse_airbench_output(text) == [(pytest.approx(94.12), 2.5), (pytest.approx(93.9), 2.7)]


def test_resnet56_vs_baseline_quick(tmp_path):
    out = run("resnet56_vs_baseline.py", tmp_path, "--workdir", "r56")
    assert re.search(r"baseline +[\d.]+ s/epoch .* peak memory +\d+ MB", out)
    assert re.search(r"convzoo +[\d.]+ s/epoch .* peak memory +\d+ MB", out)
    m = re.search(r"ratio: convzoo ([\d.]+) epochs/s vs baseline ([\d.]+) epochs/s = ([\d.]+)x", out)
    assert m and float(m.group(3)) > 0
    ratio = float(m.group(1)) / float(m.group(2))
    assert float(m.group(3)) == pytest.approx(ratio, rel=0.05)


def test_mfu_quick(tmp_path):
    out = run("mfu.py", tmp_path)
    assert re.search(r"measured peak [\d.]+ TFLOP/s", out)
    for name in ("resnet56", "fast94"):
        m = re.search(rf"MFU {name}: ([\d.]+) MFLOP per training image, .* = ([\d.]+)% of", out)
        assert m and float(m.group(1)) > 0 and 0 < float(m.group(2)) <= 100
