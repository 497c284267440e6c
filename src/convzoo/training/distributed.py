"""Data parallelism under torchrun: the global-batch rule, DDP with the options that matter for
speed, SyncBatchNorm (also on the CPU, which torch's refuses), micro-batches without a gradient
all-reduce, and what a worker knows about its torchrun job.

``train.batch_size`` is the *global* batch: the images of one optimizer step over all
processes. Each of the W processes takes ``batch_size / W`` of them (``data/sampler.py``: a
global batch holds the same images whatever W is), and with ``train.accum_steps = A`` runs its
share as A micro-batches. So the number of processes changes neither the batches nor the lr;
a changed *global* batch is what calls for a new lr (``optim.lr_base_batch``,
``schedule.peak_lr``; docs/training.md).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from convzoo import config as C
from convzoo.errors import ConvzooError


def check_global_batch(train: C.TrainConfig, world_size: int) -> None:
    """One line when ``train.batch_size`` cannot be shared equally by the processes (and
    their micro-batches): every process must make the same steps on equal shares."""
    per_step = world_size * train.accum_steps
    if train.batch_size % per_step == 0:
        return
    lower = train.batch_size // per_step * per_step
    near = f"{lower} or {lower + per_step}" if lower else f"{per_step}"
    parts = f"{world_size} processes" if world_size > 1 else "1 process"
    if train.accum_steps > 1:
        parts += f" x train.accum_steps={train.accum_steps}"
    raise ConvzooError(f"train.batch_size={train.batch_size} is the global batch (images per "
                       f"optimizer step over all processes): it must divide by {parts} = "
                       f"{per_step} (nearest: {near})")


# ----------------------------------------------------------------------------- DDP


def graph_is_dynamic(model: nn.Module) -> bool:
    """Whether some steps leave parameters out: models say so with ``dynamic_graph``
    (stochastic depth skipping whole blocks, a bias trained only in the first epochs)."""
    return bool(getattr(model, "dynamic_graph", False))


def wrap_ddp(model: nn.Module, train: C.TrainConfig, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` with the options that matter for speed:

    * ``gradient_as_bucket_view``: the gradients live in the all-reduce buckets (no copy into
      them each step, one gradient-sized buffer less);
    * ``static_graph`` (``train.ddp_static_graph``, auto: where valid, i.e. unless the model's
      graph is dynamic or micro-batches skip the all-reduce, which DDP's static graph does not
      support: torch 2.14 fails an internal assert in its reducer): DDP learns the bucket order
      once and skips its per-step bookkeeping;
    * ``find_unused_parameters`` only for a dynamic graph (it walks the graph every step).
    """
    dynamic = graph_is_dynamic(model)
    valid = not dynamic and train.accum_steps == 1
    static = valid if train.ddp_static_graph is None else train.ddp_static_graph
    if static and not valid:
        why = (f"{type(model).__name__} leaves parameters out of some steps (stochastic depth or "
               "an epoch-dependent frozen parameter)" if dynamic else
               f"train.accum_steps={train.accum_steps} skips the all-reduce of micro-batches")
        raise ConvzooError(f"train.ddp_static_graph=true: {why}; use auto or false")
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True, static_graph=static, find_unused_parameters=dynamic)


def no_sync(step_model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` when ``skip`` (a micro-batch that is not its step's last: its gradients
    only accumulate, the all-reduce waits for the last one), else nothing."""
    ddp = getattr(step_model, "_orig_mod", step_model)  # under torch.compile
    if skip and isinstance(ddp, nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- SyncBatchNorm


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for the CPU (gloo), which torch's refuses ("SyncBatchNorm expected input
    tensor to be on GPU"; DDP also rejects ``nn.SyncBatchNorm`` on CPU modules): in training
    under a process group of more than one rank, the batch statistics are all-reduced with
    ``torch.distributed.nn`` (differentiable: the backward all-reduces the gradients of the
    sums, as torch's CUDA kernel does). Two passes (the mean, then the centred squares), so the
    variance does not suffer the cancellation of E[x^2] - E[x]^2. Otherwise plain BatchNorm.
    Same parameters and buffers as the BatchNorm it replaces."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        return _cpu_sync_batch_norm(self, input)


class _AllReduce(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum over ranks is the sum of the
    ranks' gradients (torch.distributed.nn's version is deprecated)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduce.apply(x)


def _cpu_sync_batch_norm(bn: CpuSyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    bn._check_input_dim(x)
    dims = [0, *range(2, x.dim())]  # all but the channels
    shape = [1, -1] + [1] * (x.dim() - 2)
    local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
    totals = all_reduce(torch.cat([x.sum(dims), local]))  # (C + 1,): sums, then the count
    n = totals[-1]
    mean = totals[:-1] / n
    centred = x - mean.view(shape)
    var = all_reduce((centred * centred).sum(dims)) / n  # biased, as BN normalises
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                      else bn.momentum)
            count = float(n)
            bn.running_mean.lerp_(mean.detach(), factor)
            bn.running_var.lerp_(var.detach() * count / max(count - 1.0, 1.0), factor)
    return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised over the ranks: ``torch.nn.SyncBatchNorm`` on
    GPUs, :class:`CpuSyncBatchNorm` on the CPU. Both keep the parameters and buffers (the same
    objects), so the optimizer and EMA still fit and checkpoints load into plain BatchNorm."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


# ----------------------------------------------------------------------------- the job


def torchrun_round() -> tuple[str, int] | None:
    """(job id, restart round) of this worker under torchrun, else None. A restart
    (``--max-restarts``) keeps the id and counts the round up; torchrun's agents stop every
    worker of a round before the next one starts."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not job or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    return job, int(os.environ["TORCHELASTIC_RESTART_COUNT"])


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DDP sends them at the
    start of each forward, so after the last step every other rank holds its own update; the
    ranks must evaluate one model, the one rank 0 checkpoints."""
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer, src=0)


def all_ranks(value: Any, world_size: int) -> list[Any]:
    """``value`` of every rank (rank order); one process: ``[value]``."""
    if world_size == 1:
        return [value]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, value)
    return out

