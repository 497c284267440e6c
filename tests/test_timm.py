"""timm's architectures as ``timm:<name>``: registry, CLI listing, the classifier interface,
freezing, a one-epoch run that evals and exports like a zoo model, and the missing extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.errors import ConvzooError
from convzoo.models import create_model, freeze, get_entry, model_info
from convzoo.models.heads import head_state_keys, num_outputs, stage_parameter_names
from convzoo.models.registry import _timm_entry
from convzoo.saved import load_weights_file


@pytest.fixture
def no_timm(monkeypatch):
    """As if timm were not installed (importing it raises ImportError)."""
    monkeypatch.setitem(sys.modules, "timm", None)
    _timm_entry.cache_clear()
    yield
    _timm_entry.cache_clear()


def test_missing_timm_is_one_error_naming_the_extra(no_timm, tmp_path, capsys):
    with pytest.raises(ConvzooError, match=r"model 'timm:resnet18' needs timm, an optional "
                                           r"extra: pip install 'convzoo\[timm\]'"):
        create_model("timm:resnet18")
    out = tmp_path / "runs"
    assert main(["train", "--model", "timm:test_resnet", "--data", "digits", "--epochs", "1",
                 "--out", str(out), "--set", "train.loggers=[]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'convzoo[timm]'" in err
    assert not out.exists() or not any(out.iterdir())  # no run directory left behind
    assert main(["models", "--all"]) == 2
    assert "convzoo[timm]" in capsys.readouterr().err
    assert main(["models"]) == 0  # the zoo alone needs no timm


try:
    import timm
except ImportError:  # the tests below need the extra; the one above runs either way
    timm = None
requires_timm = pytest.mark.skipif(timm is None, reason="timm not installed (convzoo[timm])")


@requires_timm
def test_timm_names_resolve_in_the_registry():
    entry = get_entry("timm:test_resnet")
    assert entry.source == "timm" and entry.input_size == (3, 160, 160)
    model = create_model("timm:test_resnet", num_classes=5, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ConvzooError, match=r"unknown timm model 'resnet18x'; did you mean: "
                                           r"timm:resnet18"):
        create_model("timm:resnet18x")
    with pytest.raises(ConvzooError, match=r"model 'timm:test_resnet' does not take keyword "
                                           r"'widthh'"):
        create_model("timm:test_resnet", widthh=2)
    info = model_info("timm:resnet18")  # the same figures as the torchvision wrapper
    assert info["params"] == model_info("resnet18")["params"] == 11_689_512
    assert info["flops"] == model_info("resnet18")["flops"]


@requires_timm
def test_models_all_lists_timm(capsys):
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "timm:resnet18\n" in out and "timm:convnext_tiny\n" in out
    assert f"timm ({len(timm.list_models())} architectures" in out
    assert main(["models", "timm:test_*net", "resnet2*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert "timm:test_resnet" in names and "resnet20" in names and "resnet18" not in names
    assert all(r["params"] > 0 and r["flops"] > 0 for r in rows)
    assert main(["models", "timm:resnet18x"]) == 2
    assert "did you mean: timm:resnet18" in capsys.readouterr().err


@requires_timm
@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_efficientnet",
                                  "timm:test_convnext"])
def test_timm_models_share_the_interface_and_freeze(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4)
    assert num_outputs(model.get_classifier()) == 4
    model.reset_classifier(6)
    x = torch.randn(4, 3, 32, 32)
    assert model(x).shape == (4, 6)
    stages = stage_parameter_names(model)
    assert len(stages) >= 3 and not {n for s in stages for n in s} & head_state_keys(model)
    frozen = set(freeze(model, "all_but_last_stage"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.arange(4)).backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    stats = [k for k in after if k.endswith("running_mean")]
    frozen_stats = [k for k in stats if k.replace("running_mean", "weight") in frozen]
    assert all(torch.equal(after[k], before[k]) for k in frozen_stats)
    assert any(not torch.equal(after[k], before[k]) for k in set(stages[-1]))


@requires_timm
@pytest.mark.slow
def test_timm_model_trains_evals_and_exports_through_the_cli(tmp_path, capsys):
    """One epoch on digits (32 px: test_resnet downsamples 32x), then eval, ONNX export with
    the onnxruntime comparison, and the run's model.safetensors rebuilt by load_weights_file."""
    pytest.importorskip("onnx")
    out = tmp_path / "runs"
    assert main(["train", "--model", "timm:test_resnet", "--data", "digits", "--set",
                 "data.image_size=32", "--set", "data.limit=200", "--batch-size", "32",
                 "--epochs", "1", "--out", str(out), "--name", "t", "--set",
                 "train.loggers=[]"]) == 0
    run = out / "t"
    ckpt = ckpt_io.load_checkpoint(run)
    assert ckpt["model_name"] == "timm:test_resnet" and ckpt["num_classes"] == 10
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(summary["top1"])
    assert main(["export", str(run), "--format", "onnx", "--check"]) == 0
    err = capsys.readouterr().err
    assert "onnx.checker: ok" in err and "logits match" in err
    model, meta = load_weights_file(run / "model.safetensors")
    assert meta["model"] == "timm:test_resnet"
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
