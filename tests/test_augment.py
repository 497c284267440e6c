"""Batched augmentation: shapes, ranges, determinism, identities, geometry, eval views and TTA."""

from __future__ import annotations

import pytest
import torch

from convzoo.config import AugmentConfig
from convzoo.data.transforms.augment import (
    alternate_flip,
    build_eval_transform,
    build_train_augment,
    cutout,
    pad_random_crop,
    random_affine,
    random_crop,
    random_flip,
    random_translate,
    tta_views,
)
from convzoo.data.transforms.resample import random_resized_crop
from convzoo.errors import ConvzooError

# Every augmentation off, spelled out so the tests do not depend on the config's defaults.
OFF = dict(
    random_resized_crop=0, crop=0, pad=0, pad_mode="zeros", translate=0, rotate=0.0, shear=0.0,
    scale=None, flip=False, flip_mode="random", cutout=0, tta="none",
)


def acfg(**changes) -> AugmentConfig:
    """An AugmentConfig with everything off except `changes`."""
    return AugmentConfig(**{**OFF, **changes})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """(32, 3, 16, 16) preprocessed-like batch in [-2, 3] with no exact zeros."""
    x = torch.rand(32, 3, 16, 16, generator=gen(123)) * 5 - 2
    return torch.where(x == 0, torch.full_like(x, 0.5), x)


# One entry per random op: (name, function of (x, generator), output size or None = input size).
OPS = [
    ("crop", lambda x, g: random_crop(x, 12, g), 12),
    ("pad_zeros", lambda x, g: pad_random_crop(x, 4, "zeros", g), None),
    ("pad_reflect", lambda x, g: pad_random_crop(x, 4, "reflect", g), None),
    ("translate", lambda x, g: random_translate(x, 3, g), None),
    ("affine", lambda x, g: random_affine(x, g, degrees=15, shear=0.1, scale=[0.9, 1.1]), None),
    ("flip", lambda x, g: random_flip(x, g), None),
    ("cutout", lambda x, g: cutout(x, 5, g), None),
    ("rrc", lambda x, g: random_resized_crop(x, 10, g), 10),
    (
        "pipeline",
        lambda x, g: build_train_augment(
            acfg(crop=14, pad=2, translate=1, rotate=10, flip=True, cutout=4)
        )(x, g),
        14,
    ),
]
OP_IDS = [o[0] for o in OPS]


@pytest.mark.parametrize(("name", "fn", "size"), OPS, ids=OP_IDS)
def test_shape_range_and_seeding(batch, name, fn, size):
    out = fn(batch, gen(0))
    side = size or batch.shape[-1]
    assert out.shape == (32, 3, side, side) and out.dtype == batch.dtype
    # Nothing outside the input range except the fill value 0.
    assert out.min() >= min(batch.min().item(), 0.0) - 1e-6
    assert out.max() <= max(batch.max().item(), 0.0) + 1e-6
    assert torch.equal(fn(batch, gen(0)), out)  # same seed, same batch
    assert not torch.equal(fn(batch, gen(1)), out)  # another seed, another batch


