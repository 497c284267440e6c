"""Data sources: CIFAR pickles, image folders (and their tarballs), digits, downloads."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.config import DataConfig
from convzoo.data.loading import registry as sources
from convzoo.data.loading.registry import load_dataset
from convzoo.data.sources import download
from convzoo.data.sources.cifar import load_cifar
from convzoo.data.sources.digits import load_digits
from convzoo.data.sources.folders import load_tree
from convzoo.errors import ConvzooError

CIFAR10_JPEG = Path(
    os.environ.get("CONVZOO_CIFAR10_JPEG")
    or Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"
)


# ----------------------------------------------------------------------------- helpers


def load_image_folder(root: Path, cache_dir: Path | None = None, workers: int = 1,
                      **options) -> sources.Dataset:
    """An image folder (or tar archive) loaded as `load_dataset` loads one, caching under
    `cache_dir` (default: a fresh folder beside `root`)."""
    cache = cache_dir if cache_dir is not None else root.parent / f"cache-{time.time_ns()}"
    return load_tree(Path(root), DataConfig(source=str(root), root=str(cache), workers=workers,
                                            **options))


def _pickle(obj: dict) -> bytes:
    # The official files are Python 2 pickles with byte-string keys; protocol 2 and bytes
    # keys reproduce what load_cifar must read.
    return pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=2)


def _make_cifar(tmp: Path, hundred: bool, per_batch: int = 6) -> tuple[Path, dict]:
    """Tiny CIFAR python folder in the official layout; returns (folder, expected arrays)."""
    rng = np.random.default_rng(0)
    if hundred:
        d = tmp / "cifar-100-python"
        d.mkdir(parents=True)
        exp = {}
        for name, n in (("train", 2 * per_batch), ("test", per_batch)):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            fine = [int(x) for x in rng.integers(0, 100, n)]
            coarse = [f // 5 for f in fine]
            (d / name).write_bytes(_pickle({"data": data, "fine_labels": fine,
                                            "coarse_labels": coarse,
                                            "filenames": [b"x.png"] * n}))
            exp[name] = (data, fine, coarse)
        meta = {"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
                "coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)]}
        (d / "meta").write_bytes(_pickle(meta))
        return d, exp
    d = tmp / "cifar-10-batches-py"
    d.mkdir(parents=True)
    exp = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        (d / name).write_bytes(_pickle({"data": data, "labels": labels,
                                        "batch_label": b"batch"}))
        exp["test" if name == "test_batch" else "train"].append((data, labels))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (d / "batches.meta").write_bytes(_pickle({"label_names": names, "num_vis": 3072}))
    return d, exp


def _targz(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    return dest


def _save(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """Write a random image (w, h) in `mode`; returns its RGB/L pixels as saved."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    im.save(path)
    return np.asarray(im)


def _folder(tmp: Path, classes=("cat", "dog"), n_train=6, n_test=2, size=(8, 8),
            ext=".png") -> Path:
    root = tmp / "imgs"
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            for i in range(n):
                _save(root / split / c / f"{i:03d}{ext}", size, seed=hash((split, c, i)) % 1000)
    return root


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_pickles_folder_and_archive(tmp_path, packed):
    d, exp = _make_cifar(tmp_path, hundred=False)
    src = _targz(d, tmp_path / "cifar-10-python.tar.gz") if packed else d
    ds = load_cifar(src)
    assert ds.name == "cifar10"
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (6, 3, 32, 32)
    data = np.concatenate([b[0] for b in exp["train"]])
    labels = sum((b[1] for b in exp["train"]), [])
    assert train.labels.tolist() == labels
    # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
    i, c, y, x = 7, 2, 5, 30
    assert train.images[i, c, y, x].item() == data[i, c * 1024 + y * 32 + x]
    assert torch.equal(test.images.reshape(6, -1), torch.from_numpy(exp["test"][0][0]))


