"""The CPU fast path (`convzoo.data.transforms.cpu_stage`): per-image windows equal the batched
ops bit for bit, in the augmentation, in the streaming loader's workers and in the resident
loader; and the shared-memory buffers it writes into are really reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from imagedata import epoch_batches

import convzoo.data.transforms.augment as A
import convzoo.data.transforms.stage as stage_module
from convzoo.config import AugmentConfig, PreprocessConfig
from convzoo.data.loading.loaders import ResidentLoader, StreamLoader
from convzoo.data.packs.reader import load_packed, open_packed
from convzoo.data.packs.writer import pack
from convzoo.data.transforms.augment import build_eval_transform, build_train_augment
from convzoo.data.transforms.cpu_stage import apply_windows
from convzoo.data.transforms.preprocess import fit_preprocessor
from convzoo.errors import ConvzooError

OFF = dict(
    random_resized_crop=0, crop=0, pad=0, pad_mode="zeros", translate=0, rotate=0.0, shear=0.0,
    scale=None, flip=False, flip_mode="random", cutout=0, tta="none",
)


def acfg(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kw})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Integer-geometry pipelines (the ones a CPU builds image by image), with edge cases: shifts
# larger than the image (whole images shifted out), crop + pad + translate composed.
WINDOW_CFGS = [
    acfg(pad=4, flip=True),
    acfg(pad=4, flip=True, flip_mode="alternate"),
    acfg(translate=3),
    acfg(crop=60, flip=True),
    acfg(crop=50, pad=2, translate=1, flip=True, cutout=12),
    acfg(pad=71, cutout=70),
    acfg(crop=64, pad=5, pad_mode="zeros", translate=40, flip=True, flip_mode="alternate"),
    acfg(),
]


@pytest.fixture
def batched_only(monkeypatch):
    """Force the batched (GPU-style) ops on the CPU: the reference for the per-image path."""
    monkeypatch.setattr(A, "per_image", lambda shape, device: False)


@pytest.mark.parametrize("cfg", WINDOW_CFGS, ids=str)
def test_cpu_per_image_path_equals_the_batched_ops(cfg, monkeypatch):
    """Large images on a CPU are built image by image (`apply_windows`); the result is exactly
    what the batched ops give, with the same draws from the same generator."""
    x = torch.randn(9, 3, 70, 75).contiguous(memory_format=torch.channels_last)  # >= 64x64
    index = torch.arange(100, 109)
    aug = build_train_augment(cfg, seed=3)
    assert A.per_image(x.shape, x.device)
    fast = [aug(x, gen(5), epoch=e, index=index) for e in (0, 1)]
    monkeypatch.setattr(A, "per_image", lambda shape, device: False)
    for e in (0, 1):
        assert torch.equal(fast[e], aug(x, gen(5), epoch=e, index=index)), e
    assert fast[0].is_contiguous()


@pytest.mark.parametrize("cfg", WINDOW_CFGS[:5], ids=str)
def test_apply_windows_normalising_uint8_equals_preprocess_then_augment(cfg, batched_only):
    """The streaming CPU stage's one pass (uint8 in, normalised and augmented float out) gives
    exactly preprocess-then-augment, for every pixelwise preprocessing kind."""
    from convzoo.config import PreprocessConfig
    from convzoo.data.transforms.preprocess import fit_preprocessor

    images = torch.randint(0, 256, (6, 3, 66, 70), dtype=torch.uint8, generator=gen(1))
    index = torch.arange(6)
    aug = build_train_augment(cfg, seed=2)
    for kind in ("none", "global_mean", "channel"):
        pre = fit_preprocessor(PreprocessConfig(kind=kind), images)
        expected = aug(pre(images), gen(7), epoch=1, index=index)
        plan = aug.windows(images.shape, gen(7), epoch=1, index=index)
        hwc = [im.permute(1, 2, 0).contiguous().permute(2, 0, 1) for im in images]  # decoded
        got = apply_windows(hwc, plan, normalize=pre.pixelwise())
        assert got.dtype == torch.float32 and torch.equal(got, expected), kind
    assert fit_preprocessor(PreprocessConfig(kind="mean_image"), images).pixelwise() is None
    assert build_train_augment(acfg(pad=4, pad_mode="reflect")).windows(
        images.shape, gen()) is None
    assert build_train_augment(acfg(rotate=5.0)).windows(images.shape, gen()) is None


def test_eval_transform_windows_equal_the_eval_view():

    x = torch.rand(3, 3, 40, 36, generator=gen(0))
    for cfg in (acfg(), acfg(crop=32), acfg(crop=20), acfg(random_resized_crop=36)):
        t = build_eval_transform(cfg)
        plan = t.windows(x.shape)
        if cfg.random_resized_crop:
            assert plan is None  # resizes: not integer geometry
            assert t.windows(torch.Size([3, 3, 36, 36])) is not None  # already the eval view
            continue
        assert torch.equal(apply_windows(x, plan), t(x)), cfg
    with pytest.raises(ConvzooError, match=r"augment\.crop"):
        build_eval_transform(acfg(crop=48)).windows(x.shape)


# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("fmt", ["jpeg", "raw"])
def test_stream_cpu_stage_on_large_images_is_exact_and_kept_batches_stay_intact(
        large_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """On a CPU, large images go from decoded pixels to normalised, augmented batches in one
    pass per image, written into reused shared buffers. The batches equal the batched
    preprocess-then-augment stage exactly, and a batch the caller keeps is never overwritten
    by later ones (more are kept here than the loader has buffers)."""

    dest = tmp_path / fmt
    pack(large_folder, dest, fmt=fmt, workers=1, progress=False)
    split = open_packed(dest).splits["train"]
    test = open_packed(dest).splits["test"]
    pre = fit_preprocessor(PreprocessConfig(kind="channel"), load_packed(dest).splits["train"].images)
    aug = build_train_augment(acfg(crop=64, pad=4, flip=True, cutout=10), seed=1)
    view = build_eval_transform(acfg(crop=64))

    def batches(workers: int, epochs: int = 3) -> list[list[torch.Tensor]]:
        train = StreamLoader(split, 5, shuffle=True, seed=2, preprocess=pre, augment=aug,
                             workers=workers)
        out = [epoch_batches(train, e)[0] for e in range(epochs)]
        evaluation = StreamLoader(test, 4, preprocess=pre, eval_transform=view, workers=workers)
        return out + [[x for x, _ in evaluation]]

    with monkeypatch.context() as m:  # the reference: batched ops, in this process
        m.setattr(A, "per_image", lambda shape, device: False)
        m.setattr(stage_module, "per_image", lambda shape, device: False)
        reference = [[x.clone() for x in epoch] for epoch in batches(0)]
    assert reference[0][0].shape == (5, 3, 64, 64) and reference[-1][0].shape == (4, 3, 64, 64)

    kept = []
    train = StreamLoader(split, 5, shuffle=True, seed=2, preprocess=pre, augment=aug, workers=2)
    for e in range(3):
        train.set_epoch(e)
        for i, (x, _) in enumerate(train):
            assert torch.equal(x, reference[e][i]), (e, i)
            if i % 2 == 0:
                kept.append((e, i, x))
    assert len(kept) > train.slots.count
    for e, i, x in kept:
        assert torch.equal(x, reference[e][i]), (e, i)
    assert all(torch.equal(a, b) for a, b in zip(batches(0, epochs=0)[-1], reference[-1]))


def test_resident_loader_takes_the_same_cpu_stage(large_folder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The resident loader on a CPU runs the same stage: its per-image batches equal its
    batched ones, and equal the streaming loader's for the same images."""
    dest = tmp_path / "raw"
    pack(large_folder, dest, fmt="raw", workers=1, progress=False)
    memory = load_packed(dest).splits["train"]
    pre = fit_preprocessor(PreprocessConfig(kind="channel"), memory.images)
    aug = build_train_augment(acfg(crop=64, pad=4, flip=True), seed=1)

    def make(kind):
        common = dict(shuffle=True, drop_last=True, seed=2, preprocess=pre, augment=aug)
        if kind == "memory":
            return ResidentLoader(memory, 5, **common)
        return StreamLoader(open_packed(dest).splits["train"], 5, workers=0, **common)

    fast = [epoch_batches(make("memory"), e)[0] for e in range(2)]
    assert fast[0][0].shape == (5, 3, 64, 64)
    stream = [epoch_batches(make("stream"), e)[0] for e in range(2)]
    monkeypatch.setattr(A, "per_image", lambda shape, device: False)
    monkeypatch.setattr(stage_module, "per_image", lambda shape, device: False)
    batched = [epoch_batches(make("memory"), e)[0] for e in range(2)]
    for e in range(2):
        assert all(torch.equal(a, b) for a, b in zip(fast[e], batched[e], strict=True))
        assert all(torch.equal(a, b) for a, b in zip(fast[e], stream[e], strict=True))


