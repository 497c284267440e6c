"""convzoo never deletes or replaces a file it did not create, whatever fails and whatever flag
was given: every command that writes, pointed at what is not its to replace, one line per case.

A case is a command line with placeholders, run in a scratch folder ``{tmp}`` that holds the
user's things (``user_home``): ``victim.txt``, ``notes.txt``, ``foreign/`` (a non-empty folder of
the user's: ``thesis.txt``, ``data/x.bin``), ``empty/`` (an empty folder of the user's),
``imgs/`` (an image-folder tree: train/ and test/ of 2 classes), and, by the case's ``target``,
one more node at ``{t}``:

    foreign   the name of the non-empty folder foreign/        (t = {tmp}/foreign)
    empty     an empty folder of the user's                    (t = {tmp}/empty)
    symlink   a symbolic link to victim.txt                    (t = {tmp}/link<suffix>)
    fifo      a FIFO (os.mkfifo)                               (t = {tmp}/fifo<suffix>)
    device    a character device, /dev/null's numbers (mknod)  (t = {tmp}/dev<suffix>)
    dir       a folder named like a file                       (t = {tmp}/dir<suffix>)
    file      a regular file of the user's                     (t = {tmp}/file<suffix>)

``{run}`` is a copy of a finished digits run (its files are the command's input, and compared
byte for byte too), ``{imgs}`` the image tree. ``fail`` makes the command fail at the worst
moment: ``diverge`` (a learning rate that blows up at step 1) or ``disk`` (every atomic write and
every pack shard write raises ENOSPC, as a full disk does). ``refused``: the error line the
command must end with (exit 2); None: the command succeeds (the output went somewhere that
harmed nothing). Either way every user file, folder, link and node is afterwards exactly as it
was, and a refused or failed command leaves nothing new behind but what ``leaves`` names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from convzoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--data {imgs} --set data.image_size=8 --batch-size 4 --epochs 1 "
        "--set train.loggers=[] --set data.root={tmp}/.cache")


@dataclass(frozen=True)
class Case:
    argv: str  # after `convzoo`; placeholders {tmp} {t} {run} {imgs} {tiny}
    refused: str | None  # the error line must contain this; None: the command succeeds
    target: str = ""  # foreign | empty | symlink | fifo | device | dir | file ('' = none)
    suffix: str = ""  # of the {t} node
    fail: str = ""  # "" | diverge | disk
    leaves: tuple[str, ...] = ()  # new entries of {tmp} a failed command may leave
    id: str = ""


CASES: list[Case] = [
    # ---- train: a run directory is a new folder, an empty one, or a convzoo run; nothing else
    Case("train {tiny} --out {tmp} --name foreign --resume auto", "not a convzoo run",
         "foreign", id="auto-into-foreign-folder"),
    Case("train {tiny} --out {tmp} --name link --resume auto", "is a symbolic link", "symlink",
         id="auto-into-link-to-a-file"),
    Case("train {tiny} --out {tmp} --name fifo --resume auto", "is a FIFO", "fifo",
         id="auto-into-fifo"),
    Case("train {tiny} --out {tmp} --name dev --resume auto", "is a device", "device",
         id="auto-into-device"),
    Case("train {tiny} --out {tmp} --name file --resume auto", "is a file", "file",
         id="auto-into-file"),
    Case("train {tiny} --out {tmp} --name foreign --resume auto --lr 1e9", "not a convzoo run",
         "foreign", fail="diverge", id="auto-into-foreign-folder-diverging"),
    Case("train {tiny} --out {tmp} --name empty --resume auto --lr 1e9", "training diverged",
         "empty", fail="diverge", id="auto-into-empty-user-folder-diverging"),
    Case("train {tiny} --out {tmp} --name empty --resume auto", "No space left", "empty",
         fail="disk", id="auto-into-empty-user-folder-disk-full"),
    Case("train {tiny} --out {tmp} --name empty --lr 1e9", "training diverged", "empty",
         fail="diverge", id="train-into-empty-user-folder-diverging"),
    Case("train {tiny} --out {tmp}/new/runs --name x --lr 1e9", "training diverged",
         fail="diverge", id="train-new-folders-diverging"),
    Case("train {tiny} --out {tmp}/new/runs --name x", "No space left", fail="disk",
         id="train-new-folders-disk-full"),
    Case("train {tiny} --out {tmp} --name foreign", None, "foreign", leaves=("foreign-2",),
         id="train-beside-foreign-folder"),
    Case("train {tiny} --out {tmp} --name link", None, "symlink", leaves=("link-2",),
         id="train-beside-link"),
    Case("train {tiny} --out {t} --name x", "is not a folder", "file", id="out-is-a-file"),
    Case("train {tiny} --out {t} --name x", "is not a folder", "device", id="out-is-a-device"),
    Case("train --resume {tmp}/foreign", "not a run directory", "foreign",
         id="resume-a-foreign-folder"),
    # ---- pack: replaces only a convzoo pack, never its source or anything around it
    Case("pack {imgs} {imgs} --overwrite --workers 1", "is the source", id="pack-onto-source"),
    Case("pack {imgs} {imgs}/train/a/out --overwrite --workers 1", "is inside the source",
         id="pack-inside-source"),
    Case("pack {imgs}/train {imgs} --overwrite --workers 1", "contains the source",
         id="pack-around-source"),
    Case("pack {imgs} {t} --overwrite --workers 1", "not a convzoo pack", "foreign",
         id="pack-overwrite-foreign-folder"),
    Case("pack {imgs} {t} --workers 1", "already exists", "foreign", id="pack-foreign-folder"),
    Case("pack {imgs} {t} --overwrite --workers 1", "symbolic link", "symlink",
         id="pack-onto-link"),
    Case("pack {imgs} {t} --overwrite --workers 1", "is a FIFO", "fifo", id="pack-onto-fifo"),
    Case("pack {imgs} {t} --overwrite --workers 1", "is a device", "device",
         id="pack-onto-device"),
    Case("pack {imgs} {t} --overwrite --workers 1", "is a file", "file", id="pack-onto-file"),
    Case("pack {imgs} {t} --workers 1", None, "empty", id="pack-into-empty-folder"),
    Case("pack {imgs} {tmp}/new.pack --workers 1", "No space left", fail="disk",
         id="pack-disk-full"),
    # ---- export: a new file or a regular file with the format's suffix, not a run's own
    Case("export {run} --format safetensors --out {t}", "is a device", "device",
         ".safetensors", id="export-onto-device"),
    Case("export {run} --format safetensors --out /dev/full", "expected a .safetensors file",
         id="export-onto-dev-full"),
    Case("export {run} --format safetensors --out {t}", "is a FIFO", "fifo", ".safetensors",
         id="export-onto-fifo"),
    Case("export {run} --format safetensors --out {t}", "symbolic link", "symlink",
         ".safetensors", id="export-onto-link"),
    Case("export {run} --format safetensors --out {t}", "a directory", "dir", ".safetensors",
         id="export-onto-folder"),
    Case("export {run} --format safetensors --out {t}", "expected a .safetensors file", "file",
         ".txt", id="export-onto-text-file"),
    Case("export {run} --format safetensors --out {run}/model.safetensors",
         "an input of this command", id="export-onto-the-run-s-weights"),
    Case("export {run}/model.safetensors --format safetensors", "an input of this command",
         id="export-onto-its-input"),
    Case("export {run} --format onnx --out {run}/last.pt", "expected a .onnx file",
         id="export-onto-last-pt"),
    Case("export {run} --format safetensors --out {t}", "No space left", "file",
         ".safetensors", fail="disk", id="export-disk-full"),
    Case("export {run} --format pt2 --out {t}", "is a device", "device", ".pt2",
         id="export-pt2-onto-device"),
    Case("export {run} --format pt2 --out {t}", "symbolic link", "symlink", ".pt2",
         id="export-pt2-onto-link"),
    Case("export {run} --format pt2 --out {run}/last.pt", "expected a .pt2 file",
         id="export-pt2-onto-last-pt"),
    Case("export {run} --format pt2 --out {t}", "No space left", "file", ".pt2", fail="disk",
         id="export-pt2-disk-full"),
    # ---- predict --out
    Case("predict {run} {imgs}/test --out {t}", "is a FIFO", "fifo", ".csv",
         id="predict-onto-fifo"),
    Case("predict {run} {imgs}/test --out {t}", "symbolic link", "symlink", ".csv",
         id="predict-onto-link"),
    Case("predict {run} {imgs}/test --out {t}", "is a device", "device", ".json",
         id="predict-onto-device"),
    Case("predict {run} {imgs}/test --out {t}", "a directory", "dir", ".csv",
         id="predict-onto-folder"),
    Case("predict {run} {imgs}/test --out {run}/summary.json", "an input of this command",
         id="predict-onto-the-run-s-summary"),
    Case("predict {run} {imgs}/test/a/0.png --out {t}", "expected a .csv or .json file",
         "file", ".png", id="predict-onto-an-image"),
    Case("predict {run} {imgs}/test --out {t}", "No space left", "file", ".csv", fail="disk",
         id="predict-disk-full"),
    # ---- eval --report DIR: a new, empty or report folder
    Case("eval {run} --report {t}", "not an evaluation report", "foreign",
         id="report-into-foreign-folder"),
    Case("eval {run} --report {run}", "is a run directory", id="report-into-the-run"),
    Case("eval {run} --data {imgs}/test --report {imgs}/test", "an input of this command",
         id="report-into-its-data"),
    Case("eval {run} --report {t}", "symbolic link", "symlink", id="report-onto-link"),
    Case("eval {run} --report {t}", "is a FIFO", "fifo", id="report-onto-fifo"),
    Case("eval {run} --report {t}", "is a file", "file", id="report-onto-file"),
    Case("eval {run} --report {t}", None, "empty", id="report-into-empty-folder"),
    Case("eval {run} --report {tmp}/rep", "No space left", fail="disk", leaves=("rep",),
         id="report-disk-full"),
    # ---- plot --out
    Case("plot {run} {run} --out {run}/curves.png", "an input of this command",
         id="plot-onto-the-run-s-curves"),
    Case("plot {run} {run} --out {t}", "symbolic link", "symlink", ".png", id="plot-onto-link"),
    Case("plot {run} {run} --out {t}", "is a FIFO", "fifo", ".png", id="plot-onto-fifo"),
    Case("plot {run} {run} --out {t}", "is a device", "device", ".png", id="plot-onto-device"),
    Case("plot {run} {run} --out {t}", "expected a .png", "file", ".txt",
         id="plot-onto-text-file"),
    Case("plot {run} {run} --out {t}", "No space left", "file", ".png", fail="disk",
         id="plot-disk-full"),
    # ---- bench --out-md / --out-csv
    Case("bench --model resnet20 --steps 1 --warmup 0 --out-md {t}", "symbolic link", "symlink",
         ".md", id="bench-md-onto-link"),
    Case("bench --model resnet20 --steps 1 --warmup 0 --out-csv {t}", "is a FIFO", "fifo",
         ".csv", id="bench-csv-onto-fifo"),
    Case("bench --model resnet20 --steps 1 --warmup 0 --out-csv {run}/metrics.csv",
         "a file of the run", id="bench-csv-onto-a-run-s-metrics"),
]


# ----------------------------------------------------------------------------- the harness


def user_home(tmp: Path) -> None:
    """The user's things (module docstring)."""
    (tmp / "victim.txt").write_text("the user's precious file\n")
    (tmp / "notes.txt").write_text("notes\n")
    (tmp / "foreign" / "data").mkdir(parents=True)
    (tmp / "foreign" / "thesis.txt").write_text("chapter 1\n")
    (tmp / "foreign" / "data" / "x.bin").write_bytes(os.urandom(64))
    (tmp / "empty").mkdir()
    for split, n in (("train", 6), ("test", 2)):
        for c, name in enumerate("ab"):
            folder = tmp / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (200 * c, 30 * i, 90)).save(folder / f"{i}.png")