@pytest.mark.parametrize("packed", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, packed):
    d, exp = _make_cifar(tmp_path, hundred=True)
    src = _targz(d, tmp_path / "cifar-100-python.tar.gz") if packed else d
    fine = load_cifar(src)
    assert fine.name == "cifar100" and fine.num_classes == 100 and fine.classes[3] == "fine03"
    assert fine.splits["train"].labels.tolist() == exp["train"][1]
    assert fine.splits["test"].images.shape == (6, 3, 32, 32)
    coarse = load_cifar(src, fine=False)
    assert coarse.num_classes == 20 and coarse.classes[0] == "coarse00"
    assert coarse.splits["test"].labels.tolist() == exp["test"][2]
    assert torch.equal(coarse.splits["train"].images, fine.splits["train"].images)


def test_cifar_names_from_root_and_coarse_spelling(tmp_path):
    d, exp = _make_cifar(tmp_path / "root", hundred=True)
    ds = load_dataset(DataConfig(source="cifar100-coarse", root=str(tmp_path / "root"),
                                 download=False))
    assert ds.num_classes == 20 and ds.splits["test"].labels.tolist() == exp["test"][2]
    ds = load_dataset(DataConfig(source="cifar100", root=str(tmp_path / "root")))
    assert ds.num_classes == 100


def test_cifar_path_sources(tmp_path):
    d, _ = _make_cifar(tmp_path, hundred=False)
    archive = _targz(d, tmp_path / "c10.tar.gz")
    for src in (d, archive):
        ds = load_dataset(DataConfig(source=str(src), root=str(tmp_path / "cache")))
        assert len(ds.splits["train"]) == 30 and ds.num_classes == 10


def test_cifar_download_when_missing(tmp_path, monkeypatch):
    d, _ = _make_cifar(tmp_path / "src", hundred=False)
    archive = _targz(d, tmp_path / "served.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "root"
    cfg = DataConfig(source="cifar10", root=str(root), download=False)
    with pytest.raises(ConvzooError, match="cifar-10-python.tar.gz"):
        load_dataset(cfg)
    monkeypatch.setitem(sources._OFFICIAL, "cifar10",
                        (d.name, "cifar-10-python.tar.gz", archive.as_uri(), md5))
    ds = load_dataset(DataConfig(source="cifar10", root=str(root), download=True))
    assert len(ds.splits["test"]) == 6
    assert download.check_md5(root / "cifar-10-python.tar.gz", md5)


def test_cifar_bad_pickle_is_a_user_error(tmp_path):
    d, _ = _make_cifar(tmp_path, hundred=False)
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ConvzooError, match="test_batch"):
        load_cifar(d)
    # A pickle that would call anything but numpy reconstruction is refused.
    (d / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd}, protocol=2))
    with pytest.raises(ConvzooError, match="test_batch"):
        load_cifar(d)


# ----------------------------------------------------------------------------- folders


def test_folder_classes_sizes_modes(tmp_path, caplog):
    root = tmp_path / "imgs"
    _save(root / "train" / "zebra" / "a.png", (8, 8), "RGB", 1)
    _save(root / "train" / "zebra" / "b.jpg", (8, 8), "L", 2)
    _save(root / "train" / "ant" / "c.png", (8, 8), "RGBA", 3)
    _save(root / "train" / "ant" / "d.png", (12, 10), "P", 4)  # odd size, palette
    _save(root / "test" / "ant" / "e.jpeg", (8, 8), "RGB", 5)
    (root / "train" / "ant" / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="convzoo"):
        ds = load_image_folder(root, workers=1)
    assert ds.classes == ["ant", "zebra"]
    train = ds.splits["train"]
    assert train.images.shape == (4, 3, 8, 8)  # most common size, gray promoted to RGB
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert "different sizes" in caplog.text and "8x8" in caplog.text
    # RGBA keeps its colour channels exactly (PNG is lossless).
    rgba = np.asarray(Image.open(root / "train" / "ant" / "c.png"))[..., :3]
    assert np.array_equal(train.images[0].permute(1, 2, 0).numpy(), rgba)
    assert ds.splits["test"].labels.tolist() == [0]
    gray = load_image_folder(root, channels=1, image_size=16, workers=1)
    assert gray.splits["train"].images.shape == (4, 1, 16, 16)


