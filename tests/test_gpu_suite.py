"""benchmarks/gpu_suite.sh: the dry run, argument errors, time caps and failures, the CPU quick
forms of its steps and the results files assembled from their outputs."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # runs the suite's quick forms in subprocesses

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SUITE = BENCH / "gpu_suite.sh"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]

sys.path.insert(0, str(BENCH))
import gpu_steps  # noqa: E402
import gpu_suite  # noqa: E402


def make_cifar_tarball(path: Path, train: int = 20, test: int = 5) -> Path:
    """A tiny copy of the CIFAR-10 JPEG tarball's layout: cifar10-jpeg/{train,test}/<class>/."""
    gen = random.Random(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train), ("test", test)):
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    img = Image.new("RGB", (32, 32), (25 * c, gen.randrange(256), 128))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gpu_assets/ as BENCHMARKS.md describes it, with a tiny tarball and a stand-in file at
    the airbench script's documented path (airbench's code is never committed)."""
    folder = tmp_path_factory.mktemp("gpu_assets")
    make_cifar_tarball(folder / "cifar10-jpeg.tar.gz")
    (folder / "airbench").mkdir()
    (folder / "airbench" / "airbench94_compiled.py").write_text("# stand-in: path check only\n")
    return folder


def suite_sh(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SUITE), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **env})


# ----------------------------------------------------------------------------- dry run


def test_dry_run_checks_every_step_and_prints_the_plan(assets: Path) -> None:
    proc = suite_sh("--dry-run", "--assets", str(assets))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "gpu_suite: dry run ok" in out
    # every step, in priority order, with its cap and its commands
    positions = [out.index(f". {s.name}: ") for s in gpu_steps.STEPS]
    assert positions == sorted(positions)
    for step in gpu_steps.STEPS:
        cap = "the rest of the budget" if step.cap == float("inf") else f"cap {step.cap:.0f} s"
        assert f"{step.name}: {step.title} ({cap}" in out
    assert "--airbench-runs 3" in out and "--seeds 3" in out and "-m gpu" in out
    assert "resnet20-cifar10-fast" in out and "resnet20-cifar10-neon" in out
    # each command was checked (9: mfu has two), and nothing failed
    checks = out.split("checks (")[1]
    assert checks.count("\n  ok   ") == 9 and "FAIL" not in checks
    files = out.split("files in OUT_DIR: ")[1].split("\n")[0]
    assert int(files.split()[0]) <= 8
    assert "gpu_results.json" in files and "gpu_results.md" in files
    assert f"ok      airbench: {assets / 'airbench' / 'airbench94_compiled.py'}" in out


def test_dry_run_names_each_missing_input(tmp_path: Path) -> None:
    empty = tmp_path / "assets"
    empty.mkdir()
    proc = suite_sh("--dry-run", "--assets", str(empty), "--only", "airbench")
    assert proc.returncode == 1
    assert "cifar10-jpeg.tar.gz missing: copy ../shared/datasets/cifar10-jpeg.tar.gz" in proc.stdout
    assert ("airbench94_compiled.py missing: copy legacy/airbench94_compiled.py of "
            "https://github.com/KellerJordan/cifar10-airbench") in proc.stdout
    assert "dry run found 2 problem(s)" in proc.stdout


def test_airbench_script_is_found_flat_or_in_a_checkouts_legacy_folder(tmp_path: Path) -> None:
    ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path)
    assert gpu_steps.find_airbench_script(ctx) is None
    legacy = tmp_path / "airbench" / "legacy" / "airbench94_compiled.py"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("# stand-in\n")
    assert gpu_steps.find_airbench_script(ctx) == legacy
    assert gpu_steps.check_input("airbench", ctx)[0]


def test_cifar_tarball_check_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "cifar10-jpeg.tar.gz"
    ok, text = gpu_steps.check_cifar_tarball(path)
    assert not ok and "missing" in text
    path.write_bytes(b"not a tarball")
    ok, text = gpu_steps.check_cifar_tarball(path)
    assert not ok and "not a readable tar archive" in text
    with tarfile.open(path, "w:gz") as tar:  # a tar archive, but not the expected layout
        tar.addfile(tarfile.TarInfo("images/a.jpg"), io.BytesIO(b""))
    ok, text = gpu_steps.check_cifar_tarball(path)
    assert not ok and "expected cifar10-jpeg/train/<class>/*" in text
    make_cifar_tarball(path, train=3, test=2)
    ok, text = gpu_steps.check_cifar_tarball(path)
    assert ok and "30 train / 20 test images, 10 classes" in text


@pytest.mark.parametrize(("command", "expected"), [
    (gpu_steps.script("mfu.py", "--models", "resnet56,nosuchnet"), "nosuchnet"),
    (gpu_steps.script("mfu.py", "--batch", "0"), "--batch"),
    (gpu_steps.script("loader_throughput.py", "--data", "imagenet"), "imagenet"),
    (gpu_steps.script("augment_throughput.py", "--sizes", "32,x"), "--sizes"),
    (gpu_steps.script("augment_throughput.py", "--device", "tpu"), "--device tpu"),
    (gpu_steps.script("resnet56_vs_baseline.py", "--epochs", "1"), "--epochs must be >= 2"),
    (gpu_steps.script("airbench_compare.py", "--recipe", "nosuchrecipe"), "nosuchrecipe"),
    (gpu_steps.script("airbench_compare.py", "--set", "optim.bogus=1"), "optim.bogus"),
    (gpu_steps.script("airbench_compare.py", "--seeds", "x"), "--seeds"),
    (gpu_steps.Command("convzoo", ("train", "--recipe", "resnet20-cifar10-fast", "--set",
                                   "train.bogus=1")), "train.bogus"),
    (gpu_steps.Command("convzoo", ("train", "--recipe", "nosuchrecipe")), "nosuchrecipe"),
    (gpu_steps.Command("convzoo", ("train", "--model", "resnet20", "--set",
                                   "model.kwargs={nosuchkw: 1}")), "nosuchkw"),
    (gpu_steps.Command("convzoo", ("train", "--epochs", "many")), "many"),
])
def test_dry_run_check_names_the_bad_argument(command: gpu_steps.Command, expected: str,
                                              tmp_path: Path) -> None:
    ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path)
    problem = gpu_suite.check_command(command, ctx)
    assert expected in problem and "\n" not in problem


def test_dry_run_check_accepts_every_planned_command(tmp_path: Path) -> None:
    for quick in (False, True):
        ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path, quick=quick)
        for step in gpu_steps.STEPS:
            for cmd in step.commands(ctx):
                if cmd.kind != "pytest":  # collection: the dry-run test above
                    assert gpu_suite.check_command(cmd, ctx) == "", (step.name, cmd)


def test_cap_override_reaches_the_airbench_side_timeout(tmp_path: Path) -> None:
    """airbench's own stop is half the step's cap, also when --cap changes the cap."""
    args = gpu_suite.parse_args([str(tmp_path / "out"), "--cap", "airbench=400",
                                 "--cap", "mfu=7.5", "--seeds", "5"])
    ctx = gpu_suite.context(args)
    (cmd,) = gpu_steps.Airbench().commands(ctx)
    argv = cmd.argv("python")
    assert argv[argv.index("--airbench-timeout") + 1] == "200"
    assert argv[argv.index("--seeds") + 1] == argv[argv.index("--airbench-runs") + 1] == "5"
    assert ctx.cap(gpu_steps.Mfu()) == 7.5 and ctx.cap(gpu_steps.Loader()) == 120.0


def test_pytest_check_fails_when_the_selection_is_empty(tmp_path: Path) -> None:
    ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path)
    cmd = gpu_steps.Command("pytest", ("-q", "-m", "nosuchmarker", "tests/test_optim.py"))
    assert "exited 5" in gpu_suite.check_command(cmd, ctx)


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("args", "expected"), [
    (["--budget", "0"], "--budget 0: must be a positive"),
    (["--budget", "-5"], "--budget -5"),
    (["--budget", "nan"], "--budget nan"),
    (["--only", "mfu,nosuch"], "--only nosuch: unknown step; steps: gpu-tests, airbench"),
    (["--cap", "mfu"], "--cap mfu: expected STEP=SECONDS"),
    (["--cap", "mfu=abc"], "--cap mfu=abc"),
    (["--cap", "mfu=-1"], "--cap mfu=-1"),
    (["--cap", "nosuch=5"], "--cap nosuch=5"),
    (["--seeds", "0"], "--seeds 0: must be >= 1"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(args: list[str], expected: str,
                                                       tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert gpu_suite.main([str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_suite: error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_out_dir_must_be_new_empty_or_an_earlier_runs(tmp_path: Path, capsys) -> None:
    assert gpu_suite.main([]) == 2
    assert "OUT_DIR is required" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert gpu_suite.main([str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "gpu_results.md").write_text("old")
    (busy / "notes.txt").write_text("mine")
    assert gpu_suite.main([str(busy)]) == 2
    assert "holds 1 other entries (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["gpu_results.md", "notes.txt"]
    assert (busy / "gpu_results.md").read_text() == "old"


def test_wrapper_says_when_python_cannot_import_convzoo(tmp_path: Path) -> None:
    proc = suite_sh(str(tmp_path / "out"), PYTHON=str(tmp_path / "nosuchpython"))
    assert proc.returncode == 2 and "gpu_suite: error:" in proc.stderr
    assert "cannot import convzoo" in proc.stderr and not (tmp_path / "out").exists()


def test_without_a_gpu_a_real_run_refuses(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = suite_sh(str(tmp_path / "out"), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert "--dry-run or --quick" in proc.stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- orchestration


class FakeStep(gpu_steps.Step):
    """A step whose one command is a small Python script written under tmp_path."""

    def __init__(self, name: str, code: str, folder: Path, cap: float = 60.0, need: float = 0.0,
                 inputs: tuple[str, ...] = ()):
        self.name, self.title, self.cap, self.need, self.inputs = name, f"fake {name}", cap, \
            need, inputs
        self.path = folder / f"{name.replace('-', '_')}.py"
        self.path.write_text("def parse_args(argv):\n    return argv\n\n\n"
                             "if __name__ == '__main__':\n" + textwrap.indent(code, "    "))

    def commands(self, ctx):
        return [gpu_steps.Command("script", (), self.path)]

    def collect(self, ctx):
        path = ctx.out(f"{self.name}.json")
        return json.loads(path.read_text()) if path.is_file() else None

    def markdown(self, result):
        return f"fake table {result}\n"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state  # a zombie is dead, only not reaped yet


def test_caps_failures_skips_and_results_after_every_step(tmp_path: Path, capsys) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    pid_file = tmp_path / "grandchild.pid"
    seen = tmp_path / "seen.json"
    args = gpu_suite.parse_args([str(out), "--budget", "120", "--workdir", str(work),
                                 "--assets", str(tmp_path / "no-assets")])
    ctx = gpu_suite.context(args)
    steps = [
        FakeStep("sleeper", textwrap.dedent(f"""
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            open({str(pid_file)!r}, "w").write(str(child.pid))
            print("sleeping", flush=True)
            time.sleep(120)
            """), tmp_path, cap=3.0),
        FakeStep("failer", "print('boom: the bad thing'); raise SystemExit(3)\n", tmp_path),
        FakeStep("reader", textwrap.dedent(f"""
            import json, pathlib
            data = json.loads(pathlib.Path({str(out / 'gpu_results.json')!r}).read_text())
            pathlib.Path({str(seen)!r}).write_text(json.dumps([s["status"] for s in data["steps"]]))
            pathlib.Path({str(ctx.out('reader.json'))!r}).write_text(json.dumps({{"n": 7}}))
            """), tmp_path),
        FakeStep("late", "pass\n", tmp_path, need=1000.0),
        FakeStep("needs-data", "pass\n", tmp_path, inputs=("cifar",)),
    ]
    suite = gpu_suite.Suite(args, ctx, steps)
    suite.check_inputs()
    suite.env = {"torch": "x", "gpu": None}
    t0 = time.monotonic()
    assert suite.run(out) == 1
    assert time.monotonic() - t0 < 60

    data = json.loads((out / "gpu_results.json").read_text())
    status = {s["name"]: s for s in data["steps"]}
    assert status["sleeper"]["status"] == "timeout" and "3 s cap" in status["sleeper"]["note"]
    assert not _alive(int(pid_file.read_text()))  # its whole process group was stopped
    assert status["failer"]["status"] == "failed"
    assert "exit 3" in status["failer"]["note"] and "boom: the bad thing" in status["failer"]["note"]
    # the results files were rewritten after each step: the third step read them
    assert json.loads(seen.read_text()) == ["timeout", "failed", "running", "pending", "pending"]
    assert status["reader"]["status"] == "ok" and status["reader"]["result"] == {"n": 7}
    assert status["late"]["status"] == "skipped" and "--only late" in status["late"]["note"]
    assert status["needs-data"]["status"] == "missing input"
    assert "cifar10-jpeg.tar.gz missing" in status["needs-data"]["note"]
    assert data["suite"]["final"] is True
    md = (out / "gpu_results.md").read_text()
    assert "| 1 | sleeper | timeout |" in md and "| 2 | failer | failed |" in md
    assert "fake table {'n': 7}" in md and "not measured: skipped" in md
    assert capsys.readouterr().out.endswith(md + "\n")  # the Markdown is printed at the end
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_suite.RESULT_FILES)


SLEEPER_DRIVER = """
import signal, sys, textwrap
from pathlib import Path
sys.path[:0] = [{tests!r}, {bench!r}]
import gpu_suite, test_gpu_suite as t

