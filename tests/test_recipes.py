"""Shipped recipes: each validates, builds its model, carries its seed's figures, and trains a
one-epoch smoke through the real CLI on synthetic data in the recipe's own data format (official
CIFAR python archives, an ImageNet-style image-folder tree of JPEGs)."""

from __future__ import annotations

import io
import json
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sweeps import inner_loop

from convzoo import config as C
from convzoo import report
from convzoo.cli import main
from convzoo.data.transforms.augment import build_eval_transform, build_train_augment
from convzoo.models import create_model
from convzoo.training.loop import stage_plan
from convzoo.training.optim import OPTIMIZERS
from convzoo.training.schedule import SCHEDULES, stage_lrs

RECIPES = C.list_recipes()
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}

# The seed experiments of SPEC.md: recipe -> (preprocess kind, optimizer, weight decay, batch
# size, model kwargs the recipe must pass). Weight decay is torch's coupled value: seed E's Keras
# l2(5e-4) penalty on the loss is a gradient term 2 * 5e-4 * w.
SEED_FACTS = {
    "inception_bn_small-cifar100": ("mean_image", "sgd", 1e-4, 64, {}),
    "resnet20-cifar10-neon": ("mean_image", "sgd", 1e-4, 128, {"shortcut": "projection",
                                                              "fc_bn": True}),
    "resnet32-cifar10-neon": ("mean_image", "sgd", 1e-4, 128, {"shortcut": "projection",
                                                              "fc_bn": True}),
    "resnet56-cifar10-neon": ("mean_image", "sgd", 1e-4, 128, {"shortcut": "projection",
                                                              "fc_bn": True}),
    "resnet110-cifar10-neon": ("mean_image", "sgd", 1e-4, 128, {"shortcut": "projection",
                                                               "fc_bn": True}),
    "cnn-cifar10": ("global_mean", "adam", 1e-4, 128, {}),
    "cnn-cifar10-zca": ("gcn_zca", "adam", 1e-4, 128, {}),
    "cnn_bn-cifar10": ("global_mean", "adam", 1e-4, 128, {}),
    "cnn_bn-cifar10-zca": ("gcn_zca", "adam", 1e-4, 128, {}),
    "vgg_c-cifar10": ("global_mean", "adam", 1e-4, 128, {}),
    "resnet74-cifar10": ("global_mean", "sgd", 1e-4, 128, {"shortcut": "chainer"}),
    "resnet74_sd-cifar10": ("global_mean", "sgd", 1e-4, 128, {"shortcut": "chainer",
                                                              "drop_path": 0.5}),
    "googlenet_bn-imagenet-sgd": ("channel", "sgd", 2e-4, 384, {}),
    "googlenet_bn-imagenet-sgd_low": ("channel", "sgd", 2e-4, 384, {}),
    "googlenet_bn-imagenet-adam": ("channel", "adam", 2e-4, 384, {}),
    "resnext29_8x16d-cifar10": ("channel", "sgd", 1e-3, 64, {}),
    "resnext29_8x16d-cifar10-plateau": ("channel", "sgd", 1e-3, 64, {}),
}

# The lr each seed used in a given (0-based) epoch, and the epoch its run ends at.
B_LR = ({0: 0.1, 89: 0.1, 90: 0.01, 134: 0.01, 135: 0.001, 179: 0.001}, 180)
C_ADAM = ({0: 1e-3, 99: 1e-3, 100: 1e-4, 199: 1e-4, 200: 1e-5, 299: 1e-5}, 300)
C_SGD = ({0: 0.1, 99: 0.1, 100: 0.01, 200: 0.001, 299: 0.001}, 300)
SEED_LR = {
    "inception_bn_small-cifar100": ({0: 0.05, 37: 0.05, 38: 0.01, 43: 0.01}, 44),
    **{f"resnet{d}-cifar10-neon": B_LR for d in (20, 32, 56, 110)},
    **{n: C_ADAM for n in ("cnn-cifar10", "cnn-cifar10-zca", "cnn_bn-cifar10",
                           "cnn_bn-cifar10-zca", "vgg_c-cifar10")},
    "resnet74-cifar10": C_SGD,
    "resnet74_sd-cifar10": C_SGD,
    "googlenet_bn-imagenet-sgd": ({0: 1e-2, 14: 1e-2, 15: 1e-3, 24: 1e-3, 25: 1e-4, 29: 1e-4}, 30),
    "googlenet_bn-imagenet-sgd_low": ({0: 1e-3, 69: 1e-3, 70: 1e-4, 80: 1e-5, 84: 1e-5}, 85),
    "googlenet_bn-imagenet-adam": ({0: 1e-3, 29: 1e-3, 30: 1e-4, 45: 1e-5, 49: 1e-5}, 50),
    # Keras LearningRateScheduler: 0.01 below epoch 100, 0.001 below 200, then 0.0001.
    "resnext29_8x16d-cifar10": ({0: 0.01, 99: 0.01, 100: 1e-3, 199: 1e-3, 200: 1e-4, 299: 1e-4},
                                300),
    "resnext29_8x16d-cifar10-plateau": ({0: 0.1}, 300),
}


