"""Separable random-resized crop: the former grid_sample RRC's numbers, torchvision's
resized_crop, and the training stage built on it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from convzoo.data.transforms.resample import random_resized_crop, resize_boxes, rrc_boxes


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, h: int, w: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Normalised-like images (N(0, 2)) with some structure, so interpolation errors show."""
    x = torch.randn(b, 3, h, w, generator=gen(seed), dtype=torch.float64) * 2
    return x.cumsum(-1).div(w**0.5).to(dtype)


def affine_grid_rrc(x, size, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """The reference: convzoo's RRC before the separable resampler (one affine_grid +
    grid_sample), kept here so the new one is checked against the numbers it replaced."""
    B, _, H, W = x.shape

    def rand(n):
        return torch.rand(n, generator=generator)

    area = (scale[0] + rand(B * attempts) * (scale[1] - scale[0])) * (H * W)
    r = torch.exp(math.log(ratio[0]) + rand(B * attempts) * math.log(ratio[1] / ratio[0]))
    w = torch.round(torch.sqrt(area * r)).view(B, attempts)
    h = torch.round(torch.sqrt(area / r)).view(B, attempts)
    ok = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fw, fh, in_ratio = float(W), float(H), W / H
    if in_ratio < ratio[0]:
        fh = float(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        fw = float(round(H * ratio[1]))
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    top = torch.where(any_ok, torch.floor(rand(B) * (H - h + 1)), torch.floor((H - h) / 2))
    left = torch.where(any_ok, torch.floor(rand(B) * (W - w + 1)), torch.floor((W - w) / 2))
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = w / W, h / H
    theta[:, 0, 2], theta[:, 1, 2] = (2 * left + w) / W - 1, (2 * top + h) / H - 1
    grid = F.affine_grid(theta.to(x.dtype), [B, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_the_separable_rrc_draws_as_the_affine_grid_one_did():
    x = images(12, 48, 40)
    g1, g2 = gen(4), gen(4)
    random_resized_crop(x, 24, g1)
    affine_grid_rrc(x, 24, g2)
    assert torch.equal(g1.get_state(), g2.get_state())  # drew exactly as many numbers


@pytest.mark.parametrize(("h", "w", "size"), [(32, 32, 32), (32, 32, 24), (256, 256, 224),
                                              (64, 128, 48), (16, 16, 40)])
def test_same_boxes_and_values_as_the_grid_sample_rrc_in_float64(h, w, size):
    # Power-of-two sides: the old RRC's float32 theta (w / W, ...) is exact there, so in float64
    # both implementations compute the same sampling positions and must agree to rounding.
    x = images(24, h, w, torch.float64)
    for scale in ([0.08, 1.0], [0.5, 0.5], [1.0, 1.0]):
        old = affine_grid_rrc(x, size, gen(3), scale=scale)
        new = random_resized_crop(x, size, gen(3), scale=scale)
        assert new.shape == old.shape == (24, 3, size, size)
        torch.testing.assert_close(new, old, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("h", "w", "size"), [(32, 32, 32), (40, 40, 24), (256, 256, 224),
                                              (50, 70, 32)])
def test_float32_difference_is_the_old_grids_coordinate_rounding(h, w, size):
    # The old RRC computes pixel positions in float32 (affine_grid, then grid_sample's
    # unnormalise), off by up to ~size * 2^-23 px; the new one rounds float64 positions once.
    # The values may differ by that much times the steepest step between neighbouring pixels.
    x = images(32, h, w)
    old = affine_grid_rrc(x, size, gen(1))
    new = random_resized_crop(x, size, gen(1))
    steep = max(x.diff(dim=-1).abs().max().item(), x.diff(dim=-2).abs().max().item())
    bound = 4 * max(h, w) * 2.0**-23 * steep + 1e-6
    assert (new - old).abs().max().item() <= bound
    if (h, w, size) == (32, 32, 32):
        assert (new - old).abs().max().item() <= 1e-6  # CIFAR size: what the issue measured


def test_boxes_are_the_old_draws_and_torchvisions_ranges():
    shape = (4000, 3, 60, 80)
    top, left, h, w = rrc_boxes(shape, gen(7))
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + h <= 60).all() and (left + w <= 80).all() and (h >= 1).all())
    area = h * w / (60 * 80)
    ratio = w / h
    assert area.min() > 0.07 and area.max() <= 1.0
    # rounding to whole pixels moves the ratio a little beyond [3/4, 4/3] for small boxes
    assert ratio[area > 0.2].min() > 0.72 and ratio[area > 0.2].max() < 1.39
    # The same distribution as torchvision's RandomResizedCrop (4000 draws each; the mean area is
    # below 0.54 because large boxes of extreme ratio do not fit and are redrawn).
    torch.manual_seed(0)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.empty(3, 60, 80), [0.08, 1.0],
                                                        [3 / 4, 4 / 3]) for _ in range(4000)],
                       dtype=torch.float32)
    ref_area = ref[:, 2] * ref[:, 3] / (60 * 80)
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(ratio.log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.02


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(("box", "size"), [
    ((3, 5, 40, 30), (20, 20)),   # downscale
    ((0, 0, 50, 60), (17, 23)),   # whole image, non-square output
    ((10, 7, 12, 9), (24, 24)),   # upscale
    ((5, 5, 30, 30), (30, 30)),   # same size: a plain crop
    ((2, 9, 45, 13), (11, 26)),   # down in one axis, up in the other
])
def test_matches_torchvision_resized_crop_on_single_images(box, size, antialias):
    x = images(1, 50, 60)
    top, left, h, w = box
    ref = TF.resized_crop(x[0], top, left, h, w, list(size), antialias=antialias)
    t = [torch.tensor([v]) for v in box]
    out = resize_boxes(x, *t, size, antialias=antialias)[0]
    assert out.shape == ref.shape
    if antialias:
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
        return
    # Without antialiasing both sample the box at the output pixel centres; torchvision crops
    # first and so clamps to the box where an upscaled box's first/last centres fall outside it,
    # convzoo samples the image there (the old RRC's border rule). Compare where both agree.
    rows = top + (torch.arange(size[0]) + 0.5) * h / size[0] - 0.5
    cols = left + (torch.arange(size[1]) + 0.5) * w / size[1] - 0.5
    inside = ((rows >= top) & (rows <= top + h - 1))[:, None] & ((cols >= left) & (cols <= left + w - 1))
    # (atol: torchvision computes source positions in float32, ~1e-6 px off)
    torch.testing.assert_close(out[:, inside], ref[:, inside], atol=1e-4, rtol=0)
    if h < size[0] or w < size[1]:
        assert not bool(inside.all())  # the edge case really was exercised


def test_batch_of_different_boxes_equals_per_image_torchvision():
    x = images(16, 64, 48)
    top, left, h, w = rrc_boxes(x.shape, gen(2), scale=(0.3, 1.0))
    out = resize_boxes(x, top, left, h, w, 32, antialias=True)
    for b in range(16):
        ref = TF.resized_crop(x[b], int(top[b]), int(left[b]), int(h[b]), int(w[b]), [32, 32],
                              antialias=True)
        torch.testing.assert_close(out[b], ref, atol=2e-5, rtol=0)
    assert len({(int(a), int(b)) for a, b in zip(h, w)}) > 10  # images drew different boxes


@pytest.mark.parametrize("antialias", [False, True])
def test_layouts_dtypes_and_seeding(antialias):
    x = images(8, 40, 40)
    ref = random_resized_crop(x, 24, gen(5), antialias=antialias)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(random_resized_crop(cl, 24, gen(5), antialias=antialias), ref)
    strided = torch.zeros(8, 3, 40, 80)
    strided[..., ::2] = x
    torch.testing.assert_close(random_resized_crop(strided[..., ::2], 24, gen(5),
                                                   antialias=antialias), ref)
    assert torch.equal(random_resized_crop(x, 24, gen(5), antialias=antialias), ref)
    assert not torch.equal(random_resized_crop(x, 24, gen(6), antialias=antialias), ref)
    double = random_resized_crop(x.double(), 24, gen(5), antialias=antialias)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), ref, atol=1e-4, rtol=0)  # float32 grid rounding


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("antialias", [False, True])
def test_cuda_matches_cpu_with_a_cpu_generator(antialias):
    x = images(16, 64, 64)
    cpu = random_resized_crop(x, 32, gen(4), antialias=antialias)
    cuda = random_resized_crop(x.cuda(), 32, gen(4), antialias=antialias)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-5, rtol=0)
