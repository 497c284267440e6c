"""One sampler and one table of random streams for both loaders."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo.config import AugmentConfig
from convzoo.data import sampler
from convzoo.data.dataset import Split
from convzoo.data.loading.loaders import ResidentLoader, StreamLoader
from convzoo.data.packs.reader import open_packed
from convzoo.data.packs.writer import pack
from convzoo.data.sampler import EpochPlan, stream_seed
from convzoo.data.transforms.augment import build_train_augment


def _batches(loader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [y.tolist() for _, y in loader]


@pytest.fixture(scope="module")
def labelled_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 images, each its own class: a batch's labels are its images' indices."""
    root = tmp_path_factory.mktemp("fifty")
    for i in range(50):
        folder = root / "tree" / "train" / f"c{i:02d}"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), i, dtype=np.uint8)).save(folder / "x.png")
    pack(root / "tree", root / "packed", workers=1, progress=False)
    return root / "packed"


@pytest.mark.slow
def test_both_loaders_shard_identically_for_every_world_and_dataset_size(
        labelled_pack: Path) -> None:
    """World sizes 1-8, dataset sizes 1-50, training and evaluation partitions: the resident
    and the streaming loader give every rank the same batches; evaluation sees every image
    exactly once (no padding, none dropped); training gives every rank the same number of
    steps and no image twice."""
    full = open_packed(labelled_pack).splits["train"]
    assert full.labels.tolist() == list(range(50))
    memory = Split(torch.zeros(50, 3, 4, 4, dtype=torch.uint8), torch.arange(50))
    for n, world, drop_last in itertools.product(range(1, 51), range(1, 9), (False, True)):
        part, split = full.subset(range(n)), memory.subset(torch.arange(n))
        per_rank = []
        for rank in range(world):
            common = dict(shuffle=drop_last, drop_last=drop_last, seed=7, rank=rank,
                          world_size=world)
            resident = _batches(ResidentLoader(split, 2, **common), 3)
            streamed = _batches(StreamLoader(part, 2, workers=0, **common), 3)
            assert resident == streamed, (n, world, rank, drop_last)
            per_rank.append([i for b in resident for i in b])
        seen = [i for shard in per_rank for i in shard]
        if drop_last:  # training: equal steps, full batches, nothing twice
            steps = n // (2 * world)
            assert all(len(s) == 2 * steps for s in per_rank), (n, world)
            assert len(set(seen)) == len(seen)
        else:  # evaluation: exact partition of whole one-process batches, ranks in order
            assert seen == list(range(n)), (n, world)
            one_process = _batches(ResidentLoader(split, 2, drop_last=False), 3)
            ranks = [_batches(ResidentLoader(split, 2, drop_last=False, rank=r, world_size=world),
                              3) for r in range(world)]
            assert [b for r in ranks for b in r] == one_process, (n, world)
            counts = [len(r) for r in ranks]
            assert max(counts) - min(counts) <= 1  # uneven by one batch at most


def test_a_global_batch_holds_the_same_images_whatever_the_world_size() -> None:
    """So 1 and N processes at the same global batch train on the same batches."""
    for world in (1, 2, 4):
        plans = [EpochPlan(103, 8 // world, shuffle=True, drop_last=True, seed=3, rank=r,
                           world_size=world) for r in range(world)]
        steps = [torch.cat([p.batch(5, k) for p in plans]) for k in range(len(plans[0]))]
        if world == 1:
            reference = steps
        assert len(steps) == 103 // 8
        assert all(torch.equal(a, b) for a, b in zip(steps, reference))


def test_an_epoch_can_start_at_any_batch() -> None:
    split = Split(torch.randint(0, 256, (37, 3, 6, 6), dtype=torch.uint8), torch.arange(37))
    augment = build_train_augment(AugmentConfig(pad=2, flip=True))
    loader = ResidentLoader(split, 4, shuffle=True, drop_last=True, seed=1, augment=augment)
    loader.set_epoch(2)
    whole = list(loader)
    for k in (0, 3, len(whole) - 1, len(whole)):
        loader.set_epoch(2, start=k)
        tail = list(loader)
        assert len(tail) == len(whole) - k
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(tail, whole[k:]))
    with pytest.raises(ValueError, match="start batch"):
        loader.set_epoch(2, start=len(whole) + 1)


def test_ranks_augment_differently_and_reproducibly() -> None:
    """Every image identical: batches can differ only by their augmentation draws. Today's bug:
    rank 0's and rank 1's augmented batches came out identical."""
    split = Split(torch.randint(0, 256, (1, 3, 12, 12), dtype=torch.uint8).expand(64, -1, -1, -1),
                  torch.zeros(64, dtype=torch.int64))
    augment = build_train_augment(AugmentConfig(pad=3, flip=True, cutout=4))

    def first_batches(rank: int) -> list[torch.Tensor]:
        loader = ResidentLoader(split, 8, shuffle=True, drop_last=True, seed=0, rank=rank,
                                world_size=2, augment=augment)
        loader.set_epoch(1)
        return [x for x, _ in loader]

    rank0, rank1 = first_batches(0), first_batches(1)
    assert all(not torch.equal(a, b) for a, b in zip(rank0, rank1))
    assert all(torch.equal(a, b) for a, b in zip(rank0, first_batches(0)))


def test_random_streams_are_distinct_and_none_is_the_global_seed() -> None:
    """Today's bug: the streaming loader's batch-0 augmentation seed equalled the global RNG
    seed that drives dropout and drop-path."""
    seeds = {}
    for seed, epoch, rank, batch in itertools.product(range(3), range(4), range(4), range(40)):
        seeds[(seed, epoch, "augment", rank, batch)] = stream_seed(seed, epoch, sampler.AUGMENT,
                                                                   rank, batch)
    for seed, epoch, rank in itertools.product(range(3), range(4), range(4)):
        seeds[(seed, epoch, "torch", rank)] = sampler.torch_seed(seed, epoch, rank)
        seeds[(seed, epoch, "order")] = stream_seed(seed, epoch, sampler.ORDER)
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())


def test_order_is_the_same_on_every_rank_and_a_pure_function() -> None:
    a = sampler.epoch_order(1000, seed=4, epoch=9, shuffle=True)
    assert torch.equal(a, sampler.epoch_order(1000, seed=4, epoch=9, shuffle=True))
    assert not torch.equal(a, sampler.epoch_order(1000, seed=4, epoch=10, shuffle=True))
    assert sorted(a.tolist()) == list(range(1000))
    assert sampler.epoch_order(5, 0, 0, shuffle=False).tolist() == list(range(5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resident_loader_on_cuda_same_order_own_streams() -> None:
    """On CUDA the order is the CPU's (drawn on the CPU), augmentation draws come from a CUDA
    generator of the batch's stream: reproducible, and different per rank."""
    split = Split(torch.randint(0, 256, (1, 3, 12, 12), dtype=torch.uint8).expand(64, -1, -1, -1),
                  torch.arange(64))
    augment = build_train_augment(AugmentConfig(pad=3, flip=True, cutout=4))

    def batches(rank: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = ResidentLoader(split, 8, shuffle=True, drop_last=True, seed=0, rank=rank,
                                world_size=2, augment=augment, device=device)
        loader.set_epoch(1)
        return list(loader)

    cuda0, cuda1, cpu0 = batches(0, "cuda"), batches(0, "cuda"), batches(0, "cpu")
    assert all(x.device.type == "cuda" for x, _ in cuda0)
    assert [y.tolist() for _, y in cuda0] == [y.tolist() for _, y in cpu0]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cuda0, cuda1))
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(cuda0, batches(1, "cuda")))
