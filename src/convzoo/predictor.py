"""Images in, a trained model's outputs out: the one composition every consumer of a model uses.

    uint8 or float images (B, C, H, W), 0-255, at the run's geometry
      -> preprocess (the statistics fitted on the run's training split)
      -> eval view (the centre crop where the recipe crops)           [prepare]
      -> test-time augmentation views (augment.tta)
      -> model, on the runtime's device, precision and memory format  [scores]
      -> logits of the one view, or softmax probabilities averaged over the views

Who uses it: ``evaluate`` (training's per-epoch evaluation, ``convzoo eval``), whose loaders
have already preprocessed and cropped each batch (the stage does it, on the CPU fast path
too), so it calls :meth:`Predictor.scores`; ``api.Classifier`` (``predict``,
``probabilities``: images in, :meth:`Predictor.probabilities`); and ``convzoo export``, whose
ONNX graph is :meth:`Predictor.forward`: preprocess, eval view and model, without TTA and
without autocast. The TTA views of a config are :func:`tta_views_of`, for all three.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from convzoo import config as C
from convzoo.data.transforms.augment import build_eval_transform, tta_views
from convzoo.data.transforms.preprocess import Preprocessor
from convzoo.runtime import Runtime, autocast
from convzoo.saved import load_model_for_eval

# Test-time augmentation: a prepared batch -> its views (each of the eval view's shape).
Views = Callable[[Tensor], list[Tensor]]


def tta_views_of(augment: C.AugmentConfig, tta: str | None = None) -> Views | None:
    """The test-time augmentation of `augment` (of `tta` instead of ``augment.tta`` when
    given, checked as ``augment.tta`` is) as a function batch -> views; None for ``none``."""
    if tta is not None:
        augment = C.replace(augment, tta=tta)
    if augment.tta == "none":
        return None
    return lambda x: tta_views(x, augment.tta, augment)


class Predictor(nn.Module):
    """A model with what feeds it images and how it runs (module docstring).

    ``preprocess`` and ``view`` may be None: the batches then arrive prepared (a loader's).
    ``views``: the TTA function (:func:`tta_views_of`), None for one view. ``runtime``: the
    device, autocast dtype and memory format :meth:`scores` runs the model with (default:
    the CPU in fp32).

    A module so that ``export`` can trace it: its submodules are ``model`` and
    ``preprocess``, the names the ONNX graph's initializers have always had.
    """

    def __init__(self, model: nn.Module, runtime: Runtime | None = None, *,
                 preprocess: Preprocessor | None = None,
                 view: Callable[[Tensor], Tensor] | None = None,
                 views: Views | None = None) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.view = view
        self.views = views
        self.runtime = runtime or Runtime(torch.device("cpu"), None, False)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], runtime: Runtime, weights: str = "auto",
                        tta: str | None = None) -> Predictor:
        """The model a checkpoint dict describes (``saved.read_checkpoint``; ``weights``:
        auto, ema or raw) on `runtime`, with the run's preprocessing, eval view and TTA
        (``augment.tta``, or `tta`)."""
        model, preprocess = load_model_for_eval(ckpt, runtime.device, weights)
        if runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        augment = C.from_dict(ckpt["config"]).augment
        return cls(model, runtime, preprocess=preprocess, view=build_eval_transform(augment),
                   views=tta_views_of(augment, tta))

    def using(self, *, views: Views | None) -> Predictor:
        """The same model, preprocessing and runtime with other TTA views."""
        return Predictor(self.model, self.runtime, preprocess=self.preprocess, view=self.view,
                         views=views)

    @contextlib.contextmanager
    def in_eval_mode(self) -> Iterator[None]:
        """The model in eval mode for the block, then back in the mode it was in."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def prepare(self, images: Tensor) -> Tensor:
        """Preprocessing, then the eval view (each where this predictor has one)."""
        x = images if self.preprocess is None else self.preprocess(images)
        return x if self.view is None else self.view(x)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, K) of the eval view of `images`: :meth:`prepare`, then the model. No TTA,
        no runtime: the graph ``convzoo export`` writes as ONNX."""
        return self.model(self.prepare(images))

    def scores(self, x: Tensor) -> tuple[Tensor, bool]:
        """The model's answer for a prepared batch `x` (preprocessed, in the eval view): float32
        (B, K) logits of the one view, or with TTA the softmax probabilities averaged over the
        views; the flag says which (True: probabilities). Each view runs in the runtime's
        precision and memory format; the outputs are cast to float32 before they are
        combined."""
        rt = self.runtime
        inputs = self.views(x) if self.views is not None else [x]
        probs = None
        for view in inputs:
            if rt.channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            with autocast(rt.device, rt.amp_dtype):
                out = self.model(view)
            out = out.float()
            if len(inputs) == 1:
                return out, False
            p = out.softmax(dim=1)
            probs = p if probs is None else probs + p
        assert probs is not None
        return probs / len(inputs), True

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax probabilities (B, K), float32 on the CPU, of images at the run's geometry."""
        out, are_probabilities = self.scores(self.prepare(images.to(self.runtime.device)))
        return (out if are_probabilities else out.softmax(dim=1)).cpu()
