"""Precision and determinism: fp16 with loss scaling (underflow, overflow, exact resume), what
``auto`` picks on each kind of GPU, and what ``deterministic`` sets for CUDA."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from convzoo import config as C
from convzoo.cli import main
from convzoo.errors import ConvzooError
from convzoo.runtime import configure_backends, resolve_precision, resolve_runtime
from convzoo.training.loop import train_one_epoch
from convzoo.training.setup import build_run

TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=96",
        "--batch-size", "32", "--set", "train.loggers=[]", "--device", "cpu",
        "--set", "schedule.name=constant"]


class Batches:
    """``n`` copies of one batch: the smallest loader ``build_run`` and the loop accept."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int = 1) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([(self.x, self.y)] * self.n)


def fp16_run(loss_scale: float, scaled: bool = True):
    """A resnet20 run in fp16 on the CPU whose loss is multiplied by ``loss_scale``."""
    cfg = C.from_dict({"train": {"device": "cpu", "precision": "fp16"},
                       "optim": {"weight_decay": 0.0, "momentum": 0.0},
                       "schedule": {"name": "constant"}})
    rt = resolve_runtime(cfg.train)
    assert rt.amp_dtype == torch.float16
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(classes=[str(i) for i in range(10)], image_shape=(3, 8, 8),
                           train=Batches(torch.randn(8, 3, 8, 8, generator=g),
                                         torch.arange(8) % 10))
    run = build_run(cfg, rt, data, init_from_data=False)
    run.loss_fn = lambda logits, y: F.cross_entropy(logits, y) * loss_scale
    if not scaled:
        run.scaler = torch.amp.GradScaler("cpu", enabled=False)
    return run


def head_weight(run) -> torch.Tensor:
    return dict(run.model.named_parameters())["fc.weight"].detach().clone()


def test_fp16_loss_scaling_rescues_gradients_that_underflow():
    """A loss of ~1e-7 has gradients below fp16's smallest value: without scaling the step
    changes nothing; with GradScaler (scale 65536) it trains."""
    plain = fp16_run(1e-7, scaled=False)
    before = head_weight(plain)
    train_one_epoch(plain, plain.data.train, [0.1])
    assert torch.equal(head_weight(plain), before)  # every gradient underflowed to 0

    scaled = fp16_run(1e-7)
    before = head_weight(scaled)
    train_one_epoch(scaled, scaled.data.train, [0.1])
    moved = head_weight(scaled) - before
    assert torch.isfinite(moved).all() and moved.abs().max() > 0
    assert scaled.scaler.get_scale() == 65536.0  # no overflow: the scale stays


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    # A finite loss (an infinite one is divergence, a run-stopping error) whose scaled
    # gradients overflow fp16: 1e6 x scale 65536 is far beyond fp16's 65504.
    run = fp16_run(1e6)
    before = head_weight(run)
    train_one_epoch(run, run.data.train, [0.1])
    assert torch.equal(head_weight(run), before)  # the step was skipped, weights untouched
    assert run.scaler.get_scale() == 32768.0  # halved


@pytest.mark.slow
def test_fp16_on_cpu_trains_and_resumes_exactly(tmp_path):
    args = [*TINY, "--set", "train.precision=fp16", "--out", str(tmp_path)]
    assert main(["train", "--epochs", "2", "--name", "straight", *args]) == 0
    assert main(["train", "--epochs", "1", "--name", "resumed", *args]) == 0
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--epochs", "2"]) == 0
    a = load_file(tmp_path / "straight/model.safetensors")
    b = load_file(tmp_path / "resumed/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "resumed/last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the scaler's state travels in the checkpoint
    summary = json.loads((tmp_path / "straight/summary.json").read_text())
    assert summary["precision"] == "fp16" and summary["loss"] < float("inf")


@pytest.mark.parametrize("capability, expected", [((6, 1), torch.float16),
                                                  ((7, 0), torch.float16),
                                                  ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_auto_precision_is_bf16_only_where_the_gpu_has_it(capability, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) is expected
    assert resolve_precision("fp16", cuda) is torch.float16
    assert resolve_precision("fp32", cuda) is None
    if expected is torch.float16:
        with pytest.raises(ConvzooError, match=r"precision=bf16: Test GPU.*use fp16 or auto"):
            resolve_precision("bf16", cuda)
    else:
        assert resolve_precision("bf16", cuda) is torch.bfloat16


def test_cpu_precisions():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cpu) is torch.float16


def test_deterministic_sets_what_cuda_needs(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda")
    try:
        configure_backends(C.TrainConfig(deterministic=True), cuda)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting stays
        configure_backends(C.TrainConfig(deterministic=True), cuda)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        configure_backends(C.TrainConfig(deterministic=False), cuda)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    configure_backends(C.TrainConfig(), torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark
