"""`convzoo export --format pt2`: a torch.export program of the ONNX export's graph
(preprocessing and eval view included), loadable with torch.export.load(...).module()."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re

import pytest
import torch

from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.data.transforms.augment import build_eval_transform
from convzoo.export import PT2_METADATA
from convzoo.saved import load_model_for_eval

pytestmark = pytest.mark.usefixtures("one_thread")


def eager_logits(run_dir, images: torch.Tensor) -> torch.Tensor:
    """convzoo's own eval path, written out: checkpoint -> preprocess -> eval view -> model."""
    ckpt = ckpt_io.load_checkpoint(run_dir, "last")
    model, preprocess = load_model_for_eval(ckpt, torch.device("cpu"))
    view = build_eval_transform(C.from_dict(ckpt["config"]).augment)
    with torch.no_grad():
        return model(view(preprocess(images.float())))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The export, once per module: (its path, what the command printed, out and err)."""
    out = tmp_path_factory.mktemp("pt2") / "model.pt2"
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main(["export", str(run_dir), "--format", "pt2", "--out", str(out), "--check"])
    assert code == 0, errors.getvalue()
    return out, printed.getvalue(), errors.getvalue()


@pytest.fixture
def program(exported):
    return exported[0]


def test_pt2_matches_eager_at_any_batch_size(program, run_dir, capsys):
    module = torch.export.load(str(program)).module()
    worst = 0.0
    for n in (1, 2, 5):  # the traced batch size (2) and others: the batch axis is dynamic
        images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(n))
        got, expected = module(images.float()), eager_logits(run_dir, images)
        assert got.shape == (n, 10)
        worst = max(worst, (got - expected).abs().max().item())
    assert worst < 1e-4, worst
    print(f"pt2 vs eager: max abs diff {worst:.1e}")


def test_check_reports_the_difference_and_metadata_travels(exported):
    out, printed, errors = exported
    assert printed.strip() == str(out)
    m = re.search(r"torch.export: logits of the loaded program match PyTorch \(max abs diff "
                  r"([0-9.e+-]+)\)", errors)
    assert m and float(m[1]) < 1e-4
    extra = {PT2_METADATA: ""}
    torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra[PT2_METADATA])
    assert meta["convzoo.model"] == "resnet20"
    assert json.loads(meta["convzoo.classes"]) == [str(i) for i in range(10)]
    assert json.loads(meta["convzoo.input_size"]) == [3, 8, 8]


@pytest.mark.parametrize("case", ["suffix", "directory", "symlink", "own_checkpoint", "opset"])
def test_outputs_it_must_not_write_are_refused(case, run_dir, program, tmp_path, capsys):
    target = {"suffix": tmp_path / "model.onnx", "directory": tmp_path / "d.pt2",
              "symlink": tmp_path / "link.pt2", "own_checkpoint": run_dir / "last.pt",
              "opset": tmp_path / "m.pt2"}[case]
    if case == "directory":
        target.mkdir()
    if case == "symlink":
        os.symlink(program, target)
    before = target.read_bytes() if target.is_file() else None
    extra = ["--opset", "17"] if case == "opset" else []
    assert main(["export", str(run_dir), "--format", "pt2", "--out", str(target), *extra]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    needle = {"suffix": "expected a .pt2 file", "directory": "is a directory",
              "symlink": "is a symbolic link", "own_checkpoint": "expected a .pt2 file",
              "opset": "--opset applies to --format onnx only"}[case]
    assert len(lines) == 1 and lines[0].startswith("convzoo: error:") and needle in lines[0]
    if before is not None:
        assert target.read_bytes() == before
    assert not (tmp_path / "m.pt2").exists()
