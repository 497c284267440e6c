"""Fine-tuning that takes its source's shape (``model.init``: a run's model, input geometry and
normalisation, timm's pretrained config, unless the config sets them; said on the terminal and
in init.json) and layer-wise lr decay (``optim.layer_decay``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from convzoo import config as C
from convzoo.cli import main
from convzoo.models import create_model
from convzoo.runconfig import train_config
from convzoo.training.optim import build_optimizer
from convzoo.training.schedule import set_lr

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["train", "--batch-size", "16", "--set", "train.loggers=[]", "--set", "train.threads=1"]


@pytest.fixture(scope="module")
def big_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 224x224 RGB images of three digit classes (train 36, test 12)."""
    root = tmp_path_factory.mktemp("big")
    digits = load_digits()
    for i in range(48):
        folder = root / ("train" if i < 36 else "test") / f"c{digits.target[i] % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").resize((224, 224)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def source_32px(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch resnet20 run on digits at 32 px (the digits' default size)."""
    out = tmp_path_factory.mktemp("src")
    assert main([*BASE, "--data", "digits", "--set", "data.limit=100", "--epochs", "1",
                 "--out", str(out), "--name", "s"]) == 0
    return out / "s"


def test_fine_tuning_a_32px_run_on_224px_images_trains_at_32px_and_says_so(
        source_32px, big_images, tmp_path, caplog):
    source = json.loads((source_32px / "summary.json").read_text())
    assert source["input"] == "3x32x32"
    with caplog.at_level(logging.INFO, logger="convzoo"):
        assert main([*BASE, "--data", str(big_images), "--epochs", "1", "--out", str(tmp_path),
                     "--name", "ft", "--set", f"model.init={source_32px}"]) == 0
    run = tmp_path / "ft"
    assert json.loads((run / "summary.json").read_text())["input"] == "3x32x32"
    took = json.loads((run / "init.json").read_text())["took"]
    mean = took.pop("preprocess.mean")
    assert took == {"model.name": "resnet20", "model.kwargs": {}, "data.image_size": 32,
                    "data.channels": 3, "data.resize": "crop", "preprocess.kind": "channel",
                    "preprocess.std": took["preprocess.std"]}
    from convzoo.saved import load_checkpoint

    fitted = load_checkpoint(source_32px)["preprocess"]["mean"].tolist()
    assert mean == pytest.approx(fitted, abs=1e-3)  # the source's normalisation, not refitted
    assert load_checkpoint(run)["preprocess"]["mean"].tolist() == pytest.approx(mean)
    lines = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"model.init {source_32px}: took model.name="
                                                   "resnet20") and "data.image_size=32" in lines[0]
    # what the user sets wins, and is not recorded as taken
    cfg = train_config(None, {"data": {"source": str(big_images), "image_size": 64},
                              "model": {"init": str(source_32px)}})
    assert (cfg.data.image_size, cfg.model.name) == (64, "resnet20")
    assert "data.image_size" not in cfg.model.init_took
    cfg = train_config(None, {"model": {"init": str(source_32px), "name": "cnn_bn"},
                              "preprocess": {"kind": "global_mean"}})
    assert (cfg.model.name, cfg.preprocess.kind, cfg.preprocess.mean) == (
        "cnn_bn", "global_mean", None)
    assert {"model.kwargs", "preprocess.mean", "preprocess.std"}.isdisjoint(cfg.model.init_took)


def test_timm_init_takes_the_pretrained_config_without_downloading():
    timm = pytest.importorskip("timm")
    pretrained = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    cfg = train_config(None, {"model": {"init": "timm:resnet18.a1_in1k"}})
    assert (cfg.model.name, cfg.data.image_size, cfg.data.channels) == ("timm:resnet18", 224, 3)
    assert cfg.preprocess.mean == pytest.approx([255 * v for v in pretrained.mean], abs=1e-3)
    assert cfg.preprocess.std == pytest.approx([255 * v for v in pretrained.std], abs=1e-3)
    assert set(cfg.model.init_took) == {"model.name", "data.image_size", "data.channels",
                                        "preprocess.kind", "preprocess.mean", "preprocess.std"}
    cfg = train_config(None, {"model": {"init": "timm:resnet18.a1_in1k"},
                              "data": {"image_size": 96}})
    assert cfg.data.image_size == 96


def test_layer_decay_lrs_follow_the_depth_from_the_head():
    """resnet20: stem, layer1-3, head. With layer_decay 0.5 and backbone_lr_scale 0.1, at base
    lr 0.2: head 0.2, layer3 0.2*0.1*0.5, layer2 *0.25, layer1 *0.125, stem *0.0625."""
    model = create_model("resnet20")
    cfg = C.OptimConfig(lr=0.2, layer_decay=0.5, backbone_lr_scale=0.1)
    optimizer = build_optimizer(model, cfg, "cpu")
    set_lr(optimizer, 0.2)
    ids = {id(p): n for n, p in model.named_parameters()}
    lrs = {ids[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lrs) == len(list(model.parameters()))
    stages = model.stage_names()  # [[stem], [layer1], [layer2], [layer3]]
    expected = {}
    for i, prefixes in enumerate(stages):
        for n in lrs:
            if any(n.startswith(p + ".") for p in prefixes):
                expected[n] = 0.2 * 0.1 * 0.5 ** (len(stages) - i)
    head = {n for n in lrs if n.startswith("fc.")}
    expected.update({n: 0.2 for n in head})
    assert lrs == pytest.approx(expected)
    assert sorted({round(v, 8) for v in lrs.values()}) == pytest.approx(
        [0.00125, 0.0025, 0.005, 0.01, 0.2])
    # off (null) by default: one group, as before
    assert [g["name"] for g in build_optimizer(model, C.OptimConfig(), "cpu").param_groups] == [
        "all"]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_layer_decay_outside_0_1_is_refused_in_one_line(value, capsys):
    assert main(["train", "--dry-run", "--set", f"optim.layer_decay={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"convzoo: error: optim.layer_decay={float(value)} is outside "
                                "its valid range (0, 1]"]


def test_layer_decay_needs_a_model_that_names_its_stages():
    from torch import nn

    from convzoo.errors import ConvzooError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(ConvzooError, match="optim.layer_decay: .* does not name its stages"):
        build_optimizer(model, C.OptimConfig(layer_decay=0.8), "cpu")
