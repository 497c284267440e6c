"""The Python API (``convzoo.load`` -> Classifier, ``convzoo.train``) and the CLI commands built
on it: README's example run verbatim, predict agreeing with eval, every kind of input,
model.safetensors as a source everywhere (one metadata format), ``predict --out``,
``eval --report`` (10 and 100 classes, TensorBoard) and ``pack --overwrite``."""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import convzoo
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.data import progress
from convzoo.errors import ConvzooError

README = Path(__file__).resolve().parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("one_thread")


def readme_python() -> str:
    """The code block of README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_verbatim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "Classifier(resnet20, 10 classes, input 3x16x16 (crop)" in out
    assert "'top1':" in out and "'class': '" in out
    report = tmp_path / "runs" / "api-demo" / "report"
    assert {"confusion_matrix.png", "per_class.csv", "reliability.png", "predictions.csv",
            "confident_mistakes.png"} <= {p.name for p in report.iterdir()}


# ----------------------------------------------------------------------------- predict vs eval


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> Path:
    """The run_dir fixture's data as files: digits test/<class>/<i>.png (8x8 RGB, lossless)."""
    from convzoo import config as C
    from convzoo.data.loading.registry import load_dataset

    root = tmp_path_factory.mktemp("digit_files")
    ds = load_dataset(C.DataConfig(source="digits", image_size=8, limit=200))
    test = ds.splits["test"]
    for i, (image, label) in enumerate(zip(test.images, test.labels.tolist())):
        folder = root / "test" / ds.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return root


def test_predict_gives_the_top1_of_eval(run_dir, digit_files, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--data", str(digit_files), "--json", "--report",
                 str(tmp_path / "rep")]) == 0
    result = json.loads(capsys.readouterr().out)
    with open(tmp_path / "rep" / "predictions.csv") as f:
        evaluated = {Path(r["file"]).name: r["pred_1"] for r in csv.DictReader(f)}
    clf = convzoo.load(run_dir)
    rows = clf.predict(digit_files, topk=1)
    predicted = {Path(r["file"]).name: r["top"][0]["class"] for r in rows}
    assert predicted == evaluated and len(rows) == result["count"]
    truth = {Path(r["file"]).name: Path(r["file"]).parent.name for r in rows}
    top1 = 100 * np.mean([predicted[k] == truth[k] for k in truth])
    assert top1 == pytest.approx(result["top1"], abs=1e-9)
    # the CLI's predict is the same function
    assert main(["predict", str(run_dir), str(digit_files), "--topk", "1", "--json"]) == 0
    cli_rows = json.loads(capsys.readouterr().out)
    assert [r["top"][0]["class"] for r in cli_rows] == [r["top"][0]["class"] for r in rows]


def test_classifier_evaluate_is_convzoo_eval(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = convzoo.load(run_dir).evaluate()
    assert api == cli
    summary = json.loads((run_dir / "summary.json").read_text())
    assert api["top1"] == pytest.approx(summary["top1"], abs=1e-9)


def test_every_kind_of_input_gives_the_same_probabilities(run_dir, digit_files):
    clf = convzoo.load(run_dir, device="cpu")
    files = sorted((digit_files / "test").rglob("*.png"))[:4]
    pixels = [np.array(Image.open(f)) for f in files]  # (8, 8, 3) uint8
    reference = clf.probabilities(files)
    assert reference.shape == (4, 10) and reference.dtype == torch.float32
    assert torch.allclose(reference.sum(dim=1), torch.ones(4))
    tensors = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pixels])
    for inputs in ([str(f) for f in files], [Image.open(f) for f in files], pixels,
                   np.stack(pixels), tensors, list(tensors)):
        assert torch.equal(clf.probabilities(inputs), reference)
    pattern = str(files[0].parent / "*.png")  # a glob: the class folder's files, sorted
    glob_rows = clf.predict(pattern)
    assert [r["file"] for r in glob_rows] == sorted(str(p) for p in files[0].parent.glob("*.png"))
    # grey input is brought to the run's 3 channels; another size to its 8x8 (crop rule)
    grey = (np.asarray(Image.open(files[0]).convert("L")))
    assert clf.probabilities(grey).shape == (1, 10)
    big = np.asarray(Image.open(files[0]).resize((32, 32)))
    assert clf.probabilities(big).shape == (1, 10)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 8, 8), "pixels must be uint8"),
    (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\) is not an image"),
    ("/nonexistent/cat.png", "image not found: /nonexistent/cat.png"),
    ("/nonexistent/*.png", "no image files match this pattern"),
    (42, "int is not an image"),
    ([], "no images given"),
])
def test_bad_inputs_are_one_line_errors(run_dir, bad, message):
    clf = convzoo.load(run_dir)
    with pytest.raises(ConvzooError, match=message):
        clf.predict(bad)