def test_shared_buffer_reuse_is_really_active(large_folder: Path, tmp_path: Path) -> None:
    """After the first batches, every batch a worker hands over lives in one of the loader's
    shared buffers (its memory is a slot's memory), and no new buffer is made: reuse relies on
    torch's storage reference count (``torch._C._storage_Use_Count``), which this checks is
    there and counts what it should."""
    from convzoo.data.transforms import cpu_stage

    assert cpu_stage._storage_refs is not None, "torch no longer exposes storage use counts"
    dest = tmp_path / "raw"
    pack(large_folder, dest, fmt="raw", workers=1, progress=False)
    pre = fit_preprocessor(PreprocessConfig(kind="channel"),
                           load_packed(dest).splits["train"].images)
    loader = StreamLoader(open_packed(dest).splits["train"], 3, shuffle=True, seed=0,
                          preprocess=pre, augment=build_train_augment(acfg(pad=4, flip=True)),
                          workers=2, prefetch=1)
    in_slots = total = 0
    for epoch in range(4):
        loader.set_epoch(epoch)
        for x, _ in loader:
            total += 1
            ptr = x.untyped_storage().data_ptr()
            in_slots += any(b is not None and b.untyped_storage().data_ptr() == ptr
                            for b in loader.slots.buffers)
            del x  # a loop that keeps no batch: its buffer is free again
    slots = loader.slots
    # at most one batch per slot (the first of each, before the buffer size is known) and the
    # batches prefetched while every slot is held get fresh memory
    assert slots.made <= slots.count and slots.reused >= total // 2, (slots.reused, total)
    assert in_slots >= slots.reused, (in_slots, slots.reused, total)


