"""Optimizers, schedules, EMA, lookahead and early stopping: numbers against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convzoo.config import OptimConfig, ScheduleConfig
from convzoo.errors import ConvzooError
from convzoo.train.ema import ModelEMA
from convzoo.train.optim import (
    SGDW,
    EarlyStopping,
    Lookahead,
    _use_fused,
    apply_hparams,
    build_optimizer,
    build_schedule,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),  # 4-D weight
        nn.BatchNorm2d(4),  # 1-D weight + bias
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),  # 2-D weight + 1-D bias
    )


def sched(name: str, lr: float = 1.0, epochs: int = 10, spe: int = 10, **kw):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return build_schedule(opt, ScheduleConfig(name=name, **kw), lr, epochs, spe), opt


# ----------------------------------------------------------------------------- schedules


def test_constant_with_linear_warmup():
    s, _ = sched("constant", lr=0.1, spe=10, warmup_epochs=2, warmup_start=0.1)
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(10) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # halfway: 0.055
    assert s.lr_at(20) == pytest.approx(0.1)
    assert s.lr_at(95) == pytest.approx(0.1)


def test_multistep_milestones_in_fractional_epochs():
    s, _ = sched("multistep", lr=0.1, spe=4, milestones=[1.5, 3], gamma=0.1)
    assert s.lr_at(5) == pytest.approx(0.1)  # epoch 1.25
    assert s.lr_at(6) == pytest.approx(0.01)  # epoch 1.5: first milestone reached
    assert s.lr_at(11) == pytest.approx(0.01)
    assert s.lr_at(12) == pytest.approx(0.001)  # epoch 3


def test_neon_resnet_schedule_epoch_boundaries():
    # lr 0.1, /10 at epochs 90 and 135 (seed B), 391 steps per epoch
    s, _ = sched("multistep", lr=0.1, epochs=180, spe=391, milestones=[90, 135])
    assert s.lr_at(90 * 391 - 1) == pytest.approx(0.1)
    assert s.lr_at(90 * 391) == pytest.approx(0.01)
    assert s.lr_at(135 * 391) == pytest.approx(0.001)


def test_cosine_final_fraction_min_lr_and_warmup():
    s, _ = sched("cosine", lr=1.0, epochs=10, spe=10, final_fraction=0.1)
    assert s.lr_at(0) == pytest.approx(1.0)
    assert s.lr_at(50) == pytest.approx(0.55)  # 0.1 + 0.9 * 0.5
    assert s.lr_at(100) == pytest.approx(0.1)
    assert s.lr_at(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    s, _ = sched("cosine", lr=1.0, epochs=10, spe=10, final_fraction=0.1, min_lr=0.2)
    assert s.lr_at(100) == pytest.approx(0.2)
    s, _ = sched("cosine", lr=1.0, epochs=10, spe=10, warmup_epochs=2)
    assert s.lr_at(0) == pytest.approx(0.0)
    assert s.lr_at(10) == pytest.approx(0.5)
    assert s.lr_at(20) == pytest.approx(1.0)  # cosine starts after warmup
    assert s.lr_at(60) == pytest.approx(0.5)  # halfway through the 8 cosine epochs
    assert s.lr_at(100) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_triangle():
    kw = dict(pct_start=0.25, warmup_start=0.5, final_fraction=0.1)
    s, _ = sched("onecycle", lr=0.4, epochs=10, spe=4, **kw)
    assert s.lr_at(0) == pytest.approx(0.2)
    assert s.lr_at(5) == pytest.approx(0.3)  # epoch 1.25, halfway up
    assert s.lr_at(10) == pytest.approx(0.4)  # epoch 2.5 = peak
    assert s.lr_at(25) == pytest.approx(0.22)  # epoch 6.25, halfway down to 0.04
    assert s.lr_at(40) == pytest.approx(0.04)
    with pytest.raises(ConvzooError, match="warmup_epochs"):
        sched("onecycle", warmup_epochs=1)


def test_step_sets_lr_of_next_step_on_every_group_times_scale():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(lr=0.4, bias_lr_scale=2.0), "cpu")
    s = build_schedule(opt, ScheduleConfig(name="cosine"), 0.4, epochs=2, steps_per_epoch=5)
    scales = [g["lr_scale"] for g in opt.param_groups]
    assert sorted(scales) == [1.0, 2.0]
    for t in range(10):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(s.lr_at(t) * g["lr_scale"])
        assert s.lr() == pytest.approx(s.lr_at(t))
        opt.step()
        s.step()
    assert s.lr() == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_names_options():
    with pytest.raises(ConvzooError, match="schedule.name 'poly'.*cosine"):
        sched("poly")


# ----------------------------------------------------------------------------- plateau


def run_plateau(values, **kw):
    s, _ = sched("plateau", lr=1.0, **kw)
    lrs = []
    for v in values:
        s.epoch_end({"val_loss": v, "val_top1": -v})
        lrs.append(round(s.lr(), 10))
    return lrs


def test_plateau_reduces_after_patience():
    lrs = run_plateau([1.0, 0.9, 0.9, 0.9, 0.9, 0.9], patience=2, factor=0.5)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_plateau_cooldown():
    lrs = run_plateau([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], patience=2, factor=0.5, cooldown=2)
    # reduce at epoch 3, two cooldown epochs, then two more bad epochs before the next cut
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_plateau_relative_threshold():
    # 0.95 is not 10 % better than 1.0; 0.85 is
    lrs = run_plateau([1.0, 0.95, 0.85, 0.8], patience=1, factor=0.5, threshold=0.1)
    assert lrs == [1.0, 0.5, 0.5, 0.25]


def test_plateau_min_lr_and_max_mode_and_alias():
    lrs = run_plateau([1.0] * 6, patience=1, factor=0.1, min_lr=0.05)
    assert lrs == [1.0, 0.1, 0.05, 0.05, 0.05, 0.05]
    s, _ = sched("plateau", lr=1.0, monitor="val_top1", patience=1, factor=0.5)
    s.epoch_end({"eval_top1": 50.0})  # the trainer's key matches val_top1
    s.epoch_end({"eval_top1": 60.0})
    assert s.lr() == 1.0
    s.epoch_end({"eval_top1": 55.0})
    assert s.lr() == 0.5
    s.epoch_end({"train_loss": 1.0})  # epoch without eval: ignored
    assert s.lr() == 0.5
    with pytest.raises(ConvzooError, match="schedule.monitor"):
        sched("plateau", monitor="speed")


def test_plateau_warmup_still_per_step():
    s, _ = sched("plateau", lr=1.0, spe=10, warmup_epochs=1)
    assert s.lr_at(5) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("name", ["cosine", "onecycle", "plateau", "multistep"])
def test_state_dict_round_trip_continues_identically(name):
    kw = {"milestones": [2, 3]} if name == "multistep" else {}
    a, _ = sched(name, lr=0.3, epochs=5, spe=7, patience=1, **kw)
    for t in range(17):
        a.step()
        if t % 7 == 6:
            a.epoch_end({"val_loss": 1.0})
    state = a.state_dict()
    b, opt_b = sched("constant", lr=9.0, epochs=1, spe=3)  # different settings, overwritten
    b.load_state_dict(state)
    assert opt_b.param_groups[0]["lr"] == pytest.approx(a.lr())
    for t in range(20):
        a.step()
        b.step()
        if t % 7 == 3:
            a.epoch_end({"val_loss": 1.0})
            b.epoch_end({"val_loss": 1.0})
        assert b.lr() == a.lr()


def test_retarget_new_stage_lr_and_epochs():
    # seed A: 38 epochs at lr 0.05, then 6 more at 0.01 from the epoch-38 checkpoint
    s, opt = sched("constant", lr=0.05, epochs=38, spe=10)
    for _ in range(380):
        s.step()
    state = s.state_dict()
    s2, opt2 = sched("constant", lr=0.05, epochs=38, spe=10)
    s2.load_state_dict(state)
    s2.retarget(base_lr=0.01, epochs=44)
    assert s2.global_step == 380
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    s2.set_base_lr(0.001)
    assert s2.lr() == pytest.approx(0.001)

    # cosine extended from 10 to 20 epochs: continues at step 50 on the new curve
    c, _ = sched("cosine", lr=1.0, epochs=10, spe=10)
    for _ in range(50):
        c.step()
    assert c.lr() == pytest.approx(0.5)
    c.retarget(epochs=20)
    assert c.lr() == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    # a new batch size keeps the epoch position
    c.retarget(steps_per_epoch=20)
    assert c.global_step == 100
    assert c.lr() == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    # switching to plateau for a new stage
    c.retarget(base_lr=0.1, cfg=ScheduleConfig(name="plateau", patience=1))
    assert c.lr() == pytest.approx(0.1)


def test_resume_from_keeps_position_and_takes_new_settings():
    a, _ = sched("cosine", lr=1.0, epochs=10, spe=10)
    for _ in range(50):
        a.step()
    same, _ = sched("cosine", lr=1.0, epochs=10, spe=10)
    same.resume_from(a.state_dict())
    assert same.global_step == 50 and same.lr() == a.lr()
    staged, opt = sched("multistep", lr=0.01, epochs=44, spe=5, milestones=[40])
    staged.resume_from(a.state_dict())  # 10 spe -> 5 spe: epoch 5 is step 25
    assert staged.global_step == 25
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for _ in range(40 * 5 - 25):
        staged.step()
    assert staged.lr() == pytest.approx(0.001)


# ----------------------------------------------------------------------------- optimizers


def test_optimizer_kinds_and_hyperparameters():
    m = tiny_model()
    sgd = build_optimizer(m, OptimConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True), "cpu")
    assert type(sgd) is torch.optim.SGD
    g = sgd.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"]) == (0.8, True, 5e-4)
    assert g["initial_lr"] == 0.1
    adam = build_optimizer(m, OptimConfig(name="adam", lr=1e-3, betas=[0.8, 0.99]), "cpu")
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["betas"] == (0.8, 0.99)
    assert type(build_optimizer(m, OptimConfig(name="adam", decoupled_wd=True), "cpu")) is (
        torch.optim.AdamW
    )
    assert type(build_optimizer(m, OptimConfig(name="adamw"), "cpu")) is torch.optim.AdamW
    assert type(build_optimizer(m, OptimConfig(name="sgd", decoupled_wd=True), "cpu")) is SGDW


def test_unknown_and_reserved_optimizer_names():
    with pytest.raises(ConvzooError, match=r"optim.name 'lamb'.*sgd, adam, adamw"):
        build_optimizer(tiny_model(), OptimConfig(name="lamb"), "cpu")
    muon = build_optimizer(tiny_model(), OptimConfig(name="muon"), "cpu")  # tests/test_fast.py
    assert type(muon).__name__ == "Muon"


def test_sgd_decoupled_vs_coupled_weight_decay():
    def two_steps(decoupled: bool) -> float:
        p = nn.Parameter(torch.ones(1, 1))
        model = nn.Module()
        model.p = p
        cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.5, decoupled_wd=decoupled)
        opt = build_optimizer(model, cfg, "cpu")
        for _ in range(2):
            p.grad = torch.zeros_like(p)  # only the decay moves the weight
            opt.step()
        return p.item()

    assert two_steps(True) == pytest.approx(0.95**2)  # p *= 1 - lr * wd, no momentum
    # L2: grad += wd * p goes through the momentum buffer: 1 -> 0.95 -> 0.95 - 0.1 * 0.925
    assert two_steps(False) == pytest.approx(0.8575)


def test_apply_hparams_after_loading_a_checkpoint():
    m = tiny_model()
    old = build_optimizer(m, OptimConfig(weight_decay=1e-4, no_decay_norm_bias=True), "cpu")
    new_cfg = OptimConfig(weight_decay=5e-4, momentum=0.5, no_decay_norm_bias=True,
                          bias_lr_scale=3.0)  # fmt: skip
    opt = build_optimizer(m, new_cfg, "cpu")
    opt.load_state_dict(old.state_dict())  # restores the saved wd 1e-4
    apply_hparams(opt, new_cfg)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["weight_decay"] == 5e-4 and by_name["no_decay"]["weight_decay"] == 0
    assert by_name["decay"]["momentum"] == 0.5 and by_name["no_decay"]["lr_scale"] == 3.0
    with pytest.raises(ConvzooError, match="no_decay_norm_bias"):
        apply_hparams(opt, OptimConfig())


def test_no_decay_group_holds_exactly_the_1d_params():
    m = tiny_model()
    opt = build_optimizer(m, OptimConfig(weight_decay=1e-3, no_decay_norm_bias=True), "cpu")
    by_name = {g["name"]: g for g in opt.param_groups}
    one_d = {id(p) for p in m.parameters() if p.ndim == 1}
    multi_d = {id(p) for p in m.parameters() if p.ndim > 1}
    assert {id(p) for p in by_name["no_decay"]["params"]} == one_d
    assert {id(p) for p in by_name["decay"]["params"]} == multi_d
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["decay"]["weight_decay"] == 1e-3
    assert len(one_d) == 3  # bn weight, bn bias, linear bias


def test_freeze_bn_scale():
    m = tiny_model()
    bn = m[1]
    with torch.no_grad():
        bn.weight.fill_(0.3)
    opt = build_optimizer(m, OptimConfig(freeze_bn_scale=True, lr=0.5), "cpu")
    assert not bn.weight.requires_grad
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(bn.weight) not in in_opt and id(bn.bias) in in_opt
    loss = m(torch.randn(2, 3, 4, 4)).square().sum()
    loss.backward()
    opt.step()
    assert torch.equal(bn.weight, torch.ones(4))


def test_fused_only_on_cuda():
    # optim.fused is bool | None (None = auto); its spellings are checked in tests/test_config.py
    for fused in (None, True):
        opt = build_optimizer(tiny_model(), OptimConfig(name="adamw", fused=fused), "cpu")
        assert not opt.defaults.get("fused")
    assert _use_fused(OptimConfig(fused=None), torch.optim.SGD, "cuda")
    assert _use_fused(OptimConfig(fused=None), torch.optim.AdamW, "cuda")
    assert not _use_fused(OptimConfig(fused=False), torch.optim.AdamW, "cuda")


# ----------------------------------------------------------------------------- EMA / lookahead


def test_ema_math_buffers_and_warmup():
    m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
    ema = ModelEMA(m, decay=0.9)
    with torch.no_grad():
        m[0].weight.fill_(3.0)
        m[1].running_mean.fill_(7.0)
    ema.update(m)
    assert ema.module[0].weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert ema.module[1].running_mean.item() == 7.0  # buffers are copied
    ema.update(m)
    assert ema.module[0].weight.item() == pytest.approx(0.9 * 1.2 + 0.1 * 3.0)
    assert not ema.module.training and not ema.module[0].weight.requires_grad

    state = ema.state_dict()
    other = ModelEMA(m, decay=0.9)
    other.load_state_dict(state)
    assert other.updates == 2 and other.module[0].weight.item() == pytest.approx(1.38)

    other.reset(m)
    assert other.updates == 0 and other.module[0].weight.item() == 3.0

    warm = ModelEMA(m, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        m[0].weight.fill_(13.0)
    warm.update(m)
    assert warm.module[0].weight.item() == pytest.approx(0.1 * 3.0 + 0.9 * 13.0)
    assert warm.current_decay() == pytest.approx(2 / 11)


def lookahead_run(steps: int, opt=None):
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(1))
    cfg = OptimConfig(lr=1.0, momentum=0.0, weight_decay=0.0, lookahead_steps=2)
    opt = opt or build_optimizer(model, cfg, "cpu")
    for _ in range(steps):
        opt.zero_grad()
        model.x.sum().backward()  # grad 1: each fast step moves x by -1
        opt.step()
    return model, opt


def test_lookahead_math_and_state_dict():
    model, opt = lookahead_run(1)
    assert isinstance(opt, Lookahead)
    assert model.x.item() == -1.0
    model, opt = lookahead_run(2)
    assert model.x.item() == -1.0  # slow 0 -> 0 + 0.5 * (-2 - 0)
    model, opt = lookahead_run(4)
    assert model.x.item() == -2.0  # -1 -> fast -3 -> -1 + 0.5 * (-3 + 1)

    model, opt = lookahead_run(3)  # mid-cycle: fast -2, slow -1
    state = opt.state_dict()
    model2 = nn.Module()
    model2.x = nn.Parameter(torch.full((1,), -2.0))
    cfg = OptimConfig(lr=1.0, momentum=0.0, weight_decay=0.0, lookahead_steps=2)
    opt2 = build_optimizer(model2, cfg, "cpu")
    opt2.load_state_dict(state)
    opt2.zero_grad()
    model2.x.sum().backward()
    opt2.step()
    assert model2.x.item() == -2.0  # same as the uninterrupted 4-step run


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping():
    es = EarlyStopping(patience=2, monitor="val_top1")
    assert [es.update({"eval_top1": v}) for v in (50.0, 60.0, 59.0)] == [False, False, False]
    state = es.state_dict()
    assert es.update({"eval_top1": 58.0}) is True
    es2 = EarlyStopping(patience=2, monitor="val_top1")
    es2.load_state_dict(state)
    assert es2.update({"eval_top1": 61.0}) is False and es2.best == 61.0
    assert not any(EarlyStopping(0).update({"val_loss": 1.0}) for _ in range(5))
