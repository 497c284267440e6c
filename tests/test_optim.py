"""Optimizers, schedules, EMA, lookahead and early stopping: numbers against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convzoo.config import OptimConfig, ScheduleConfig
from convzoo.errors import ConvzooError
from convzoo.training.ema import ModelEMA
from convzoo.training.optim import (
    SGDW,
    Lookahead,
    _use_fused,
    build_optimizer,
    load_optimizer_state,
    param_groups,
)
from convzoo.training.schedule import SCHEDULES, EarlyStopping, Schedule, set_lr


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),  # 4-D weight
        nn.BatchNorm2d(4),  # 1-D weight + bias
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),  # 2-D weight + 1-D bias
    )


class Steps:
    """A Schedule read by global step t (epoch position t / steps_per_epoch), as the loop does."""

    def __init__(self, schedule: Schedule) -> None:
        self.s = schedule

    def lr_at(self, t: int) -> float:
        return self.s.lr_at(t / self.s.steps_per_epoch)

    def __getattr__(self, name):
        return getattr(self.s, name)


def sched(name: str, lr: float = 1.0, epochs: int = 10, spe: int = 10, **kw):
    return Steps(Schedule(ScheduleConfig(name=name, **kw), lr, epochs, spe))


# ----------------------------------------------------------------------------- schedules


def test_constant_with_linear_warmup():
    s = sched("constant", lr=0.1, spe=10, warmup_epochs=2, warmup_start=0.1)
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(10) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # halfway: 0.055
    assert s.lr_at(20) == pytest.approx(0.1)
    assert s.lr_at(95) == pytest.approx(0.1)


def test_multistep_milestones_in_fractional_epochs():
    s = sched("multistep", lr=0.1, spe=4, milestones=[1.5, 3], gamma=0.1)
    assert s.lr_at(5) == pytest.approx(0.1)  # epoch 1.25
    assert s.lr_at(6) == pytest.approx(0.01)  # epoch 1.5: first milestone reached
    assert s.lr_at(11) == pytest.approx(0.01)
    assert s.lr_at(12) == pytest.approx(0.001)  # epoch 3


def test_neon_resnet_schedule_epoch_boundaries():
    # lr 0.1, /10 at epochs 90 and 135 (seed B), 391 steps per epoch
    s = sched("multistep", lr=0.1, epochs=180, spe=391, milestones=[90, 135])
    assert s.lr_at(90 * 391 - 1) == pytest.approx(0.1)
    assert s.lr_at(90 * 391) == pytest.approx(0.01)
    assert s.lr_at(135 * 391) == pytest.approx(0.001)


def test_cosine_final_fraction_min_lr_and_warmup():
    s = sched("cosine", lr=1.0, epochs=10, spe=10, final_fraction=0.1)
    assert s.lr_at(0) == pytest.approx(1.0)
    assert s.lr_at(50) == pytest.approx(0.55)  # 0.1 + 0.9 * 0.5
    assert s.lr_at(100) == pytest.approx(0.1)
    assert s.lr_at(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    s = sched("cosine", lr=1.0, epochs=10, spe=10, final_fraction=0.1, min_lr=0.2)
    assert s.lr_at(100) == pytest.approx(0.2)
    s = sched("cosine", lr=1.0, epochs=10, spe=10, warmup_epochs=2)
    assert s.lr_at(0) == pytest.approx(0.0)
    assert s.lr_at(10) == pytest.approx(0.5)
    assert s.lr_at(20) == pytest.approx(1.0)  # cosine starts after warmup
    assert s.lr_at(60) == pytest.approx(0.5)  # halfway through the 8 cosine epochs
    assert s.lr_at(100) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_triangle():
    kw = dict(pct_start=0.25, warmup_start=0.5, final_fraction=0.1)
    s = sched("onecycle", lr=0.4, epochs=10, spe=4, **kw)
    assert s.lr_at(0) == pytest.approx(0.2)
    assert s.lr_at(5) == pytest.approx(0.3)  # epoch 1.25, halfway up
    assert s.lr_at(10) == pytest.approx(0.4)  # epoch 2.5 = peak
    assert s.lr_at(25) == pytest.approx(0.22)  # epoch 6.25, halfway down to 0.04
    assert s.lr_at(40) == pytest.approx(0.04)  # (onecycle + warmup_epochs: a config error)


def test_set_lr_moves_every_group_by_its_scale():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(lr=0.4, bias_lr_scale=2.0), "cpu")
    assert sorted(g["lr_scale"] for g in opt.param_groups) == [1.0, 2.0]
    assert sorted(g["lr"] for g in opt.param_groups) == [0.4, 0.8]  # as built
    s = Schedule(ScheduleConfig(name="cosine"), 0.4, epochs=2, steps_per_epoch=5)
    lrs = s.epoch_lrs(1) + s.epoch_lrs(2)
    assert len(lrs) == 10 and lrs[0] == pytest.approx(0.4)
    for t, lr in enumerate(lrs):
        assert lr == pytest.approx(s.lr_at(t / 5))
        set_lr(opt, lr)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(lr * g["lr_scale"])
    assert s.lr_at(2.0) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_names_options():
    from convzoo import config as C

    with pytest.raises(ConvzooError, match="schedule.name.*'poly'.*cosine"):
        C.from_dict({"schedule": {"name": "poly"}})


# ----------------------------------------------------------------------------- plateau


def run_plateau(values, **kw):
    s = sched("plateau", lr=1.0, **kw)
    lrs = []
    for v in values:
        s.epoch_end({"val_loss": v, "val_top1": -v})
        lrs.append(round(s.lr_at(0), 10))
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
    s = sched("plateau", lr=1.0, monitor="val_top1", patience=1, factor=0.5)
    s.epoch_end({"eval_top1": 50.0})  # the trainer's key matches val_top1
    s.epoch_end({"eval_top1": 60.0})
    assert s.lr_at(0) == 1.0
    s.epoch_end({"eval_top1": 55.0})
    assert s.lr_at(0) == 0.5
    s.epoch_end({"train_loss": 1.0})  # epoch without eval: ignored
    assert s.lr_at(0) == 0.5
    with pytest.raises(ConvzooError, match="schedule.monitor"):
        sched("plateau", monitor="speed")


def test_plateau_warmup_still_per_step():
    s = sched("plateau", lr=1.0, spe=10, warmup_epochs=1)
    assert s.lr_at(5) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- resume


def stage(name: str, lr: float, epochs: int, state=None, done: int = 0, spe: int = 10, **kw):
    """A stage's schedule, resumed from ``state`` saved at the end of epoch ``done``."""
    s = Schedule(ScheduleConfig(name=name, **kw), lr, epochs, spe)
    if state is not None:
        s.resume(state, done)
    return s