def test_palette_png_decodes_to_colours(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "train" / "a" / "p.png", (6, 5), "P", 7)
    _save(root / "test" / "a" / "q.png", (6, 5), "RGB", 8)
    ds = load_image_folder(root, workers=1)
    expected = np.asarray(Image.open(root / "train" / "a" / "p.png").convert("RGB"))
    assert np.array_equal(ds.splits["train"].images[0].permute(1, 2, 0).numpy(), expected)


def test_all_gray_stays_one_channel(tmp_path):
    root = tmp_path / "imgs"
    for i in range(3):
        _save(root / "train" / "x" / f"{i}.png", (5, 5), "L", i)
    _save(root / "val" / "x" / "v.png", (5, 5), "L", 9)
    ds = load_image_folder(root, workers=1)
    assert ds.splits["train"].images.shape == (3, 1, 5, 5)
    assert set(ds.splits) == {"train", "val"}  # a tree's val/ is the split val
    rgb = load_image_folder(root, channels=3, workers=1)
    assert rgb.splits["val"].images.shape == (1, 3, 5, 5)


def test_test_and_val_both_loaded(tmp_path):
    root = _folder(tmp_path)
    for c in ("cat", "dog"):
        _save(root / "val" / c / "v.png", (8, 8))
    ds = load_image_folder(root, workers=1)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 12, "test": 4, "val": 2}


def test_corrupt_jpeg_named_or_skipped(tmp_path, caplog):
    root = _folder(tmp_path, ext=".jpg")
    bad = root / "train" / "dog" / "002.jpg"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(ConvzooError, match="002.jpg"):
        load_image_folder(root, workers=1)
    with caplog.at_level(logging.WARNING, logger="convzoo"):
        ds = load_image_folder(root, skip_bad=True, workers=1)
    assert ds.skipped == [str(bad.resolve())]
    assert "skipped 1" in caplog.text
    assert len(ds.splits["train"]) == 11
    assert ds.splits["train"].labels.tolist().count(1) == 5
    cfg = DataConfig(source=str(root), root=str(tmp_path / "cache"), skip_bad=True)
    assert len(load_dataset(cfg).skipped) == 1
    # The cached result still refuses the bad file when skipping is off.
    with pytest.raises(ConvzooError, match="002.jpg"):
        load_dataset(DataConfig(source=str(root), root=str(tmp_path / "cache")))


def test_folder_layout_errors(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "emu").mkdir()
    with pytest.raises(ConvzooError, match="emu"):
        load_image_folder(root)
    (root / "train" / "emu").rmdir()
    _save(root / "test" / "owl" / "x.png", (8, 8))
    with pytest.raises(ConvzooError, match="owl"):
        load_image_folder(root)
    # a split-less <class>/* folder is one split ("train"), classes its folders
    flat = load_image_folder(root / "test")
    assert flat.classes == ["cat", "dog", "owl"] and list(flat.splits) == ["train"]
    with pytest.raises(ConvzooError, match="not found"):
        load_image_folder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ConvzooError, match="no class folders"):
        load_image_folder(empty)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_directory(tmp_path):
    root = _folder(tmp_path)
    locked = root / "train" / "cat"
    locked.chmod(0)
    try:
        with pytest.raises(ConvzooError, match="cat"):
            load_image_folder(root)
    finally:
        locked.chmod(0o755)


def test_parallel_decode_matches_serial(tmp_path):
    root = tmp_path / "many"
    rng = np.random.default_rng(0)
    for split, n in (("train", 1100), ("test", 20)):
        for i in range(n):
            p = root / split / f"c{i % 3}" / f"{i:04d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(p)
    one = load_image_folder(root, workers=1)
    two = load_image_folder(root, workers=2)
    for name in ("train", "test"):
        assert torch.equal(one.splits[name].images, two.splits[name].images)
        assert torch.equal(one.splits[name].labels, two.splits[name].labels)


