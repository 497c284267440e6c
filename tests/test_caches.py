"""Caches that stay: one decode cache per (folder content, decode geometry),
shared by every command; replaced only when its source changed; `convzoo cache list|clear`
to see and reclaim them, removing only files convzoo made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.cli import main
from convzoo.config import DataConfig
from convzoo.data import caches, images
from convzoo.data.images import Geometry
from convzoo.data.loading.registry import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--set", "train.loggers=[]", "--set", "train.threads=1", "--device", "cpu",
         "--set", "data.workers=1"]


def _folder(root: Path, size: int = 12, n: int = 6, seed: int = 0) -> Path:
    """train/ and test/ of two classes, `n` PNGs of size x size each."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the decodes of whole sources (each call decodes every split of one source)."""
    calls: list[int] = []
    real = images.decode_splits

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "decode_splits", counting)
    return calls


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's default data.root (~/.cache/convzoo) under a fresh HOME: where train (by
    default) and eval (always) put their caches."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home" / ".cache" / "convzoo" / "cache"


def _cfg(src: Path, root: Path, **kw) -> DataConfig:
    return DataConfig(source=str(src), root=str(root), workers=1, **kw)


def _pt(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.pt"))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- one key


def test_train_eval_train_on_one_folder_decodes_once(tmp_path: Path, home: Path,
                                                     decodes: list[int]) -> None:
    """The issue's case through the commands themselves: eval used to key its cache by the
    run's geometry and train by its options, each deleting the other's."""
    data = _folder(tmp_path / "data")
    run = ["train", "--data", str(data), "--model", "resnet20", "--epochs", "1",
           "--batch-size", "8", "--out", str(tmp_path / "runs"), *QUIET]
    assert main([*run, "--name", "r1"]) == 0
    assert main(["eval", str(tmp_path / "runs" / "r1"), "--data", str(data), "--device",
                 "cpu"]) == 0
    assert main([*run, "--name", "r2"]) == 0
    assert len(decodes) == 1
    assert len(_pt(home)) == 1


def test_option_spellings_of_one_geometry_share_one_cache(tmp_path: Path,
                                                          decodes: list[int]) -> None:
    """image_size 0 (as stored) or 12, channels 0 (as stored) or 3, and a run's geometry
    given (eval) all mean 3x12x12 crop: one file, decoded once."""
    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    first = load_dataset(_cfg(data, root))
    assert first.geometry == Geometry(3, 12, 12, "crop")
    load_dataset(_cfg(data, root, image_size=12))
    load_dataset(_cfg(data, root, channels=3))
    load_dataset(_cfg(data, root, channels=3, image_size=12))
    again = load_dataset(_cfg(data, root, image_size=99), geometry=first.geometry)
    assert len(decodes) == 1 and len(_pt(root / "cache")) == 1
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)


def test_two_geometries_of_one_folder_keep_two_caches(tmp_path: Path,
                                                      decodes: list[int]) -> None:
    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    small = load_dataset(_cfg(data, root, image_size=8))
    gray = load_dataset(_cfg(data, root, channels=1))
    assert len(decodes) == 2 and len(_pt(root / "cache")) == 2
    for _ in range(2):  # each used again, alternately: neither evicts the other
        assert torch.equal(load_dataset(_cfg(data, root, image_size=8)).splits["test"].images,
                           small.splits["test"].images)
        assert torch.equal(load_dataset(_cfg(data, root, channels=1)).splits["test"].images,
                           gray.splits["test"].images)
    assert len(decodes) == 2 and len(_pt(root / "cache")) == 2


