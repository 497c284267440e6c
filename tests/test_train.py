"""End-to-end training on real (tiny) data: run directory, eval agreement, resume, stages."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from convzoo.cli import main

# A few seconds per run: 360 digits images at 8x8, resnet20.
TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=360",
        "--batch-size", "32", "--set", "train.eval_batch_size=128", "--set", "augment.pad=1",
        "--set", "augment.flip=false", "--set", "train.tensorboard=false"]


def run_cli(*args: str) -> int:
    return main(list(args))


def test_run_directory_has_every_artifact_and_eval_agrees(tmp_path, capsys):
    assert run_cli("train", "--model", "resnet20", "--epochs", "2", "--out", str(tmp_path),
                   "--name", "r", *TINY, "--set", "train.tensorboard=true",
                   "--set", "schedule.name=cosine") == 0
    run = tmp_path / "r"
    for name in ["config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "last.pt",
                 "best.pt", "model.safetensors", "curves.png"]:
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # each row's lr is the one its epoch started with: cosine from 0.1 over 2 epochs
    assert [round(r["lr"], 6) for r in rows] == [0.1, 0.05]
    summary = json.loads((run / "summary.json").read_text())
    for key in ["model", "params", "epochs", "top1", "top5", "loss", "train_seconds",
                "images_per_second", "peak_memory_mb"]:
        assert summary[key] is not None, key
    assert summary["params"] == 269_722  # resnet20, 10 classes, RGB
    assert summary["epochs"] == 2 and 0 <= summary["top1"] <= 100
    assert summary["input"] == "3x8x8"
    assert summary["train_images_per_epoch"] == (360 // 32) * 32  # drop_last batches of 32
    weights = load_file(run / "model.safetensors")
    assert "fc.weight" in weights or any(k.endswith("weight") for k in weights)

    capsys.readouterr()
    assert run_cli("eval", str(run), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    for key in ["top1", "top5", "loss"]:
        assert math.isclose(result[key], summary[key], rel_tol=1e-9, abs_tol=1e-9), key


def test_resume_with_new_lr_and_more_epochs(tmp_path):
    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "s", *TINY,
                   "--set", "schedule.name=constant") == 0
    run = tmp_path / "s"
    assert run_cli("train", "--resume", str(run), "--epochs", "3", "--lr", "0.01") == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["lr"] == pytest.approx(0.1)
    assert rows[1]["lr"] == pytest.approx(0.01) and rows[2]["lr"] == pytest.approx(0.01)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3
    assert ckpt["config"]["optim"]["lr"] == 0.01


def test_recipe_stages_run_in_sequence(tmp_path):
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(
        "model: {name: resnet20}\n"
        "schedule: {name: constant}\n"
        "optim: {lr: 0.05}\n"
        "train: {epochs: 1}\n"
        "stages:\n  - {epochs: 2, set: {optim.lr: 0.01}}\n")
    assert run_cli("train", "--recipe", str(recipe), "--out", str(tmp_path), "--name", "st",
                   *TINY) == 0
    rows = [json.loads(line) for line in (tmp_path / "st/metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], round(r["lr"], 6)) for r in rows] == [(1, 0.05), (2, 0.01)]


def test_same_seed_same_weights_different_seed_different(tmp_path):
    for name, seed in [("a", "1"), ("b", "1"), ("c", "2")]:
        assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", name,
                       "--seed", seed, *TINY) == 0
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_existing_run_directory_is_never_overwritten(tmp_path):
    for _ in range(2):
        assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "x",
                       *TINY) == 0
    assert (tmp_path / "x/summary.json").exists() and (tmp_path / "x-2/summary.json").exists()


@pytest.mark.slow
def test_quickstart_reaches_95_percent(tmp_path):
    """README's promise: the offline quickstart trains to >= 95% test accuracy."""
    assert run_cli("train", "--recipe", "quickstart", "--out", str(tmp_path)) == 0
    summary = json.loads((tmp_path / "quickstart/summary.json").read_text())
    assert summary["split"] == "test"
    assert summary["top1"] >= 95.0
