"""A crash-safe run end: a kill or a disk error at every file write of the last epoch, then
``--resume``, leaves a consistent run directory with the same final weights as a run that was
never interrupted.

The writes of the last epoch are found, not listed: a reference run records every write into
its run directory after epoch 2's checkpoint (and snapshots the directory there). Each write is
then interrupted in turn, in a copy of that snapshot resumed for the last epoch:

* a real process death (``os._exit`` in a forked child) in the middle of the write: the temp
  file is complete but not renamed, or half of the metrics line is appended; and once after the
  very last write (the run is finished but its lock is stale);
* an ``OSError`` (ENOSPC, and EROFS / EDQUOT / EACCES at one write): one error line, exit 2.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from convzoo import files
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.training import rundir
from convzoo.training.runlock import LOCK_FILE

pytestmark = pytest.mark.slow  # kills, forks and tmpfs mounts: every test starts processes

EPOCHS = 3
# The reference must learn: its last epoch has to be its best so that best.pt is among the
# last epoch's writes. At 8 px and batch 32 (18 steps in all) the top-1 wandered around chance
# and the best epoch depended on the CPU's kernels (AVX2 vs AVX-512); at 16 px, batch 16 and
# seed 2 the EMA top-1 climbs 11.0 -> 24.5 -> 31.0%, margins far wider than rounding.
ARGS = ["--data", "digits", "--set", "data.image_size=16", "--set", "data.limit=200",
        "--batch-size", "16", "--epochs", str(EPOCHS), "--seed", "2", "--device", "cpu",
        "--set", "train.loggers=[]", "--set", "train.threads=1",
        "--set", "optim.ema_decay=0.9"]


# ----------------------------------------------------------------------------- the reference


class Reference:
    """A finished, never interrupted run; the snapshot after its epoch-2 checkpoint; and the
    names of the files written (in order) in its last epoch."""

    def __init__(self, root: Path) -> None:
        self.run = root / "ref"
        self.base = root / "base"
        self.writes: list[str] = []


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("crash")
    r = Reference(root)
    real_write, real_append = files.atomic_write, files.append_line
    snapped = False

    def atomic_write(path: Path, write: Any) -> None:
        nonlocal snapped
        real_write(path, write)
        if snapped:
            r.writes.append(Path(path).name)
        elif Path(path).name == "last.pt" and torch.load(path, weights_only=True)["epoch"] == 2:
            shutil.copytree(path.parent, r.base, ignore=shutil.ignore_patterns(".lock"))
            snapped = True

    def append(path: Path, line: str) -> None:
        real_append(path, line)
        if snapped:
            r.writes.append(path.name)

    mp = pytest.MonkeyPatch()
    mp.setattr(files, "atomic_write", atomic_write)
    mp.setattr(files, "append_line", append)
    try:
        assert main(["train", *ARGS, "--out", str(root), "--name", "ref"]) == 0
    finally:
        mp.undo()
    return r


def test_the_last_epoch_writes_every_file_and_last_pt_last(ref: Reference) -> None:
    # The sweep below is only as good as this list: every file of a run end, last.pt last.
    tops = [r["ema_eval_top1"] for r in rows(ref.run)]
    assert tops[-1] > max(tops[:-1]), f"the reference's last epoch must be its best: {tops}"
    assert ref.writes == ["metrics.jsonl", "model.safetensors", "best.pt", "summary.json",
                          "metrics.csv", "curves.png", "README.md", "last.pt"]


# ----------------------------------------------------------------------------- consistency


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_untorn(run: Path) -> None:
    """Right after a kill: every file that is there is complete (temps aside), its digest
    verified."""
    for name in ["last.pt", "best.pt"]:
        if (run / name).exists():
            ckpt_io.load_checkpoint(run / name)
    for name in ["summary.json", ".lock"]:
        if (run / name).exists():
            json.loads((run / name).read_text())
    if (run / "model.safetensors").exists():
        ckpt_io.read_safetensors(run / "model.safetensors")
    last = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert weights_epoch(run) >= last  # every other file is at least as new as last.pt


def weights_epoch(run: Path) -> int:
    with safe_open(run / "model.safetensors", "pt") as f:
        return int(f.metadata()["epoch"])


def assert_consistent_and_exact(run: Path, ref: Path) -> None:
    """After the resume: a finished run, every file agreeing, the reference's weights."""
    assert not list(run.glob(".*.tmp*")) and not (run / ".lock").exists()
    log = rows(run)
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == EPOCHS
    judged = "ema_eval_" if summary["weights"] == "ema" else "eval_"  # the weights it goes by
    assert summary["top1"] == log[-1][judged + "top1"] and summary["loss"] == log[-1][judged + "loss"]
    assert (run / "metrics.csv").read_text().count("\n") == EPOCHS + 1
    assert (run / "curves.png").stat().st_size > 0
    card = (run / "README.md").read_text()  # the model card, of the final epoch's figures
    assert card.startswith("---\nlibrary_name: convzoo\n")
    assert f"| {summary['split']} | {summary['weights']} | {EPOCHS} | {summary['top1']:.2f}% |" \
        in card
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert last["epoch"] == weights_epoch(run) == EPOCHS
    tops = [r[judged + "top1"] for r in log]
    assert best["epoch"] == 1 + tops.index(max(tops))  # the first epoch with the best top-1
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_last = torch.load(ref / "last.pt", weights_only=True)
    ref_best = torch.load(ref / "best.pt", weights_only=True)
    for key, value in ref_last["ema"]["module"].items():
        assert torch.equal(value, last["ema"]["module"][key]), key
    for key, value in ref_best["model"].items():
        assert torch.equal(value, best["model"][key]), key