def test_a_changed_source_replaces_its_cache_and_others_stay_until_cleared(
        tmp_path: Path, decodes: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """A changed image: the cache of the geometry in use is replaced (new pixels, one file);
    the other geometry's cache stays, listed as changed, until `cache clear --stale`."""
    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    other = _folder(tmp_path / "other", seed=1)
    load_dataset(_cfg(data, root))
    load_dataset(_cfg(data, root, image_size=8))
    load_dataset(_cfg(other, root))
    before = _pt(root / "cache")
    Image.new("RGB", (12, 12), (1, 2, 3)).save(data / "train" / "a" / "0.png")
    changed = load_dataset(_cfg(data, root))
    assert len(decodes) == 4
    assert (changed.splits["train"].images[0] == torch.tensor([1, 2, 3])[:, None, None]).all()
    after = _pt(root / "cache")
    assert len(after) == 3 and len(set(after) - set(before)) == 1  # 12 px replaced, 8 px kept
    rc, out, _ = _cli(["cache", "list", "--root", str(root), "--json"], capsys)
    states = sorted((c["source"], c["geometry"]["height"], c["state"])
                    for c in json.loads(out)["caches"])
    assert rc == 0 and states == [(str(data), 8, "changed"), (str(data), 12, "ok"),
                                  (str(other), 12, "ok")]
    rc, out, _ = _cli(["cache", "clear", "--stale", "--root", str(root)], capsys)
    assert rc == 0 and "removed 1 cache(s)" in out and "3x8x8 crop" in out
    assert len(_pt(root / "cache")) == 2
    load_dataset(_cfg(data, root))
    load_dataset(_cfg(other, root))
    assert len(decodes) == 4


def test_an_archive_shares_its_cache_between_geometry_spellings(tmp_path: Path,
                                                                decodes: list[int]) -> None:
    import tarfile

    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data, arcname="data")
    first = load_dataset(_cfg(archive, root))
    load_dataset(_cfg(archive, root), geometry=first.geometry)
    assert len(decodes) == 1
    (entry,) = caches.scan(root / "cache")
    assert entry.label["kind"] == "archive" and entry.state == "ok"
    os.utime(archive, (1, 1))  # touched: another archive as far as the cache can tell
    assert caches.scan(root / "cache")[0].state == "changed"


def test_a_lost_label_is_rewritten_and_the_geometry_still_found(tmp_path: Path,
                                                                decodes: list[int]) -> None:
    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    first = load_dataset(_cfg(data, root))
    (label,) = (root / "cache").glob("*.json")
    label.unlink()  # a writer killed between the cache and its label
    assert len(caches.scan(root / "cache")) == 1  # still listed, from the file's own label
    load_dataset(_cfg(data, root), geometry=first.geometry)
    assert label.is_file()
    load_dataset(_cfg(data, root))
    assert len(decodes) == 1


# ----------------------------------------------------------------------------- cache list / clear


def test_cache_clear_removes_only_convzoo_caches(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A user's files in the cache folder stay: any file of another name, a torch file, and
    even a file named like a cache that lacks the format marker."""
    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    load_dataset(_cfg(data, root))
    load_dataset(_cfg(data, root, image_size=8))
    folder = root / "cache"
    mine = [folder / "notes.txt", folder / "weights.pt",
            folder / f"folder-{'a' * 12}-{'b' * 10}-{'c' * 16}.pt",
            folder / f"folder-{'a' * 12}-{'b' * 10}-{'c' * 16}.json",
            folder / f"archive-{'9' * 12}.lock"]  # named like a lock, but not empty
    mine[0].write_text("my notes")
    mine[4].write_text("not a lock")
    stale_lock = folder / f"archive-{'8' * 12}.lock"  # left by a decode that failed
    stale_lock.touch()
    torch.save({"w": torch.ones(3)}, mine[1])
    torch.save({"format": "something-else"}, mine[2])
    mine[3].write_text("{}")
    orphan = folder / f"folder-{'d' * 12}-{'e' * 10}-{'f' * 16}.json"  # its cache deleted by hand
    orphan.write_text(json.dumps({"format": caches.CACHE_FORMAT}))
    rc, out, _ = _cli(["cache", "clear", "--all", "--dry-run", "--root", str(root)], capsys)
    assert rc == 0 and "would remove 2 cache(s)" in out and len(_pt(folder)) == 4
    rc, out, _ = _cli(["cache", "clear", "--all", "--root", str(root)], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith("removed ") for line in lines)
    assert "removed 2 cache(s)" in lines[-1] and "MB reclaimed" in lines[-1]
    # the orphan label and the lock of a source with no cache are gone too
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in mine)
    rc, out, _ = _cli(["cache", "list", "--root", str(root)], capsys)
    assert rc == 0 and out.startswith("no decode caches in")


def test_cache_clear_by_source_and_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--source picks one source's caches, --older-than those not used for DAYS (a hit counts
    as a use), and conditions combine."""
    root = tmp_path / "root"
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "b", seed=1)
    for src in (a, b):
        load_dataset(_cfg(src, root))
        load_dataset(_cfg(src, root, image_size=8))
    month = time.time() - 30 * 86400
    for p in (root / "cache").glob("*.pt"):
        os.utime(p, (month, month))
    load_dataset(_cfg(b, root, image_size=8))  # used now
    rc, out, _ = _cli(["cache", "clear", "--older-than", "7", "--source", str(b),
                       "--root", str(root)], capsys)
    assert rc == 0 and "removed 1 cache(s)" in out
    rc, out, _ = _cli(["cache", "clear", "--source", str(a), "--root", str(root)], capsys)
    assert rc == 0 and "removed 2 cache(s)" in out
    (left,) = caches.scan(root / "cache")
    assert left.label["source"] == str(b) and left.label["geometry"]["height"] == 8
    assert not list((root / "cache").glob(f"folder-{caches._path_tag(a)}*"))  # lock too


