"""The Python API for a trained model, for notebooks and scripts: load it, predict, evaluate.

    import convzoo
    clf = convzoo.load("runs/quickstart")           # run dir, last.pt / best.pt, model.safetensors
    rows = clf.predict(["cat.jpg", "photos/"], topk=3)   # files, folders, globs, PIL, uint8
    probs = clf.probabilities(pil_images)          # (N, classes) float32
    clf.evaluate()                                  # the run's own eval split: top1, top5, loss
    clf.evaluate("path/to/folder", report=True)     # other data, with the evaluation report

The command line is a thin layer over these, so both give the same numbers: ``convzoo eval``
is ``load(...).evaluate(...)`` and ``convzoo predict`` is ``load(...).predict(...)``. Training
(``convzoo.train``) is ``convzoo.training.loop.train``: using a model needs nothing from the
training package, and this module imports none of it.

A :class:`Classifier` feeds images to the model as training did: the one decoder of
``convzoo.data.images``, the run's ``Geometry`` (channels, size, crop or squash), its fitted
preprocessing, its eval view (centre crop) and its test-time augmentation, on the device and
precision ``convzoo eval`` uses.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from convzoo import config as C
from convzoo.data.images import (
    DEFAULT_LIMITS,
    SPLITS,
    Geometry,
    Limits,
    collect_files,
    decode_file,
    from_pil,
)
from convzoo.data.progress import progress
from convzoo.data.transforms.preprocess import Preprocessor
from convzoo.errors import ConvzooError
from convzoo.evaluate import evaluate
from convzoo.models.registry import CUSTOM_PREFIX, supplied
from convzoo.outputs import check_output_dir
from convzoo.predictor import Predictor, tta_views_of
from convzoo.runtime import Runtime, resolve_runtime
from convzoo.saved import checkpoint_geometry, read_checkpoint, select_weights

# What `predict` and `probabilities` take: one of these, or a sequence of them.
ImageInput = str | Path | Image.Image | torch.Tensor | np.ndarray

# ----------------------------------------------------------------------------- loading


def load(run_or_ckpt: str | Path, *, which: str = "last", weights: str = "auto",
         device: str = "auto", model: nn.Module | Callable[..., nn.Module] | None = None
         ) -> Classifier:
    """A trained model, ready to predict and evaluate.

    run_or_ckpt: a run directory (its ``<which>.pt``; ``model.safetensors`` when last.pt is
        gone), a ``last.pt`` / ``best.pt`` file, or a convzoo ``.safetensors`` file (a run's
        model.safetensors or ``convzoo export --format safetensors``).
    which: ``last`` or ``best`` checkpoint of a run directory.
    weights: ``auto`` (the EMA of the weights when the run kept one, as its figures), ``ema``
        or ``raw`` (the trained weights); a .safetensors file holds one of them.
    device: ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
    model: for a run of a module passed to ``convzoo.train(model=...)`` as an object (model
        ``custom:...``, which no name rebuilds): the module to load the weights into, or its
        factory ``callable(num_classes) -> nn.Module``.
    """
    if which not in ("last", "best"):
        raise ConvzooError(f"which={which!r}: choose last or best")
    with supplied(CUSTOM_PREFIX, model) if model is not None else contextlib.nullcontext():
        ckpt = read_checkpoint(run_or_ckpt, which, weights)
        return Classifier.from_checkpoint(ckpt, weights=weights, device=device,
                                          source=Path(run_or_ckpt))


def _trusted_data(cfg: C.DataConfig, data_root: str | None) -> C.DataConfig:
    """`cfg` (a checkpoint's) with the places written to and the decoding limits taken from
    this user's configuration (`data_root`, else the default) instead: a checkpoint is not
    trusted to say where files go (data roots: downloads, decode caches)."""
    mine = C.DataConfig()
    return C.replace(cfg, root=data_root or mine.root, max_image_pixels=mine.max_image_pixels,
                     max_member_mb=mine.max_member_mb)


def read_image(path: Path, geometry: Geometry, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """One image file as uint8 (C, H, W) of `geometry`: the decoder and geometry training used."""
    return geometry.apply(decode_file(path, limits))


def _run_dir(source: Path) -> Path | None:
    """The run directory `source` (a run directory or a file inside one) belongs to."""
    folder = source if source.is_dir() else source.parent
    return folder if (folder / "config.yaml").is_file() else None


@dataclass
class Classifier:
    """A trained model with everything that feeds it images as training did (:func:`load`): a
    front over its :class:`~convzoo.predictor.Predictor` (preprocessing, eval view, TTA, the
    model on its runtime) that turns the user's inputs into images of the run's geometry and a
    data source into a loader."""

    predictor: Predictor  # the model (eval mode, on runtime.device) and what feeds it
    geometry: Geometry  # channels, size and resize rule every image is brought to
    classes: list[str]  # class names, in the order of the model's outputs
    config: C.Config  # the run's resolved config (data: its eval split; augment: eval view, TTA)
    weights: str  # which weights were loaded: "ema" or "raw"
    source: Path  # what was loaded
    epoch: int  # epochs the weights were trained for
    eval_split: str  # the split the run evaluated on

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], *, weights: str = "auto",
                        device: str = "auto", source: str | Path = "") -> Classifier:
        """A Classifier from a checkpoint dict (``saved.read_checkpoint``), on the device and
        at the precision ``convzoo eval`` uses (the run's ``train`` settings, this device)."""
        cfg = C.from_dict(ckpt["config"])
        rt = resolve_runtime(C.replace(cfg.train, device=device))
        _, used = select_weights(ckpt, weights)
        return cls(Predictor.from_checkpoint(ckpt, rt, weights), checkpoint_geometry(ckpt),
                   list(ckpt["classes"]), cfg, used, Path(source), int(ckpt["epoch"]),
                   str(ckpt["eval_split"]))

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def preprocess(self) -> Preprocessor:
        """The statistics fitted on the run's training split."""
        assert self.predictor.preprocess is not None
        return self.predictor.preprocess

    @property
    def runtime(self) -> Runtime:
        """Device, autocast dtype, channels_last (as ``convzoo eval`` runs)."""
        return self.predictor.runtime

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def model_name(self) -> str:
        return self.config.model.name

    def __repr__(self) -> str:
        g = self.geometry
        return (f"Classifier({self.model_name}, {len(self.classes)} classes, input "
                f"{g.channels}x{g.height}x{g.width} ({g.resize}), {self.weights} weights of "
                f"epoch {self.epoch}, from {self.source}, on {self.device})")

    # ------------------------------------------------------------------------- images

    def _items(self, inputs: ImageInput | Sequence[ImageInput]
               ) -> list[tuple[str | None, Callable[[], torch.Tensor]]]:
        """(file name or None, a function giving uint8 (C, H, W) of the run's geometry) for
        every image in `inputs`.

        Files are decoded only when their batch comes, so a folder of any size fits."""
        if isinstance(inputs, torch.Tensor | np.ndarray) and inputs.ndim == 4:
            inputs = list(inputs)  # a batch: (N, C, H, W) tensor, (N, H, W, C) array
        elif not isinstance(inputs, list | tuple):
            inputs = [inputs]
        limits = Limits.from_config(C.DataConfig())  # the user's bounds, not the checkpoint's
        g = self.geometry
        items: list[tuple[str | None, Callable[[], torch.Tensor]]] = []
        for i, x in enumerate(inputs):
            if isinstance(x, str | Path):
                items += [(str(f), lambda f=f: read_image(f, g, limits))
                          for f in collect_files([x])]
            elif isinstance(x, Image.Image):
                items.append((None, lambda x=x: g.apply(from_pil(x))))
            elif isinstance(x, torch.Tensor | np.ndarray):
                items.append((None, lambda x=x, i=i: g.apply(_pixels(x, i))))
            else:
                raise ConvzooError(f"image {i}: {type(x).__name__} is not an image (give file "
                                   "paths, folders, glob patterns, PIL images or uint8 arrays)")
        if not items:
            raise ConvzooError("no images given")
        return items

    @torch.no_grad()
    def probabilities(self, inputs: ImageInput | Sequence[ImageInput], *,
                      batch_size: int | None = None, tta: str | None = None) -> torch.Tensor:
        """Class probabilities (N, classes), float32 on the CPU, one row per image of `inputs`.

        inputs: a file, folder (its images, recursively, sorted) or glob pattern; a PIL image;
            a uint8 torch tensor (C, H, W) or batch (N, C, H, W) (torchvision's layout); a uint8
            NumPy array (H, W), (H, W, C) or batch (N, H, W, C) (PIL's layout, RGB); or a list
            of these.
            Every image is brought to the run's geometry (channels, size, crop or squash).
        batch_size: images per forward (default: the run's ``train.eval_batch_size``).
        tta: test-time augmentation (default: the run's ``augment.tta``).
        """
        return self._predict(inputs, batch_size, tta)[1]

    def _predict(self, inputs: ImageInput | Sequence[ImageInput], batch_size: int | None,
                 tta: str | None) -> tuple[list[str | None], torch.Tensor]:
        items = self._items(inputs)
        batch = batch_size or self.config.train.eval_batch_size
        if batch < 1:
            raise ConvzooError(f"batch_size={batch}: must be at least 1")
        predictor = self._with_tta(tta)
        chunks = []
        with predictor.in_eval_mode(), progress(len(items), "predicting", unit="img") as bar:
            for start in range(0, len(items), batch):
                x = torch.stack([read() for _, read in items[start:start + batch]])
                chunks.append(predictor.probabilities(x))
                bar.update(x.shape[0])
        return [name for name, _ in items], torch.cat(chunks)

    def _with_tta(self, tta: str | None) -> Predictor:
        """The predictor with the test-time augmentation `tta` (None: the run's)."""
        if tta is None:
            return self.predictor
        return self.predictor.using(views=tta_views_of(self.config.augment, tta))

    @torch.no_grad()
    def predict(self, inputs: ImageInput | Sequence[ImageInput], *, topk: int = 5,
                batch_size: int | None = None, tta: str | None = None) -> list[dict[str, Any]]:
        """The `topk` most probable classes of each image (inputs as :meth:`probabilities`).

        Returns one dict per image, in input order: ``{"index": i, "file": path or None,
        "top": [{"class": name, "index": class index, "prob": probability}, ...]}``.
        """
        if topk < 1:
            raise ConvzooError(f"topk={topk}: must be at least 1")
        names, probs = self._predict(inputs, batch_size, tta)
        top = probs.topk(min(topk, len(self.classes)), dim=1)
        return [{"index": i, "file": name,
                 "top": [{"class": self.classes[c], "index": c, "prob": p}
                         for p, c in zip(values, indices)]}
                for i, (name, values, indices) in enumerate(
                    zip(names, top.values.tolist(), top.indices.tolist()))]

    # ------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, data: str | Path | None = None, *, split: str | None = None,
                 tta: str | None = None, batch_size: int | None = None,
                 data_root: str | None = None, report: str | Path | bool | None = None,
                 topk: int = 5) -> dict[str, Any]:
        """Top-1 / top-5 (%) and mean cross-entropy on a labelled split.

        data: None (the run's own data and eval split: the figures of its last evaluation, to
            the last digit), or any ``--data`` source: a data name, an image folder (with
            splits, test-only or a split-less ``<class>/*``), an archive or a pack, holding
            all or some of the run's classes (matched by name).
        split: the split to evaluate (default: the run's eval split, or for other data its
            test split, else val, else its only split). tta: test-time augmentation (default:
            the run's). batch_size: default the run's ``train.eval_batch_size``.
        data_root: where downloads and decode caches go (default: the user's default root;
            never the checkpoint's).
        report: write the evaluation report (``convzoo.eval_report.write_report``: confusion
            matrix, per-class table, calibration, confident mistakes, predictions.csv) into
            this folder; True: ``<run dir>/report``. Its figures also go to the run's
            TensorBoard when the run keeps one. The result then has ``report`` (the folder)
            and ``ece``. topk: classes per row of predictions.csv.
        """
        # Imported here: the data pipeline (its sources pull in scikit-learn: 2.7 s measured on
        # top of this module) is for evaluating; load() and predict() never pay for it.
        from convzoo.data.loading.pipeline import (
            heldout_split,
            make_loader,
            open_source,
            remap_classes,
        )

        cfg = self.config
        data_cfg = _trusted_data(cfg.data, data_root)
        if data is not None:  # other data: no carving, no limit — evaluate what is there
            data_cfg = C.replace(data_cfg, source=str(data), val_fraction=0.0, limit=0,
                                 loader="auto")
        augment_cfg = cfg.augment if tta is None else C.replace(cfg.augment, tta=tta)
        cfg = C.replace(cfg, data=data_cfg, augment=augment_cfg)
        report_dir = self._report_dir(report, data)  # checked before any work
        source = remap_classes(open_source(cfg, geometry=self.geometry), self.classes)
        # A split-less folder (<class>/*) loads as one split named "train"; evaluated, it is
        # all of the folder, whatever split the user calls it: say "all", accept any name.
        flat = (data is not None and list(source.splits) == ["train"] and Path(data).is_dir()
                and not (Path(data) / "train").is_dir())
        if flat and split in (None, "all", *SPLITS):
            split = "train"
        if split is None:
            split = self.eval_split if data is None else heldout_split(list(source.splits))
        if flat and split not in source.splits:
            raise ConvzooError(f"--split {split}: {data} is a folder without splits "
                               "(<class>/*): omit --split, or --split all")
        if split not in source.splits:
            raise ConvzooError(f"--split {split}: data source {cfg.data.source} has splits "
                               f"{', '.join(sorted(source.splits))}")
        rt = self.runtime
        loader = make_loader(source, split, cfg, rt.device, self.preprocess, train=False,
                             batch_size=batch_size, rank=rt.rank, world_size=rt.world_size)
        outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = (
            [] if report_dir is not None else None)
        try:  # the loader preprocesses and takes the eval view; the predictor does the rest
            result = evaluate(self._with_tta(tta), loader, outputs=outputs,
                              world_size=rt.world_size, progress=f"evaluating {'all' if flat else split}",
                              total=len(source.splits[split]) // rt.world_size)
        finally:
            loader.close()
        if outputs is not None and rt.world_size > 1:  # the report covers every rank's share
            shares: list[Any] = [None] * rt.world_size
            torch.distributed.all_gather_object(shares, outputs)
            outputs = [batch for share in shares for batch in share]
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        out = {"model": self.model_name, "data": cfg.data.source,
               "split": "all" if flat else split,
               "epoch": self.epoch, "params": params, "tta": augment_cfg.tta,
               "weights": self.weights, **result}
        if report_dir is not None and rt.is_main:  # under torchrun: one writer
            assert outputs is not None
            out.update(self._write_report(report_dir, outputs, source, split, topk))
        return out

    def _report_dir(self, report: str | Path | bool | None, data: Any) -> Path | None:
        """The report folder `report` names, checked (not created) before any work."""
        if report is None or report is False:
            return None
        if report is not True and str(report):
            out = Path(report)
        elif (run_dir := _run_dir(self.source)) is not None:
            out = run_dir / "report"
        else:
            out = self.source.with_name(f"{self.source.stem}-report")
        # Imported here: the report's module brings matplotlib and scikit-learn (3.9 s measured
        # on top of this module), which only a report needs.
        from convzoo.eval_report import is_report_dir

        inputs = [self.source] + ([Path(data)] if isinstance(data, (str, Path)) else [])
        return check_output_dir(out, option="--report", what="an evaluation report",
                                is_ours=is_report_dir, inputs=inputs)

    def _write_report(self, out: Path, outputs: list[tuple[torch.Tensor, torch.Tensor]],
                      source: Any, split: str, topk: int) -> dict[str, Any]:
        """``write_report`` of the collected probabilities, with the split's uint8 images (the
        grid of mistakes) and file names where the data has them; to the run's loggers too
        (TensorBoard, MLflow, W&B: ``trackers.open_for_report``)."""
        from convzoo.eval_report import expected_calibration_error, write_report  # as above

        probs = torch.cat([p for p, _ in outputs])
        labels = torch.cat([y for _, y in outputs])
        files = write_report(out, probs, labels, self.classes, images=source.view(split),
                             names=source.splits[split].names, topk=topk,
                             about={"data": source.name, "split": split,
                                    "weights": self.weights, "epoch": self.epoch})
        # percent, like top1 and the text ("ECE 9.66%"): one unit for every rate in the JSON
        ece = 100 * expected_calibration_error(probs.double().numpy(), labels.numpy())
        run_dir = _run_dir(self.source)
        if run_dir is not None:
            from convzoo import trackers  # imports matplotlib (report.py): only for a report

            figures = json.loads(files["report_json"].read_text())
            logged = trackers.open_for_report(self.config, run_dir)
            logged.log_report(trackers.step_of_epoch(run_dir, self.epoch), f"report/{split}",
                              out, {"top1": figures["top1"], "ece": ece})
            logged.close(None)
        return {"report": str(out), "ece": ece}


def _pixels(x: torch.Tensor | np.ndarray, i: int) -> torch.Tensor:
    """One in-memory image as uint8 (C, H, W): torch tensors are (C, H, W) or (H, W), NumPy
    arrays (H, W, C) or (H, W); 2 or 4 channels lose their alpha."""
    if x.dtype not in (torch.uint8, np.uint8):
        raise ConvzooError(f"image {i}: pixels must be uint8 (0-255), got {x.dtype} (decoded "
                           "images: torchvision.io.decode_image or np.asarray(PIL image))")
    t = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x  # a writable copy
    if t.ndim == 2:
        t = t[None]
    elif isinstance(x, np.ndarray) and t.ndim == 3:
        t = t.permute(2, 0, 1)
    if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4) or min(t.shape[1:]) < 1:
        layout = "(H, W, C)" if isinstance(x, np.ndarray) else "(C, H, W)"
        raise ConvzooError(f"image {i}: shape {tuple(x.shape)} is not an image {layout} with "
                           "1 to 4 channels")
    return t[:1] if t.shape[0] == 2 else t[:3] if t.shape[0] == 4 else t
