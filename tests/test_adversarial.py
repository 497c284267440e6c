"""Bad input, one line each: every case must exit 2 with one ``convzoo: error:`` line naming the
problem, print no traceback, and leave every existing file (a finished run, its caches)
byte-identical.

Extend it with one line per new bad input. A case is a command line with placeholders:

    {run}   a copy of a finished one-epoch digits run (compared byte for byte afterwards)
    {tmp}   an empty scratch folder (runs started by the case go under {tmp}/runs)
    {file}  a scratch file the case's ``setup`` wrote (``setup(tmp) -> None``)

``names`` is text the error line must contain: the key, file or value at fault.
Cases are grouped by the part of convzoo that must catch them; each group is its own list so
that the parts can grow independently.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from convzoo.cli import main


@dataclass(frozen=True)
class Bad:
    argv: str  # command line after `convzoo`, with {run} / {tmp} / {file} placeholders
    names: str  # the error line must contain this (key, file or value at fault)
    setup: Callable[[Path], None] | None = None  # writes {tmp}/file (or more) before the call
    id: str = ""  # test id (default: the command line)


# ----------------------------------------------------------------------------- the cases


# Config keys and values: types, choices and ranges (config.py validates them in one place).
CONFIG_CASES: list[Bad] = [
    Bad("train --data digits --set train.batch_size=oops --out {tmp}/runs", "train.batch_size"),
    Bad("train --data digits --set nosuch.key=1 --out {tmp}/runs", "nosuch"),
    Bad("train --recipe {file} --out {tmp}/runs", "invalid YAML",
        setup=lambda tmp: (tmp / "file").write_text("optim: {lr: [0.1\n")),
]

# Data sources, archives, images and caches.
DATA_CASES: list[Bad] = [
    Bad("train --data {tmp}/no-such-folder --out {tmp}/runs", "no-such-folder"),
]

def _run(tmp: Path, lock: dict | str | None = None, mode: int | None = None) -> None:
    """{tmp} as a run directory (config.yaml), with a lock file and/or a permission mode."""
    if mode is not None and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    (tmp / "config.yaml").write_text("data: {source: digits}\n")
    if lock is not None:
        text = lock if isinstance(lock, str) else json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-11-30T10:00:00",
             **lock})
        (tmp / ".lock").write_text(text)
    if mode is not None:
        tmp.chmod(mode)


def _read_only(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path.mkdir()
    path.chmod(0o555)


# Run directories, checkpoints, resume, eval / predict / export of a run.
RUN_CASES: list[Bad] = [
    Bad("eval {tmp}/not-a-run", "not-a-run"),
    Bad("train --resume {tmp}", "not a run directory"),
    Bad("train --resume {tmp}", "in use by another convzoo run",
        setup=lambda tmp: _run(tmp, lock={}), id="resume-locked-by-a-live-process"),
    Bad("train --resume {tmp}", "on elsewhere.example",
        setup=lambda tmp: _run(tmp, lock={"host": "elsewhere.example", "pid": 1}),
        id="resume-locked-from-another-host"),
    Bad("train --resume {tmp}", "unreadable", setup=lambda tmp: _run(tmp, lock="garbage"),
        id="resume-unreadable-lock"),
    Bad("train --resume {tmp}", "Permission denied", setup=lambda tmp: _run(tmp, mode=0o555),
        id="resume-read-only-run"),
    Bad("train --data digits --out {tmp}/ro", "Permission denied",
        setup=lambda tmp: _read_only(tmp / "ro"), id="train-into-read-only-folder"),
    Bad("train --data digits --set data.image_size=8 --set data.limit=64 --batch-size 32 "
        "--lr 1e9 --out {tmp}/runs", "training diverged in epoch"),
]

CASES = CONFIG_CASES + DATA_CASES + RUN_CASES


# ----------------------------------------------------------------------------- the harness


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (names relative to `root`)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id or c.argv)
def test_bad_input_is_one_line_and_changes_nothing(
    case: Bad, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if case.setup is not None:
        case.setup(scratch)
    before_run, before_scratch = snapshot(run), snapshot(scratch)
    argv = shlex.split(case.argv.format(run=run, tmp=scratch, file=scratch / "file"))
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in lines if line.startswith("convzoo: error:")]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert case.names in errors[0], f"error does not name {case.names!r}: {errors[0]}"
    assert snapshot(run) == before_run, "the run directory changed"
    after = snapshot(scratch)
    changed = {k for k in before_scratch if after.get(k) != before_scratch[k]}
    assert not changed, f"existing files changed: {sorted(changed)}"
    assert not (scratch / "runs").exists() or not any((scratch / "runs").iterdir()), \
        "a failed run left a run directory"
