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
from convzoo.data.augment import build_eval_transform, tta_views
from convzoo.data.images import DEFAULT_LIMITS, Geometry, Limits, collect_files, decode_file
from convzoo.data.pipeline import heldout_split, make_loader, open_source, remap_classes
from convzoo.errors import ConvzooError
from convzoo.evaluate import evaluate
from convzoo.train import checkpoint as ckpt_io
from convzoo.train.setup import load_model_for_eval, resolve_runtime


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


def evaluate_checkpoint(path: str | Path, *, data: str | None = None, split: str | None = None,
                        tta: str | None = None, which: str = "last", device: str = "auto",
                        batch_size: int | None = None, weights: str = "auto",
                        data_root: str | None = None) -> dict[str, Any]:
    """Top-1/top-5/loss of a saved model on a split of its data (or of `data`).

    `split` defaults to the split the run evaluated on, or, for new `data`, to that data's
    own held-out split (test, else val, else its only split). `batch_size` defaults to the
    run's ``train.eval_batch_size``, so the figures match the run's own last evaluation to the
    last digit. `weights`: auto (the EMA when the run kept one, as its summary), ema or raw.
    `data_root`: where downloads and caches go (default: the user's default root). Under
    torchrun each process evaluates its share of whole batches and every process returns the
    figures of the whole split, equal to one process's (``evaluate.evaluate``).
    """
    ckpt = ckpt_io.load_checkpoint(path, which)
    _, weights_used = ckpt_io.select_weights(ckpt, weights)
    cfg = C.from_dict(ckpt["config"])
    rt = resolve_runtime(C.replace(cfg.train, device=device))
    geometry = checkpoint_geometry(ckpt)
    data_cfg = _trusted_data(cfg.data, data_root)
    if data is not None:  # other data: no carving, no limit — evaluate what is there
        data_cfg = C.replace(data_cfg, source=data, val_fraction=0.0, limit=0, loader="auto")
    augment_cfg = cfg.augment if tta is None else C.replace(cfg.augment, tta=tta)
    cfg = C.replace(cfg, data=data_cfg, augment=augment_cfg)
    source = remap_classes(open_source(cfg, geometry=geometry), list(ckpt["classes"]))
    if split is None:
        split = ckpt["eval_split"] if data is None else heldout_split(list(source.splits))
    if split not in source.splits:
        raise ConvzooError(f"--split {split}: data source {cfg.data.source} has splits "
                           f"{', '.join(sorted(source.splits))}")
    model, preprocess = load_model_for_eval(ckpt, rt.device, weights)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(source, split, cfg, rt.device, preprocess, train=False,
                         batch_size=batch_size, rank=rt.rank, world_size=rt.world_size)
    views = ((lambda x: tta_views(x, augment_cfg.tta, augment_cfg))
             if augment_cfg.tta != "none" else None)
    result = evaluate(model, loader, device=rt.device, amp_dtype=rt.amp_dtype,
                      channels_last=rt.channels_last, views=views, world_size=rt.world_size)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model": ckpt["model_name"], "data": cfg.data.source, "split": split,
            "epoch": ckpt["epoch"], "params": params, "tta": augment_cfg.tta,
            "weights": weights_used, **result}


def read_image(path: Path, geometry: Geometry, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """One image file as uint8 (C, H, W) of `geometry`: the decoder and geometry training used."""
    return geometry.apply(decode_file(path, limits))


@torch.no_grad()
def predict_files(path: str | Path, images: list[Path], *, topk: int = 5, which: str = "last",
                  device: str = "auto", weights: str = "auto") -> list[dict[str, Any]]:
    """Top-k classes and probabilities for each image file (folders: their images, sorted;
    `weights`: auto, ema or raw)."""
    ckpt = ckpt_io.load_checkpoint(path, which)
    cfg = C.from_dict(ckpt["config"])
    rt = resolve_runtime(C.replace(cfg.train, device=device))
    model, preprocess = load_model_for_eval(ckpt, rt.device, weights)
    transform = build_eval_transform(cfg.augment)
    geometry = checkpoint_geometry(ckpt)
    limits = Limits.from_config(C.DataConfig())  # the user's bounds, not the checkpoint's
    files = collect_files(images)
    classes = ckpt["classes"]
    k = min(topk, len(classes))
    rows = []
    for start in range(0, len(files), 256):
        chunk = files[start : start + 256]
        x = torch.stack([read_image(f, geometry, limits) for f in chunk]).to(rt.device)
        probs = model(transform(preprocess(x))).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for f, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
            rows.append({"file": str(f), "top": [{"class": classes[i], "prob": v}
                                                 for v, i in zip(values, indices)]})
    return rows
