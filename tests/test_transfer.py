"""Training from trained weights through the CLI: ``model.init`` (head replaced, report in the
run directory, no data-dependent init), ``model.freeze`` (frozen tensors bit-identical after
training, also across a resume; a linear probe then full fine-tuning), and
``optim.backbone_lr_scale`` (the backbone's own lr through the one param-group rule)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.models import create_model
from convzoo.models.freeze import FREEZE_MODES, frozen_parameter_names
from convzoo.models.heads import head_and_backbone_params
from convzoo.training.loop import check
from convzoo.training.optim import param_groups

pytestmark = pytest.mark.slow  # trains on CIFAR subsets (and the benchmark in a subprocess)


@pytest.fixture(scope="module")
def three_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of three digit classes ("zero", "one", "two"; 8x8 RGB PNGs): data with
    other classes than the 10-class digits run."""
    root = tmp_path_factory.mktemp("three")
    digits = load_digits()
    names = ["zero", "one", "two"]
    for split, (lo, hi) in {"train": (0, 40), "test": (40, 55)}.items():
        for label, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            picks = np.flatnonzero(digits.target == label)[lo:hi]
            for i in picks:
                pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels).convert("RGB").save(root / split / name / f"{i}.png")
    return root


def train(*args: str) -> None:
    base = ["train", "--batch-size", "16", "--set", "train.loggers=[]",
            "--set", "train.threads=1"]
    assert main([*base, *args]) == 0


def _state(run: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load_checkpoint(run)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str]) -> list[str]:
    """The keys among `keys` whose tensors differ."""
    return [k for k in keys if not torch.equal(a[k], b[k])]


def test_init_from_a_run_replaces_the_head_and_reports_it(run_dir, three_digits, tmp_path):
    train("--data", str(three_digits), "--epochs", "1", "--out", str(tmp_path), "--name", "ft",
          "--set", f"model.init={run_dir}")
    report = json.loads((tmp_path / "ft" / "init.json").read_text())
    assert sorted(report["reinitialised"]) == ["fc.bias", "fc.weight"]
    assert "fc.weight (10, 64) in the source, (3, 64) here" in report["head_reason"]
    assert str(run_dir.resolve()) in report["source"]
    assert len(report["loaded"]) == len(_state(run_dir)) - 2
    ckpt = ckpt_io.load_checkpoint(tmp_path / "ft")
    assert ckpt["classes"] == ["one", "two", "zero"]
    assert ckpt["config"]["model"]["init"] == str(run_dir)
    # a resume continues from the checkpoint: model.init is not loaded again, init.json stays
    (tmp_path / "ft" / "init.json").unlink()
    train("--resume", str(tmp_path / "ft"), "--epochs", "2")
    assert not (tmp_path / "ft" / "init.json").exists()


@pytest.mark.parametrize("what", ["backbone", "all_but_last_stage"])
def test_frozen_tensors_are_bit_identical_after_training_and_resume(run_dir, three_digits,
                                                                    tmp_path, what):
    """SGD with momentum and weight decay, 2 epochs, then a resumed stage: every frozen
    parameter and the running statistics of frozen batch norms equal the source run's."""
    train("--data", str(three_digits), "--epochs", "2", "--out", str(tmp_path), "--name", "f",
          "--set", f"model.init={run_dir}", "--set", f"model.freeze={what}",
          "--set", "optim.ema_decay=0.9")
    source = _state(run_dir)
    model = create_model("resnet20", num_classes=3)
    frozen = frozen_parameter_names(model, what)
    assert frozen
    modules = {n.rpartition(".")[0] for n in frozen}  # frozen BNs: their buffers too
    buffers = [k for k, _ in model.named_buffers() if k.rpartition(".")[0] in modules]
    trained = [n for n, _ in model.named_parameters() if n not in frozen]
    for weights in ("model", "ema"):
        state = ckpt_io.load_checkpoint(tmp_path / "f")[weights]
        state = state["module"] if weights == "ema" else state
        assert _same(state, source, frozen + buffers) == []
        assert _same(state, source, [k for k in trained if not k.startswith("fc.")]) == (
            [] if what == "backbone" else [k for k in trained if not k.startswith("fc.")])
    train("--resume", str(tmp_path / "f"), "--epochs", "3")  # a new stage: freeze re-applied
    after = _state(tmp_path / "f")
    assert _same(after, source, frozen + buffers) == []