@pytest.mark.parametrize("name", SCHEDULES)
def test_resume_with_the_same_settings_continues_exactly(name):
    kw = {"milestones": [2, 3]} if name == "multistep" else {}
    a = stage(name, 0.3, 5, spe=7, patience=1, **kw)
    for epoch in (1, 2):
        a.epoch_lrs(epoch)
        a.epoch_end({"val_loss": 1.0})
    b = stage(name, 0.3, 5, a.state_dict(), done=2, spe=7, patience=1, **kw)
    for epoch in (3, 4, 5):
        assert b.epoch_lrs(epoch) == a.epoch_lrs(epoch)
        a.epoch_end({"val_loss": 1.0})
        b.epoch_end({"val_loss": 1.0})


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("done", [1, 3, 6])
def test_a_new_stage_starts_at_the_lr_it_asks_for(name, done):
    """Every schedule, resumed at any epoch with a new lr: the stage's first step is that lr."""
    kw = {"milestones": [2, 4, 7]} if name == "multistep" else {}
    first = stage(name, 0.1, 8, warmup_start=0.1, **kw)
    new = stage(name, 0.01, 12, first.state_dict(), done=done, **kw)
    lrs = new.epoch_lrs(done + 1)
    assert lrs[0] == pytest.approx(0.01)
    assert max(new.epoch_lrs(e)[i] for e in range(done + 1, 13) for i in range(10)) == \
        pytest.approx(0.01)  # it only decays from there: no second warmup or rise
    if name in ("cosine", "onecycle"):
        assert new.lr_at(12) == pytest.approx(0.0, abs=1e-12)  # anneals to its end lr at E
        assert new.lr_at((done + 12) / 2) == pytest.approx(0.005)  # halfway
    if name == "multistep":  # only milestones after the stage start count
        assert new.lr_at(11.9) == pytest.approx(0.01 * 0.1 ** sum(m > done for m in (2, 4, 7)))


