"""Evaluate and predict from a checkpoint alone: model, classes and preprocessing travel inside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convzoo import config as C
from convzoo.data.augment import build_eval_transform, tta_views
from convzoo.data.pipeline import make_loader, open_source
from convzoo.errors import ConvzooError
from convzoo.evaluate import evaluate
from convzoo.train import checkpoint as ckpt_io
from convzoo.train.setup import load_model_for_eval, resolve_runtime

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def evaluate_checkpoint(path: str | Path, *, data: str | None = None, split: str | None = None,
                        tta: str | None = None, which: str = "last", device: str = "auto",
                        batch_size: int | None = None, weights: str = "auto") -> dict[str, Any]:
    """Top-1/top-5/loss of a saved model on a split of its data (or of `data`).

    `batch_size` defaults to the run's ``train.eval_batch_size``, so the figures match the
    run's own last evaluation to the last digit. `weights`: auto (the EMA when the run kept
    one, as its summary), ema or raw.
    """
    ckpt = ckpt_io.load_checkpoint(path, which)
    _, weights_used = ckpt_io.select_weights(ckpt, weights)
    cfg = C.from_dict(ckpt["config"])
    rt = resolve_runtime(C.replace(cfg.train, device=device))
    if data is not None:  # other data: no carving, no limit — evaluate what is there
        cfg = C.replace(cfg, data=C.replace(cfg.data, source=data, val_fraction=0.0, limit=0))
    augment_cfg = cfg.augment if tta is None else C.replace(cfg.augment, tta=tta)
    cfg = C.replace(cfg, augment=augment_cfg)
    source = open_source(cfg)
    split = split or ckpt["eval_split"]
    if split not in source.splits:
        raise ConvzooError(f"--split {split}: data source {cfg.data.source} has splits "
                           f"{', '.join(sorted(source.splits))}")
    if list(source.classes) != list(ckpt["classes"]):
        raise ConvzooError(f"{cfg.data.source}: its classes differ from the checkpoint's "
                           f"({len(source.classes)} vs {len(ckpt['classes'])} classes)")
    model, preprocess = load_model_for_eval(ckpt, rt.device, weights)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(source, split, cfg, rt.device, preprocess, train=False,
                         batch_size=batch_size)
    views = ((lambda x: tta_views(x, augment_cfg.tta, augment_cfg))
             if augment_cfg.tta != "none" else None)
    result = evaluate(model, loader, device=rt.device, amp_dtype=rt.amp_dtype,
                      channels_last=rt.channels_last, views=views)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model": ckpt["model_name"], "data": cfg.data.source, "split": split,
            "epoch": ckpt["epoch"], "params": params, "tta": augment_cfg.tta,
            "weights": weights_used, **result}


def collect_images(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConvzooError(f"{p}: no images found")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise ConvzooError(f"image not found: {p}")
    return files


def read_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """One image file as (C, H, W) uint8 matching the training images' channels and size."""
    channels, height, width = shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ConvzooError(f"cannot read image {path}: {e}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@torch.no_grad()
def predict_files(path: str | Path, images: list[Path], *, topk: int = 5, which: str = "last",
                  device: str = "auto", weights: str = "auto") -> list[dict[str, Any]]:
    """Top-k classes and probabilities for each image file (`weights`: auto, ema or raw)."""
    ckpt = ckpt_io.load_checkpoint(path, which)
    cfg = C.from_dict(ckpt["config"])
    rt = resolve_runtime(C.replace(cfg.train, device=device))
    model, preprocess = load_model_for_eval(ckpt, rt.device, weights)
    transform = build_eval_transform(cfg.augment)
    files = collect_images(images)
    shape = tuple(ckpt["image_shape"])
    classes = ckpt["classes"]
    k = min(topk, len(classes))
    rows = []
    for start in range(0, len(files), 256):
        chunk = files[start : start + 256]
        x = torch.stack([read_image(f, shape) for f in chunk]).to(rt.device)
        probs = model(transform(preprocess(x))).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for f, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
            rows.append({"file": str(f), "top": [{"class": classes[i], "prob": v}
                                                 for v, i in zip(values, indices)]})
    return rows