def test_cache_reused_and_invalidated(tmp_path):
    root = _folder(tmp_path)
    cache = tmp_path / "cache"
    first = load_image_folder(root, cache_dir=cache, workers=1)
    cache = cache / "cache"
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    again = load_image_folder(root, cache_dir=cache.parent, workers=1)
    assert torch.equal(first.splits["train"].images, again.splits["train"].images)
    # Change one image: a new cache replaces the stale one and holds the new pixels.
    changed = root / "train" / "cat" / "000.png"
    pixels = _save(changed, (8, 8), seed=123)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_image_folder(root, cache_dir=cache.parent, workers=1)
    assert np.array_equal(third.splits["train"].images[0].permute(1, 2, 0).numpy(), pixels)
    assert len(list(cache.glob("*.pt"))) == 1 and list(cache.glob("*.pt")) != files
    # A damaged cache file is rebuilt, not fatal.
    next(cache.glob("*.pt")).write_bytes(b"garbage")
    assert torch.equal(load_image_folder(root, cache_dir=cache.parent).splits["train"].images,
                       third.splits["train"].images)


def test_image_folder_tarball(tmp_path):
    root = _folder(tmp_path)
    archive = _targz(root, tmp_path / "imgs.tar.gz")
    cfg = DataConfig(source=str(archive), root=str(tmp_path / "cache"), image_size=12)
    ds = load_dataset(cfg)
    direct = load_dataset(DataConfig(source=str(root), root=str(tmp_path / "c2"),
                                     image_size=12))
    assert ds.classes == ["cat", "dog"] and list(ds.splits) == ["train", "test"]
    assert torch.equal(ds.splits["train"].images, direct.splits["train"].images)
    assert len(list((tmp_path / "cache" / "cache").glob("*.pt"))) == 1
    again = load_dataset(cfg)
    assert torch.equal(again.splits["test"].labels, ds.splits["test"].labels)


# ----------------------------------------------------------------------------- load_dataset


def test_val_split_stratified_and_seeded(tmp_path):
    cfg = DataConfig(source="digits", val_fraction=0.2)
    a, b, c = load_dataset(cfg, seed=1), load_dataset(cfg, seed=1), load_dataset(cfg, seed=2)
    full = load_dataset(DataConfig(source="digits"), seed=1)
    n = len(full.splits["train"])
    assert len(a.splits["val"]) == round(0.2 * n)
    assert len(a.splits["train"]) + len(a.splits["val"]) == n
    assert torch.equal(a.splits["val"].images, b.splits["val"].images)
    assert not torch.equal(a.splits["val"].labels, c.splits["val"].labels)
    full_counts = full.splits["train"].labels.bincount(minlength=10).double()
    val_counts = a.splits["val"].labels.bincount(minlength=10).double()
    assert torch.all((val_counts - 0.2 * full_counts).abs() <= 1)
    # val and train together are exactly the original train (compare image bytes).
    def rows(*splits):
        return sorted(bytes(x.numpy()) for s in splits for x in s.images.reshape(len(s), -1))
    assert rows(a.splits["val"], a.splits["train"]) == rows(full.splits["train"])
    assert torch.equal(a.splits["test"].labels, full.splits["test"].labels)


def test_limit_channels_and_resize():
    cfg = DataConfig(source="digits", limit=100, channels=1, image_size=16)
    ds = load_dataset(cfg, seed=3)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 100, "test": 100}
    assert ds.splits["train"].images.shape == (100, 1, 16, 16)
    assert ds.splits["train"].labels.bincount(minlength=10).min() >= 9  # stratified
    again = load_dataset(cfg, seed=3)
    assert torch.equal(ds.splits["train"].images, again.splits["train"].images)


def test_unknown_source_lists_valid_names(tmp_path):
    with pytest.raises(ConvzooError, match="cifar10.*digits"):
        load_dataset(DataConfig(source="imagenet"))
    with pytest.raises(ConvzooError, match="nope"):
        load_dataset(DataConfig(source=str(tmp_path / "nope")))
    with pytest.raises(ConvzooError, match="val_fraction"):
        load_dataset(DataConfig(source="digits", val_fraction=1.5))


