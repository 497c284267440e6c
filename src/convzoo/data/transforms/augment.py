"""Batched augmentation on the batch's own device: no per-image Python loops.

Every function takes a float (B, C, H, W) batch that has already been preprocessed (so 0 is
"the mean", see `convzoo.data.transforms.preprocess`), and draws its randomness from a passed
`torch.Generator`, so a run is reproducible under a seed. Numbers are drawn on the generator's
device and moved to the batch's device: a CUDA generator for a CUDA batch costs no host sync,
and a CPU generator gives the same draws whatever device the batch is on.

Train (`Augment`, three steps the stage runs around preprocessing): the policy and colour
jitter on the 0-255 pixels (`convzoo.data.transforms.policies`), then random_resized_crop ->
crop -> pad -> translate -> affine -> flip -> cutout on the preprocessed batch, then random
erasing and mixup/cutmix (`convzoo.data.transforms.mixing`) with the labels;
docs/augmentation.md. The config chooses the ops once, as the op lists of a `Plan`, which the
stage (`convzoo.data.transforms.stage`) runs. Eval: `build_eval_transform` (deterministic
centre crops / resize) and `tta_views`.

A new op is a function here (or in `policies`) drawing from the passed generator, a method of
`Augment` that calls it with its config keys, and one entry in the list of its step in
`Augment.__init__`, at its place in the order; if it is integer geometry it also needs its
draws in `Augment._windows`, else it makes that step resample (no `Windows` plan).

The integer-geometry ops (crop, zero pad-and-crop, translate, flip, cutout) compose into one
per-image `Windows` plan (`convzoo.data.transforms.cpu_stage`): on a CPU, large images are then
built image by image in one pass (`apply_windows`), which can also read the uint8 source and
normalise on the way. Both paths draw the same numbers in the same order and give exactly the
same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from convzoo.config import AugmentConfig
from convzoo.data.transforms import policies, resample
from convzoo.data.transforms.cpu_stage import Windows, apply_windows, per_image
from convzoo.data.transforms.mixing import MixUpCutMix
from convzoo.errors import ConvzooError

PAD_MODES = ("zeros", "reflect")
FLIP_MODES = ("random", "alternate")
TTA_MODES = ("none", "flip", "flip_translate", "multicrop")

EVAL_CROP_FRACTION = 0.875  # RRC eval: resize the shorter side to size / 0.875, centre crop size
TTA_SHIFT = 1  # flip_translate: pixels of the two diagonal shifts (airbench: reflect pad 1)


# ----------------------------------------------------------------------------- validation


def _unknown(key: str, value: object, known: tuple[str, ...]) -> ConvzooError:
    return ConvzooError(f"unknown augment.{key} '{value}' (known: {', '.join(known)})")


# ----------------------------------------------------------------------------- random draws


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """(n,) float32 uniform in [0, 1) drawn on the generator's device, returned on `device`."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _randint(high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """(n,) int64 uniform in [0, high] (inclusive)."""
    return torch.randint(0, high + 1, (n,), generator=generator, device=generator.device).to(device)


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ----------------------------------------------------------------------------- crops and shifts


