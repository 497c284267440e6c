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

import shlex
import shutil
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

def _png(path: Path, size: tuple[int, int] = (8, 8), noise: bool = False) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8) if noise else np.zeros((*size, 3),
                                                                                    np.uint8)
    Image.fromarray(arr).save(path)


def _tree(root: Path, classes: tuple[str, ...] = ("0", "1")) -> Path:
    for split in ("train", "test"):
        for c in classes:
            _png(root / split / c / "a.png")
    return root


def _bomb(path: Path) -> None:
    """A 1-bit PNG of 12,000 x 12,000 pixels (144 Mpx) in a few KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" * 1501) for _ in range(12_000)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000,
                                                                         12_000, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _tar(root: Path, dest: Path) -> None:
    import tarfile

    with tarfile.open(dest, "w:gz") as tar:
        tar.add(root, arcname=root.name)


def _corrupt_targz(tmp: Path) -> None:
    _tar(_tree(tmp / "src"), tmp / "bad.tar.gz")
    data = (tmp / "bad.tar.gz").read_bytes()
    (tmp / "bad.tar.gz").write_bytes(data[:len(data) // 2])  # a partial download


def _big_member(tmp: Path) -> None:
    _png(_tree(tmp / "src") / "train" / "0" / "big.png", (700, 700), noise=True)  # ~1.5 MB
    _tar(tmp / "src", tmp / "big.tar.gz")


def _bomb_tree(tmp: Path) -> None:
    _bomb(_tree(tmp / "src") / "train" / "1" / "bomb.png")


def _bad_index(tmp: Path) -> None:
    (tmp / "pk").mkdir()
    (tmp / "pk" / "index.json").write_text('{"format": "convzoo-packed", "version": 1}')


# Data sources, archives, images and caches.
DATA_CASES: list[Bad] = [
    Bad("train --data {tmp}/no-such-folder --out {tmp}/runs", "no-such-folder"),
    Bad("train --data {tmp}/bad.tar.gz --out {tmp}/runs", "bad.tar.gz", setup=_corrupt_targz,
        id="corrupt-targz"),
    Bad("pack {tmp}/bad.tar.gz {tmp}/out", "bad.tar.gz", setup=_corrupt_targz,
        id="pack-corrupt-targz"),
    Bad("train --data {tmp}/src --out {tmp}/runs", "bomb.png", setup=_bomb_tree,
        id="decompression-bomb"),
    Bad("pack {tmp}/src {tmp}/out --workers 1", "bomb.png", setup=_bomb_tree,
        id="pack-decompression-bomb"),
    Bad("predict {run} {tmp}/src/train/1/bomb.png", "bomb.png", setup=_bomb_tree,
        id="predict-decompression-bomb"),
    Bad("train --data {tmp}/big.tar.gz --set data.max_member_mb=1 --out {tmp}/runs",
        "data.max_member_mb=1", setup=_big_member, id="oversized-archive-member"),
    Bad("train --data {tmp}/pk --out {tmp}/runs", "index.json", setup=_bad_index,
        id="malformed-pack-index"),
    Bad("eval {run} --data {tmp}/src", "'zebra'", id="eval-unknown-class",
        setup=lambda tmp: _tree(tmp / "src", ("0", "zebra"))),
    Bad("eval {run} --data {tmp}/src --split val", "--split val", id="eval-missing-split",
        setup=lambda tmp: _tree(tmp / "src")),
    Bad("train --data {tmp}/src --out {tmp}/runs", "no class folders", id="folder-without-images",
        setup=lambda tmp: (tmp / "src" / "train").mkdir(parents=True)),
]

# Run directories, checkpoints, resume, eval / predict / export of a run.
RUN_CASES: list[Bad] = [
    Bad("eval {tmp}/not-a-run", "not-a-run"),
    Bad("train --resume {tmp}", "not a run directory"),
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
