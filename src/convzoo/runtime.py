"""How this process runs a model: device, precision, memory format, threads and determinism,
and, under torchrun, its rank in the process group.

``resolve_runtime`` reads ``train.device`` / ``train.precision`` / ``train.channels_last``
(``auto`` picks per device) and, launched by torchrun, joins the process group; training,
``convzoo eval``/``predict``/``export`` and ``convzoo bench`` all start from it, so a model is
evaluated on the device and at the precision it would train at. Nothing here knows about
training: the API and export use it without importing the training package.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from convzoo import config as C
from convzoo.errors import ConvzooError


@dataclass
class Runtime:
    """What the config resolves to on this machine."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for fp32
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")


def has_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 and up (A100, RTX 30xx, H100 ...)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` on ``device``: auto = bf16 on GPUs that have it, fp16 (with loss
    scaling) on older GPUs (T4, V100), fp32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if has_bf16(device) else torch.float16
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # validated config
    if name == "bf16" and device.type == "cuda" and not has_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConvzooError(
            f"train.precision=bf16: {torch.cuda.get_device_name(device)} (compute capability "
            f"{major}.{minor}) has no bf16 support; use fp16 or auto"
        )
    return dtypes[name]


def resolve_runtime(cfg: C.TrainConfig) -> Runtime:
    """Device, precision and memory format from the config (``auto`` picks per device)."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvzooError(f"train.device: unknown device '{cfg.device}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvzooError(f"train.device={cfg.device} but CUDA is not available on this machine")
    # channels_last is faster for convolutions on CUDA and on CPU (oneDNN): ~16% for resnet20.
    channels_last = True if cfg.channels_last is None else cfg.channels_last  # None = auto
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:  # launched by torchrun: one process per device
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            join_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, resolve_precision(cfg.precision, device), channels_last, rank,
                   world_size)


def configure_backends(cfg: C.TrainConfig, device: torch.device) -> None:
    """Threads and determinism; call before anything runs on the device.

    ``deterministic`` needs, on CUDA, a fixed cuBLAS workspace (``CUBLAS_WORKSPACE_CONFIG``,
    read when cuBLAS initialises, i.e. at the first matrix product), deterministic cuDNN
    kernels and no cuDNN autotuning; torch raises on any op without a deterministic kernel.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.backends.cudnn.deterministic = cfg.deterministic
    # fixed shapes: let cuDNN pick the fastest kernels, unless results must repeat exactly
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or a no-op for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def join_process_group(backend: str) -> None:
    """``init_process_group`` from torchrun's environment, with this restart round's keys under
    a prefix of their own in torchrun's store.

    Why not the plain call: the torchrun agent keeps one store across the restarts of
    ``--max-restarts``, and a restarted worker could read its peer's gloo address of the dead
    round from it: about half the restarts hung or failed in ``init_process_group`` (torch
    2.14.1, gloo, 2 processes, one SIGKILLed: 2-3 of 4 trials; pytorch/pytorch#167288 reports
    the same with NCCL). With the round (``TORCHELASTIC_RESTART_COUNT``) in the prefix: 6 of 6
    came back."""
    dist = torch.distributed
    store, rank, world_size = next(dist.rendezvous("env://"))
    round_ = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"convzoo/round{round_}/", store),
                            rank=rank, world_size=world_size)