def make_target(tmp: Path, kind: str, suffix: str) -> Path:
    if kind in ("foreign", "empty"):
        return tmp / kind
    t = tmp / {"symlink": "link", "fifo": "fifo", "device": "dev", "dir": "dir",
               "file": "file"}[kind]
    t = t.with_name(t.name + suffix)
    if kind == "symlink":
        t.symlink_to(tmp / "victim.txt")
    elif kind == "fifo":
        os.mkfifo(t)
    elif kind == "device":
        try:
            os.mknod(t, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif kind == "dir":
        t.mkdir()
    elif kind == "file":
        t.write_bytes(b"the user's own " + suffix.encode() + b" file\n")
    return t


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): its kind and content."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes())
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), st.st_rdev)
    return out


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails as a full disk does, after filling its temp file (so the temp
    must be removed), and so does every pack shard write."""
    from convzoo import files
    from convzoo.data.packs import writer as pack

    real = files.atomic_write

    def atomic_write(path, write):
        def fill_then_fail(tmp):
            write(tmp)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        real(path, fill_then_fail)

    def shard_write(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "atomic_write", atomic_write)
    monkeypatch.setattr(pack._ShardWriter, "write", shard_write)


@contextlib.contextmanager
def deadline(seconds: int):
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (blocked on a FIFO?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_writer_never_destroys_what_it_did_not_make(
        case: Case, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    tmp = tmp_path / "home"
    tmp.mkdir()
    user_home(tmp)
    t = make_target(tmp, case.target, case.suffix) if case.target else tmp / "none"
    imgs = tmp / "imgs"
    tiny = TINY.format(imgs=imgs, tmp=tmp_path)
    argv = shlex.split(case.argv.format(tmp=tmp, t=t, run=run, imgs=imgs, tiny=tiny))
    before_home, before_run = snapshot(tmp), snapshot(run)
    if case.fail == "disk":
        full_disk(monkeypatch)
    capsys.readouterr()

    with deadline(120):  # a write into a FIFO would block forever: fail instead
        code = main(argv)

    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    if case.refused is None:
        assert code == 0, err
    else:
        errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
        assert code == 2 and len(errors) == 1, f"exit {code}:\n{err}"
        assert case.refused in errors[0], errors[0]
    after = snapshot(tmp)
    changed = sorted(k for k, v in before_home.items() if after.get(k) != v)
    assert not changed, f"user entries changed or gone: {changed}"
    assert snapshot(run) == before_run, "the input run changed"
    if case.refused is not None:  # a refused or failed command leaves nothing new
        new = {k.split(os.sep)[0] for k in after.keys() - before_home.keys()}
        assert new <= set(case.leaves), f"left behind: {sorted(new)}"


# ----------------------------------------------------------------------------- pack races


def test_a_pack_never_replaces_a_destination_that_appeared_while_it_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two packs racing into one new name: the one that finishes second fails with one line,
    and the first one's pack is left complete."""
    from convzoo.data.packs import writer as packing
    from convzoo.data.packs.reader import is_packed, read_index

    user_home(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "imgs", other)
    dest = tmp_path / "out.pack"
    real_finish, raced = packing._ShardWriter.finish, []

    def finish(self):  # while this pack is being written, another one lands at dest
        if not raced:
            raced.append(True)
            packing.pack(other, dest, workers=1, progress=False)
        return real_finish(self)

    monkeypatch.setattr(packing._ShardWriter, "finish", finish)
    with pytest.raises(packing.ConvzooError, match="appeared while the pack was being written"):
        packing.pack(tmp_path / "imgs", dest, workers=1, progress=False)
    assert is_packed(dest) and read_index(dest)["source"] == str(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["victim.txt", "notes.txt", "foreign", "empty", "imgs", "other", "out.pack"])


