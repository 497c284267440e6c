"""Bad input, one line each: every case must exit 2 with one ``convzoo: error:`` line naming the
problem, print no traceback, and leave every existing file (a finished run, its caches)
byte-identical.

Extend it with one line per new bad input. A case is a command line with placeholders (a literal brace is written twice, ``{{``):

    {run}   a copy of a finished one-epoch digits run (compared byte for byte afterwards)
    {tmp}   an empty scratch folder (runs started by the case go under {tmp}/runs)
    {file}  a scratch file the case's ``setup`` wrote (``setup(tmp) -> None``)

``names`` is text the error line must contain: the key, file or value at fault.
Cases are grouped by the part of convzoo that must catch them; each group is its own list so
that the parts can grow independently. The second half runs single cases whose setup or checks
do not fit a table (argparse errors, corrupt folders, the real entry point, the light
commands' imports).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from convzoo.cli import main


@dataclass(frozen=True)
class Bad:
    argv: str  # command line after `convzoo`, with {run} / {tmp} / {file} placeholders
    names: str  # the error line must contain this (key, file or value at fault)
    setup: Callable[[Path], None] | None = None  # writes {tmp}/file (or more) before the call
    id: str = ""  # test id (default: the command line)


# ----------------------------------------------------------------------------- the cases


# Config keys and values: types, choices and ranges (config.py validates them in one place).
CONFIG_CASES: list[Bad] = [
    Bad("train --data digits --set train.batch_size=oops --out {tmp}/runs", "train.batch_size"),
    Bad("train --data digits --set nosuch.key=1 --out {tmp}/runs", "nosuch"),
    Bad("train --recipe {file} --out {tmp}/runs", "invalid YAML",
        setup=lambda tmp: (tmp / "file").write_text("optim: {lr: [0.1\n")),
    # recipe files that are not a config
    Bad("train --recipe {file} --out {tmp}/runs", "a recipe must be a mapping",
        setup=lambda tmp: (tmp / "file").write_text("- optim\n- lr\n"), id="recipe-list"),
    Bad("train --recipe {file} --out {tmp}/runs", "a recipe must be a mapping",
        setup=lambda tmp: (tmp / "file").write_text("42\n"), id="recipe-number"),
    Bad("train --recipe {file} --out {tmp}/runs", "appears twice",
        setup=lambda tmp: (tmp / "file").write_text("optim:\n  lr: 1\n  lr: 2\n"),
        id="recipe-duplicate-key"),
    Bad("train --recipe {file} --out {tmp}/runs", "aliases",
        setup=lambda tmp: (tmp / "file").write_text("a: &x [1]\nb: *x\n"), id="recipe-alias"),
    Bad("train --recipe {file} --out {tmp}/runs", "not UTF-8",
        setup=lambda tmp: (tmp / "file").write_bytes(b"\xff\xfe\x00\x01"), id="recipe-binary"),
    Bad("train --recipe {file} --out {tmp}/runs", "invalid YAML",
        setup=lambda tmp: (tmp / "file").write_text("[" * 3000), id="recipe-deep"),
    Bad("train --recipe {file} --out {tmp}/runs", "optim.lrr",
        setup=lambda tmp: (tmp / "file").write_text("optim: {lrr: 0.1}\n"), id="recipe-typo"),
    Bad("train --recipe {file} --out {tmp}/runs", "optim",
        setup=lambda tmp: (tmp / "file").write_text("optim: 0.1\n"), id="recipe-section-value"),
    Bad("train --recipe {tmp} --out {tmp}/runs", "cannot read"),
    # --set forms
    Bad("train --set optim.lr --out {tmp}/runs", "SECTION.KEY=VALUE"),
    Bad("train --set =1 --out {tmp}/runs", "SECTION.KEY=VALUE"),
    Bad("train --set optim..lr=1 --out {tmp}/runs", "SECTION.KEY=VALUE"),
    Bad("train --set optim.lr=[0.1 --out {tmp}/runs", "invalid YAML"),
    Bad("train --set optim.lr={{a: --out {tmp}/runs", "invalid YAML"),
    Bad("train --set optim=0.1 --out {tmp}/runs", "optim"),
    # tri-states, devices, run names, shortcuts
    Bad("train --set train.channels_last=maybe --out {tmp}/runs", "true, false or auto"),
    Bad("train --set optim.fused=2 --out {tmp}/runs", "optim.fused"),
    Bad("train --device gpu --out {tmp}/runs", "train.device"),
    Bad("train --device cuda:x --out {tmp}/runs", "train.device"),
    Bad("train --name ../escape --out {tmp}/runs", "train.name"),
    Bad("train --epochs 0 --out {tmp}/runs", "train.epochs=0 is outside its valid range [1, inf)"),
    Bad("train --epochs -1 --out {tmp}/runs", "train.epochs"),
    Bad("train --epochs 2.5 --out {tmp}/runs", "train.epochs"),
    Bad("train --batch-size 0 --out {tmp}/runs", "train.batch_size"),
    Bad("train --lr 0 --out {tmp}/runs", "optim.lr"),
    Bad("train --lr nan --out {tmp}/runs", "optim.lr"),
    Bad("train --lr inf --out {tmp}/runs", "optim.lr"),
    Bad("train --seed -1 --out {tmp}/runs", "train.seed"),
    # rules between keys, stages
    Bad("train --set schedule.warmup_epochs=2 --out {tmp}/runs", "schedule.warmup_epochs"),
    Bad("train --set optim.nesterov=true --set optim.momentum=0 --out {tmp}/runs",
        "optim.nesterov"),
    Bad("train --set schedule.min_lr=1 --out {tmp}/runs", "schedule.min_lr"),
    Bad("train --set data.image_size=8 --set augment.crop=9 --out {tmp}/runs", "augment.crop"),
    Bad("train --set augment.rrc_scale=[0.9,0.1] --out {tmp}/runs", "augment.rrc_scale"),
    Bad("train --set schedule.milestones=[5,5] --out {tmp}/runs", "schedule.milestones"),
    Bad("train --set 'stages=[{{epochs: 2}}]' --out {tmp}/runs", "stages[0].epochs"),
    Bad("train --set 'stages=[{{epochs: 9, set: {{optim.lr: -1}}}}]' --out {tmp}/runs",
        "stages[0].set"),
    Bad("train --set 'stages=[{{epochs: 9}}, {{epochs: 8}}]' --out {tmp}/runs", "stages[1].epochs"),
    Bad("train --set 'stages=[{{epochs: 9, set: {{nosuch.key: 1}}}}]' --out {tmp}/runs", "nosuch"),
    Bad("train --resume {run} --set optim.lr=-1", "optim.lr"),
    Bad("train --resume {run} --epochs 0", "train.epochs"),
    # command-line-only numbers, checked by the parser
    Bad("eval {run} --batch-size 0", "--batch-size"),
    Bad("eval {run} --batch-size x", "--batch-size"),
    Bad("eval {run} --device gpu", "--device"),
    Bad("eval {run} --tta sideways", "--tta"),
    Bad("predict {run} {tmp} --topk 0", "--topk"),
    Bad("predict {run} {tmp} --topk 1.5", "--topk"),
    Bad("predict {run} {tmp} --device cuda:", "--device"),
    Bad("bench --model resnet20 --steps 0", "--steps"),
    Bad("bench --model resnet20 --warmup -1", "--warmup"),
    Bad("bench --model resnet20 --train-images 0", "--train-images"),
    Bad("bench --model resnet20 --batch-size 0", "train.batch_size"),
    Bad("pack {tmp} {tmp}/out --resize -1", "--resize"),
    Bad("pack {tmp} {tmp}/out --quality 0", "--quality"),
    Bad("pack {tmp} {tmp}/out --quality 101", "--quality"),
    Bad("pack {tmp} {tmp}/out --workers -1", "--workers"),
    Bad("export {run} --format onnx --opset 6", "--opset"),
    Bad("export {run} --format onnx --opset 999", "--opset"),
    Bad("train --no-such-flag", "--no-such-flag"),
    Bad("no-such-command", "no-such-command"),
    Bad("config --set optim.lr=-1", "optim.lr"),
]


def _just_outside(key: str, tp: Any) -> list[tuple[str, str]]:
    """(value text, id) just outside the declared range of a numeric key, and a non-number."""
    from convzoo import config as C

    base, rules = C.unwrap(tp)
    rule = next(r for r in rules if isinstance(r, C.In))
    is_list = typing.get_origin(base) is list or list in {
        typing.get_origin(a) for a in typing.get_args(base)}
    integer = base is int
    step = 1 if integer else 1e-6
    out = []
    if math.isfinite(rule.lo):
        lo = rule.lo - step if rule.lo_closed else rule.lo
        out.append((f"{int(lo)}" if integer else f"{lo:.9g}", "below"))
    if math.isfinite(rule.hi):
        hi = rule.hi + step if rule.hi_closed else rule.hi
        out.append((f"{int(hi)}" if integer else f"{hi:.9g}", "above"))
    else:
        out.append(("1e999" if not integer else "1e999", "infinite"))
    if not integer:
        out.append(("nan", "nan"))
    out.append(("twelve", "not-a-number"))
    if is_list:  # one bad element in a list of the right length
        n = next((r.lo for r in rules if isinstance(r, C.Len)), 1)
        good = [v for v in (rule.lo, rule.hi) if math.isfinite(v)] or [0.0]
        out = [(f"[{','.join([t] + [repr(good[-1])] * (n - 1))}]", i) for t, i in out]
    return out


def _range_cases() -> list[Bad]:
    """Every numeric key of the tree, just outside its declared range and not a number, through
    --set and through a recipe file. Generated from the declarations: a new key is covered."""
    from convzoo import config as C

    cases = []
    for key, tp in C.declared_keys().items():
        if not any(isinstance(r, C.In) for r in C.unwrap(tp)[1]):
            continue
        section, name = key.split(".")
        for text, what in _just_outside(key, tp):
            cases.append(Bad(f"train --set {key}={text} --out {{tmp}}/runs", key,
                             id=f"set-{key}-{what}"))
            recipe = f"{section}:\n  {name}: {text}\n"
            cases.append(Bad("train --recipe {file} --out {tmp}/runs", key,
                             setup=lambda tmp, r=recipe: (tmp / "file").write_text(r),
                             id=f"recipe-{key}-{what}"))
    return cases


CONFIG_CASES += _range_cases()


def _png(path: Path, size: tuple[int, int] = (8, 8), noise: bool = False) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8) if noise else np.zeros((*size, 3),
                                                                                    np.uint8)
    Image.fromarray(arr).save(path)


def _tree(root: Path, classes: tuple[str, ...] = ("0", "1")) -> Path:
    for split in ("train", "test"):
        for c in classes:
            _png(root / split / c / "a.png")
    return root


def _bomb(path: Path) -> None:
    """A 1-bit PNG of 12,000 x 12,000 pixels (144 Mpx) in a few KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" * 1501) for _ in range(12_000)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000,
                                                                         12_000, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _tar(root: Path, dest: Path) -> None:
    import tarfile

    with tarfile.open(dest, "w:gz") as tar:
        tar.add(root, arcname=root.name)