@pytest.mark.parametrize(("name", "fn", "size"), OPS, ids=OP_IDS)
def test_channels_last_and_noncontiguous_inputs(batch, name, fn, size):
    ref = fn(batch, gen(5))
    cl = batch.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fn(cl, gen(5)), ref, atol=1e-5, rtol=1e-5)
    wide = torch.zeros(32, 3, 16, 32)
    wide[..., ::2] = batch
    strided = wide[..., ::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(fn(strided, gen(5)), ref, atol=1e-5, rtol=1e-5)


def test_identity_settings_return_the_input_exactly(batch):
    cfg = acfg(pad=0, translate=0, rotate=0.0, flip=False)
    assert torch.equal(build_train_augment(cfg)(batch, gen()), batch)
    assert torch.equal(pad_random_crop(batch, 0, "zeros", gen()), batch)
    assert torch.equal(random_translate(batch, 0, gen()), batch)
    assert torch.equal(random_affine(batch, gen(), scale=[1.0, 1.0]), batch)
    assert torch.equal(cutout(batch, 0, gen()), batch)
    assert torch.equal(random_crop(batch, 16, gen()), batch)
    assert torch.equal(build_eval_transform(cfg)(batch), batch)


def test_flip_is_an_exact_mirror_of_about_half(batch):
    x = batch.repeat(4, 1, 1, 1)  # 128 images
    out = random_flip(x, gen(3))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 30 < int(mirrored.sum()) < 98
    assert torch.equal(out[mirrored, ..., 0], x[mirrored, ..., -1])


def _marked(n: int, size: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size)
    x[:, :, row, col] = 1.0
    return x


def _positions(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = out.flatten(1)
    assert bool((flat.sum(1) == 1).all())  # the marked pixel is present exactly once
    pos = flat.argmax(1)
    return pos // out.shape[-1], pos % out.shape[-1]


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_pad_crop_moves_a_marked_pixel_by_at_most_pad(mode):
    x = _marked(2000, 16, 7, 9)
    rows, cols = _positions(pad_random_crop(x, 4, mode, gen(2)))
    dy, dx = rows - 7, cols - 9
    assert int(dy.min()) == -4 and int(dy.max()) == 4  # the whole range is used...
    assert int(dx.min()) == -4 and int(dx.max()) == 4  # ...and never exceeded
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 81


def test_translate_shift_range_and_zero_fill():
    x = _marked(2000, 12, 5, 6)
    rows, cols = _positions(random_translate(x, 2, gen(4)))
    assert set((rows - 5).tolist()) == set(range(-2, 3))
    assert set((cols - 6).tolist()) == set(range(-2, 3))
    ones = random_translate(torch.ones(200, 1, 12, 12), 2, gen(4))
    assert set(ones.unique().tolist()) == {0.0, 1.0}
    # A shift of (dy, dx) leaves |dy| zero rows and |dx| zero columns: at most 2 + 2 of 12.
    assert int((ones == 0).flatten(1).sum(1).max()) <= 12 * 12 - 10 * 10


def test_random_crop_offsets_cover_the_valid_range():
    x = _marked(1000, 16, 8, 8)
    rows, cols = _positions(random_crop(x, 12, gen(6)))
    # Crop origin t in [0, 4] puts the pixel at 8 - t.
    assert set(rows.tolist()) == set(range(4, 9)) and set(cols.tolist()) == set(range(4, 9))


def test_alternate_flip_alternates_per_image_across_epochs(batch):
    x = batch[:, :, :, :].repeat(8, 1, 1, 1)  # 256 images, asymmetric content
    index = torch.arange(1000, 1256)
    aug = build_train_augment(acfg(flip=True, flip_mode="alternate"), seed=7)
    states = []
    for epoch in range(4):
        out = aug(x, gen(99 + epoch), epoch=epoch, index=index)
        mirrored = (out == x.flip(-1)).flatten(1).all(1)
        same = (out == x).flatten(1).all(1)
        assert bool((mirrored ^ same).all())
        states.append(mirrored)
    assert 80 < int(states[0].sum()) < 176  # about half on epoch 0
    for a, b in zip(states, states[1:]):
        assert bool((a != b).all())  # every image changes state every epoch
    # The assignment follows the dataset index, not the position in the batch.
    perm = torch.randperm(256, generator=gen(1))
    out = aug(x[perm], gen(0), epoch=0, index=index[perm])
    assert torch.equal(out, torch.where(states[0][perm].view(-1, 1, 1, 1), x[perm].flip(-1), x[perm]))
    # Another seed gives another assignment; the generator plays no part (loaders reseed it).
    other = alternate_flip(x, 0, index, seed=8)
    assert not torch.equal(other, aug(x, gen(), epoch=0, index=index))
    assert torch.equal(alternate_flip(x, 0, index, seed=7), aug(x, gen(5), epoch=0, index=index))


def test_cutout_zeros_one_square_of_the_given_size():
    x = torch.rand(64, 3, 16, 16, generator=gen(8)) + 1.0  # no zeros anywhere
    out = cutout(x, 5, gen(9))
    zero = out == 0
    assert bool((zero.all(1) == zero.any(1)).all())  # same square in every channel
    mask = zero[:, 0]
    assert bool((mask.flatten(1).sum(1) == 25).all())
    rows = mask.any(2).float()  # (B, H) rows touched
    cols = mask.any(1).float()
    assert bool((rows.sum(1) == 5).all()) and bool((cols.sum(1) == 5).all())  # a 5x5 square
    assert torch.equal(out[~zero], x[~zero])


def test_affine_rotation_keeps_a_round_blob_and_shear_changes_it():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 20).expand(16, 1, 32, 32)
    rotated = random_affine(blob, gen(0), degrees=40)
    assert (rotated - blob).abs().max() < 0.02
    sheared = random_affine(blob, gen(0), shear=0.3)
    assert (sheared - blob).abs().max() > 0.05
    # A 0.5x zoom leaves a zero border a quarter wide and the centre untouched.
    zoomed = random_affine(torch.ones(4, 1, 32, 32), gen(0), scale=[0.5, 0.5])
    assert zoomed[..., :7].abs().max() == 0 and zoomed[..., 25:].abs().max() == 0
    assert torch.allclose(zoomed[..., 9:23, 9:23], torch.ones(1))


def test_rrc_full_area_is_the_identity_resize(batch):
    out = random_resized_crop(batch, 16, gen(0), scale=[1.0, 1.0])
    torch.testing.assert_close(out, batch, atol=1e-5, rtol=1e-5)


def test_rrc_keeps_column_order():
    cols = torch.arange(32.0).expand(64, 1, 32, 32)
    out = random_resized_crop(cols, 8, gen(1))
    assert bool((out.diff(dim=-1) >= -1e-4).all())  # still increasing left to right
    assert out.min() >= 0 and out.max() <= 31


def test_eval_transforms():
    x = torch.rand(4, 3, 32, 32, generator=gen(0))
    assert torch.equal(build_eval_transform(acfg(crop=28))(x), x[..., 2:30, 2:30])
    assert build_eval_transform(acfg(pad=4, flip=True))(x) is x
    wide = torch.rand(2, 3, 48, 64, generator=gen(0))
    out = build_eval_transform(acfg(random_resized_crop=32))(wide)
    assert out.shape == (2, 3, 32, 32)  # shorter side 48 -> 37, centre 32x32
    # Idempotent: an eval view passes through unchanged.
    for cfg in (acfg(crop=28), acfg(random_resized_crop=32), acfg(random_resized_crop=32, crop=28)):
        t = build_eval_transform(cfg)
        view = t(wide)
        assert torch.equal(t(view), view)


@pytest.mark.parametrize(
    ("mode", "cfg", "count", "side"),
    [
        ("none", acfg(), 1, 32),
        ("flip", acfg(crop=28), 2, 28),
        ("flip_translate", acfg(), 6, 32),
        ("multicrop", acfg(crop=28), 10, 28),
        ("multicrop", acfg(pad=4), 10, 32),
        ("multicrop", acfg(random_resized_crop=24), 10, 24),
    ],
)
def test_tta_views(mode, cfg, count, side):
    x = torch.rand(4, 3, 32, 32, generator=gen(0))
    views = tta_views(x, mode, cfg)
    assert len(views) == count
    assert all(v.shape == (4, 3, side, side) for v in views)
    assert torch.equal(views[0], build_eval_transform(cfg)(x))
    if count > 1:
        assert torch.equal(views[1], views[0].flip(-1))
    for i in range(count):  # all distinct
        assert not any(torch.equal(views[i], views[j]) for j in range(i + 1, count))


def test_tta_none_is_the_input_and_multicrop_corners():
    x = torch.rand(2, 3, 32, 32, generator=gen(0))
    assert torch.equal(tta_views(x, "none", acfg())[0], x)
    views = tta_views(x, "multicrop", acfg(crop=28))
    corners = [x[..., :28, :28], x[..., :28, 4:], x[..., 4:, :28], x[..., 4:, 4:]]
    assert all(torch.equal(v, c) for v, c in zip(views[2::2], corners))
    with pytest.raises(ConvzooError, match="multicrop"):
        tta_views(x, "multicrop", acfg())
    with pytest.raises(ValueError, match="full-size"):  # corners need the uncropped batch
        tta_views(x[..., :28, :28], "multicrop", acfg(crop=28))
    # The other modes accept the eval view as well as the full batch.
    cfg = acfg(crop=28)
    full = tta_views(x, "flip_translate", cfg)
    again = tta_views(build_eval_transform(cfg)(x), "flip_translate", cfg)
    assert all(torch.equal(a, b) for a, b in zip(full, again))


@pytest.mark.parametrize(
    ("key", "value"), [("pad_mode", "wrap"), ("flip_mode", "sometimes"), ("tta", "tencrop")]
)
def test_unknown_values_name_key_and_value(key, value):
    from convzoo import config as C

    with pytest.raises(ConvzooError, match=rf"augment\.{key}.*'{value}'"):
        C.from_dict({"augment": {key: value}})  # checked once, where the config is built
    with pytest.raises(ConvzooError, match=rf"augment\.tta.*'{value}'"):
        tta_views(torch.zeros(1, 3, 8, 8), value, acfg())


def test_sizes_larger_than_the_image_are_user_errors(batch):
    with pytest.raises(ConvzooError, match=r"augment\.crop"):
        build_train_augment(acfg(crop=20))(batch, gen())
    with pytest.raises(ConvzooError, match=r"augment\.cutout"):
        cutout(batch, 17, gen())
    with pytest.raises(ConvzooError, match=r"augment\.pad"):
        pad_random_crop(batch, 16, "reflect", gen())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "fn", "size"), OPS, ids=OP_IDS)
def test_cuda_with_cuda_generator_and_cpu_generator(batch, name, fn, size):
    x = batch.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = fn(x, g)
    assert out.device.type == "cuda"
    assert torch.equal(fn(x, torch.Generator(device="cuda").manual_seed(0)), out)
    # A CPU generator gives the same draws whatever device the batch is on.
    torch.testing.assert_close(fn(x, gen(3)).cpu(), fn(batch, gen(3)), atol=1e-5, rtol=1e-5)