def test_a_stage_that_keeps_the_lr_continues_the_curve_stretched():
    # one-cycle trained 3 of 3 epochs, then extended to 5 with the same lr (the old behaviour)
    first = stage("onecycle", 0.1, 3)
    ext = stage("onecycle", 0.1, 5, first.state_dict(), done=3)
    assert ext.anchor is None
    assert ext.lr_at(3) == pytest.approx(stage("onecycle", 0.1, 5).lr_at(3))  # 0.0533
    # a stage after an lr change that only extends the run keeps that stage's anchor
    new = stage("cosine", 0.01, 6, stage("cosine", 0.1, 4).state_dict(), done=4)
    longer = stage("cosine", 0.01, 8, new.state_dict(), done=5)
    assert longer.anchor == new.anchor and longer.lr_at(4) == pytest.approx(0.01)
    assert longer.lr_at(6) == pytest.approx(0.005)  # halfway from epoch 4 to 8


def test_plateau_state_carries_over_and_resets_its_scale_with_a_new_lr():
    a = stage("plateau", 1.0, 10, patience=1, factor=0.5)
    for v in (1.0, 1.0, 1.0):
        a.epoch_end({"val_loss": v})
    assert a.lr_at(3) == pytest.approx(0.25)
    same = stage("plateau", 1.0, 20, a.state_dict(), done=3, patience=1, factor=0.5)
    assert same.lr_at(3) == pytest.approx(0.25) and same.plateau.tracker.best == 1.0
    new = stage("plateau", 0.1, 20, a.state_dict(), done=3, patience=1, factor=0.5)
    assert new.lr_at(3) == pytest.approx(0.1) and new.plateau.tracker.best == 1.0
    new.epoch_end({"val_loss": 1.0})
    assert new.lr_at(4) == pytest.approx(0.05)


def test_a_new_batch_size_keeps_the_epoch_position():
    a = stage("cosine", 1.0, 10, spe=10)
    b = stage("cosine", 1.0, 10, a.state_dict(), done=5, spe=20)
    assert b.epoch_lrs(6)[0] == pytest.approx(a.epoch_lrs(6)[0]) == pytest.approx(0.5)
    assert len(b.epoch_lrs(6)) == 20


# ----------------------------------------------------------------------------- optimizers


def test_optimizer_kinds_and_hyperparameters():
    m = tiny_model()
    sgd = build_optimizer(m, OptimConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True), "cpu")
    assert type(sgd) is torch.optim.SGD
    g = sgd.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"]) == (0.8, True, 5e-4)
    assert g["lr"] == 0.1 and g["name"] == "all"
    adam = build_optimizer(m, OptimConfig(name="adam", lr=1e-3, betas=[0.8, 0.99]), "cpu")
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["betas"] == (0.8, 0.99)
    assert type(build_optimizer(m, OptimConfig(name="adam", decoupled_wd=True), "cpu")) is (
        torch.optim.AdamW
    )
    assert type(build_optimizer(m, OptimConfig(name="adamw"), "cpu")) is torch.optim.AdamW
    assert type(build_optimizer(m, OptimConfig(name="sgd", decoupled_wd=True), "cpu")) is SGDW


def test_unknown_and_reserved_optimizer_names():
    from convzoo import config as C

    with pytest.raises(ConvzooError, match=r"optim.name.*'lamb'.*sgd.*adam.*adamw"):
        C.from_dict({"optim": {"name": "lamb"}})
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


