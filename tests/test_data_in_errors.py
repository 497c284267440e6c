"""Bad input of each source kind: a missing column, a missing file, a
bad split, a corrupt file or shard, an empty dataset, a Hub name offline and a missing
``datasets`` library are each one error line naming the problem, exit code 2, for training
and for ``convzoo pack`` alike."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from test_data_in import NAMES, TRAIN_ARGS, digit_set, png, write_shards

from convzoo.cli import main


def _one_line_exit_2(capsys, args: list[str], *words: str) -> str:
    capsys.readouterr()  # what writing the input printed (datasets' progress bars)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("command", ["train", "pack"])
def test_bad_label_files_are_one_line(tmp_path, capsys, command):
    (tmp_path / "a.png").write_bytes(png(np.zeros((8, 8), np.uint8)))

    def run(text: str, *words: str) -> None:
        f = tmp_path / "labels.csv"
        f.write_text(text)
        args = (["train", "--data", str(f), *TRAIN_ARGS, "--out", str(tmp_path / "r")]
                if command == "train" else ["pack", str(f), str(tmp_path / "p")])
        _one_line_exit_2(capsys, args, *words)

    run("file,split\na.png,train\n", "no label column", "labels.csv")
    run("path,label\na.png,cat\nmissing.png,dog\n", "row 3", "missing.png", "not found")
    run("path,label,split\na.png,cat,train\na.png,,test\n", "row 3", "empty label")
    run("path,label,split\na.png,cat,train\na.png,dog,holdout\n", "row 3", "holdout",
        "unknown split")
    run("path,label\n", "no rows", "empty dataset")
    run("path,label\na.png,-1\n", "row 2", "negative label -1")


@pytest.mark.parametrize("command", ["train", "pack"])
def test_bad_hf_datasets_are_one_line(tmp_path, capsys, command):
    datasets = pytest.importorskip("datasets")
    data = digit_set({"train": 12, "test": 4})

    def run(source: str, *words: str) -> None:
        args = (["train", "--data", source, *TRAIN_ARGS, "--out", str(tmp_path / "r")]
                if command == "train" else ["pack", source, str(tmp_path / "p")])
        _one_line_exit_2(capsys, args, *words)

    # a missing column
    nolabel = datasets.Dataset.from_dict({"image": [b for _, _, b in data["train"]]},
                                         features=datasets.Features({"image": datasets.Image()}))
    nolabel.save_to_disk(str(tmp_path / "nolabel"))
    run(str(tmp_path / "nolabel"), "no label column")
    # a missing image file behind a path column
    missing = datasets.Dataset.from_dict({"image": ["gone.png"], "label": [0]})
    missing.to_parquet(str(tmp_path / "missing.parquet"))
    run(str(tmp_path / "missing.parquet"), "gone.png", "not found", "row 0")
    # a bad split name
    odd = datasets.DatasetDict({"train": nolabel, "unsupervised": nolabel})
    odd.save_to_disk(str(tmp_path / "odd"))
    run(str(tmp_path / "odd"), "unknown split 'unsupervised'")
    # an empty dataset
    empty = datasets.Dataset.from_dict({"image": [], "label": []},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.Value("int64")}))
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    run(str(tmp_path / "empty.parquet"), "empty dataset")
    # a corrupt parquet file
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    run(str(tmp_path / "bad.parquet"), "cannot read", "bad.parquet")


@pytest.mark.parametrize("command", ["train", "pack"])
def test_bad_shards_are_one_line(tmp_path, capsys, command):
    data = digit_set({"train": 12, "test": 4})
    good = write_shards(tmp_path / "wds", data, sorted(NAMES))

    def run(source: str, *words: str) -> None:
        args = (["train", "--data", source, *TRAIN_ARGS, "--out", str(tmp_path / "r")]
                if command == "train" else ["pack", source, str(tmp_path / "p")])
        _one_line_exit_2(capsys, args, *words)

    # a missing shard, a corrupt one (the second train shard cut short), an empty one, a
    # sample without a label
    run(str(tmp_path / "wds" / "digits-train-{000..007}.tar"), "shard not found",
        "digits-train-002.tar")
    # a corrupt shard: the second train shard cut in half
    shard = tmp_path / "wds" / "digits-train-001.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    run(good, "digits-train-001.tar")
    with tarfile.open(tmp_path / "none-000.tar", "w"):
        pass
    run(str(tmp_path / "none-{000..000}.tar"), "no samples", "empty dataset")
    with tarfile.open(tmp_path / "nolab-000.tar", "w") as tar:
        info = tarfile.TarInfo("x.png")
        info.size = len(data["train"][0][2])
        tar.addfile(info, io.BytesIO(data["train"][0][2]))
    run(str(tmp_path / "nolab-{000..000}.tar"), "x", "no readable label")


@pytest.mark.parametrize("command", ["train", "pack"])
def test_hub_name_offline_is_one_fast_line(tmp_path, capsys, monkeypatch, command):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "hf://datasets/someone/digits"
    args = (["train", "--data", source, *TRAIN_ARGS, "--out", str(tmp_path)]
            if command == "train" else ["pack", source, str(tmp_path / "p")])
    start = time.perf_counter()
    _one_line_exit_2(capsys, args, source, "network", "save_to_disk")
    assert time.perf_counter() - start < 10  # no retries against an unreachable Hub


def test_missing_datasets_library_is_one_line_with_the_install_command(tmp_path, capsys,
                                                                        monkeypatch):
    import sys

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    _one_line_exit_2(capsys, ["train", "--data", str(tmp_path / "t.parquet"), *TRAIN_ARGS,
                              "--out", str(tmp_path)], "pip install 'convzoo[hf]'")