def test_bad_load_arguments(run_dir, tmp_path):
    with pytest.raises(ConvzooError, match="train.device"):
        convzoo.load(run_dir, device="gpu0")
    with pytest.raises(ConvzooError, match="which='first'"):
        convzoo.load(run_dir, which="first")
    with pytest.raises(ConvzooError, match="no EMA weights"):
        convzoo.load(run_dir, weights="ema")
    with pytest.raises(ConvzooError, match="not found"):
        convzoo.load(tmp_path / "none.pt")


# ----------------------------------------------------------------------------- model.safetensors


def test_model_safetensors_is_a_source_for_eval_predict_export(run_dir, digit_files, tmp_path,
                                                               capsys):
    weights = run_dir / "model.safetensors"
    assert main(["eval", str(run_dir), "--json"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert main(["eval", str(weights), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    for key in ("top1", "top5", "loss", "count", "split", "data", "epoch", "weights"):
        assert from_file[key] == from_ckpt[key], key
    assert main(["predict", str(weights), str(digit_files), "--json"]) == 0
    file_rows = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run_dir), str(digit_files), "--json"]) == 0
    assert file_rows == json.loads(capsys.readouterr().out)
    assert main(["export", str(weights), "--format", "onnx", "--check", "--out",
                 str(tmp_path / "m.onnx")]) == 0
    assert "onnxruntime: logits match" in capsys.readouterr().err
    # one format: the export of the checkpoint carries exactly the run's file's metadata
    assert main(["export", str(run_dir), "--format", "safetensors", "--out",
                 str(tmp_path / "e.safetensors")]) == 0
    meta = [safe_open(str(p), "pt").metadata() for p in (weights, tmp_path / "e.safetensors")]
    assert meta[0] == meta[1]
    assert {"geometry", "preprocess", "eval_view", "config", "classes"} <= set(meta[0])
    # exporting a weights file onto itself is refused
    capsys.readouterr()
    assert main(["export", str(weights), "--format", "safetensors"]) == 2
    assert "is an input of this command" in capsys.readouterr().err


def test_a_run_without_checkpoints_evaluates_from_its_safetensors(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "shared"
    shutil.copytree(run_dir, copy)
    for name in ("last.pt", "best.pt"):
        (copy / name).unlink()
    assert main(["eval", str(copy), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run_dir), "--json"]) == 0
    assert result["top1"] == json.loads(capsys.readouterr().out)["top1"]


def test_weights_choice_of_a_safetensors_file(tmp_path, capsys):
    """The run's file holds its judged weights (EMA here): auto and ema read it, raw cannot."""
    out = tmp_path / "runs"
    assert main(["train", "--data", "digits", "--set", "data.image_size=8", "--set",
                 "data.limit=100", "--batch-size", "32", "--epochs", "1", "--out", str(out),
                 "--name", "e", "--set", "optim.ema_decay=0.9",
                 "--set", "train.loggers=[]"]) == 0
    weights = out / "e" / "model.safetensors"
    assert convzoo.load(weights).weights == "ema"
    assert convzoo.load(weights, weights="ema").evaluate() == convzoo.load(out / "e").evaluate()
    capsys.readouterr()
    assert main(["eval", str(weights), "--weights", "raw"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds one set of weights (the EMA weights)" in err


def test_weights_files_without_what_eval_needs(run_dir, tmp_path, monkeypatch):
    """A file whose metadata lost geometry and preprocessing (edited by hand) and one whose statistics were too
    large for metadata (ZCA) name the checkpoint to use instead."""
    src = run_dir / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    old = {k: v for k, v in meta.items() if k not in ("geometry", "preprocess", "config",
                                                     "image_shape", "eval_split", "eval_view")}
    ckpt_io.save_safetensors(load_file(str(src)), tmp_path / "old.safetensors", old)
    with pytest.raises(ConvzooError, match="preprocessing statistics are not in the file"):
        convzoo.load(tmp_path / "old.safetensors")
    from convzoo import saved as W

    monkeypatch.setattr(W, "MAX_META_VALUES", 2)
    ckpt = ckpt_io.load_checkpoint(run_dir)
    meta = W.weights_metadata(ckpt, "raw")
    assert json.loads(meta["preprocess"]) == {"kind": "channel", "omitted": ["mean", "std"]}
    ckpt_io.save_safetensors(load_file(str(src)), tmp_path / "big.safetensors", meta)
    with pytest.raises(ConvzooError, match="too large for metadata.*last.pt"):
        convzoo.load(tmp_path / "big.safetensors")


# ----------------------------------------------------------------------------- predict --out


def test_predict_writes_csv_and_json(run_dir, digit_files, tmp_path, capsys):
    pattern = str(digit_files / "test" / "0" / "*.png")
    files = sorted(str(p) for p in (digit_files / "test" / "0").glob("*.png"))
    one = str(digit_files / "test" / "1")
    assert main(["predict", str(run_dir), pattern, one, "--topk", "3", "--out",
                 str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "pred_1", "prob_1", "pred_2", "prob_2", "pred_3", "prob_3"]
    ones = sorted(str(p) for p in (digit_files / "test" / "1").glob("*.png"))
    assert [r[0] for r in rows[1:]] == files + ones
    probs = np.array([[float(r[2]), float(r[4]), float(r[6])] for r in rows[1:]])
    assert (np.diff(probs, axis=1) <= 0).all() and (probs.sum(axis=1) <= 1 + 1e-6).all()
    assert main(["predict", str(run_dir), pattern, "--out", str(tmp_path / "p.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert [r["file"] for r in data] == files and len(data[0]["top"]) == 5
    assert [r["top"][0]["class"] for r in data] == [r[1] for r in rows[1:len(files) + 1]]


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/p.txt"], "expected a .csv or .json file"),
    (["--out", "{tmp}/keep.csv/p.csv"], "keep.csv is not a folder"),
    (["/nonexistent/*.jpg", "--out", "{tmp}/keep.csv"], "no image files match"),
])
def test_predict_out_errors_leave_files_alone(run_dir, digit_files, tmp_path, capsys, args,
                                              message):
    (tmp_path / "keep.csv").write_text("old\n")
    args = [a.format(tmp=tmp_path) for a in args]
    images = [] if args[0].startswith("/nonexistent") else [str(digit_files)]
    assert main(["predict", str(run_dir), *images, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert (tmp_path / "keep.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


# ----------------------------------------------------------------------------- eval --report


_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm")
CIFAR100_NAMES = _NAMES.split()


def make_cifar100(path: Path, train: int = 3, test: int = 2) -> Path:
    """A cifar-100-python.tar.gz of synthetic 32x32 images (`train`/`test` per class; each
    class a colour, plus noise), in the official format with the real class names."""
    rng = np.random.default_rng(0)
    hues = rng.integers(0, 256, (100, 3))

    def split(per: int) -> bytes:
        fine = [j % 100 for j in range(100 * per)]
        base = hues[fine][:, :, None].repeat(1024, axis=2)  # (N, 3, 1024)
        noise = rng.integers(-40, 41, base.shape)
        data = np.clip(base + noise, 0, 255).astype(np.uint8).reshape(len(fine), 3072)
        return pickle.dumps({b"data": data, b"fine_labels": fine,
                             b"coarse_labels": [f // 5 for f in fine]})
    members = {"train": split(train), "test": split(test),
               "meta": pickle.dumps({b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
                                     b"coarse_label_names": [b"c%d" % i for i in range(20)]})}
    archive = path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, fileobj=io.BytesIO(data))
    return archive


def _check_report(folder: Path, k: int, count: int, top1: float) -> None:
    """The report's files agree with each other and with eval's figures."""
    with open(folder / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert cm.shape == (k, k) and cm.sum() == count
    with open(folder / "per_class.csv") as f:
        table = list(csv.DictReader(f))[:k]
    support = np.array([int(r["support"]) for r in table])
    recall = np.array([float(r["recall"]) for r in table])
    assert (support == cm.sum(axis=1)).all()
    assert np.allclose(recall * support, np.diag(cm), atol=1e-4)
    report = json.loads((folder / "report.json").read_text())
    assert report["count"] == count and report["top1"] == pytest.approx(top1, abs=1e-9)
    for png in ("confusion_matrix.png", "reliability.png", "confident_mistakes.png"):
        assert Image.open(folder / png).size[0] > 300


def test_report_on_a_10_class_run_with_file_names_and_tensorboard(digit_files, tmp_path,
                                                                  capsys):
    out = tmp_path / "runs"
    assert main(["train", "--data", "digits", "--set", "data.image_size=8", "--set",
                 "data.limit=200", "--batch-size", "32", "--epochs", "1", "--out", str(out),
                 "--name", "tb"]) == 0
    run = out / "tb"
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(digit_files), "--report", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    folder = run / "report"
    assert result["report"] == str(folder) and 0 <= result["ece"] <= 100  # percent
    _check_report(folder, 10, result["count"], result["top1"])
    with open(folder / "predictions.csv") as f:
        first = next(csv.DictReader(f))
    assert first["file"].startswith(str(digit_files)) and first["file"].endswith(".png")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert {"report/test/confusion_matrix", "report/test/reliability",
            "report/test/confident_mistakes"} <= tags


@pytest.mark.slow
def test_report_on_a_100_class_run(tmp_path, capsys):
    archive = make_cifar100(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", "--data", str(archive), "--model", "resnet20", "--epochs", "1",
                 "--batch-size", "50", "--out", str(out), "--name", "c100",
                 "--set", "train.loggers=[]"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "c100"), "--report", str(tmp_path / "rep"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    _check_report(tmp_path / "rep", 100, 200, result["top1"])
    with open(tmp_path / "rep" / "predictions.csv") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["index", "true", "pred_1"]  # a CIFAR archive has no file names
    width, height = Image.open(tmp_path / "rep" / "confusion_matrix.png").size
    assert width > 2000 and height > 2000  # grows with the classes: 100 names legible


def test_report_of_streamed_data_decodes_its_mistakes(run_dir, digit_files, tmp_path,
                                                      monkeypatch, capsys):
    """A pack too large for memory is streamed: the mistakes grid decodes just its images."""
    import shutil

    from convzoo.data.loading import pipeline

    tree = tmp_path / "tree"
    shutil.copytree(digit_files / "test", tree / "train")
    shutil.copytree(digit_files / "test", tree / "test")
    assert main(["pack", str(tree), str(tmp_path / "pack"), "--workers", "1"]) == 0
    monkeypatch.setattr(pipeline, "MEMORY_BUDGET_BYTES", 0)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--data", str(tmp_path / "pack"), "--report",
                 str(tmp_path / "rep"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run_dir), "--data", str(digit_files), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    _check_report(tmp_path / "rep", 10, result["count"], result["top1"])


def test_report_errors_write_nothing(run_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["eval", str(run_dir), "--report", str(tmp_path / "file" / "rep")]) == 2
    assert "file is not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


# ----------------------------------------------------------------------------- train / pack


def test_train_keywords(tmp_path):
    run = convzoo.train("quickstart", epochs=1, out=str(tmp_path), name="k",
                        data={"limit": 150}, optim={"momentum": 0.8},
                        **{"train.threads": 1, "train.loggers": []})
    cfg = ckpt_io.load_checkpoint(run)["config"]
    assert run == tmp_path / "k"
    assert (cfg["train"]["epochs"], cfg["data"]["limit"], cfg["data"]["source"],
            cfg["optim"]["momentum"]) == (1, 150, "digits", 0.8)
    assert convzoo.train(resume=run, epochs=2) == run
    assert ckpt_io.load_checkpoint(run)["epoch"] == 2
    with pytest.raises(ConvzooError, match="unknown keyword 'epoch'"):
        convzoo.train("quickstart", epoch=1)
    with pytest.raises(ConvzooError, match="optim.lr=-1"):
        convzoo.train("quickstart", lr=-1)
    with pytest.raises(ConvzooError, match="drop --out/--name"):
        convzoo.train(resume=run, name="other")


def test_pack_overwrite(tmp_path, capsys):
    src = tmp_path / "tree"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (src / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 200 if c == "a" else 0, 0)).save(
                    src / split / c / f"{i}.png")
    dest = tmp_path / "pack"
    assert main(["pack", str(src), str(dest), "--workers", "1"]) == 0
    index = (dest / "index.json").read_text()
    capsys.readouterr()
    assert main(["pack", str(src), str(dest), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert (dest / "index.json").read_text() == index
    (src / "train" / "a" / "2.png").write_bytes((src / "train" / "a" / "0.png").read_bytes())
    assert main(["pack", str(src), str(dest), "--workers", "1", "--overwrite"]) == 0
    from convzoo.data.packs.reader import open_packed

    pack = open_packed(dest)
    assert len(pack.splits["train"]) == 5
    pack.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack", "tree"]


def test_a_run_written_before_train_tensorboard_was_retired_still_loads(tmp_path, capsys):
    """Runs written before train.tensorboard became train.loggers (the ledger's quickstart and
    fast94-s0 runs among them) failed every command: "stored config: unknown config key
    'train.tensorboard'"."""
    import yaml

    run = convzoo.train("quickstart", epochs=1, out=str(tmp_path), name="old",
                        data={"limit": 150}, **{"train.threads": 1, "train.loggers": []})
    for on, loggers in ((True, ["tensorboard", "csv"]), (False, ["csv"])):
        for name in ("last.pt", "best.pt"):  # as the older convzoo wrote them
            ckpt = ckpt_io.load_checkpoint(run, name.removesuffix(".pt"))
            ckpt["config"]["train"].pop("loggers", None)
            ckpt["config"]["train"]["tensorboard"] = on
            ckpt_io.atomic_save(ckpt, run / name)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["train"].pop("loggers", None)
        cfg["train"]["tensorboard"] = on
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["eval", str(run), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["count"] == 150
        assert main(["recipes", "quickstart", "--run", str(run)]) == 0
        assert "not compared" not in capsys.readouterr().out
        assert convzoo.config.from_dict(cfg).train.loggers == loggers
    assert convzoo.train(resume=run, epochs=2) == run  # and it resumes
    assert ckpt_io.load_checkpoint(run)["epoch"] == 2


def test_a_folder_without_splits_is_evaluated_as_all_of_it(run_dir, tmp_path, capsys,
                                                             monkeypatch, caplog):
    """It was reported as the "train" split, and --split test was refused; its progress line
    still said "train"."""
    for c in ("0", "1"):
        (tmp_path / "flat" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(
                tmp_path / "flat" / c / f"{i}.png")
    flat = str(tmp_path / "flat")
    figures = []
    for split in ([], ["--split", "test"], ["--split", "all"]):
        assert main(["eval", str(run_dir), "--data", flat, *split, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["split"] == "all" and result["count"] == 6
        figures.append(result["top1"])
    assert len(set(figures)) == 1
    monkeypatch.setattr(progress, "END_SECONDS", 0.0)  # the end line even for 6 images
    with caplog.at_level(logging.INFO, logger="convzoo"):
        assert main(["eval", str(run_dir), "--data", flat]) == 0
    assert "[all, 6 images]" in capsys.readouterr().out
    assert "evaluating all: 6 img" in caplog.text  # it said "evaluating train"
    assert main(["eval", str(run_dir), "--data", flat, "--split", "tset"]) == 2
    assert "without splits" in capsys.readouterr().err


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("mode", ["L", "1", "I;16", "RGBA", "P"])
def test_predict_on_pil_images_of_every_mode_warns_nothing(run_dir, mode):
    """A grayscale PIL image raised torch's "non-writable NumPy array" warning."""
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    image = Image.fromarray(pixels, "L").convert(mode)
    (row,) = convzoo.load(run_dir).predict(image, topk=1)
    assert 0 <= row["top"][0]["prob"] <= 1
