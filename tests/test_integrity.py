"""Never trust bytes that were not checked.

- Checkpoints and weights files carry a content digest; one flipped byte anywhere in
  ``last.pt``, ``best.pt`` or ``model.safetensors`` (header or tensor data) is refused by every
  load path (eval, predict, export, --resume, model.init) with one line naming the file, while
  an untouched copy loads exactly. Non-finite weights are refused where they are read.
- What a file says is checked by type and range before use; a file may pass a model factory
  only allow-listed keywords (never one that names a path).
- Inputs that are not regular files (/dev/zero, a FIFO, a socket, a directory) are one line,
  as predict inputs, data sources and model files; empty or truncated archives too.
- Every JSON convzoo writes or prints parses with a strict parser (no NaN/Infinity).
- A torch/torchvision mismatch names both versions and a matching install line.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from convzoo import cli
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.errors import ConvzooError
from convzoo.integrity import content_digest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "digits", "--set", "data.image_size=8", "--set", "data.limit=200",
        "--batch-size", "32", "--epochs", "1", "--set", "train.loggers=[]"]


def strict_json(text: str) -> Any:
    """json.loads that fails on NaN / Infinity (what JavaScript, jq or Go would refuse)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def one_line(capsys: pytest.CaptureFixture[str], code: int, *names: str) -> str:
    """The command's single stderr line: exit 2, no traceback, naming each of `names`."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(lines) == 1 and lines[0].startswith("convzoo: error: "), err
    for name in names:
        assert name in lines[0], f"{name!r} not in: {lines[0]}"
    return lines[0]


def call(argv: list[str], timeout: float = 120) -> int:
    """``main(argv)`` in a thread, failing the test (instead of hanging it) after `timeout`:
    an open() of a FIFO blocks forever."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"convzoo {' '.join(argv)} hung"
    return result[0]


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's finished one-epoch run."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "seven.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01 if offset % 2 else 0x80
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- offsets


def text_byte(data: bytes, start: int) -> int:
    """The first character of the first pickled text (a key or a value, opcode BINUNICODE
    ``X`` + 4-byte length) at or after `start`: a byte that always means something, where the
    exact middle may be an unused memo index, which loads the same values."""
    i = start
    while True:
        i = data.index(b"X", i)
        n = struct.unpack("<I", data[i + 1:i + 5])[0]
        if 0 < n < 200 and data[i + 5:i + 5 + n].isalnum():
            return i + 5
        i += 1


def pt_offsets(path: Path) -> dict[str, int]:
    """Offsets in a torch.save zip: its pickle (the header: keys, shapes, numbers), the data of
    three tensor records, and the central directory (a record's name, where a record lies)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        start_dir = z.start_dir

    def payload(info: zipfile.ZipInfo) -> int:  # data start: after the local header
        n, m = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        return info.header_offset + 30 + n + m

    pkl = infos["archive/data.pkl"]
    storages = sorted((i for name, i in infos.items() if name.startswith("archive/data/")
                       and i.file_size >= 16), key=lambda i: i.header_offset)
    out = {"pickle start": payload(pkl) + 2, "pickle middle": text_byte(
        data, payload(pkl) + pkl.file_size // 2)}
    for label, info in (("first tensor", storages[0]), ("middle tensor", storages[len(storages) // 2]),
                        ("last tensor", storages[-1])):
        out[label] = payload(info) + info.file_size // 2
    out["directory name"] = start_dir + 46 + 9  # "archive/d|ata.pkl" of the first entry
    out["directory offset"] = start_dir + 42  # the first entry's local header offset
    return out


def safetensors_offsets(path: Path) -> dict[str, int]:
    """Offsets in a .safetensors file: its header length, JSON header (names, shapes,
    metadata) and tensor data."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return {"header length": 1, "header start": 8 + 12, "header middle": 8 + n // 2,
            "header end": 8 + n - 20, "first tensor": 8 + n + 3,
            "middle tensor": 8 + n + (len(data) - 8 - n) // 2, "last byte": len(data) - 1}


# The load paths of each file of a run ({run}: the run directory, {f}: the file, {img}: an
# image, {tmp}: scratch): every one must refuse a damaged file with one line naming it.
LOADS: dict[str, list[str]] = {
    "last.pt": ["eval {run}", "eval {f}", "predict {run} {img}",
                "export {run} --format safetensors --out {tmp}/x.safetensors",
                "train --resume {run} --epochs 3",
                "train {tiny} --set model.init={run} --dry-run --out {tmp}/runs"],
    "best.pt": ["eval {run} --checkpoint best", "predict {run} {img} --checkpoint best",
                "export {run} --checkpoint best --format onnx --out {tmp}/x.onnx",
                "train {tiny} --set model.init={f} --dry-run --out {tmp}/runs"],
    "model.safetensors": ["eval {f}", "predict {f} {img}",
                          "export {f} --format safetensors --out {tmp}/x.safetensors",
                          "train {tiny} --set model.init={f} --dry-run --out {tmp}/runs"],
}