def lr_by_epoch(cfg: C.Config) -> tuple[dict[int, float], int]:
    """Base lr at the start of every epoch, walking the stages as the trainer does."""
    plan = stage_plan(cfg)
    return stage_lrs(plan), plan[-1].train.epochs


# ----------------------------------------------------------------------------- static checks


def name_to_seed(name: str) -> str:
    """The SPEC.md letter a seed recipe's `source` starts with."""
    for prefix, letter in [("inception", "A"), ("resnet74", "C"), ("resnet", "B"), ("cnn", "C"),
                           ("vgg_c", "C"), ("googlenet", "D"), ("resnext", "E")]:
        if name.startswith(prefix):
            return f"{letter}:"
    raise AssertionError(name)


def test_every_seed_experiment_has_a_recipe():
    assert set(SEED_FACTS) <= set(RECIPES)
    fast = {"resnet20-cifar10-fast", "resnet56-cifar10-fast", "resnext29_8x16d-cifar10-fast",
            "vgg_c-cifar10-fast", "inception_bn_small-cifar100-fast", "googlenet_bn-imagenet-fast"}
    assert fast <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_builds_its_model(name):
    cfg = C.from_dict(C.load_recipe(name))
    assert cfg.name == name
    assert cfg.description.strip() and cfg.source.strip() and cfg.reported.strip()
    if name in SEED_FACTS or name.endswith("-fast"):
        assert cfg.train.name == ""  # each run names its own directory
    assert cfg.optim.name in OPTIMIZERS and cfg.schedule.name in SCHEDULES
    build_train_augment(cfg.augment, seed=0, num_classes=10), build_eval_transform(cfg.augment)
    if name.endswith("-fast"):  # convzoo's own recipes say so
        assert cfg.source == "convzoo" and cfg.description.startswith("convzoo")
        assert cfg.optim.nesterov and cfg.optim.no_decay_norm_bias
        assert cfg.optim.label_smoothing == pytest.approx(0.1) and cfg.train.epochs <= 60
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("name", sorted(SEED_FACTS))
def test_seed_recipe_carries_the_seed_hyperparameters(name):
    cfg = C.from_dict(C.load_recipe(name))
    kind, optimizer, weight_decay, batch, kwargs = SEED_FACTS[name]
    assert cfg.source.startswith(name_to_seed(name))
    assert cfg.preprocess.kind == kind
    assert cfg.optim.name == optimizer
    assert cfg.optim.weight_decay == pytest.approx(weight_decay)
    assert cfg.train.batch_size == batch
    assert {k: cfg.model.kwargs.get(k) for k in kwargs} == kwargs
    expected_lr, expected_end = SEED_LR[name]
    lrs, end = lr_by_epoch(cfg)
    assert end == expected_end
    for epoch, lr in expected_lr.items():
        assert lrs[epoch] == pytest.approx(lr, rel=1e-9), f"epoch {epoch}"


