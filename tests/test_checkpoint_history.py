"""Checkpoint history: the last N epochs kept as epoch-NNNN.pt (``train.keep_last``), best.pt
chosen by ``train.best_metric``; nothing but convzoo's own epoch files is ever deleted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from convzoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=360",
        "--batch-size", "32", "--set", "augment.pad=1", "--set", "augment.flip=false",
        "--set", "train.loggers=[]", "--set", "train.threads=1", "--device", "cpu",
        "--set", "data.val_fraction=0.25"]


def epoch_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("epoch-????.pt"))


def test_keep_last_keeps_the_newest_epochs_and_never_a_file_it_did_not_write(tmp_path):
    assert main(["train", *TINY, "--epochs", "3", "--out", str(tmp_path), "--name", "r",
                 "--set", "train.keep_last=2"]) == 0
    run = tmp_path / "r"
    assert epoch_files(run) == ["epoch-0002.pt", "epoch-0003.pt"]
    for n in (2, 3):
        assert torch.load(run / f"epoch-{n:04d}.pt", weights_only=True)["epoch"] == n
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    kept = torch.load(run / "epoch-0003.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], kept[k]) for k in last)

    # Files that are not convzoo's epoch checkpoints stay; one of a later epoch than the run's
    # (left by a timeline a new stage replaces) goes.
    foreign = ["epoch-3.pt", "my-epoch-0001.pt", "epoch-0001.pt.bak", "epoch-0001.pth",
               "notes/epoch-0001.pt"]
    for name in foreign:
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("mine")
    shutil.copy(run / "epoch-0003.pt", run / "epoch-0009.pt")
    assert main(["train", "--resume", str(run), "--epochs", "5", "--lr", "0.01"]) == 0
    assert epoch_files(run) == ["epoch-0004.pt", "epoch-0005.pt"]
    assert all((run / name).read_text() == "mine" for name in foreign)
    assert main(["eval", str(run / "epoch-0004.pt"), "--json"]) == 0  # an ordinary checkpoint


def test_best_metric_val_loss_keeps_the_epoch_with_the_lowest_validation_loss(tmp_path):
    assert main(["train", *TINY, "--epochs", "4", "--out", str(tmp_path), "--name", "r",
                 "--set", "train.best_metric=val_loss", "--lr", "0.2"]) == 0
    run = tmp_path / "r"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["eval_split"] for r in rows} == {"val"}
    losses = [r["eval_loss"] for r in rows]
    best = 1 + losses.index(min(losses))
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == best
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["best_metric"], summary["best_epoch"]) == ("val_loss", best)
    assert summary["best_value"] == min(losses)
    assert summary["best_top1"] == max(r["eval_top1"] for r in rows)
