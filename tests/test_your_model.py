"""Your model, callbacks and the result of ``convzoo.train``: a module or factory passed as
``model=``, ``convzoo.register_model`` names in recipes (resumed and evaluated in fresh
processes through ``CONVZOO_MODELS``), callbacks that stop a run cleanly, ``TrainResult``, and
the notebook-style session (train, load, evaluate, export) run as ``python -c``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import convzoo
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.errors import ConvzooError
from convzoo.models.simple_cnn import cnn

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"data": "digits", "batch_size": 32, "data.image_size": 8, "data.limit": 200,
        "train.loggers": [], "train.threads": 1}


class Tiny(nn.Module):
    """A project's own network: conv, pool, linear; no convzoo interface at all."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def make_tiny(num_classes):  # a factory of one argument, as a user writes it
    return Tiny(num_classes)


class Recorder:
    """Records every event; asks to stop at the first step of epoch `stop_in`."""

    def __init__(self, stop_in: int) -> None:
        self.stop_in, self.events = stop_in, []

    def on_step_end(self, info):
        self.events.append(("step_end", info.epoch, info.step))
        return info.epoch == self.stop_in

    def on_epoch_end(self, info):
        self.events.append(("epoch_end", info.epoch, info.step))
        assert info.run_dir.is_dir() and info.metrics["epoch"] == info.epoch

    def on_eval_end(self, info):
        self.events.append(("eval_end", info.epoch, info.metrics["eval_top1"]))


