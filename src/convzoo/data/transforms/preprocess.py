"""Input normalisation: fitted once on the training split, stored in the checkpoint, and applied
identically in train, eval and predict.

A `Preprocessor` maps a (B, C, H, W) batch on the 0-255 scale (uint8 or float, any device) to
float32. It runs at the stored image size, BEFORE augmentation, so every statistic (mean image,
ZCA matrix) has the shape of the stored images.

Kinds (``PreprocessConfig.kind``):

- ``none``         x / 255.
- ``mean_image``   (x - mean_image) / s, mean_image (C, H, W) fitted on train (seeds A, B).
                   The seeds (MXNet ``mean_img``, neon) subtract the mean image on the 0-255
                   scale and feed that to the network; we also divide by s, the global standard
                   deviation of the mean-subtracted training pixels (one fitted scalar), so the
                   input has unit variance. This differs from the seeds only by a constant factor.
- ``global_mean``  (x - m) / s with m one scalar mean over all training pixels and channels
                   (seed C) and s the scalar standard deviation around it (same reasoning).
- ``channel``      (x - mean[c]) / std[c]; fixed constants ``cfg.mean``/``cfg.std`` on the 0-255
                   scale when given (seed E), otherwise fitted on train (std around the mean used).
- ``gcn``          per image: subtract its own mean, divide by its own std (eps-guarded), times
                   ``cfg.gcn_scale`` (seed C "contrast normalisation").
- ``gcn_zca``      gcn, then ZCA whitening fitted on the gcn'd training images:
                   y = (flat(gcn(x)) - mu) @ W, W = U diag(1/sqrt(S + zca_eps)) U^T  (D, D).

Fill value: after preprocessing, 0 is "the mean" (the training mean image / pixel mean for
``mean_image``, ``global_mean``, ``channel``, ``gcn_zca``; the image's own mean for ``gcn``), so
augmentations pad and cut out with 0 after normalisation, i.e. with a mean-coloured pixel. The
exception is ``none``, where 0 is black.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from convzoo.config import PreprocessConfig
from convzoo.data.progress import progress
from convzoo.errors import ConvzooError

KINDS = ("none", "mean_image", "global_mean", "channel", "gcn", "gcn_zca")


def state_shapes(kind: str, shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """The tensors `kind` stores (all float32 on CPU in `state()`) and their shapes, for images
    of `shape` (C, H, W) with D = C * H * W values."""
    c, h, w = shape
    d = c * h * w
    return {"none": {},
            "mean_image": {"mean": (c, h, w), "std": ()},
            "global_mean": {"mean": (), "std": ()},
            "channel": {"mean": (c,), "std": (c,)},
            "gcn": {"gcn_scale": ()},
            "gcn_zca": {"gcn_scale": (), "zca_mean": (d,), "zca_matrix": (d, d)}}[kind]


# Tensors each kind stores.
_STATE_KEYS: dict[str, tuple[str, ...]] = {k: tuple(state_shapes(k, (1, 1, 1))) for k in KINDS}

# GCN divisor floor on the 0-255 scale. The smallest std of a non-constant uint8 image of D pixels
# is about 1/sqrt(D) (one pixel off by one grey level): 2.6e-3 for 224x224x3, so 1e-3 only
# catches constant images.
GCN_EPS = 1e-3

# Rows of the training set processed at a time while fitting (bounds float64 memory:
# 4096 x 3072 x 8 bytes = 100 MB for CIFAR).
_FIT_CHUNK = 4096


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConvzooError(f"unknown preprocess.kind '{kind}' (known: {', '.join(KINDS)})")


def gcn(x: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """Global contrast normalisation of a float (B, C, H, W) batch: each image minus its own mean,
    divided by its own std (population, eps-guarded), times `scale`."""
    flat = x.reshape(x.shape[0], -1)
    # Subtracting one pixel first is exact for integer-valued inputs and makes a constant image
    # exactly 0 (no float rounding residue for the eps guard to amplify); GCN is shift-invariant.
    flat = flat - flat[:, :1]
    flat = flat - flat.mean(dim=1, keepdim=True)
    std = flat.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(GCN_EPS)
    return (flat * (scale / std)).reshape(x.shape)


class Preprocessor(nn.Module):
    """Fitted normalisation: `forward` maps a (B, C, H, W) 0-255 batch to float32.

    Build with `fit_preprocessor` or `Preprocessor.from_state`. Move with `.to(device)` like any
    module; a batch on another device is still handled (the statistics are copied per call).
    """

    def __init__(self, kind: str, tensors: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        _check_kind(kind)
        tensors = tensors or {}
        missing = [k for k in _STATE_KEYS[kind] if k not in tensors]
        if missing:
            raise ConvzooError(f"preprocess state for kind '{kind}' lacks '{missing[0]}'")
        self.kind = kind
        for name in _STATE_KEYS[kind]:
            self.register_buffer(name, tensors[name].detach().to(torch.float32).clone())

    @property
    def fill_value(self) -> float:
        """Value that stands for "the mean" after preprocessing (see the module docstring)."""
        return 0.0

    def _buf(self, name: str, x: Tensor) -> Tensor:
        t = getattr(self, name)
        return t if t.device == x.device else t.to(x.device)

    def _check_shape(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ConvzooError(f"preprocess expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if self.kind == "mean_image" and tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ConvzooError(
                f"preprocess mean image is {tuple(self.mean.shape)} but the images are "
                f"{tuple(x.shape[1:])} (C, H, W): use images of the size the model was trained on"
            )
        if self.kind == "channel" and x.shape[1] != self.mean.shape[0]:
            raise ConvzooError(
                f"preprocess has {self.mean.shape[0]} channel statistics but the images have "
                f"{x.shape[1]} channels"
            )
        if self.kind == "gcn_zca" and x[0].numel() != self.zca_mean.numel():
            raise ConvzooError(
                f"ZCA whitening was fitted on images of {self.zca_mean.numel()} values (C*H*W) "
                f"but the images are {tuple(x.shape[1:])}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) uint8 or float on the 0-255 scale -> (B, C, H, W) float32 normalised."""
        self._check_shape(x)
        if x.device.type == "cpu" and x.dtype == torch.uint8:
            # A channels-last batch (decoded HWC images) has C = 3 as its innermost dimension,
            # so per-channel arithmetic on it runs 3 elements per inner loop on a CPU: one
            # cheap uint8 copy to NCHW makes the float work below several times faster.
            x = x.contiguous()
        owned = x.dtype != torch.float32  # converting copies: the copy may be changed in place
        x = x.to(torch.float32)  # a float32 input is not copied: never modify it in place below
        affine = self._affine(x.device)
        if affine is not None:
            # one fresh float buffer per batch, not two: large CPU allocations cost page faults
            return (x.sub_(affine[0]) if owned else torch.sub(x, affine[0])).mul_(affine[1])
        y = gcn(x, self._buf("gcn_scale", x))
        if self.kind == "gcn":
            return y
        flat = y.reshape(y.shape[0], -1) - self._buf("zca_mean", x)  # (B, D)
        return (flat @ self._buf("zca_matrix", x)).reshape(x.shape)  # W is symmetric

    def _affine(self, device: torch.device | str) -> tuple[Tensor, Tensor] | None:
        """(mean, scale) with ``forward(x) == (x - mean) * scale`` for the kinds of that form
        (none, mean_image, global_mean, channel), broadcastable to (C, H, W) and (B, C, H, W);
        None for gcn and gcn_zca."""
        if self.kind == "none":  # 0-dim CPU tensors act as scalars on any device: no copy, no sync
            return torch.zeros(()), torch.full((), 1.0 / 255.0)
        if self.kind not in ("mean_image", "global_mean", "channel"):
            return None
        mean, std = self.mean.to(device), self.std.to(device)
        if self.kind == "channel":
            mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        return mean, 1.0 / std

    def pixelwise(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor] | None:
        """(mean, scale) such that this preprocessing is ``(x - mean) * scale`` pixel by pixel,
        the same for every pixel position (none, global_mean, channel); None for the others.
        `forward` uses exactly these, so a caller applying them to part of an image, at any
        position, gets the same float32 values."""
        return None if self.kind == "mean_image" else self._affine(device)

    def state(self) -> dict[str, Any]:
        """{"kind": str, <name>: float32 CPU tensor, ...}: everything but "kind" is a tensor, so
        the tensors can go into safetensors as they are (with "kind" as metadata)."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in _STATE_KEYS[self.kind]:
            out[name] = getattr(self, name).detach().cpu().clone().contiguous()
        return out

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Preprocessor:
        """Rebuild exactly what `state()` returned."""
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str):
            raise ConvzooError("preprocess state must be a mapping with a 'kind' string")
        kind = d["kind"]
        _check_kind(kind)
        tensors = {}
        for name in _STATE_KEYS[kind]:
            if not isinstance(d.get(name), Tensor):
                raise ConvzooError(f"preprocess state for kind '{kind}' lacks tensor '{name}'")
            tensors[name] = d[name]
        return cls(kind, tensors)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


# ----------------------------------------------------------------------------- fitting


def _chunks(images: Tensor, device: torch.device, dtype: torch.dtype,
            desc: str = "fitting preprocessing") -> Any:
    """Yield (n, C, H, W) chunks of the uint8 training images on `device` as `dtype`."""
    with progress(images.shape[0], desc, unit="img") as bar:
        for i in range(0, images.shape[0], _FIT_CHUNK):
            yield images[i : i + _FIT_CHUNK].to(device).to(dtype)
            bar.update(min(_FIT_CHUNK, images.shape[0] - i))


def _pixel_sums(images: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Exact per-pixel sums of x and x^2 over the images: two (C, H, W) float64 tensors.

    Integer arithmetic (255^2 * N fits int64 for any N) keeps E[x^2] - E[x]^2 exact enough in
    float64 to give the variance without a second pass.
    """
    s1 = torch.zeros(images.shape[1:], dtype=torch.int64, device=device)
    s2 = torch.zeros_like(s1)
    for c in _chunks(images, device, torch.int64):
        s1 += c.sum(0)
        s2 += (c * c).sum(0)
    return s1.cpu().double(), s2.cpu().double()


