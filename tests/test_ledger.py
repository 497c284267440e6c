"""The results ledger: RESULTS.md's full-length tables and ``convzoo recipes``' measured column
are made from the run folders under ``results/`` and nothing else."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from convzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ledger  # noqa: E402


def test_the_committed_tables_are_the_ones_the_run_folders_make() -> None:
    """RESULTS.md's ledger section and recipes/measured.json, regenerated from results/, are
    byte-identical to the committed files (run `python benchmarks/ledger.py tables`)."""
    text, figures = ledger.render()
    assert ledger.RESULTS_MD.read_text() == text, "RESULTS.md's ledger section is stale"
    assert ledger.MEASURED.read_text() == figures, "recipes/measured.json is stale"


def fake_run(runs: Path, name: str, recipe: str, seed: int, top1: float,
             sets: tuple[str, ...] = ()) -> None:
    """A finished run folder as ledger_runs.py leaves it (the files collect reads)."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {recipe}\nreported: 'seed: 9.99%'\n"
                                     f"train: {{seed: {seed}, epochs: 3}}\n")
    (run / "summary.json").write_text(json.dumps(
        {"split": "test", "epochs": 3, "top1": top1, "top5": 99.0, "train_seconds": 60.0,
         "timed_seconds": 61.0}))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "last.pt").write_bytes(b"a checkpoint: never copied")
    command = (f"-m convzoo train --recipe {recipe} --data /home/u/data/cifar10-jpeg --seed "
               f"{seed} --set train.threads=1" + "".join(f" --set {s}" for s in sets))
    calls = [{"start": "2026-12-07T00:00:00+00:00", "wall_seconds": 1800.0, "exit_code": 75,
              "commit": "abc", "machine": "AMD EPYC, AVX2, 2 cores", "command": command},
             {"start": "2026-12-07T01:00:00+00:00", "wall_seconds": 1800.0, "exit_code": 0,
              "commit": "def", "machine": "AMD EPYC, AVX2, 2 cores", "command": command}]
    (runs / f"{name}.invocations.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in calls))


def test_collect_then_tables_group_seeds_and_keep_tuning_runs_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    fake_run(runs, "a-s0", "cifar10-fast94", 0, 90.0)
    fake_run(runs, "a-s1", "cifar10-fast94", 1, 91.0)
    fake_run(runs, "a-lr", "cifar10-fast94", 0, 80.0, ("optim.lr=9",))
    ledger.collect(runs, ["a-s0", "a-s1", "a-lr"], results)
    assert sorted(p.name for p in (results / "a-s0").iterdir()) == [
        "config.yaml", "ledger.json", "metrics.jsonl", "summary.json"]  # no checkpoint
    record = json.loads((results / "a-s0" / "ledger.json").read_text())
    assert record["wall_seconds"] == 3600.0 and record["commits"] == ["abc", "def"]
    assert record["invocations"] == 2 and record["machine"] == "AMD EPYC, AVX2, 2 cores"
    rows = ledger.read_results(results)
    text = ledger.markdown(rows)
    assert "| `cifar10-fast94` | - | CIFAR-10, JPEG q75 copy | 3 | test | 90.50% (90.00-91.00, " \
           "n=2) | seed: 9.99% | 1.0 h |" in text
    assert "| `cifar10-fast94` | optim.lr=9 |" in text and "80.00%" in text
    figures = ledger.measured(rows)
    assert figures == {"cifar10-fast94": {
        "top1": 90.5, "min": 90.0, "max": 91.0, "seeds": 2, "epochs": 3, "split": "test",
        "data": "CIFAR-10, JPEG q75 copy", "machine": "AMD EPYC, AVX2, 2 cores",
        "runs": ["a-s0", "a-s1"]}}  # the tuning run is not the recipe's figure


def test_an_unfinished_run_is_not_collected(tmp_path: Path) -> None:
    fake_run(tmp_path, "x", "quickstart", 0, 50.0)
    (tmp_path / "x" / "summary.json").unlink()
    with pytest.raises(SystemExit, match="not finished"):
        ledger.collect(tmp_path, ["x"], tmp_path / "results")


def test_recipes_show_the_measured_figure_and_a_users_run_beside_it(
        tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from convzoo import config as C

    recipes = tmp_path / "recipes"
    shutil.copytree(C.RECIPE_DIR, recipes)
    (recipes / "measured.json").write_text(json.dumps({"quickstart": {
        "top1": 99.5, "min": 99.4, "max": 99.6, "seeds": 2, "epochs": 12, "split": "test",
        "data": "digits", "machine": "AMD EPYC, AVX2, 2 cores", "runs": ["q-s0", "q-s1"]}}))
    monkeypatch.setattr(C, "RECIPE_DIR", recipes)
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert any(line.startswith("quickstart") and "99.50% test, 2 seeds 99.4-99.6" in line
               for line in lines)
    assert any(line.startswith("cifar10-fast94") and "not measured" in line for line in lines)
    assert main(["recipes", "quickstart", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    mine = json.loads((run_dir / "summary.json").read_text())["top1"]
    assert "measured:   99.50% test, 2 seeds 99.4-99.6" in out
    assert f"your run:   {mine:.2f}% (1 ep, test)" in out
    assert f"{mine - 99.5:+.2f} points against the measured mean" in out
