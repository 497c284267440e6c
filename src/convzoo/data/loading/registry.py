"""The registry of data sources: every value ``data.source`` may take, and what opens it.

``cfg.source`` may be a name (cifar10, cifar100, cifar100-coarse, digits), a path to an
official CIFAR python archive or its extracted folder, an image folder (``train/`` + ``val/``
and/or ``test/``, or split-less ``<class>/*``), a ``.tar.gz`` of one (decoded straight from the
archive), or a packed dataset (a folder with ``index.json``, or an fsspec URL of one).
`load_dataset` reads any of them into memory; afterwards, in this order: `limit` caps every
split, `val_fraction` carves a stratified hold-out from train, and every split is brought to
one `Geometry` (``data.channels``, ``data.image_size``, ``data.resize``, or a run's own
geometry when one is given). `convzoo.data.loading.pipeline` streams a pack instead when it
does not fit (``data.loader``).

Label files (CSV/TSV), Hugging Face datasets (saved folders, parquet/arrow files, ``hf://``
Hub names) and WebDataset shards are read as encoded `Records` (`open_records`, shared with
``convzoo pack``) and decoded by the folder rules; data passed from Python
(``convzoo.train(data=...)``) is held in the process under a ``python:...`` name.

A new kind of source is a reader in `convzoo.data.sources` that returns a `Dataset`, plus its
branch here (a name in `NAMES`, or a test of the path in `_from_path`).

This module sits in the loading room, above both the sources and the packs: a pack is one more
source here, and the pack writer reads the CIFAR source, so neither room imports the other's
registry. Downloads and decode caches are made once (`convzoo.data.prepare`: file lock, and
local rank 0 first under torchrun), in ``data.root``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from convzoo.config import DataConfig
from convzoo.data import images
from convzoo.data.dataset import Dataset, Split, carve_val, limit_splits
from convzoo.data.images import Geometry, Limits
from convzoo.data.packs import reader as packed
from convzoo.data.packs.remote import is_url
from convzoo.data.sources import cifar, download, hf, inmemory, webdataset
from convzoo.data.sources.digits import load_digits
from convzoo.data.sources.download import fetch_archive
from convzoo.data.sources.folders import load_tree
from convzoo.data.sources.labelled import open_records
from convzoo.data.sources.records import load_records
from convzoo.errors import ConvzooError
from convzoo.integrity import regular_file

log = logging.getLogger("convzoo")

NAMES = ("cifar10", "cifar100", "cifar100-coarse", "digits")
_OFFICIAL = {  # name -> (folder inside the archive, archive file name, url, md5)
    "cifar10": (cifar.CIFAR10_DIR, "cifar-10-python.tar.gz", download.CIFAR10_URL,
                download.CIFAR10_MD5),
    "cifar100": (cifar.CIFAR100_DIR, "cifar-100-python.tar.gz", download.CIFAR100_URL,
                 download.CIFAR100_MD5),
}
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _valid_sources() -> str:
    return (f"{', '.join(NAMES)}, or a path to a CIFAR python archive/folder, an image folder "
            f"(train/ + val/ or test/, or <class>/*), a .tar.gz of one, a label file (.csv, "
            f".tsv), a Hugging Face dataset (save_to_disk folder, .parquet, .arrow, "
            f"hf://datasets/OWNER/NAME), WebDataset shards (shards-{{000..009}}.tar), or a "
            f"packed dataset")


def packed_path(source: str) -> Path | str | None:
    """The directory of a packed dataset named by `source`, or its fsspec URL (a URL source is
    a pack, ``data.remote``, unless it names WebDataset shards or a Hugging Face Hub dataset),
    or None if it is not one."""
    if is_url(source):
        if webdataset.looks_like_shards(source):
            return None
        if hf.hub_dataset_id(source) is not None and not hf.hub_is_pack(source):
            return None
        return source
    path = Path(source).expanduser()
    return path if (path / packed.INDEX_NAME).is_file() else None


# ----------------------------------------------------------------------------- sources


def _official(name: str, cfg: DataConfig) -> Dataset:
    """cifar10 / cifar100[-coarse] from cfg.root: extracted folder, archive, or download."""
    fine = name != "cifar100-coarse"
    folder_name, archive_name, url, md5 = _OFFICIAL[name.removesuffix("-coarse")]
    root = Path(cfg.root).expanduser()
    limits = Limits.from_config(cfg)
    if (root / folder_name).is_dir():
        return cifar.load_cifar(root / folder_name, fine=fine, limits=limits)
    archive = fetch_archive(url, root / archive_name, md5, allow_download=cfg.download,
                            name=name)
    return cifar.load_cifar(archive, fine=fine, limits=limits)


def _pack_in_memory(pack: packed.PackedDataset, cfg: DataConfig,
                    geometry: Geometry | None) -> Dataset:
    """An opened pack decoded into memory (`PackedDataset.load`)."""
    return pack.load(geometry=geometry, image_size=cfg.image_size, resize=cfg.resize,
                     limits=Limits.from_config(cfg), workers=cfg.workers)


def _from_path(path: Path, cfg: DataConfig, geometry: Geometry | None) -> Dataset:
    limits = Limits.from_config(cfg)
    records = open_records(str(path), limits)
    if records is not None:
        return load_records(records, cfg, geometry)
    if path.is_dir():
        if (path / packed.INDEX_NAME).is_file():
            with contextlib.closing(packed.open_packed(path)) as pack:
                return _pack_in_memory(pack, cfg, geometry)
        if cifar.is_cifar_dir(path):
            return cifar.load_cifar(path, limits=limits)
        return load_tree(path, cfg, geometry)
    regular_file(path, "data archive")  # a FIFO would block tarfile; a device never ends
    if path.name.endswith(TAR_SUFFIXES):
        if cifar.is_cifar_archive(path):
            return cifar.load_cifar(path, limits=limits)
        return load_tree(path, cfg, geometry)
    raise ConvzooError(f"data source '{cfg.source}' is not a folder or a .tar.gz archive "
                       f"(valid: {_valid_sources()})")


def load_dataset(cfg: DataConfig, seed: int = 0, geometry: Geometry | None = None,
                 pack: packed.PackedDataset | None = None) -> Dataset:
    """Load ``cfg.source`` into memory, then apply limit, val_fraction and the geometry.

    Returns a Dataset with its splits ("train", and "val"/"test" as the source has them or
    ``val_fraction`` carves them), its ``geometry`` and ``skipped`` files. `geometry` (a run's
    own, for eval) overrides ``channels``/``image_size``/``resize``. A source without a
    held-out split is allowed only with a geometry given (evaluation of a split-less folder).
    `pack`: ``cfg.source`` already opened, when it is a pack (the pipeline opens a pack once,
    to size it and then to read it); the caller closes it.
    """
    source = cfg.source.strip()
    if pack is not None:
        ds = _pack_in_memory(pack, cfg, geometry)
    elif source == "digits":
        side = cfg.image_size or (geometry.height if geometry else 32)
        ds = load_digits(image_size=side, channels=cfg.channels or 3, seed=seed)
    elif source in NAMES:
        ds = _official(source, cfg)
    elif source.startswith(inmemory.PREFIX):  # convzoo.train(data=arrays or a Dataset)
        ds = inmemory.load(source, cfg, geometry)
    elif is_url(source) or webdataset.looks_like_shards(source):
        records = open_records(source, Limits.from_config(cfg))
        if records is not None:  # WebDataset shards, or a Hub dataset
            ds = load_records(records, cfg, geometry)
        else:  # a pack behind an fsspec URL (data.remote)
            with contextlib.closing(packed.open_packed(source, cfg.root)) as opened:
                ds = _pack_in_memory(opened, cfg, geometry)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ConvzooError(f"unknown data source '{cfg.source}': no such name or path "
                               f"(valid: {_valid_sources()})")
        ds = _from_path(path, cfg, geometry)

    if geometry is None and "train" not in ds.splits:
        raise ConvzooError(f"data source '{cfg.source}' has no train split ({images.LAYOUT})")
    if cfg.limit:
        limit_splits(ds.splits, cfg.limit, seed)
    if cfg.val_fraction:
        carve_val(ds.splits, cfg.val_fraction, seed, ds.name)
    if geometry is None and "test" not in ds.splits and "val" not in ds.splits:
        raise ConvzooError(f"data source '{cfg.source}' has no test/ or val/ split; add one "
                           f"or set data.val_fraction to carve one from train")
    geo = geometry or ds.geometry or ds.geometry_for(channels=cfg.channels,
                                                    image_size=cfg.image_size,
                                                    resize=cfg.resize)
    for name, split in ds.splits.items():
        converted = geo.apply(split.images)
        if converted is not split.images:
            ds.splits[name] = Split(converted.contiguous(), split.labels, split.names)
    ds.geometry = geo
    return ds