def _fixed_channel_values(values: list[float], key: str, channels: int) -> Tensor:
    if len(values) != channels:
        raise ConvzooError(
            f"preprocess.{key} has {len(values)} values but the images have {channels} channels"
        )
    t = torch.tensor(values, dtype=torch.float64)
    if key == "std" and bool((t <= 0).any()):
        raise ConvzooError(f"preprocess.std must be positive, got {values}")
    return t


def _fit_zca(images: Tensor, scale: float, eps: float, device: torch.device) -> dict[str, Tensor]:
    """Mean (D,) and ZCA matrix (D, D) of the gcn'd images.

    The covariance is accumulated in float64 over chunks; each chunk's X^T X is a float32 matmul
    on CPU (2.5x faster than float64; the whitened outputs differ by ~1e-5 on gcn'd data of
    unit scale) and a float64 one on GPU (cheap there, and immune to TF32 matmul settings).
    """
    n = images.shape[0]
    d = images[0].numel()
    work = torch.float32 if device.type == "cpu" else torch.float64
    total = torch.zeros(d, dtype=torch.float64, device=device)
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    for c in _chunks(images, device, work, "fitting ZCA whitening"):
        flat = gcn(c, scale).reshape(c.shape[0], -1)  # (n, D)
        total += flat.sum(0, dtype=torch.float64)
        gram += (flat.T @ flat).to(torch.float64)
    mean = total / n
    cov = gram / n - torch.outer(mean, mean)  # (D, D) population covariance
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0.0)  # a gcn'd set has one ~0 eigenvalue (images sum to 0)
    w = (evecs * (evals + eps).rsqrt()) @ evecs.T  # U diag(1/sqrt(S+eps)) U^T
    return {"zca_mean": mean.cpu(), "zca_matrix": w.cpu()}