def test_cache_clear_skips_a_source_being_written(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from filelock import FileLock

    data, root = _folder(tmp_path / "data"), tmp_path / "root"
    load_dataset(_cfg(data, root))
    (entry,) = caches.scan(root / "cache")
    with FileLock(str(entry.lock)):  # another process decoding this source
        rc, out, _ = _cli(["cache", "clear", "--all", "--root", str(root)], capsys)
    assert rc == 0 and "skipped" in out and "1 in use, kept" in out
    assert entry.path.is_file()


def test_cache_list_fits_100_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 4) / ("and-another-one-" * 4) / "imagenette"
    root = tmp_path / ("root-" * 20)
    load_dataset(_cfg(_folder(deep), root))
    load_dataset(_cfg(deep, root, image_size=8, resize="squash"))
    rc, out, _ = _cli(["cache", "list", "--root", str(root)], capsys)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 4, out
    assert max(map(len, lines)) <= 100, out
    assert lines[1].startswith("...") and "imagenette" in lines[1] and "3x8x8 squash" in out
    assert "2 cache(s)" in lines[-1]
    rc, out, _ = _cli(["cache", "clear", "--all", "--dry-run", "--root", str(root)], capsys)
    assert max(map(len, out.splitlines())) <= 100, out
    rc, out, _ = _cli(["cache", "list", "--root", str(root), "--json"], capsys)
    listed = json.loads(out)
    assert [c["images"] for c in listed["caches"]] == [24, 24]
    assert {c["state"] for c in listed["caches"]} == {"ok"}


@pytest.mark.parametrize("argv", [
    ["cache", "clear"],                                   # nothing chosen
    ["cache", "clear", "--older-than", "soon"],
    ["cache", "clear", "--older-than", "-1"],
    ["cache", "clear", "--all", "--source", "{tmp}/no-such-folder"],
    ["cache", "list", "--root", "{tmp}/a-file.pt"],       # not a cache folder
    ["cache", "list", "--root", "{tmp}/nothing-here"],
    ["cache", "list", "--wide"],
    ["cache", "purge"],
])
def test_bad_cache_input_is_one_line_exit_2(argv: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file.pt").write_bytes(b"x")
    rc, out, err = _cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("convzoo: error: "), err
    assert (tmp_path / "a-file.pt").read_bytes() == b"x"


# ----------------------------------------------------------------------------- the real commands


@pytest.mark.slow
def test_train_eval_train_through_the_command_line_decodes_once(tmp_path: Path) -> None:
    """As a user runs it: three processes, one "writing decode cache" line among them."""
    data = _folder(tmp_path / "data")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "convzoo", "train", "--data", str(data), "--model",
             "resnet20", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "runs"),
             *QUIET]
    logs = ""
    for argv in ([*train, "--name", "r1"],
                 [sys.executable, "-m", "convzoo", "eval", str(tmp_path / "runs" / "r1"),
                  "--data", str(data), "--device", "cpu"],
                 [*train, "--name", "r2"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        logs += done.stdout + done.stderr
    assert logs.count("writing decode cache") == 1, logs
    assert logs.count("from cache") == 2


def test_the_suite_writes_nothing_into_the_developers_home(tmp_path: Path) -> None:
    """A run with the default data.root caches under the session's HOME (conftest), never in the
    home of whoever runs the tests."""
    from conftest import REAL_HOME

    assert REAL_HOME and os.path.expanduser("~") != REAL_HOME
    real = Path(REAL_HOME) / ".cache" / "convzoo" / "cache"
    before = sorted(real.iterdir()) if real.is_dir() else []
    data = _folder(tmp_path / "data")
    assert main(["train", "--data", str(data), "--set", "data.image_size=8", "--epochs", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "runs"), "--name", "r",
                 "--set", "train.loggers=[]"]) == 0
    session = caches.scan(Path(os.path.expanduser("~/.cache/convzoo/cache")))
    assert [e.label["source"] for e in session].count(str(data.resolve())) == 1
    assert (sorted(real.iterdir()) if real.is_dir() else []) == before