def crop_at(x: Tensor, top: Tensor, left: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Per-image crops of `size` at offsets `top`, `left` ((B,) int64) as one gather.

    `unfold` makes a free (B, C, nH, nW, h, w) view of all windows; indexing it with (b, top,
    left) copies just the chosen window of each image into a new contiguous (B, C, h, w) tensor.
    """
    h, w = _size2(size)
    dev = x.device
    windows = x.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, H-h+1, W-w+1, h, w) view
    b = torch.arange(x.shape[0], device=dev)
    return windows[b, :, top.to(dev), left.to(dev)]  # indexed dims first: (B, C, h, w)


def _crop_offsets(
    shape: torch.Size | tuple[int, ...], size: tuple[int, int], generator: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor] | None:
    """(top, left) of a uniformly random `size` window per image of a (B, C, H, W) batch; None
    (and nothing drawn) when the window is the whole image."""
    h, w = size
    B, _, H, W = shape
    if h > H or w > W:
        raise ConvzooError(f"augment.crop={size} is larger than the images ({H}x{W})")
    if (h, w) == (H, W):
        return None
    return _randint(H - h, B, generator, device), _randint(W - w, B, generator, device)


def random_crop(x: Tensor, size: int | tuple[int, int], generator: torch.Generator) -> Tensor:
    """Each image cropped to `size` at a uniformly random position (train-time `augment.crop`)."""
    offsets = _crop_offsets(x.shape, _size2(size), generator, x.device)
    return x if offsets is None else crop_at(x, *offsets, _size2(size))


def center_crop(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """The centre `size` crop of every image (offsets rounded down, like MXNet's centre crop)."""
    h, w = _size2(size)
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise ConvzooError(f"augment.crop={size} is larger than the images ({H}x{W})")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]


def _pad(x: Tensor, pad: int, mode: str) -> Tensor:
    if mode not in PAD_MODES:
        raise _unknown("pad_mode", mode, PAD_MODES)
    if mode == "reflect":
        if pad >= min(x.shape[-2:]):
            raise ConvzooError(
                f"augment.pad={pad} with reflect needs images larger than {pad} px, "
                f"got {tuple(x.shape[-2:])}"
            )
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.pad(x, (pad, pad, pad, pad))


def pad_random_crop(x: Tensor, pad: int, mode: str, generator: torch.Generator) -> Tensor:
    """Pad by `pad` px (zeros | reflect) and randomly crop back to the input size: each image moves
    by an integer shift in [-pad, pad] on each axis (seed B: 32 -> 40 -> random 32)."""
    if pad == 0:
        if mode not in PAD_MODES:
            raise _unknown("pad_mode", mode, PAD_MODES)
        return x
    return random_crop(_pad(x, pad, mode), tuple(x.shape[-2:]), generator)


def _shift_draws(shape: torch.Size | tuple[int, ...], pad: int, generator: torch.Generator,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """(dy, dx) per image: the shift `pad_random_crop` makes, drawn as it draws them."""
    B, C, H, W = shape
    offsets = _crop_offsets((B, C, H + 2 * pad, W + 2 * pad), (H, W), generator, device)
    assert offsets is not None
    return pad - offsets[0], pad - offsets[1]


def random_translate(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by an integer (dy, dx), each uniform in [-max_shift, max_shift], filling
    with 0 (= the mean after preprocessing). Seeds C and E (Keras width/height_shift 0.125 with
    constant fill; we shift by whole pixels rather than interpolating)."""
    return pad_random_crop(x, max_shift, "zeros", generator)


# ----------------------------------------------------------------------------- resampling


def _pixel_to_theta(m: Tensor, H: int, W: int) -> Tensor:
    """(B, 2, 2) map of output -> input pixel offsets from the centre (x right, y down) as the
    (B, 2, 3) normalised `affine_grid` theta (align_corners=False: pixel = norm * size / 2)."""
    theta = torch.zeros(m.shape[0], 2, 3, dtype=m.dtype, device=m.device)
    theta[:, 0, 0] = m[:, 0, 0]
    theta[:, 0, 1] = m[:, 0, 1] * (H / W)
    theta[:, 1, 0] = m[:, 1, 0] * (W / H)
    theta[:, 1, 1] = m[:, 1, 1]
    return theta


def random_affine(
    x: Tensor,
    generator: torch.Generator,
    degrees: float = 0.0,
    shear: float = 0.0,
    scale: tuple[float, float] | list[float] | None = None,
) -> Tensor:
    """Random rotation (uniform in +-`degrees`), shear (factor uniform in +-`shear`, MXNet's
    max_shear_ratio) and zoom (uniform in `scale`) about the centre: one batched
    affine_grid + bilinear grid_sample, zero fill outside the image."""
    if degrees == 0 and shear == 0 and (scale is None or scale[0] == scale[1] == 1):
        return x
    B, _, H, W = x.shape
    dev = x.device
    ang = (_rand(B, generator, dev) * 2 - 1) * math.radians(degrees)
    sh = (_rand(B, generator, dev) * 2 - 1) * shear
    if scale is None:
        zoom = torch.ones(B, device=dev)
    else:
        zoom = scale[0] + _rand(B, generator, dev) * (scale[1] - scale[0])
    # Forward map M = zoom * R(ang) @ [[1, sh], [0, 1]] has det zoom^2, so its inverse is
    # (1 / zoom) * [[s*sh + c, s - c*sh], [-s, c]]: output pixel -> input pixel.
    c, s = torch.cos(ang), torch.sin(ang)
    inv = torch.stack([torch.stack([s * sh + c, s - c * sh], -1), torch.stack([-s, c], -1)], 1)
    inv = inv / zoom.view(-1, 1, 1)
    theta = _pixel_to_theta(inv, H, W).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------- flips and cutout


def flip(x: Tensor) -> Tensor:
    """Horizontal mirror of every image."""
    return x.flip(-1)


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror the images whose (B,) bool `mask` is set."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image with probability `p`."""
    return flip_where(x, _rand(x.shape[0], generator, x.device) < p)


def _alternate_mask(index: Tensor | None, batch: int, epoch: int, seed: int) -> Tensor:
    if index is None or index.shape != (batch,):
        raise ValueError("flip_mode=alternate needs `index`: the (B,) dataset index of each image")
    return (first_flip_bit(index, seed) + epoch) % 2 == 1


def _mix32(h: Tensor) -> Tensor:
    """A 32-bit integer mixer on int64 tensors (values < 2^32, constants < 2^31 so no product
    overflows int64): spreads neighbouring indices to unrelated bits."""
    mask = 0xFFFFFFFF
    h = h ^ (h >> 16)
    h = (h * 0x45D9F3B) & mask
    h = h ^ (h >> 16)
    h = (h * 0x2C1B3C6D) & mask
    return h ^ (h >> 16)


def first_flip_bit(index: Tensor, seed: int) -> Tensor:
    """(B,) int64 in {0, 1}: whether dataset image `index` is flipped on even epochs, a fixed
    pseudo-random function of (index, seed) with about half the images set."""
    seed_mix = _mix32(torch.tensor([seed & 0xFFFFFFFF], dtype=torch.int64)).item()
    h = _mix32((index.to(torch.int64) & 0xFFFFFFFF) ^ seed_mix)
    return (h >> 7) & 1


def alternate_flip(x: Tensor, epoch: int, index: Tensor, seed: int) -> Tensor:
    """airbench's alternating flip: image i is mirrored on epochs where
    (epoch + first_flip_bit[i]) % 2 == 1, so every image is seen flipped every other epoch
    (random half on epoch 0, the other half on epoch 1, ...)."""
    mask = _alternate_mask(index, x.shape[0], epoch, seed)
    return flip_where(x, mask.to(x.device))


def _cutout_draws(shape: torch.Size | tuple[int, ...], size: int, generator: torch.Generator,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """(top, left) of each image's cutout square."""
    B, _, H, W = shape
    if size > H or size > W:
        raise ConvzooError(f"augment.cutout={size} is larger than the images ({H}x{W})")
    return _randint(H - size, B, generator, device), _randint(W - size, B, generator, device)


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Set a random `size` x `size` square (entirely inside the image) of every image to 0."""
    if size == 0:
        return x
    B, _, H, W = x.shape
    dev = x.device
    top, left = _cutout_draws(x.shape, size, generator, dev)
    top, left = top.view(-1, 1), left.view(-1, 1)
    ys = torch.arange(H, device=dev)
    xs = torch.arange(W, device=dev)
    in_y = (ys >= top) & (ys < top + size)  # (B, H)
    in_x = (xs >= left) & (xs < left + size)  # (B, W)
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


# ----------------------------------------------------------------------------- pipelines


Policy = Callable[[Tensor, torch.Generator], Tensor]


def mixes(cfg: AugmentConfig) -> bool:
    """Whether `cfg` mixes images (mixup or cutmix): the targets are then class probabilities."""
    return cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0


def build_policy(cfg: AugmentConfig) -> Policy | None:
    """The per-image policy of ``augment.policy`` (None for ``none``): 0-255 pixels in and out."""
    geo: dict[str, Any] = dict(interpolation=cfg.policy_interpolation, fill=cfg.policy_fill)
    if cfg.policy == "randaugment":
        return policies.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude,
                                    cfg.policy_bins, **geo)
    if cfg.policy == "trivialaugment":
        return policies.TrivialAugmentWide(cfg.policy_bins, **geo)
    if cfg.policy.startswith("autoaugment-"):
        return policies.AutoAugment(cfg.policy.removeprefix("autoaugment-"), **geo)
    return None


# ----------------------------------------------------------------------------- the stage's plan


PixelOp = Callable[[Tensor, torch.Generator], Tensor]  # (x, generator) on the 0-255 pixels
ImageOp = Callable[[Tensor, torch.Generator, int, Any], Tensor]  # (x, generator, epoch, index)
WindowsOp = Callable[[tuple[int, ...], torch.Generator, int, Any], "Windows | None"]
FinishOp = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]  # with labels


@dataclass(frozen=True)
class Plan:
    """What the stage (`convzoo.data.transforms.stage`) does to a batch, as ordered lists of ops
    built once from the config (`Augment.plan`, `EvalTransform.plan`, `build_plan`). Every op
    draws from the batch's one generator, in this order:

    - ``pixels``: on the 0-255 pixels, before preprocessing: to float32 (checking the policy's
      fill), the random-resized crop when it moved here, the policy, colour jitter. Empty: the
      pixels go to preprocessing as they are (uint8).
    - ``geometric``: on the preprocessed batch: rrc, crop, pad, translate, affine, flip, cutout
      in training, or the eval view.
    - ``windows``: the same draws as one per-image `Windows` plan (`cpu_stage`), when the
      geometric ops are integer geometry; None when they resample. It
      may also return None for a batch it does not cover (the resizing eval view), drawing
      nothing.
    - ``finish``: with the labels: random erasing, then mixup/cutmix; (images, targets).

    ``rrc_first``: whether the random-resized crop runs in ``pixels``.
    """

    pixels: tuple[PixelOp, ...] = ()
    geometric: tuple[ImageOp, ...] = ()
    windows: WindowsOp | None = None
    finish: tuple[FinishOp, ...] = ()
    rrc_first: bool = False

    def run_pixels(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for op in self.pixels:
            x = op(x, generator)
        return x

    def run_geometric(self, x: Tensor, generator: torch.Generator, epoch: int = 0,
                      index: Tensor | None = None) -> Tensor:
        """The geometric ops on a float (B, C, H, W) batch: on a CPU, for large images of
        integer geometry, image by image in one pass (`per_image`: the same values, the same
        draws), else batched."""
        if self.windows is not None and per_image(x.shape, x.device):
            plan = self.windows(tuple(x.shape), generator, epoch, index)
            if plan is not None:
                return apply_windows(x, plan)
        for op in self.geometric:
            x = op(x, generator, epoch, index)
        return x

    def run_finish(self, x: Tensor, labels: Tensor, generator: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
        targets = labels
        for op in self.finish:
            x, targets = op(x, targets, generator)
        return x, targets


def _ops(*candidates: tuple[Callable[..., Any], Any]) -> tuple[Callable[..., Any], ...]:
    """The ops whose condition holds, in the order given."""
    return tuple(op for op, on in candidates if on)


class Augment:
    """The train-time augmentation of an `AugmentConfig`, as the steps the stage
    (`convzoo.data.transforms.stage`) runs around preprocessing, in this order
    (docs/augmentation.md):

    1. `pixels`: on the 0-255 pixels, before preprocessing: the random-resized crop when it
       moves here (``rrc=True``: the stage moves it when a policy or jitter is on and the
       preprocessing is pixelwise, so the policy works on the crop, as in torchvision/timm),
       then the policy (``augment.policy``), then colour jitter. Returns float32 0-255, or the
       input itself when none of these is on.
    2. ``__call__``: on the preprocessed batch: rrc (unless it moved), crop, pad, translate,
       affine, flip, cutout, in the order of the config's fields (fill 0 = the mean).
    3. `finish`: random erasing, then mixup/cutmix with the labels: (images, targets), the
       targets the int64 labels, or (B, num_classes) float32 class probabilities when the run
       mixes (`convzoo.data.transforms.mixing`).

    The ops of each step are chosen once, here, from the config: `plan` gives the stage the
    `Plan` (op lists) for its preprocessing, and the three methods above run the same lists
    (``rrc`` picks the list with the crop in step 1 or in step 2).

    Every step draws from the one passed generator, in this order, so a batch is a function of
    the generator's seed (exact resume; both loaders give the same batch). `seed` fixes which
    images start flipped under flip_mode=alternate (pass the run's seed); it is deliberately not
    taken from the generator, which loaders may reseed every epoch. `num_classes` sizes the
    mixed targets (needed only with mixup/cutmix).
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0, num_classes: int = 0,
                 channels: int | None = None) -> None:
        self.cfg = c = cfg
        self.seed = seed
        self.policy = build_policy(cfg)
        if channels is not None:
            self._check_fill(channels)
        jitter = cfg.color_jitter
        self.jitter = policies.ColorJitter(*jitter) if any(jitter) else None
        self.erasing = (policies.RandomErasing(cfg.erase_prob, cfg.erase_area, cfg.erase_aspect,
                                               cfg.erase_mode, cfg.erase_count)
                        if cfg.erase_prob > 0 else None)
        self.mixing = None
        if mixes(cfg):
            if num_classes < 1:
                raise ValueError("mixup/cutmix need num_classes (the targets' width)")
            self.mixing = MixUpCutMix(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob,
                                      cfg.mix_switch_prob, cfg.mix_mode)
        self.num_classes = num_classes

        # The op lists of the three steps, in their order.
        colour = _ops((self._policy, self.policy is not None),
                      (self._jitter, self.jitter is not None))
        rrc = _ops((self._rrc, c.random_resized_crop))
        geometric = _ops((self._crop, c.crop), (self._pad, c.pad),
                         (self._translate, c.translate),
                         (self._affine, c.rotate or c.shear or c.scale is not None),
                         (self._alternate_flip if c.flip_mode == "alternate"
                          else self._random_flip, c.flip),
                         (self._cutout, c.cutout))
        finish = _ops((self._erase, self.erasing is not None),
                      (self._mix, self.mixing is not None))
        # only integer geometry (no resampling, no reflection): step 2 is one `Windows` plan
        resamples = c.rotate or c.shear or c.scale is not None
        integer = not resamples and (c.pad_mode == "zeros" or not c.pad)
        self._plans: dict[bool, Plan] = {}
        for moved in (False, True):  # the random-resized crop in step 1 (moved) or in step 2
            pixels = (*rrc, *colour) if moved else colour
            self._plans[moved] = Plan(
                pixels=(self._to_float, *pixels) if pixels else (),
                geometric=geometric if moved else (*rrc, *geometric),
                windows=self._windows if integer and (moved or not rrc) else None,
                finish=finish, rrc_first=moved)

    def rrc_first(self, pixelwise: bool) -> bool:
        """Whether the random-resized crop moves to step 1: with a policy or jitter on, for a
        pixelwise preprocessing (bilinear resampling commutes with it; a mean image or ZCA is
        fitted at the stored size and needs the stored size)."""
        return bool(self.cfg.random_resized_crop) and bool(self._plans[False].pixels) and pixelwise

    def plan(self, pixelwise: bool) -> Plan:
        """The stage's plan for a preprocessing that is pixelwise or not (`rrc_first`)."""
        return self._plans[self.rrc_first(pixelwise)]

    def pixels(self, x: Tensor, generator: torch.Generator, rrc: bool = False) -> Tensor:
        """Step 1: (B, C, H, W) uint8 or float on the 0-255 scale -> float32 on that scale (the
        input itself when there is nothing to do)."""
        return self._plans[rrc].run_pixels(x, generator)

    def windows(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator,
                epoch: int = 0, index: Tensor | None = None, rrc: bool = True) -> Windows | None:
        """Step 2's draws for a (B, C, H, W) batch as a `Windows` plan (the same numbers
        `__call__` draws, in the same order), or None if it resamples (rrc, affine, reflect).
        ``rrc=False``: the random-resized crop ran in step 1."""
        plan = self._plans[not rrc].windows
        return plan(tuple(shape), generator, epoch, index) if plan is not None else None

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator,
        epoch: int = 0,
        index: Tensor | None = None,
        rrc: bool = True,
    ) -> Tensor:
        """Step 2: (B, C, H, W) float -> augmented float batch (H, W change only with
        rrc/crop). ``rrc=False``: the random-resized crop ran in step 1."""
        return self._plans[not rrc].run_geometric(x, generator, epoch, index)

    def finish(self, x: Tensor, labels: Tensor, generator: torch.Generator
               ) -> tuple[Tensor, Tensor]:
        """Step 3, on the whole batch: random erasing, then mixup/cutmix. Returns (images,
        targets): int64 (B,) labels, or float32 (B, num_classes) probabilities when mixing."""
        return self._plans[False].run_finish(x, labels, generator)

    # The ops. Each reads its part of the config (and `policy`, `jitter`, `erasing`, `mixing`)
    # when it runs.

    def _to_float(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self._check_fill(x.shape[1])
        # NCHW float: the ops loop over channels, slow on channels-last data (C = 3 innermost)
        return x.contiguous().float()

    def _rrc(self, x: Tensor, generator: torch.Generator, *_: Any) -> Tensor:
        c = self.cfg
        return resample.random_resized_crop(x, c.random_resized_crop, generator,
                                            scale=c.rrc_scale, ratio=c.rrc_ratio,
                                            antialias=c.rrc_antialias)

    def _policy(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.policy(x, generator)  # type: ignore[misc]

    def _jitter(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.jitter(x, generator)  # type: ignore[misc]

    def _crop(self, x: Tensor, generator: torch.Generator, epoch: int, index: Any) -> Tensor:
        return random_crop(x, self.cfg.crop, generator)

    def _pad(self, x: Tensor, generator: torch.Generator, epoch: int, index: Any) -> Tensor:
        return pad_random_crop(x, self.cfg.pad, self.cfg.pad_mode, generator)

    def _translate(self, x: Tensor, generator: torch.Generator, epoch: int, index: Any) -> Tensor:
        return random_translate(x, self.cfg.translate, generator)

    def _affine(self, x: Tensor, generator: torch.Generator, epoch: int, index: Any) -> Tensor:
        c = self.cfg
        return random_affine(x, generator, degrees=c.rotate, shear=c.shear, scale=c.scale)

    def _alternate_flip(self, x: Tensor, generator: torch.Generator, epoch: int,
                        index: Any) -> Tensor:
        return alternate_flip(x, epoch, index, self.seed)

    def _random_flip(self, x: Tensor, generator: torch.Generator, epoch: int,
                     index: Any) -> Tensor:
        return random_flip(x, generator)

    def _cutout(self, x: Tensor, generator: torch.Generator, epoch: int, index: Any) -> Tensor:
        return cutout(x, self.cfg.cutout, generator)

    def _windows(self, shape: tuple[int, ...], generator: torch.Generator, epoch: int,
                 index: Tensor | None) -> Windows:
        """The integer geometric ops' draws as one per-image plan, drawn as they draw them."""
        c = self.cfg
        B, _, H, W = shape
        cpu = torch.device("cpu")
        plan = Windows.identity(B, H, W)
        if c.crop:
            size = _size2(c.crop)
            offsets = _crop_offsets(shape, size, generator, cpu)
            plan = plan if offsets is None else plan.crop(*offsets, size)
        for pad in (c.pad, c.translate):
            if pad:
                plan = plan.shift(*_shift_draws((B, 0, *plan.size), pad, generator, cpu))
        if c.flip:
            if c.flip_mode == "alternate":
                flip_mask = _alternate_mask(index, B, epoch, self.seed).cpu()
            else:
                flip_mask = _rand(B, generator, cpu) < 0.5
            plan = replace(plan, flip=flip_mask)
        if c.cutout:
            plan = replace(plan, cut=c.cutout,
                           cut_at=_cutout_draws((B, 0, *plan.size), c.cutout, generator, cpu))
        return plan

    def _erase(self, x: Tensor, targets: Tensor, generator: torch.Generator
               ) -> tuple[Tensor, Tensor]:
        return self.erasing(x, generator), targets  # type: ignore[misc]

    def _mix(self, x: Tensor, labels: Tensor, generator: torch.Generator
             ) -> tuple[Tensor, Tensor]:
        mixed = self.mixing(x, labels, generator)  # type: ignore[misc]
        return mixed.images, mixed.targets(self.num_classes)

    def _check_fill(self, channels: int) -> None:
        fill = self.cfg.policy_fill
        if self.policy is not None and fill is not None and len(fill) not in (1, channels):
            raise ConvzooError(f"augment.policy_fill={fill} has {len(fill)} values but the images "
                               f"have {channels} channel(s): give 1 or {channels}")

    def __repr__(self) -> str:
        return f"Augment({self.cfg})"


def build_train_augment(cfg: AugmentConfig, seed: int = 0, num_classes: int = 0,
                        channels: int | None = None) -> Augment:
    """The train-time augmentation of `cfg` (validated); `seed` (the run's seed) only sets the
    alternate-flip assignment; `num_classes` sizes mixup/cutmix targets; `channels` (of the
    images, when known) checks ``policy_fill`` up front."""
    return Augment(cfg, seed=seed, num_classes=num_classes, channels=channels)


def resize_center_crop(x: Tensor, size: int, fraction: float = EVAL_CROP_FRACTION) -> Tensor:
    """Resize the shorter side to round(size / fraction) (bilinear, antialiased), then take the
    centre size x size crop: the standard ImageNet eval view (224 from 256)."""
    short = int(round(size / fraction))
    x = TF.resize(x, [short], antialias=True)
    return center_crop(x, size)


def _eval_size(cfg: AugmentConfig) -> int:
    """Side of the eval view (0: the input's own size)."""
    return cfg.crop or cfg.random_resized_crop


def _eval_view(x: Tensor, cfg: AugmentConfig) -> Tensor:
    size = _eval_size(cfg)
    if size and tuple(x.shape[-2:]) == (size, size):
        return x  # already the eval view: idempotent, so a transformed batch passes unchanged
    if cfg.random_resized_crop:
        x = resize_center_crop(x, cfg.random_resized_crop)
    if cfg.crop:
        x = center_crop(x, cfg.crop)
    return x


class EvalTransform:
    """The deterministic eval view of a preprocessed batch: resize + centre crop for
    random_resized_crop, centre crop for crop, identity otherwise. A batch already at the eval
    size (crop, else random_resized_crop) is returned unchanged."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._plan = Plan(geometric=(self._view,), windows=self._windows)

    def __call__(self, x: Tensor) -> Tensor:
        return _eval_view(x, self.cfg)

    def plan(self) -> Plan:
        """The stage's plan: the view as its geometric step (and as a `Windows` plan where it
        is a centre crop or the identity)."""
        return self._plan

    def _view(self, x: Tensor, generator: torch.Generator, epoch: int, index: Any) -> Tensor:
        return _eval_view(x, self.cfg)

    def _windows(self, shape: tuple[int, ...], generator: torch.Generator, epoch: int,
                 index: Any) -> Windows | None:
        return self.windows(shape)

    def windows(self, shape: torch.Size | tuple[int, ...]) -> Windows | None:
        """The view as a `Windows` plan (a centre crop or the identity), or None if it resizes."""
        B, _, H, W = shape
        size = _eval_size(self.cfg)
        plan = Windows.identity(B, H, W)
        if not size or (size, size) == (H, W):
            return plan
        if self.cfg.random_resized_crop:
            return None
        h, w = _size2(self.cfg.crop)
        if h > H or w > W:
            raise ConvzooError(f"augment.crop={self.cfg.crop} is larger than the images ({H}x{W})")
        return plan.crop((H - h) // 2, (W - w) // 2, (h, w))

    def __repr__(self) -> str:
        return f"EvalTransform({self.cfg})"


def build_eval_transform(cfg: AugmentConfig) -> EvalTransform:
    """The eval view of `cfg` (validated): see `EvalTransform`."""
    return EvalTransform(cfg)


def _identity_windows(shape: tuple[int, ...], generator: torch.Generator, epoch: int,
                      index: Any) -> Windows:
    return Windows.identity(shape[0], *shape[2:])


def build_plan(augment: Callable[..., Tensor] | None,
               eval_transform: Callable[[Tensor], Tensor] | None, *, pixelwise: bool) -> Plan:
    """The plan a stage runs for its ``augment`` or ``eval_transform`` (at most one): an
    `Augment`'s for a preprocessing that is `pixelwise` or not, an `EvalTransform`'s; a plain
    callable ``augment(x, generator, epoch, index)`` or ``eval_transform(x)`` is the geometric
    step alone; with neither, the identity (which a CPU builds image by image too)."""
    if isinstance(augment, Augment):
        return augment.plan(pixelwise)
    if augment is not None:
        return Plan(geometric=(augment,))
    if isinstance(eval_transform, EvalTransform):
        return eval_transform.plan()
    if eval_transform is not None:
        view = eval_transform
        return Plan(geometric=(lambda x, generator, epoch, index: view(x),))
    return Plan(windows=_identity_windows)


def five_crops(x: Tensor, size: int | tuple[int, int]) -> list[Tensor]:
    """[centre, top-left, top-right, bottom-left, bottom-right] crops of `size`."""
    h, w = _size2(size)
    H, W = x.shape[-2:]
    return [
        center_crop(x, (h, w)),
        x[..., :h, :w],
        x[..., :h, W - w :],
        x[..., H - h :, :w],
        x[..., H - h :, W - w :],
    ]


def _multicrop(x: Tensor, cfg: AugmentConfig) -> list[Tensor]:
    H, W = x.shape[-2:]
    size = _eval_size(cfg)
    if size and tuple(x.shape[-2:]) == (size, size):
        raise ValueError(
            "tta=multicrop takes corner crops from the full-size batch: pass tta_views the "
            f"preprocessed batch before the eval transform, not the {size}x{size} eval view"
        )
    if cfg.random_resized_crop:
        size = cfg.random_resized_crop
        crops = five_crops(TF.resize(x, [int(round(size / EVAL_CROP_FRACTION))], antialias=True), size)
        if cfg.crop:
            crops = [center_crop(v, cfg.crop) for v in crops]
    elif cfg.crop:
        crops = five_crops(x, cfg.crop)
    elif cfg.pad:
        crops = five_crops(_pad(x, cfg.pad, cfg.pad_mode), (H, W))
    elif cfg.translate:
        crops = five_crops(_pad(x, cfg.translate, "zeros"), (H, W))
    else:
        raise ConvzooError(
            "augment.tta=multicrop needs augment.crop, pad, translate or random_resized_crop > 0"
        )
    return [t for v in crops for t in (v, flip(v))]


def tta_views(x: Tensor, mode: str, cfg: AugmentConfig) -> list[Tensor]:
    """Eval views of a preprocessed batch `x` (the input of `build_eval_transform`); the caller
    averages the model's outputs over them. Every view has the eval view's shape and views[0] is
    the plain eval view. none/flip/flip_translate also accept the eval view itself (the eval
    transform is idempotent); multicrop needs the full-size batch (it crops the corners).

    none: [v]; flip: [v, flip v]; flip_translate (airbench): v, flip v, and v shifted by
    +-TTA_SHIFT px diagonally (reflect fill) with their flips (6 views, equal weight);
    multicrop: centre + 4 corner crops (of the crop / random_resized_crop size, or of the
    pad/translate-padded image), each followed by its flip (10 views).
    In every mode with more than one view, views[1] is the mirror of views[0].
    """
    if mode not in TTA_MODES:
        raise _unknown("tta", mode, TTA_MODES)
    if mode == "multicrop":
        return _multicrop(x, cfg)
    v = _eval_view(x, cfg)
    if mode == "none":
        return [v]
    if mode == "flip":
        return [v, flip(v)]
    H, W = v.shape[-2:]
    s = TTA_SHIFT
    padded = _pad(v, s, "reflect")
    shifted = [padded[..., : H, : W], padded[..., 2 * s :, 2 * s :]]
    return [v, flip(v)] + [t for u in shifted for t in (u, flip(u))]
