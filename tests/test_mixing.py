"""Mixup / CutMix: images, lambdas, boxes, soft targets and the loss with label smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convzoo.data.transforms.mixing import Mixed, MixUpCutMix, cutmix_boxes
from convzoo.errors import ConvzooError

timm_mixup = pytest.importorskip("timm.data.mixup")
timm_loss = pytest.importorskip("timm.loss")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 16, size: int = 12, classes: int = 10, seed: int = 0):
    g = gen(seed)
    x = torch.rand(b, 3, size, size, generator=g) + 1.0  # no zeros, every image distinct
    y = torch.randint(0, classes, (b,), generator=g)
    return x, y


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("lam", [1.0, 0.7, 0.5, 0.13])
def test_loss_on_mixed_targets_equals_timms_smooth_then_mix(smoothing, lam):
    # timm smooths the one-hots, then mixes them, and uses a plain soft-target CE; convzoo mixes
    # the one-hots and lets nn.CrossEntropyLoss smooth: the same number, per-batch or per-image lam.
    torch.manual_seed(0)
    logits = torch.randn(16, 10) * 3
    _, y = batch()
    lams = [torch.full((16,), lam), torch.rand(16)]
    for lam_t in lams:
        mixed = Mixed(torch.empty(16), y, y.flip(0), lam_t)
        ours = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, mixed.targets(10))
        ref_target = timm_mixup.mixup_target(y, 10, lam_t.view(-1, 1), smoothing)
        ref = timm_loss.SoftTargetCrossEntropy()(logits, ref_target)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.1, 0.4])
def test_unmixed_soft_targets_give_the_integer_label_loss(smoothing):
    logits = torch.randn(32, 7, generator=gen(1)) * 4
    x, y = batch(32, classes=7)
    mixer = MixUpCutMix(prob=0.0)
    mixed = mixer(x, y, gen())
    assert mixed.images is x and bool((mixed.lam == 1).all())
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    torch.testing.assert_close(loss(logits, mixed.targets(7)), loss(logits, y), atol=1e-6, rtol=1e-6)
    assert torch.equal(mixed.dominant(), y) and mixed.mixed_fraction().item() == 0


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_blends_each_image_with_its_reversed_partner(mode):
    x, y = batch()
    for seed in range(5):
        m = MixUpCutMix(mixup_alpha=1.0, cutmix_alpha=0.0, mode=mode)(x, y, gen(seed))
        lam = m.lam.view(-1, 1, 1, 1)
        torch.testing.assert_close(m.images, lam * x + (1 - lam) * x.flip(0), atol=1e-6, rtol=1e-6)
        assert torch.equal(m.partner, y.flip(0))
        distinct = len(set(m.lam.tolist()))
        assert distinct == (1 if mode == "batch" else 16)  # per image in elem mode
        targets = m.targets(10)
        torch.testing.assert_close(targets.sum(1), torch.ones(16))
        assert bool((targets.max(1).values >= 0.5).all())


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("correct_lam", [True, False])
def test_cutmix_pastes_one_clipped_box_and_lam_is_the_pixel_share(mode, correct_lam):
    x, y = batch(16, size=20)
    clipped = 0
    for seed in range(20):
        m = MixUpCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode,
                        correct_lam=correct_lam)(x, y, gen(seed))
        own = (m.images == x).all(1)  # (B, H, W): pixels still the image's own
        other = (m.images == x.flip(0)).all(1)
        assert bool((own | other).all())
        pasted = other & ~own
        # the pasted pixels are one axis-aligned rectangle (rows x columns)
        rows, cols = pasted.any(2), pasted.any(1)
        assert torch.equal(pasted, rows[:, :, None] & cols[:, None, :])
        share = 1 - pasted.flatten(1).float().mean(1)
        if correct_lam:
            torch.testing.assert_close(m.lam, share, atol=1e-6, rtol=0)
        else:
            clipped += int((m.lam - share).abs().max() > 1e-3)
        if mode == "batch":
            assert bool((pasted == pasted[0]).all())  # one box for the whole batch
    if not correct_lam:
        assert clipped > 0  # some boxes were clipped at the border, and lam was left as drawn


def test_cutmix_boxes_follow_timms_rand_bbox():
    rng = np.random.default_rng(0)
    for lam in (0.9, 0.5, 0.2, 0.0):
        lams = np.full(20000, lam)
        top, bottom, left, right = cutmix_boxes(lams, 24, 32, rng)
        cut_h, cut_w = int(24 * np.sqrt(1 - lam)), int(32 * np.sqrt(1 - lam))
        inside = (top > 0) & (bottom < 24) & (left > 0) & (right < 32)
        assert ((bottom - top)[inside] == cut_h).all() and ((right - left)[inside] == cut_w).all()
        assert (top >= 0).all() and (bottom <= 24).all() and (left >= 0).all() and (right <= 32).all()
        np.random.seed(1)
        yl, yh, xl, xh = timm_mixup.rand_bbox((24, 32), lam, count=20000)
        ref_area = ((yh - yl) * (xh - xl)).mean()
        assert abs(((bottom - top) * (right - left)).mean() - ref_area) < 0.01 * 24 * 32


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_lam_is_beta_distributed(alpha):
    x, y = batch(4000, size=2)
    m = MixUpCutMix(mixup_alpha=alpha, cutmix_alpha=0.0, mode="elem")(x, y, gen(2))
    lam = m.lam.double()
    assert abs(lam.mean().item() - 0.5) < 0.02
    assert abs(lam.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_prob_and_switch_prob(mode):
    x, y = batch(400 if mode == "elem" else 2, size=8)
    mixer = MixUpCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6, switch_prob=0.25, mode=mode)
    applied = cut = n = 0
    for seed in range(10 if mode == "elem" else 800):
        m = mixer(x, y, gen(seed))
        blended = ((m.images != x) & (m.images != x.flip(0))).flatten(1).any(1)
        mixed = m.lam < 1
        applied += int(mixed.sum())
        cut += int((mixed & ~blended).sum())
        n += x.shape[0]
    assert abs(applied / n - 0.6) < 0.05
    assert abs(cut / applied - 0.25) < 0.05


def test_reproducible_from_the_generator_and_images_differ_within_a_batch():
    x, y = batch(32)
    mixer = MixUpCutMix(mode="elem")
    a, b, c = mixer(x, y, gen(3)), mixer(x, y, gen(3)), mixer(x, y, gen(4))
    assert torch.equal(a.images, b.images) and torch.equal(a.lam, b.lam)
    assert not torch.equal(a.lam, c.lam)
    assert len(set(a.lam.tolist())) > 20


def test_dominant_label_and_mixed_fraction():
    y = torch.tensor([0, 1, 2, 3])
    m = Mixed(torch.empty(4), y, y.flip(0), torch.tensor([1.0, 0.5, 0.2, 0.9]))
    assert m.dominant().tolist() == [0, 1, 1, 3]
    assert m.mixed_fraction().item() == pytest.approx(0.75)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mixup_alpha=-1.0), "augment.mixup_alpha must be >= 0.0, got -1.0"),
    (dict(mixup_alpha=0.0, cutmix_alpha=0.0), "augment.mixup_alpha and augment.cutmix_alpha are both 0"),
    (dict(prob=1.5), r"augment.mix_prob must be in \[0.0, 1.0\], got 1.5"),
    (dict(switch_prob=-0.1), r"augment.mix_switch_prob must be in \[0.0, 1.0\], got -0.1"),
    (dict(mode="pair"), "unknown augment.mix_mode 'pair' \\(known: batch, elem\\)"),
])
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ConvzooError, match=message):
        MixUpCutMix(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_matches_cpu():
    x, y = batch(32)
    mixer = MixUpCutMix(mode="elem")
    cpu = mixer(x, y, gen(5))
    cuda = mixer(x.cuda(), y.cuda(), gen(5))
    torch.testing.assert_close(cuda.images.cpu(), cpu.images)
    torch.testing.assert_close(cuda.targets(10).cpu(), cpu.targets(10))


def test_targets_are_exact_shares_and_one_hot_for_a_partner_of_the_same_class():
    """lam and 1 - lam where the labels differ; exactly one-hot where they agree, whatever lam
    (what the loop's count of mixed targets, `max < 1`, relies on)."""
    lam = torch.linspace(0, 1, 101)
    labels = torch.zeros(101, dtype=torch.int64)
    same = Mixed(torch.zeros(101, 1, 1, 1), labels, labels.clone(), lam).targets(3)
    assert torch.equal(same, F.one_hot(labels, 3).float())
    other = Mixed(torch.zeros(101, 1, 1, 1), labels, labels + 1, lam).targets(3)
    assert torch.equal(other[:, 0], lam) and torch.equal(other[:, 1], 1 - lam)