# ----------------------------------------------------------------------------- policies, mixing

# Stage configs with every step of docs/augmentation.md: policy / jitter on the 0-255 pixels,
# integer geometry or resampling after preprocessing, erasing, mixing with the labels.
MODERN_CFGS = [
    acfg(pad=4, flip=True, policy="trivialaugment", mixup_alpha=0.8, cutmix_alpha=1.0),
    acfg(crop=64, flip=True, cutout=8, policy="randaugment", color_jitter=[0.4, 0.4, 0.4, 0.1],
         erase_prob=0.5, erase_mode="pixel", cutmix_alpha=1.0, mix_mode="elem"),
    acfg(random_resized_crop=64, flip=True, policy="autoaugment-imagenet", erase_prob=0.5,
         erase_count=[1, 3], mixup_alpha=0.4, mix_prob=0.7),  # rrc moves before the policy
    acfg(rotate=10.0, policy="trivialaugment", policy_fill=[124, 116, 104], erase_prob=1.0,
         erase_mode="rand", mixup_alpha=1.0, mix_mode="elem"),
]
MODERN_IDS = ["trivial-mix", "randaug-jitter-erase-cutmix-elem", "rrc-autoaug-erase-mixup",
              "rotate-trivial-fill-erase-mixup-elem"]


def _stage(cfg, images, kind="channel", seed=3):
    from convzoo.data.transforms.stage import Stage
    pre = fit_preprocessor(PreprocessConfig(kind=kind), images)
    return Stage(pre, build_train_augment(cfg, seed=seed, num_classes=5), seed=seed)


