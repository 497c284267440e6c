"""Evaluate and predict from a checkpoint alone: model, classes, preprocessing and the input
geometry travel inside it.

Images meet a trained model the way its training images did: the one decoder of
`convzoo.data.images`, then the run's own `Geometry` (channels, size, crop or squash), then
its preprocessing and eval view. New data for ``eval --data`` may be any image folder (with
splits, test-only, or split-less ``<class>/*``), archive or pack, holding all or some of the
run's classes (matched by name).

A checkpoint is not trusted to say where files go: data roots (downloads, decode caches) and
decoding limits come from this user's configuration, never from the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from convzoo import config as C
from convzoo.data.images import DEFAULT_LIMITS, Geometry, Limits, decode_file
from convzoo.errors import ConvzooError
from convzoo.training import checkpoint as ckpt_io


def checkpoint_geometry(ckpt: dict[str, Any]) -> Geometry:
    """The input geometry a checkpoint was trained with.

    Checkpoints written before the geometry was recorded: their stored image shape, squashed
    to it as the in-memory loader and predict then did (cropped for a streamed run)."""
    if ckpt.get("geometry") is not None:
        return Geometry.from_state(ckpt["geometry"])
    c, h, w = (int(v) for v in ckpt["image_shape"])
    streamed = ckpt.get("config", {}).get("data", {}).get("loader") == "stream"
    return Geometry(c, h, w, "crop" if streamed else "squash")


def _trusted_data(cfg: C.DataConfig, data_root: str | None) -> C.DataConfig:
    """`cfg` (a checkpoint's) with the places written to and the decoding limits taken from
    this user's configuration (`data_root`, else the default) instead."""
    mine = C.DataConfig()
    return C.replace(cfg, root=data_root or mine.root, max_image_pixels=mine.max_image_pixels,
                     max_member_mb=mine.max_member_mb)


def read_checkpoint(path: str | Path, which: str = "last", weights: str = "auto"
                    ) -> dict[str, Any]:
    """What eval, predict, export and ``convzoo.load`` read a model from, as a checkpoint dict.

    `path`: a run directory (its ``<which>.pt``; for ``last``, its ``model.safetensors`` when
    last.pt is gone), a ``.pt`` checkpoint, or a convzoo ``.safetensors`` file (a run's
    model.safetensors or an export). A weights file becomes a checkpoint with the keys
    ``load_model_for_eval``, ``checkpoint_geometry`` and ``select_weights`` use (``model``, and
    ``ema`` when the file holds the EMA weights); it holds one set of weights, so `weights`
    must be ``auto`` or that set.
    """
    p = Path(path)
    if p.is_dir() and not (p / f"{which}.pt").exists() and which == "last" \
            and (p / "model.safetensors").is_file():
        p = p / "model.safetensors"
    if p.suffix != ".safetensors":
        return ckpt_io.load_checkpoint(p, which)
    from convzoo.models.weights import check_file_weights, load_weights_file

    model, meta = load_weights_file(p)
    check_file_weights(p, meta, weights)
    if meta["preprocess"] is None:
        raise ConvzooError(f"{p}: its preprocessing statistics are not in the file (too large "
                           "for metadata, e.g. ZCA, or written by an older convzoo); use the "
                           "run's last.pt or best.pt")
    geometry = meta["geometry"]
    if geometry is None and meta["image_shape"] is None:
        raise ConvzooError(f"{p}: no input geometry in its metadata (written by an older "
                           "convzoo); use the run's last.pt or best.pt")
    config = meta["config"]
    if config is None:  # an older export: the eval view from its metadata, no data recorded
        view = meta["eval_view"] or {}
        config = C.to_dict(C.Config(
            model=C.ModelConfig(meta["model"], meta["model_kwargs"]),
            augment=C.AugmentConfig(crop=int(view.get("crop", 0)), random_resized_crop=int(
                view.get("random_resized_crop", 0)))))
    state = model.state_dict()
    return {"format": ckpt_io.FORMAT, "weights_file": str(p), "config": config,
            "config_recorded": meta["config"] is not None,
            "model_name": meta["model"], "model_kwargs": meta["model_kwargs"],
            "num_classes": meta["num_classes"], "in_chans": meta["in_chans"],
            "classes": meta["classes"] or [str(i) for i in range(meta["num_classes"])],
            "image_shape": meta["image_shape"], "geometry": geometry,
            "eval_split": meta["eval_split"] or "test", "preprocess": meta["preprocess"],
            "epoch": meta["epoch"] or 0, "model": state,
            "ema": {"module": state} if meta["weights"] == "ema" else None}


def evaluate_checkpoint(path: str | Path, *, data: str | None = None, split: str | None = None,
                        tta: str | None = None, which: str = "last", device: str = "auto",
                        batch_size: int | None = None, weights: str = "auto",
                        data_root: str | None = None, report: str | Path | None = None,
                        topk: int = 5) -> dict[str, Any]:
    """Top-1/top-5/loss of a saved model on a split of its data (or of `data`): the CLI's
    ``convzoo eval``, through the Python API's ``convzoo.load(...).evaluate(...)``
    (``convzoo.api.Classifier.evaluate`` documents the arguments). Under torchrun each process
    evaluates its share of whole batches and every process returns the figures of the whole
    split, equal to one process's (``evaluate.evaluate``)."""
    from convzoo.api import load

    clf = load(path, which=which, weights=weights, device=device)
    return clf.evaluate(data, split=split, tta=tta, batch_size=batch_size, data_root=data_root,
                        report=report, topk=topk)


def read_image(path: Path, geometry: Geometry, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """One image file as uint8 (C, H, W) of `geometry`: the decoder and geometry training used."""
    return geometry.apply(decode_file(path, limits))


def predict_files(path: str | Path, images: list[Path], *, topk: int = 5, which: str = "last",
                  device: str = "auto", weights: str = "auto") -> list[dict[str, Any]]:
    """Top-k classes and probabilities for each image file (folders: their images, sorted;
    glob patterns: their matches; `weights`: auto, ema or raw): ``convzoo predict``, through
    ``convzoo.load(...).predict(...)``."""
    from convzoo.api import load

    return load(path, which=which, weights=weights, device=device).predict(images, topk=topk)
