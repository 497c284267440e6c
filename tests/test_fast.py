"""The fast family, patch whitening, Muon, lookahead's alpha schedule and a tiny fast-recipe run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convzoo.models.fast  # noqa: F401  (registers fast_net / fast94 / fast95 / fast96)
from convzoo.cli import main as cli_main
from convzoo.config import OptimConfig, from_dict, load_recipe
from convzoo.models import create_model
from convzoo.models.fast import FastNet, whitening_filters
from convzoo.training.muon import Muon, newton_schulz
from convzoo.training.optim import Lookahead, build_optimizer

# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("name", ["fast94", "fast95", "fast96"])
def test_fast_models_shapes_and_frozen_parameters(name):
    model = create_model(name, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 7)  # global pooling: any size >= 8
    assert not model.whiten.weight.requires_grad  # set from data, never trained
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert all((m.weight == 1).all() for m in norms)


def test_fast_net_keywords_and_whiten_bias_schedule():
    model = create_model("fast_net", widths=[8, 16], depth=3, whiten_bias_epochs=2)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    model.set_epoch(2)
    assert model.whiten_bias.requires_grad
    model.set_epoch(3)
    assert not model.whiten_bias.requires_grad
    with pytest.raises(Exception, match="does not take keyword 'width'"):
        create_model("fast94", width=3)


def correlated_images(n: int = 64, size: int = 16) -> torch.Tensor:
    """Smooth, channel-correlated images: neighbouring pixels and channels covary strongly."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 1, size // 4, size // 4, generator=g)
    base = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    colour = torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    return base * colour + 0.05 * torch.randn(n, 3, size, size, generator=g)


def test_whitening_gives_identity_patch_second_moment():
    x = correlated_images()
    w = whitening_filters(x, k=2, eps=1e-9)
    assert w.shape == (24, 3, 2, 2)
    assert torch.allclose(w[12:], -w[:12])  # second half: the negated filters
    z = F.conv2d(x, w[:12])  # (N, 12, 15, 15): whitened patch coordinates
    flat = z.permute(0, 2, 3, 1).reshape(-1, 12).double()
    moment = flat.T @ flat / flat.shape[0]
    raw = F.unfold(x, 2).transpose(1, 2).reshape(-1, 12).double()
    raw_moment = raw.T @ raw / raw.shape[0]
    assert (raw_moment - torch.diag(raw_moment.diagonal())).abs().max() > 0.1  # correlated
    assert torch.allclose(moment, torch.eye(12, dtype=torch.float64), atol=2e-3)


def test_init_from_data_sets_the_whitening_conv():
    model = FastNet(widths=(8, 8, 8), whiten_eps=1e-9).to(memory_format=torch.channels_last)
    x = correlated_images()
    model.init_from_data(x)
    assert torch.allclose(model.whiten.weight, whitening_filters(x, 2, 1e-9), atol=1e-6)


# ----------------------------------------------------------------------------- Muon


def test_newton_schulz_orthogonalises():
    g = torch.randn(8, 20, generator=torch.Generator().manual_seed(1))
    o = newton_schulz(g, steps=5, dtype=torch.float32)
    s = torch.linalg.svdvals(o)
    assert o.shape == g.shape and s.min() > 0.6 and s.max() < 1.25  # all directions ~ equal
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cos > 0.98  # close to the exact polar factor U V^T
    assert newton_schulz(g.T, dtype=torch.float32).shape == (20, 8)  # tall matrices transpose


def test_muon_step_math():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 2, 3, 3))
    b = nn.Parameter(torch.randn(4))
    opt = Muon([{"params": [w], "use_muon": True},
                {"params": [b], "use_muon": False, "weight_decay": 0.1}],
               lr=0.05, momentum=0.5, nesterov=True, ns_dtype=torch.float32)
    gw, gb = torch.randn(4, 2, 3, 3), torch.randn(4)
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    # Muon: renormalise to norm sqrt(4) = 2, then step along NS(g + m * buf) = NS(1.5 g)
    expected = w0 * (2 / w0.norm()) - 0.05 * newton_schulz(
        1.5 * gw.reshape(4, 18), dtype=torch.float32).view(4, 2, 3, 3)
    assert torch.allclose(w, expected, atol=1e-6)
    # SGD group: d = g + wd * p; buf = d; nesterov step d + m * buf = 1.5 d
    assert torch.allclose(b, b0 - 0.05 * 1.5 * (gb + 0.1 * b0), atol=1e-6)