def _corrupt_targz(tmp: Path) -> None:
    _tar(_tree(tmp / "src"), tmp / "bad.tar.gz")
    data = (tmp / "bad.tar.gz").read_bytes()
    (tmp / "bad.tar.gz").write_bytes(data[:len(data) // 2])  # a partial download


def _big_member(tmp: Path) -> None:
    _png(_tree(tmp / "src") / "train" / "0" / "big.png", (700, 700), noise=True)  # ~1.5 MB
    _tar(tmp / "src", tmp / "big.tar.gz")


def _bomb_tree(tmp: Path) -> None:
    _bomb(_tree(tmp / "src") / "train" / "1" / "bomb.png")


def _bad_index(tmp: Path) -> None:
    (tmp / "pk").mkdir()
    (tmp / "pk" / "index.json").write_text('{"format": "convzoo-packed", "version": 1}')


# Data sources, archives, images and caches.
DATA_CASES: list[Bad] = [
    Bad("train --data {tmp}/no-such-folder --out {tmp}/runs", "no-such-folder"),
    Bad("train --data {tmp}/bad.tar.gz --out {tmp}/runs", "bad.tar.gz", setup=_corrupt_targz,
        id="corrupt-targz"),
    Bad("pack {tmp}/bad.tar.gz {tmp}/out", "bad.tar.gz", setup=_corrupt_targz,
        id="pack-corrupt-targz"),
    Bad("train --data {tmp}/src --out {tmp}/runs", "bomb.png", setup=_bomb_tree,
        id="decompression-bomb"),
    Bad("pack {tmp}/src {tmp}/out --workers 1", "bomb.png", setup=_bomb_tree,
        id="pack-decompression-bomb"),
    Bad("predict {run} {tmp}/src/train/1/bomb.png", "bomb.png", setup=_bomb_tree,
        id="predict-decompression-bomb"),
    Bad("train --data {tmp}/big.tar.gz --set data.max_member_mb=1 --out {tmp}/runs",
        "data.max_member_mb=1", setup=_big_member, id="oversized-archive-member"),
    Bad("train --data {tmp}/pk --out {tmp}/runs", "index.json", setup=_bad_index,
        id="malformed-pack-index"),
    Bad("eval {run} --data {tmp}/src", "'zebra'", id="eval-unknown-class",
        setup=lambda tmp: _tree(tmp / "src", ("0", "zebra"))),
    Bad("eval {run} --data {tmp}/src --split val", "--split val", id="eval-missing-split",
        setup=lambda tmp: _tree(tmp / "src")),
    Bad("train --data {tmp}/src --out {tmp}/runs", "no class folders", id="folder-without-images",
        setup=lambda tmp: (tmp / "src" / "train").mkdir(parents=True)),
]

def three_class_folder(tmp: Path) -> None:
    """{tmp}/folder: an image-folder tree with 3 classes (the fixture run has 10)."""
    from PIL import Image

    for split in ("train", "test"):
        for i, name in enumerate("abc"):
            (tmp / "folder" / split / name).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80 * j, 9)).save(
                    tmp / "folder" / split / name / f"{j}.png")


