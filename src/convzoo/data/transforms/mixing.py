"""Mixup and CutMix on a batch, with the soft targets they imply (timm's `Mixup` semantics).

Each image i is mixed with its partner B-1-i (the batch reversed: batches are already in random
order, and reversing needs no extra draw), as timm does:

- mixup:  x_i <- lam * x_i + (1 - lam) * x_{B-1-i}
- cutmix: a box of area ~(1 - lam) * H * W, centred uniformly in the image and clipped to it, is
  pasted from the partner; with ``correct_lam`` lam becomes 1 - (clipped box area) / (H * W), the
  image's true share of its own pixels.

The target of image i is ``lam * onehot(y_i) + (1 - lam) * onehot(y_{B-1-i})`` (`Mixed.targets`).
Label smoothing needs no code here: `torch.nn.CrossEntropyLoss(label_smoothing=e)` given those
probabilities as the target uses ``(1 - e) * target + e / K``, which equals mixing the smoothed
one-hots (smoothing is affine and the mixing weights sum to 1), i.e. timm's
``mixup_target(..., smoothing=e)`` with its `SoftTargetCrossEntropy`; with no mixing it is the
same loss as for integer labels. So the loop keeps its one loss and passes ``Mixed.targets``
(tested in tests/test_mixing.py).

Train accuracy under mixing: `Mixed.dominant` is the label of the image with the larger share of
each mixed image (its own on a tie); the loop should count top-1 against it and say so in the
metrics (``train_mixed``: the fraction of images mixed that epoch), since it is not the accuracy
on clean images.

Modes (``mode``): ``batch``: one draw per batch (apply with ``prob``, cutmix with
``switch_prob`` else mixup, one lam, one box); ``elem``: every image draws its own (apply, switch,
lam, box), applied with masks, no per-image loop. timm's ``pair`` mode is not offered.

Randomness: lam ~ Beta(alpha, alpha) is drawn by NumPy (torch has no Beta sampler that takes a
`torch.Generator`) from a NumPy generator seeded with one number drawn from the passed
`torch.Generator`, so a batch is reproducible from the generator's state like every other
augmentation. Where this sits in the stage: last, after every image-level op and random erasing,
on the normalised batch, with the labels (see docs/augmentation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from convzoo.errors import ConvzooError

MIX_MODES = ("batch", "elem")


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: `images` (B, C, H, W); image i holds a share `lam[i]` of its own label
    `labels[i]` and 1 - lam[i] of `partner[i]` (= labels[B-1-i])."""

    images: Tensor
    labels: Tensor  # (B,) int64
    partner: Tensor  # (B,) int64
    lam: Tensor  # (B,) float32 on the images' device; 1 = not mixed

    def targets(self, num_classes: int) -> Tensor:
        """(B, num_classes) float32 class probabilities: lam * onehot(labels) + (1 - lam) *
        onehot(partner). Pass them to `nn.CrossEntropyLoss(label_smoothing=...)`. An image
        mixed with one of its own class gets exactly its one-hot (lam + (1 - lam) rounds to 1
        in float32), so a target below 1 everywhere means two labels (tested)."""
        lam = self.lam.view(-1, 1)
        own = F.one_hot(self.labels, num_classes).float()
        other = F.one_hot(self.partner, num_classes).float()
        return own * lam + other * (1 - lam)

    def dominant(self) -> Tensor:
        """(B,) int64: the label with the larger share of each image (its own on a tie)."""
        return torch.where(self.lam >= 0.5, self.labels, self.partner)

    def mixed_fraction(self) -> Tensor:
        """() float32: the fraction of images with anything of another image in them."""
        return (self.lam < 1).float().mean()


def _check(key: str, value: float, lo: float, hi: float | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        valid = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConvzooError(f"augment.{key} must be {valid}, got {value}")


def box_masks(top: Tensor, bottom: Tensor, left: Tensor, right: Tensor, height: int,
              width: int) -> Tensor:
    """(B, 1, H, W) bool: rows [top, bottom) x columns [left, right) of each image ((B,) int64)."""
    dev = top.device
    rows = torch.arange(height, device=dev)
    cols = torch.arange(width, device=dev)
    in_y = (rows >= top.view(-1, 1)) & (rows < bottom.view(-1, 1))  # (B, H)
    in_x = (cols >= left.view(-1, 1)) & (cols < right.view(-1, 1))  # (B, W)
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)


