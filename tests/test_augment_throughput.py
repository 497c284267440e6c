"""benchmarks/augment_throughput.py --quick runs every row and prints a complete table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark script in a subprocess

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "augment_throughput.py"

ROWS = ["Brightness", "Contrast", "Saturation", "Hue", "Sharpness", "Posterize", "Solarize",
        "AutoContrast", "Equalize", "Rotate", "ShearX", "TranslateX", "ColorJitter",
        "RandomErasing", "RRC", "RRC antialias", "RandAugment(2, 9)",
        "TrivialAugment", "AutoAugment imagenet", "MixUp/CutMix (per image)"]


def test_quick_mode_prints_every_row_for_both_sizes(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"augment throughput: .*torch .*threads, device cpu", out)
    assert "wall-clock ms per batch, median [min-max] of 1" in out
    tables = out.split("| op (")[1:]
    assert [t.split(" px")[0] for t in tables] == ["16", "64"]
    cell = r"\s*[\d.]+ \[[\d.]+-[\d.]+\]\s*"
    for table, pipeline in zip(tables, ["", "RRC \\+ "]):
        for name in ROWS:
            row = rf"^\| {re.escape(name)} \|{cell}\|{cell}\| (n/a|{cell}) \|\s*[\d.]+x \|$"
            assert re.search(row, table, re.M), name
        for policy in ("TrivialAugment", "RandAugment"):
            assert re.search(rf"^\| pipeline: {pipeline}{policy} \+ mixup/cutmix \|", table, re.M)
    try:
        import kornia  # noqa: F401
    except ImportError:
        assert "kornia: not installed here; its column is skipped" in out
