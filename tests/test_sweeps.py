"""Sweeps on Optuna against its real SQLite storage: pruning, failed trials, the best trial's run
directory evaluating to its recorded value, two processes sharing one study, and interrupted
or killed trials recorded as failed with ``--resume`` finishing the sweep."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import convzoo
from convzoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# About 1 s per epoch: all 1,797 digits at 8x8 (a fifth held out as val), Adam reaches ~65% val
# top-1 after one epoch at lr 3e-3 and ~13% at lr 1e-4.
BASE = {"data.source": "digits", "data.image_size": 8, "train.batch_size": 32,
        "augment.pad": 1, "augment.flip": False, "optim.name": "adam",
        "optim.weight_decay": 0, "train.threads": 1, "train.loggers": [],
        "train.device": "cpu", "schedule.min_lr": 5e-5}


@pytest.fixture
def optuna() -> Any:
    return pytest.importorskip("optuna")


def study_of(folder: Path) -> Any:
    import optuna

    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


def states(folder: Path) -> list[str]:
    return [t.state.name for t in study_of(folder).get_trials()]


@pytest.mark.slow
def test_a_lagging_trial_is_pruned_a_failed_one_never_counts_and_the_best_evaluates_to_its_value(
        tmp_path: Path, capsys: pytest.CaptureFixture, optuna: Any) -> None:
    result = convzoo.sweep(
        set={**BASE, "train.epochs": 3}, params={"optim.lr": "choice:0.003,0.00001,0.0001"},
        # lr 1e-5 is below schedule.min_lr: its config is refused (a ConvzooError), so the
        # trial fails; lr 1e-4 lags the first trial at epoch 1 and is pruned there
        enqueue=[{"optim.lr": 0.003}, {"optim.lr": 0.00001}, {"optim.lr": 0.0001}],
        trials=2, pruner="median", prune_startup=1, prune_warmup=0, val_fraction=0.2,
        out=str(tmp_path), study="s")
    folder = tmp_path / "s"
    assert result.folder == folder and result.direction == "maximize"
    assert states(folder) == ["COMPLETE", "FAIL", "PRUNED"]  # 2 results: the budget
    good, failed, pruned = study_of(folder).get_trials()
    assert "schedule.min_lr=5e-05 is above optim.lr=1e-05" in failed.user_attrs["error"]
    assert failed.value is None and not (folder / "trial-0001").exists()
    assert list(pruned.intermediate_values) == [1]
    assert pruned.intermediate_values[1] < good.intermediate_values[1]
    summary = json.loads((folder / "trial-0002" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["split"] == "val"  # ended there, consistently

    best = result.best
    assert best is not None and best.number == 0 and best.value == good.value
    assert best.params == {"optim.lr": 0.003}
    capsys.readouterr()
    assert main(["eval", best.run_dir, "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["split"] == "val"
    assert math.isclose(evaluated["top1"], best.value, rel_tol=1e-9, abs_tol=1e-9)

    with open(folder / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["number"], r["state"]) for r in table] == [("0", "COMPLETE"), ("1", "FAIL"),
                                                          ("2", "PRUNED")]
    assert table[0]["run_dir"] == str(folder / "trial-0000") and table[0]["optim.lr"] == "0.003"
    for png in ("history.png", "intermediate.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert saved["params"] == {"optim.lr": "choice:0.003,0.00001,0.0001"}


@pytest.mark.parametrize("args, message", [
    (["--param", "optim.lrr=uniform:0:1"], "unknown config key 'optim.lrr'"),
    (["--param", "optim.lr=normal:0:1"], "expected uniform:LO:HI, loguniform:LO:HI"),
    (["--param", "optim.lr=loguniform:1:0.1"], "LO must be below HI"),
    (["--param", "optim.lr=loguniform:0:1"], r"optim.lr=0.0 is outside its valid range"),
    (["--param", "train.epochs=uniform:1:5"], "train.epochs is not a float key; use int:"),
    (["--param", "augment.policy=choice:none,trivial"], "'trivial' is not one of"),
    (["--param", "train.out=choice:a,b"], "train.out is set by the sweep itself"),
    (["--param", "optim.lr=loguniform:1e-3:1", "--set", "train.name=x"],
     "sweep set train.name: set by the sweep itself"),
    (["--recipe", "quickstart"], "the sweep searches nothing"),
    (["--recipe", "quickstart", "--param", "optim.lr=loguniform:1e-3:1"],
     "data digits has no val split .* set val_fraction"),
    (["--recipe", "quickstart", "--val-fraction", "0.1", "--param", "optim.lr=uniform:1:2",
      "--baseline"], r"sweep baseline: optim.lr=0.1 is outside its search space uniform:1:2"),
    (["no/such/sweep.yaml"], "sweep file not found"),
    (["--resume", "no/such/folder"], "not a sweep folder"),
])
def test_a_bad_sweep_is_one_line_before_anything_is_written(args, message, tmp_path, capsys,
                                                           optuna):
    assert main(["sweep", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convzoo: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_without_optuna_the_sweep_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    assert main(["sweep", "--param", "optim.lr=loguniform:1e-3:1", "--out", str(tmp_path)]) == 2
    assert "pip install 'convzoo[sweep]'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- processes


def sweep_file(tmp_path: Path, **keys: Any) -> Path:
    data = {"set": {**BASE, "train.epochs": 2}, "params": {"optim.lr": "loguniform:1e-3:1e-2"},
            "val_fraction": 0.2, "pruner": "none", "out": str(tmp_path), **keys}
    path = tmp_path / f"{keys.get('study', 'sweep')}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "convzoo", "sweep", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study_and_run_no_trial_twice(tmp_path: Path,
                                                                   optuna: Any) -> None:
    path = sweep_file(tmp_path, study="two", trials=6)
    procs = [start(str(path)), start(str(path))]  # started together on one new SQLite file
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folder = tmp_path / "two"
    trials = study_of(folder).get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    owners = [t.user_attrs["owner"]["pid"] for t in trials]
    assert set(owners) == {p.pid for p in procs}  # both processes took trials
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-{n:04d}" for n in range(6)]
    for t in trials:  # each trial trained once, in its own directory, to the value recorded
        run = Path(t.user_attrs["run_dir"])
        assert run == folder / f"trial-{t.number:04d}"
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        assert json.loads((run / "summary.json").read_text())["top1"] == t.value
    for proc, (_, err) in zip(procs, outs):  # each process ran, and logged, its own trials
        mine = {t.number for t in trials if t.user_attrs["owner"]["pid"] == proc.pid}
        assert {int(n) for n in re.findall(r"trial (\d+) finished", err)} == mine
    assert (folder / "importances.png").is_file() and (folder / "history.png").is_file()


@pytest.mark.slow
def test_interrupted_and_killed_trials_are_failed_and_resume_finishes_the_sweep(
        tmp_path: Path, optuna: Any) -> None:
    path = sweep_file(tmp_path, study="stop", trials=2, set={**BASE, "train.epochs": 4})
    folder = tmp_path / "stop"
    first = start(str(path))
    wait_for(folder / "trial-0000" / "metrics.jsonl", first)  # epoch 1 of trial 0 is done
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 75, err  # a checkpoint at the step, then exit 75
    assert states(folder) == ["FAIL"]
    assert study_of(folder).get_trials()[0].user_attrs["error"].startswith("interrupted")
    assert (folder / "trial-0000" / "last.pt").is_file()  # its run directory is resumable

    second = start("--resume", str(folder))
    wait_for(folder / "trial-0001" / "metrics.jsonl", second)
    second.kill()  # SIGKILL: nothing can record anything; trial 1 stays RUNNING
    second.communicate(timeout=60)
    assert states(folder) == ["FAIL", "RUNNING"]

    third = start("--resume", str(folder))
    _, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert "trial(s) 1 of a killed process on this host: recorded as failed" in err
    assert states(folder) == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    with open(folder / "trials.csv") as f:
        notes = [r["note"] for r in csv.DictReader(f)]
    assert notes[0].startswith("interrupted") and notes[1] == "its process was killed"
