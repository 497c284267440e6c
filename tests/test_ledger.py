"""The results ledger: RESULTS.md's full-length tables and ``convzoo recipes``' measured column
are made from the run folders under ``results/`` and nothing else."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from convzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ledger  # noqa: E402


def test_the_committed_tables_are_the_ones_the_run_folders_make() -> None:
    """RESULTS.md's and README.md's ledger sections and recipes/measured.json, regenerated
    from results/, are byte-identical to the committed files (`python benchmarks/ledger.py
    tables`)."""
    for path, text in ledger.render().items():
        assert path.read_text() == text, f"{path.name} is stale"


def fake_run(runs: Path, name: str, recipe: str, seed: int, top1: float,
             sets: tuple[str, ...] = ()) -> None:
    """A finished run folder as ledger_runs.py leaves it (the files collect reads)."""
    import yaml

    from convzoo import config as C

    run = runs / name
    run.mkdir(parents=True)
    cfg = C.to_dict(C.from_dict(C.load_recipe(recipe)))  # resolved, as a run writes it
    cfg.update(name=recipe, reported="seed: 9.99%")  # the anchor when it ran, not now
    cfg["train"]["seed"] = seed
    for s in sets:
        key, _, value = s.partition("=")
        cfg = C.merge(cfg, C.dotted_to_nested(key, yaml.safe_load(value)))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
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
    # how a run executes (what a resume may change, e.g. kept epochs) does not split a row
    fake_run(runs, "a-s1", "cifar10-fast94", 1, 91.0, ("train.keep_last=20",))
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
           "n=2) | airbench94: 94.01% mean in 3.09 s (compiled, A100, official arrays) | " \
           "1.0 h |" in text  # the anchor is the recipe's as shipped now, not its run's copy
    assert "| `cifar10-fast94` | optim.lr=9.0 |" in text and "80.00%" in text  # as typed
    figures = ledger.measured(rows)
    assert figures == {"cifar10-fast94": {
        "top1": 90.5, "min": 90.0, "max": 91.0, "seeds": 2, "epochs": 3, "split": "test",
        "data": "CIFAR-10, JPEG q75 copy", "machine": "AMD EPYC, AVX2, 2 cores",
        "runs": ["a-s0", "a-s1"]}}  # the tuning run is not the recipe's figure
    front = ledger.readme(rows)  # README's short table: the recipe's row only
    assert "| `cifar10-fast94` | CIFAR-10, JPEG q75 copy | 3 | 90.50% (90.00-91.00, n=2) | " \
           "test | 1.0 h | AMD EPYC, AVX2, 2 cores |" in front  # each row says its machine
    assert "80.00%" not in front and front.count("| `cifar10-fast94`") == 1


def test_a_rows_protocol_is_its_difference_from_the_recipe_as_shipped_now(
        tmp_path: Path) -> None:
    """A tuning run whose value the recipe has since taken is the recipe's row; a run made
    before the recipe changed shows the value it ran with, whatever its command said."""
    from convzoo import config as C

    shipped = C.to_dict(C.from_dict(C.load_recipe("cifar10-fast94")))["optim"]["lr"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    fake_run(runs, "tuned", "cifar10-fast94", 0, 91.0, (f"optim.lr={shipped}",))
    fake_run(runs, "older", "cifar10-fast94", 1, 85.0)
    config = runs / "older" / "config.yaml"  # as if made when the recipe had another lr
    config.write_text(config.read_text().replace(f"lr: {shipped}", "lr: 0.25", 1))
    ledger.collect(runs, ["tuned", "older"], results)
    rows = {r["folder"]: r for r in ledger.read_results(results)}
    assert rows["tuned"]["protocol"] == {} and rows["older"]["protocol"] == {"optim.lr": "0.25"}
    assert ledger.measured(list(rows.values()))["cifar10-fast94"]["runs"] == ["tuned"]


def test_a_staged_recipes_run_is_its_recipes_row(tmp_path: Path) -> None:
    """A run of a recipe with stages records when each stage started and the epoch a resume
    began it from: that says when it ran, not what it trained, so the run is its recipe's row
    (its protocol was the whole stages list, and it was never the recipe's figure)."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    ran = "stages=[{epochs: 44, set: {optim.lr: 0.01}, from_epoch: 38, started: '2026-12-07'}]"
    fake_run(runs, "inc", "inception_bn_small-cifar100", 0, 60.0, (ran,))
    fake_run(runs, "inc-longer", "inception_bn_small-cifar100", 0, 61.0,
             (ran.replace("44", "50"),))  # a stage planned otherwise is a protocol difference
    ledger.collect(runs, ["inc", "inc-longer"], results)
    rows = {r["folder"]: r for r in ledger.read_results(results)}
    assert (rows["inc"]["recipe"], rows["inc"]["protocol"]) == (
        "inception_bn_small-cifar100", {})
    assert list(rows["inc-longer"]["protocol"]) == ["stages"]
    assert "'epochs': 50" in rows["inc-longer"]["protocol"]["stages"]
    assert ledger.measured(list(rows.values()))["inception_bn_small-cifar100"]["runs"] == ["inc"]


def test_a_run_whose_overrides_another_recipe_has_taken_is_that_recipes_row(
        tmp_path: Path) -> None:
    """ResNet-18 first ran as GoogLeNet-BN's recipe with the network overridden, before it was a
    recipe of its own: the run is the new recipe's row and figure, not an override row of the
    recipe it was typed as; a run that is its own recipe stays there."""
    from convzoo import config as C

    lr = C.to_dict(C.from_dict(C.load_recipe("resnet18-imagenette-5ep")))["optim"]["lr"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    fake_run(runs, "r18", "googlenet_bn-imagenette-5ep", 0, 76.0,
             ("model.name=resnet18", "model.kwargs={}", f"optim.lr={lr}"))
    fake_run(runs, "r18-lr", "googlenet_bn-imagenette-5ep", 0, 70.0,
             ("model.name=resnet18", "model.kwargs={}", f"optim.lr={lr * 3}"))
    fake_run(runs, "gnet", "googlenet_bn-imagenette-5ep", 0, 50.0)
    ledger.collect(runs, ["r18", "r18-lr", "gnet"], results)
    rows = {r["folder"]: r for r in ledger.read_results(results)}
    assert (rows["r18"]["recipe"], rows["r18"]["protocol"]) == ("resnet18-imagenette-5ep", {})
    assert (rows["r18-lr"]["recipe"], rows["r18-lr"]["protocol"]) == (
        "resnet18-imagenette-5ep", {"optim.lr": str(lr * 3)})
    assert (rows["gnet"]["recipe"], rows["gnet"]["protocol"]) == (
        "googlenet_bn-imagenette-5ep", {})
    figures = ledger.measured(list(rows.values()))
    assert figures["resnet18-imagenette-5ep"]["runs"] == ["r18"]
    assert figures["googlenet_bn-imagenette-5ep"]["runs"] == ["gnet"]


def test_prose_in_the_ledger_chapter_quotes_only_figures_a_run_folder_holds(
        tmp_path: Path) -> None:
    """A percentage typed into RESULTS.md's ledger chapter is refused unless a run folder
    holds it (a run's top-1/top-5, an epoch's, a row's mean, an anchor); the committed
    RESULTS.md passes, and the chapter's limits are where the older, folder-less sections
    start."""
    assert ledger.unvouched(ledger.RESULTS_MD.read_text()) == []
    # so does README's quickstart paragraph, which quotes the ledger's quickstart runs
    assert ledger.unvouched(ledger.README.read_text(), chapter=ledger.README_QUICKSTART) == []
    runs, results = tmp_path / "runs", tmp_path / "results"
    fake_run(runs, "a-s0", "cifar10-fast94", 0, 90.0)
    fake_run(runs, "a-s1", "cifar10-fast94", 1, 91.25)
    (runs / "a-s0" / "metrics.jsonl").write_text('{"epoch": 1, "eval_top1": 41.234}\n')
    ledger.collect(runs, ["a-s0", "a-s1"], results)
    start, stop = ledger.LEDGER_CHAPTER
    front = f"{ledger.README_QUICKSTART[0]}\nabout 12.34%\n{ledger.README_QUICKSTART[1]}\n"
    assert ledger.unvouched(front, results, ledger.README_QUICKSTART) == ["12.34%"]
    for quoted in ("90.00%", "91.25%", "90.62%", "99.00%", "41.23%", "94.01%"):
        # a top-1, another seed's, the mean (90.625), a top-5, an epoch's, the anchor
        assert ledger.unvouched(f"{start}\nreached {quoted}.\n{stop}\n", results) == []
    text = f"{start}\nreached 90.01% and 12.34% (100.00%, 9.99%).\n{stop}\nolder: 55.55%\n"
    assert ledger.unvouched(text, results) == ["90.01%", "12.34%", "100.00%", "9.99%"]


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
    # a run of the recipe with overrides: what it trained differently is listed, key by key
    out_dir = tmp_path / "runs"
    assert main(["train", "--recipe", "quickstart", "--epochs", "1", "--lr", "0.01", "--seed",
                 "3", "--set", "data.limit=100", "--set", "train.loggers=[]", "--out",
                 str(out_dir), "--name", "q"]) == 0
    capsys.readouterr()
    assert main(["recipes", "quickstart", "--run", str(out_dir / "q")]) == 0
    out = capsys.readouterr().out
    shipped = C.to_dict(C.from_dict(C.load_recipe("quickstart")))
    differs = out[out.index("differs:"):].split("\n")
    assert sorted(line.split()[-4] for line in differs if line.strip()) == [
        "data.limit", "optim.lr", "train.epochs"]  # not the seed: the ledger's runs vary it
    assert f"optim.lr 0.01 (recipe {shipped['optim']['lr']!r})" in out
    assert f"train.epochs 1 (recipe {shipped['train']['epochs']!r})" in out
    assert main(["recipes", "quickstart", "--run", str(out_dir / "q"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["yours"]["differs"]["data.limit"] == [100, 0]
    # a path that is no run is one error line and exit 2 (it printed "n/a (None ep, None)")
    (tmp_path / "empty").mkdir()
    for path, why in ((tmp_path / "nowhere", "no such run directory"),
                      (tmp_path / "empty", "not a run directory")):
        assert main(["recipes", "quickstart", "--run", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and str(path) in err[0]
    # how, when and where a run ran is no difference: its loggers' settings, threads,
    # compilation, start time (the MLflow experiment was listed as one)
    ran = C.to_dict(C.from_dict(C.load_recipe("quickstart")))
    ran = C.merge(ran, {"started": "2026-12-07T10:00:00", "mlflow": {"experiment": "mine"},
                        "train": {"threads": 2, "compile": True, "keep_last": 9}})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text(yaml.safe_dump(ran))
    assert main(["recipes", "quickstart", "--run", str(tmp_path / "mine"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["yours"]["differs"] == {}
    (out_dir / "q" / "summary.json").unlink()  # still training: the differences, no figure
    assert main(["recipes", "quickstart", "--run", str(out_dir / "q")]) == 0
    out = capsys.readouterr().out
    assert "your run:   not finished" in out and "optim.lr 0.01" in out


def test_lost_invocations_fall_back_to_the_runs_own_timed_seconds(tmp_path: Path) -> None:
    """An invocation killed with its session before the runner could write its line leaves the
    recorded wall time short: collect then takes the run's own timed seconds and says so."""
    fake_run(tmp_path, "x", "quickstart", 0, 50.0)
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    summary["timed_seconds"] = 5000.0  # more than the two recorded invocations (3,600 s)
    (tmp_path / "x" / "summary.json").write_text(json.dumps(summary))
    ledger.collect(tmp_path, ["x"], tmp_path / "results")
    record = json.loads((tmp_path / "results" / "x" / "ledger.json").read_text())
    assert record["wall_seconds"] == 5000.0
    assert record["notes"] == ["invocations recorded 3600 s of wall time, less than the run's "
                               "own timed_seconds (5000 s): some were not recorded; "
                               "wall_seconds is the run's timed_seconds"]
    fake_run(tmp_path, "y", "quickstart", 0, 50.0)  # 3,600 s recorded, 61 s timed
    ledger.collect(tmp_path, ["y"], tmp_path / "results")
    record = json.loads((tmp_path / "results" / "y" / "ledger.json").read_text())
    assert record["wall_seconds"] == 3600.0 and "notes" not in record


@pytest.mark.slow
def test_a_killed_runner_still_leaves_its_invocation_line(tmp_path: Path) -> None:
    """The runner rewrites the running invocation's line as it goes, so a session that ends
    (SIGKILL to the runner and its run) still counts that invocation's time."""
    import os
    import signal
    import subprocess
    import time

    script = (
        "import sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import ledger_runs as L\n"
        "L.HEARTBEAT_SECONDS = 0.2\n"
        "L.command = lambda *a: [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        f"L.run_one('x', Path({str(tmp_path)!r}), Path('.'), Path('.'))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    log = tmp_path / "x.invocations.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.2)
        if log.is_file() and json.loads(log.read_text())["wall_seconds"] >= 1.0:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["exit_code"] is None and record["wall_seconds"] >= 1.0
    assert record["command"].endswith("time.sleep(60)")
    assert not list(tmp_path.glob("*.tmp"))


def fake_airbench(runs: Path, name: str, top1: float, seconds: float) -> None:
    """A finished airbench_compare.py run folder as ledger_runs.py leaves it."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(
        {"airbench": {"runs": [[top1, seconds]], "stopped": "finished", "returncode": 0}}))
    (run / "airbench_stdout.txt").write_text("| 0 | 9 | ... |\n")
    (run / "cifar10").mkdir()  # airbench's tensors: never copied
    call = {"start": "2026-12-07T00:00:00+00:00", "wall_seconds": seconds + 60, "exit_code": 0,
            "commit": "abc", "machine": "AMD EPYC, AVX2, 2 cores",
            "command": f"airbench_compare.py --device cpu --data {runs}/cifar10-jpeg"}
    (runs / f"{name}.invocations.jsonl").write_text(json.dumps(call) + "\n")


def test_each_airbench_run_is_compared_with_the_fast94_seed_it_ran_beside(
        tmp_path: Path) -> None:
    """The time ratio comes from runs that shared the machine at the same time (fast94-sN with
    airbench94-rN), never from a seed that ran alone (fast94-s0 here) or under other load."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    fake_run(runs, "fast94-s0", "cifar10-fast94", 0, 90.0)  # timed 61 s, alone
    fake_run(runs, "fast94-s1", "cifar10-fast94", 1, 91.0)
    fake_run(runs, "fast94-s2", "cifar10-fast94", 2, 90.6)
    for name, secs in (("fast94-s1", 150.0), ("fast94-s2", 90.0)):
        summary = json.loads((runs / name / "summary.json").read_text())
        summary["timed_seconds"] = secs
        (runs / name / "summary.json").write_text(json.dumps(summary))
    fake_airbench(runs, "airbench94-r1", 90.8, 100.0)
    fake_airbench(runs, "airbench94-r2", 90.4, 100.0)
    names = ["fast94-s0", "fast94-s1", "fast94-s2", "airbench94-r1", "airbench94-r2"]
    ledger.collect(runs, names, results)
    assert sorted(p.name for p in (results / "airbench94-r1").iterdir()) == [
        "airbench_stdout.txt", "ledger.json", "result.json"]
    text = ledger.markdown(ledger.read_results(results))
    assert ("| fast94-s1 + airbench94-r1 | 91.00% | 150 | 90.80% | 100 | 1.50x |" in text)
    assert ("| fast94-s2 + airbench94-r2 | 90.60% | 90 | 90.40% | 100 | 0.90x |" in text)
    assert "fast94-s0 +" not in text
    assert ("convzoo's time over airbench's: **1.20x** (0.90-1.50) over 2 pair(s), accuracy "
            "+0.20 points." in text)
    # the recipe's own row still holds all three seeds
    assert "90.53% (90.00-91.00, n=3)" in text
    # without its partner an airbench run makes no comparison
    shutil.rmtree(results / "fast94-s1")
    shutil.rmtree(results / "fast94-s2")
    text = ledger.markdown(ledger.read_results(results))
    assert "beside airbench94's own code" not in text and "time over airbench's" not in text


@pytest.mark.slow
def test_the_runner_starts_a_pair_together_and_other_entries_one_after_another(
        tmp_path: Path) -> None:
    import subprocess

    script = (
        "import sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import ledger_runs as L\n"
        "L.command = lambda *a: [sys.executable, '-c', 'import time; time.sleep(2)']\n"
        f"sys.exit(L.main(['--out', {str(tmp_path)!r}, '--only', 'fast94-s1', 'r20fast-s0', "
        "'airbench94-r1']))\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)

    def span(name: str) -> tuple[float, float]:
        import datetime as dt

        rec = json.loads((tmp_path / f"{name}.invocations.jsonl").read_text())
        start = dt.datetime.fromisoformat(rec["start"]).timestamp()
        assert rec["exit_code"] == 0
        return start, start + rec["wall_seconds"]

    fast, bench, other = span("fast94-s1"), span("airbench94-r1"), span("r20fast-s0")
    assert abs(fast[0] - bench[0]) < 1.0  # started together, though not next in the list
    assert other[0] >= max(fast[1], bench[1]) - 0.2  # the next entry waits for both


def test_an_airbench_run_never_runs_without_its_convzoo_seed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """airbench's time is compared only with the seed run at the same time: asked alone, or
    after its seed has finished, the runner says so and starts nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ledger_runs

    assert ledger_runs.main(["--out", str(tmp_path), "--only", "airbench94-r1"]) == 1
    assert "airbench94-r1: not run: it runs only together with fast94-s1" in \
        capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # no invocation line, no run folder
    seed = tmp_path / "fast94-s1"  # finished earlier: the pair can no longer run together
    seed.mkdir()
    (seed / "config.yaml").write_text("train: {epochs: 10}\n")
    (seed / "summary.json").write_text('{"epochs": 10}')
    assert ledger_runs.main(["--out", str(tmp_path), "--only", "fast94-s1",
                             "airbench94-r1"]) == 1
    assert "airbench94-r1: not run" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast94-s1"]
