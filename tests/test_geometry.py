"""One geometry and one decoder for memory, stream, eval, predict and export; eval and predict on
any folder through the run's own geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from imagedata import photo
from PIL import Image

from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.api import load, read_image
from convzoo.cli import main
from convzoo.data.images import Geometry
from convzoo.data.loading import pipeline
from convzoo.data.loading.loaders import StreamLoader
from convzoo.data.loading.registry import load_dataset
from convzoo.data.packs.reader import load_packed, open_packed
from convzoo.data.packs.writer import pack
from convzoo.data.sources.digits import load_digits
from convzoo.saved import checkpoint_geometry

QUIET = ["--set", "train.loggers=[]", "--set", "train.threads=1", "--device", "cpu",
         "--set", "data.workers=1"]


@pytest.fixture(scope="module")
def mixed_jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ of two classes: JPEGs of three sizes and aspect ratios, one gray."""
    root = tmp_path_factory.mktemp("mixed") / "tree"
    sizes = [(40, 30), (30, 44), (37, 37)]
    for split, n in (("train", 6), ("test", 3)):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(n):
                w, h = sizes[i % 3]
                mode = "L" if (c, i) == (1, 1) else "RGB"
                path = root / split / cls / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                photo(w, h, 10 * c + i + 100 * n, mode).save(path, quality=90)
    return root


def _digits_tree(root: Path, size: int, splits: dict[str, str], classes=None, seed: int = 0) -> Path:
    """Digits images at `size` px as PNG files: {folder name: digits split}; '' = class folders
    at the top (no split level)."""
    ds = load_digits(image_size=size, channels=1, seed=seed)
    for folder, split in splits.items():
        s = ds.splits[split]
        for i in range(len(s)):
            cls = ds.classes[int(s.labels[i])]
            if classes is not None and cls not in classes:
                continue
            path = root / folder / cls / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(s.images[i, 0].numpy()).save(path)
    return root


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A few epochs of the quickstart recipe (digits at 16 px), its summary."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--recipe", "quickstart", "--epochs", "4", "--out", str(out),
                 "--name", "q", *QUIET]) == 0
    return out / "q", json.loads((out / "q" / "summary.json").read_text())


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval/predict cache where the user's default data.root says (~/.cache/convzoo)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _eval(run: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--device", "cpu", *args]) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------- one geometry


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_one_image_one_tensor_through_memory_stream_eval_and_predict(
        mixed_jpegs: Path, tmp_path: Path, resize: str) -> None:
    """Every JPEG of a mixed-size folder becomes the same uint8 tensor in memory (folder and
    pack), streamed, in eval (the run's geometry over another source) and in predict."""
    cfg = C.DataConfig(source=str(mixed_jpegs), root=str(tmp_path / "cache"), image_size=24,
                       resize=resize, workers=1)
    memory = load_dataset(cfg)
    geometry = memory.geometry
    assert geometry == Geometry(3, 24, 24, resize)
    dest = tmp_path / "packed"
    pack(mixed_jpegs, dest, fmt="jpeg", workers=1, progress=False)
    assert open_packed(dest).splits["train"][0][0] == (mixed_jpegs / "train/ant/0.jpg").read_bytes()
    packed_memory = load_packed(dest, image_size=24, resize=resize, workers=1)
    stream = StreamLoader(open_packed(dest).splits["train"], 4, workers=0, geometry=geometry)
    streamed = stream.head(0).cpu()
    full = C.from_dict({"data": {"source": str(dest), "loader": "stream"}})
    evaluated = pipeline.open_source(full, geometry=geometry)
    eval_batch = evaluated.splits["train"].decode(range(12), evaluated.geometry)
    files = sorted((mixed_jpegs / "train").rglob("*.jpg"))
    predicted = torch.stack([read_image(f, geometry) for f in files])
    reference = memory.splits["train"].images
    assert reference.shape == (12, 3, 24, 24)
    assert torch.equal(packed_memory.splits["train"].images, reference)
    assert torch.equal(streamed, reference)
    assert torch.equal(eval_batch.permute(0, 3, 1, 2), reference)
    assert torch.equal(predicted, reference)
    gray = reference[7]  # bee/1.jpg, a gray JPEG: replicated to 3 equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_crop_keeps_the_aspect_ratio_and_squash_does_not() -> None:
    image = torch.zeros(1, 30, 60, dtype=torch.uint8)
    image[:, :, 15:45] = 255  # a white square in the middle of a 2:1 image
    crop = Geometry(1, 10, 10, "crop").apply(image)
    squash = Geometry(1, 10, 10, "squash").apply(image)
    assert crop.shape == squash.shape == (1, 10, 10)
    assert crop.float().mean() > 240  # the centre square fills the crop
    assert 100 < squash.float().mean() < 160  # squashed: half of it is the black margin