out, tmp = Path({out!r}), Path({tmp!r})
args = gpu_suite.parse_args([str(out), "--workdir", str(tmp / "work")])
ctx = gpu_suite.context(args)
code = (
    "import subprocess, sys, time\\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\\n"
    "open({pid_file!r}, 'w').write(str(child.pid))\\n"
    "time.sleep(120)\\n")
suite = gpu_suite.Suite(args, ctx, [t.FakeStep("sleeper", code, tmp, cap=100)])
suite.env = {{"torch": "x"}}
signal.signal(signal.SIGTERM, gpu_suite._stop_on_signal)
suite.run(out)
"""


def test_suite_stopped_from_outside_stops_its_step_and_keeps_the_results(tmp_path: Path) -> None:
    """SIGTERM to the suite (a device call's timeout): the running step's processes end with it
    and the results files say which step was stopped."""
    out, pid_file = tmp_path / "out", tmp_path / "grandchild.pid"
    driver = tmp_path / "driver.py"
    driver.write_text(SLEEPER_DRIVER.format(tests=str(Path(__file__).parent), bench=str(BENCH),
                                            out=str(out),
                                            tmp=str(tmp_path), pid_file=str(pid_file)))
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.terminate()
    assert proc.wait(30) == 128 + 15
    time.sleep(0.5)
    assert not _alive(int(pid_file.read_text()))
    (step,) = json.loads((out / "gpu_results.json").read_text())["steps"]
    assert step["status"] == "stopped" and "stopped from outside" in step["note"]


def test_dry_run_fails_a_plan_with_more_than_8_files(tmp_path: Path, capsys) -> None:
    class Copying(FakeStep):
        def output_files(self, ctx):
            return {f"{self.name}.txt": ctx.out(f"{self.name}.txt")}

    args = gpu_suite.parse_args(["--dry-run", "--assets", str(tmp_path)])
    steps = [Copying(f"s{i}", "pass\n", tmp_path) for i in range(6)]
    suite = gpu_suite.Suite(args, gpu_suite.context(args), steps)
    suite.check_inputs()
    assert suite.dry_run() == 1
    assert "9 files planned in OUT_DIR, the device machine hands back 8" in capsys.readouterr().out
    suite = gpu_suite.Suite(args, gpu_suite.context(args), steps[:5])
    suite.check_inputs()
    assert suite.dry_run() == 0


def test_neon_estimate_from_the_fast_run(tmp_path: Path) -> None:
    ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path)
    neon = gpu_steps.AccuracyNeon()
    assert neon.before(ctx, 100.0) == ""  # nothing to estimate from
    ctx.records["accuracy-fast"] = {"result": {"seconds_per_epoch": 1.0,
                                               "eval_seconds_per_epoch": 0.5}}
    assert neon.before(ctx, 1000.0) == "estimated 450 s for 180 epochs (fits in 1000 s)"
    note = neon.before(ctx, 200.0)
    assert "180 epochs need about 450 s" in note and "200 s left" in note
    assert "top-1 will not be final" in note


def test_accuracy_run_stopped_at_its_cap_reports_what_it_finished(tmp_path: Path) -> None:
    """A run killed after 3 of its 40 epochs: s/epoch from epochs 2-3, peak memory, and the
    last evaluated top-1 marked as not final."""
    ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path, stamp="s")
    step = gpu_steps.AccuracyFast()
    assert step.collect(ctx) is None  # killed before its first epoch ended
    run = step.run_dir(ctx)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  epochs: 40\n")
    rows = [{"epoch": e, "seconds": s, "images_per_second": 50000 / s, "peak_memory_mb": m,
             "eval_top1": t, "eval_top5": 90.0, "eval_seconds": 0.5}
            for e, s, m, t in ((1, 9.0, 100.0, 40.0), (2, 2.0, 300.0, 50.0), (3, 4.0, 200.0, 60.0))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = step.collect(ctx)
    assert not r["finished"] and r["epochs_done"] == 3 and r["epochs_planned"] == 40
    assert r["seconds_per_epoch"] == 3.0 and r["peak_memory_mb"] == 300.0
    assert r["top1"] == 60.0 and r["top1_epoch"] == 3 and r["train_seconds"] == 15.0
    md = step.markdown(r)
    assert "| `resnet20-cifar10-fast` | 3/40 | 60.00% |" in md
    assert "stopped at the cap: top-1 of epoch 3, not final" in md


def test_gpu_test_report_names_modules_skipped_at_collection(tmp_path: Path) -> None:
    """A module skipped at import (an optional package missing) has an empty classname in the
    JUnit file; the report names it by module, like every other test, not '::module'."""
    ctx = gpu_steps.Context(ROOT, work=tmp_path, assets=tmp_path, stamp="s")
    ctx.files.mkdir(parents=True)
    ctx.out("gpu-tests-junit.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="" name="tests.test_mixing" time="0.000">'
        '<skipped message="collection skipped" /></testcase>'
        '<testcase classname="tests.test_augment" name="test_flip[cuda]" time="0.250" />'
        '<testcase classname="tests.test_packs" name="test_nvjpeg" time="0.100">'
        '<failure message="AssertionError: bad&#10;more" /></testcase>'
        '</testsuite></testsuites>')
    r = gpu_steps.GpuTests().collect(ctx)
    assert [t["test"] for t in r["tests"]] == [
        "tests.test_mixing", "tests.test_augment::test_flip[cuda]", "tests.test_packs::test_nvjpeg"]
    assert [t["outcome"] for t in r["tests"]] == ["skipped", "passed", "failed"]
    assert r["tests"][2]["message"] == "AssertionError: bad"
    assert r["counts"] == {"skipped": 1, "passed": 1, "failed": 1}


# ----------------------------------------------------------------------------- quick forms


def test_quick_forms_run_and_results_are_assembled(assets: Path, tmp_path: Path) -> None:
    """The CPU quick forms of the steps that test_benchmarks.py does not run (the gpu-marked
    tests, the loader, the augmentation table, both full-length accuracy runs in a tiny form),
    through the suite, into gpu_results.json / gpu_results.md."""
    out = tmp_path / "out"
    only = "gpu-tests,loader,augment,accuracy-fast,accuracy-neon"
    proc = suite_sh(str(out), "--quick", "--only", only, "--assets", str(assets),
                    "--workdir", str(tmp_path / "work"), OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["gpu_results.json", "gpu_results.md", "gpu_suite.log",
                            "gpu_tests_junit.xml", "accuracy_fast_metrics.jsonl",
                            "accuracy_neon_metrics.jsonl"])
    data = json.loads((out / "gpu_results.json").read_text())
    steps = {s["name"]: s for s in data["steps"]}
    for name in only.split(","):
        assert steps[name]["status"] == "ok" and steps[name]["seconds"] > 0
    for name in ("airbench", "resnet56", "mfu"):
        assert steps[name]["status"] == "not selected"
    assert data["env"]["torch"] and data["suite"]["quick"] and data["suite"]["final"]

    tests = steps["gpu-tests"]["result"]
    assert len(tests["tests"]) >= 5 and all(t["test"].startswith("tests.") for t in tests["tests"])
    assert set(tests["counts"]) <= {"passed", "skipped"}

    rows = steps["loader"]["result"]["rows"]
    assert [r["data"] for r in rows] == ["cifar32"]
    assert all(r[k] > 0 for r in rows for k in ("torchvision", "convzoo_jpeg", "convzoo_raw"))

    augment = steps["augment"]["result"]
    assert augment["device"] == "cpu" and {r["size"] for r in augment["rows"]} == {16, 64}
    assert "TrivialAugment" in {r["op"] for r in augment["rows"]}
    assert all(len(r["convzoo_ms"]) == len(r["v2_ms"]) == 1 and r["ratio"] > 0
               for r in augment["rows"])

    for name, recipe in (("accuracy-fast", "resnet20-cifar10-fast"),
                         ("accuracy-neon", "resnet20-cifar10-neon")):
        r = steps[name]["result"]
        assert r["recipe"] == recipe and r["finished"] and r["epochs_done"] == r["epochs_planned"] == 2
        assert 0 <= r["top1"] <= 100 and r["seconds_per_epoch"] > 0 and r["peak_memory_mb"] > 0
        metrics = (out / f"{name.replace('-', '_')}_metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]

    md = (out / "gpu_results.md").read_text()
    assert md == gpu_suite.markdown(data, gpu_steps.STEPS)  # the JSON holds everything shown
    assert md in proc.stdout
    fast = steps["accuracy-fast"]["result"]
    assert f"| `resnet20-cifar10-fast` | 2/2 | {fast['top1']:.2f}% |" in md
    assert f"| cifar32 | 32 | {rows[0]['torchvision']:,.0f} |" in md
    assert "not measured: not selected" in md
    assert "| 16 px, batch 4 | TrivialAugment |" in md
    log = (out / "gpu_suite.log").read_text()
    assert "===== loader:" in log and "done: resnet20" in log
