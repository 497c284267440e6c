"""The device stage: what every loader applies to a batch of uint8 images, on its device.

``uint8 (B, C, H, W), labels -> [pixels] -> preprocess -> geometric (training) | eval view
(evaluation) -> [finish] -> float images, targets`` (`Stage`), where the bracketed and the
geometric steps are the op lists of one `convzoo.data.transforms.augment.Plan`, built once by
the augmentation config (`Augment.plan`, `EvalTransform.plan`). Both loaders (resident and
streaming) feed this one stage, so geometry, normalisation and randomness cannot drift apart
between them. Batch k of rank r in epoch e draws its augmentation from its own generator, seeded
by the AUGMENT stream of (seed, e, r, k) (`convzoo.data.sampler`), so a batch gets the same
augmentation wherever it is computed (a worker process or the main one) and every rank augments
differently.

On a CPU the stage runs image by image where it can (`convzoo.data.transforms.cpu_stage`:
pixelwise preprocessing and integer-geometry augmentation, images of 64x64 and up), else batched
in cache-sized chunks; both give the values the batched ops give.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from convzoo.data import sampler
from convzoo.data.transforms.augment import build_plan
from convzoo.data.transforms.cpu_stage import apply_windows, per_image
from convzoo.data.transforms.preprocess import Preprocessor

# The batched CPU stage works on chunks of about this many float bytes: small enough to stay
# in cache between preprocess and augment steps (3x faster than whole 224 px batches).
CPU_CHUNK_BYTES = 4 * 2**20

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def _fresh(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class Stage:
    """``stage(x, labels, index, epoch, batch)``: uint8 (B, C, H, W) images and int64 (B,)
    labels on any device -> (float images, targets).

    ``preprocess`` maps 0-255 images to normalised float (None: x / 255); ``augment(x,
    generator, epoch, index)`` is applied to training batches, ``eval_transform(x)`` to
    evaluation ones (at most one of the two). ``index`` (B,) are the images' dataset indices.

    An `convzoo.data.transforms.augment.Augment` brings its steps around preprocessing as a
    `Plan` (its docstring; docs/augmentation.md), all drawing from the batch's one generator in
    this order:

        x (0-255) -> plan.pixels: [rrc] policy, colour jitter -> preprocess
          -> plan.geometric (rrc, crop, pad, translate, affine, flip, cutout)
          -> plan.finish: random erasing, mixup/cutmix with the labels

    The targets are the labels, or (B, num_classes) float class probabilities when the
    augmentation mixes images. A plain callable ``augment`` is the geometric step alone.
    """

    def __init__(self, preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 augment: Callable[..., torch.Tensor] | None = None,
                 eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 seed: int = 0, rank: int = 0) -> None:
        if augment is not None and eval_transform is not None:
            raise ValueError("a stage augments (training) or takes the eval view, not both")
        self.preprocess = preprocess if preprocess is not None else Preprocessor("none")
        self.augment, self.eval_transform = augment, eval_transform
        self.seed, self.rank = seed, rank
        # (mean, scale) of a pixelwise preprocessing (`Preprocessor.pixelwise`): the one-pass
        # CPU path normalises with them; None for any other (a mean image, ZCA, a callable).
        self.affine = (self.preprocess.pixelwise() if isinstance(self.preprocess, Preprocessor)
                       else None)
        # The op lists, chosen once: the random-resized crop runs on the 0-255 pixels when a
        # policy runs there and the preprocessing allows it (`Augment.rrc_first`).
        self.plan = build_plan(augment, eval_transform, pixelwise=self.affine is not None)
        self.rrc_first = self.plan.rrc_first

    def generator(self, device: torch.device | str, epoch: int, batch: int) -> torch.Generator:
        """The AUGMENT stream of (seed, epoch, rank, batch), on `device`."""
        return sampler.generator(self.seed, epoch, sampler.AUGMENT, self.rank, batch, device)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, epoch: int,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if x.device.type == "cpu":
            return self.run_cpu(x, tuple(x.shape), labels, index, epoch, batch, _fresh)
        return self.apply(x, labels, index, self.generator(x.device, epoch, batch), epoch)

    def apply(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
              generator: torch.Generator, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched ops (any device), drawing from `generator`: (images, targets)."""
        x = self._image_steps(self.plan.run_pixels(x, generator), index, generator, epoch)
        return self.plan.run_finish(x, labels, generator)

    def _image_steps(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator,
                     epoch: int) -> torch.Tensor:
        """Preprocess, then the geometric step or the eval view: image by image in effect, so
        it may run on chunks of a batch."""
        return self.plan.run_geometric(self.preprocess(x), generator, epoch, index)

    def run_cpu(self, images: list[torch.Tensor] | torch.Tensor, shape: tuple[int, ...],
                labels: torch.Tensor, index: torch.Tensor, epoch: int, batch: int,
                alloc: Alloc) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage on the CPU for B uint8 (C, H, W) images of one `shape` (B, C, H, W),
        written into ``alloc(shape, dtype)``: the pixel step on the whole batch, then image by
        image in one pass where the stage allows it (pixelwise preprocessing, a `Windows` plan),
        else batched in cache-sized chunks, then the finish on the whole batch. Both give the
        same values. Returns (images, targets)."""
        g = self.generator("cpu", epoch, batch)
        if self.plan.pixels:  # float 0-255, possibly cropped: the sources of the next steps
            x = images if isinstance(images, torch.Tensor) else torch.stack(images)
            images = self.plan.run_pixels(x, g)
            shape = tuple(images.shape)
        windows = None
        if (self.affine is not None and self.plan.windows is not None
                and per_image(shape, torch.device("cpu"))):
            windows = self.plan.windows(shape, g, epoch, index)  # draws nothing when None
        if windows is not None:
            out = alloc((shape[0], shape[1], *windows.size), torch.float32)
            apply_windows(images, windows, out, self.affine)
        else:
            x = images if isinstance(images, torch.Tensor) else torch.stack(images)
            per_image_bytes = 4 * max(1, x[0].numel()) if len(x) else 4
            step = max(1, CPU_CHUNK_BYTES // per_image_bytes)
            first = self._image_steps(x[:step], index[:step], g, epoch)
            out = alloc((x.shape[0], *first.shape[1:]), first.dtype)
            out[:step] = first
            for i in range(step, x.shape[0], step):
                out[i:i + step] = self._image_steps(x[i:i + step], index[i:i + step], g, epoch)
        result, targets = self.plan.run_finish(out, labels, g)
        if result is not out:  # keep the batch in `out` (a worker's reused shared buffer)
            out.copy_(result)
        return out, targets