def test_a_callback_stops_a_factory_run_which_finishes_and_resumes(tmp_path, capsys):
    """A step's True ends the run at that epoch's end: evaluated there (eval_every=3 would not
    have), summary and last.pt written; the result stands for the run directory; a resume with
    more epochs continues it; the CLI says in one line what to do with a module it cannot
    rebuild."""
    rec = Recorder(stop_in=2)
    result = convzoo.train(model=make_tiny, epochs=5, out=str(tmp_path), name="f",
                           callbacks=[rec], **{**FAST, "train.eval_every": 3})
    run = tmp_path / "f"
    assert isinstance(result, convzoo.TrainResult)
    assert result == run and os.fspath(result) == str(run) and (result / "last.pt").is_file()
    assert result.summary["epochs"] == 2 and result.summary["top1"] is not None
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert "eval_top1" not in result.history[0] and "eval_top1" in result.history[1]
    steps = [e[2] for e in rec.events if e[0] == "step_end"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 2 * (200 // 32)
    tail = [e[0] for e in rec.events if e[0] != "step_end"]
    assert tail == ["epoch_end", "eval_end", "epoch_end"]  # epoch 2 evaluated as it ends
    assert [e for e in rec.events if e[0] == "eval_end"][0][2] == result.summary["top1"]
    clf = convzoo.load(run, model=make_tiny)  # its files name no code: the factory again
    assert (clf.epoch, clf.model_name) == (2, "custom:test_your_model.make_tiny")
    again = convzoo.train(resume=result, epochs=3, model=make_tiny)
    assert again == run and again.summary["epochs"] == 3
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "passed to convzoo.train as an object" in err and "convzoo.load(RUN, model=" in err
    assert convzoo.load(run, model=make_tiny).evaluate()["top1"] == again.summary["top1"]


def test_a_module_is_trained_in_place_and_a_wrong_one_is_one_line(tmp_path):
    net = Tiny()
    before = net.fc.weight.detach().clone()
    result = convzoo.train(model=net, epochs=1, out=str(tmp_path), name="m", **FAST)
    assert not torch.equal(net.fc.weight.detach(), before)  # the caller's object trained
    assert torch.equal(convzoo.load(result, model=Tiny()).model.fc.weight,
                       net.fc.weight.detach())
    with pytest.raises(ConvzooError, match=r"gives \(1, 5\), not logits \(1, 10\)"):
        convzoo.train(model=Tiny(5), epochs=1, out=str(tmp_path), name="w", **FAST)
    with pytest.raises(ConvzooError, match="weights do not fit"):
        convzoo.train(resume=result, epochs=2, model=Tiny(width=4))
    assert not (tmp_path / "w").exists()
    zoo = convzoo.train(model="resnet20", epochs=1, out=str(tmp_path), name="z", **FAST)
    with pytest.raises(ConvzooError, match="the run's model is resnet20, this object is cnn"):
        convzoo.train(resume=zoo, epochs=2, model=cnn)


def test_register_model_checks_its_arguments(monkeypatch):
    with pytest.raises(ConvzooError, match="name 'no good'"):
        convzoo.register_model("no good", make_tiny)
    with pytest.raises(ConvzooError, match="input_size"):
        convzoo.register_model("tiny_bad_size", make_tiny, input_size=(32, 32))
    monkeypatch.setenv("CONVZOO_MODELS", "no_such_module_here")
    with pytest.raises(ConvzooError, match="CONVZOO_MODELS: module 'no_such_module_here' "
                                           "cannot be imported"):
        convzoo.create_model("not_registered_anywhere")


MODELS_MODULE = '''
from torch import nn
import convzoo


@convzoo.register_model("tinynet_proj", input_size=(3, 8, 8))
def tinynet(num_classes: int = 10, in_chans: int = 3, width: int = 8) -> nn.Module:
    """A project's small conv net."""
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

RECIPE = '''
name: proj-tiny
data: {source: digits, image_size: 8, limit: 200}
model: {name: tinynet_proj, kwargs: {width: 4}}
train: {batch_size: 32, epochs: 1, loggers: [], threads: 1}
'''


def convzoo_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convzoo", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_registered_model_in_a_recipe_resumes_and_evaluates_in_fresh_processes(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "proj_models.py").write_text(MODELS_MODULE)
    (tmp_path / "r.yaml").write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVZOO_MODELS": "proj_models",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "runs" / "p"
    done = convzoo_cli("train", "--recipe", str(tmp_path / "r.yaml"), "--out",
                       str(tmp_path / "runs"), "--name", "p", env=env)
    assert done.returncode == 0, done.stderr
    done = convzoo_cli("train", "--resume", str(run), "--epochs", "2", env=env)
    assert done.returncode == 0, done.stderr
    monkeypatch.syspath_prepend(str(tmp_path))  # this process imports it on first lookup
    monkeypatch.setenv("CONVZOO_MODELS", "proj_models")
    ckpt = ckpt_io.load_checkpoint(run)
    assert (ckpt["epoch"], ckpt["model_name"], ckpt["model_kwargs"], ckpt["model_module"]) == (
        2, "tinynet_proj", {"width": 4}, "proj_models")
    done = convzoo_cli("eval", str(run), "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(done.stdout)["top1"] == summary["top1"]
    # without the module: one line naming it and the variable
    bare = {k: v for k, v in env.items() if k != "CONVZOO_MODELS"}
    done = convzoo_cli("eval", str(run), env=bare)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"convzoo: error: {run / 'last.pt'}: stored model_name: unknown model 'tinynet_proj': "
        "it was registered by module proj_models; import it first, e.g. "
        "CONVZOO_MODELS=proj_models"]
    # `convzoo models` lists it
    assert main(["models", "tinynet_proj"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:3] == ["tinynet_proj", "proj_models", "10"]


NOTEBOOK = '''
import json, sys
from pathlib import Path
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
import convzoo
from convzoo.export import export

tmp = Path(sys.argv[1])
torch.set_num_threads(1)
digits = load_digits()
images = (digits.images[:300] * 255 / 16).astype(np.uint8)  # (N, H, W) uint8
labels = digits.target[:300]
data = {"train": (images[:240], labels[:240]), "test": (images[240:], labels[240:])}

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)
    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

class StopAfter2:
    def on_epoch_end(self, info):
        return info.epoch >= 2

result = convzoo.train(data=data, model=Net(), epochs=10, batch_size=32,
                       lr=0.05, out=str(tmp / "runs"), name="nb", callbacks=[StopAfter2()],
                       **{"train.loggers": [], "train.threads": 1})
clf = convzoo.load(result, model=Net())
figures = clf.evaluate()
onnx = export(result, "onnx", model=Net(), check=True)
print(json.dumps({"epochs": result.summary["epochs"], "history": len(result.history),
                  "top1": result.summary["top1"], "eval_top1": figures["top1"],
                  "count": figures["count"], "onnx": str(onnx.path), "checks": onnx.checks,
                  "repr": repr(clf)}))
'''


@pytest.mark.slow
def test_notebook_session_numpy_arrays_own_module_callback_load_evaluate_export(tmp_path):
    pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(NOTEBOOK), str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["epochs"], out["history"], out["count"]) == (2, 2, 60)
    assert out["eval_top1"] == out["top1"]  # load + evaluate gives the run's own figure
    assert Path(out["onnx"]).is_file()
    assert any("onnxruntime: logits match PyTorch" in c for c in out["checks"])
    assert out["repr"].startswith("Classifier(custom:__main__.Net, 10 classes, input 1x8x8")
