"""``convzoo push RUN REPO``: publish a finished run to a Hugging Face model repository.

What is uploaded is assembled first in a staging folder (:func:`stage`):

    README.md           the model card (``convzoo.card``), written fresh from the run's records,
                        with a list of the repository's files
    model.safetensors   the run's weights file (what ``convzoo.load`` reads alone)
    config.yaml         the run's resolved config (``convzoo train --recipe config.yaml``)
    model.onnx          ``convzoo export RUN --format onnx``, made on the fly and checked
                        against PyTorch (onnxruntime)
    curves.png, report/...   the pictures and table the card links, where the run has them

then sent with ``huggingface_hub``: ``create_repo(exist_ok=True)`` and one ``upload_folder``
commit. ``--dry-run`` keeps the staging folder for inspection and uploads nothing.

Offline, the upload fails at once with one line: ``HF_HUB_OFFLINE`` set, or the hub's host not
reachable (one TCP connection with a 5 s timeout, before any work), rather than after the
library's minutes of retries. Missing ``huggingface_hub`` is one line with the install
command (``pip install 'convzoo[hub]'``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from convzoo import card
from convzoo.errors import ConvzooError
from convzoo.export import export
from convzoo.files import write_text
from convzoo.outputs import check_output_dir

PROBE_TIMEOUT = 5.0  # seconds for the one connection that tells whether the hub is reachable
# namespace/name as the hub takes them: letters, digits, - _ . (not first), at most 96 each
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
FILE_ROLES = {
    "README.md": "this model card",
    "model.safetensors": "the weights, with the model, classes, geometry and preprocessing in "
                         "its metadata (`convzoo.load`, `convzoo eval`/`predict`)",
    "config.yaml": "the resolved training config (`convzoo train --recipe config.yaml`)",
    "model.onnx": "ONNX: float32 images (batch, C, H, W) 0-255 in, logits out, preprocessing "
                  "included",
}


@dataclass
class PushResult:
    """What ``push`` staged (and where), and the repository URL when it uploaded."""

    folder: Path
    files: list[str] = field(default_factory=list)
    url: str | None = None
    checks: list[str] = field(default_factory=list)


def check_repo_id(repo: str) -> str:
    if _REPO_ID.fullmatch(repo) is None or ".." in repo or "--" in repo or repo.endswith("."):
        raise ConvzooError(f"push: repository {repo!r}: expected NAMESPACE/NAME (your user or "
                           "organisation, then the model's name: letters, digits, - _ .)")
    return repo


def require_hub() -> Any:
    """The ``huggingface_hub`` module, or one line saying how to install it."""
    try:
        import huggingface_hub
    except ImportError:
        raise ConvzooError("convzoo push needs huggingface_hub: pip install 'convzoo[hub]' "
                           "(or pip install huggingface_hub)") from None
    return huggingface_hub


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_reachable(hub: Any) -> str:
    """The hub's endpoint if this process may and can reach it; else one line saying what to
    do. One TCP connection (``PROBE_TIMEOUT``) instead of the library's retries."""
    import importlib

    constants = importlib.import_module(f"{hub.__name__}.constants")  # loaded lazily
    endpoint = str(constants.ENDPOINT)
    later = ("; or `convzoo push RUN REPO --dry-run` to assemble the files now and upload "
             "them later")
    if constants.HF_HUB_OFFLINE or _offline_env():
        raise ConvzooError(f"push: HF_HUB_OFFLINE is set, so nothing can be uploaded to "
                           f"{endpoint}: unset it (unset HF_HUB_OFFLINE) on a machine with "
                           f"network{later}")
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConvzooError(f"push: cannot reach {endpoint} ({reason}): connect this machine to "
                           f"the network (or set HF_ENDPOINT to a hub it reaches){later}"
                           ) from None
    return endpoint


def stage(run_dir: str | Path, folder: str | Path) -> PushResult:
    """Assemble what ``push`` uploads (module docstring) into ``folder``, a new or empty
    folder; returns the relative file names (sorted) and the ONNX check's notes."""

    run = Path(run_dir)
    ckpt, figures = card.finished_run(run)
    out = check_output_dir(folder, option="push staging folder", is_ours=lambda p: False,
                           what="a push staging folder", inputs=[run])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.yaml"):
        if not (run / name).is_file():
            raise ConvzooError(f"{run}: no {name}; `convzoo train --resume {run}` rebuilds a "
                               "finished run's files")
        shutil.copyfile(run / name, out / name)
    exported = export(run, "onnx", out=out / "model.onnx", check=True)
    linked = card.linked_files(run)
    for name in linked:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / name, out / name)
    names = sorted(["README.md", "model.safetensors", "config.yaml", "model.onnx", *linked])
    roles = {n: FILE_ROLES.get(n, "linked from this card") for n in names}
    write_text(out / "README.md", card.card_text(run, ckpt, figures, files=roles))
    return PushResult(out, names, checks=exported.checks)


def push(run_dir: str | Path, repo: str, *, private: bool = False, token: str | None = None,
         dry_run: bool = False, folder: str | Path | None = None) -> PushResult:
    """Publish the finished run ``run_dir`` to the model repository ``repo`` (NAMESPACE/NAME),
    created when missing (``private``: a private one). ``token``: a Hugging Face token (default:
    the library's, from ``HF_TOKEN`` or ``hf auth login``). ``dry_run``: assemble the files in
    ``folder`` (default: a new temporary folder), keep it, and upload nothing."""
    check_repo_id(repo)
    if dry_run:
        target = Path(folder) if folder is not None else Path(
            tempfile.mkdtemp(prefix="convzoo-push-"))
        return stage(run_dir, target)
    hub = require_hub()
    endpoint = check_reachable(hub)  # before any work: offline fails at once
    with tempfile.TemporaryDirectory(prefix="convzoo-push-") as tmp:
        result = stage(run_dir, Path(tmp) / "repo")
        try:
            hub.create_repo(repo, private=private, token=token, exist_ok=True,
                            repo_type="model")
            hub.upload_folder(repo_id=repo, folder_path=str(result.folder), token=token,
                              repo_type="model",
                              commit_message=f"convzoo push of {Path(run_dir).name}")
        except Exception as e:  # the hub's HTTP errors, auth, network: one line each
            raise ConvzooError(_hub_error(e, repo)) from None
    result.url = f"{endpoint.rstrip('/')}/{repo}"
    return result


def _hub_error(e: Exception, repo: str) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403) or "token" in text.lower():
        return (f"push {repo}: not allowed ({text}); log in with `hf auth login`, or set "
                "HF_TOKEN (or --token) to a token with write access")
    return f"push {repo}: the upload failed ({type(e).__name__}: {text})"