def test_mixed_size_pack_trains_under_auto_with_image_size(mixed_jpegs: Path,
                                                           tmp_path: Path) -> None:
    """Today's bug: a JPEG pack of mixed sizes with data.image_size=S fails under the default
    data.loader=auto (the in-memory path never passed the size on) and trains under stream."""
    dest = tmp_path / "packed"
    pack(mixed_jpegs, dest, fmt="jpeg", workers=1, progress=False)
    for loader in ("auto", "stream"):
        assert main(["train", "--data", str(dest), "--set", "data.image_size=20", "--set",
                     f"data.loader={loader}", "--epochs", "1", "--batch-size", "4",
                     "--model", "resnet20", "--out", str(tmp_path), "--name", loader,
                     *QUIET]) == 0
        ckpt = torch.load(tmp_path / loader / "last.pt", weights_only=True)
        assert ckpt["geometry"] == {"channels": 3, "height": 20, "width": 20, "resize": "crop"}


def _png16(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR, one zlib IDAT of unfiltered rows."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_png_decodes_the_same_for_training_and_predict(tmp_path: Path) -> None:
    """Today's bug: training scaled 16-bit PNGs by 1/257 and predict clipped them."""
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    for split in ("train", "test"):
        (tmp_path / "t" / split / "a").mkdir(parents=True)
        Image.fromarray(gray16).save(tmp_path / "t" / split / "a" / "g.png")
        (tmp_path / "t" / split / "a" / "c.png").write_bytes(_png16(rgb16))
    ds = load_dataset(C.DataConfig(source=str(tmp_path / "t"), root=str(tmp_path / "c"),
                                   workers=1))
    geometry = ds.geometry
    files = sorted((tmp_path / "t" / "train" / "a").iterdir())
    predicted = torch.stack([read_image(f, geometry) for f in files])
    assert torch.equal(predicted, ds.splits["train"].images)
    names = [f.name for f in files]
    expected = torch.from_numpy(np.round(gray16 / 257.0).astype(np.uint8))
    assert torch.equal(ds.splits["train"].images[names.index("g.png"), 0], expected)
    expected = torch.from_numpy(np.round(rgb16 / 257.0).astype(np.uint8)).permute(2, 0, 1)
    assert torch.equal(ds.splits["train"].images[names.index("c.png")], expected)
    assert int(ds.splits["train"].images.max()) > 200  # not clipped to a few grey levels


# ----------------------------------------------------------------------------- eval / predict


@pytest.mark.slow
def test_eval_at_another_stored_size_gives_the_runs_accuracy(
        digits_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Today's bug: the digits test split re-saved at 64 px was fed unresized to a run trained
    at 16 px: eval 10% (chance), predict 100%. Now both go through the run's geometry."""
    run, summary = digits_run
    assert summary["top1"] > 60
    tree = _digits_tree(tmp_path / "d64", 64, {"train": "train", "test": "test"})
    result = _eval(run, "--data", str(tree), capsys=capsys)
    assert result["split"] == "test" and result["count"] == 450
    assert abs(result["top1"] - summary["top1"]) < 3.0, (result["top1"], summary["top1"])
    capsys.readouterr()
    assert main(["predict", str(run), str(tree / "test"), "--json", "--topk", "1",
                 "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    hits = sum(Path(r["file"]).parent.name == r["top"][0]["class"] for r in rows)
    assert len(rows) == 450 and hits / 4.5 == pytest.approx(result["top1"], abs=1e-6)


def test_eval_on_a_class_folder_a_test_only_tree_and_a_class_subset(
        digits_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, summary = digits_run
    flat = _digits_tree(tmp_path / "flat", 32, {"": "test"})  # <class>/*, no split level
    result = _eval(run, "--data", str(flat), capsys=capsys)
    assert result["count"] == 450 and abs(result["top1"] - summary["top1"]) < 3.0
    test_only = _digits_tree(tmp_path / "testonly", 16, {"test": "test"})
    assert _eval(run, "--data", str(test_only), capsys=capsys)["count"] == 450
    subset = _digits_tree(tmp_path / "subset", 16, {"test": "test"}, classes={"2", "5", "7"})
    result = _eval(run, "--data", str(subset), capsys=capsys)
    assert result["count"] == 135 and result["top1"] > 50  # labels mapped by class name
    (subset / "test" / "cat").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(subset / "test" / "cat" / "x.png")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(subset), "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "'cat'" in err[0] and "model knows" in err[0]


@pytest.mark.slow
def test_val_folder_is_val_and_new_data_defaults_to_its_held_out_split(
        digits_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Today: a train/+val/ tree reported its splits as 'test, train' (so --split val was
    refused), and a run trained with data.val_fraction evaluated new data on 'val'."""
    run, _ = digits_run
    tree = _digits_tree(tmp_path / "tv", 16, {"train": "train", "val": "test"})
    assert _eval(run, "--data", str(tree), capsys=capsys)["split"] == "val"
    assert _eval(run, "--data", str(tree), "--split", "val", capsys=capsys)["count"] == 450
    carved = tmp_path / "runs"
    assert main(["train", "--data", "digits", "--set", "data.image_size=16", "--set",
                 "data.val_fraction=0.2", "--set", "data.limit=200", "--epochs", "1",
                 "--batch-size", "32", "--out", str(carved), "--name", "v", *QUIET]) == 0
    assert _eval(carved / "v", capsys=capsys)["split"] == "val"  # its own data: its own split
    other = _digits_tree(tmp_path / "tt", 16, {"train": "train", "test": "test"})
    assert _eval(carved / "v", "--data", str(other), capsys=capsys)["split"] == "test"


def test_a_checkpoints_data_root_is_never_written(digits_run: tuple[Path, dict],
                                                  tmp_path: Path) -> None:
    """A foreign checkpoint's stored data.root (and decoding limits) are not used: caches go
    where this user's configuration says."""
    run, _ = digits_run
    ckpt = ckpt_io.load_checkpoint(run, "last")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    ckpt["config"]["data"].update(root=str(foreign), max_image_pixels=0, max_member_mb=0)
    ckpt_io.atomic_save(ckpt, tmp_path / "foreign.pt")
    tree = _digits_tree(tmp_path / "d", 16, {"test": "test"})
    mine = tmp_path / "mine"
    result = load(tmp_path / "foreign.pt", device="cpu").evaluate(str(tree),
                                                                  data_root=str(mine))
    assert result["count"] == 450
    assert list(foreign.iterdir()) == []
    assert list((mine / "cache").glob("*.pt"))


def test_predict_and_export_use_the_checkpoint_geometry(digits_run: tuple[Path, dict],
                                                        tmp_path: Path) -> None:
    run, _ = digits_run
    ckpt = ckpt_io.load_checkpoint(run, "last")
    assert checkpoint_geometry(ckpt) == Geometry(3, 16, 16, "crop")
    legacy = {k: v for k, v in ckpt.items() if k != "geometry"}  # written before geometry
    assert checkpoint_geometry(legacy) == Geometry(3, 16, 16, "squash")
    assert main(["export", str(run), "--format", "safetensors", "--out",
                 str(tmp_path / "w.safetensors")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["geometry"]) == {"channels": 3, "height": 16, "width": 16,
                                            "resize": "crop"}