def cutmix_boxes(lam: np.ndarray, height: int, width: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """timm's `rand_bbox` for each lam: a box of int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam))
    centred at a uniform pixel (cy in [0, H), cx in [0, W)) and clipped to the image. Returns
    (top, bottom, left, right) int64 arrays."""
    cut = np.sqrt(1.0 - lam)
    cut_h = (height * cut).astype(np.int64)
    cut_w = (width * cut).astype(np.int64)
    cy = rng.integers(0, height, size=lam.shape)
    cx = rng.integers(0, width, size=lam.shape)
    top = np.clip(cy - cut_h // 2, 0, height)
    bottom = np.clip(cy + (cut_h + 1) // 2, 0, height)
    left = np.clip(cx - cut_w // 2, 0, width)
    right = np.clip(cx + (cut_w + 1) // 2, 0, width)
    return top, bottom, left, right


class MixUpCutMix:
    """Mixup and/or CutMix with soft targets; see the module docstring.

    mixup_alpha, cutmix_alpha: Beta(alpha, alpha) for lam; 0 turns that kind off (one must be on).
    prob: probability that a batch (``batch`` mode) or an image (``elem``) is mixed at all.
    switch_prob: with both kinds on, the probability of cutmix rather than mixup.
    correct_lam: set cutmix's lam to the true pixel share after clipping the box (timm default).
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
    ) -> None:
        _check("mixup_alpha", mixup_alpha, 0.0)
        _check("cutmix_alpha", cutmix_alpha, 0.0)
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConvzooError("augment.mixup_alpha and augment.cutmix_alpha are both 0: "
                               "set one > 0 to mix, or leave mixing off")
        _check("mix_prob", prob, 0.0, 1.0)
        _check("mix_switch_prob", switch_prob, 0.0, 1.0)
        if mode not in MIX_MODES:
            raise ConvzooError(f"unknown augment.mix_mode '{mode}' (known: {', '.join(MIX_MODES)})")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.mode = mode
        self.correct_lam = correct_lam

    def _draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(lam, use_cutmix) for n draws, timm's order of decisions: apply?, cutmix?, lam."""
        apply = rng.random(n) < self.prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cut = rng.random(n) < self.switch_prob
        else:
            use_cut = np.full(n, self.cutmix_alpha > 0)
        alpha = np.where(use_cut, self.cutmix_alpha, self.mixup_alpha)
        lam = rng.beta(np.maximum(alpha, 1e-8), np.maximum(alpha, 1e-8))  # alpha 0 never used
        lam = np.where(apply, lam, 1.0)
        return lam, use_cut & apply

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Mixed:
        """Mix a float (B, C, H, W) batch with int64 (B,) labels; `generator` seeds the draws."""
        B, _, H, W = x.shape
        dev = x.device
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        lam, use_cut = self._draw(1 if self.mode == "batch" else B, rng)
        if self.mode == "batch":
            lam, use_cut = np.repeat(lam, B), np.repeat(use_cut, B)
        partner = y.flip(0)
        if (lam == 1).all():
            return Mixed(x, y, partner, torch.ones(B, device=dev))
        if use_cut.any():
            top, bottom, left, right = cutmix_boxes(np.where(use_cut, lam, 1.0), H, W, rng)
            if self.mode == "batch":  # one box: copy the partner's pixels into it
                top, bottom, left, right = (np.repeat(v[:1], B) for v in (top, bottom, left, right))
            if self.correct_lam:
                area = (bottom - top) * (right - left) / (H * W)
                lam = np.where(use_cut, 1.0 - area, lam)
        lam_t = torch.as_tensor(lam, dtype=torch.float32).to(dev)
        flipped = x.flip(0)
        if not use_cut.any():  # mixup only
            w = lam_t.to(x.dtype).view(-1, 1, 1, 1)
            return Mixed(torch.lerp(flipped, x, w), y, partner, lam_t)
        if self.mode == "batch":  # cutmix of the whole batch with one box
            t, b, lf, r = int(top[0]), int(bottom[0]), int(left[0]), int(right[0])
            out = x.clone()
            out[:, :, t:b, lf:r] = flipped[:, :, t:b, lf:r]
            return Mixed(out, y, partner, lam_t)
        # elem: mixup images blend (cutmix and unmixed images keep weight 1), then cutmix images
        # take their box from the partner (the others have empty boxes).
        w = torch.as_tensor(np.where(use_cut, 1.0, lam), dtype=x.dtype).to(dev).view(-1, 1, 1, 1)
        out = torch.lerp(flipped, x, w)
        boxes = (torch.as_tensor(v).to(dev) for v in (top, bottom, left, right))
        out = torch.where(box_masks(*boxes, H, W), flipped, out)
        return Mixed(out, y, partner, lam_t)

    def __repr__(self) -> str:
        return (f"MixUpCutMix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"prob={self.prob}, switch_prob={self.switch_prob}, mode={self.mode!r}, "
                f"correct_lam={self.correct_lam})")
