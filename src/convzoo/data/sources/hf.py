"""Hugging Face ``datasets``: a saved dataset, parquet or arrow files, or a Hub dataset.

- A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (its
  ``dataset_dict.json`` / ``state.json``), read with ``datasets.load_from_disk`` (memory-mapped,
  nothing written).
- ``.parquet`` or ``.arrow`` files: one file, or a folder of them (``*.parquet`` at its top or
  under ``data/``, the Hub's layout). A file's split is the first of train / validation / val
  / test in its name (``train-00000-of-00001.parquet``), else train. Parquet files are read
  with pyarrow and their features from the schema's ``huggingface`` metadata; arrow files
  with ``datasets.Dataset.from_file``.
- ``hf://datasets/OWNER/NAME``: ``datasets.load_dataset("OWNER/NAME")`` when the Hub can be
  reached (a convzoo pack stored on the Hub is read as a pack, `hub_is_pack`). Offline, one
  error line says so at once.

The image column is the one with the ``Image`` feature (else a column named ``image``,
``img``, ``png``, ``jpg``, ``path``, ``file``: bytes or a path, relative to the dataset's
folder); the label column the one with the ``ClassLabel`` feature (its names become the
classes, in their order), else ``label``, ``labels``, ``class``, ``target``, ``fine_label``
(text labels sorted, integer labels keep their numbers). DatasetDict splits: train,
validation (-> val), test; another split name is an error.

``datasets`` is imported only here and only when such a source is used (``pip install
'convzoo[hf]'``).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from convzoo.data.sources.records import Records, by_split, split_name
from convzoo.errors import ConvzooError

INSTALL = "pip install 'convzoo[hf]'"
TABLE_SUFFIXES = (".parquet", ".arrow")
IMAGE_COLUMNS = ("image", "img", "png", "jpg", "jpeg", "picture", "path", "file", "filename")
LABEL_COLUMNS = ("label", "labels", "class", "target", "fine_label", "category")
HUB = re.compile(r"^hf://datasets/([^/@]+/[^/@]+)(?:@[^/]+)?/?$")
_SPLIT_IN_NAME = re.compile(r"(?:^|[^a-z])(train|validation|valid|val|test)(?:[^a-z]|$)")


def require_datasets(source: str) -> Any:
    """The ``datasets`` module, or one line with the command that installs it."""
    try:
        import datasets
    except ImportError:
        raise ConvzooError(f"data.source={source}: reading a Hugging Face dataset needs the "
                           f"'datasets' library: {INSTALL}") from None
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file()
                                  and (path / "dataset_info.json").is_file()))


def table_files(path: Path) -> list[Path]:
    """The parquet/arrow files `path` names: itself, or those at its top or under data/."""
    if path.is_file():
        return [path] if path.suffix.lower() in TABLE_SUFFIXES else []
    if not path.is_dir():
        return []
    found = [p for folder in (path, path / "data") if folder.is_dir()
             for p in sorted(folder.iterdir()) if p.suffix.lower() in TABLE_SUFFIXES
             and p.is_file()]
    return found


def is_hf_source(path: Path) -> bool:
    return is_saved_dataset(path) or bool(table_files(path))


# ----------------------------------------------------------------------------- the Hub


def hub_dataset_id(source: str) -> str | None:
    """``OWNER/NAME`` of ``hf://datasets/OWNER/NAME``; None for any other source."""
    m = HUB.match(source)
    return m.group(1) if m else None


def check_online(source: str) -> None:
    """One line, at once, when the Hub cannot be reached (offline mode, or no network)."""
    why = None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        why = "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    else:
        host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1]
        try:
            socket.create_connection((host.split("/")[0], 443), timeout=5).close()
        except OSError as e:
            why = f"cannot reach {host.split('/')[0]} ({e.strerror or type(e).__name__})"
    if why:
        raise ConvzooError(f"data.source={source}: a Hugging Face Hub dataset needs the network "
                           f"and {why}; where there is one, save it with "
                           f"datasets.load_dataset(...).save_to_disk(DIR) and pass DIR")


_HUB_PACKS: dict[str, bool] = {}  # hf:// URL -> whether it is a convzoo pack (asked once)


def hub_is_pack(source: str) -> bool:
    """Whether an ``hf://datasets/OWNER/NAME`` URL names a convzoo pack (its ``index.json``)
    rather than a Hub dataset to load with ``datasets``; checks the network first
    (`check_online`), and asks the Hub once per process."""
    if source not in _HUB_PACKS:
        check_online(source)
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(source)
            _HUB_PACKS[source] = bool(fs.exists(f"{path.rstrip('/')}/index.json"))
        except Exception:  # noqa: BLE001 - a Hub error: not a pack; load_dataset will say why
            _HUB_PACKS[source] = False
    return _HUB_PACKS[source]


# ----------------------------------------------------------------------------- reading


