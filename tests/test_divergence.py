"""Divergence is an error: a non-finite loss (or weights) stops the run with one line naming the
epoch, the step and the lr, exits non-zero, and saves nothing of that epoch."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from convzoo.cli import main
from convzoo.models import registry
from convzoo.training import divergence, rundir

ARGS = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=200",
        "--batch-size", "32", "--seed", "1", "--device", "cpu",
        "--set", "train.loggers=[]", "--set", "train.threads=1"]
LINE = re.compile(r"^convzoo: error: training diverged in epoch (\d+), step (\d+)/(\d+): "
                  r"the loss is (nan|inf) \(lr ([0-9.e+-]+)\); nothing of epoch \1 was saved; "
                  r"lower optim.lr or set optim.grad_clip$")


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("convzoo:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("lr", ["1e6", "1e9", "1e30"])
def test_a_huge_lr_stops_a_fresh_run_with_one_line_and_leaves_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lr: str
) -> None:
    code = main(["train", *ARGS, "--epochs", "3", "--lr", lr, "--out", str(tmp_path),
                 "--name", "x"])
    line = error_line(capsys)
    assert code == 2
    m = LINE.match(line)
    assert m, line
    epoch, step, steps = map(int, m.group(1, 2, 3))
    assert steps == 200 // 32 and 1 <= step <= steps and epoch >= 1
    assert float(m.group(5)) > 0
    assert not any(tmp_path.iterdir())  # no checkpoint yet: no half-made run directory


def test_divergence_keeps_the_last_good_epoch_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *ARGS, "--epochs", "2", "--out", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "config.yaml"}
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--epochs", "4", "--lr", "1e9"])
    m = LINE.match(error_line(capsys))
    assert code == 2 and m and m.group(1) == "3"
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "config.yaml"}
    assert after == before  # last.pt, best.pt, model.safetensors, metrics, summary: epoch 2's
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and divergence.weights_finite(last["model"].values())


class Calls(nn.Module):
    """A tiny classifier whose forward passes are counted; ``inf`` makes its logits infinite."""

    calls = 0

    def __init__(self, num_classes: int = 10, in_chans: int = 3, inf: bool = False,
                 inf_eval: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chans * 8 * 8, num_classes)
        self.inf, self.inf_eval = inf, inf_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            Calls.calls += 1
        out = self.fc(x.flatten(1))
        bad = self.inf if self.training else self.inf_eval
        return out + float("inf") if bad else out


class InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient: the loss stays finite, the step's update does not."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g * float("inf")


class Overflow(Calls):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return InfGrad.apply(self.fc(x.flatten(1)))


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, cls in [("calls_net", Calls), ("overflow_net", Overflow)]:
        monkeypatch.setitem(registry._REGISTRY, name,
                            registry.ModelEntry(name, cls, "test", (3, 8, 8)))
    Calls.calls = 0


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_model_that_produces_inf_stops_at_the_first_progress_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], models: None, log_every: int
) -> None:
    code = main(["train", *ARGS, "--model", "calls_net", "--set", "model.kwargs={inf: true}",
                 "--set", f"train.log_every={log_every}", "--epochs", "2",
                 "--out", str(tmp_path)])
    m = LINE.match(error_line(capsys))
    assert code == 2 and m and m.group(1, 2) == ("1", "1")  # the loss: inf - inf = nan
    # Found where the loop syncs anyway (the progress read), not after the whole epoch.
    assert Calls.calls == log_every < 200 // 32


def test_outputs_that_overflow_on_the_eval_data_stop_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], models: None
) -> None:
    # Finite weights and training loss, but the eval outputs overflow: as useless as NaN.
    # (A resume keeps its model, so the overflow is there from the first epoch.)
    code = main(["train", *ARGS, "--model", "calls_net", "--epochs", "2", "--out", str(tmp_path),
                 "--name", "r", "--set", "model.kwargs={inf_eval: true}"])
    line = error_line(capsys)
    assert code == 2
    assert line.startswith("convzoo: error: training diverged in epoch 1: the test loss is nan "
                           "(lr ")
    assert not (tmp_path / "r").exists()  # diverged before its first checkpoint: no run left


def test_weights_that_overflow_in_the_last_step_are_never_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], models: None
) -> None:
    # One step per epoch (the batch is the whole split): its loss is finite, its update is not.
    args = [a if a != "32" else "200" for a in ARGS]
    code = main(["train", *args, "--model", "overflow_net", "--epochs", "2",
                 "--set", "optim.momentum=0", "--out", str(tmp_path)])
    line = error_line(capsys)
    assert code == 2
    assert line.startswith("convzoo: error: training diverged in epoch 1: the weights are not "
                           "finite after its last step (lr ")
    assert not any(tmp_path.iterdir())


def test_the_run_directory_never_writes_non_finite_weights(tmp_path: Path) -> None:
    ckpt = {"epoch": 5, "model": {"w": torch.tensor([1.0, float("nan")]),
                                  "n": torch.tensor(3)}, "metrics": {"epoch": 5}}

    class Log:
        def write(self, row: dict[str, Any]) -> None:
            (tmp_path / "metrics.jsonl").write_text(json.dumps(row))

    with pytest.raises(divergence.Diverged, match="weights after epoch 5 are not finite"):
        rundir.save_epoch(tmp_path, ckpt, Log(), checkpoint=True, best=True, summary={})
    assert not any(tmp_path.iterdir())