def foreign_checkpoint(tmp: Path) -> None:
    """{tmp}/file: a checkpoint (sealed, every field valid) whose weights (10 classes) do not
    fit its own model (3)."""
    import torch

    from convzoo import config as C
    from convzoo import saved as ckpt_io
    from convzoo.models import create_model

    cfg = C.from_dict({"data": {"image_size": 8, "limit": 50}})
    ckpt_io.atomic_save({
        "format": "convzoo-checkpoint", "version": ckpt_io.VERSION, "epoch": 1,
        "config": C.to_dict(cfg), "model_name": "resnet20", "model_kwargs": {},
        "num_classes": 3, "in_chans": 3, "classes": ["a", "b", "c"], "image_shape": [3, 8, 8],
        "geometry": {"channels": 3, "height": 8, "width": 8, "resize": "crop"},
        "eval_split": "test", "preprocess": {"kind": "none"},
        "model": create_model("resnet20").state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "schedule": {"peak": 0.1, "anchor": None, "plateau": None},
        "scaler": {}, "ema": None, "weights": "raw", "early_stop": None, "stage": 0,
        "stopped": False, "rng": {"torch": torch.get_rng_state()}, "best_top1": 0.0,
        "train_seconds": 0.0, "train_images": 0, "init_seconds": 0.0, "compile_seconds": 0.0,
        "metrics": {}}, tmp / "file")