def fit_preprocessor(
    cfg: PreprocessConfig, train_images: Tensor, device: str | torch.device | None = None
) -> Preprocessor:
    """Fit the statistics `cfg.kind` needs on `train_images` ((N, C, H, W) uint8, CPU; may be a
    subsample of a huge set). `device` runs the fit elsewhere (a GPU makes ZCA instant).
    ``cfg`` is a validated config (kind, gcn_scale > 0, zca_eps > 0: config.from_dict)."""
    if train_images.dtype != torch.uint8 or train_images.ndim != 4:
        raise ValueError(
            f"train_images must be (N, C, H, W) uint8, got {tuple(train_images.shape)} "
            f"{train_images.dtype}"
        )
    n, channels = train_images.shape[:2]
    if n == 0:
        raise ConvzooError("cannot fit preprocessing on an empty training split")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    kind = cfg.kind
    if kind == "none":
        return Preprocessor(kind)
    if kind == "gcn":
        return Preprocessor(kind, {"gcn_scale": torch.tensor(cfg.gcn_scale)})
    if kind == "gcn_zca":
        zca = _fit_zca(train_images, cfg.gcn_scale, cfg.zca_eps, dev)
        return Preprocessor(kind, {"gcn_scale": torch.tensor(cfg.gcn_scale), **zca})

    fixed_mean = fixed_std = None
    if kind == "channel":
        if cfg.mean is not None:
            fixed_mean = _fixed_channel_values(cfg.mean, "mean", channels)
        if cfg.std is not None:
            fixed_std = _fixed_channel_values(cfg.std, "std", channels)
        if fixed_mean is not None and fixed_std is not None:
            return Preprocessor(kind, {"mean": fixed_mean, "std": fixed_std})

    # mean_image / global_mean / channel: first and second moments from exact pixel sums.
    s1, s2 = _pixel_sums(train_images, dev)  # (C, H, W) each
    if kind == "mean_image":
        mean = s1 / n  # (C, H, W)
        var = (s2 / n - mean**2).mean()  # mean squared deviation from the mean image
        return Preprocessor(kind, {"mean": mean, "std": var.clamp_min(1e-12).sqrt()})
    if kind == "global_mean":
        count = train_images.numel()
        mean = s1.sum() / count  # one scalar
        var = s2.sum() / count - mean**2
        return Preprocessor(kind, {"mean": mean, "std": var.clamp_min(1e-12).sqrt()})
    # channel: fixed constants where given, else fitted; the std is taken around the mean used.
    count = n * train_images.shape[2] * train_images.shape[3]
    ex = s1.sum(dim=(1, 2)) / count  # (C,) E[x]
    ex2 = s2.sum(dim=(1, 2)) / count  # (C,) E[x^2]
    mean = ex if fixed_mean is None else fixed_mean
    if fixed_std is None:
        std = (ex2 - 2 * mean * ex + mean**2).clamp_min(1e-12).sqrt()  # E[(x - mean)^2]^0.5
    else:
        std = fixed_std
    return Preprocessor(kind, {"mean": mean, "std": std})
