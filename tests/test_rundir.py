"""One owner per run directory, atomic files, and the metrics log (train/rundir.py).

The lock is tested with real processes: forked ones for the lock itself (cheap: no new
interpreter) and ``python -m convzoo train`` for the two concurrency cases of the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convzoo import files
from convzoo.errors import ConvzooError
from convzoo.report import read_metrics
from convzoo.training import rundir
from convzoo.training.rundir import MetricsLog
from convzoo.training.runlock import LOCK_FILE, RunLock


def dead_pid() -> int:
    """A pid that just exited (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def lock_file(run: Path, pid: int, host: str | None = None) -> Path:
    path = run / LOCK_FILE
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started": "2026-11-30T10:00:00"}))
    return path


def in_child(fn, *args) -> int:  # type: ignore[no-untyped-def]
    """Run fn(*args) in a forked child; its exit code (0 = returned, 2 = ConvzooError)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except ConvzooError as e:
            print(f"convzoo: error: {e}", file=sys.stderr, flush=True)
            code = 2
        except BaseException:
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ----------------------------------------------------------------------------- the lock


def test_a_second_owner_fails_at_once_naming_the_holder(tmp_path: Path, capfd) -> None:
    with RunLock.acquire(tmp_path) as lock:
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        t0 = time.monotonic()
        assert in_child(RunLock.acquire, tmp_path) == 2
        assert time.monotonic() - t0 < 1.0  # at once: a live holder is never waited for
        err = capfd.readouterr().err
        assert f"is in use by another convzoo run (pid {os.getpid()} on " \
               f"{socket.gethostname()}, since {held['started']}" in err
        assert lock.fd is not None
    assert not (tmp_path / LOCK_FILE).exists()  # released
    assert in_child(RunLock.acquire, tmp_path) == 0  # and free again


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    lock_file(tmp_path, dead_pid())
    (tmp_path / ".last.pt.0a1b2c3d.tmp.pt").write_bytes(b"torn")  # its half-written temp
    (tmp_path / ".notes.tmp").write_text("mine")  # a hidden file of the user's: not a temp
    with RunLock.acquire(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert [p.name for p in tmp_path.glob(".*.tmp*")] == [".notes.tmp"]
    assert "taking over the stale lock of pid" in caplog.text


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path: Path) -> None:
    # The lock's pid is alive, but it is another process than the one that wrote it.
    path = lock_file(tmp_path, os.getppid())
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "boot_start": 1}))  # not the parent's start time
    with RunLock.acquire(tmp_path):
        pass


def test_a_live_process_without_the_kernel_lock_still_holds_it(tmp_path: Path) -> None:
    lock_file(tmp_path, os.getppid())  # e.g. a filesystem without flock: the pid decides
    with pytest.raises(ConvzooError, match=f"in use by another convzoo run .pid {os.getppid()}"):
        RunLock.acquire(tmp_path)


def test_a_lock_from_another_host_is_never_broken(tmp_path: Path) -> None:
    path = lock_file(tmp_path, dead_pid(), host="elsewhere.example")
    with pytest.raises(ConvzooError, match=f"locked by pid .* on elsewhere.example.*cannot "
                                           f"tell whether that process still runs: if it does "
                                           f"not, delete {path}"):
        RunLock.acquire(tmp_path)
    assert json.loads(path.read_text())["host"] == "elsewhere.example"


def test_an_unreadable_lock_is_not_broken(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("not json")
    with pytest.raises(ConvzooError, match="unreadable; if no convzoo process uses it, delete"):
        RunLock.acquire(tmp_path, wait=0.2)


@pytest.mark.slow
def test_two_processes_taking_over_one_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    """Eight forked processes race for the same stale lock, many times over."""
    for trial in range(5):
        run = tmp_path / str(trial)
        run.mkdir()
        lock_file(run, dead_pid())
        go = time.time() + 0.3
        pids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                while time.time() < go:
                    pass
                try:
                    RunLock.acquire(run)
                except ConvzooError:
                    with (run / "losers").open("a") as f:
                        f.write(f"{os.getpid()}\n")
                    os._exit(2)
                with (run / "winners").open("a") as f:
                    f.write(f"{os.getpid()}\n")
                # Hold it until the seven others have looked: under load a process may first
                # run after a fixed hold has ended, and then the winner's lock is rightly stale.
                deadline = time.time() + 60
                while time.time() < deadline and (
                        not (run / "losers").exists()
                        or len((run / "losers").read_text().split()) < 7):
                    time.sleep(0.01)
                os._exit(0)
            pids.append(pid)
        codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
        assert codes == [0] + [2] * 7, codes
        assert len((run / "winners").read_text().split()) == 1


@pytest.mark.slow
def test_a_forked_child_does_not_keep_a_dead_owner_s_lock(tmp_path: Path) -> None:
    """A trainer killed while its DataLoader workers live on: its lock is stale at once."""
    script = (
        "import os, sys, time\n"
        "from convzoo.training.runlock import RunLock\n"
        f"RunLock.acquire({str(tmp_path)!r})\n"
        "if os.fork() == 0:\n"
        "    time.sleep(10); os._exit(0)\n"  # the worker outlives its parent
        "print('locked', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.wait()
    with RunLock.acquire(tmp_path):
        pass


@pytest.mark.slow
def test_sigterm_releases_the_lock(tmp_path: Path) -> None:
    script = (
        "import time\n"
        "from convzoo.training.runlock import RunLock\n"
        f"lock = RunLock.acquire({str(tmp_path)!r})\n"
        "try:\n"
        "    print('locked', flush=True); time.sleep(60)\n"
        "finally:\n"
        "    lock.release()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not (tmp_path / LOCK_FILE).exists()
    assert "terminated (SIGTERM)" in proc.stderr.read()


# ----------------------------------------------------------------------------- new directories


def test_new_run_directories_are_created_atomically(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("")  # an earlier run
    (tmp_path / "x-2").mkdir()  # made by the user, empty: taken
    with rundir.create(tmp_path, "x") as lock:
        assert lock.run_dir == tmp_path / "x-2"
        # Creators racing for the same name never share a directory: each gets a new one.
        go, pids = time.time() + 0.3, []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                while time.time() < go:
                    pass
                rundir.create(tmp_path, "x").run_dir.joinpath(str(os.getpid())).touch()
                os._exit(0)
            pids.append(pid)
        assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0] * 6
    made = {f"x-{n}" for n in range(3, 9)}
    assert {p.name for p in tmp_path.iterdir()} == {"x", "x-2"} | made
    owners = [q.name for d in made for q in (tmp_path / d).iterdir() if q.name != LOCK_FILE]
    assert sorted(owners) == sorted(str(p) for p in pids)


# ----------------------------------------------------------------------------- atomic files


def test_atomic_write_keeps_the_old_file_on_error_and_follows_the_umask(tmp_path: Path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(ConvzooError, match=f"cannot write {path}: No space left on device"):
        rundir.write_file(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]
    rundir.write_text(path, "new")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temps_of_every_writer_are_recognised(tmp_path: Path) -> None:
    for name in [".last.pt.1a2b3c4d.tmp.pt", ".curves.png.ff00ee11.tmp.png",
                 ".config.yaml.12345678.tmp"]:
        (tmp_path / name).write_text("")
    mine = [".notes.tmp", ".backup.tmp.txt", ".x.1a2b.tmp"]  # hidden files of the user's
    for name in [".lock", "best.pt", *mine]:
        (tmp_path / name).write_text("")
    assert files.remove_stale_temps(tmp_path) == 3
    assert sorted(os.listdir(tmp_path)) == sorted([".lock", "best.pt", *mine])


# ----------------------------------------------------------------------------- metrics.jsonl


def test_a_torn_last_line_is_skipped_on_read_and_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for cut in [1, 5, 15]:  # a kill anywhere inside the appended line
        line = json.dumps({"epoch": 3, "train_loss": 0.5}) + "\n"
        path.write_text('{"epoch": 1}\n{"epoch": 2}\n' + line[:cut])
        assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
        MetricsLog(tmp_path, keep_through=2).append({"epoch": 3})
        assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'


def test_a_complete_line_cut_before_its_newline_is_kept(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}')
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    MetricsLog(tmp_path, keep_through=2).append({"epoch": 3})
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_resuming_drops_later_rows_by_a_new_file_never_in_place(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(tmp_path)
    for e in range(1, 6):
        log.append({"epoch": e})
    inode = path.stat().st_ino
    MetricsLog(tmp_path, keep_through=5)  # nothing to drop: untouched
    assert path.stat().st_ino == inode
    MetricsLog(tmp_path, keep_through=3)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert path.stat().st_ino != inode  # renamed over: a kill here keeps one whole file


def test_a_bad_line_inside_the_log_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n{"epoch": 3}')
    with pytest.raises(ConvzooError, match=r"metrics.jsonl:2: not valid JSON"):
        MetricsLog(tmp_path, keep_through=3)


# ----------------------------------------------------------------------------- two CLI processes

ARGS = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=200",
        "--batch-size", "32", "--device", "cpu", "--set", "train.loggers=[]",
        "--set", "train.threads=1"]


def convzoo(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "convzoo", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_trains_with_the_same_name_get_two_directories(tmp_path: Path) -> None:
    procs = [convzoo("train", *ARGS, "--epochs", "2", "--out", str(tmp_path), "--name", "x")
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(Path(o.strip().splitlines()[-1]).name for o, _ in outs) == ["x", "x-2"]
    for name in ["x", "x-2"]:
        assert epochs_logged(tmp_path / name) == [1, 2]
        assert not (tmp_path / name / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_resumes_of_one_run_one_trains_the_other_fails_at_once(tmp_path: Path) -> None:
    run = tmp_path / "r"
    first = convzoo("train", *ARGS, "--epochs", "1", "--out", str(tmp_path), "--name", "r")
    assert first.wait(timeout=600) == 0
    procs = [convzoo("train", "--resume", str(run), "--epochs", "20") for _ in range(2)]
    codes: list[int | None] = [None, None]
    other_running = False
    while None in codes:  # note who ends first
        for i, p in enumerate(procs):
            if codes[i] is None and p.poll() is not None:
                codes[i] = p.returncode
                if sum(c is not None for c in codes) == 1:
                    other_running = procs[1 - i].poll() is None
        time.sleep(0.05)
    assert sorted(codes) == [0, 2], [p.stderr.read() for p in procs]
    loser, winner = (procs[0], procs[1]) if codes[0] == 2 else (procs[1], procs[0])
    assert other_running, "the second process did not fail at once"
    err = loser.stderr.read().strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"convzoo: error: {run} is in use by another convzoo run "
                             f"(pid {winner.pid} on {socket.gethostname()}, since ")
    assert epochs_logged(run) == list(range(1, 21))  # each epoch once, by one owner


def test_a_lock_of_an_earlier_torchrun_round_is_taken_over_from_any_host(
        tmp_path: Path, monkeypatch) -> None:
    """torchrun --max-restarts stops every worker of a round before the next starts: a lock left
    by round 0 of this job, even on another node, is stale; another job's never is."""
    theirs = {"pid": 1, "host": "other-node", "started": "2026-01-01T00:00:00", "job": "j",
              "round": 0}
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "j")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    (tmp_path / LOCK_FILE).write_text(json.dumps(theirs))
    with RunLock.acquire(tmp_path) as lock:
        assert (lock.holder.job, lock.holder.round) == ("j", 1)
    (tmp_path / LOCK_FILE).write_text(json.dumps({**theirs, "job": "another"}))
    with pytest.raises(ConvzooError, match="locked by pid 1 on other-node"):
        RunLock.acquire(tmp_path, wait=0.1)
    (tmp_path / LOCK_FILE).write_text(json.dumps({**theirs, "round": 1}))  # this round: alive
    with pytest.raises(ConvzooError, match="locked by pid 1 on other-node"):
        RunLock.acquire(tmp_path, wait=0.1)
