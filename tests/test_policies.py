"""Batched per-image policies: every op equals torchvision's per-image op for the same parameters,
images in one batch draw their own ops and magnitudes, and the draws follow each policy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import _setup_fill_arg

from convzoo.data.transforms import policies as P
from convzoo.errors import ConvzooError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def photos(b: int, h: int = 23, w: int = 31, seed: int = 0) -> torch.Tensor:
    """(b, 3, h, w) float in [0, 1]: smooth structure plus noise, distinct images, non-square."""
    g = gen(seed)
    base = torch.rand(b, 3, h // 4 + 1, w // 4 + 1, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear")
    return (0.8 * smooth + 0.2 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


SPACES = {
    "randaugment": (P.RANDAUGMENT_SPACE, v2.RandAugment._AUGMENTATION_SPACE, 31),
    "trivialaugment": (P.TRIVIALAUGMENT_SPACE, v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31),
    "autoaugment": (P.AUTOAUGMENT_SPACE, v2.AutoAugment._AUGMENTATION_SPACE, 10),
}
# every (space, op) pair; ops whose tables match are still checked in each space's range
OP_CASES = [(s, name) for s, (space, _, _) in SPACES.items() for name in space]


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _ties(name: str, m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H, W) bool: output pixels whose source position (float64, the op's map) lies within
    1e-4 px of a half-pixel boundary on either axis, where nearest sampling may go either way."""
    x = torch.zeros(len(m), 1, h, w)
    fns = {"ShearX": lambda: P.affine_matrix(x, shear=(P._shear_degrees(m, x), 0.0), center=(0.0, 0.0)),
           "ShearY": lambda: P.affine_matrix(x, shear=(0.0, P._shear_degrees(m, x)), center=(0.0, 0.0)),
           "TranslateX": lambda: P.affine_matrix(x, translate=(m.trunc(), 0.0)),
           "TranslateY": lambda: P.affine_matrix(x, translate=(0.0, m.trunc())),
           "Rotate": lambda: P.affine_matrix(x, angle=-m)}
    inv = fns[name]()  # (B, 2, 3)
    xs = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    ys = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    tie = torch.zeros(len(m), h, w, dtype=torch.bool)
    for axis, size in ((0, w), (1, h)):
        c = inv[:, axis].view(-1, 3, 1, 1)
        src = xs.view(1, 1, w) * c[:, 0] + ys.view(1, h, 1) * c[:, 1] + c[:, 2] + (size - 1) / 2
        tie |= ((src - src.floor()) - 0.5).abs() < 1e-4
    return tie


def _magnitudes(space: str, name: str, h: int, w: int) -> torch.Tensor:
    """Every magnitude the space can give this op: all bins, both signs where signed."""
    table, signed = SPACES[space][0][name]
    bins = SPACES[space][2]
    m = table(bins, h, w)
    m = torch.zeros(bins) if m is None else m.double()
    return torch.cat([m, -m]) if signed else m


# Fill values and bilinear sampling only matter to the geometric ops: those get every setting.
SAMPLING = [("nearest", None), ("bilinear", None), ("nearest", (10.0, 200.0, 30.0)),
            ("bilinear", (10.0, 200.0, 30.0))]
CASES = [(s, n, i, f) for s, n in OP_CASES
         for i, f in (SAMPLING if n in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
                      else SAMPLING[:1])]


@pytest.mark.parametrize(("space", "name", "interpolation", "fill"), CASES,
                         ids=[f"{s}-{n}-{i}-{'fill' if f else 'zero'}" for s, n, i, f in CASES])