def test_stale_pack_temps_are_removed_but_look_alikes_of_the_user_are_not(
        tmp_path: Path) -> None:
    """A killed pack's temp folders (marked, or a renamed old pack) are removed by the next pack
    into the same place; a user's file or folder that only matches the name pattern is not."""
    from convzoo.data.packs import writer as packing

    user_home(tmp_path)
    dest = tmp_path / "out.pack"
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale = tmp_path / f"out.pack.tmp-{dead}-abc"
    stale.mkdir()
    (stale / packing.TEMP_MARK).write_text("")
    (stale / "shard").write_bytes(b"x")
    looks = [tmp_path / f"out.pack.old-{dead}-backup", tmp_path / f"out.pack.src-{dead}-x"]
    looks[0].mkdir()
    (looks[0] / "thesis.txt").write_text("mine")
    looks[1].write_text("a file of the user's")
    packing.pack(tmp_path / "imgs", dest, workers=1, progress=False)
    assert not stale.exists()
    assert (looks[0] / "thesis.txt").read_text() == "mine"
    assert looks[1].read_text() == "a file of the user's"


def test_pack_overwrite_replaces_a_pack_only_once_the_new_one_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convzoo.data.packs import writer as packing
    from convzoo.data.packs.reader import read_index

    user_home(tmp_path)
    dest = tmp_path / "out.pack"
    packing.pack(tmp_path / "imgs", dest, workers=1, progress=False)
    before = snapshot(dest)
    full_disk(monkeypatch)
    with pytest.raises(packing.ConvzooError, match="No space left"):
        packing.pack(tmp_path / "imgs", dest, workers=1, progress=False, overwrite=True)
    assert snapshot(dest) == before  # the old pack, untouched
    monkeypatch.undo()
    packing.pack(tmp_path / "imgs", dest, workers=1, progress=False, overwrite=True)
    assert read_index(dest)["source"] == str(tmp_path / "imgs")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.pack")) == \
        ["out.pack"]