def test_reference_is_consistent(ref: Reference) -> None:
    assert_consistent_and_exact(ref.run, ref.run)


# ----------------------------------------------------------------------------- kills

# Runs in a subprocess: for each point, fork a child that resumes a copy of the snapshot and
# dies (os._exit) at that write; the parent reports where each child died.
KILLER = r"""
import json, os, shutil, sys
from pathlib import Path
from convzoo.cli import main
from convzoo import files

base, out, points = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
real_write, real_append = files.atomic_write, files.append_line

def arm(k, how, marker):
    count = [0]
    def die(name):
        marker.write_text(name)
        os._exit(137)
    def atomic_write(path, write):
        if Path(path).name == "config.yaml":  # the resume's own start, not the last epoch
            return real_write(path, write)
        count[0] += 1
        if count[0] != k:
            return real_write(path, write)
        if how == "mid":  # the temp is complete, the rename never happens
            return real_write(path, lambda tmp: (write(tmp), die(Path(path).name)))
        real_write(path, write)
        die(Path(path).name)
    def append(path, line):
        count[0] += 1
        if count[0] != k:
            return real_append(path, line)
        if how == "mid":  # half a line reaches the disk
            with open(path, "a") as f:
                f.write(line[: len(line) // 2])
            die(path.name)
        real_append(path, line)
        die(path.name)
    files.atomic_write = atomic_write
    files.append_line = append

for i, (k, how) in enumerate(points):
    run, marker = out / f"p{i}", out / f"p{i}.died"
    shutil.copytree(base, run)
    pid = os.fork()
    if pid == 0:
        arm(k, how, marker)
        os._exit(100 + main(["train", "--resume", str(run)]))
    _, status = os.waitpid(pid, 0)
    print(json.dumps([i, os.waitstatus_to_exitcode(status)]), flush=True)
"""


