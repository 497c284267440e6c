"""Packed record datasets (`convzoo pack`, `convzoo.data.packs.reader`) and the streaming loader."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from imagedata import epoch_batches, photo, write_photo
from PIL import Image

from convzoo.data.images import Geometry
from convzoo.data.loading.loaders import StreamLoader
from convzoo.data.packs import reader as packed_module
from convzoo.data.packs import writer as pack_module
from convzoo.data.packs.reader import is_packed, load_packed, open_packed
from convzoo.data.packs.writer import pack
from convzoo.errors import ConvzooError

CIFAR_JPEG = Path(os.environ.get(
    "CONVZOO_CIFAR10_JPEG",
    Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"))


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """train/{cat,dog}, test/{cat,dog}: JPEG + PNG, 40x30 and 30x40, one grayscale JPEG."""
    root = tmp_path / "pets"
    seed = 0
    for split, n in (("train", 4), ("test", 2)):
        for cls, (w, h) in (("cat", (40, 30)), ("dog", (30, 40))):
            for i in range(n):
                seed += 1
                ext = "png" if i == 1 else "jpg"
                mode = "L" if (cls == "dog" and i == 2) else "RGB"
                write_photo(root / split / cls / f"{i:03d}.{ext}", photo(w, h, seed, mode))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """Three classes of 16x16 PNG images (same size, small): auto packs them raw."""
    root = tmp_path / "tiny"
    for split, n in (("train", 7), ("val", 3)):
        for c, cls in enumerate(("a", "b", "c")):
            for i in range(n):
                write_photo(root / split / cls / f"{i}.png", photo(16, 16, 100 * c + i + 50 * n))
    return root


def _cifar_archive(path: Path, n_per_batch: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """An official-format cifar-10-python.tar.gz; returns (train data (N, 3072), labels)."""
    rng = np.random.default_rng(0)
    datas, labels = [], []
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: dict) -> None:
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for b in range(1, 6):
            d = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
            datas.append(d)
            labels.extend(y)
            add(f"data_batch_{b}", {b"data": d, b"labels": y})
        add("test_batch", {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                           b"labels": [1, 2, 3, 4]})
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return np.concatenate(datas), np.asarray(labels)


# ----------------------------------------------------------------------------- packing


def test_pack_folder_jpeg_index_and_random_access(mixed_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "packed"
    report = pack(mixed_folder, dest, workers=2, progress=False, shard_size_mb=1)
    assert report.image_format == "jpeg"  # two different sizes -> jpeg under auto
    assert report.counts == {"train": 8, "test": 4}
    assert report.skipped == []
    assert is_packed(dest)
    info = json.loads((dest / "index.json").read_text())
    assert info["version"] == packed_module.FORMAT_VERSION
    assert sorted(map(tuple, info["sizes"])) == [(30, 40, 6), (40, 30, 6)]  # (h, w, count)
    assert info["classes"] == ["cat", "dog"]
    assert info["splits"]["train"]["shards"] == ["train-00000.rec"]
    table = np.load(dest / info["splits"]["train"]["table"])
    assert table.dtype == np.int64 and table.shape == (8, 4)
    assert not list(tmp_path.glob("packed.tmp-*"))

    ds = open_packed(dest)
    train = ds.splits["train"]
    assert len(train) == 8 and ds.channels == 3
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # a JPEG that needs no change is stored byte for byte; random access order does not matter
    src = mixed_folder / "train" / "dog" / "003.jpg"
    payload, label = train[7]
    assert payload == src.read_bytes() and label == 1
    payload0, label0 = train[0]
    assert payload0 == (mixed_folder / "train" / "cat" / "000.jpg").read_bytes() and label0 == 0
    # the PNG was re-encoded as JPEG and decodes to its size
    png_payload, _ = train[1]
    assert png_payload[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(png_payload)) as im:
        assert im.size == (40, 30)
    with pytest.raises(IndexError):
        train[8]
    ds.close()


def test_pack_resize_and_load_packed(mixed_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "resized"
    report = pack(mixed_folder, dest, fmt="jpeg", resize=20, workers=1, progress=False)
    assert report.bytes_written > 0 and report.seconds >= 0
    for i in range(8):
        with Image.open(io.BytesIO(open_packed(dest).splits["train"][i][0])) as im:
            assert min(im.size) == 20 and max(im.size) == 27  # 40x30 -> 27x20
    # mixed aspect ratios: as for a folder, the most common size (by the crop rule), or a size
    as_is = load_packed(dest, workers=0)
    assert as_is.splits["train"].images.shape[1:] in ((3, 20, 27), (3, 27, 20))
    assert as_is.geometry.resize == "crop"
    data = load_packed(dest, image_size=20, workers=0)
    assert data.classes == ["cat", "dog"]
    train = data.splits["train"]
    assert train.images.shape == (8, 3, 20, 20) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # the grayscale image was expanded to 3 equal channels
    gray = train.images[6].int()
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_pack_auto_raw_roundtrip(small_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    report = pack(small_folder, dest, progress=False, workers=1)
    assert report.image_format == "raw" and report.shape == (3, 16, 16)
    assert report.counts == {"train": 21, "val": 9}
    data = load_packed(dest)
    images = data.splits["train"].images
    assert images.shape == (21, 3, 16, 16)
    expected = np.asarray(Image.open(small_folder / "train" / "b" / "3.png")).transpose(2, 0, 1)
    assert np.array_equal(images[7 + 3].numpy(), expected)  # class b starts at record 7
    payload, label = open_packed(dest).splits["val"][4]
    assert label == 1 and len(payload) == 3 * 16 * 16


def test_raw_pack_size_mismatch_names_file_and_sizes(mixed_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvzooError) as err:
        pack(mixed_folder, tmp_path / "bad", fmt="raw", workers=1, progress=False)
    msg = str(err.value)
    assert "30x40" in msg and "40x30" in msg and "dog" in msg
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob("bad.tmp-*"))


def test_corrupt_file_is_an_error_or_skipped(mixed_folder: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = (mixed_folder / "train" / "cat" / "002.jpg").read_bytes()
    truncated = mixed_folder / "train" / "cat" / "002.jpg"
    truncated.write_bytes(good[: len(good) // 2])  # header fine, data cut: fails on decode
    garbage = mixed_folder / "test" / "dog" / "zzz.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    with pytest.raises(ConvzooError, match="(002.jpg|zzz.jpg)"):
        pack(mixed_folder, tmp_path / "p1", workers=1, progress=False)
    assert not (tmp_path / "p1").exists()
    report = pack(mixed_folder, tmp_path / "p2", workers=2, skip_bad=True, progress=False)
    assert sorted(Path(p).name for p, _ in report.skipped) == ["002.jpg", "zzz.jpg"]
    assert report.counts == {"train": 7, "test": 4}
    assert "2 skipped" in report.summary()

    # the command line: one summary line on stdout, each skipped file named on stderr
    from convzoo.cli import main

    assert main(["pack", str(mixed_folder), str(tmp_path / "p3"), "--skip-bad",
                 "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "2 skipped" in out
    assert "002.jpg" in err and "zzz.jpg" in err
    assert main(["pack", str(mixed_folder), str(tmp_path / "p4"), "--workers", "1"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and ("002.jpg" in err_lines[0] or "zzz.jpg" in err_lines[0])


def test_pack_a_tar_archive_of_an_image_folder(mixed_folder: Path, tmp_path: Path) -> None:
    """`convzoo pack tree.tar.gz`: the same pack as from the folder, nothing left over, and
    bad members named inside the archive."""
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(mixed_folder, arcname="pets")
    from_folder = pack(mixed_folder, tmp_path / "folder", fmt="jpeg", workers=1, progress=False)
    from_tar = pack(archive, tmp_path / "tar", fmt="jpeg", workers=1, progress=False)
    assert from_tar.counts == from_folder.counts == {"train": 8, "test": 4}
    a, b = open_packed(tmp_path / "folder"), open_packed(tmp_path / "tar")
    assert a.classes == b.classes and b.name == "pets"
    for split in ("train", "test"):
        assert all(a.splits[split][i] == b.splits[split][i] for i in range(len(a.splits[split])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pets", "pets.tar.gz", "tar"]

    (mixed_folder / "test" / "dog" / "zzz.jpg").write_bytes(b"this is not a jpeg")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(mixed_folder, arcname="pets")
    with pytest.raises(ConvzooError, match=r"pets\.tar\.gz:pets/test/dog/zzz\.jpg: cannot read"):
        pack(archive, tmp_path / "bad", workers=1, progress=False)
    report = pack(archive, tmp_path / "skipped", workers=1, skip_bad=True, progress=False)
    assert [p for p, _ in report.skipped] == [f"{archive}:pets/test/dog/zzz.jpg"]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(ConvzooError, match="broken.tar.gz"):
        pack(broken, tmp_path / "never", workers=1, progress=False)
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob("never.*"))


def test_interrupted_pack_leaves_nothing_valid(mixed_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = pack_module._encode_file

    def failing(task):  # simulate a crash (e.g. disk full) after a few records
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("No space left on device")
        return real(task)

    monkeypatch.setattr(pack_module, "_encode_file", failing)
    dest = tmp_path / "pk"
    with pytest.raises(ConvzooError, match="No space left on device"):
        pack(mixed_folder, dest, workers=1, progress=False)
    assert calls["n"] == 5
    assert not dest.exists() and not is_packed(dest)
    assert not list(tmp_path.glob("pk.tmp-*"))
    # a directory with shards but no index is not a pack either
    dest.mkdir()
    (dest / "train-00000.rec").write_bytes(b"x" * 100)
    assert not is_packed(dest)
    with pytest.raises(ConvzooError, match="index.json"):
        open_packed(dest)


def test_existing_destination_and_bad_inputs(small_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    pack(small_folder, dest, workers=1, progress=False)
    with pytest.raises(ConvzooError, match="already exists"):
        pack(small_folder, dest, workers=1, progress=False)
    report = pack(small_folder, dest, workers=1, progress=False, fmt="jpeg", overwrite=True)
    assert report.image_format == "jpeg" and open_packed(dest).image_format == "jpeg"
    with pytest.raises(ConvzooError, match="no such file"):
        pack(tmp_path / "missing", tmp_path / "x", progress=False)
    with pytest.raises(ConvzooError, match="format"):
        pack(small_folder, tmp_path / "y", fmt="png", progress=False)
    with pytest.raises(ConvzooError, match="not an image-folder"):
        pack(tmp_path / "out", tmp_path / "z", progress=False)


def test_pack_cifar_archive_raw_and_jpeg(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    data, labels = _cifar_archive(archive)
    report = pack(archive, tmp_path / "c10", workers=1, progress=False)
    assert report.image_format == "raw" and report.counts == {"train": 30, "test": 4}
    ds = load_packed(tmp_path / "c10")
    assert ds.classes == [f"c{i}" for i in range(10)]
    train = ds.splits["train"]
    assert np.array_equal(train.images.reshape(30, 3072).numpy(), data)
    assert np.array_equal(train.labels.numpy(), labels)
    payload, label = open_packed(tmp_path / "c10").splits["train"][13]
    assert payload == data[13].tobytes() and label == labels[13]

    report = pack(archive, tmp_path / "c10j", fmt="jpeg", workers=2, progress=False)
    assert report.image_format == "jpeg"
    jpeg = load_packed(tmp_path / "c10j", workers=0).splits["train"]
    assert jpeg.images.shape == (30, 3, 32, 32)
    assert np.array_equal(jpeg.labels.numpy(), labels)


# ----------------------------------------------------------------------------- streaming


@pytest.fixture
def packed_small(small_folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "small-jpeg"
    pack(small_folder, dest, fmt="jpeg", quality=95, workers=1, progress=False)
    return dest


def test_stream_loader_epochs_and_seeds(packed_small: Path) -> None:
    split = open_packed(packed_small).splits["train"]  # 21 images, labels 7x0, 7x1, 7x2
    loader = StreamLoader(split, 4, shuffle=True, seed=3, workers=0)
    assert len(loader) == 6  # ceil(21 / 4)
    xs, ys0 = epoch_batches(loader, 0)
    assert Counter(ys0) == Counter(split.labels.tolist())
    assert xs[0].shape == (4, 3, 16, 16) and xs[0].dtype == torch.float32
    assert xs[-1].shape == (1, 3, 16, 16)
    assert float(torch.cat(xs).min()) >= 0.0 and float(torch.cat(xs).max()) <= 1.0
    _, ys1 = epoch_batches(loader, 1)
    assert Counter(ys1) == Counter(ys0) and ys1 != ys0
    same = StreamLoader(split, 4, shuffle=True, seed=3, workers=2)  # workers: same order
    xs_again, ys_again = epoch_batches(same, 0)
    assert ys_again == ys0
    assert all(torch.equal(a, b) for a, b in zip(xs, xs_again))
    dropped = StreamLoader(split, 4, shuffle=False, drop_last=True, workers=0)
    assert len(dropped) == 5 and len(epoch_batches(dropped, 0)[1]) == 20


def test_stream_loader_rank_sharding(packed_small: Path) -> None:
    """21 images over 4 ranks. Evaluation (exact partition): the 11 one-process batches of 2
    in contiguous blocks of 3, 3, 3, 2 batches (6, 6, 6, 3 images), every image once. Training (drop_last): global batches of 4 x 2; 2 steps
    per rank, 16 distinct images, the other 5 left out of this epoch."""
    split = open_packed(packed_small).splits["train"]
    seen = []
    for rank in range(4):
        loader = StreamLoader(split, 2, shuffle=True, seed=1, rank=rank, world_size=4,
                              workers=0)
        loader.set_epoch(2)
        shard = loader.plan.shard(2).tolist()
        assert len(shard) == (3 if rank == 3 else 6) and len(loader) == (2 if rank == 3 else 3)
        assert epoch_batches(loader, 2)[1] == split.labels[shard].tolist()
        seen.append(shard)
    flat = [i for shard in seen for i in shard]
    assert sorted(flat) == list(range(21))  # no padding, nothing dropped
    trained = []
    for rank in range(4):
        loader = StreamLoader(split, 2, shuffle=True, drop_last=True, rank=rank, world_size=4,
                              workers=0)
        assert len(loader) == 2
        trained.append(set(loader.plan.shard(0).tolist()))
    assert sum(len(s) for s in trained) == 16 and len(set().union(*trained)) == 16


def test_stream_loader_matches_in_memory_pipeline(small_folder: Path, tmp_path: Path) -> None:
    """Same images, same preprocess/augment calls as the device-resident convention."""
    dest = tmp_path / "raw"
    pack(small_folder, dest, workers=1, progress=False)
    memory = load_packed(dest).splits["train"]
    split = open_packed(dest).splits["train"]
    calls = []

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16)
        return (x.float() - 128.0) / 64.0

    def augment(x, generator, epoch, index):
        calls.append((epoch, index.clone()))
        assert isinstance(generator, torch.Generator)
        return x.flip(-1)

    loader = StreamLoader(split, 8, shuffle=True, seed=0, preprocess=preprocess,
                          augment=augment, workers=0)
    loader.set_epoch(5)
    for x, y in loader:
        epoch, index = calls[-1]
        assert epoch == 5 and index.dtype == torch.int64
        expected = ((memory.images[index].float() - 128.0) / 64.0).flip(-1)
        assert torch.equal(x, expected)
        assert y.dtype == torch.int64 and torch.equal(y, memory.labels[index])
    evaluation = StreamLoader(split, 32, eval_transform=lambda x: x[..., 2:14, 2:14],
                              preprocess=preprocess, workers=0)
    (x, y), = list(evaluation)
    assert x.shape == (21, 3, 12, 12) and torch.equal(y, memory.labels)


def test_a_gray_jpeg_in_a_colour_pack_streams_with_the_packs_channels(
        mixed_folder: Path, tmp_path: Path) -> None:
    """A gray JPEG is stored byte for byte in a 3-channel pack; read without a geometry, it
    comes back with the pack's 3 channels (found by the loader benchmark on Imagenette)."""
    dest = tmp_path / "mixed"
    pack(mixed_folder, dest, fmt="jpeg", workers=1, progress=False)
    split = open_packed(dest).splits["train"]
    dog = split.subset([4, 5, 6, 7])  # 30x40 images; record 6 is the gray JPEG
    assert split[6][0] == (mixed_folder / "train" / "dog" / "002.jpg").read_bytes()
    (x, y), = list(StreamLoader(dog, 4, workers=0))
    assert x.shape == (4, 3, 40, 30) and torch.equal(x[2, 0], x[2, 1])


