"""Data passed from Python: ``convzoo.train(data=...)`` with NumPy/torch
uint8 arrays or a torch Dataset of (image, label) trains like the image folder holding the same
images; the run records a ``python:...`` source, and a resume in a new process asks for the
data again in one line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_in import NAMES, digit_set, write_folder
from test_data_in_errors import _one_line_exit_2

pytestmark = pytest.mark.usefixtures("one_thread")


def test_arrays_and_a_dataset_train_from_python(tmp_path, capsys):
    import convzoo

    data = digit_set({"train": 160, "test": 48})
    folder = write_folder(tmp_path / "folder", data)
    classes = sorted(NAMES)

    def arrays(split):
        x = np.stack([np.asarray(Image.open(io.BytesIO(b))) for _, _, b in data[split]])
        y = np.array([classes.index(c) for _, c, _ in data[split]])
        return x, y  # (N, 8, 8) uint8, (N,) int

    class Digits(torch.utils.data.Dataset):
        def __init__(self, split):
            self.rows, self.classes = data[split], classes

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            _, c, b = self.rows[i]
            return Image.open(io.BytesIO(b)), classes.index(c)

    kw = {"model": "resnet20", "epochs": 1, "batch_size": 32, "seed": 3, "out": str(tmp_path),
          "train.loggers": [], "train.eval_batch_size": 64, "augment.pad": 1}
    ref = json.loads((convzoo.train(data=str(folder), name="folder", **kw)
                      / "summary.json").read_text())
    run = convzoo.train(data={"train": arrays("train"), "test": arrays("test")}, classes=classes,
                        name="arrays", **kw)
    got = json.loads((run / "summary.json").read_text())
    assert (got["top1"], got["loss"]) == (ref["top1"], ref["loss"])
    config = (run / "config.yaml").read_text()
    assert "python:ndarray(160x8x8),test=ndarray(48x8x8)" in config
    run2 = convzoo.train(data={"train": Digits("train"), "test": Digits("test")}, name="ds", **kw)
    got2 = json.loads((run2 / "summary.json").read_text())
    assert (got2["top1"], got2["loss"]) == (ref["top1"], ref["loss"])
    assert convzoo.load(run2).classes == classes  # from the Dataset's classes attribute
    # (images, labels) with torch tensors, one split carved by val_fraction
    x, y = arrays("train")
    run3 = convzoo.train(data=(torch.from_numpy(x), torch.from_numpy(y)), name="t",
                         **{**kw, "data.val_fraction": 0.25})
    assert json.loads((run3 / "summary.json").read_text())["split"] == "val"


def test_resuming_a_python_data_run_in_a_new_process_says_to_pass_the_data(tmp_path, capsys):
    import convzoo
    from convzoo.data.sources import inmemory

    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 4
    run = convzoo.train(data=(x, y), name="p", out=str(tmp_path), model="resnet20", epochs=1,
                        batch_size=16, **{"data.val_fraction": 0.25, "train.loggers": []})
    inmemory._HELD.clear()  # what a new process holds
    _one_line_exit_2(capsys, ["train", "--resume", str(run), "--epochs", "2"],
                     "passed from Python", "convzoo.train(resume=RUN, data=...)")
    # passed again: the run continues
    again = convzoo.train(resume=run, data=(x, y), epochs=2)
    assert json.loads((again / "summary.json").read_text())["epochs"] == 2


def test_bad_python_data_is_one_line():
    import convzoo
    from convzoo.errors import ConvzooError

    with pytest.raises(ConvzooError, match="uint8"):
        convzoo.train(data=(np.zeros((4, 8, 8), np.float32), np.zeros(4, int)))
    with pytest.raises(ConvzooError, match=r"labels must be \(4,\)"):
        convzoo.train(data=(np.zeros((4, 8, 8), np.uint8), np.zeros(5, int)))
    with pytest.raises(ConvzooError, match="'train' is empty"):
        convzoo.train(data=(np.zeros((0, 8, 8), np.uint8), np.zeros(0, int)))
    with pytest.raises(ConvzooError, match="unknown split 'holdout'"):
        convzoo.train(data={"train": (np.zeros((4, 8, 8), np.uint8), np.zeros(4, int)),
                            "holdout": (np.zeros((4, 8, 8), np.uint8), np.zeros(4, int))})