def test_muon_from_config_groups_and_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    cfg = OptimConfig(name="muon", lr=0.1, muon_lr=0.02, muon_momentum=0.6, bias_lr_scale=2.0,
                      weight_decay=0.0)
    opt = build_optimizer(model, cfg, "cpu")
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["muon"]["lr"] == pytest.approx(0.02) and groups["muon"]["momentum"] == 0.6
    assert groups["decay"]["lr"] == pytest.approx(0.1)
    assert groups["norm_bias"]["lr"] == pytest.approx(0.2)
    x = torch.randn(64, 3, 6, 6)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]  # 0.73 -> 0.41 with these seeds


def test_lookahead_alpha_schedule():
    p = nn.Parameter(torch.zeros(1))
    la = Lookahead(torch.optim.SGD([p], lr=1.0), k=5, alpha=0.25, pow=3.0, total_steps=100)
    la.fast_steps = 0
    assert la.current_alpha() == pytest.approx(1.0)
    la.fast_steps = 50
    assert la.current_alpha() == pytest.approx(1 - 0.75 * 0.125)
    la.fast_steps = 100
    assert la.current_alpha() == pytest.approx(0.25)
    with pytest.raises(Exception, match="lookahead_pow"):
        Lookahead(torch.optim.SGD([p], lr=1.0), pow=3.0, total_steps=0)


def test_lookahead_ends_the_stage_on_its_slow_weights():
    """airbench's final update: a last step between syncs is dropped for the slow weights."""
    p = nn.Parameter(torch.zeros(1))
    la = Lookahead(torch.optim.SGD([p], lr=1.0), k=5, alpha=0.5, total_steps=7)
    for step in range(1, 8):
        p.grad = torch.ones(1)  # each fast step moves p by -1
        la.step()
        if step == 5:  # sync: slow 0 -> 0 + 0.5 * (-5 - 0)
            assert p.item() == -2.5
        if step == 6:
            assert p.item() == -3.5  # an ordinary fast step
    assert p.item() == -2.5 and la.slow[0].item() == -2.5  # step 7 ends on the slow weights


# ----------------------------------------------------------------------------- recipes + CLI


@pytest.mark.parametrize("name", ["cifar10-fast94", "cifar10-fast95", "cifar10-fast96"])
def test_fast_recipes_validate(name):
    cfg = from_dict(load_recipe(name))
    assert cfg.model.name == name.split("-")[1]
    assert cfg.augment.flip_mode == "alternate" and cfg.augment.tta == "flip_translate"
    assert cfg.optim.lookahead_steps == 5 and cfg.train.batch_size == 1024
    # training ends on lookahead's slow (averaged) weights, whether or not the last step is a
    # sync step (fast96: 31 x 48 = 1488 steps, the last sync at 1485)
    total = cfg.train.epochs * (50_000 // cfg.train.batch_size)
    p = nn.Parameter(torch.zeros(1))
    la = Lookahead(torch.optim.SGD([p], lr=1.0), k=cfg.optim.lookahead_steps,
                   alpha=cfg.optim.lookahead_alpha, pow=cfg.optim.lookahead_pow, total_steps=total)
    for _ in range(total):
        p.grad = torch.ones(1)
        la.step()
    assert torch.equal(p.detach(), la.slow[0])


def test_fast_recipe_smoke_through_cli(tmp_path, capsys):
    code = cli_main([
        "train", "--recipe", "cifar10-fast94", "--out", str(tmp_path), "--name", "smoke",
        "--set", "data.source=digits", "--set", "data.image_size=16",
        "--set", "preprocess.mean=null", "--set", "preprocess.std=null",
        "--set", "augment.flip=false", "--set", "model.kwargs={widths: [16, 32, 32]}",
        "--set", "train.batch_size=64", "--set", "train.epochs=5", "--set", "optim.lr=0.5",
        "--set", "train.eval_every=5", "--set", "train.compile=false",
    ])
    assert code == 0
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["top1"] >= 80.0  # digits: the whitened net learns within 5 short epochs
    assert summary["init_seconds"] > 0 and summary["final_eval_seconds"] > 0
    assert summary["timed_seconds"] == pytest.approx(
        summary["init_seconds"] + summary["train_seconds"] + summary["final_eval_seconds"])
    ckpt = torch.load(tmp_path / "smoke" / "last.pt", weights_only=False)
    whiten = ckpt["model"]["whiten.weight"]
    assert whiten.abs().sum() > 0 and torch.allclose(whiten[12:], -whiten[:12])
