"""Exact resume: a run killed with SIGKILL at any moment and resumed ends bit-identical."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=400",
        "--batch-size", "32", "--epochs", "6", "--seed", "3", "--device", "cpu",
        "--set", "train.loggers=[]", "--set", "train.threads=1",
        "--set", "optim.ema_decay=0.9", "--set", "augment.translate=1"]


def convzoo(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "convzoo", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def epoch_of(run: Path) -> int:
    """The epoch of the run's last.pt (0 if none yet or if it is being replaced right now)."""
    try:
        return torch.load(run / "last.pt", weights_only=True)["epoch"]
    except Exception:
        return 0


def finished(run: Path) -> bool:
    """last.pt is the commit point: the summary is written just before its final epoch lands."""
    return epoch_of(run) == 6 and (run / "summary.json").exists()


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path):
    reference = convzoo("train", *ARGS, "--out", str(tmp_path), "--name", "ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    run = tmp_path / "killed"
    # Kill the first attempt very early (before any checkpoint may exist); kill each later one
    # once its run has advanced past a new checkpoint, plus a staggered delay (mid-epoch, or
    # mid-write). Each resume must pick up from whatever was left on disk.
    delays = [0.5, 0.0, 0.3, 0.7]
    logs: list[str] = []
    proc = convzoo("train", *ARGS, "--out", str(tmp_path), "--name", "killed")
    for attempt, delay in enumerate(delays):
        if attempt > 0:  # wait for a checkpoint newer than the one this attempt started from
            start, deadline = epoch_of(run), time.monotonic() + 120
            while epoch_of(run) <= start and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        logs.append(proc.stderr.read().decode())
        if finished(run):
            break
        if not (run / "config.yaml").exists():  # killed before it wrote anything
            proc = convzoo("train", *ARGS, "--out", str(tmp_path), "--name", "killed")
        else:
            proc = convzoo("train", "--resume", str(run))
    if not finished(run):
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
        logs.append(proc.stderr.read().decode())
    assert not list(run.glob(".*.tmp")), "a temp file was left behind as if it were good"
    # Resumes really continued from checkpoints (not from scratch), from more than one epoch
    resumed = {int(m) for text in logs for m in re.findall(r"from the epoch-(\d+) checkpoint",
                                                             text)}
    assert len(resumed) >= 2 and min(resumed) >= 1, logs

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
    for key, value in ca["model"].items():
        assert torch.equal(value, cb["model"][key]), key


@pytest.mark.parametrize(("ours", "theirs", "said"), [
    (["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "x"],
     "5 vs 5 classes; only here: 'e'; only in the run: 'x'"),
    (["a", "b"], ["b", "a"], "the same 2 names in another order: class 0 is 'a' here, 'b' in"),
    ([str(i) for i in range(8)], ["0"], "8 vs 1 classes; only here: '1', '2', '3' and 4 more"),
])
def test_a_resume_onto_other_classes_says_which(ours, theirs, said):
    """It said "(5 vs 5 classes)" for five renamed classes: now the names that differ."""
    from convzoo.training.setup import class_difference

    assert class_difference(ours, theirs).startswith(said)
