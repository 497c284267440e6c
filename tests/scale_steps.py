"""One epoch of ``train_one_epoch`` on digits at 8 px without augmentation, for
tests/test_scale.py and tests/dist_checks.py (the same function in one process and under
torchrun): the weights after it."""

import torch
from torch import nn

from convzoo import config as C
from convzoo.data.loading.pipeline import build_pipeline
from convzoo.runtime import Runtime
from convzoo.training.loop import train_one_epoch
from convzoo.training.setup import build_run


def one_epoch(model: str, batch: int, rank: int = 0, world: int = 1, limit: int = 256,
              **train: object) -> dict[str, torch.Tensor]:
    """``model`` trained one epoch of ``limit`` images at the global batch ``batch``
    (``train``: more train keys)."""
    cfg = C.from_dict({"data": {"source": "digits", "image_size": 8, "limit": limit},
                       "model": {"name": model,
                                 "kwargs": {"image_size": 8} if model == "cnn" else {}},
                       "augment": {"pad": 0, "flip": False}, "optim": {"lr": 0.05},
                       "train": {"batch_size": batch, "epochs": 1, "device": "cpu", **train}})
    rt = Runtime(torch.device("cpu"), None, False, rank, world)
    data = build_pipeline(cfg, rt.device, rank=rank, world_size=world)
    run = build_run(cfg, rt, data)
    for m in run.model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # accumulation is equivalent for a model without random draws
    torch.manual_seed(0)
    data.train.set_epoch(1)
    train_one_epoch(run, data.train, run.schedule.epoch_lrs(1))
    return {k: v.clone() for k, v in run.model.state_dict().items()}
