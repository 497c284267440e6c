"""Exact resume: a run killed with SIGKILL at any moment and resumed ends bit-identical."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ARGS = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=400",
        "--batch-size", "32", "--epochs", "6", "--seed", "3", "--device", "cpu",
        "--set", "train.tensorboard=false", "--set", "train.threads=1",
        "--set", "optim.ema_decay=0.9", "--set", "augment.translate=1"]


def convzoo(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "convzoo", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finished(run: Path) -> bool:
    return (run / "summary.json").exists()


def test_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path):
    reference = convzoo("train", *ARGS, "--out", str(tmp_path), "--name", "ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    run = tmp_path / "killed"
    # Kill the first attempt very early (before any checkpoint may exist), later ones mid-run
    # at staggered moments; each resume must pick up from whatever was left on disk.
    delays = [0.5, 4.0, 5.5, 7.0]
    proc = convzoo("train", *ARGS, "--out", str(tmp_path), "--name", "killed")
    for attempt, delay in enumerate(delays):
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if finished(run):
            break
        if not (run / "config.yaml").exists():  # killed before it wrote anything
            proc = convzoo("train", *ARGS, "--out", str(tmp_path), "--name", "killed")
        else:
            proc = convzoo("train", "--resume", str(run))
        assert attempt < len(delays)
    if not finished(run):
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert not list(run.glob(".*.tmp")), "a temp file was left behind as if it were good"

    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    cb = torch.load(run / "last.pt", weights_only=True)
    assert ca["epoch"] == cb["epoch"] == 6
    for key, value in ca["ema"]["module"].items():
        assert torch.equal(value, cb["ema"]["module"][key]), key
