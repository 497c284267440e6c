"""`convzoo push RUN REPO`: the folder it would upload (exact files, the card, an ONNX model that
runs in onnxruntime), the upload through huggingface_hub's create_repo + upload_folder, and one
line at once when it cannot upload (offline, no network, no library)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.data.transforms.augment import build_eval_transform
from convzoo.saved import load_model_for_eval

pytestmark = pytest.mark.usefixtures("one_thread")
ort = pytest.importorskip("onnxruntime")

STAGED = ["README.md", "config.yaml", "curves.png", "model.onnx", "model.safetensors"]


@pytest.fixture(scope="module")
def dry_run(run_dir: Path) -> tuple[Path, str]:
    """`convzoo push RUN me/tiny --dry-run`: (the staging folder it printed, its stderr)."""
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main(["push", str(run_dir), "me/tiny-digits", "--dry-run"])
    assert code == 0, errors.getvalue()
    return Path(printed.getvalue().strip()), errors.getvalue()


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_dry_run_leaves_exactly_the_files_it_would_upload(dry_run, run_dir: Path):
    folder, err = dry_run
    assert folder.is_dir() and folder != run_dir
    assert listing(folder) == STAGED
    assert f"dry run: 5 files staged, nothing uploaded: {', '.join(STAGED)}" in err
    assert "onnxruntime: logits match PyTorch" in err
    for name in ("config.yaml", "model.safetensors", "curves.png"):  # the run's own files
        assert (folder / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_the_staged_card_is_the_runs_with_the_files_listed(dry_run, run_dir: Path):
    folder, _ = dry_run
    staged, own = (folder / "README.md").read_text(), (run_dir / "README.md").read_text()
    assert staged.startswith("---\nlibrary_name: convzoo\n")
    assert re.sub(r"## Files\n.*?(?=## Reproduce)", "", staged, flags=re.S) == own
    for name in STAGED:
        assert f"- `{name}`: " in staged


def test_the_staged_onnx_runs_in_onnxruntime_like_pytorch(dry_run, run_dir: Path):
    folder, _ = dry_run
    ckpt = ckpt_io.load_checkpoint(run_dir)
    model, preprocess = load_model_for_eval(ckpt, torch.device("cpu"))
    view = build_eval_transform(C.from_dict(ckpt["config"]).augment)
    images = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(view(preprocess(images.float()))).numpy()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.float().numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- the upload


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_offline_fails_at_once_with_what_to_do(run_dir, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert main(["push", str(run_dir), "me/tiny-digits"]) == 2
    assert time.perf_counter() - t0 < 5  # before any work: no staging, no export
    line = one_line(capsys)
    assert line.startswith("convzoo: error: push: HF_HUB_OFFLINE is set") and \
        "unset HF_HUB_OFFLINE" in line and "--dry-run" in line


def test_an_unreachable_hub_fails_at_once(run_dir, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # never resolves (RFC 6761)
    calls = []
    monkeypatch.setattr(hub, "create_repo", lambda *a, **k: calls.append(a))
    t0 = time.perf_counter()
    assert main(["push", str(run_dir), "me/tiny-digits"]) == 2
    assert time.perf_counter() - t0 < 15 and calls == []
    line = one_line(capsys)
    assert line.startswith("convzoo: error: push: cannot reach https://hub.invalid (") and \
        "connect this machine to the network" in line


def test_without_huggingface_hub_it_names_the_install_command(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert main(["push", str(run_dir), "me/tiny-digits"]) == 2
    assert one_line(capsys) == ("convzoo: error: convzoo push needs huggingface_hub: pip install "
                                "'convzoo[hub]' (or pip install huggingface_hub)")


@pytest.mark.parametrize("repo", ["tiny", "a/b/c", "me/-x", "me/x..y", ""])
def test_a_bad_repository_name_is_one_line(repo, run_dir, capsys):
    assert main(["push", str(run_dir), repo, "--dry-run"]) == 2
    assert "expected NAMESPACE/NAME" in one_line(capsys)


def test_the_upload_is_create_repo_then_upload_folder_of_the_staged_files(
        run_dir, monkeypatch, capsys):
    """A stand-in huggingface_hub whose endpoint is a local socket: what convzoo hands it."""
    server = socket.create_server(("127.0.0.1", 0))
    calls: list[tuple[str, dict]] = []

    def upload_folder(**kwargs):
        calls.append(("upload_folder", {**kwargs, "files": listing(Path(kwargs["folder_path"]))}))

    hub = types.ModuleType("huggingface_hub")
    hub.constants = types.ModuleType("huggingface_hub.constants")
    hub.constants.ENDPOINT = f"http://127.0.0.1:{server.getsockname()[1]}"
    hub.constants.HF_HUB_OFFLINE = False
    hub.create_repo = lambda repo, **kwargs: calls.append(("create_repo", {"repo": repo,
                                                                           **kwargs}))
    hub.upload_folder = upload_folder
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", hub.constants)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        assert main(["push", str(run_dir), "me/tiny-digits", "--private", "--token", "t0k"]) == 0
    finally:
        server.close()
    assert capsys.readouterr().out.strip() == f"{hub.constants.ENDPOINT}/me/tiny-digits"
    (name1, create), (name2, upload) = calls
    assert name1 == "create_repo" and create == {"repo": "me/tiny-digits", "private": True,
                                                 "token": "t0k", "exist_ok": True,
                                                 "repo_type": "model"}
    assert name2 == "upload_folder" and upload["repo_id"] == "me/tiny-digits"
    assert upload["files"] == STAGED and upload["token"] == "t0k"
    assert not Path(upload["folder_path"]).exists()  # the staging folder is gone after


@pytest.mark.slow
def test_the_command_offline_exits_2_with_one_line(run_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "convzoo", "push", str(run_dir), "me/x"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "HF_HUB_OFFLINE is set" in proc.stderr
    assert time.perf_counter() - t0 < 60  # one process start; no retries
