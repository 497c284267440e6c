"""train.compile_mode: typed and checked by the config, and handed to torch.compile."""

from __future__ import annotations

import pytest
import torch

from convzoo import config as C
from convzoo.cli import main
from convzoo.errors import ConvzooError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=64",
        "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--set", "train.loggers=[]"]
MODES = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_is_accepted(mode):
    cfg = C.from_dict({"train": {"compile": True, "compile_mode": mode.upper()}})
    assert cfg.train.compile_mode == mode


def test_default_is_torchs_own_mode():
    assert C.Config().train.compile_mode is None
    assert C.from_dict({"train": {"compile": True, "compile_mode": None}}).train.compile_mode \
        is None


@pytest.mark.parametrize("train,message", [
    ({"compile": True, "compile_mode": "fast"},
     "train.compile_mode: 'fast' is not one of: default, reduce-overhead, max-autotune, "
     "max-autotune-no-cudagraphs"),
    ({"compile_mode": "max-autotune"},
     "train.compile_mode=max-autotune applies only with train.compile=true"),
])
def test_bad_values_are_one_line(train, message):
    with pytest.raises(ConvzooError, match="^" + message.replace("(", r"\(")):
        C.from_dict({"train": train})


def test_bad_value_on_the_command_line_exits_2(capsys):
    assert main(["train", *TINY, "--set", "train.compile=true",
                 "--set", "train.compile_mode=turbo", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.compile_mode: 'turbo' is not one of" in err[0]


@pytest.mark.parametrize("mode", [None, "max-autotune"])
def test_the_mode_reaches_torch_compile(mode, monkeypatch, capsys):
    """What the loop compiles (the step model and the eval model) is compiled with the mode."""
    calls = []

    def fake_compile(model, **kwargs):  # records the call; the real one would compile
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    extra = [] if mode is None else ["--set", f"train.compile_mode={mode}"]
    assert main(["train", *TINY, "--set", "train.compile=true", *extra, "--dry-run"]) == 0
    assert calls == [{"mode": mode}, {"mode": mode}]
    assert f"compile_mode: {mode if mode else 'null'}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_compiled_run_trains(tmp_path):
    """One tiny epoch through the real torch.compile (inductor on the CPU: needs a C++
    compiler; a minute or more on a busy 2-core machine, hence slow)."""
    assert main(["train", *TINY, "--set", "train.compile=true",
                 "--set", "train.compile_mode=default", "--out", str(tmp_path), "--name",
                 "c"]) == 0
    assert C.load_config(tmp_path / "c" / "config.yaml").train.compile_mode == "default"