def test_each_op_equals_torchvisions_per_image_op(space, name, interpolation, fill):
    """A batch whose images carry every magnitude of the op at once, against torchvision's op
    applied image by image (the function its RandAugment/TrivialAugment/AutoAugment call)."""
    h, w = 23, 31
    m = _magnitudes(space, name, h, w)
    x = photos(len(m), h, w)
    uint8 = name in ("Posterize", "Equalize")  # torchvision's uint8 semantics (PIL's)
    ref_in = (x * 255).round().to(torch.uint8) if uint8 else x
    to255 = 1.0 if uint8 else 255.0  # torchvision's float images are on the 0-1 scale
    tv = v2.AutoAugment()
    tv_fill = _setup_fill_arg(None if fill is None else [f / to255 for f in fill])
    ref = torch.stack([
        tv._apply_image_or_video_transform(ref_in[i], name, float(m[i]), interpolation, tv_fill)
        for i in range(len(m))
    ]).float() * to255
    ours = P.op_functions(interpolation, fill)[name](ref_in.float() * to255, m.float())
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    differ = ((ours - ref).abs() > 1e-3).any(1)  # (B, H, W): pixels that are not the same
    if interpolation == "nearest" and name in GEOMETRIC:
        # Nearest sampling may pick the other pixel where the source position is an exact
        # half-pixel tie (the maps agree to an ulp); everywhere else it is the same pixel.
        assert bool((differ <= _ties(name, m, h, w)).all())
        assert differ.float().mean() < 1e-3
    else:  # rounding only (bilinear rotation: float32 rounding of the map)
        torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment"])
def test_augmentation_spaces_equal_torchvisions(name):
    ours, theirs, bins = SPACES[name]
    assert list(ours) == list(theirs)
    for h, w in ((32, 32), (224, 160)):
        for bins_ in (bins, 11):
            for op in ours:
                a, b = ours[op][0](bins_, h, w), theirs[op][0](bins_, h, w)
                assert ours[op][1] == theirs[op][1]
                assert (a is None) == (b is None)
                if a is not None:
                    assert torch.equal(a, b), op


