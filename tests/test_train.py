"""End-to-end training on real (tiny) data: run directory, eval agreement, resume, stages, EMA."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from convzoo.cli import main

# A few seconds per run: 360 digits images at 8x8, resnet20.
TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=360",
        "--batch-size", "32", "--set", "train.eval_batch_size=128", "--set", "augment.pad=1",
        "--set", "augment.flip=false", "--set", "train.loggers=[]"]
STEPS = 360 // 32  # optimizer steps per epoch (drop_last)


def run_cli(*args: str) -> int:
    return main(list(args))


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files_of(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory with its bytes and modification time."""
    return {str(p.relative_to(run)): (p.read_bytes(), os.stat(p).st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_run_directory_has_every_artifact_and_eval_agrees(tmp_path, capsys):
    assert run_cli("train", "--model", "resnet20", "--epochs", "2", "--out", str(tmp_path),
                   "--name", "r", *TINY, "--set", "train.loggers=[tensorboard,csv]",
                   "--set", "schedule.name=cosine") == 0
    run = tmp_path / "r"
    for name in ["config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "last.pt",
                 "best.pt", "model.safetensors", "curves.png"]:
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = rows_of(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    # lr_start/lr_end: the epoch's first and last step; lr: the mean over its steps (the
    # row's lr is what the epoch trained at, not only where it started)
    cosine = [0.05 * (1 + math.cos(math.pi * t / (2 * STEPS))) for t in range(2 * STEPS)]
    assert [round(r["lr_start"], 6) for r in rows] == [0.1, 0.05]
    for r, lrs in zip(rows, (cosine[:STEPS], cosine[STEPS:])):
        assert r["lr"] == pytest.approx(sum(lrs) / STEPS)
        assert r["lr_end"] == pytest.approx(lrs[-1])
    summary = json.loads((run / "summary.json").read_text())
    for key in ["model", "params", "epochs", "top1", "top5", "loss", "train_seconds",
                "images_per_second", "peak_memory_mb"]:
        assert summary[key] is not None, key
    assert summary["params"] == 269_722  # resnet20, 10 classes, RGB
    assert summary["epochs"] == 2 and 0 <= summary["top1"] <= 100
    assert summary["input"] == "3x8x8"
    assert summary["train_images_per_epoch"] == STEPS * 32  # drop_last batches of 32
    assert summary["weights"] == "raw" and summary["precision"] == "fp32"
    assert summary["best_split"] == "test" and "test split" in summary["best_note"]
    # the headline is the final epoch's figure, not best.pt's (chosen on the split it reports)
    assert summary["headline"] == "final epoch" and summary["top1"] == rows[-1]["eval_top1"]
    # model.safetensors holds exactly the final weights of last.pt
    weights = load_file(run / "model.safetensors")
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)

    capsys.readouterr()
    assert run_cli("eval", str(run), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    for key in ["top1", "top5", "loss"]:
        assert math.isclose(result[key], summary[key], rel_tol=1e-9, abs_tol=1e-9), key


def test_best_on_a_validation_split_when_there_is_one(tmp_path):
    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "v", *TINY,
                   "--set", "data.val_fraction=0.2") == 0
    summary = json.loads((tmp_path / "v/summary.json").read_text())
    assert summary["split"] == summary["best_split"] == "val" and "best_note" not in summary


def test_resume_with_new_lr_and_more_epochs(tmp_path):
    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "s", *TINY,
                   "--set", "schedule.name=constant") == 0
    run = tmp_path / "s"
    assert run_cli("train", "--resume", str(run), "--epochs", "3", "--lr", "0.01") == 0
    rows = rows_of(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["lr"] == pytest.approx(0.1)
    assert rows[1]["lr"] == pytest.approx(0.01) and rows[2]["lr"] == pytest.approx(0.01)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3
    assert ckpt["config"]["optim"]["lr"] == 0.01  # the stage's own config
    # config.yaml is the run's history: the first stage as it ran, then the new stage
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["optim"]["lr"] == 0.1 and cfg["train"]["epochs"] == 1 and cfg["started"]
    (stage,) = cfg["stages"]
    assert stage["epochs"] == 3 and stage["set"] == {"optim.lr": 0.01}
    assert stage["from_epoch"] == 1 and stage["started"] >= cfg["started"]


def test_resume_lr_starts_the_stage_under_one_cycle(tmp_path, capsys):
    """The default one-cycle: epoch 1 trains at a real lr (not "lr 0"); `--resume --lr 0.01`
    starts the new stage at 0.01 (it was 0.0053), then anneals linearly to 0."""
    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "oc", *TINY) == 0
    run = tmp_path / "oc"
    first = rows_of(run)[0]
    assert 0 < first["lr_start"] < first["lr"] and first["lr"] > 0.01  # no step at lr 0
    assert "lr 0 " not in capsys.readouterr().err
    assert run_cli("train", "--resume", str(run), "--epochs", "3", "--lr", "0.01") == 0
    rows = rows_of(run)
    assert rows[1]["lr_start"] == pytest.approx(0.01)
    assert rows[2]["lr_start"] == pytest.approx(0.005)  # halfway from epoch 1 to 3
    assert rows[2]["lr_end"] == pytest.approx(0.01 / (2 * STEPS))  # the last step before 0
    # a stage that keeps the lr continues the curve stretched to its end, without a jump
    assert run_cli("train", "--resume", str(run), "--epochs", "4") == 0
    assert rows_of(run)[3]["lr_start"] == pytest.approx(0.01 * (1 - 2 / 3))
    stages = yaml.safe_load((run / "config.yaml").read_text())["stages"]
    assert [(s["from_epoch"], s["epochs"], s["set"]) for s in stages] == \
        [(1, 3, {"optim.lr": 0.01}), (3, 4, {})]


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
    rows = rows_of(tmp_path / "st")
    assert [(r["epoch"], round(r["lr"], 6)) for r in rows] == [(1, 0.05), (2, 0.01)]
    (stage,) = yaml.safe_load((tmp_path / "st/config.yaml").read_text())["stages"]
    assert stage["from_epoch"] == 1 and stage["started"]


def test_a_failed_resume_writes_nothing_and_the_run_still_resumes(tmp_path, capsys):
    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "f", *TINY) == 0
    run = tmp_path / "f"
    before = files_of(run)
    for bad in (["--data", str(tmp_path / "nonexistent")], ["--model", "resnet32"],
                ["--set", "optim.name=adam"], ["--set", "model.kwargs={shortcut: B}"]):
        assert run_cli("train", "--resume", str(run), "--epochs", "25", *bad) == 2, bad
        assert files_of(run) == before, bad
    err = capsys.readouterr().err
    assert "nonexistent" in err and "model.init" in err and "optim.name=adam" in err
    assert run_cli("train", "--resume", str(run), "--epochs", "2") == 0
    assert [r["epoch"] for r in rows_of(run)] == [1, 2]