def _run(tmp: Path, lock: dict | str | None = None, mode: int | None = None) -> None:
    """{tmp} as a run directory (config.yaml), with a lock file and/or a permission mode."""
    if mode is not None and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    (tmp / "config.yaml").write_text("data: {source: digits}\n")
    if lock is not None:
        text = lock if isinstance(lock, str) else json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-11-30T10:00:00",
             **lock})
        (tmp / ".lock").write_text(text)
    if mode is not None:
        tmp.chmod(mode)


def _read_only(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path.mkdir()
    path.chmod(0o555)


# Run directories, checkpoints, resume, eval / predict / export of a run.
RUN_CASES: list[Bad] = [
    Bad("eval {tmp}/not-a-run", "not-a-run"),
    Bad("train --resume {tmp}", "not a run directory"),
    # a resume validates data, model and overrides before it writes anything
    Bad("train --resume {run} --data {tmp}/no-such-data --epochs 25", "no-such-data"),
    Bad("train --resume {run} --model resnet32 --epochs 3", "model.init"),
    Bad("train --resume {run} --set 'model.kwargs={{shortcut: B}}' --epochs 3", "keeps the model"),
    Bad("train --resume {run} --data {tmp}/folder --set data.root={tmp}/cache --epochs 3",
        "classes differ", setup=three_class_folder, id="resume onto other classes"),
    Bad("train --resume {run} --set optim.name=adam --epochs 3", "optim.name=adam"),
    Bad("train --resume {run} --lr 0.01", "--epochs above 1"),
    Bad("train --resume {run} --epochs 3 --out {tmp}/elsewhere", "--out"),
    Bad("train --resume {run} --recipe quickstart", "--recipe"),
    Bad("train --resume {run} --dry-run --model resnet32 --epochs 3", "model.init"),
    # the weights asked for must exist, and fit the model the checkpoint names
    Bad("eval {run} --weights ema", "no EMA weights"),
    Bad("export {run} --format safetensors --weights ema", "no EMA weights"),
    Bad("predict {run} {tmp} --weights ema", "no EMA weights"),
    Bad("eval {file}", "do not fit", setup=foreign_checkpoint, id="eval a foreign checkpoint"),
    Bad("export {file} --format safetensors --out {tmp}/w.safetensors", "do not fit",
        setup=foreign_checkpoint, id="export a foreign checkpoint"),
    Bad("train --resume {tmp}", "in use by another convzoo run",
        setup=lambda tmp: _run(tmp, lock={}), id="resume-locked-by-a-live-process"),
    Bad("train --resume {tmp}", "on elsewhere.example",
        setup=lambda tmp: _run(tmp, lock={"host": "elsewhere.example", "pid": 1}),
        id="resume-locked-from-another-host"),
    Bad("train --resume {tmp}", "unreadable", setup=lambda tmp: _run(tmp, lock="garbage"),
        id="resume-unreadable-lock"),
    Bad("train --resume {tmp}", "Permission denied", setup=lambda tmp: _run(tmp, mode=0o555),
        id="resume-read-only-run"),
    Bad("train --data digits --out {tmp}/ro", "Permission denied",
        setup=lambda tmp: _read_only(tmp / "ro"), id="train-into-read-only-folder"),
    Bad("train --data digits --set data.image_size=8 --set data.limit=64 --batch-size 32 "
        "--lr 1e9 --out {tmp}/runs", "training diverged in epoch"),
]

CASES = CONFIG_CASES + DATA_CASES + RUN_CASES


# ----------------------------------------------------------------------------- the harness


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (names relative to `root`)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id or c.argv)
def test_bad_input_is_one_line_and_changes_nothing(
    case: Bad, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if case.setup is not None:
        case.setup(scratch)
    before_run, before_scratch = snapshot(run), snapshot(scratch)
    argv = shlex.split(case.argv.format(run=run, tmp=scratch, file=scratch / "file"))
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in lines if line.startswith("convzoo: error:")]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert case.names in errors[0], f"error does not name {case.names!r}: {errors[0]}"
    assert snapshot(run) == before_run, "the run directory changed"
    after = snapshot(scratch)
    changed = {k for k in before_scratch if after.get(k) != before_scratch[k]}
    assert not changed, f"existing files changed: {sorted(changed)}"
    assert not (scratch / "runs").exists() or not any((scratch / "runs").iterdir()), \
        "a failed run left a run directory"