def _pick(features: dict[str, Any], names: tuple[str, ...], kind: str,
          columns: list[str]) -> str | None:
    typed = [c for c in columns if type(features.get(c)).__name__ == kind]
    if typed:
        return typed[0]
    lowered = {c.lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


def _columns(features: Any, columns: list[str], where: str) -> tuple[str, str]:
    image = _pick(features, IMAGE_COLUMNS, "Image", columns)
    label = _pick(features, LABEL_COLUMNS, "ClassLabel", columns)
    if image is None:
        raise ConvzooError(f"{where}: no image column (an Image feature, or a column named one "
                           f"of: {', '.join(IMAGE_COLUMNS)}; columns: {', '.join(columns)})")
    if label is None:
        raise ConvzooError(f"{where}: no label column (a ClassLabel feature, or a column named "
                           f"one of: {', '.join(LABEL_COLUMNS)}; columns: {', '.join(columns)})")
    return image, label


def _tables(path: Path, datasets: Any) -> list[tuple[str, Any, Any, str]]:
    """(split, pyarrow table, features, where) of each part of the dataset at `path`."""
    if is_saved_dataset(path):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds for a bad folder
            raise ConvzooError(f"{path}: cannot load the saved dataset "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
                from None
        parts = loaded.items() if isinstance(loaded, dict) else [("train", loaded)]
        return [(split_name(k, f"{path}: split '{k}'"), d.with_format("arrow")[:], d.features,
                 f"{path}[{k}]") for k, d in parts]
    out = []
    for f in table_files(path):
        m = _SPLIT_IN_NAME.search(f.name.lower())
        split = split_name(m.group(1), str(f)) if m else "train"
        try:
            if f.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(f)
                features = datasets.Features.from_arrow_schema(table.schema)
            else:
                d = datasets.Dataset.from_file(str(f))
                table, features = d.with_format("arrow")[:], d.features
        except Exception as e:  # noqa: BLE001 - pyarrow/datasets errors for a corrupt file
            raise ConvzooError(f"cannot read {f}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        out.append((split, table, features, str(f)))
    return out


def _image_input(value: Any, folder: Path, where: str) -> str | bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    if isinstance(value, str) and value:
        p = Path(value) if os.path.isabs(value) else folder / value
        if not p.is_file():
            raise ConvzooError(f"{where}: image file '{value}' not found ({p})")
        return str(p)
    raise ConvzooError(f"{where}: no image (empty bytes and path)")


def records_from_tables(name: str, parts: list[tuple[str, Any, Any, str]], folder: Path,
                        source: str) -> Records:
    """`Records` of (split, table, features, where) parts."""
    if not parts:
        raise ConvzooError(f"{source}: no parquet or arrow files (an empty dataset)")
    split0, table0, features0, where0 = parts[0]
    image_col, label_col = _columns(features0, list(table0.column_names), where0)
    names = getattr(features0.get(label_col), "names", None)
    keys: dict[str, list[str]] = {}
    inputs: dict[str, list[str | bytes]] = {}
    labels: dict[str, list[Any]] = {}
    for split, table, _, where in parts:
        for col in (image_col, label_col):
            if col not in table.column_names:
                raise ConvzooError(f"{where}: no column '{col}' (columns: "
                                   f"{', '.join(table.column_names)})")
        for i, (img, lab) in enumerate(zip(table.column(image_col).to_pylist(),
                                           table.column(label_col).to_pylist())):
            at = f"{where}: row {i}"
            if lab is None or (isinstance(lab, str) and not lab.strip()) or \
                    (names is not None and isinstance(lab, int) and lab < 0):
                raise ConvzooError(f"{at}: empty label ({lab!r})")
            keys.setdefault(split, []).append(at)
            inputs.setdefault(split, []).append(_image_input(img, folder, at))
            labels.setdefault(split, []).append(lab.strip() if isinstance(lab, str) else lab)
    if not keys:
        raise ConvzooError(f"{source}: no rows (an empty dataset)")
    return by_split(name, keys, labels, inputs, names, lambda lab: (
        f"{source}: label {lab!r} is not one of the dataset's {len(names or [])} class names"
        if names else f"{source}: label {lab!r} is negative"))


def read_hf(path: Path) -> Records:
    """`Records` of a saved dataset or parquet/arrow files at `path` (module docstring)."""
    datasets = require_datasets(str(path))
    path = path.expanduser().resolve()
    folder = path if path.is_dir() else path.parent
    name = path.name.split(".")[0] if path.is_file() else path.name
    return records_from_tables(name, _tables(path, datasets), folder, str(path))


def read_hub(source: str) -> Records:
    """`Records` of ``hf://datasets/OWNER/NAME`` through ``datasets.load_dataset``."""
    datasets = require_datasets(source)
    repo = hub_dataset_id(source)
    assert repo is not None
    check_online(source)
    try:
        loaded = datasets.load_dataset(repo)
    except Exception as e:  # noqa: BLE001 - the Hub's many errors: one line
        raise ConvzooError(f"data.source={source}: datasets.load_dataset('{repo}') failed: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    parts = [(split_name(k, f"{source}: split '{k}'"), d.with_format("arrow")[:], d.features,
              f"{source}[{k}]") for k, d in loaded.items()]
    return records_from_tables(repo.split("/")[-1], parts, Path.cwd(), source)
