"""Data in: label files, Hugging Face datasets, WebDataset shards and data
passed from Python train like the image folder holding the same PNG files, as ``--data`` and
as ``convzoo pack`` inputs; bad input of each is one line and exit code 2."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from convzoo.cli import main
from convzoo.config import DataConfig
from convzoo.data.loading.registry import load_dataset
from convzoo.data.packs.reader import open_packed

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_ARGS = ["--model", "resnet20", "--epochs", "1", "--batch-size", "32", "--set",
              "train.loggers=[]", "--set", "train.eval_batch_size=64", "--set", "augment.pad=1",
              "--seed", "3"]
# the Hugging Face formats need the optional `datasets` (pip install 'convzoo[hf]'; CI has it)
HAVE_HF = importlib.util.find_spec("datasets") is not None
FORMATS = ["folder", "csv", *(["hf_saved", "parquet"] if HAVE_HF else []), "webdataset"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def digit_set(per_split: dict[str, int], names: list[str] = NAMES, seed: int = 0
              ) -> dict[str, list[tuple[str, str, bytes]]]:
    """{split: [(file stem, class name, PNG bytes)]} of 8x8 digits, in the order an image folder
    loads them (class folders sorted, then file names): what every format below is written in."""
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))
    out: dict[str, list[tuple[str, str, bytes]]] = {}
    at = 0
    for split, n in per_split.items():
        rows = []
        for k, j in enumerate(order[at:at + n]):
            cls = names[k % len(names)] if len(names) != 10 else names[bunch.target[j]]
            rows.append((f"{split}{int(j):04d}", cls, png(pixels[j])))
        at += n
        out[split] = sorted(rows, key=lambda r: (r[1], r[0]))
    return out


def write_folder(root: Path, data) -> Path:
    for split, rows in data.items():
        for stem, cls, blob in rows:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            (root / split / cls / f"{stem}.png").write_bytes(blob)
    return root


def write_csv(root: Path, data, delimiter: str = ",", suffix: str = ".csv") -> Path:
    (root / "images").mkdir(parents=True)
    lines = [delimiter.join(["filename", "class", "split"])]
    for split, rows in data.items():
        for stem, cls, blob in rows:
            (root / "images" / f"{stem}.png").write_bytes(blob)
            lines.append(delimiter.join([f"images/{stem}.png", cls, split]))
    path = root / f"labels{suffix}"
    path.write_text("\n".join(lines) + "\n")
    return path


def hf_dict(data, names: list[str]):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.DatasetDict({
        ("validation" if s == "val" else s): datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for _, _, b in rows],
             "label": [names.index(c) for _, c, _ in rows]}, features=features)
        for s, rows in data.items()})


def write_hf_saved(root: Path, data, names: list[str]) -> Path:
    hf_dict(data, names).save_to_disk(str(root))
    return root


def write_parquet(root: Path, data, names: list[str]) -> Path:
    (root / "data").mkdir(parents=True)
    for split, ds in hf_dict(data, names).items():
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def write_shards(root: Path, data, names: list[str] | None, shards: int = 2,
                 label: str = "cls") -> str:
    """WebDataset shards ``digits-{split}-{000..shards-1}.tar``; ``classes.txt`` beside them
    when `names` is given (then the label is the class index), else text labels."""
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in data.items():
        per = -(-len(rows) // shards)
        for k in range(shards):
            with tarfile.open(root / f"digits-{split}-{k:03d}.tar", "w") as tar:
                for stem, cls, blob in rows[k * per:(k + 1) * per]:
                    value = str(names.index(cls)) if names else cls
                    fields = {"png": blob, label: value.encode()}
                    if label == "json":
                        fields[label] = json.dumps({"label": names.index(cls) if names
                                                    else cls}).encode()
                    for field, payload in fields.items():
                        info = tarfile.TarInfo(f"{stem}.{field}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    if names:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    splits = ",".join(data)
    return str(root / f"digits-{{{splits}}}-{{000..{shards - 1:03d}}}.tar")


def write_format(kind: str, root: Path, data, names: list[str]) -> str:
    if kind == "folder":
        return str(write_folder(root, data))
    if kind == "csv":
        return str(write_csv(root, data))
    if kind == "hf_saved":
        return str(write_hf_saved(root, data, names))
    if kind == "parquet":
        return str(write_parquet(root, data, names))
    return write_shards(root, data, names)


def loaded(source: str, tmp: Path):
    return load_dataset(DataConfig(source=source, root=str(tmp / "cache"), workers=1))


@pytest.fixture(scope="module")
def digits_sources(tmp_path_factory) -> dict[str, str]:
    """The same 160 + 48 digit PNGs written in every format."""
    root = tmp_path_factory.mktemp("formats")
    data = digit_set({"train": 160, "test": 48})
    names = sorted(NAMES)
    return {kind: write_format(kind, root / kind, data, names) for kind in FORMATS}


# ----------------------------------------------------------------------------- equivalence


def test_every_format_loads_the_same_images_classes_and_splits(digits_sources, tmp_path):
    reference = loaded(digits_sources["folder"], tmp_path)
    assert reference.classes == sorted(NAMES)
    for kind, source in digits_sources.items():
        ds = loaded(source, tmp_path)
        assert ds.classes == reference.classes, kind
        assert {s: len(v) for s, v in ds.splits.items()} == {"train": 160, "test": 48}, kind
        assert ds.geometry == reference.geometry, kind
        for split in ("train", "test"):
            assert torch.equal(ds.splits[split].images, reference.splits[split].images), kind
            assert torch.equal(ds.splits[split].labels, reference.splits[split].labels), kind


def _train(source: str, out: Path, name: str) -> dict:
    assert main(["train", "--data", source, *TRAIN_ARGS, "--out", str(out), "--name", name]) == 0
    return json.loads((out / name / "summary.json").read_text())


@pytest.mark.slow
def test_every_format_and_its_pack_train_to_the_same_top1(digits_sources, tmp_path):
    """One epoch from each format on the same seed: the same decoded bytes in the same order
    give the same loss and top-1, to the last bit. `convzoo pack` of each holds the same
    images, classes and splits (loaded back), and a pack trains to the same figures too."""
    figures = {}
    reference = loaded(digits_sources["folder"], tmp_path)
    for kind, source in digits_sources.items():
        s = _train(source, tmp_path, kind)
        figures[kind] = (s["top1"], s["loss"], s["train_images_per_epoch"])
        if kind == "folder":
            continue
        dest = tmp_path / f"{kind}.pack"
        assert main(["pack", source, str(dest), "--workers", "1"]) == 0
        pack = open_packed(dest)
        assert pack.classes == sorted(NAMES) and pack.image_format == "raw"
        assert {s: len(v) for s, v in pack.splits.items()} == {"train": 160, "test": 48}
        pack.close()
        back = loaded(str(dest), tmp_path)
        for split in ("train", "test"):
            assert torch.equal(back.splits[split].images, reference.splits[split].images), kind
            assert torch.equal(back.splits[split].labels, reference.splits[split].labels), kind
        if kind == "webdataset":  # one pack trained: the others hold the same bytes (above)
            s = _train(str(dest), tmp_path, f"{kind}-pack")
            figures[f"{kind}-pack"] = (s["top1"], s["loss"], s["train_images_per_epoch"])
    assert len(figures) == len(FORMATS) + 1 and len(set(figures.values())) == 1, figures


# ----------------------------------------------------------------------------- class order


def test_hundred_classes_keep_each_formats_class_order(tmp_path):
    """100 classes: folders and label files sort the names; a ClassLabel and a classes.txt
    keep their own order; shards with text labels and no classes.txt sort them."""
    names = [f"k{i:03d}" for i in range(100)]
    own = names[:]
    random.Random(1).shuffle(own)  # a ClassLabel / classes.txt order that is not sorted
    data = digit_set({"train": 200, "test": 100}, names=names)
    expected = {"folder": sorted(names), "csv": sorted(names), "hf_saved": own, "parquet": own,
                "webdataset": own}
    for kind in FORMATS:
        source = write_format(kind, tmp_path / kind, data, own)
        ds = loaded(source, tmp_path)
        assert ds.classes == expected[kind], kind
        # the label of each image is its class, whatever the numbering
        stems = {stem: cls for rows in data.values() for stem, cls, _ in rows}
        train = ds.splits["train"]
        if train.names is not None:
            for name, label in zip(train.names[:20], train.labels[:20].tolist()):
                stem = Path(name.split(":")[-1]).name.split(".")[0].split("/")[-1]
                if stem in stems:
                    assert ds.classes[label] == stems[stem], (kind, name)
    text = write_shards(tmp_path / "wds-text", data, None, label="cls.txt")
    assert loaded(text, tmp_path).classes == sorted(names)
    as_json = write_shards(tmp_path / "wds-json", data, own, label="json")
    assert loaded(as_json, tmp_path).classes == own


def test_integer_labels_without_names_keep_their_numbers(tmp_path):
    (tmp_path / "a.png").write_bytes(png(np.zeros((8, 8), np.uint8)))
    (tmp_path / "b.png").write_bytes(png(np.full((8, 8), 255, np.uint8)))
    f = tmp_path / "l.tsv"
    f.write_text("path\tlabel\tsplit\na.png\t2\ttrain\nb.png\t0\ttest\na.png\t10\ttrain\n")
    ds = loaded(str(f), tmp_path)
    assert ds.classes == [str(i) for i in range(11)]
    assert ds.splits["train"].labels.tolist() == [2, 10]
    semi = tmp_path / "semicolons.csv"  # a spreadsheet's CSV in a comma-decimal locale
    semi.write_text("file;target;subset\na.png;dog;train\nb.png;cat;train\nb.png;cat;val\n")
    ds = loaded(str(semi), tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.splits["train"].labels.tolist() == [1, 0]
    assert len(ds.splits["val"]) == 1


def test_eval_reads_every_format_as_the_folder(digits_sources, tmp_path, capsys):
    """`convzoo eval --data` of each format gives the folder's figures (its held-out split,
    through the run's geometry)."""
    run = tmp_path / "r"
    assert main(["train", "--data", digits_sources["folder"], *TRAIN_ARGS, "--out", str(tmp_path),
                 "--name", "r"]) == 0
    capsys.readouterr()
    results = {}
    for kind, source in digits_sources.items():
        assert main(["eval", str(run), "--data", source, "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        results[kind] = (r["top1"], r["loss"], r["split"])
    assert len(set(results.values())) == 1, results


def test_shards_behind_an_fsspec_url_read_and_pack_as_local_ones(digits_sources, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    local = Path(digits_sources["webdataset"]).parent
    for f in local.iterdir():
        fs.pipe(f"/wds-{tmp_path.name}/{f.name}", f.read_bytes())
    url = f"memory://wds-{tmp_path.name}/" + Path(digits_sources["webdataset"]).name
    remote, here = loaded(url, tmp_path), loaded(digits_sources["webdataset"], tmp_path)
    assert remote.classes == here.classes == sorted(NAMES)
    assert main(["pack", url, str(tmp_path / "remote.pack"), "--workers", "1"]) == 0
    packed = loaded(str(tmp_path / "remote.pack"), tmp_path)
    for split in ("train", "test"):
        for ds in (remote, packed):
            assert torch.equal(ds.splits[split].images, here.splits[split].images)
            assert torch.equal(ds.splits[split].labels, here.splits[split].labels)


def test_shards_read_as_the_webdataset_package_reads_them(digits_sources, tmp_path):
    """The reader written over tarfile agrees with the `webdataset` package (when installed)
    on the samples, their order, images and labels."""
    wds = pytest.importorskip("webdataset")
    source = digits_sources["webdataset"]
    theirs = [(s["__key__"], int(s["cls"]), s["png"])
              for s in wds.WebDataset(source, shardshuffle=False, empty_check=False)]
    ours = loaded(source, tmp_path)
    names = ours.splits["train"].names + ours.splits["test"].names
    labels = ours.splits["train"].labels.tolist() + ours.splits["test"].labels.tolist()
    assert [n.rsplit(":", 1)[-1] for n in names] == [k for k, _, _ in theirs]
    assert labels == [c for _, c, _ in theirs]
    decoded = torch.cat([ours.splits["train"].images, ours.splits["test"].images])
    from convzoo.data.images import decode

    assert all(torch.equal(decode(blob), image) for (_, _, blob), image in zip(theirs, decoded))


def test_one_local_tar_is_a_shard_when_it_holds_samples(digits_sources, tmp_path):
    shard = Path(digits_sources["webdataset"]).parent / "digits-train-000.tar"
    ds = load_dataset(DataConfig(source=str(shard), root=str(tmp_path), workers=1,
                                 val_fraction=0.25))
    assert ds.classes == sorted(NAMES) and len(ds.splits["train"]) + len(ds.splits["val"]) == 80