def argv(template: str, run: Path, f: Path, img: Path, tmp: Path) -> list[str]:
    out: list[str] = []
    for word in template.split():
        out += TINY if word == "{tiny}" else [word.format(run=run, f=f, img=img, tmp=tmp)]
    return out


def offsets_of(name: str, path: Path) -> dict[str, int]:
    return safetensors_offsets(path) if name.endswith(".safetensors") else pt_offsets(path)


@pytest.mark.parametrize("name", list(LOADS))
def test_a_flipped_byte_is_refused_by_every_load_path(
    name: str, run: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: last.pt with one flipped tensor byte evaluated to slightly other figures and
    resumed to another loss, silently. Two offsets (header, tensor data) through every load
    path; every other offset through `eval` (the same verified reader)."""
    f = run / name
    pristine = f.read_bytes()
    offsets = offsets_of(name, f)
    full = {"pickle middle", "header middle", "middle tensor"}
    for label, offset in offsets.items():
        f.write_bytes(pristine)
        flip(f, offset)
        loads = LOADS[name] if label in full else [LOADS[name][0]]
        for template in loads:
            code = call(argv(template, run, f, image, tmp_path))
            line = one_line(capsys, code, str(f))
            assert "tensor" not in label or "digest mismatch" in line, f"{label}: {line}"
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("name", list(LOADS))
def test_every_flipped_byte_is_refused_or_changes_nothing(
    name: str, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 random offsets: the load is refused, or (a byte no reader looks at: a zip local
    header's copy of a name, the alignment padding before a record) the very same values
    load. A load of other values is never possible."""
    f = run / name
    pristine = f.read_bytes()

    def load() -> str:
        if name.endswith(".safetensors"):
            return content_digest(ckpt_io.read_safetensors(f))
        return content_digest(ckpt_io.load_checkpoint(f))

    reference = load()
    rng = random.Random(19)
    refused = 0
    for offset in sorted(rng.randrange(len(pristine)) for _ in range(40)):
        f.write_bytes(pristine)
        flip(f, offset)
        try:
            assert load() == reference, f"offset {offset} loaded other values"
        except ConvzooError as e:
            assert str(f) in str(e) and "\n" not in str(e)
            refused += 1
    assert refused >= 30  # nearly every byte of a checkpoint is content


def test_an_untouched_copy_loads_exactly(run_dir: Path, run: Path, image: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for source in (run_dir, run):
        capsys.readouterr()
        assert main(["eval", str(source), "--json"]) == 0
        assert main(["eval", str(source / "model.safetensors"), "--json"]) == 0
        assert main(["predict", str(source), str(image), "--json"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    row = strict_json(outputs[0].splitlines()[0])
    last = strict_json((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["loss"] == last["eval_loss"] and row["top1"] == last["eval_top1"]
    assert content_digest(ckpt_io.load_checkpoint(run)) == \
        content_digest(ckpt_io.load_checkpoint(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LOADS))
def test_a_damaged_file_is_one_line_in_a_real_process(run: Path, name: str) -> None:
    f = run / name
    flip(f, offsets_of(name, f)["middle tensor"])
    what = [str(run)] if name == "last.pt" else [str(f)]
    if name == "best.pt":
        what = [str(run), "--checkpoint", "best"]
    done = subprocess.run([sys.executable, "-m", "convzoo", "eval", *what],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and str(f) in done.stderr
    assert "digest mismatch" in done.stderr and "Traceback" not in done.stderr


def test_a_file_without_its_digest_is_refused(run: Path, capsys: pytest.CaptureFixture[str]):
    ckpt = ckpt_io.load_checkpoint(run)
    torch.save({k: v for k, v in ckpt.items() if k != "digest"}, run / "last.pt")
    one_line(capsys, main(["eval", str(run)]), str(run / "last.pt"), "no content digest")
    torch.save({**ckpt, "version": 1}, run / "last.pt")
    one_line(capsys, main(["eval", str(run)]), "format 1", "reads format 2")
    src = run / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "digest"}
    save_file(load_file(str(src)), str(src), metadata=meta)
    one_line(capsys, main(["eval", str(src)]), str(src), "no content digest")


# ----------------------------------------------------------------------------- non-finite


def sealed(run: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """A sealed copy of the run's last checkpoint after `change` (a file convzoo would accept
    byte for byte: only its values say what is wrong)."""
    ckpt = ckpt_io.load_checkpoint(run)
    change(ckpt)
    ckpt_io.atomic_save(ckpt, run / name)
    return run / name


def poison(state: dict[str, torch.Tensor], value: float) -> dict[str, torch.Tensor]:
    key = next(k for k, v in state.items() if v.is_floating_point())
    out = dict(state)
    out[key] = state[key].clone()
    out[key][(0,) * out[key].ndim] = value
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(
    value: float, run: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: eval exited 0 printing "loss": NaN, and a resume advised lowering optim.lr."""
    f = sealed(run, "last.pt", lambda c: c.update(model=poison(c["model"], value)))
    for template in LOADS["last.pt"]:
        one_line(capsys, call(argv(template, run, f, image, tmp_path)), str(f),
                 "NaN or infinite", "stem.0.weight")
    # a weights file, sealed by convzoo, and a foreign state dict for model.init
    state = poison(load_file(str(run / "model.safetensors")), value)
    with safe_open(str(run / "model.safetensors"), "pt") as g:
        meta = g.metadata()
    ckpt_io.save_safetensors(state, run / "model.safetensors", meta)
    one_line(capsys, main(["eval", str(run / "model.safetensors")]), "NaN or infinite")
    torch.save(state, tmp_path / "foreign.pth")
    one_line(capsys, main(["train", *TINY, "--set", f"model.init={tmp_path / 'foreign.pth'}",
                           "--dry-run"]), str(tmp_path / "foreign.pth"), "NaN or infinite")


# ----------------------------------------------------------------------------- stored fields


def TIMM_OR(names: tuple[str, ...]) -> tuple[str, ...]:  # noqa: N802 (reads as a constant)
    """A timm model's stored keywords are checked against timm's allow-list; without timm the
    file is refused one step earlier, for the missing extra (CI installs no timm)."""
    return names if importlib.util.find_spec("timm") else ("needs timm", "convzoo[timm]")


FIELD_CASES: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str, ...]]] = [
    ("huge num_classes", lambda c: c.update(num_classes=10**11),
     ("num_classes=100000000000", "[1, 100000]")),
    ("epoch of text", lambda c: c.update(epoch="abc"), ("epoch='abc'", "an integer")),
    ("negative epoch", lambda c: c.update(epoch=-1), ("epoch=-1",)),
    ("bool in_chans", lambda c: c.update(in_chans=True), ("in_chans=True", "1 or 3")),
    ("classes of another length", lambda c: c.update(classes=["a", "b"]),
     ("classes=<a list of 2>", "10 class names")),
    ("classes not text", lambda c: c.update(classes=list(range(10))), ("classes",)),
    ("a huge image", lambda c: c.update(geometry={**c["geometry"], "height": 10**6}),
     ("geometry=", "65535")),
    ("an unknown split", lambda c: c.update(eval_split="../x"), ("eval_split='../x'",)),
    ("std of zero", lambda c: c["preprocess"].update(std=torch.zeros(3)),
     ("preprocess std", "positive")),
    ("mean of another shape", lambda c: c["preprocess"].update(mean=torch.zeros(7)),
     ("preprocess mean", "(3,)")),
    ("a config out of range", lambda c: c["config"]["optim"].update(lr=-1),
     ("stored config", "optim.lr")),
    ("best_top1 of text", lambda c: c.update(best_top1="x"), ("best_top1='x'",)),
    ("a step past the epoch", lambda c: c.update(step=9, steps_per_epoch=7, epoch_ranks=[]),
     ("step=9", "[0, 6]")),
    ("a schedule of text", lambda c: c["schedule"].update(peak="fast"),
     ("schedule peak='fast'",)),
    ("another generator state", lambda c: c["rng"].update(torch=torch.zeros(3)),
     ("rng",)),
    ("optimizer groups of text", lambda c: c["optimizer"].update(param_groups=["x"]),
     ("optimizer param_groups",)),
    ("an unknown model keyword", lambda c: c.update(model_kwargs={"depth_of": 3}),
     ("'depth_of'", "allowed: conv_bias")),
    ("a model keyword of an object", lambda c: c.update(model_kwargs={"shortcut": {"a": 1}}),
     ("shortcut=",)),
    ("a timm checkpoint_path", lambda c: c.update(
        model_name="timm:resnet18", model_kwargs={"checkpoint_path": "/etc/hostname"}),
     TIMM_OR(("'checkpoint_path'", "timm:resnet18", "allowed: attn_drop_rate"))),
    ("a timm pretrained_cfg_overlay", lambda c: c.update(
        model_name="timm:resnet18",
        model_kwargs={"pretrained_cfg_overlay": {"file": "/etc/hostname"}}),
     TIMM_OR(("'pretrained_cfg_overlay'",))),
]


@pytest.mark.parametrize(("change", "names"), [c[1:] for c in FIELD_CASES],
                         ids=[c[0] for c in FIELD_CASES])
def test_stored_fields_are_checked_before_use(
    change: Callable[[dict[str, Any]], None], names: tuple[str, ...], run: Path, image: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: num_classes=10**11 tried to allocate 25.6 TB ("internal error"), epoch="abc" was
    an internal error, and model_kwargs went to timm.create_model as they were."""
    f = sealed(run, "last.pt", change)
    for command in (["eval", str(run)], ["predict", str(run), str(image)],
                    ["train", "--resume", str(run), "--epochs", "3"]):
        one_line(capsys, main(command), str(f), *names)


SAFETENSORS_CASES = [
    ({"num_classes": "100000000000"}, ("num_classes=100000000000",)),
    ({"num_classes": " 1_0 "}, ("bad convzoo metadata",)),
    ({"epoch": "abc"}, ("bad convzoo metadata",)),
    ({"model": "timm:resnet18", "model_kwargs": '{"checkpoint_path": "/etc/hostname"}'},
     TIMM_OR(("'checkpoint_path'",))),
    ({"model_kwargs": '{"shortcut": NaN}'}, ("bad convzoo metadata", "NaN")),
    ({"preprocess": '{"kind": "channel", "mean": [NaN, 0, 0], "std": [1, 1, 1]}'},
     ("bad convzoo metadata",)),
    ({"classes": '["a"]'}, ("classes=<a list of 1>",)),
    ({"geometry": '{"channels": 3, "height": 8, "width": 8, "resize": "stretch"}'},
     ("geometry=",)),
]


@pytest.mark.parametrize(("change", "names"), SAFETENSORS_CASES,
                         ids=[next(iter(c[0])) + "=" + next(iter(c[0].values()))[:24]
                              for c in SAFETENSORS_CASES])
def test_weights_metadata_is_checked_before_use(
    change: dict[str, str], names: tuple[str, ...], run: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    src = run / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    ckpt_io.save_safetensors(load_file(str(src)), src, {**meta, **change})
    for command in (["eval", str(src)], ["export", str(src), "--format", "safetensors",
                                          "--out", str(run / "x.safetensors")]):
        one_line(capsys, main(command), str(src), *names)


def test_a_run_cannot_store_keywords_its_files_may_not_pass_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The allow-list applies to the config a run trains with, before anything is written:
    a run never keeps a model_kwargs that its own files would be refused for."""
    pytest.importorskip("timm")
    code = main(["train", *TINY, "--model", "timm:resnet18", "--set",
                 f"model.kwargs={{checkpoint_path: {tmp_path / 'w.pth'}}}", "--out",
                 str(tmp_path / "runs")])
    one_line(capsys, code, "model.kwargs", "'checkpoint_path'")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- regular files


def special(tmp: Path, kind: str, name: str) -> Path:
    """A path of `kind`: zero (a link to /dev/zero), fifo, socket or dir."""
    path = tmp / name
    if kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the socket file stays
    else:
        path.mkdir()
    return path


KINDS = {"zero": "a character device", "fifo": "a FIFO", "socket": "a socket",
         "dir": "a directory"}


@pytest.mark.parametrize("kind", ["zero", "fifo", "socket"])
def test_a_predict_input_that_is_not_a_file(
    kind: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: predict RUN /dev/zero read until MemoryError; a FIFO hung forever."""
    path = special(tmp_path, kind, "x.png")
    one_line(capsys, call(["predict", str(run_dir), str(path)]), str(path), KINDS[kind],
             "not a regular file")


@pytest.mark.parametrize("kind", ["zero", "fifo", "socket"])
def test_an_image_in_a_folder_that_is_not_a_file(
    kind: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inside a folder given to predict, and inside a data folder for eval --data: read as an
    image is, so refused by name, never read (and never silently skipped)."""
    for split in ("train", "test"):
        (tmp_path / "data" / split / "3").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / "3" / "a.png")
    path = special(tmp_path / "data" / "test" / "3", kind, "b.png")
    one_line(capsys, call(["predict", str(run_dir), str(tmp_path / "data")]), str(path),
             KINDS[kind])
    one_line(capsys, call(["eval", str(run_dir), "--data", str(tmp_path / "data")]), str(path),
             KINDS[kind])


@pytest.mark.parametrize("kind", ["zero", "fifo", "socket"])
def test_a_data_source_that_is_not_a_file(
    kind: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = special(tmp_path, kind, "data.tar.gz")
    one_line(capsys, call(["eval", str(run_dir), "--data", str(path)]), str(path), KINDS[kind])
    one_line(capsys, call(["train", *TINY[2:], "--data", str(path), "--out",
                           str(tmp_path / "runs")]), str(path), KINDS[kind])


@pytest.mark.parametrize("kind", ["zero", "fifo", "socket", "dir"])
def test_a_model_file_that_is_not_a_file(
    kind: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint, a weights file and a model.init source that are not regular files."""
    for name in ("last.pt", "model.safetensors", "init.pth"):
        path = special(tmp_path, kind, name)
        if name == "init.pth":  # model.init names the file it resolved (/dev/zero)
            code = call(["train", *TINY, "--set", f"model.init={path}", "--dry-run"])
            line = one_line(capsys, code, str(path.resolve()))
        else:
            line = one_line(capsys, call(["eval", str(path)]), str(path))
        assert KINDS[kind] in line or (kind == "dir" and "run directory" in line), line


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b\x08\x00", "half"],
                         ids=["zero bytes", "a gzip header", "truncated"])
def test_an_empty_or_truncated_archive_is_one_line(
    content: bytes | str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a zero-byte .tar.gz printed tarfile's five-line list of methods tried."""
    import tarfile

    path = tmp_path / "data.tar.gz"
    if content == "half":
        with tarfile.open(path, "w:gz") as tar:
            for i in range(4):
                info = tarfile.TarInfo(f"train/c/{i}.png")
                info.size = 4096
                tar.addfile(info, io.BytesIO(os.urandom(4096)))
        path.write_bytes(path.read_bytes()[:3000])
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    one_line(capsys, main(["eval", str(run_dir), "--data", str(path)]), str(path))
    one_line(capsys, main(["train", *TINY[2:], "--data", str(path), "--out",
                           str(tmp_path / "runs")]), str(path))


# ----------------------------------------------------------------------------- JSON


def test_every_json_convzoo_writes_is_strict_json(
    run_dir: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    assert main(["train", *TINY, "--set", f"model.init={run_dir}", "--out", str(out),
                 "--name", "i"]) == 0
    for name in ("summary.json", "init.json"):
        strict_json((out / "i" / name).read_text())
    for line in (out / "i" / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json", "--report", str(tmp_path / "rep")]) == 0
    assert main(["predict", str(run_dir), str(image), "--json"]) == 0
    assert main(["predict", str(run_dir), str(image), "--out", str(tmp_path / "p.json")]) == 0
    for line in capsys.readouterr().out.splitlines():
        strict_json(line)
    strict_json((tmp_path / "rep" / "report.json").read_text())
    strict_json((tmp_path / "p.json").read_text())


def test_a_non_finite_figure_is_null_in_json(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: eval --json printed "loss": NaN, which no strict JSON parser reads."""
    from convzoo import api

    real = api.evaluate
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: {**real(*a, **k), "loss": float("nan"),
                                                          "top1": float("inf")})
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    row = strict_json(capsys.readouterr().out)
    assert row["loss"] is None and row["top1"] is None and row["top5"] > 0


# ----------------------------------------------------------------------------- environment


def test_version_names_torchvision(capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision

    assert main(["--version"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"torch {torch.__version__.split('+')[0]}" in out
    assert f"torchvision {torchvision.__version__.split('+')[0]}" in out


def test_a_torchvision_build_mismatch_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "internal error: RuntimeError: operator torchvision::nms does not exist"."""
    def broken(args: Any) -> int:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(cli, "cmd_models", broken)
    line = one_line(capsys, main(["models"]), "torchvision::nms", "do not match",
                    "pip install torch==")
    minor = int(torch.__version__.split(".")[1])
    assert f"torch {torch.__version__}" in line and f"torchvision==0.{minor + 15}.*" in line


@pytest.mark.slow
def test_a_torchvision_that_does_not_load_in_a_real_process(tmp_path: Path) -> None:
    """A torchvision whose operators do not register, as a build for another torch fails."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "convzoo", "models"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "do not match" in done.stderr
    assert "pip install torch==" in done.stderr
