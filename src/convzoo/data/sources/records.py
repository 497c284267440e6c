"""Labelled records: what a label file, a Hugging Face dataset and WebDataset shards have in
common, and the one way they are decoded into memory.

Each of those readers (`labelfile`, `hf`, `webdataset`) returns `Records`: the set's name, its
class names, and per split the encoded images (a file path or the file's bytes) with their
labels. `load_records` decodes them exactly as an image folder is decoded
(`images.decode_splits`: one decoder, one geometry, ``data.skip_bad``), and ``convzoo pack``
writes them as it writes a folder's files (`convzoo.data.packs.writer`), so memory, streaming
(from the pack), eval and predict agree for every kind of source.

`class_names` and `split_name` are the two rules the readers share: class names sorted as
image folders sort their class folders (integer labels with no names keep their numbers),
and a split column or split name read as train / val / test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from convzoo.config import DataConfig
from convzoo.data import images
from convzoo.data.dataset import Dataset, from_decoded
from convzoo.data.images import Geometry, Limits, SplitFiles
from convzoo.errors import ConvzooError

# Split names as datasets and label files write them -> convzoo's.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


@dataclass
class Records:
    """Encoded images and labels by split: ``inputs[split][i]`` (a path or the bytes of an
    image file) has label ``files[split].labels[i]`` and is named ``show(files[split].keys[i])``
    in messages and reports."""

    name: str
    classes: list[str]
    files: dict[str, SplitFiles]
    inputs: dict[str, list[str | bytes]]
    show: Callable[[str], str]

    def items(self, split: str) -> list[tuple[str | bytes, int, str]]:
        """(path or bytes, label, shown name) of every record of `split`, in order."""
        f = self.files[split]
        return [(p, lab, self.show(k)) for p, lab, k in zip(self.inputs[split], f.labels, f.keys)]


def split_name(value: object, where: str) -> str:
    """train / val / test for a split's name (``validation``, ``dev``, ... accepted); anything
    else is one error line naming `where` and the value."""
    name = SPLIT_ALIASES.get(str(value).strip().lower())
    if name is None:
        raise ConvzooError(f"{where}: unknown split '{value}' (expected train, val or test; "
                           f"also accepted: {', '.join(k for k in SPLIT_ALIASES if k not in ('train', 'val', 'test'))})")
    return name


def class_names(labels: Sequence[object], names: Sequence[str] | None = None
                ) -> tuple[list[str], list[int]]:
    """(class names, label index of each item).

    `names` given (a dataset's ClassLabel, a ``classes.txt``): they are the classes in their
    order and labels are their indices (an integer, or a name among them). Otherwise integer
    labels with no names keep their numbers (classes "0" .. str(max)), and text labels are
    sorted, as image folders sort their class folders.
    """
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        out = []
        for lab in labels:
            if isinstance(lab, int) and 0 <= lab < len(names):
                out.append(lab)
            elif str(lab) in index:
                out.append(index[str(lab)])
            else:
                raise ValueError(lab)
        return list(names), out
    if labels and all(isinstance(lab, int) for lab in labels):
        if min(labels) < 0:  # type: ignore[type-var]
            raise ValueError(min(labels))  # type: ignore[type-var]
        return [str(i) for i in range(max(labels) + 1)], list(labels)  # type: ignore[type-var,arg-type]
    classes = sorted({str(lab) for lab in labels})
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[str(lab)] for lab in labels]


def by_split(name: str, keys: dict[str, list[str]], labels: dict[str, list[object]],
             inputs: dict[str, list[str | bytes]], names: Sequence[str] | None,
             bad_label: Callable[[object], str]) -> Records:
    """The `Records` of items gathered per split (train, val, test order): one `class_names`
    over all splits' labels, so every split indexes the same classes; a label that fits no
    class is ``ConvzooError(bad_label(label))``."""
    order = [s for s in ("train", "val", "test") if s in keys]
    try:
        classes, idx = class_names([lab for s in order for lab in labels[s]], names)
    except ValueError as e:
        raise ConvzooError(bad_label(e.args[0])) from None
    files: dict[str, SplitFiles] = {}
    start = 0
    for s in order:
        files[s] = SplitFiles(keys[s], idx[start:start + len(keys[s])])
        start += len(keys[s])
    return Records(name, classes, files, {s: list(inputs[s]) for s in order}, str)


def load_records(records: Records, cfg: DataConfig, geometry: Geometry | None = None) -> Dataset:
    """Decode `records` into memory by the folder rules (`images.decode_splits`)."""
    for split, f in records.files.items():
        if not f.keys:
            raise ConvzooError(f"{records.name}: split '{split}' has no images")
    decoded, skipped, geo, _ = images.decode_splits(
        records.name, records.files, records.inputs, records.show,
        limits=Limits.from_config(cfg), workers=cfg.workers or images.default_workers(),
        skip_bad=cfg.skip_bad, geometry=geometry, channels=cfg.channels,
        image_size=cfg.image_size, resize=cfg.resize)
    return Dataset(records.name, list(records.classes), from_decoded(decoded), geo, skipped)