def test_seed_data_and_augmentation_match_spec():
    a = C.from_dict(C.load_recipe("inception_bn_small-cifar100"))
    assert (a.data.source, a.augment.crop, a.augment.pad, a.augment.flip) == ("cifar100", 28, 0, True)
    assert [(s.epochs, s.set) for s in a.stages] == [(44, {"optim.lr": 0.01})]
    b = C.from_dict(C.load_recipe("resnet56-cifar10-neon"))
    assert (b.augment.pad, b.augment.crop, b.augment.flip) == (4, 0, True)
    for name in ("cnn-cifar10", "resnext29_8x16d-cifar10"):
        c = C.from_dict(C.load_recipe(name))
        assert (c.augment.pad, c.augment.translate, c.augment.flip) == (0, 4, True)
    d = C.from_dict(C.load_recipe("googlenet_bn-imagenet-adam"))
    assert (d.augment.crop, d.augment.rotate, d.augment.shear) == (224, 15.0, 0.1)
    assert d.data.source not in ("imagenet", "cifar10", "cifar100", "digits")  # a path to supply
    assert d.train.save_every == 1
    e = C.from_dict(C.load_recipe("resnext29_8x16d-cifar10"))
    assert e.preprocess.mean == [125.307, 122.95, 113.865]
    assert e.preprocess.std == [62.9932, 62.0887, 66.7048]
    assert e.optim.nesterov and e.optim.momentum == 0.9
    p = C.from_dict(C.load_recipe("resnext29_8x16d-cifar10-plateau"))
    assert p.schedule.factor == pytest.approx(math.sqrt(0.1))
    assert (p.schedule.monitor, p.schedule.patience, p.schedule.min_lr) == ("val_loss", 10, 1e-6)
    assert p.data.val_fraction > 0  # the plateau watches a held-out split, not the test set


