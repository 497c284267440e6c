"""Packed records behind an fsspec URL (fsspec's memory and local filesystems: no network):
the same batches as the local pack, each rank fetching only blocks of its own records, a
node-local cache that later epochs and other processes read, a changed pack emptying it."""

from __future__ import annotations

import itertools
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convzoo.cli import main
from convzoo.data.loading.loaders import StreamLoader
from convzoo.data.packs import remote
from convzoo.data.packs.reader import open_packed
from convzoo.data.packs.writer import pack
from convzoo.errors import ConvzooError

RECORD = 4 * 4 * 3  # a raw 4x4 RGB record


@pytest.fixture(scope="module")
def local_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw pack of 4x4 images: train 30 (image i has value i, class i % 3), test 11."""
    root = tmp_path_factory.mktemp("remote")
    for split, n in (("train", 30), ("test", 11)):
        for i in range(n):
            folder = root / "tree" / split / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            value = i if split == "train" else 100 + i
            Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(folder / f"{i}.png")
    pack(root / "tree", root / "packed", fmt="raw", workers=1, progress=False)
    return root / "packed"


def to_memory(local: Path, url: str) -> None:
    fs = fsspec.filesystem("memory")
    for f in local.iterdir():
        fs.pipe(url.removeprefix("memory://") + "/" + f.name, f.read_bytes())


@pytest.fixture(autouse=True)
def fresh_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "_OPENED", {})  # each test opens its URLs afresh


def batches(loader: StreamLoader, epoch: int) -> list[tuple[list[float], list[int]]]:
    loader.set_epoch(epoch)
    return [(x.flatten(1)[:, 0].tolist(), y.tolist()) for x, y in loader]


def test_memory_and_local_urls_give_the_local_pack_s_batches_on_every_rank(
        local_pack: Path, tmp_path: Path) -> None:
    to_memory(local_pack, "memory://packs/a")
    urls = ["memory://packs/a", f"file://{local_pack}"]
    local = open_packed(local_pack).splits
    for url, world, train in itertools.product(urls, (1, 2, 3), (True, False)):
        split = "train" if train else "test"
        opened = open_packed(url, tmp_path / "root").splits[split]
        for rank in range(world):
            common = dict(shuffle=train, drop_last=train, seed=5, rank=rank, world_size=world,
                          workers=0)
            a = batches(StreamLoader(local[split], 4, **common), 2)
            b = batches(StreamLoader(opened, 4, **common), 2)
            assert a == b and a, (url, world, rank, train)


def test_each_rank_fetches_only_blocks_of_its_own_records(
        local_pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One record per block: the blocks a rank fetched are exactly its shard's records, and a
    second epoch over the same records fetches nothing (the cache)."""
    monkeypatch.setattr(remote, "BLOCK_BYTES", RECORD)
    to_memory(local_pack, "memory://packs/b")
    world = 3
    for rank, split in itertools.product(range(world), ("train", "test")):
        root = tmp_path / f"rank{rank}-{split}"  # a cache of its own, to see what it fetched
        part = open_packed("memory://packs/b", root).splits[split]
        train = split == "train"
        loader = StreamLoader(part, 2, shuffle=train, drop_last=train, seed=1, rank=rank,
                              world_size=world, workers=0)
        loader.set_epoch(1)
        list(loader)
        mine = part.table[loader.plan.shard(1).numpy()]
        assert (mine[:, 1] % RECORD == 0).all()
        expected = {(int(k), int(off) // RECORD) for k, off in mine[:, :2].tolist()}
        blocks = {(int(p.stem.split("-")[0]), int(p.stem.split("-")[1]))
                  for p in (remote.cache_dir("memory://packs/b", root) / "blocks").iterdir()}
        assert blocks == expected and part.remote.fetched_bytes == len(expected) * RECORD
        list(loader)  # the same epoch again: all from the cache
        assert part.remote.fetched_bytes == len(expected) * RECORD


def test_a_changed_pack_empties_the_cache_and_a_bad_url_is_one_line(
        local_pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    to_memory(local_pack, "memory://packs/c")
    first = open_packed("memory://packs/c", tmp_path).splits["test"]
    assert first.read(0) == bytes([100]) * RECORD
    cache = remote.cache_dir("memory://packs/c", tmp_path)
    assert (cache / "blocks").is_dir()
    fs = fsspec.filesystem("memory")
    shard = next(p for p in fs.ls("/packs/c", detail=False) if p.endswith(".rec") and "test" in p)
    fs.pipe(shard, fs.cat_file(shard) + b"\0" * 7)  # re-packed: other sizes
    monkeypatch.setattr(remote, "_OPENED", {})
    again = open_packed("memory://packs/c", tmp_path).splits["test"]
    assert not (cache / "blocks").exists()  # emptied, then refilled on demand
    assert again.read(0) == bytes([100]) * RECORD
    with pytest.raises(ConvzooError, match="nosuch://x.*Protocol not known"):
        open_packed("nosuch://x", tmp_path)
    with pytest.raises(ConvzooError, match="no such folder"):
        open_packed("memory://packs/missing", tmp_path)


def test_training_from_a_url_equals_training_from_the_local_pack(local_pack: Path,
                                                                 tmp_path: Path) -> None:
    common = ["--model", "resnet20", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
              "--set", "data.loader=stream", "--set", "data.workers=1", "--set",
              "train.loggers=[]", "--set", "augment.pad=1", "--out", str(tmp_path),
              "--set", f"data.root={tmp_path / 'cache'}"]
    assert main(["train", "--data", str(local_pack), "--name", "local", *common]) == 0
    assert main(["train", "--data", f"file://{local_pack}", "--name", "url", *common]) == 0
    a = load_file(tmp_path / "local" / "model.safetensors")
    b = load_file(tmp_path / "url" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