def test_a_resume_with_nothing_left_writes_nothing(tmp_path, capsys):
    assert run_cli("train", "--epochs", "2", "--out", str(tmp_path), "--name", "n", *TINY,
                   "--set", "train.early_stop_patience=1") == 0
    run = tmp_path / "n"
    before = files_of(run)
    for args in ([], ["--epochs", "2"], ["--device", "cpu"]):
        assert run_cli("train", "--resume", str(run), *args) == 0
        assert files_of(run) == before, args
    assert "nothing to do" in capsys.readouterr().err
    assert run_cli("train", "--resume", str(run), "--epochs", "1") == 2  # cannot go back


def test_an_early_stopped_run_has_nothing_left_until_a_new_stage(tmp_path):
    assert run_cli("train", "--epochs", "6", "--out", str(tmp_path), "--name", "es", *TINY,
                   "--set", "train.early_stop_patience=1", "--set", "schedule.name=constant",
                   "--set", "schedule.monitor=val_top1", "--lr", "1e-9") == 0
    run = tmp_path / "es"
    stopped = len(rows_of(run))
    assert stopped < 6 and torch.load(run / "last.pt", weights_only=True)["stopped"]
    before = files_of(run)
    assert run_cli("train", "--resume", str(run)) == 0
    assert files_of(run) == before
    assert run_cli("train", "--resume", str(run), "--epochs", str(stopped + 1),
                   "--lr", "0.05") == 0
    assert len(rows_of(run)) == stopped + 1


def test_dry_run_builds_everything_and_writes_nothing(tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path / "runs"), "--name", "d",
                   *TINY, "--dry-run") == 0
    out, err = capsys.readouterr()
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name"] == "resnet20" and cfg["data"]["limit"] == 360
    assert "dry run" in err and "269,722 parameters" in err and f"{STEPS} steps" in err
    assert not (tmp_path / "runs").exists()
    # a bad model fails the dry run as it would fail the run
    assert run_cli("train", *TINY, "--model", "resnet20", "--set",
                   "model.kwargs={nosuch: 3}", "--dry-run") == 2

    assert run_cli("train", "--epochs", "1", "--out", str(tmp_path), "--name", "d", *TINY) == 0
    run = tmp_path / "d"
    before = files_of(run)
    capsys.readouterr()
    assert run_cli("train", "--resume", str(run), "--epochs", "3", "--lr", "0.01",
                   "--dry-run") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["stages"] == [{"epochs": 3, "set": {"optim.lr": 0.01}, "from_epoch": 1,
                              "started": ""}]
    assert files_of(run) == before


