"""Progress off a terminal: log lines by step and by time, and the run's ETA; and every other
command that can take a while (decode, eval, predict, pack) shows progress the same way, while
a few seconds of work stays quiet."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convzoo.cli import main
from convzoo.data import progress as progress_module
from convzoo.log import format_seconds, setup_logging
from convzoo.training.logging import Eta, Progress


def logged(capsys) -> list[str]:
    """The convzoo log lines written since the last call (the logger writes to stderr)."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_counts_steps_and_evaluations_left():
    eta = Eta(steps=100, evals=4)
    assert eta.left() is None  # nothing timed yet
    assert eta.left(steps=10, seconds=5.0) == pytest.approx(45.0)  # 90 steps at 0.5 s
    eta.done(steps=20, seconds=10.0)
    assert eta.left() == pytest.approx(40.0)  # evaluations not timed yet: not counted
    eta.done(evals=1, eval_seconds=3.0)
    assert eta.left() == pytest.approx(40.0 + 3 * 3.0)
    assert eta.left(steps=20, seconds=30.0) == pytest.approx(60 * 1.0 + 9.0)  # slower now


@pytest.mark.parametrize("seconds, text", [(7.2, "7s"), (65, "1m05s"), (3725, "1h02m")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_a_short_slow_epoch_off_a_terminal_still_logs(capsys):
    """Fewer steps than log_every, but slow: lines come every log_seconds, with the run ETA."""
    clock = Clock()
    eta = Eta(steps=20)
    progress = Progress(10, 1, 2, log_every=50, eta=eta, log_seconds=30.0, clock=clock)
    progress.tty, progress.bar = False, None  # as under CI / nohup
    setup_logging()
    logged(capsys)
    for step in range(1, 11):
        clock.now += 12.0  # 12 s per step
        progress.update(step, 32, lambda: 1.5)
    lines = logged(capsys)
    assert len(lines) == 3  # at 36 s, 72 s and 108 s
    assert lines[0].startswith("epoch 1/2 step 3/10 loss 1.5000")
    assert lines[0].endswith("run ETA 3m24s")  # 17 steps left at 12 s


def test_the_eta_after_a_resume_inside_an_epoch_counts_only_the_steps_run_since(capsys):
    """Resumed after step 40 of 48 in the last epoch: 8 steps left at 2 s each is 16 s, not the
    "run ETA 0s" that dividing by all 41 steps of the epoch gave."""
    clock = Clock()
    eta = Eta(steps=8)
    progress = Progress(48, 3, 3, log_every=1, eta=eta, clock=clock, first_step=40)
    progress.tty, progress.bar = False, None
    setup_logging()
    logged(capsys)
    clock.now += 2.0
    progress.update(41, 32, lambda: 1.0)
    assert logged(capsys)[0].endswith("run ETA 14s")  # 7 steps left at 2 s


def test_by_step_as_before(capsys):
    clock = Clock()
    progress = Progress(10, 1, 1, log_every=5, log_seconds=1e9, clock=clock)
    progress.tty, progress.bar = False, None
    setup_logging()
    logged(capsys)
    for step in range(1, 11):
        clock.now += 0.01
        progress.update(step, 8, lambda: 0.5)
    assert [line.split(" loss")[0] for line in logged(capsys)] == \
        ["epoch 1/1 step 5/10", "epoch 1/1 step 10/10"]


def test_training_and_bench_report_time_left(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--set", "data.image_size=8", "--set",
                 "data.limit=64", "--batch-size", "32", "--epochs", "2", "--out",
                 str(tmp_path), "--set", "train.loggers=[]"]) == 0
    (epoch_line,) = [ln for ln in logged(capsys) if ln.startswith("epoch 1/2 lr")]
    assert "| run ETA " in epoch_line
    assert main(["bench", "--model", "resnet20", "--model", "resnet20", "--steps", "1",
                 "--warmup", "0", "--batch-size", "4", "--device", "cpu"]) == 0
    lines = logged(capsys)
    assert any(line.startswith("bench 1/2: defaults (resnet20") for line in lines)
    assert any(line.startswith("bench 1/2:") and "left" in line for line in lines)


# ----------------------------------------------------------------------------- other commands

TRAIN = ["--set", "data.image_size=8", "--epochs", "1", "--batch-size", "8", "--seed", "0",
         "--device", "cpu", "--set", "train.loggers=[]", "--set", "train.threads=1"]


def folder(root: Path, n: int = 6) -> Path:
    for split in ("train", "test"):
        for c, cls in enumerate(("ant", "bee")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((10, 10, 3), (37 * i + 90 * c) % 256, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture
def every_update(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
                 ) -> pytest.LogCaptureFixture:
    """Progress lines at every update (the waits are seconds in real use); not a terminal."""
    monkeypatch.setattr(progress_module, "FIRST_SECONDS", 0.0)
    monkeypatch.setattr(progress_module, "LOG_SECONDS", 0.0)
    caplog.set_level("INFO", logger="convzoo")
    return caplog


def lines(caplog: pytest.LogCaptureFixture, desc: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(desc + ":")]


def test_decode_train_eval_predict_and_pack_show_progress_off_a_terminal(
    tmp_path: Path, every_update: pytest.LogCaptureFixture
) -> None:
    data = folder(tmp_path / "imgs")
    assert main(["train", "--data", str(data), *TRAIN, "--out", str(tmp_path / "runs"),
                 "--name", "r", "--set", f"data.root={tmp_path / 'root'}"]) == 0
    decoding = [m for m in (r.getMessage() for r in every_update.records)
                if re.match(r"\S*decod", m)]
    assert decoding, "the first decode of a folder shows progress"
    every_update.clear()

    run = tmp_path / "runs" / "r"
    assert main(["eval", str(run), "--data", str(data), "--batch-size", "4"]) == 0
    shown = lines(every_update, "evaluating test")
    assert shown and re.search(r"\d+/12 img \(.*/s, ETA", shown[0])  # count/total, rate, ETA
    every_update.clear()

    assert main(["predict", str(run), str(data / "test"), "--batch-size", "5"]) == 0
    shown = lines(every_update, "predicting")
    assert [re.match(r"predicting: (\d+)/12", m).group(1) for m in shown[:3]] == ["5", "10", "12"]
    every_update.clear()

    assert main(["pack", str(data), str(tmp_path / "packed"), "--workers", "1"]) == 0
    assert any("img" in m for m in (r.getMessage() for r in every_update.records)
               if "pack" in m.lower() or "encod" in m.lower())
    every_update.clear()

    # at the real waits, the same 12-image eval prints its result and no progress line
    progress_module.FIRST_SECONDS, progress_module.LOG_SECONDS = 5.0, 30.0
    assert main(["eval", str(run), "--data", str(data)]) == 0
    assert not lines(every_update, "evaluating test")


def test_progress_lines_wait_first_then_come_at_the_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([0.0, 1.0, 4.9, 5.0, 20.0, 34.9, 35.0, 36.0, 37.0]).__next__
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    caplog.set_level("INFO", logger="convzoo")
    with progress_module.progress(100, "working", unit="img") as bar:
        for _ in range(7):
            bar.update(10)
    shown = [r.getMessage() for r in caplog.records]
    # first line at 5 s (not before), the next 30 s after it, then the closing line
    assert shown == ["working: 30/100 img (6/s, ETA 12s)", "working: 60/100 img (2/s, ETA 23s)",
                     "working: 70 img in 37.0s"]
