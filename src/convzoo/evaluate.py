"""Evaluation: top-1, top-5 and cross-entropy over a loader, with optional test-time augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convzoo.runtime import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    world_size: int = 1,
    outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and top-1/top-5 accuracy (percent) of `model` over `batches`.

    `outputs`: when a list, each batch's softmax probabilities (float32 (B, K), CPU; the
    average over the views with TTA) and labels ((B,) int64, CPU) are appended to it, for
    per-sample reports (``eval --report``); this costs a device sync per batch.

    With `views` (test-time augmentation) the softmax probabilities of all views are averaged;
    the loss is then the negative log of the averaged probability of the true class.
    Per-batch sums stay on the device; the host reads them once at the end and adds them with
    ``math.fsum`` (correctly rounded, so the result does not depend on the order of the batches).

    ``world_size > 1`` (under torchrun): `batches` are this rank's share of the exact partition
    (whole batches of the one-process batching, ``data.sampler``). Every rank gathers every
    rank's per-batch sums and returns the figures over the whole split, equal bit for bit to
    one process evaluating it alone.
    """
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []  # per batch: (loss sum, top-1 hits, top-5 hits, images), float64
    for x, y in batches:
        inputs = views(x) if views is not None else [x]
        probs = None
        logits = None
        for view in inputs:
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out = model(view)
            out = out.float()
            if len(inputs) == 1:
                logits = out
            else:
                p = out.softmax(dim=1)
                probs = p if probs is None else probs + p
        if logits is not None:
            loss = F.cross_entropy(logits, y, reduction="sum")
            scores = logits
        else:
            probs = probs / len(inputs)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum")
            scores = probs
        if outputs is not None:
            p = probs if logits is None else logits.softmax(dim=1)
            outputs.append((p.float().cpu(), y.cpu()))
        k = min(5, scores.shape[1])
        topk = scores.topk(k, dim=1).indices  # (B, k)
        hits = topk == y[:, None]
        rows.append(torch.stack([loss.double(), hits[:, 0].sum().double(),
                                 hits.any(dim=1).sum().double(),
                                 torch.tensor(y.shape[0], dtype=torch.float64, device=device)]))
    model.train(was_training)
    table = torch.stack(rows).cpu().tolist() if rows else []  # one host sync
    if world_size > 1:  # every rank's batches, ranks in order = the one-process batch order
        shares: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(shares, table)
        table = [row for share in shares for row in share]
    loss_sum, top1, top5, count = (math.fsum(column) for column in zip(*table)) if table \
        else (0.0, 0.0, 0.0, 0.0)
    if count == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "count": 0}
    return {
        "loss": loss_sum / count,
        "top1": 100.0 * top1 / count,
        "top5": 100.0 * top5 / count,
        "count": int(count),
    }