def test_stream_loader_decode_size_for_mixed_sizes(mixed_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mixed"
    pack(mixed_folder, dest, workers=1, progress=False)
    split = open_packed(dest).splits["train"]
    with pytest.raises(ConvzooError, match="different sizes"):
        list(StreamLoader(split, 8, workers=0))
    (x, y), = list(StreamLoader(split, 8, workers=0, geometry=Geometry(3, 24, 24)))
    assert x.shape == (8, 3, 24, 24) and y.tolist() == [0] * 4 + [1] * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gpu_decode", [True, False])
def test_stream_loader_on_cuda_matches_the_cpu_loader(large_folder: Path, tmp_path: Path,
                                                      gpu_decode: bool) -> None:
    """CUDA: uint8 batches (or, with nvJPEG, the compressed bytes) go to the GPU and the same
    stage runs there. Eval batches match the CPU loader's (decoders may differ by a few grey
    levels); training batches come in the same order (augmentation draws come from a CUDA
    generator there, so their values differ)."""
    from convzoo.config import AugmentConfig, PreprocessConfig
    from convzoo.data.transforms.augment import build_eval_transform, build_train_augment
    from convzoo.data.transforms.preprocess import fit_preprocessor

    dest = tmp_path / "jpeg"
    pack(large_folder, dest, fmt="jpeg", workers=1, progress=False)
    split = open_packed(dest).splits["train"]
    pre = fit_preprocessor(PreprocessConfig(kind="channel"), load_packed(dest).splits["train"].images)
    cfg = AugmentConfig(crop=64, pad=4, flip=True)

    def loader(device: str, train: bool, **kw) -> StreamLoader:
        stage = (dict(augment=build_train_augment(cfg), shuffle=True) if train
                 else dict(eval_transform=build_eval_transform(cfg)))
        return StreamLoader(split, 6, seed=2, device=device, workers=2,
                            preprocess=pre.to(device), **stage, **kw)

    cuda = loader("cuda", False, gpu_decode=gpu_decode)
    assert cuda.mode == ("encoded" if gpu_decode else "decoded")
    assert cuda.loader.pin_memory  # uint8 batches are copied from pinned memory
    for (x, y), (xc, yc) in zip(loader("cpu", False), cuda, strict=True):
        assert xc.device.type == "cuda" and torch.equal(yc.cpu(), y)
        torch.testing.assert_close(xc.cpu(), x, atol=0.15, rtol=0)
    for (x, y), (xc, yc) in zip(loader("cpu", True), loader("cuda", True, gpu_decode=gpu_decode),
                                strict=True):
        assert xc.shape == x.shape == (6, 3, 64, 64) and torch.equal(yc.cpu(), y)


def test_decoded_batches_go_into_the_given_buffer_or_a_fresh_one(packed_small: Path) -> None:
    """The CUDA path's worker output (uint8 (B, H, W, C)), written into a reusable buffer."""
    from convzoo.data.images import DEFAULT_LIMITS
    from convzoo.data.loading.loaders import _BatchReader

    split = open_packed(packed_small).splits["train"]
    reader = _BatchReader(split, None, DEFAULT_LIMITS, "decoded")
    buffer = torch.empty(10_000, dtype=torch.uint8)
    x, labels, index = reader[(0, 0, [3, 1, 2], (0, buffer))]
    assert torch.equal(x, split.decode([3, 1, 2])) and x.data_ptr() == buffer.data_ptr()
    assert index.tolist() == [3, 1, 2] and torch.equal(labels, split.labels[index])
    small = torch.empty(10, dtype=torch.uint8)  # too small: the batch gets its own memory
    again, _, _ = reader[(0, 1, [3, 1, 2], (1, small))]
    assert torch.equal(again, split.decode([3, 1, 2])) and again.data_ptr() != small.data_ptr()


@pytest.mark.cifar
@pytest.mark.slow
def test_pack_real_cifar10_jpeg(tmp_path: Path) -> None:
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} not present")
    with tarfile.open(CIFAR_JPEG) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    report = pack(tmp_path / "src", tmp_path / "c10", progress=False)
    assert report.counts == {"train": 50_000, "test": 10_000} and not report.skipped
    assert report.image_format == "raw" and report.shape == (3, 32, 32)
    ds = open_packed(tmp_path / "c10")
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
    assert Counter(ds.splits["test"].labels.tolist()) == {c: 1000 for c in range(10)}


@pytest.mark.cifar
@pytest.mark.slow
def test_loader_benchmark_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} not present")
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loader_throughput.py"
    spec = importlib.util.spec_from_file_location("loader_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--cache", str(tmp_path), "--cifar", str(CIFAR_JPEG)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "cifar32" in x and "img/s" in x)
    tv, cz, raw = (float(v) for v in re.findall(r"(\d+) img/s", line))
    assert tv > 0 and cz > 0 and raw > 0
    assert "summary: convzoo streaming vs torchvision" in out