@pytest.mark.parametrize("policy", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_policies_equal_torchvisions(policy):
    enum = getattr(v2.AutoAugmentPolicy, policy.upper())
    assert P.AUTOAUGMENT_POLICIES[policy] == v2.AutoAugment(enum)._policies


@pytest.mark.parametrize("shift", [-0.5, -0.31, -0.07, 0.0, 0.12, 0.25, 0.49, 0.5])
def test_hue_saturation_contrast_brightness_match_torchvision(shift):
    x = photos(4)
    x[3] = x[3].mean(0, keepdim=True)  # a grey image: hue and saturation leave it alone
    factors = torch.tensor([0.0, 0.5, 1.0, 1.7])
    torch.testing.assert_close(P.adjust_hue(x * 255, shift) / 255, TF.adjust_hue(x, shift),
                               atol=2e-6, rtol=0)
    for ours, theirs in ((P.adjust_saturation, TF.adjust_saturation),
                         (P.adjust_contrast, TF.adjust_contrast),
                         (P.adjust_brightness, TF.adjust_brightness),
                         (P.adjust_sharpness, TF.adjust_sharpness)):
        out = ours(x * 255, factors) / 255
        ref = torch.stack([theirs(x[i], float(factors[i])) for i in range(4)])
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


def test_grey_single_channel_images():
    x = photos(3)[:, :1]
    for op in (P.adjust_hue, P.adjust_saturation):
        assert torch.equal(op(x * 255, 0.3), x * 255)
    torch.testing.assert_close(P.adjust_contrast(x * 255, 0.5) / 255, TF.adjust_contrast(x, 0.5))


def test_solarize_posterize_invert_autocontrast_equalize_match_torchvision_on_uint8():
    x = (photos(9) * 255).round().to(torch.uint8)
    x[0] = 77  # a constant image: autocontrast and equalize leave it alone
    bits = torch.arange(9)  # 0..8 bits, one per image
    thresholds = torch.linspace(0, 255, 9).round()
    xf = x.float()
    ref = torch.stack([TF.posterize(x[i], int(bits[i])) for i in range(9)])
    assert torch.equal(P.posterize(xf, bits), ref.float())
    fractional = xf + torch.rand(xf.shape, generator=gen(1)) * 0.999
    assert torch.equal(P.posterize(fractional, 8), fractional)  # 8 bits: unchanged, even off-grid
    assert torch.equal(P.posterize(fractional, 7), P.posterize(xf, 7))  # else the uint8 level
    ref = torch.stack([TF.solarize(x[i], float(thresholds[i])) for i in range(9)])
    assert torch.equal(P.solarize(xf, thresholds), ref.float())
    assert torch.equal(P.invert(xf), TF.invert(x).float())
    assert torch.equal(P.equalize(xf), TF.equalize(x).float())
    diff = P.autocontrast(xf) - TF.autocontrast(x).float()  # torchvision truncates to uint8
    assert diff.abs().max() <= 1 + 1e-4  # (float rounding either side of an integer)


def _spy_ops(policy: P._Policy) -> None:
    """Replace each op with one that writes (op index, magnitude) into the image, so a test can
    read what every image drew. Ops compose: later rounds overwrite channel 0/1 of the image."""
    def spy(k):
        def op(x, m):
            out = x.clone()
            out[:, 0] = k
            out[:, 1] = m.view(-1, 1, 1)
            return out
        return op
    policy.ops = [spy(k) for k in range(len(policy.names))]


def _read(policy: P._Policy, out: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    return [policy.names[int(k)] for k in out[:, 0, 0, 0]], out[:, 1, 0, 0].double()


def test_trivialaugment_draws_op_bin_and_sign_per_image_uniformly():
    ta = P.TrivialAugmentWide()
    _spy_ops(ta)
    n = 14000
    names, m = _read(ta, ta(torch.zeros(n, 3, 4, 4), gen(1)))
    counts = {k: names.count(k) for k in ta.names}
    assert all(abs(c / n - 1 / 14) < 0.012 for c in counts.values()), counts
    table = ta.table(4, 4)
    for k, name in enumerate(ta.names):
        mk = m[[i for i, v in enumerate(names) if v == name]]
        allowed = table[k].float().double()
        assert bool(torch.isin(mk.abs() if ta.signed[k] else mk, allowed).all()), name
        if ta.signed[k] and name != "Identity":
            assert 0.4 < (mk < 0).double().mean() < 0.6  # either sign
            # every bin is used (31 bins, ~1000 draws of this op)
            assert len(set(mk.abs().tolist())) == 31


def test_randaugment_uses_the_one_magnitude_and_n_rounds():
    ra = P.RandAugment(num_ops=1, magnitude=7)
    _spy_ops(ra)
    names, m = _read(ra, ra(torch.zeros(5000, 3, 8, 8), gen(2)))
    table = ra.table(8, 8)
    for k, name in enumerate(ra.names):
        mk = m[[i for i, v in enumerate(names) if v == name]]
        assert len(mk) > 250  # ~5000 / 14
        assert torch.allclose(mk.abs(), table[k, 7].float().double().expand_as(mk)), name
    # N rounds compose: with real ops, more rounds change the images more
    x = photos(64, 16, 16) * 255
    changes = [(P.RandAugment(num_ops=n)(x, gen(3)) - x).abs().mean().item() for n in (0, 1, 3)]
    assert changes[0] == 0 and changes[0] < changes[1] < changes[2]


def test_autoaugment_applies_each_step_with_its_probability():
    aa = P.AutoAugment("cifar10")
    _spy_ops(aa)
    n = 20000
    x = torch.zeros(n, 3, 4, 4)
    x[:, 0] = -1  # "no op applied in either step"
    names, m = _read(aa, aa(x, gen(4)))
    # Step 2 overwrites step 1, so the last op seen is step 2's if it applied (Identity stands for
    # "not applied", and writes too). P(last shown = 'Identity') = mean over sub-policies of
    # 1 - p2; and the ops shown are those of the sub-policies' second steps.
    p2 = torch.tensor([s[1][1] for s in P.AUTOAUGMENT_POLICIES["cifar10"]])
    identity = sum(v == "Identity" for v in names) / n
    assert abs(identity - (1 - p2).mean().item()) < 0.015
    second = {s[1][0] for s in P.AUTOAUGMENT_POLICIES["cifar10"]}
    assert set(names) - {"Identity"} <= second


@pytest.mark.parametrize("make", [
    lambda: P.RandAugment(num_ops=2, magnitude=9),
    lambda: P.TrivialAugmentWide(),
    lambda: P.AutoAugment("imagenet"),
    lambda: P.AutoAugment("cifar10"),
    lambda: P.ColorJitter(0.4, 0.4, 0.4, 0.1),
], ids=["randaugment", "trivialaugment", "autoaugment-imagenet", "autoaugment-cifar10", "jitter"])
def test_images_in_one_batch_draw_their_own_and_the_generator_reproduces(make):
    policy = make()
    one = (photos(1, 24, 24) * 255).round()
    x = one.expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = policy(x.to(torch.uint8), gen(5))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 255
    distinct = len({tuple(v) for v in out.flatten(1)[:, ::7].tolist()})
    assert distinct >= 12, distinct  # a batch-wide draw would give 1
    assert torch.equal(policy(x, gen(5)), out)  # uint8 or float input, same generator state
    assert not torch.equal(policy(x, gen(6)), out)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(policy(cl, gen(5)), out, atol=1e-3, rtol=0)


def test_color_jitter_each_image_is_one_order_of_torchvisions_ops():
    jitter = P.ColorJitter(brightness=(0.6, 0.6), contrast=(1.5, 1.5), saturation=(0.3, 0.3),
                           hue=(0.2, 0.2))
    x = photos(1)
    xs = x.expand(96, -1, -1, -1)
    out = jitter(xs * 255, gen(7)) / 255
    fns = [lambda t: TF.adjust_brightness(t, 0.6), lambda t: TF.adjust_contrast(t, 1.5),
           lambda t: TF.adjust_saturation(t, 0.3), lambda t: TF.adjust_hue(t, 0.2)]
    refs = []
    for order in itertools.permutations(range(4)):
        t = x[0]
        for k in order:
            t = fns[k](t)
        refs.append(t)
    refs = torch.stack(refs)  # (24, C, H, W)
    dist = (out[:, None] - refs[None]).abs().flatten(2).amax(2)  # (96, 24)
    assert bool((dist.min(1).values < 1e-5).all())  # every image is one of the 24 orders...
    # ...and the images drew different orders (some orders commute and give the same image)
    assert len({tuple(v) for v in (out.flatten(1)[:, ::5] * 1e4).round().tolist()}) >= 8


def test_color_jitter_factor_ranges():
    jitter = P.ColorJitter(brightness=0.5)
    x = torch.full((4000, 3, 2, 2), 100.0)
    factor = jitter(x, gen(8))[:, 0, 0, 0] / 100
    assert factor.min() >= 0.5 - 1e-6 and factor.max() <= 1.5 + 1e-6
    assert abs(factor.mean().item() - 1.0) < 0.02 and factor.std() > 0.25
    assert P.ColorJitter().ranges == [None] * 4
    assert torch.equal(P.ColorJitter()(x, gen()), x)


def test_random_erasing_equals_torchvision_erase_on_the_drawn_boxes():
    x = torch.randn(64, 3, 20, 28, generator=gen(9))
    erasing = P.RandomErasing(p=0.7, count=(1, 3))
    top, left, h, w = erasing.boxes(x.shape, gen(10))
    out = erasing(x, gen(10))
    for b in range(64):
        ref = x[b]
        for k in range(3):
            if h[k, b] > 0:
                ref = TF.erase(ref, int(top[k, b]), int(left[k, b]), int(h[k, b]),
                               int(w[k, b]), torch.tensor(0.0))
        assert torch.equal(out[b], ref)


def test_random_erasing_draws_follow_timm():
    n = 20000
    erasing = P.RandomErasing(p=0.4, area=(0.05, 0.3), aspect=(0.5, 2.0), count=(1, 1))
    top, left, h, w = erasing.boxes((n, 3, 40, 40), gen(11))
    drawn = h[0] > 0
    assert abs(drawn.double().mean().item() - 0.4) < 0.015
    area = (h[0] * w[0])[drawn].double() / 1600
    assert area.min() >= 0.04 and area.max() <= 0.32  # whole pixels: a little beyond the range
    assert abs(area.mean().item() - 0.175) < 0.01
    ratio = (h[0] / w[0])[drawn].double().log()
    assert abs(ratio.mean().item()) < 0.02 and ratio.min() > math.log(0.4) and ratio.max() < math.log(2.5)
    assert bool((top + h <= 40).all() and (left + w <= 40).all() and (top >= 0).all())
    assert bool((h[0][drawn] < 40).all())  # timm's strict fit test
    counts = P.RandomErasing(p=1.0, count=(1, 3)).boxes((3000, 1, 32, 32), gen(12))[2]
    per_image = (counts > 0).sum(0)
    assert set(per_image.tolist()) == {1, 2, 3}


@pytest.mark.parametrize("mode", ["rand", "pixel"])
def test_random_erasing_normal_fills(mode):
    x = torch.zeros(200, 3, 16, 16)
    out = P.RandomErasing(p=1.0, mode=mode)(x, gen(13))
    filled = out != 0
    assert filled.flatten(1).any(1).float().mean() > 0.95
    values = out[filled]
    assert abs(values.std().item() - 1.0) < 0.1 and abs(values.mean().item()) < 0.1
    b = int(filled.flatten(1).any(1).nonzero()[0])
    box = out[b][:, filled[b].any(0)]  # (C, pixels in the box)
    if mode == "rand":
        assert bool((box == box[:, :1]).all())  # one value per channel
    else:
        assert len(box.unique()) > box.numel() // 2


@pytest.mark.parametrize(("make", "message"), [
    (lambda: P.RandAugment(num_ops=-1), "augment.randaugment_ops must be >= 0, got -1"),
    (lambda: P.RandAugment(magnitude=31), r"augment.randaugment_magnitude must be in \[0, 30\], got 31"),
    (lambda: P.TrivialAugmentWide(interpolation="cubic"), "unknown augment.policy_interpolation 'cubic'"),
    (lambda: P.AutoAugment("cifar100"), "unknown AutoAugment policy 'cifar100' \\(known: imagenet, cifar10, svhn\\)"),
    (lambda: P.ColorJitter(hue=0.7), r"augment.color_jitter hue range \[-0.7, 0.7\] must lie within \[-0.5, 0.5\]"),
    (lambda: P.ColorJitter(brightness=-0.1), "augment.color_jitter brightness must be >= 0, got -0.1"),
    (lambda: P.RandomErasing(p=2.0), r"augment.erase_prob must be in \[0, 1\], got 2.0"),
    (lambda: P.RandomErasing(area=(0.5, 0.1)), "augment.erase_area must be"),
    (lambda: P.RandomErasing(mode="noise"), "unknown augment.erase_mode 'noise'"),
    (lambda: P.RandomErasing(count=(0, 1)), "augment.erase_count must be"),
])
def test_bad_settings_name_the_key_and_range(make, message):
    with pytest.raises(ConvzooError, match=message):
        make()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("make", [lambda: P.RandAugment(), lambda: P.TrivialAugmentWide(),
                                  lambda: P.AutoAugment("imagenet"), lambda: P.ColorJitter(0.4, 0.4, 0.4, 0.1),
                                  lambda: P.RandomErasing(p=1.0, mode="pixel")])
def test_cuda_matches_cpu_with_a_cpu_generator(make):
    x = (photos(32, 32, 32) * 255).round()
    policy = make()
    cpu = policy(x, gen(14))
    cuda = policy(x.cuda(), gen(14))
    # nearest geometry may land on the other pixel at an exact tie: compare almost all pixels
    close = ((cuda.cpu() - cpu).abs() < 1e-2).float().mean()
    assert close > 0.999
    g = torch.Generator(device="cuda").manual_seed(3)
    out = policy(x.cuda(), g)
    assert out.device.type == "cuda" and out.shape == x.shape
