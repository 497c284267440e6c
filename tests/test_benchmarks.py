"""The benchmark scripts' --quick CPU modes run, print their result lines and write the JSON
that the GPU suite (benchmarks/gpu_suite.py) turns into its tables."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import airbench_compare  # noqa: E402
import gpu_steps  # noqa: E402

pytestmark = pytest.mark.slow  # runs benchmark scripts in subprocesses


def run(script: str, tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *extra],
                          cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_airbench_compare_quick(tmp_path):
    out = run("airbench_compare.py", tmp_path, "--workdir", "ab", "--json", "ab.json")
    # the converter wrote airbench's input format
    train = torch.load(tmp_path / "ab" / "cifar10" / "train.pt")
    assert train["images"].dtype == torch.uint8 and train["images"].shape[1:] == (32, 32, 3)
    assert train["labels"].shape == (train["images"].shape[0],) and len(train["classes"]) == 10
    m = re.search(r"convzoo cifar10-fast94 \(tiny, cpu\): top1 ([\d.]+)%, timed ([\d.]+)s", out)
    assert m
    if not torch.cuda.is_available():
        assert "airbench: needs CUDA" in out and "ratio: n/a" in out
    result = json.loads((tmp_path / "ab.json").read_text())
    (top1, timed, compile_s), = result["convzoo"]["runs"]
    assert f"{top1:.2f}" == m.group(1) and f"{timed:.2f}" == m.group(2) and compile_s == 0
    assert result["summary"]["convzoo_mean_acc"] == pytest.approx(top1)
    md = gpu_steps.Airbench().markdown(result)
    assert f"| convzoo `cifar10-fast94` | 1 | {top1:.2f}% | {timed:.3f} |" in md


AIRBENCH_TABLE = [  # the printed table of airbench94_compiled.py: a warm-up run, then runs
    "|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  "
    "total_time_seconds  |",
    "|  warmup  |      1  |      2.3000  |     0.1000  |   0.1000  |               |  "
    "           1.0000  |",
    "|          |   eval  |      2.3000  |     0.1000  |   0.1000  |       0.1012  |  "
    "           9.0000  |",
    "|       0  |      1  |      0.5000  |     0.5000  |   0.6000  |               |  "
    "           1.0000  |",
    "|          |   eval  |      0.2000  |     0.9000  |   0.9300  |       0.9412  |  "
    "           2.5000  |",
    "|       1  |   eval  |      0.2000  |     0.9000  |   0.9300  |       0.9390  |  "
    "           2.7000  |",
]


def test_airbench_output_parser():
    text = "\n".join([
        "|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |",
        "|       0  |      1  |     0.5000  |   0.6000  |               |        1.0000  |",
        "|          |   eval  |     0.9000  |   0.9300  |       0.9412  |        2.5000  |",
        "|       1  |   eval  |     0.9000  |   0.9300  |       0.9390  |        2.7000  |",
    ])
    expected = [(pytest.approx(94.12), 2.5), (pytest.approx(93.9), 2.7)]
    assert airbench_compare.parse_airbench_output(text) == expected
    # the compiled script's warm-up run (random labels, ~10%) is not one of its runs
    assert airbench_compare.parse_airbench_output("\n".join(AIRBENCH_TABLE)) == expected


def fake_airbench(path: Path, pause_after: int, pause: float) -> Path:
    """A script printing airbench's table (not airbench's code): a warm-up run, then runs 0..9,
    pausing ``pause`` seconds after run ``pause_after``."""
    path.write_text(textwrap.dedent(f"""
        import time
        rows = {AIRBENCH_TABLE[:3]!r}
        for row in rows:
            print(row, flush=True)
        for run in range(10):
            print(f"|  {{run:>6}}  |      1  |  0.5  |  0.5  |  0.6  |               |  1.0  |")
            print(f"|          |   eval  |  0.2  |  0.9  |  0.9  |  0.94{{run}}  |  2.{{run}}  |")
            time.sleep({pause} if run == {pause_after} else 0.05)
        """))
    return path


def test_run_airbench_stops_after_n_runs_and_times_the_warmup(tmp_path):
    script = fake_airbench(tmp_path / "airbench94_compiled.py", pause_after=-1, pause=0)
    result = airbench_compare.run_airbench(script, tmp_path, runs=3)
    assert result["runs"] == [(pytest.approx(94.0), 2.0), (pytest.approx(94.1), 2.1),
                              (pytest.approx(94.2), 2.2)]
    assert result["stopped"] == "after 3 runs" and result["warmup_seconds"] > 0
    text = (tmp_path / "airbench_stdout.txt").read_text()
    assert "warmup" in text and "0.949" not in text  # stopped before its last run


def test_run_airbench_timeout_keeps_the_finished_runs(tmp_path):
    script = fake_airbench(tmp_path / "airbench94.py", pause_after=1, pause=60)
    t0 = time.monotonic()
    result = airbench_compare.run_airbench(script, tmp_path, runs=0, timeout=3)
    assert time.monotonic() - t0 < 30
    assert result["stopped"] == "timeout" and len(result["runs"]) == 2
    assert result["returncode"] != 0


def test_airbench_script_found_in_the_checkouts_legacy_folder(tmp_path):
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "airbench94.py").write_text("# stand-in\n")
    assert airbench_compare.find_script(tmp_path, "airbench94.py") == (
        tmp_path / "legacy" / "airbench94.py").resolve()
    with pytest.raises(SystemExit, match="airbench94_compiled.py not found in"):
        airbench_compare.find_script(tmp_path, "airbench94_compiled.py")


def test_resnet56_vs_baseline_quick(tmp_path):
    out = run("resnet56_vs_baseline.py", tmp_path, "--workdir", "r56", "--json", "r56.json")
    assert re.search(r"baseline +[\d.]+ s/epoch .* peak memory +\d+ MB", out)
    assert re.search(r"convzoo +[\d.]+ s/epoch .* peak memory +\d+ MB", out)
    m = re.search(r"ratio: convzoo ([\d.]+) epochs/s vs baseline ([\d.]+) epochs/s = ([\d.]+)x", out)
    assert m and float(m.group(3)) > 0
    ratio = float(m.group(1)) / float(m.group(2))
    assert float(m.group(3)) == pytest.approx(ratio, rel=0.05)
    result = json.loads((tmp_path / "r56.json").read_text())
    assert result["ratio"] == pytest.approx(ratio, rel=0.05)
    for side in ("baseline", "convzoo"):
        r = result["sides"][side]
        assert len(r["epoch_seconds"]) == 2  # the first is the warm-up
        assert r["seconds_per_epoch"] == pytest.approx(r["epoch_seconds"][1])
    md = gpu_steps.ResNet56().markdown(result)
    assert f"| {result['sides']['convzoo']['seconds_per_epoch']:.2f} |" in md
    assert f"= {result['ratio']:.2f}x (goal >= 3x)" in md


def test_mfu_quick(tmp_path):
    out = run("mfu.py", tmp_path, "--json", "mfu.json")
    assert re.search(r"measured peak [\d.]+ TFLOP/s", out)
    result = json.loads((tmp_path / "mfu.json").read_text())
    for name, row in zip(("resnet56", "fast94"), result["models"], strict=True):
        m = re.search(rf"MFU {name}: ([\d.]+) MFLOP per training image, .* = ([\d.]+)% of", out)
        # Not bounded by 100: counted FLOPs are the direct convolution's, and a CPU library may
        # do fewer (Winograd); the benchmark then says so.
        assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
        assert row["model"] == name and f"{row['mfu_percent']:.1f}" == m.group(2)
        assert row["mfu_percent"] == pytest.approx(100 * row["tflops"] / result["peak_tflops"])
    assert out.count("above 100%") == sum(r["mfu_percent"] > 100 for r in result["models"])
    md = gpu_steps.Mfu().markdown({"runs": [result]})
    assert md.count("| no | 8 | fp32 |") == 2


def test_stop_agreement_quick(tmp_path):
    out = run("stop_agreement.py", tmp_path, "--json", "s.json")
    m = re.search(r"after_step (\d+) us median; step ([\d.]+) ms with, ([\d.]+) ms without", out)
    assert m
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["world"] == 2 and f"{figures['call_us']:.0f}" == m.group(1)



def test_the_cpu_copy_of_an_airbench_script_runs_on_the_cpu(tmp_path):
    """--device cpu: the script's CUDA parts (fp16, .cuda(), its CUDA-event timer) replaced in a
    copy, its run count from AIRBENCH_RUNS; a script of another shape is refused in one line."""
    script = tmp_path / "airbench94.py"
    script.write_text(textwrap.dedent("""
        import os
        import torch
        def main(run, gpu=0):
            x = torch.ones(4, device=torch.device(gpu)).half().cuda()
            starter = torch.cuda.Event(enable_timing=True)
            ender = torch.cuda.Event(enable_timing=True)
            starter.record()
            y = (x * 2).sum()
            ender.record()
            torch.cuda.synchronize()
            seconds = 1e-3 * starter.elapsed_time(ender)
            print(f"|  {run:>6}  |   eval  |  0.2  |  0.9  |  0.9  |  {y.item() / 8:.4f}  |"
                  f"  {seconds:.4f}  |", flush=True)
        print("|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |"
              "  total_time_seconds  |")
        accs = [main(run) for run in range(25)]
        """))
    cpu = airbench_compare.cpu_script(script, tmp_path)
    assert "cuda" not in cpu.read_text() and ".half()" not in cpu.read_text()
    result = airbench_compare.run_airbench(cpu, tmp_path, env={"AIRBENCH_RUNS": "2",
                                                              "CUDA_VISIBLE_DEVICES": ""})
    assert result["returncode"] == 0 and len(result["runs"]) == 2
    assert result["runs"][0][0] == pytest.approx(100.0) and result["runs"][0][1] >= 0
    script.write_text("x = 1\n")
    with pytest.raises(SystemExit, match="layout changed"):
        airbench_compare.cpu_script(script, tmp_path)
