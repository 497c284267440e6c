"""Label files: a CSV or TSV naming image files and their labels (``--data labels.csv``).

    path,label,split
    images/cat_001.png,cat,train
    images/dog_017.png,dog,test

- The delimiter: a tab for ``.tsv``/``.tab``; a comma when the first line has one; else
  sniffed (``csv.Sniffer``: tab, semicolon or bar, as spreadsheets in comma-decimal locales
  write ``.csv`` files).
- A header row names the columns: the path is the first of ``path, file, filename, image,
  filepath, image_path``, the label the first of ``label, class, target, category, y``
  (case-insensitive), the split ``split`` or ``subset``. Without a header the columns are
  path, label[, split].
- Relative paths are resolved against the label file's folder.
- Without a split column every row is in ``train`` (set ``data.val_fraction``); split values
  are train / val / test (``validation``, ``dev`` ... accepted).
- Classes: sorted text labels, as image folders sort their class folders; integer labels
  keep their numbers (classes "0" .. max).

A missing file, an empty label or an unknown split is one error line naming the file, the row
number (1-based, as an editor shows it) and the value.
"""

from __future__ import annotations

import csv
from pathlib import Path

from convzoo.data.images import SplitFiles
from convzoo.data.sources.records import Records, class_names, split_name
from convzoo.errors import ConvzooError
from convzoo.integrity import read_regular

SUFFIXES = (".csv", ".tsv", ".tab")
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "filepath", "image_path",
                "img")
LABEL_COLUMNS = ("label", "class", "target", "category", "labels", "y")
SPLIT_COLUMNS = ("split", "subset")
MAX_LABEL_FILE_BYTES = 2**30  # a label file is text: 1 GiB is ~10M rows


def is_label_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def _dialect(path: Path, text: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    if "," in text.split("\n", 1)[0]:
        return ","
    try:  # a .csv written with ';' (a spreadsheet in a comma-decimal locale) or '|'

        return csv.Sniffer().sniff(text[:65536], delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _label(text: str) -> int | str:
    s = text.strip()
    return int(s) if s.lstrip("-").isdigit() else s


def read_label_file(path: Path) -> Records:
    """`Records` of a label file (see the module docstring)."""
    path = path.expanduser().resolve()
    raw = read_regular(path, "label file", MAX_LABEL_FILE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConvzooError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    delimiter = _dialect(path, text)
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise ConvzooError(f"{path}: empty label file (expected a header such as "
                           "'path,label[,split]' and one row per image)")
    first = numbered[0][1]
    cols = (_find(first, PATH_COLUMNS), _find(first, LABEL_COLUMNS), _find(first, SPLIT_COLUMNS))
    if cols[0] is not None or cols[1] is not None:  # a header row
        if cols[0] is None or cols[1] is None:
            missing = "path" if cols[0] is None else "label"
            known = PATH_COLUMNS if cols[0] is None else LABEL_COLUMNS
            raise ConvzooError(f"{path}: no {missing} column in the header "
                               f"{delimiter.join(first)!r} (expected one of: {', '.join(known)})")
        body = numbered[1:]
        path_col, label_col, split_col = cols
    else:
        if len(first) < 2:
            raise ConvzooError(f"{path}: row 1 has {len(first)} column(s); expected a header "
                               "naming the path and label columns, or rows 'path,label[,split]'")
        body = numbered
        path_col, label_col, split_col = 0, 1, (2 if len(first) > 2 else None)
    if not body:
        raise ConvzooError(f"{path}: no rows after the header (an empty dataset)")
    need = max(c for c in (path_col, label_col, split_col) if c is not None)
    keys: dict[str, list[str]] = {}
    labels: dict[str, list[int | str]] = {}
    for row_no, row in body:
        where = f"{path}: row {row_no}"
        if len(row) <= need:
            raise ConvzooError(f"{where}: {len(row)} column(s), expected at least {need + 1}")
        file = row[path_col].strip()
        label = row[label_col].strip()
        if not file:
            raise ConvzooError(f"{where}: empty path")
        if not label:
            raise ConvzooError(f"{where}: empty label for '{file}'")
        if label.startswith("-") and label[1:].isdigit():
            raise ConvzooError(f"{where}: negative label {label} for '{file}' (integer labels "
                               "are class numbers 0, 1, ...)")
        split = "train" if split_col is None else split_name(row[split_col], where)
        image = (path.parent / file).expanduser()
        if not image.is_file():
            raise ConvzooError(f"{where}: image file '{file}' not found ({image})")
        keys.setdefault(split, []).append(str(image))
        labels.setdefault(split, []).append(_label(label))
    order = [s for s in ("train", "val", "test") if s in keys]
    everything = [lab for s in order for lab in labels[s]]
    if "train" in labels:  # classes come from train, as a folder's come from train/
        train_classes, _ = class_names(labels["train"])
        if all(isinstance(lab, int) for lab in everything):
            classes, _ = class_names(everything)
        else:
            classes = train_classes
    else:
        classes, _ = class_names(everything)
    files: dict[str, SplitFiles] = {}
    for s in order:
        try:
            _, idx = class_names(labels[s], classes)
        except ValueError as e:
            row = next(r for (r, row) in body if row[label_col].strip() == str(e.args[0]))
            raise ConvzooError(f"{path}: row {row}: label '{e.args[0]}' of split '{s}' is not a "
                               f"train label (train classes: {', '.join(classes[:20])}"
                               f"{', ...' if len(classes) > 20 else ''})") from None
        files[s] = SplitFiles(keys[s], idx)
    return Records(path.stem, classes, files, {s: list(keys[s]) for s in order}, str)
