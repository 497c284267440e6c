"""Data prepared once per node, never used half-made, and bounded, untrusted decoding."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.config import DataConfig
from convzoo.data import images
from convzoo.data.images import DecodeError, Limits, decode
from convzoo.data.loading import registry as sources
from convzoo.data.loading.registry import load_dataset
from convzoo.data.packs.writer import extract_tree, pack
from convzoo.data.sources.download import verified
from convzoo.errors import ConvzooError


def cifar10_archive(path: Path, per_batch: int = 4) -> str:
    """A tiny archive in the official cifar-10-python.tar.gz layout; returns its MD5."""
    rng = np.random.default_rng(0)

    def add(tar: tarfile.TarFile, name: str, obj: dict) -> None:
        blob = pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=2)
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))

    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(tar, name, {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                            "labels": [int(v) for v in rng.integers(0, 10, per_batch)]})
        add(tar, "batches.meta", {"label_names": [f"c{i}".encode() for i in range(10)]})
    return hashlib.md5(path.read_bytes()).hexdigest()


class _SlowServer(http.server.ThreadingHTTPServer):
    """Serves one file slowly (so that concurrent downloads would overlap) and counts GETs."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.gets = payload, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                for i in range(0, len(server.payload), 4096):
                    self.wfile.write(server.payload[i:i + 4096])
                    time.sleep(0.05)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


PREPARE = """
import sys, time
from pathlib import Path
from convzoo.config import DataConfig
from convzoo.data.loading import registry as sources
from convzoo.data.loading.registry import load_dataset
url, md5, root, sync, me = sys.argv[1:6]
folder, name, _, _ = sources._OFFICIAL["cifar10"]
sources._OFFICIAL["cifar10"] = (folder, name, url, md5)
(Path(sync) / f"ready-{me}").touch()  # imports done: start together
while not (Path(sync) / "go").exists():
    time.sleep(0.01)
ds = load_dataset(DataConfig(source="cifar10", root=root))
print(len(ds.splits["train"]), len(ds.splits["test"]))
"""


@pytest.mark.slow
def test_four_processes_prepare_cifar10_once(tmp_path: Path) -> None:
    """Today's bug: four processes preparing `--data cifar10` on a fresh machine downloaded to
    one temp file at once and three crashed. Now one downloads, the others wait, and all four
    end with the one verified copy."""
    md5 = cifar10_archive(tmp_path / "served.tar.gz")
    server = _SlowServer((tmp_path / "served.tar.gz").read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    root, sync = tmp_path / "root", tmp_path / "sync"
    sync.mkdir()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", PREPARE, url, md5, str(root), str(sync),
                                   str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(4)]
        deadline = time.time() + 300
        while len(list(sync.glob("ready-*"))) < 4 and time.time() < deadline:
            time.sleep(0.05)
        (sync / "go").touch()  # the download takes ~1 s: the four overlap
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        server.shutdown()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == ["20", "4"]
    assert server.gets == 1
    archive = root / "cifar-10-python.tar.gz"
    assert hashlib.md5(archive.read_bytes()).hexdigest() == md5
    leftovers = {p.name for p in root.iterdir()} - {archive.name, archive.name + ".lock",
                                                   archive.name + ".verified"}
    assert not leftovers, leftovers


