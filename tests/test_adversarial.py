"""Bad input, one line each: every case must exit 2 with one ``convzoo: error:`` line naming the
problem, print no traceback, and leave every existing file (a finished run, its caches)
byte-identical.

Extend it with one line per new bad input. A case is a command line with placeholders:

    {run}   a copy of a finished one-epoch digits run (compared byte for byte afterwards)
    {tmp}   an empty scratch folder (runs started by the case go under {tmp}/runs)
    {file}  a scratch file the case's ``setup`` wrote (``setup(tmp) -> None``)

``names`` is text the error line must contain: the key, file or value at fault.
Cases are grouped by the part of convzoo that must catch them; each group is its own list so
that the parts can grow independently.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

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
]

# Data sources, archives, images and caches.
DATA_CASES: list[Bad] = [
    Bad("train --data {tmp}/no-such-folder --out {tmp}/runs", "no-such-folder"),
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
    """{tmp}/file: a checkpoint whose weights (10 classes) do not fit its own model (3)."""
    import torch

    from convzoo import config as C
    from convzoo.models import create_model

    cfg = C.from_dict({"data": {"image_size": 8, "limit": 50}})
    torch.save({"format": "convzoo-checkpoint", "version": 1, "epoch": 1, "config":
                C.to_dict(cfg), "model_name": "resnet20", "model_kwargs": {}, "num_classes": 3,
                "in_chans": 3, "classes": [str(i) for i in range(10)], "image_shape": [3, 8, 8],
                "eval_split": "test", "preprocess": {"kind": "none"},
                "model": create_model("resnet20").state_dict(), "ema": None}, tmp / "file")


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