def test_ema_weights_are_the_runs_weights_everywhere(tmp_path, capsys):
    """With optim.ema_decay, the summary, best.pt, model.safetensors, eval, predict and
    export all use the EMA weights (and `--weights raw` the trained ones)."""
    assert run_cli("train", "--epochs", "3", "--out", str(tmp_path), "--name", "ema", *TINY,
                   "--set", "optim.ema_decay=0.8") == 0
    run = tmp_path / "ema"
    rows, summary = rows_of(run), json.loads((run / "summary.json").read_text())
    assert summary["weights"] == "ema"
    assert summary["top1"] == rows[-1]["ema_eval_top1"] == summary["ema_top1"]
    assert summary["raw_top1"] == rows[-1]["eval_top1"] != summary["top1"]
    # best.pt: the epoch with the best EMA top-1 (the first of equals)
    ema_top1 = [r["ema_eval_top1"] for r in rows]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + ema_top1.index(max(ema_top1)) and best["weights"] == "ema"
    assert best["best_top1"] == max(ema_top1) == summary["best_top1"]
    last = torch.load(run / "last.pt", weights_only=True)
    ema_state = last["ema"]["module"]
    saved = load_file(run / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in ema_state.items())
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.metadata()["weights"] == "ema"

    capsys.readouterr()
    for flag, key in ((["--weights", "ema"], "top1"), ([], "top1"),
                      (["--weights", "raw"], "raw_top1")):
        assert run_cli("eval", str(run), "--json", *flag) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["top1"] == pytest.approx(summary[key], abs=1e-9), flag
        assert result["weights"] == ("raw" if key == "raw_top1" else "ema")

    out = tmp_path / "w.safetensors"
    assert run_cli("export", str(run), "--format", "safetensors", "--out", str(out)) == 0
    exported = load_file(out)
    assert all(torch.equal(exported[k], v) for k, v in ema_state.items())
    assert run_cli("export", str(run), "--format", "safetensors", "--out", str(out),
                   "--weights", "raw") == 0
    assert all(torch.equal(load_file(out)[k], v) for k, v in last["model"].items())

    images = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        pixels = torch.randint(0, 256, (8, 8, 3), generator=torch.Generator().manual_seed(i))
        Image.fromarray(pixels.numpy().astype("uint8")).save(path)
        images.append(str(path))
    probs = {}
    for weights in ("ema", "raw"):
        capsys.readouterr()
        assert run_cli("predict", str(run), *images, "--json", "--weights", weights) == 0
        probs[weights] = [r["top"] for r in json.loads(capsys.readouterr().out)]
    from convzoo.api import load
    from convzoo.saved import load_model_for_eval

    model, preprocess = load_model_for_eval(last, torch.device("cpu"), "ema")
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                     for p in images])
    with torch.no_grad():
        expected = model(preprocess(x)).softmax(dim=1)
    for row, p in zip(probs["ema"], expected):
        assert row[0]["prob"] == pytest.approx(p.max().item(), rel=1e-5)
    assert probs["ema"] != probs["raw"]
    auto = load(run, weights="auto").predict([Path(images[0])])[0]["top"][0]
    assert auto["prob"] == pytest.approx(probs["ema"][0][0]["prob"], rel=1e-5)


def test_best_pt_follows_the_judged_weights(tmp_path, monkeypatch):
    """best.pt is chosen on the EMA's top-1 when the run keeps an EMA (scripted figures: the
    trained weights peak at epoch 1, the EMA at epoch 3)."""
    from convzoo.training import loop

    figures = iter([(50.0, 10.0), (40.0, 20.0), (30.0, 30.0)])

    def scripted(run):
        raw, ema = next(figures)
        return {"eval_loss": 1.0, "eval_top1": raw, "eval_top5": 90.0, "eval_split": "test",
                "ema_eval_loss": 1.0, "ema_eval_top1": ema, "ema_eval_top5": 90.0,
                "eval_seconds": 0.1}

    monkeypatch.setattr(loop, "evaluate_run", scripted)
    assert run_cli("train", "--epochs", "3", "--out", str(tmp_path), "--name", "b", *TINY,
                   "--set", "optim.ema_decay=0.9") == 0
    best = torch.load(tmp_path / "b/best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["best_top1"] == 30.0
    summary = json.loads((tmp_path / "b/summary.json").read_text())
    assert (summary["top1"], summary["raw_top1"], summary["best_top1"]) == (30.0, 30.0, 30.0)


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
