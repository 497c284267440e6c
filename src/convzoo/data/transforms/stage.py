"""The device stage: what every loader applies to a batch of uint8 images, on its device.

``uint8 (B, C, H, W), labels -> [policy] -> preprocess -> augment (training) | eval view
(evaluation) -> [erasing, mixing] -> float images, targets`` (`Stage`).
Both loaders (resident and streaming) feed this one stage, so geometry, normalisation and
randomness cannot drift apart between them. Batch k of rank r in epoch e draws its augmentation
from its own generator, seeded by the AUGMENT stream of (seed, e, r, k) (`convzoo.data.sampler`),
so a batch gets the same augmentation wherever it is computed (a worker process or the main one)
and every rank augments differently.

On a CPU the stage runs image by image where it can (`convzoo.data.transforms.cpu_stage`: pixelwise
preprocessing and integer-geometry augmentation, images of 64x64 and up), else batched in
cache-sized chunks; both give the values the batched ops give.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from convzoo.data import sampler
from convzoo.data.transforms.cpu_stage import Windows, apply_windows, per_image
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

    An `convzoo.data.transforms.augment.Augment` brings its steps around preprocessing (its docstring;
    docs/augmentation.md), all drawing from the batch's one generator in this order:

        x (0-255) -> augment.pixels: [rrc] policy, colour jitter -> preprocess
          -> augment (rrc, crop, pad, translate, affine, flip, cutout)
          -> augment.finish: random erasing, mixup/cutmix with the labels

    The targets are the labels, or (B, num_classes) float class probabilities when the
    augmentation mixes images. A plain callable ``augment`` is step 2 alone.
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
        pixelwise = getattr(self.preprocess, "pixelwise", None)
        self.pixelwise = pixelwise is not None and pixelwise() is not None
        # The random-resized crop moves before preprocessing (onto the 0-255 pixels) when a
        # policy runs there and the preprocessing allows it (`Augment.rrc_first`).
        rrc_first = getattr(augment, "rrc_first", None)
        self.rrc_first = bool(rrc_first(self.pixelwise)) if rrc_first is not None else False
        # step 1 runs (and the pixels become float 0-255) only when it has something to do
        self.pixel_step = self.rrc_first or bool(getattr(augment, "pixel_ops", False))

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
        x = self._image_steps(self._pixels(x, generator), index, generator, epoch)
        return self._finish(x, labels, generator)

    def _pixels(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Step 1 (policy, jitter, the moved rrc) on the whole batch, or x as it is."""
        if not self.pixel_step:
            return x
        return self.augment.pixels(x, generator, rrc=self.rrc_first)  # type: ignore[union-attr]

    def _image_steps(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator,
                     epoch: int) -> torch.Tensor:
        """Preprocess, then step 2 (augment) or the eval view: image by image in effect, so it
        may run on chunks of a batch."""
        x = self.preprocess(x)
        if self.augment is not None:
            if self.rrc_first:
                return self.augment(x, generator, epoch, index, rrc=False)
            return self.augment(x, generator, epoch, index)
        if self.eval_transform is not None:
            return self.eval_transform(x)
        return x

    def _finish(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3 (erasing, mixing) on the whole batch: (images, targets)."""
        finish = getattr(self.augment, "finish", None)
        return finish(x, labels, generator) if finish is not None else (x, labels)

    def _windows(self, shape: tuple[int, ...], generator: torch.Generator, epoch: int,
                 index: torch.Tensor) -> Windows | None:
        """The augmentation (or eval view) as a per-image plan, if it is integer geometry.
        Draws nothing when it is not."""
        if self.augment is not None:
            plan = getattr(self.augment, "windows", None)
            if plan is None:
                return None
            if self.rrc_first:
                return plan(shape, generator, epoch, index, rrc=False)
            return plan(shape, generator, epoch, index)
        if self.eval_transform is not None:
            plan = getattr(self.eval_transform, "windows", None)
            return plan(shape) if plan is not None else None
        return Windows.identity(shape[0], *shape[2:])

    def run_cpu(self, images: list[torch.Tensor] | torch.Tensor, shape: tuple[int, ...],
                labels: torch.Tensor, index: torch.Tensor, epoch: int, batch: int,
                alloc: Alloc) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage on the CPU for B uint8 (C, H, W) images of one `shape` (B, C, H, W),
        written into ``alloc(shape, dtype)``: step 1 on the whole batch, then image by image
        in one pass where the stage allows it, else batched in cache-sized chunks, then step 3
        on the whole batch. Both give the same values. Returns (images, targets)."""
        g = self.generator("cpu", epoch, batch)
        if self.pixel_step:  # float 0-255, possibly cropped: the sources of the next steps
            x = images if isinstance(images, torch.Tensor) else torch.stack(images)
            images = self._pixels(x, g)
            shape = tuple(images.shape)
        pixelwise = getattr(self.preprocess, "pixelwise", None)
        affine = pixelwise() if pixelwise is not None else None
        plan = None
        if affine is not None and per_image(shape, torch.device("cpu")):
            plan = self._windows(shape, g, epoch, index)
        if plan is not None:
            out = alloc((shape[0], shape[1], *plan.size), torch.float32)
            apply_windows(images, plan, out, affine)
        else:
            x = images if isinstance(images, torch.Tensor) else torch.stack(images)
            per_image_bytes = 4 * max(1, x[0].numel()) if len(x) else 4
            step = max(1, CPU_CHUNK_BYTES // per_image_bytes)
            first = self._image_steps(x[:step], index[:step], g, epoch)
            out = alloc((x.shape[0], *first.shape[1:]), first.dtype)
            out[:step] = first
            for i in range(step, x.shape[0], step):
                out[i:i + step] = self._image_steps(x[i:i + step], index[i:i + step], g, epoch)
        result, targets = self._finish(out, labels, g)
        if result is not out:  # keep the batch in `out` (a worker's reused shared buffer)
            out.copy_(result)
        return out, targets
