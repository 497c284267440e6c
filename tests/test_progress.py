"""Progress off a terminal: log lines by step and by time, and the run's ETA."""

from __future__ import annotations

import pytest

from convzoo.cli import main
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