@pytest.mark.parametrize("cfg", MODERN_CFGS, ids=MODERN_IDS)
def test_policy_erasing_and_mixing_per_image_path_equals_the_batched_ops(cfg, monkeypatch):
    """With a policy before preprocessing and erasing/mixing after it, the CPU stage (per-image
    windows where the geometry allows) gives exactly the batched stage's images and targets,
    which are those of the steps composed by hand in the documented order, from one generator."""
    images = torch.randint(0, 256, (7, 3, 70, 75), dtype=torch.uint8, generator=gen(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    index = torch.arange(20, 27)
    stage = _stage(cfg, images)
    fast = stage(images, labels, index, 2, 5)
    with monkeypatch.context() as m:
        m.setattr(A, "per_image", lambda shape, device: False)
        m.setattr(stage_module, "per_image", lambda shape, device: False)
        batched = stage(images, labels, index, 2, 5)
    aug, g = stage.augment, stage.generator("cpu", 2, 5)
    moved = bool(cfg.random_resized_crop)
    assert stage.rrc_first is moved
    x = aug.pixels(images, g, rrc=moved)  # 1. 0-255 pixels
    x = aug(stage.preprocess(x), g, 2, index, rrc=not moved)  # 2. after preprocessing
    composed = aug.finish(x, labels, g)  # 3. erasing, mixing
    for got in (fast, batched):
        assert torch.equal(got[0], composed[0]) and torch.equal(got[1], composed[1])
    x, targets = fast
    assert x.dtype == torch.float32 and targets.shape == (7, 5)
    assert torch.allclose(targets.sum(1), torch.ones(7))
    assert not torch.equal(stage(images, labels, index, 2, 6)[0], x)  # another batch, other draws


def test_the_policy_sees_raw_pixels_and_erasing_the_normalised_batch(monkeypatch):
    """Step order: the policy gets float 0-255 pixels (the moved rrc's crop for a pixelwise
    preprocessing, the stored size for a mean image), erasing the normalised, augmented batch."""
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=gen(2))
    seen = {}

    def policy(x, generator):
        seen["policy"] = (x.dtype, tuple(x.shape), float(x.max()))
        return x

    def erasing(x, generator):
        seen["erasing"] = (tuple(x.shape), float(x.mean()))
        return x

    cfg = acfg(random_resized_crop=24, flip=True, policy="trivialaugment", erase_prob=1.0)
    for kind, moved in (("channel", True), ("none", True), ("mean_image", False)):
        stage = _stage(cfg, images, kind)
        monkeypatch.setattr(stage.augment, "policy", policy)
        monkeypatch.setattr(stage.augment, "erasing", erasing)
        x, y = stage(images, torch.zeros(6, dtype=torch.int64), torch.arange(6), 0, 0)
        assert stage.rrc_first is moved and x.shape == (6, 3, 24, 24) and y.dtype == torch.int64
        assert seen["policy"][:2] == (torch.float32, (6, 3, 24 if moved else 40, 24 if moved else 40))
        assert seen["policy"][2] > 200  # 0-255 scale
        assert seen["erasing"][0] == (6, 3, 24, 24) and abs(seen["erasing"][1]) < 1.0
    # without a policy the crop stays after preprocessing (the numbers of earlier runs)
    assert not _stage(acfg(random_resized_crop=24), images).rrc_first


def test_moving_the_rrc_before_a_pixelwise_preprocessing_changes_only_rounding():
    """Bilinear resampling commutes with (x - mean) * scale: the crop of the raw pixels,
    normalised, is the crop of the normalised pixels (why step 1 may take it)."""
    images = torch.randint(0, 256, (8, 3, 50, 60), dtype=torch.uint8, generator=gen(3))
    pre = fit_preprocessor(PreprocessConfig(kind="channel"), images)
    for antialias in (False, True):
        aug = build_train_augment(acfg(random_resized_crop=32, rrc_antialias=antialias))
        before = pre(aug.pixels(images, gen(4), rrc=True))
        after = aug(pre(images), gen(4))
        torch.testing.assert_close(before, after, atol=2e-5, rtol=0)


@pytest.mark.parametrize("cfg", [acfg(crop=64, pad=4, flip=True), *MODERN_CFGS[:3]],
                         ids=["geometry-only", *MODERN_IDS[:3]])
def test_resident_and_stream_loaders_give_the_same_policy_and_mixed_batches(
        cfg, large_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory vs stream (workers, shared buffers) with a policy, erasing and mixing: the same
    images and the same soft targets, batch for batch, and the per-image CPU path equal to the
    batched one."""
    dest = tmp_path / "jpeg"
    pack(large_folder, dest, fmt="jpeg", workers=1, progress=False)
    memory = load_packed(dest).splits["train"]
    pre = fit_preprocessor(PreprocessConfig(kind="channel"), memory.images)
    aug = build_train_augment(cfg, seed=1, num_classes=2)

    def epochs(kind, workers=0):
        common = dict(shuffle=True, drop_last=True, seed=2, preprocess=pre, augment=aug)
        loader = (ResidentLoader(memory, 5, **common) if kind == "memory" else
                  StreamLoader(open_packed(dest).splits["train"], 5, workers=workers, **common))
        out = []
        for e in range(2):
            loader.set_epoch(e)
            out.append([(x.clone(), y.clone()) for x, y in loader])
        return out

    fast, stream = epochs("memory"), epochs("stream", workers=2)
    with monkeypatch.context() as m:
        m.setattr(A, "per_image", lambda shape, device: False)
        m.setattr(stage_module, "per_image", lambda shape, device: False)
        batched = epochs("memory")
    mixes = A.mixes(cfg)
    for e in range(2):
        for (x, y), (xs, ys), (xb, yb) in zip(fast[e], stream[e], batched[e], strict=True):
            assert torch.equal(x, xs) and torch.equal(x, xb)
            assert torch.equal(y, ys) and torch.equal(y, yb)
            assert y.shape == ((5, 2) if mixes else (5,))