def test_linear_probe_then_fine_tune_all(run_dir, three_digits, tmp_path):
    """Stage 1 trains the head only; a resumed stage with model.freeze=none trains everything
    (the optimizer's state is carried over for the head, fresh for the unfrozen backbone)."""
    train("--data", str(three_digits), "--epochs", "1", "--out", str(tmp_path), "--name", "lp",
          "--set", f"model.init={run_dir}", "--set", "model.freeze=backbone")
    probe = _state(tmp_path / "lp")
    backbone = [k for k in head_and_backbone_params(create_model("resnet20", num_classes=3))[1]]
    assert _same(probe, _state(run_dir), backbone) == []
    train("--resume", str(tmp_path / "lp"), "--epochs", "2", "--set", "model.freeze=none")
    tuned = _state(tmp_path / "lp")
    assert set(_same(tuned, probe, backbone)) == set(backbone)
    cfg = C.load_config(tmp_path / "lp" / "config.yaml")
    assert cfg.stages[-1].set["model.freeze"] == "none"
    # and back: freezing again in a third stage
    train("--resume", str(tmp_path / "lp"), "--epochs", "3", "--set", "model.freeze=backbone")
    assert _same(_state(tmp_path / "lp"), tuned, backbone) == []


def test_backbone_lr_scale_groups(run_dir, three_digits):
    """optim.backbone_lr_scale: the head's groups at the rule's lr, the backbone's scaled; the
    bias rule multiplies in; every trainable parameter in exactly one group."""
    cfg = C.from_dict({"data": {"source": str(three_digits)}, "train": {"batch_size": 16},
                       "model": {"init": str(run_dir)},
                       "optim": {"backbone_lr_scale": 0.1, "bias_lr_scale": 2.0}})
    _, _, run = check(cfg)
    groups = {g["name"]: g for g in run.optimizer.param_groups}
    assert {n: g["lr_scale"] for n, g in groups.items()} == pytest.approx(
        {"head:decay": 1.0, "head:norm_bias": 2.0, "backbone:decay": 0.1,
         "backbone:norm_bias": 0.2})
    head, backbone = head_and_backbone_params(run.model)
    ids = {id(p): n for n, p in run.model.named_parameters()}
    names = {n: {ids[id(p)] for p in g["params"]} for n, g in groups.items()}
    assert names["head:decay"] | names["head:norm_bias"] == set(head)
    assert names["backbone:decay"] | names["backbone:norm_bias"] == set(backbone)
    run.schedule.epoch_lrs(1)
    from convzoo.training.schedule import set_lr

    set_lr(run.optimizer, 0.05)
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(
        {"head:decay": 0.05, "head:norm_bias": 0.1, "backbone:decay": 0.005,
         "backbone:norm_bias": 0.01})


def test_backbone_lr_scale_trains_the_backbone_slower(run_dir, three_digits, tmp_path):
    """The same run with backbone_lr_scale 1 and 0.01 (plain SGD, no decay): the head moves
    alike at first, the backbone a hundred times less."""
    moved = {}
    for scale in ("1", "0.01"):
        train("--data", str(three_digits), "--epochs", "1", "--out", str(tmp_path), "--name",
              scale, "--set", f"model.init={run_dir}", "--set", f"optim.backbone_lr_scale={scale}",
              "--set", "optim.momentum=0", "--set", "optim.weight_decay=0",
              "--set", "schedule.name=constant", "--set", "optim.lr=0.01")
        state, source = _state(tmp_path / scale), _state(run_dir)
        moved[scale] = (state["stem.0.weight"] - source["stem.0.weight"]).abs().sum().item()
    assert 0 < moved["0.01"] < moved["1"] / 10


