"""Preemption: SIGTERM or SIGUSR1 at any step -> a checkpoint at that step -> exit 75 -> resume
-> bit-identical to the run that was never stopped; mid-epoch checkpoints on a step count.

The runs are forked from this process (no interpreter start per run), as test_crash does. The
model has stochastic depth (torch's global RNG inside the epoch), the data translation
(augmentation streams: translation, TrivialAugment, mixup/cutmix), the optimizer lookahead and
an EMA: everything a mid-epoch position must carry (the share of mixed images is one of the
epoch's running sums).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from convzoo import files
from convzoo.cli import main
from convzoo.training import loop
from convzoo.training.preempt import EXIT_PREEMPTED

EPOCHS, STEPS = 2, 4  # 128 training images, global batch 32: 4 steps per epoch
ARGS = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=128",
        "--batch-size", "32", "--epochs", str(EPOCHS), "--seed", "1", "--device", "cpu",
        "--lr", "0.05", "--set", "train.loggers=[]", "--set", "train.threads=1",
        "--set", "optim.ema_decay=0.9", "--set", "model.kwargs={drop_path: 0.3}",
        "--set", "augment.translate=1", "--set", "optim.lookahead_steps=4",
        "--set", "augment.policy=trivialaugment", "--set", "augment.mixup_alpha=0.8",
        "--set", "augment.cutmix_alpha=1.0"]
TIMING = {"seconds", "images_per_second", "peak_memory_mb", "eval_seconds"}


def forked(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def signal_at_step(k: int, sig: int) -> None:
    """Send ``sig`` to this process while step ``k`` of the run (1-based, over the run) runs."""
    real, calls = loop.set_lr, [0]

    def set_lr(optimizer: Any, lr: float) -> None:
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), sig)
        real(optimizer, lr)

    loop.set_lr = set_lr


def rows(run: Path) -> list[dict[str, Any]]:
    log = run / "metrics.jsonl"
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (log.read_text().splitlines() if log.exists() else [])]


def assert_same_run(run: Path, ref: Path) -> None:
    """Same weights (trained, EMA, lookahead's slow copy, optimizer), same metrics rows."""
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(ref / "last.pt", weights_only=True)
    cb = torch.load(run / "last.pt", weights_only=True)
    assert cb["epoch"] == EPOCHS and not cb.get("step")
    for part in ("model",):
        assert all(torch.equal(v, cb[part][k]) for k, v in ca[part].items()), part
    assert all(torch.equal(v, cb["ema"]["module"][k]) for k, v in ca["ema"]["module"].items())
    assert all(torch.equal(x, y) for x, y in zip(ca["optimizer"]["slow"],
                                                  cb["optimizer"]["slow"], strict=True))
    assert rows(run) == rows(ref)
    assert not (run / ".lock").exists() and not list(run.glob(".*.tmp*"))


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preempt")
    assert forked(lambda: main(["train", *ARGS, "--out", str(root), "--name", "ref"])) == 0
    return root / "ref"


@pytest.mark.slow
def test_a_signal_at_any_step_checkpoints_there_and_resume_is_bit_identical(
        ref: Path, tmp_path: Path) -> None:
    """Every step of the run, SIGTERM and SIGUSR1 alternating: the run stops right after that
    step with last.pt at it (exit 75); at the run's very last step there is nothing left, the
    run ends normally. The resume ends bit-identical, metrics rows included."""
    for k in range(1, EPOCHS * STEPS + 1):
        sig = signal.SIGTERM if k % 2 else signal.SIGUSR1
        name = f"k{k}"

        def stopped(k: int = k, sig: int = sig, name: str = name) -> int:
            signal_at_step(k, sig)
            return main(["train", *ARGS, "--out", str(tmp_path), "--name", name])

        code = forked(stopped)
        run = tmp_path / name
        last = torch.load(run / "last.pt", weights_only=True)
        if k == EPOCHS * STEPS:
            assert code == 0 and last["epoch"] == EPOCHS
            continue
        assert code == EXIT_PREEMPTED, k
        epoch, step = divmod(k, STEPS)  # epochs done, steps of the next one
        assert (last["epoch"], last.get("step", 0)) == (epoch, step), k
        if step:  # inside an epoch: last.pt alone moved, the finished epochs' files are older
            assert len(rows(run)) == epoch
        assert forked(lambda run=run: main(["train", "--resume", str(run)])) == 0, k
        assert_same_run(run, ref)


def test_a_signal_during_evaluation_stops_at_that_epoch_s_checkpoint(ref: Path,
                                                                     tmp_path: Path) -> None:
    def stopped() -> int:
        real = loop.evaluate_run

        def evaluate_run(run: Any) -> Any:
            if run.state.epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(run)

        loop.evaluate_run = evaluate_run
        return main(["train", *ARGS, "--out", str(tmp_path), "--name", "e",
                     "--set", "train.save_every=5"])  # epoch 1 saves only because it stops

    assert forked(stopped) == EXIT_PREEMPTED
    last = torch.load(tmp_path / "e" / "last.pt", weights_only=True)
    assert (last["epoch"], last.get("step", 0)) == (1, 0)
    assert forked(lambda: main(["train", "--resume", str(tmp_path / "e")])) == 0
    assert_same_run(tmp_path / "e", ref)


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(tmp_path: Path) -> None:
    def twice() -> int:
        real, calls = loop.set_lr, [0]

        def set_lr(optimizer: Any, lr: float) -> None:
            calls[0] += 1
            if calls[0] == STEPS + 2:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            real(optimizer, lr)

        loop.set_lr = set_lr
        return main(["train", *ARGS, "--out", str(tmp_path), "--name", "t"])

    assert forked(twice) == 128 + signal.SIGTERM
    last = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    assert (last["epoch"], last.get("step", 0)) == (1, 0)  # the epoch-1 checkpoint stays
    assert not (tmp_path / "t" / ".lock").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_the_work_done_and_resume_is_bit_identical(
        ref: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A first Ctrl-C (SIGINT) inside an epoch is a stop request, as SIGTERM is: a checkpoint at
    that step, the line saying how to continue, exit 130 as a shell expects; the resume ends
    bit-identical to the run never interrupted."""
    for k in (1, STEPS + 2, 2 * STEPS - 1):  # the first step, mid-epoch 2, the step before last
        name = f"int{k}"

        def stopped(k: int = k, name: str = name) -> int:
            signal_at_step(k, signal.SIGINT)
            return main(["train", *ARGS, "--out", str(tmp_path), "--name", name])

        assert forked(stopped) == 130, k
        err = capfd.readouterr().err
        assert "stopped by SIGINT" in err and f"--resume {tmp_path / name}" in err, err
        last = torch.load(tmp_path / name / "last.pt", weights_only=True)
        assert (last["epoch"], last.get("step", 0)) == divmod(k, STEPS), k
        assert forked(lambda name=name: main(["train", "--resume", str(tmp_path / name)])) == 0
        assert_same_run(tmp_path / name, ref)


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    def twice() -> int:
        real, calls = loop.set_lr, [0]

        def set_lr(optimizer: Any, lr: float) -> None:
            calls[0] += 1
            if calls[0] == STEPS + 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            real(optimizer, lr)

        loop.set_lr = set_lr
        return main(["train", *ARGS, "--out", str(tmp_path), "--name", "t"])

    assert forked(twice) == 130
    last = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    assert (last["epoch"], last.get("step", 0)) == (1, 0)  # the epoch-1 checkpoint stays
    assert not (tmp_path / "t" / ".lock").exists()


@pytest.mark.slow
def test_checkpoint_every_steps_writes_last_pt_alone_then_a_kill_resumes_exactly(
        ref: Path, tmp_path: Path) -> None:
    """train.checkpoint_every_steps=3 over 8 steps of 4 per epoch: last.pt alone is written
    after steps 3 and 6 (inside epochs 1 and 2), the epoch ends write theirs. A SIGKILL right
    after the step-6 checkpoint, then --resume: bit-identical, the epoch's row as if whole."""
    def killed() -> int:
        real = files.atomic_write

        def atomic_write(path: Path, write: Any) -> None:
            real(path, write)
            if Path(path).name == "last.pt":
                c = torch.load(path, weights_only=True)
                if c.get("step") == 2 and c["epoch"] == 1:
                    os._exit(137)  # killed right after the mid-epoch commit point

        files.atomic_write = atomic_write
        return main(["train", *ARGS, "--out", str(tmp_path), "--name", "s",
                     "--set", "train.checkpoint_every_steps=3"])

    def recording() -> int:
        real = files.atomic_write

        def atomic_write(path: Path, write: Any) -> None:
            real(path, write)
            c = torch.load(path, weights_only=True) if Path(path).suffix == ".pt" else {}
            with open(tmp_path / "writes.jsonl", "a") as f:
                f.write(json.dumps([Path(path).name, c.get("epoch", -1), c.get("step", 0)]) + "\n")

        files.atomic_write = atomic_write
        return main(["train", *ARGS, "--out", str(tmp_path), "--name", "w",
                     "--set", "train.checkpoint_every_steps=3"])

    assert forked(recording) == 0
    writes = [tuple(json.loads(line)) for line in (tmp_path / "writes.jsonl").read_text()
              .splitlines()]
    last_pts = [(e, s) for name, e, s in writes if name == "last.pt"]
    assert last_pts == [(0, 3), (1, 0), (1, 2), (2, 0)]
    for i, (name, _, step) in enumerate(writes):  # mid-epoch: last.pt and nothing else
        if step:
            assert name == "last.pt" and writes[i - 1][0] in ("config.yaml", "last.pt")
            assert writes[i + 1][0] == "model.safetensors"  # the next epoch end's first file
    assert_same_run(tmp_path / "w", ref)
    assert forked(killed) == 137
    last = torch.load(tmp_path / "s" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (1, 2)
    assert forked(lambda: main(["train", "--resume", str(tmp_path / "s")])) == 0
    assert_same_run(tmp_path / "s", ref)


def test_a_mid_epoch_checkpoint_takes_no_new_stage(tmp_path: Path, capsys) -> None:
    def stopped() -> int:
        signal_at_step(3, signal.SIGTERM)
        return main(["train", *ARGS, "--out", str(tmp_path), "--name", "m"])

    assert forked(stopped) == EXIT_PREEMPTED
    before = (tmp_path / "m" / "last.pt").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "m"), "--lr", "0.01", "--epochs", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside epoch 1 (step 3)" in err[0]
    assert (tmp_path / "m" / "last.pt").read_bytes() == before


# ----------------------------------------------------------------------------- --resume auto


def test_resume_auto_starts_then_continues_the_same_run_directory(ref: Path, tmp_path: Path,
                                                                 capsys) -> None:
    """The fixed command of a scheduler: the first call starts train.out/NAME (no NAME-2 even
    if the folder exists), a stopped run is continued by the same command, a finished one is
    left as it is; a different run in that folder, or no --name, is one line."""
    auto = ["train", *ARGS, "--out", str(tmp_path), "--name", "a", "--resume", "auto"]
    (tmp_path / "a").mkdir()  # made by the user or a scheduler beforehand: taken as it is

    def stopped() -> int:
        signal_at_step(STEPS + 1, signal.SIGTERM)
        return main(auto)

    assert forked(stopped) == EXIT_PREEMPTED
    assert forked(lambda: main(auto)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert_same_run(tmp_path / "a", ref)
    before = (tmp_path / "a" / "last.pt").read_bytes()
    assert forked(lambda: main([*auto, "--set", "train.threads=2"])) == 0  # runtime key: fine
    assert (tmp_path / "a" / "last.pt").read_bytes() == before
    capsys.readouterr()
    assert main([*auto, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr=0.05, this command has 0.01" in err[0]
    assert main(["train", *ARGS, "--out", str(tmp_path), "--resume", "auto"]) == 2
    assert "--resume auto needs --name" in capsys.readouterr().err
    assert (tmp_path / "a" / "last.pt").read_bytes() == before


def test_resume_auto_continues_a_run_whose_recipe_texts_have_changed_since(
        ref: Path, tmp_path: Path) -> None:
    """A run stopped under an older convzoo whose recipe said other words (its description,
    source, seed's figure) is still this command's run: those texts say nothing of what is
    trained, so --resume auto continues it (it refused: 'holds a run with reported=...')."""
    auto = ["train", *ARGS, "--out", str(tmp_path), "--name", "t", "--resume", "auto"]

    def stopped() -> int:
        signal_at_step(STEPS + 1, signal.SIGTERM)
        return main(auto)

    assert forked(stopped) == EXIT_PREEMPTED
    config = tmp_path / "t" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved.update(description="an older wording", source="an older source",
                 reported="not measured yet")
    config.write_text(yaml.safe_dump(saved))
    assert forked(lambda: main(auto)) == 0
    assert_same_run(tmp_path / "t", ref)
