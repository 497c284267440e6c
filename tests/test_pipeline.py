"""Training from a packed dataset: memory vs streaming, chosen by data.loader, same results."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convzoo import config as C
from convzoo.cli import main
from convzoo.data.loading import pipeline
from convzoo.data.packs.writer import pack
from convzoo.data.sources.digits import load_digits

TINY = ["--model", "resnet20", "--batch-size", "32", "--set", "train.eval_batch_size=100",
        "--set", "augment.pad=1", "--set", "augment.flip=false", "--set", "train.loggers=[]",
        "--set", "data.workers=1", "--set", "train.threads=1", "--device", "cpu"]


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scikit-learn digits as a JPEG image-folder tree (train/ and test/), packed."""
    root = tmp_path_factory.mktemp("digits")
    ds = load_digits(image_size=16, seed=0)
    for split in ("train", "test"):
        s = ds.splits[split]
        limit = 400 if split == "train" else 200
        for i in range(limit):
            folder = root / "tree" / split / ds.classes[int(s.labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(s.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    dest = root / "packed"
    pack(root / "tree", dest, fmt="jpeg", quality=95, workers=1, progress=False)
    return dest


def train(tmp_path: Path, name: str, *args: str) -> dict:
    assert main(["train", "--out", str(tmp_path), "--name", name, *TINY, *args]) == 0
    return json.loads((tmp_path / name / "summary.json").read_text())


@pytest.mark.slow
def test_stream_and_memory_train_to_similar_accuracy(digits_pack: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data", str(digits_pack), "--epochs", "4", "--lr", "0.05"]
    mem = train(tmp_path, "mem", *common, "--set", "data.loader=memory")
    stream = train(tmp_path, "stream", *common, "--set", "data.loader=stream")
    assert mem["top1"] > 60 and stream["top1"] > 60
    assert abs(mem["top1"] - stream["top1"]) < 15  # different augmentation draws, same recipe
    # eval of a streamed run reads the pack through the same loader and agrees exactly
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "stream"), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(stream["top1"], abs=1e-9)


def test_streaming_workers_stop_when_train_and_eval_return(digits_pack: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """No DataLoader worker outlives `train` or `eval`: left to the garbage collector, each
    persistent worker took 5 s to stop, whenever a later collection came (a test suite, a
    notebook or a script that trains twice)."""
    import multiprocessing

    common = ["--data", str(digits_pack), "--set", "data.loader=stream", "--set",
              "data.limit=64", "--epochs", "1"]
    train(tmp_path, "w", *common)
    assert multiprocessing.active_children() == []
    assert main(["eval", str(tmp_path / "w"), "--json", "--device", "cpu"]) == 0
    assert multiprocessing.active_children() == []


# the steps of the augmentation stage: a policy on the pixels, jitter, erasing, mixup/cutmix with soft targets
MODERN = ["--set", "augment.policy=trivialaugment", "--set", "augment.color_jitter=[.4,.4,.4,.1]",
          "--set", "augment.erase_prob=0.5", "--set", "augment.mixup_alpha=0.8", "--set",
          "augment.cutmix_alpha=1.0", "--set", "augment.mix_mode=elem"]


@pytest.mark.parametrize("loader, extra", [
    pytest.param("stream", [], id="stream"),
    pytest.param("stream", MODERN, id="stream-modern", marks=pytest.mark.slow),
    pytest.param("memory", MODERN, id="memory-modern"),
])
def test_stream_resume_is_exact(digits_pack: Path, tmp_path: Path, loader: str,
                                extra: list[str]) -> None:
    # constant lr: 1 epoch + a resumed 2nd epoch is the same schedule as 2 epochs straight
    common = ["--data", str(digits_pack), "--set", f"data.loader={loader}", "--set",
              "data.limit=128", "--set", "augment.translate=1", "--seed", "5",
              "--set", "schedule.name=constant", *extra]
    train(tmp_path, "straight", *common, "--epochs", "2")
    train(tmp_path, "split", *common, "--epochs", "1")
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "2"]) == 0
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").open()]
    assert [("train_mixed" in r) for r in rows] == [bool(extra)] * 2  # mixing really was on


def test_stream_val_fraction_and_limit(digits_pack: Path) -> None:
    cfg = C.from_dict({"data": {"source": str(digits_pack), "loader": "stream",
                                "val_fraction": 0.25, "limit": 300}})
    source = pipeline.open_source(cfg)
    assert source.kind == "stream"
    assert len(source.splits["train"]) == 225 and len(source.splits["val"]) == 75
    assert len(source.splits["test"]) == 200
    counts = source.splits["val"].labels.bincount(minlength=10)
    assert counts.min() >= 5  # stratified: every class is in the validation split
    train_rows = {tuple(r) for r in source.splits["train"].table[:, :2].tolist()}
    val_rows = {tuple(r) for r in source.splits["val"].table[:, :2].tolist()}
    assert not train_rows & val_rows


def test_auto_streams_only_what_does_not_fit(digits_pack: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = C.DataConfig(source=str(digits_pack))
    assert pipeline.choose_loader(cfg) == "memory"
    monkeypatch.setattr(pipeline, "MEMORY_BUDGET_BYTES", 1000)
    assert pipeline.choose_loader(cfg) == "stream"
    assert pipeline.choose_loader(C.DataConfig(source="digits")) == "memory"


def test_stream_needs_a_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", "digits", "--set", "data.loader=stream",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.loader=stream" in err[0] and "convzoo pack" in err[0]


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_checkpoints_with_streaming_workers(digits_pack: Path,
                                                                  tmp_path: Path) -> None:
    """Ctrl-C at a terminal reaches the whole process group, decode workers included: they
    ignore it, and the trainer writes a checkpoint at the step and exits 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "convzoo", "train", "--data", str(digits_pack), "--out",
           str(tmp_path), "--name", "run", *TINY, "--set", "data.loader=stream", "--set",
           "data.workers=2", "--set", "train.log_every=1", "--epochs", "50"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until it trains: a progress line of epoch 1
            if line.startswith("epoch 1/50 step"):
                break
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped by SIGINT" in rest and "Traceback" not in rest, rest
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] < 50