def test_trained_weights_replace_data_dependent_init(tmp_path):
    """The fast family sets its whitening filters from data; started from trained weights it
    keeps the loaded ones."""
    torch.manual_seed(3)
    source = create_model("fast94", num_classes=10)
    with torch.no_grad():
        source.whiten.weight.normal_()
    torch.save(source.state_dict(), tmp_path / "fast.pt")
    cfg = C.from_dict({"data": {"source": "digits", "limit": 200}, "model": {"name": "fast94"},
                       "train": {"batch_size": 32}})
    _, _, run = check(cfg)
    assert not torch.equal(run.model.whiten.weight.cpu(), source.whiten.weight)
    assert run.state.init_seconds > 0
    cfg = C.replace(cfg, model=C.replace(cfg.model, init=str(tmp_path / "fast.pt")))
    _, _, run = check(cfg)
    assert torch.equal(run.model.whiten.weight.cpu(), source.whiten.weight)
    assert run.state.init_seconds == 0 and run.init_report is not None


def test_freeze_choices_are_the_library_modes(tmp_path, capsys):
    assert C.choices("model.freeze") == FREEZE_MODES
    assert main(["train", "--set", "model.freeze=head", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.freeze" in err and "all_but_last_stage" in err
    assert main(["train", "--set", "optim.backbone_lr_scale=0", "--out", str(tmp_path)]) == 2
    assert "optim.backbone_lr_scale" in capsys.readouterr().err
    assert main(["train", "--set", "model.init=/nonexistent/run", "--out", str(tmp_path)]) == 2
    assert "/nonexistent/run" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_param_groups_unchanged_without_the_option():
    """backbone_lr_scale=1 keeps the old layout (resume of older checkpoints)."""
    model = create_model("resnet20")
    groups = param_groups(model, C.OptimConfig())
    assert [g["name"] for g in groups] == ["all"]
    groups = param_groups(model, C.OptimConfig(no_decay_norm_bias=True))
    assert [g["name"] for g in groups] == ["decay", "no_decay"]


# ----------------------------------------------------------------------------- real data


def cifar_jpeg() -> Path | None:
    """The CIFAR-10 JPEG tarball (CONVZOO_CIFAR10_JPEG, else ../shared/datasets), or None."""
    import os

    env = os.environ.get("CONVZOO_CIFAR10_JPEG")
    path = Path(env) if env else (Path(__file__).resolve().parents[2] /
                                  "shared/datasets/cifar10-jpeg.tar.gz")
    return path if path.is_file() else None


@pytest.mark.cifar
@pytest.mark.skipif(cifar_jpeg() is None, reason="needs ../shared/datasets/cifar10-jpeg.tar.gz")
def test_transfer_beats_scratch_on_cifar_subsets(tmp_path, capsys):
    """RESULTS.md's transfer table in small, through its own script (benchmarks/transfer.py):
    ResNet-20 trained on CIFAR-10 classes 0-4 (400 images each, 3 epochs), then 1 epoch on
    classes 5-9 (400 each) from those weights with a new head beats 1 epoch from scratch (one
    seed here; RESULTS.md has two at a larger size)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import transfer

    assert transfer.main(["--archive", str(cifar_jpeg()), "--train-per-class", "400",
                          "--test-per-class", "100", "--source-epochs", "3", "--seeds", "0",
                          "--threads", "1", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    top1 = {(r["task"], r["arm"], r["seed"]): r["top1"] for r in result["rows"]}
    ft, scratch = top1[("CIFAR 5-9", "fine-tune", 0)], top1[("CIFAR 5-9", "scratch", 0)]
    assert ft > scratch + 3, (ft, scratch)
    init = json.loads((tmp_path / "cifar-fine-tune0" / "init.json").read_text())
    assert "src0" in init["source"] and len(init["reinitialised"]) == 2  # the new head