def test_an_archive_that_is_not_ours_is_never_replaced(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at the archive's place whose MD5 is not the official one was not written by
    convzoo (a download lands only once its MD5 matched): it is used as it is with
    data.download=false, refused (and left as it was) otherwise; moved away, the archive is
    downloaded."""
    md5 = cifar10_archive(tmp_path / "served.tar.gz")
    folder, name, _, _ = sources._OFFICIAL["cifar10"]
    monkeypatch.setitem(sources._OFFICIAL, "cifar10",
                        (folder, name, (tmp_path / "served.tar.gz").as_uri(), md5))
    root = tmp_path / "root"
    root.mkdir()
    partial = root / name
    partial.write_bytes((tmp_path / "served.tar.gz").read_bytes()[:500])  # not the archive
    with pytest.raises(ConvzooError, match="cifar-10-python.tar.gz"):  # the user's own file:
        load_dataset(DataConfig(source="cifar10", root=str(root), download=False))  # used
    assert len(partial.read_bytes()) == 500  # and left as it was
    with pytest.raises(ConvzooError, match="does not replace a file it did not download"):
        load_dataset(DataConfig(source="cifar10", root=str(root)))
    assert len(partial.read_bytes()) == 500
    partial.rename(root / "mine.tar.gz")
    ds = load_dataset(DataConfig(source="cifar10", root=str(root)))
    assert len(ds.splits["test"]) == 4 and verified(partial, md5)
    assert len((root / "mine.tar.gz").read_bytes()) == 500
    # verified once: a stamp spares re-hashing it, and a changed file is hashed again
    assert (root / f"{name}.verified").is_file()
    with open(partial, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    assert not verified(partial, md5)


def _tree(root: Path, n: int = 3) -> Path:
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = np.full((6, 6, 3), (40 * i + (cls == "b") * 100) % 256, dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return root


def test_a_damaged_decode_cache_is_detected_and_rebuilt(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """torch.load reads a flipped byte back silently; the cache's digest does not."""
    tree = _tree(tmp_path / "t")
    cfg = DataConfig(source=str(tree), root=str(tmp_path / "r"), workers=1)
    first = load_dataset(cfg)
    (cache,) = (tmp_path / "r" / "cache").glob("*.pt")
    data = bytearray(cache.read_bytes())
    raw = first.splits["train"].images.numpy().tobytes()
    at = bytes(data).find(raw[:64])
    assert at > 0
    data[at + 10] ^= 0xFF  # one pixel of the stored images
    cache.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="convzoo"):
        again = load_dataset(cfg)
    assert "damaged cache" in caplog.text
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)
    cache.write_bytes(bytes(data[:len(data) // 2]))  # a partial file
    assert torch.equal(load_dataset(cfg).splits["train"].images, first.splits["train"].images)


def test_an_unwritable_cache_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A read-only cache folder (simulated: the tests may run as root, who writes anywhere):
    no lock, no cache, a warning each, and the data loads."""
    import errno

    import convzoo.data.prepare as prepare

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(prepare, "FileLock", read_only)
    monkeypatch.setattr(prepare.tempfile, "mkstemp", read_only)
    tree = _tree(tmp_path / "t")
    with caplog.at_level(logging.WARNING, logger="convzoo"):
        ds = load_dataset(DataConfig(source=str(tree), root=str(tmp_path / "ro"), workers=1))
    assert len(ds.splits["train"]) == 6
    assert "cannot lock" in caplog.text and "could not write" in caplog.text


def test_a_failing_cache_write_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A full (or read-only) disk under the cache: the data loads, a warning says why, and no
    temporary file is left behind."""
    import convzoo.data.prepare as prepare

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare.os, "fsync", full)
    tree = _tree(tmp_path / "t")
    with caplog.at_level(logging.WARNING, logger="convzoo"):
        ds = load_dataset(DataConfig(source=str(tree), root=str(tmp_path / "r"), workers=1))
    assert len(ds.splits["test"]) == 6
    assert "No space left on device" in caplog.text
    assert [p.name for p in (tmp_path / "r" / "cache").iterdir() if not p.name.endswith(".lock")] == []


# ----------------------------------------------------------------------------- bounds


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few KB that decode to w*h pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp", "gif"])
def test_images_over_the_pixel_limit_are_refused_before_decoding(fmt: str) -> None:
    image = Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    data = buf.getvalue()
    assert decode(data, Limits(max_pixels=2000)).shape[-2:] == (40, 50)
    for limit in (1999, 1000, 1):
        with pytest.raises(DecodeError, match=f"50x40 = 2,000 pixels exceeds "
                                              f"data.max_image_pixels={limit:,}"):
            decode(data, Limits(max_pixels=limit))


def test_a_decompression_bomb_is_an_error_naming_the_file(tmp_path: Path) -> None:
    bomb = png_bomb(12_000, 12_000)  # 144 Mpx, over Pillow's default 89 Mpx
    assert len(bomb) < 100_000
    assert images.image_dims(bomb) == (12_000, 12_000)
    tree = _tree(tmp_path / "t")
    (tree / "train" / "a" / "bomb.png").write_bytes(bomb)
    with pytest.raises(ConvzooError, match=r"bomb\.png.*144,000,000 pixels exceeds"):
        load_dataset(DataConfig(source=str(tree), root=str(tmp_path / "r"), workers=1))
    ds = load_dataset(DataConfig(source=str(tree), root=str(tmp_path / "r"), workers=1,
                                 skip_bad=True))
    assert [Path(p).name for p in ds.skipped] == ["bomb.png"]
    with pytest.raises(ConvzooError, match=r"bomb\.png.*pixels exceeds"):
        pack(tree, tmp_path / "packed", workers=1, progress=False)


def test_archive_members_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t")
    big = tree / "train" / "a" / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
                    ).save(big)
    archive = tmp_path / "t.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="t")
    small = Limits(max_member_bytes=100_000)
    with pytest.raises(ConvzooError, match=r"t/train/a/big\.png: archive member of .* bytes "
                                           r"exceeds data.max_member_mb"):
        images.scan_tar(archive, small)
    with pytest.raises(ConvzooError, match="exceeds data.max_member_mb"):
        extract_tree(archive, tmp_path / "x", small)
    _, tree_found, _ = images.scan_tar(archive, Limits())
    assert len(tree_found["train"]["a"]) == 4


def test_tar_extraction_without_the_data_filter_is_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _tree(tmp_path / "t")
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="t")
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(ConvzooError, match="no data_filter"):
        pack(archive, tmp_path / "packed", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "t.tar"]


@pytest.mark.slow
def test_a_killed_pack_leaves_no_temp_folder_after_the_next_run(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t", n=200)
    script = ("import sys, time; from convzoo.data.packs import writer as P\n"
              "real = P._encode_file\n"
              "def slow(task):\n    time.sleep(0.05); return real(task)\n"
              "P._encode_file = slow\n"
              "P.pack(sys.argv[1], sys.argv[2], workers=1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tree), str(tmp_path / "p")])
    deadline = time.time() + 120
    while not list(tmp_path.glob("p.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob("p.tmp-*"))  # the killed pack's temp folder
    pack(tree, tmp_path / "p", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "t"]
