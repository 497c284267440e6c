"""Training on mixed (soft) targets: the one loss takes class probabilities with label smoothing,
train top-1 counts each image's dominant label, and the metrics say how much was mixed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from convzoo import config as C
from convzoo.data.transforms.mixing import MixUpCutMix
from convzoo.runtime import resolve_runtime
from convzoo.training.loop import train_one_epoch
from convzoo.training.setup import build_run


class Batches:
    """One fixed batch: the smallest loader the loop accepts."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        return iter([(self.x, self.y)])


def run_on(x: torch.Tensor, y: torch.Tensor, smoothing: float):
    cfg = C.from_dict({"train": {"device": "cpu"}, "optim": {"label_smoothing": smoothing},
                       "schedule": {"name": "constant"}})
    data = SimpleNamespace(classes=[str(i) for i in range(10)], image_shape=(3, 8, 8),
                           train=Batches(x, y))
    return build_run(cfg, resolve_runtime(cfg.train), data, init_from_data=False)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_loss_top1_against_the_dominant_label_and_mixed_share(smoothing):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    labels[3] = labels[12]  # an image mixed with one of its own class: its target is one label
    mixed = MixUpCutMix(mixup_alpha=1.0, cutmix_alpha=0.0, mode="elem", prob=0.8)(x, labels, g)
    targets = mixed.targets(10)
    assert (mixed.lam < 0.5).any() and (mixed.lam == 1).any()  # partners dominate some images
    run = run_on(mixed.images, targets, smoothing)
    run.model.train()
    with torch.no_grad():
        logits = run.model(mixed.images)  # what the step sees (lr 0: the step changes nothing)
    stats = train_one_epoch(run, run.data.train, [0.0])
    expected = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-5)
    dominant = mixed.dominant()
    assert stats["top1"] == pytest.approx(100 * (logits.argmax(1) == dominant).float().mean().item())
    assert stats["mixed"] == pytest.approx(((mixed.lam < 1) & (labels != labels.flip(0)))
                                           .float().mean().item())
    assert 0 < stats["mixed"] < 1


def test_integer_labels_train_as_before():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.arange(8)
    run = run_on(x, y, 0.1)
    run.model.train()
    with torch.no_grad():
        logits = run.model(x)
    stats = train_one_epoch(run, run.data.train, [0.0])
    assert stats["loss"] == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(),
                                          rel=1e-5)
    assert stats["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert stats["mixed"] == 0
