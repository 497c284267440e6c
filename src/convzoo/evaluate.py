"""Evaluation: top-1, top-5 and cross-entropy over a loader, with optional test-time augmentation.

The model's outputs for a batch come from ``predictor.Predictor.scores`` (views, precision,
memory format), the one composition eval, predict and export share; this module adds them up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convzoo.data.progress import progress as show_progress
from convzoo.predictor import Predictor
from convzoo.runtime import Runtime


@torch.no_grad()
def evaluate(
    model: nn.Module | Predictor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    world_size: int = 1,
    outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: str | None = None,
    total: int | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and top-1/top-5 accuracy (percent) of `model` over `batches`.

    `model`: a :class:`~convzoo.predictor.Predictor` (the model with its runtime and TTA views:
    what training, ``convzoo eval`` and the API pass), or a bare model, run as
    ``Predictor(model, Runtime(device, amp_dtype, channels_last), views=views)``. `batches`:
    (images, labels) already preprocessed and in the eval view, as a loader yields them.

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

    `progress`: a description, to show progress over `total` images (``convzoo eval``: a bar on
    a terminal, log lines otherwise; training's per-epoch evaluation passes None: its epoch
    line says enough). Counting images reads batch shapes only, never the device.
    """
    predictor = model if isinstance(model, Predictor) else Predictor(
        model, Runtime(device or torch.device("cpu"), amp_dtype, channels_last), views=views)
    device = predictor.runtime.device
    rows: list[torch.Tensor] = []  # per batch: (loss sum, top-1 hits, top-5 hits, images), float64
    with predictor.in_eval_mode(), show_progress(total, progress or "", unit="img",
                                                 enabled=progress is not None) as bar:
        for x, y in batches:
            bar.update(y.shape[0])
            scores, are_probabilities = predictor.scores(x)
            if are_probabilities:  # TTA: the log of the averaged probability of the true class
                loss = F.nll_loss(scores.clamp_min(1e-12).log(), y, reduction="sum")
            else:
                loss = F.cross_entropy(scores, y, reduction="sum")
            if outputs is not None:
                p = scores if are_probabilities else scores.softmax(dim=1)
                outputs.append((p.float().cpu(), y.cpu()))
            k = min(5, scores.shape[1])
            topk = scores.topk(k, dim=1).indices  # (B, k)
            hits = topk == y[:, None]
            rows.append(torch.stack([loss.double(), hits[:, 0].sum().double(),
                                     hits.any(dim=1).sum().double(),
                                     torch.tensor(y.shape[0], dtype=torch.float64,
                                                  device=device)]))
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