def test_kill_at_every_write_of_the_last_epoch_then_resume(ref: Reference, tmp_path: Path):
    n = len(ref.writes)
    points = [(k, "mid") for k in range(1, n + 1)] + [(n, "after")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(ref.base), str(tmp_path),
                           json.dumps(points)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    codes = dict(json.loads(line) for line in proc.stdout.splitlines())
    for i, (k, how) in enumerate(points):
        run = tmp_path / f"p{i}"
        assert codes[i] == 137, f"point {k} {how}: the child was not killed ({codes[i]})"
        assert (tmp_path / f"p{i}.died").read_text() == ref.writes[k - 1]
        assert (run / ".lock").exists()  # the dead child's lock: stale, taken over below
        assert_untorn(run)
        assert main(["train", "--resume", str(run)]) == 0, (k, how)
        assert_consistent_and_exact(run, ref.run)


# ----------------------------------------------------------------------------- disk errors


def fail_at(mp: pytest.MonkeyPatch, k: int, err: int) -> None:
    """The k-th write of the last epoch fails with OSError(err) after writing part of its data."""
    real_write, real_append = files.atomic_write, files.append_line
    count = [0]

    def boom() -> None:
        raise OSError(err, os.strerror(err))

    def atomic_write(path: Path, write: Any) -> None:
        if Path(path).name != "config.yaml":
            count[0] += 1
            if count[0] == k:
                return real_write(path, lambda tmp: (write(tmp), boom()))
        return real_write(path, write)

    def append(path: Path, line: str) -> None:
        count[0] += 1
        if count[0] == k:  # a short write, then the disk is full
            with path.open("a") as f:
                f.write(line[: len(line) // 2])
            boom()
        real_append(path, line)

    mp.setattr(files, "atomic_write", atomic_write)
    mp.setattr(files, "append_line", append)


LAST = 8  # the last epoch's writes: metrics row ... README.md, last.pt (the list above)
CASES = [(k, errno.ENOSPC) for k in range(1, LAST + 1)] + [
    (LAST, errno.EROFS), (LAST, errno.EDQUOT), (2, errno.EACCES), (1, errno.EROFS)]


@pytest.mark.parametrize("k,err", CASES, ids=[f"write{k}-{errno.errorcode[e]}" for k, e in CASES])
def test_disk_error_at_a_write_is_one_line_then_resume_is_exact(
    ref: Reference, tmp_path: Path, k: int, err: int, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(ref.base, run)
    with pytest.MonkeyPatch.context() as mp:
        fail_at(mp, k, err)
        capsys.readouterr()
        code = main(["train", "--resume", str(run)])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("convzoo:")]
    assert code == 2
    assert lines == [f"convzoo: error: cannot write {run / ref.writes[k - 1]}: "
                     f"{os.strerror(err)}"]
    assert not list(run.glob(".*.tmp*")) and not (run / ".lock").exists()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == EPOCHS - 1  # not advanced
    assert main(["train", "--resume", str(run)]) == 0
    assert_consistent_and_exact(run, ref.run)


# Runs as root in its own mount namespace (``unshare -m``), on a tmpfs at sys.argv[1]: for each
# free-space budget, resume a copy of the snapshot with that much room left, then again with
# room to spare; copies of the directory after each go to sys.argv[3].
FULL_DISK = r"""
import contextlib, io, json, os, shutil, subprocess, sys
from pathlib import Path
from convzoo.cli import main


mnt, base, out, budgets = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), \
    json.loads(sys.argv[4])

def resize(n):
    subprocess.run(["mount", "-o", f"remount,size={n}", str(mnt)], check=True)

def resume(run):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--resume", str(run)])
    return code, [x for x in err.getvalue().splitlines() if x.startswith("convzoo:")]

for i, budget in enumerate(budgets):
    resize(64 << 20)
    run = mnt / f"b{i}"
    shutil.copytree(base, run)
    st = os.statvfs(mnt)
    resize((st.f_blocks - st.f_bfree) * st.f_frsize + budget)
    code, lines = resume(run)
    shutil.copytree(run, out / f"b{i}-full")
    resize(64 << 20)
    again, _ = resume(run)
    shutil.copytree(run, out / f"b{i}-final")
    shutil.rmtree(run)
    print(json.dumps([i, code, lines, again]), flush=True)
"""


def can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root and mount namespaces (tmpfs)")
def test_a_real_full_disk_is_one_line_and_resume_is_exact(ref: Reference, tmp_path: Path):
    """A tiny tmpfs is full from the start (the lock cannot be taken), or fills up at each big
    write of the last epoch in turn (model.safetensors, best.pt, last.pt: the small ones between
    them cannot be the first to fail), or not at all."""
    size = {n: (ref.run / n).stat().st_size for n in os.listdir(ref.run)}
    reports = size["summary.json"] + size["metrics.csv"] + size["curves.png"]
    budgets = {0: LOCK_FILE, 64 << 10: "model.safetensors",
               (size["model.safetensors"] + size["best.pt"]) // 2: "best.pt",
               size["last.pt"] + reports // 2: "last.pt",
               size["last.pt"] + reports + (1 << 20): None}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = f"mount -t tmpfs -o size=64m tmpfs {mnt} && exec {sys.executable} -c \"$0\" \"$@\""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, FULL_DISK, str(mnt),
                           str(ref.base), str(tmp_path), json.dumps(list(budgets))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(budgets)
    for (i, code, lines, again), failing in zip(results, budgets.values()):
        full, final = tmp_path / f"b{i}-full", tmp_path / f"b{i}-final"
        if failing is None:
            assert code == 0 and lines == []
        else:
            assert code == 2
            assert lines == [f"convzoo: error: cannot write {mnt / f'b{i}' / failing}: "
                             "No space left on device"]
            assert not list(full.glob(".*.tmp*")) and not (full / ".lock").exists()
            assert_untorn(full)
            assert torch.load(full / "last.pt", weights_only=True)["epoch"] == EPOCHS - 1
        assert again == 0
        assert_consistent_and_exact(final, ref.run)


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root and mount namespaces")
def test_a_real_read_only_filesystem_is_one_line(ref: Reference, tmp_path: Path) -> None:
    """Resuming a run, or starting one, on a read-only mount (root ignores chmod: bind-mount)."""
    run = tmp_path / "run"
    shutil.copytree(ref.base, run)
    (tmp_path / "out").mkdir()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    script = (f"mount --bind {tmp_path} {tmp_path} && mount -o remount,ro,bind {tmp_path} && "
              f"{sys.executable} -m convzoo train --resume {run}; echo $?; "
              f"{sys.executable} -m convzoo train {' '.join(ARGS)} --out {tmp_path}/out; echo $?")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.stdout.split()[-2:] == ["2", "2"], proc.stderr
    resumed, fresh = proc.stderr.splitlines()
    assert resumed == f"convzoo: error: cannot lock run directory {run}: Read-only file system"
    assert fresh.startswith(f"convzoo: error: cannot create run directory {tmp_path}/out/")
    assert fresh.endswith(": Read-only file system")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("at", ["config.yaml", "metrics.jsonl"])
def test_full_disk_on_a_fresh_run_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], at: str
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        if at == "config.yaml":
            mp.setattr(rundir, "write_config", lambda run_dir, cfg: rundir.write_file(
                run_dir / "config.yaml", lambda tmp: (_ for _ in ()).throw(OSError(28, "full"))))
        else:
            fail_at(mp, 1, errno.ENOSPC)  # its first metrics row
        code = main(["train", *ARGS, "--epochs", "1", "--out", str(tmp_path), "--name", "x"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("convzoo:")]
    assert code == 2 and err[0].startswith(f"convzoo: error: cannot write {tmp_path}/x/{at}: ")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- finished runs


def test_resume_of_a_finished_run_rebuilds_missing_files_and_says_so(
    ref: Reference, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(ref.run, run)
    before = {n: (run / n).read_bytes() for n in ["last.pt", "best.pt", "metrics.jsonl"]}
    expected = json.loads((run / "summary.json").read_text())
    for name in ["summary.json", "metrics.csv", "curves.png", "model.safetensors"]:
        (run / name).unlink()
    caplog.set_level("INFO", logger="convzoo")
    assert main(["train", "--resume", str(run)]) == 0
    assert "already trained to epoch 3; rebuilt model.safetensors, summary.json, metrics.csv, " \
           "curves.png" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary.pop("rebuilt") is True
    for key in ["model", "epochs", "top1", "top5", "loss", "best_top1", "params", "input",
                "train_seconds", "images_per_second", "timed_seconds"]:
        assert summary[key] == expected[key], key
    assert (run / "metrics.csv").read_bytes() == (ref.run / "metrics.csv").read_bytes()
    a, b = load_file(ref.run / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all((run / n).read_bytes() == data for n, data in before.items())  # not retrained

    # A 0-byte summary (torn by a filesystem that lost the rename) is rebuilt too; a complete run is
    # left alone and says so.
    (run / "summary.json").write_text("")
    caplog.clear()
    assert main(["train", "--resume", str(run)]) == 0
    assert "rebuilt summary.json" in caplog.text
    caplog.clear()
    assert main(["train", "--resume", str(run)]) == 0
    assert "already trained to epoch 3; nothing to do" in caplog.text