def test_train_only_folder_needs_val_fraction(tmp_path):
    root = tmp_path / "only"
    for c in ("a", "b"):
        for i in range(5):
            _save(root / "train" / c / f"{i}.png", (4, 4), seed=i)
    with pytest.raises(ConvzooError, match="val_fraction"):
        load_dataset(DataConfig(source=str(root), root=str(tmp_path / "c")))
    ds = load_dataset(DataConfig(source=str(root), root=str(tmp_path / "c"), val_fraction=0.2))
    assert sorted(ds.splits) == ["train", "val"] and len(ds.splits["val"]) == 2


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_determinism():
    ds = load_digits()
    assert ds.classes == [str(i) for i in range(10)]
    train, test = ds.splits["train"], ds.splits["test"]
    assert len(train) + len(test) == 1797 and len(test) == 450
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert train.images.max() > 200  # 0..16 scaled to 0..255
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # gray replicated
    assert torch.equal(load_digits().splits["test"].labels, test.labels)
    other = load_digits(seed=1)
    assert not torch.equal(other.splits["test"].labels, test.labels)
    small = load_digits(image_size=8, channels=1)
    assert small.splits["train"].images.shape[1:] == (1, 8, 8)
    counts = test.labels.bincount(minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: ~25% of ~180 per class


# ----------------------------------------------------------------------------- download


def _payload(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "served.bin"
    src.write_bytes(os.urandom(3 << 20))
    return src, hashlib.md5(src.read_bytes()).hexdigest()


def test_download_success_and_check_md5(tmp_path):
    src, md5 = _payload(tmp_path)
    dest = tmp_path / "out" / "file.tar.gz"
    assert download.download_url(src.as_uri(), dest, md5) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert download.check_md5(dest, md5) and not download.check_md5(dest, "0" * 32)
    assert not download.check_md5(tmp_path / "missing", md5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.tar.gz"]


def test_download_bad_md5_leaves_nothing(tmp_path):
    src, _ = _payload(tmp_path)
    dest = tmp_path / "file.tar.gz"
    with pytest.raises(ConvzooError, match="MD5"):
        download.download_url(src.as_uri(), dest, "0" * 32)
    assert not dest.exists() and not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("error", [ConnectionResetError("reset"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_good_file(tmp_path, monkeypatch, error):
    src, md5 = _payload(tmp_path)

    class Broken(io.BytesIO):
        headers = {"Content-Length": str(src.stat().st_size)}

        def read(self, n=-1):
            if self.tell() >= 1 << 20:
                raise error
            return super().read(n)

    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda url, timeout=None: Broken(src.read_bytes()))
    dest = tmp_path / "file.tar.gz"
    with pytest.raises(ConvzooError if isinstance(error, OSError) else KeyboardInterrupt):
        download.download_url("https://example.invalid/file.tar.gz", dest, md5)
    assert not dest.exists()
    assert list(tmp_path.glob("file.tar.gz*")) == [] and not list(tmp_path.glob(".*.part"))


# ----------------------------------------------------------------------------- real data


@pytest.mark.cifar
@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason=f"{CIFAR10_JPEG} not present")
@pytest.mark.slow
def test_real_cifar10_jpeg_tarball(tmp_path, monkeypatch):
    cfg = DataConfig(source=str(CIFAR10_JPEG), root=str(tmp_path))
    ds = load_dataset(cfg)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                          "horse", "ship", "truck"]
    assert ds.splits["train"].images.shape == (50000, 3, 32, 32)
    assert ds.splits["test"].images.shape == (10000, 3, 32, 32)
    assert ds.splits["train"].labels.bincount().tolist() == [5000] * 10
    assert ds.splits["test"].labels.bincount().tolist() == [1000] * 10
    # The second load reads the decode cache: not one image is decoded again.
    import convzoo.data.images as images

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "decode_splits", no_decode)
    again = load_dataset(cfg)
    assert torch.equal(again.splits["test"].images, ds.splits["test"].images)
