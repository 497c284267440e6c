"""Per-image-random augmentation policies, batched: RandAugment, TrivialAugmentWide, AutoAugment,
colour jitter and random erasing.

torchvision's `transforms.v2` policies draw one op and one magnitude per call, so on a batch every
image gets the same; kornia's RandAugment picks one op per batch. Here every image draws its own
ops, magnitudes and signs, and the batch is processed op by op: the images that drew op k are
gathered (`index_select`), transformed together with their own magnitudes, and written back
(`index_copy_`). Each op is therefore one batched call per round, whatever the batch size.
Draws come from a passed `torch.Generator` (on its own device; a CUDA generator costs one host
sync per round, to group the images), so a batch is reproducible from the generator's state.

Semantics are torchvision's (`transforms.v2.functional` and the policies' augmentation spaces,
op lists, magnitude bins and probabilities), checked op by op against it in
tests/test_policies.py. RandAugment's `magnitude` counts bins of ``num_magnitude_bins`` (31):
torchvision's convention. timm's "rand-m9" scales magnitudes by M / 10 instead; the same
strengths are ``magnitude=9, num_magnitude_bins=11`` here (timm's op list also differs a little).

Pixel scale and where the ops sit in the data stage
---------------------------------------------------
Colour ops need raw pixels: every policy op and `ColorJitter` works on float (B, C, H, W) on the
0-255 scale (uint8 is accepted and converted) and returns float32 on that scale, clamped to
[0, 255] but not rounded between ops (torchvision rounds after every op on uint8 input; it does
not on float input, which is what these ops match). Geometric ops (rotate, shear, translate) fill
with `fill` on that scale (default 0 = black, torchvision's default; timm fills with the mean
pixel, e.g. ``fill=(124, 116, 104)``). So in the stage they run *before* preprocessing:

    uint8 (B, C, H, W) -> float -> [policy | colour jitter] -> preprocess (normalise)
        -> existing geometric augment (rrc, crop, pad, translate, affine, flip, cutout)
        -> RandomErasing -> MixUpCutMix (with the labels) -> model

`RandomErasing` is scale-free: it runs on the normalised batch, where its zero fill is the mean
pixel and its normal fills have the data's standard deviation (timm applies it after Normalize).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from convzoo.data.transforms.mixing import box_masks
from convzoo.errors import ConvzooError

MAX = 255.0  # the pixel scale these ops work on
INTERPOLATIONS = ("nearest", "bilinear")
ERASE_MODES = ("const", "rand", "pixel")
Fill = float | Sequence[float] | None


# ----------------------------------------------------------------------------- helpers


def as_pixels(x: Tensor) -> Tensor:
    """A (B, C, H, W) batch as float on the 0-255 scale (uint8 is converted, float kept)."""
    return x.float() if not x.is_floating_point() else x


def _per_image(value: float | Tensor, x: Tensor) -> Tensor:
    """A scalar or (B,) parameter as (B, 1, 1, 1) in x's dtype and device."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return v.expand(x.shape[0]).reshape(-1, 1, 1, 1)


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 drawn on the generator's device, returned on `device`."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> Tensor:
    """Uniform integers in [0, high) (int64), drawn on the generator's device."""
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 weights of R, G, B (torchvision's grayscale)


def _grayscale(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of an RGB or grey batch."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * x + (1 - factor) * other (other broadcast to x), clamped to the pixel range:
    torchvision's `_blend`, as one `lerp` pass and an in-place clamp."""
    return torch.lerp(other.expand_as(x), x, factor).clamp_(0, MAX)


# ----------------------------------------------------------------------------- colour ops
# x: float (B, C, H, W) on the 0-255 scale; parameters: a float or one value per image (B,).


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """x * factor, clamped (factor 0 = black, 1 = unchanged)."""
    return (x * _per_image(factor, x)).clamp_(0, MAX)


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend with the image's mean luma (factor 0 = flat grey, 1 = unchanged). The mean luma is
    the luma of the channel means (it is linear), so no grey image is built."""
    means = x.mean(dim=(2, 3))  # (B, C)
    if x.shape[1] == 3:
        means = means @ torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    return _blend(x, means.reshape(-1, 1, 1, 1), _per_image(factor, x))


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend with the luma image (factor 0 = grey, 1 = unchanged); grey images unchanged."""
    if x.shape[1] == 1:
        return x
    return _blend(x, _grayscale(x), _per_image(factor, x))


def adjust_sharpness(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend the interior with a 3x3 smoothing ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) of it
    (factor 0 = smoothed, 1 = unchanged, 2 = sharpened); the one-pixel border is kept.

    The smoothing is (3x3 box sum + 4 * centre) / 13 with the box sum as two separable
    three-term sums of shifted views: measured ~8x faster on a CPU than the depthwise conv2d
    torchvision uses (which is slow for float batches there), same values up to rounding. The
    blend ``f * inner + (1 - f) * smooth`` is one `addcmul` written straight into the output's
    interior (fewer full-size temporaries: 224 px batches spent most of their time in them)."""
    H, W = x.shape[-2:]
    if H <= 2 or W <= 2:
        return x
    rows = x[..., :-2] + x[..., 1:-1]
    rows += x[..., 2:]  # (B, C, H, W - 2): sums over 3 columns
    box = rows[..., :-2, :] + rows[..., 1:-1, :]
    box += rows[..., 2:, :]  # (B, C, H - 2, W - 2)
    del rows
    inner = x[..., 1:-1, 1:-1]
    f = _per_image(factor, x)
    smooth = box.add_(inner, alpha=4.0).mul_((1 - f) / 13.0)  # (1 - f) * smoothed
    out = torch.empty_like(x)
    out[..., 0, :], out[..., -1, :] = x[..., 0, :], x[..., -1, :]  # the border as it was
    out[..., 1:-1, 0], out[..., 1:-1, -1] = x[..., 1:-1, 0], x[..., 1:-1, -1]
    torch.addcmul(smooth, inner, f, out=out[..., 1:-1, 1:-1])
    out[..., 1:-1, 1:-1].clamp_(0, MAX)
    return out


def adjust_hue(x: Tensor, shift: float | Tensor) -> Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]) in HSV, PIL's and torchvision's hue;
    grey images unchanged.

    Written without the HSV round trip: a hue rotation keeps each pixel's max and min channel,
    so the result is min + (max - min) * f_c(h') per channel, with the piecewise-linear
    hue-to-channel functions f_c; that is the same value as HSV -> RGB with v = max,
    s = (max - min) / max, at a fraction of the passes over the batch."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)  # (B, H, W) views
    maxc = x.amax(1)
    minc = x.amin(1)
    span = maxc - minc
    safe = torch.where(span > 0, span, torch.ones_like(span))  # grey pixels: any hue, span 0
    # hue in sextants [0, 6): (g - b) / span where max is r, 2 + (b - r) / span where it is g,
    # 4 + (r - g) / span otherwise (torchvision's order of precedence)
    h6 = torch.where(maxc == r, (g - b) / safe,
                     torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h6 = (h6 + 6.0 * _per_image(shift, x).view(-1, 1, 1)).remainder_(6.0)
    out = torch.empty_like(x)
    # f_r = clamp(|h - 3| - 1), f_g = clamp(2 - |h - 2|), f_b = clamp(2 - |h - 4|), in [0, 1]
    for c, (center, sign) in enumerate(((3.0, 1.0), (2.0, -1.0), (4.0, -1.0))):
        f = (h6 - center).abs_()
        f = f.sub_(1.0) if sign > 0 else f.neg_().add_(2.0)
        torch.addcmul(minc, span, f.clamp_(0.0, 1.0), out=out[:, c])
    return out


def posterize(x: Tensor, bits: int | Tensor) -> Tensor:
    """Keep the top `bits` (0-8) bits of each pixel: floor(x / 2^(8 - bits)) * 2^(8 - bits),
    torchvision's uint8 semantics (its float path rounds differently); 8 bits = unchanged."""
    bits = _per_image(bits, x)
    # 8 bits must leave float pixels as they are: a step of 2^-24 does (x * 2^24 is an integer
    # for any float32 x < 256), so one formula covers every image without a `where` pass.
    step = torch.where(bits >= 8, torch.full_like(bits, 2.0**-24), torch.exp2(8 - bits))
    return torch.div(x, step).floor_().mul_(step)


def solarize(x: Tensor, threshold: float | Tensor) -> Tensor:
    """Invert the pixels >= `threshold` (0-255 scale). One output buffer, written twice (the
    inverted batch, then the kept pixels where below the threshold): two full-size temporaries
    fewer than ``where(x >= t, 255 - x, x)``."""
    out = torch.sub(MAX, x)
    return torch.where(x < _per_image(threshold, x), x, out, out=out)


def invert(x: Tensor) -> Tensor:
    return MAX - x


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each image to the full range (constant channels unchanged)."""
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))  # (B, C); measured 5x faster than aminmax
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), MAX / (hi - lo))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    scale, shift = scale[..., None, None], (-lo * scale)[..., None, None]
    return torch.addcmul(shift, x, scale).clamp_(0, MAX)  # (x - lo) * scale in one pass


# Images per `TF.equalize` call: its per-image histograms and lookups stay in cache (the whole
# 224 px batch in one call measured 1.6x slower than image by image on a CPU).
EQUALIZE_CHUNK = 4


def equalize(x: Tensor) -> Tensor:
    """Histogram-equalise each channel of each image (PIL's lookup table): torchvision's batched
    `equalize` on the pixels rounded to uint8 (half up), in chunks of `EQUALIZE_CHUNK` images,
    returned as float."""
    pixels = x.clamp(0, MAX).add_(0.5).to(torch.uint8)  # round half up, then truncate
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], EQUALIZE_CHUNK):
        out[i:i + EQUALIZE_CHUNK] = TF.equalize(pixels[i:i + EQUALIZE_CHUNK])
    return out


# ----------------------------------------------------------------------------- geometric ops


def affine(x: Tensor, inverse: Tensor, interpolation: str = "nearest", fill: Fill = None) -> Tensor:
    """Resample each image through its own (B, 2, 3) inverse affine map, output pixel -> source
    pixel in torchvision's coordinates (origin at the image centre, pixel centres at k - (n-1)/2),
    as `transforms.v2.functional.affine` does, with `fill` (0-255 scale; None = 0) outside.

    One batched grid (torchvision's construction) and one `grid_sample` for the whole batch."""
    if interpolation not in INTERPOLATIONS:
        raise ConvzooError(f"unknown augment.policy_interpolation '{interpolation}' "
                           f"(known: {', '.join(INTERPOLATIONS)})")
    B, C, H, W = x.shape
    dev = x.device
    # torchvision's `_affine_grid`, batched: pixel-centred output coordinates (x, y, 1) times the
    # map rescaled to normalised source coordinates, in float32 as torchvision computes them.
    base = torch.empty(1, H, W, 3, dtype=torch.float32, device=dev)
    base[..., 0].copy_(torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, W, device=dev))
    base[..., 1].copy_(torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, H, device=dev).view(H, 1))
    base[..., 2].fill_(1)
    half = torch.tensor([0.5 * W, 0.5 * H], dtype=torch.float32, device=dev)
    theta = inverse.to(device=dev, dtype=torch.float32).transpose(1, 2) / half  # (B, 3, 2)
    grid = base.view(1, H * W, 3).expand(B, -1, -1).bmm(theta).view(B, H, W, 2)
    grid = grid.to(x.dtype)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if fill is None:
        return out
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode=interpolation,
                           padding_mode="zeros", align_corners=False)
    value = torch.as_tensor(fill, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
    if interpolation == "nearest":
        return torch.where(inside < 0.5, value.expand_as(out), out)
    return (out - value) * inside + value  # torchvision's blend of the fill at the edges


def affine_matrix(x: Tensor, angle: float | Tensor = 0.0, translate: tuple = (0.0, 0.0),
                  shear: tuple = (0.0, 0.0), center: tuple[float, float] | None = None) -> Tensor:
    """(B, 2, 3) float64 inverse maps for `affine`, per image: torchvision's
    `_get_inverse_affine_matrix` (rotation `angle` degrees clockwise in its affine convention,
    `translate` px, `shear` degrees (x, y), about `center` = (x, y) px from the top-left corner,
    default the image centre), term by term in float64. The float32 map may differ from
    torchvision's by an ulp (its trigonometry is Python's `math`), which can move a nearest
    sample only where the source position is an exact half-pixel tie."""
    B, _, H, W = x.shape

    def per(v: float | Tensor) -> Tensor:
        return torch.as_tensor(v, dtype=torch.float64, device=x.device).expand(B)

    cx, cy = (0.0, 0.0) if center is None else (center[0] - 0.5 * W, center[1] - 0.5 * H)
    rot = torch.deg2rad(per(angle))
    sx, sy = torch.deg2rad(per(shear[0])), torch.deg2rad(per(shear[1]))
    tx, ty = per(translate[0]), per(translate[1])
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a  # the inverse of [[a, b], [c, d]] (determinant 1)
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([torch.stack([m0, m1, m2], -1), torch.stack([m3, m4, m5], -1)], 1)


def rotate(x: Tensor, degrees: float | Tensor, interpolation: str = "nearest",
           fill: Fill = None) -> Tensor:
    """Rotate each image counter-clockwise by `degrees` about its centre, keeping its size."""
    angle = -torch.as_tensor(degrees, dtype=torch.float64, device=x.device)
    return affine(x, affine_matrix(x, angle=angle), interpolation, fill)


def _shear_degrees(factor: float | Tensor, x: Tensor) -> Tensor:
    return torch.rad2deg(torch.atan(torch.as_tensor(factor, dtype=torch.float64, device=x.device)))


def shear_x(x: Tensor, factor: float | Tensor, interpolation: str = "nearest",
            fill: Fill = None) -> Tensor:
    """Horizontal shear about the top-left corner: source x = x + factor * y (AutoAugment's
    ShearX; torchvision's affine with shear=degrees(atan(factor)), center=[0, 0])."""
    m = affine_matrix(x, shear=(_shear_degrees(factor, x), 0.0), center=(0.0, 0.0))
    return affine(x, m, interpolation, fill)


def shear_y(x: Tensor, factor: float | Tensor, interpolation: str = "nearest",
            fill: Fill = None) -> Tensor:
    """Vertical shear about the top-left corner: source y = y + factor * x."""
    m = affine_matrix(x, shear=(0.0, _shear_degrees(factor, x)), center=(0.0, 0.0))
    return affine(x, m, interpolation, fill)


def translate_x(x: Tensor, pixels: float | Tensor, interpolation: str = "nearest",
                fill: Fill = None) -> Tensor:
    """Shift each image right by int(pixels) (truncated toward zero, as torchvision)."""
    t = torch.as_tensor(pixels, dtype=torch.float64, device=x.device).trunc()
    return affine(x, affine_matrix(x, translate=(t, 0.0)), interpolation, fill)


def translate_y(x: Tensor, pixels: float | Tensor, interpolation: str = "nearest",
                fill: Fill = None) -> Tensor:
    """Shift each image down by int(pixels)."""
    t = torch.as_tensor(pixels, dtype=torch.float64, device=x.device).trunc()
    return affine(x, affine_matrix(x, translate=(0.0, t)), interpolation, fill)


# ----------------------------------------------------------------------------- op tables

# A magnitude table: (num_bins, height, width) -> (num_bins,) magnitudes, or None (no magnitude).
Table = Callable[[int, int, int], Tensor | None]


def _lin(hi: float) -> Table:
    return lambda bins, h, w: torch.linspace(0.0, hi, bins)


def _posterize_bits(span: int) -> Table:
    return lambda bins, h, w: (8 - (torch.arange(bins) / ((bins - 1) / span))).round().int()


def _none(bins: int, h: int, w: int) -> None:
    return None


def _solarize(bins: int, h: int, w: int) -> Tensor:
    return torch.linspace(1.0, 0.0, bins)  # threshold as a fraction of 255


# name -> (magnitude table, signed): torchvision's augmentation spaces.
_COMMON: dict[str, tuple[Table, bool]] = {
    "ShearX": (_lin(0.3), True),
    "ShearY": (_lin(0.3), True),
    "TranslateX": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, bins), True),
    "TranslateY": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, bins), True),
    "Rotate": (_lin(30.0), True),
    "Brightness": (_lin(0.9), True),
    "Color": (_lin(0.9), True),
    "Contrast": (_lin(0.9), True),
    "Sharpness": (_lin(0.9), True),
    "Posterize": (_posterize_bits(4), False),
    "Solarize": (_solarize, False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
RANDAUGMENT_SPACE: dict[str, tuple[Table, bool]] = {"Identity": (_none, False), **_COMMON}
AUTOAUGMENT_SPACE: dict[str, tuple[Table, bool]] = {**_COMMON, "Invert": (_none, False)}
TRIVIALAUGMENT_SPACE: dict[str, tuple[Table, bool]] = {
    "Identity": (_none, False),
    "ShearX": (_lin(0.99), True),
    "ShearY": (_lin(0.99), True),
    "TranslateX": (_lin(32.0), True),
    "TranslateY": (_lin(32.0), True),
    "Rotate": (_lin(135.0), True),
    "Brightness": (_lin(0.99), True),
    "Color": (_lin(0.99), True),
    "Contrast": (_lin(0.99), True),
    "Sharpness": (_lin(0.99), True),
    "Posterize": (_posterize_bits(6), False),
    "Solarize": (_solarize, False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}

Op = Callable[[Tensor, Tensor], Tensor]


def op_functions(interpolation: str = "nearest", fill: Fill = None) -> dict[str, Op]:
    """name -> f(x, magnitude) with (B,) signed magnitudes, as torchvision applies each policy
    op (`_AutoAugmentBase._apply_image_or_video_transform`)."""
    if interpolation not in INTERPOLATIONS:
        raise ConvzooError(f"unknown augment.policy_interpolation '{interpolation}' "
                           f"(known: {', '.join(INTERPOLATIONS)})")
    geo = dict(interpolation=interpolation, fill=fill)
    return {
        "Identity": lambda x, m: x,
        "ShearX": lambda x, m: shear_x(x, m, **geo),
        "ShearY": lambda x, m: shear_y(x, m, **geo),
        "TranslateX": lambda x, m: translate_x(x, m, **geo),
        "TranslateY": lambda x, m: translate_y(x, m, **geo),
        "Rotate": lambda x, m: rotate(x, m, **geo),
        "Brightness": lambda x, m: adjust_brightness(x, 1.0 + m),
        "Color": lambda x, m: adjust_saturation(x, 1.0 + m),
        "Contrast": lambda x, m: adjust_contrast(x, 1.0 + m),
        "Sharpness": lambda x, m: adjust_sharpness(x, 1.0 + m),
        "Posterize": lambda x, m: posterize(x, m),
        "Solarize": lambda x, m: solarize(x, MAX * m),
        "AutoContrast": lambda x, m: autocontrast(x),
        "Equalize": lambda x, m: equalize(x),
        "Invert": lambda x, m: invert(x),
    }


def apply_per_image(x: Tensor, op: Tensor, magnitude: Tensor, ops: Sequence[Op]) -> Tensor:
    """Image b of x through ops[op[b]] with magnitude[b]: one batched call per op drawn.

    x: float (B, C, H, W); op: (B,) int64 (any device); magnitude: (B,) on x's device."""
    kinds = op.cpu()
    present = kinds.unique().tolist()
    if len(present) == 1:
        return ops[present[0]](x, magnitude)
    out = torch.empty_like(x)
    for k in present:
        index = (kinds == k).nonzero().squeeze(1).to(x.device)
        out.index_copy_(0, index, ops[k](x.index_select(0, index), magnitude.index_select(0, index)))
    return out


class _Policy:
    """Shared by the policies: an augmentation space as tensors (op names, a (ops, bins)
    magnitude table, signed flags) and the functions that apply it."""

    def __init__(self, space: dict[str, tuple[Table, bool]], num_bins: int, interpolation: str,
                 fill: Fill) -> None:
        self.names = list(space)
        self.space = space
        self.num_bins = num_bins
        self.interpolation = interpolation
        self.fill = fill
        fns = op_functions(interpolation, fill)
        self.ops = [fns[n] for n in self.names]
        self.signed = torch.tensor([space[n][1] for n in self.names])
        self._tables: dict[tuple[int, int], Tensor] = {}

    def table(self, height: int, width: int) -> Tensor:
        """(ops, bins) float64 magnitudes (0 where an op has none), for images of this size."""
        if (height, width) in self._tables:
            return self._tables[(height, width)]
        rows = []
        for name in self.names:
            m = self.space[name][0](self.num_bins, height, width)
            rows.append(torch.zeros(self.num_bins) if m is None else m.double())
        self._tables[(height, width)] = torch.stack(rows).double()
        return self._tables[(height, width)]

    def magnitudes(self, op: Tensor, level: Tensor, table: Tensor, negate: Tensor) -> Tensor:
        """(B,) magnitude of op[b] at bin level[b], negated where `negate` and the op is signed."""
        m = table.to(op.device)[op, level]
        flip = negate & self.signed.to(op.device)[op]
        return torch.where(flip, -m, m)

    def _round(self, x: Tensor, op: Tensor, level: Tensor, generator: torch.Generator) -> Tensor:
        """One op per image: magnitudes from the table, sign drawn per image (p = 0.5)."""
        dev = x.device
        table = self.table(x.shape[2], x.shape[3])
        negate = _rand((x.shape[0],), generator, op.device) <= 0.5
        m = self.magnitudes(op, level, table, negate).to(dev, x.dtype)
        return apply_per_image(x, op, m, self.ops)


class RandAugment(_Policy):
    """RandAugment: `num_ops` rounds; in each, every image draws one of the 14 ops uniformly and
    a sign; the magnitude is bin `magnitude` of `num_magnitude_bins` for every op (torchvision).
    x: (B, C, H, W) uint8 or float on the 0-255 scale -> float32 on that scale."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: str = "nearest", fill: Fill = None) -> None:
        if num_ops < 0:
            raise ConvzooError(f"augment.randaugment_ops must be >= 0, got {num_ops}")
        if num_magnitude_bins < 2:
            raise ConvzooError(f"augment.policy_bins must be >= 2, got {num_magnitude_bins}")
        if not 0 <= magnitude < num_magnitude_bins:
            raise ConvzooError(f"augment.randaugment_magnitude must be in [0, "
                               f"{num_magnitude_bins - 1}], got {magnitude}")
        super().__init__(RANDAUGMENT_SPACE, num_magnitude_bins, interpolation, fill)
        self.num_ops = num_ops
        self.magnitude = magnitude

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = as_pixels(x)
        B = x.shape[0]
        for _ in range(self.num_ops):
            op = _randint(len(self.names), (B,), generator, generator.device)
            level = torch.full_like(op, self.magnitude)
            x = self._round(x, op, level, generator)
        return x

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_bins}, interpolation={self.interpolation!r}, "
                f"fill={self.fill})")


class TrivialAugmentWide(_Policy):
    """TrivialAugmentWide: every image draws one of 14 ops, a magnitude bin uniformly in
    [0, num_magnitude_bins) and a sign (torchvision's wide ranges)."""

    def __init__(self, num_magnitude_bins: int = 31, interpolation: str = "nearest",
                 fill: Fill = None) -> None:
        if num_magnitude_bins < 2:
            raise ConvzooError(f"augment.policy_bins must be >= 2, got {num_magnitude_bins}")
        super().__init__(TRIVIALAUGMENT_SPACE, num_magnitude_bins, interpolation, fill)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = as_pixels(x)
        B = x.shape[0]
        op = _randint(len(self.names), (B,), generator, generator.device)
        level = _randint(self.num_bins, (B,), generator, generator.device)
        return self._round(x, op, level, generator)

    def __repr__(self) -> str:
        return (f"TrivialAugmentWide(num_magnitude_bins={self.num_bins}, "
                f"interpolation={self.interpolation!r}, fill={self.fill})")


# AutoAugment's learned sub-policies: ((op, probability, magnitude bin of 10), (op, p, bin)).
AUTOAUGMENT_POLICIES: dict[str, list[tuple[tuple[str, float, int | None], ...]]] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
    "svhn": [
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ],
}


class AutoAugment(_Policy):
    """AutoAugment with a learned policy (`imagenet`, `cifar10`, `svhn`): every image draws one
    of the 25 sub-policies, then applies each of its two ops with the op's probability, at its
    fixed magnitude bin (of 10), with a random sign (torchvision)."""

    def __init__(self, policy: str = "imagenet", interpolation: str = "nearest",
                 fill: Fill = None) -> None:
        if policy not in AUTOAUGMENT_POLICIES:
            raise ConvzooError(f"unknown AutoAugment policy '{policy}' "
                               f"(known: {', '.join(AUTOAUGMENT_POLICIES)})")
        # Identity (index 0) stands for "this op was not drawn".
        super().__init__({"Identity": (_none, False), **AUTOAUGMENT_SPACE}, 10, interpolation, fill)
        self.policy = policy
        steps = AUTOAUGMENT_POLICIES[policy]
        self.step_op = torch.tensor([[self.names.index(s[0]) for s in p] for p in steps])  # (25, 2)
        self.step_p = torch.tensor([[s[1] for s in p] for p in steps])
        self.step_level = torch.tensor([[s[2] or 0 for s in p] for p in steps])

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = as_pixels(x)
        B = x.shape[0]
        gdev = generator.device
        sub = _randint(len(self.step_op), (B,), generator, gdev)
        for step in range(2):
            apply = _rand((B,), generator, gdev) <= self.step_p.to(gdev)[sub, step]
            op = torch.where(apply, self.step_op.to(gdev)[sub, step], torch.zeros_like(sub))
            x = self._round(x, op, self.step_level.to(gdev)[sub, step], generator)
        return x

    def __repr__(self) -> str:
        return (f"AutoAugment(policy={self.policy!r}, interpolation={self.interpolation!r}, "
                f"fill={self.fill})")


# ----------------------------------------------------------------------------- colour jitter


def _jitter_range(name: str, value: float | Sequence[float], center: float, bound: float,
                  clip_low: bool = True) -> tuple[float, float] | None:
    """torchvision ColorJitter's parameter rule: v -> [center - v, center + v] (clipped at 0),
    or an explicit [lo, hi] inside [center - bound, center + bound]; None when it is a no-op."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConvzooError(f"augment.color_jitter {name} must be >= 0, got {value}")
        lo, hi = center - float(value), center + float(value)
        if clip_low:
            lo = max(lo, 0.0)
    else:
        if len(value) != 2:
            raise ConvzooError(f"augment.color_jitter {name} must be a number or [lo, hi], "
                               f"got {value}")
        lo, hi = float(value[0]), float(value[1])
    if not center - bound <= lo <= hi <= center + bound:
        raise ConvzooError(f"augment.color_jitter {name} range [{lo}, {hi}] must lie within "
                           f"[{center - bound}, {center + bound}]")
    return None if lo == hi == center else (lo, hi)


class ColorJitter:
    """torchvision's ColorJitter, per image: each image draws its own brightness, contrast and
    saturation factors (uniform in [max(0, 1 - v), 1 + v]) and hue shift (uniform in [-h, h],
    h <= 0.5), and applies them in its own random order. Ops set to 0 are skipped.
    x: uint8 or float on the 0-255 scale -> float32 on that scale."""

    def __init__(self, brightness: float | Sequence[float] = 0.0,
                 contrast: float | Sequence[float] = 0.0,
                 saturation: float | Sequence[float] = 0.0,
                 hue: float | Sequence[float] = 0.0) -> None:
        inf = float("inf")
        self.ranges = [
            _jitter_range("brightness", brightness, 1.0, inf),
            _jitter_range("contrast", contrast, 1.0, inf),
            _jitter_range("saturation", saturation, 1.0, inf),
            _jitter_range("hue", hue, 0.0, 0.5, clip_low=False),
        ]
        self.ops: list[Op] = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue,
                              lambda x, m: x]  # the last: a skipped op

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = as_pixels(x)
        B = x.shape[0]
        gdev = generator.device
        order = _rand((B, 4), generator, gdev).argsort(dim=1)  # a uniform permutation per image
        values = torch.zeros(B, 5, device=gdev)
        for k, r in enumerate(self.ranges):
            if r is not None:
                values[:, k] = r[0] + _rand((B,), generator, gdev) * (r[1] - r[0])
        rows = torch.arange(B, device=gdev)
        for step in range(4):
            op = order[:, step]
            m = values[rows, op].to(x.device, x.dtype)
            off = torch.tensor([r is None for r in self.ranges], device=gdev)[op]
            x = apply_per_image(x, torch.where(off, torch.full_like(op, 4), op), m, self.ops)
        return x

    def __repr__(self) -> str:
        names = ("brightness", "contrast", "saturation", "hue")
        return "ColorJitter(" + ", ".join(f"{n}={r}" for n, r in zip(names, self.ranges)) + ")"


# ----------------------------------------------------------------------------- random erasing


def erase(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor,
          value: Tensor | float = 0.0) -> Tensor:
    """Set box b = rows [top, top + height) x columns [left, left + width) of image b to `value`
    (a float, or a tensor broadcastable to (B, C, H, W)); boxes of height 0 leave an image as is."""
    mask = _box_mask(x, top, left, height, width)
    return torch.where(mask, torch.as_tensor(value, dtype=x.dtype, device=x.device), x)


def _box_mask(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """(B, 1, H, W) bool: each image's box, on x's device."""
    top, left, height, width = (t.to(x.device) for t in (top, left, height, width))
    return box_masks(top, top + height, left, left + width, *x.shape[-2:])


class RandomErasing:
    """timm's RandomErasing, batched: each image, with probability `p`, erases `count` boxes
    (an integer drawn uniformly in [count[0], count[1]]); each box has area fraction uniform in
    `area` / count and aspect ratio (h / w) log-uniform in `aspect`, the first of 10 draws with
    h < H and w < W (none fitting: no box), at a uniform position. Fill (`mode`): ``const`` 0,
    ``rand`` one normal value per channel per box, ``pixel`` normal per pixel. Scale-free: meant
    for the normalised batch (0 = the mean; normals have the data's spread)."""

    def __init__(self, p: float = 0.5, area: Sequence[float] = (0.02, 1 / 3),
                 aspect: Sequence[float] = (0.3, 1 / 0.3), mode: str = "const",
                 count: Sequence[int] = (1, 1), attempts: int = 10) -> None:
        if not 0 <= p <= 1:
            raise ConvzooError(f"augment.erase_prob must be in [0, 1], got {p}")
        if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
            raise ConvzooError(f"augment.erase_area must be [lo, hi] with 0 < lo <= hi <= 1, "
                               f"got {list(area)}")
        if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
            raise ConvzooError(f"augment.erase_aspect must be [lo, hi] with 0 < lo <= hi, "
                               f"got {list(aspect)}")
        if mode not in ERASE_MODES:
            raise ConvzooError(f"unknown augment.erase_mode '{mode}' (known: {', '.join(ERASE_MODES)})")
        if len(count) != 2 or not 1 <= count[0] <= count[1]:
            raise ConvzooError(f"augment.erase_count must be [lo, hi] with 1 <= lo <= hi, "
                               f"got {list(count)}")
        self.p = p
        self.area = (float(area[0]), float(area[1]))
        self.aspect = (float(aspect[0]), float(aspect[1]))
        self.mode = mode
        self.count = (int(count[0]), int(count[1]))
        self.attempts = attempts

    def boxes(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator,
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(top, left, height, width), each (count[1], B) int64 on `device`; boxes not drawn
        (image not erased, fewer boxes, no fitting draw) have height 0."""
        B, _, H, W = shape
        gdev, dev = generator.device, torch.device(device)
        n, a = self.count[1], self.attempts
        erased = _rand((B,), generator, gdev) < self.p
        count = self.count[0] + _randint(self.count[1] - self.count[0] + 1, (B,), generator, gdev)
        frac = self.area[0] + _rand((n, B, a), generator, gdev) * (self.area[1] - self.area[0])
        target = frac * (H * W) / count.view(1, B, 1)
        lo, hi = math.log(self.aspect[0]), math.log(self.aspect[1])
        ratio = torch.exp(lo + _rand((n, B, a), generator, gdev) * (hi - lo))
        h = torch.round(torch.sqrt(target * ratio))
        w = torch.round(torch.sqrt(target / ratio))
        ok = (w < W) & (h < H)  # (n, B, attempts): timm's test
        first = ok.to(torch.uint8).argmax(dim=2, keepdim=True)
        h = h.gather(2, first).squeeze(2)
        w = w.gather(2, first).squeeze(2)
        keep = ok.any(2) & erased.view(1, B) & (torch.arange(n, device=gdev).view(n, 1) < count)
        h = torch.where(keep, h, torch.zeros_like(h))
        w = torch.where(keep, w, torch.zeros_like(w))
        top = torch.floor(_rand((n, B), generator, gdev) * (H - h + 1))
        left = torch.floor(_rand((n, B), generator, gdev) * (W - w + 1))
        return tuple(t.long().to(dev) for t in (top, left, h, w))  # type: ignore[return-value]

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Erase boxes in a float (B, C, H, W) batch (any scale; see the class docstring)."""
        B, C, H, W = x.shape
        top, left, h, w = self.boxes(x.shape, generator, x.device)
        for k in range(top.shape[0]):  # later boxes overwrite earlier ones, as timm's loop does
            if self.mode == "pixel":
                # normals for the erased pixels only (drawing a whole batch of them was most of
                # the time at 224 px), placed in (B, C, H, W) order of the box pixels
                mask = _box_mask(x, top[k], left[k], h[k], w[k]).expand(B, C, H, W)
                n = C * int((h[k] * w[k]).sum())
                values = torch.randn(n, generator=generator, device=generator.device)
                x = x.masked_scatter(mask, values.to(x.device, x.dtype))
                continue
            value: Tensor | float = 0.0
            if self.mode == "rand":
                value = torch.randn(B, C, 1, 1, generator=generator, device=generator.device)
                value = value.to(x.device, x.dtype)
            x = erase(x, top[k], left[k], h[k], w[k], value)
        return x

    def __repr__(self) -> str:
        return (f"RandomErasing(p={self.p}, area={self.area}, aspect={self.aspect}, "
                f"mode={self.mode!r}, count={self.count})")