def trained(cfg: OptimConfig, steps: int = 3, model=None):
    """``tiny_model`` after ``steps`` steps of ``cfg``'s optimizer (state in every param)."""
    model = model or tiny_model()
    opt = build_optimizer(model, cfg, "cpu", total_steps=100)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("before, after", [
    (OptimConfig(), OptimConfig(bias_lr_scale=3.0, weight_decay=1e-3, momentum=0.5)),
    (OptimConfig(no_decay_norm_bias=True), OptimConfig()),
    (OptimConfig(bias_wd_scale=0.5), OptimConfig(no_decay_norm_bias=True, decoupled_wd=True)),
    (OptimConfig(name="adam", lr=1e-3), OptimConfig(name="adamw", lr=1e-3, bias_lr_scale=2)),
    (OptimConfig(name="muon"), OptimConfig(name="muon", muon_lr=0.01, bias_lr_scale=4)),
    (OptimConfig(lookahead_steps=2), OptimConfig(lookahead_steps=2, bias_lr_scale=2)),
])
def test_a_new_stage_may_regroup_the_params_and_keeps_each_params_state(before, after):
    """The saved per-parameter state lands on the same parameters under the new grouping;
    the group settings are the new stage's (the one rule, :func:`param_groups`)."""
    model, old = trained(before)
    new = build_optimizer(model, after, "cpu", total_steps=100)
    load_optimizer_state(new, old.state_dict(), model, before, after)
    inner_old = old.optimizer if isinstance(old, Lookahead) else old
    inner_new = new.optimizer if isinstance(new, Lookahead) else new
    for p in model.parameters():
        if p.requires_grad:
            for key, value in inner_old.state[p].items():
                assert torch.equal(inner_new.state[p][key], value), key
    expected = {g["name"]: g for g in param_groups(model, after)}
    for g in inner_new.param_groups:
        assert g["lr_scale"] == expected[g["name"]]["lr_scale"]
        assert g.get("decoupled_wd", g["weight_decay"]) == expected[g["name"]]["weight_decay"]
    if isinstance(new, Lookahead):
        assert new.fast_steps == old.fast_steps
        old_slow = {id(p): s for p, s in zip(old._params, old.slow, strict=True)}
        assert all(torch.equal(s, old_slow[id(p)]) for p, s in zip(new._params, new.slow))
        assert [g["name"] for g in old.param_groups] != [g["name"] for g in new.param_groups]


def test_lookahead_switched_on_in_a_new_stage_starts_from_the_weights():
    model, old = trained(OptimConfig())
    new = build_optimizer(model, OptimConfig(lookahead_steps=2), "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the checkpoint's weights, loaded after the optimizer was built
    load_optimizer_state(new, old.state_dict(), model, OptimConfig(),
                         OptimConfig(lookahead_steps=2))
    assert all(torch.equal(s, p) for s, p in zip(new.slow, new._params, strict=True))


def test_the_kind_of_optimizer_cannot_change_on_resume():
    model, old = trained(OptimConfig())
    new = build_optimizer(model, OptimConfig(name="adam"), "cpu")
    with pytest.raises(ConvzooError, match="optim.name=adam.*sgd"):
        load_optimizer_state(new, old.state_dict(), model, OptimConfig(),
                             OptimConfig(name="adam"))


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


@pytest.mark.parametrize("name, kw", [("onecycle", {}), ("cosine", {"warmup_epochs": 2}),
                                      ("constant", {"warmup_epochs": 1})])
def test_no_step_trains_at_lr_0(name, kw):
    """A rise from 0 (warmup_start 0, the one-cycle default) starts at the lr of the first
    step's end: a step at lr 0 is a step wasted; every other step keeps its start's lr."""
    s = Schedule(ScheduleConfig(name=name, **kw), 0.4, 10, 4)
    lrs = [lr for epoch in range(1, 11) for lr in s.epoch_lrs(epoch)]
    assert min(lrs) > 0
    assert lrs[0] == pytest.approx(s.lr_at(1 / 4))
    assert lrs[1:] == [pytest.approx(s.lr_at(t / 4)) for t in range(1, 40)]


def test_a_small_split_says_how_much_of_it_each_epoch_leaves_out(tmp_path, capsys):
    from convzoo.cli import main

    assert main(["train", "--data", "digits", "--set", "data.limit=200", "--set",
                 "data.image_size=8", "--batch-size", "128", "--epochs", "1", "--out",
                 str(tmp_path), "--set", "train.loggers=[]"]) == 0
    assert "trains on 128 of them (1 step of 128) and leaves 72 (36%) out" in \
        capsys.readouterr().err
    assert main(["train", "--data", "digits", "--set", "data.limit=200", "--set",
                 "data.image_size=8", "--batch-size", "100", "--epochs", "1", "--out",
                 str(tmp_path), "--set", "train.loggers=[]"]) == 0
    assert "leaves" not in capsys.readouterr().err