def test_recipes_listing_has_source_and_reported_for_every_recipe(capsys):
    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in rows) == RECIPES
    for r in rows:
        assert r["source"].strip() and r["reported"].strip(), r["name"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["inception_bn_small-cifar100"]["epochs"] == 44  # its stage counts


def test_imagenet_placeholder_without_data_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # so ~/data/imagenet surely does not exist
    rc = main(["train", "--recipe", "googlenet_bn-imagenet-sgd", "--out", str(tmp_path / "runs"),
               "--set", "train.loggers=[]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("convzoo: error:") and "~/data/imagenet" in err
    assert "\n" not in err


# ----------------------------------------------------------------------------- synthetic data


def _pickled(obj: dict) -> bytes:
    """A CIFAR python pickle: bytes keys, as the official (Python 2 era) files have."""
    return pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=2)


def _write_tar(path: Path, folder: str, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3072) uint8: 32x32 RGB images, channel-major rows as in the official batches."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def make_cifar10(path: Path, rng: np.random.Generator, per_batch: int = 10) -> None:
    """cifar-10-python.tar.gz with 5 train batches of `per_batch` images and a test batch."""
    members = {}
    for i in range(1, 6):
        members[f"data_batch_{i}"] = _pickled({
            "batch_label": f"training batch {i} of 5", "data": _rows(rng, per_batch),
            "labels": [j % 10 for j in range(per_batch)],
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]})
    members["test_batch"] = _pickled({
        "batch_label": "testing batch 1 of 1", "data": _rows(rng, 20),
        "labels": [j % 10 for j in range(20)], "filenames": [f"t_{j}.png" for j in range(20)]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    members["batches.meta"] = _pickled({"label_names": names, "num_cases_per_batch": per_batch,
                                        "num_vis": 3072})
    _write_tar(path, "cifar-10-batches-py", members)


def make_cifar100(path: Path, rng: np.random.Generator) -> None:
    """cifar-100-python.tar.gz: train (2 per fine class), test (1 per class), meta."""
    def split(n: int) -> dict:
        fine = [j % 100 for j in range(n)]
        return {"data": _rows(rng, n), "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "filenames": [f"img_{j}.png" for j in range(n)]}
    members = {"train": _pickled(split(200)), "test": _pickled(split(100)),
               "meta": _pickled({"fine_label_names": [f"fine{j}" for j in range(100)],
                                 "coarse_label_names": [f"coarse{j}" for j in range(20)]})}
    _write_tar(path, "cifar-100-python", members)


def make_image_tree(root: Path, rng: np.random.Generator) -> None:
    """ImageNet-style tree: train/<wnid>/*.JPEG (4 per class) and val/<wnid>/*.JPEG (2)."""
    for split, n in (("train", 4), ("val", 2)):
        for c, wnid in enumerate(["n01440764", "n01443537", "n01484850"]):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                pixels[..., c] = 255 - pixels[..., c] // 4  # a class-coloured tint
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> dict[str, Path]:
    """Built once: a data root holding both official-format CIFAR archives, and an image tree."""
    base = tmp_path_factory.mktemp("recipe-data")
    rng = np.random.default_rng(0)
    root = base / "root"
    root.mkdir()
    make_cifar10(root / ARCHIVES["cifar10"], rng)
    make_cifar100(root / ARCHIVES["cifar100"], rng)
    make_image_tree(base / "imagenet", rng)
    return {"root": root, "imagenet": base / "imagenet"}


# ----------------------------------------------------------------------------- smoke runs


def smoke_args(name: str, cfg: C.Config, data: dict[str, Path], tmp: Path) -> list[str]:
    """`convzoo train --recipe NAME` shrunk to one two-step epoch per stage on the fake data."""
    sets = ["train.epochs=1", "train.batch_size=4", "train.eval_batch_size=8", "data.limit=8",
            "train.loggers=[]", "train.compile=false", "train.log_every=1000"]
    args = ["train", "--recipe", name, "--out", str(tmp / "runs"), "--name", "x"]
    if cfg.data.source in ARCHIVES:  # the recipe's own source name, found in a local root
        sets += [f"data.root={data['root']}", "data.download=false"]
    elif cfg.data.source != "digits":  # ImageNet placeholder: the user's --data PATH
        args += ["--data", str(data["imagenet"])]
        sets += [f"data.root={tmp / 'cache'}", "data.image_size=64"]
        if cfg.augment.crop:
            sets.append("augment.crop=56")
        if cfg.augment.random_resized_crop:
            sets.append("augment.random_resized_crop=56")
    if cfg.preprocess.kind == "gcn_zca":  # ZCA of 3x32x32 is a 3072^2 eigenproblem: ~30 s here
        kwargs = {**cfg.model.kwargs, "image_size": 16}
        sets += ["data.image_size=16", f"model.kwargs={json.dumps(kwargs)}"]
    if cfg.stages:  # keep each stage's overrides, one epoch per stage
        stages = [{"epochs": i + 2, "set": s.set} for i, s in enumerate(cfg.stages)]
        sets.append(f"stages={json.dumps(stages)}")
    for s in sets:
        args += ["--set", s]
    return args


# In the inner loop: a seed recipe, the fast family and an ImageNet-protocol recipe
INNER_SMOKE = ("resnet20-cifar10-neon", "cifar10-fast94", "googlenet_bn-imagenette-5ep")


@pytest.mark.parametrize("name", inner_loop(RECIPES, INNER_SMOKE))
def test_recipe_trains_a_smoke_run_through_the_cli(name, fake_data, tmp_path, monkeypatch):
    # Drawing curves.png is ~0.9 s of a ~1.4 s smoke run; tests/test_train.py covers it.
    monkeypatch.setattr(report, "plot_curves", lambda run_dir: Path(run_dir) / "curves.png")
    cfg = C.from_dict(C.load_recipe(name))
    assert main(smoke_args(name, cfg, fake_data, tmp_path)) == 0
    run = tmp_path / "runs" / "x"
    summary = json.loads((run / "summary.json").read_text())
    written = C.load_config(run / "config.yaml")
    assert written.name == name
    assert written.model.name == cfg.model.name == summary["model"]
    assert written.model.kwargs.items() >= cfg.model.kwargs.items()  # e.g. neon's shortcut
    assert written.optim.name == cfg.optim.name
    assert written.optim.lr == cfg.optim.lr and written.schedule.name == cfg.schedule.name
    if cfg.data.source in ARCHIVES:
        assert summary["data"] == cfg.data.source  # read from the local official archive
    stages = 1 + len(cfg.stages)
    assert summary["epochs"] == stages
    tree = cfg.data.source not in ARCHIVES and cfg.data.source != "digits"  # train/ + val/
    assert summary["split"] == ("val" if cfg.data.val_fraction or tree else "test")
    assert math.isfinite(summary["loss"]) and 0 <= summary["top1"] <= 100
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, stages + 1))
    if cfg.stages and cfg.schedule.name == "constant":  # every stage ran at its own lr
        expected = [cfg.optim.lr] + [s.set.get("optim.lr", cfg.optim.lr) for s in cfg.stages]
        assert [r["lr"] for r in rows] == pytest.approx(expected)