# ----------------------------------------------------------------------------- single cases


def convzoo(*args: str) -> subprocess.CompletedProcess:
    """``convzoo ARGS`` in this process (``cli.main``, what ``python -m convzoo`` runs): its exit
    status and output. In-process because a fresh interpreter costs about 5 s here (importing
    torch) per case; test_the_real_entry_point_says_one_line covers the process itself."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("convzoo: error:")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def image_folder(root, *, corrupt: bool = False, empty: bool = False):
    for split in ["train", "test"]:
        for cls in ["cat", "dog"]:
            d = root / split / cls
            d.mkdir(parents=True)
            if empty:
                continue
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.mark.slow
def test_the_real_entry_point_says_one_line(tmp_path):
    """`python -m convzoo` itself: the same one line and exit 2 as ``cli.main``."""
    result = subprocess.run([sys.executable, "-m", "convzoo", "train", "--model", "resnet21",
                             "--data", "digits", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert_one_line_error(result, "resnet21")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--data", "/no/such/dataset"], ["/no/such/dataset"]),
        (["train", "--model", "resnet21", "--data", "digits"], ["resnet21"]),
        (["train", "--set", "optim.learnin_rate=0.1"], ["optim.learnin_rate"]),
        (["train", "--set", "train.epochs=many"], ["train.epochs", "many"]),
        (["train", "--recipe", "no-such-recipe"], ["no-such-recipe"]),
        (["eval", "/no/such/run"], ["/no/such/run"]),
        (["train", "--set", "optim.weight_decay=-5e-4"], ["optim.weight_decay", "[0, inf)"]),
        (["train", "--epochs", "0"], ["train.epochs=0", "[1, inf)"]),
        (["eval", "/no/such/run", "--batch-size", "0"], ["--batch-size", "[1, inf)"]),
        (["train", "--no-such-flag"], ["--no-such-flag"]),
        (["no-such-command"], ["no-such-command"]),
    ],
)
def test_bad_arguments(args, needles, tmp_path):
    assert_one_line_error(convzoo(*args, "--out", str(tmp_path)) if args[0] == "train"
                          else convzoo(*args), *needles)


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_a_policy_fill_for_other_channels_is_one_line_and_leaves_no_run(tmp_path, kind):
    """policy_fill has 3 values, the images are made grey (1 channel): found before anything
    is written, by either loader (a streamed run would meet it in a worker process)."""
    data = "digits"
    if kind == "stream":
        from convzoo.data.packs.writer import pack
        pack(image_folder(tmp_path / "src"), tmp_path / "packed", workers=1, progress=False)
        data = str(tmp_path / "packed")
    out = tmp_path / "runs"
    result = convzoo("train", "--data", data, "--set", "data.image_size=8", "--epochs", "1",
                     "--batch-size", "2", "--set", "data.channels=1",
                     "--set", f"data.loader={kind}",
                     "--set", "augment.policy=trivialaugment",
                     "--set", "augment.policy_fill=[124,116,104]", "--out", str(out),
                     "--device", "cpu")
    assert_one_line_error(result, "augment.policy_fill=[124.0, 116.0, 104.0]", "1 channel")
    assert not out.exists() or not any(out.iterdir())


def test_folder_with_no_images(tmp_path):
    root = image_folder(tmp_path / "data", empty=True)
    assert_one_line_error(convzoo("train", "--data", str(root), "--out", str(tmp_path)), str(root))


def test_corrupt_jpeg_is_named(tmp_path):
    root = image_folder(tmp_path / "data", corrupt=True)
    result = convzoo("train", "--data", str(root), "--out", str(tmp_path / "runs"),
                     "--set", f"data.root={tmp_path / 'cache'}")
    assert_one_line_error(result, "broken.jpg")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), \
        "a run that failed on bad input left a run directory behind"


def test_eval_of_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "last.pt"
    bogus.write_bytes(b"garbage")
    assert_one_line_error(convzoo("eval", str(bogus)), str(bogus))


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    assert_one_line_error(convzoo("train", "--resume", str(tmp_path)), str(tmp_path))


def test_version_and_help_exit_0():
    from convzoo import __version__

    result = convzoo("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"convzoo {__version__} ")
    result = convzoo("train", "--help")
    assert result.returncode == 0 and "convzoo config" in result.stdout


def test_weight_decay_5e_4_through_set_and_a_recipe(tmp_path):
    """Issue 11: `--set optim.weight_decay=5e-4` and `weight_decay: 5e-4` in YAML were refused."""
    recipe = tmp_path / "wd.yaml"
    recipe.write_text("optim:\n  weight_decay: 5e-4\n")
    for args in (["--set", "optim.weight_decay=5e-4"], [str(recipe)]):
        result = convzoo("config", *args)
        assert result.returncode == 0, result.stderr
        assert "weight_decay: 0.0005" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["recipes"],
                                  ["config", "quickstart"]])
def test_the_light_commands_import_no_torch(argv):
    """--help, --version, recipes and config answer without importing torch (seconds saved on
    every call; imported only by the commands that need it)."""
    import subprocess
    import sys

    code = ("import sys; from convzoo.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
