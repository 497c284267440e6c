"""One entry point from ``DataConfig`` to an in-memory Dataset, whatever the source.

``cfg.source`` may be a name (cifar10, cifar100, cifar100-coarse, digits), a path to an
official CIFAR python archive or its extracted folder, an image folder (``train/`` + ``val/``
and/or ``test/``, or split-less ``<class>/*``), a ``.tar.gz`` of one (decoded straight from the
archive), or a packed dataset (a folder with ``index.json``). Afterwards, in this order:
`limit` caps every split, `val_fraction` carves a stratified hold-out from train, and every
split is brought to one `Geometry` (``data.channels``, ``data.image_size``, ``data.resize``,
or a run's own geometry when one is given).

Downloads and decode caches are made once (`convzoo.data.prepare`: file lock, and local
rank 0 first under torchrun), in ``data.root``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from convzoo.config import DataConfig
from convzoo.data import images
from convzoo.data.dataset import Dataset, Split
from convzoo.data.images import Geometry, Limits
from convzoo.data.packs import reader as packed
from convzoo.data.packs.remote import is_url
from convzoo.data.prepare import fetch_archive, node_lock, read_cache, write_cache
from convzoo.data.sources import cifar, download
from convzoo.data.sources.digits import load_digits
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
CACHE_VERSION = 4  # bump when the decoded layout or the decoding rules change (3: file names,
#                   4: the digest covers every value)


def _valid_sources() -> str:
    return (f"{', '.join(NAMES)}, or a path to a CIFAR python archive/folder, an image folder "
            f"(train/ + val/ or test/, or <class>/*), a .tar.gz of one, or a packed dataset")


# ----------------------------------------------------------------------------- splitting


def stratified_pick(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of `k` items drawn at random with each class in proportion.

    Each class c of n_c items gets floor(k * n_c / n) picks; the picks left over go to the
    classes with the largest remainders, so the total is exactly k.
    """
    n = len(labels)
    k = max(0, min(k, n))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * k / n
    quota = exact.floor().long()
    short = k - int(quota.sum())
    if short > 0:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:short]] += 1
    picks = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:q]])
    return torch.sort(torch.cat(picks)).values if picks else torch.empty(0, dtype=torch.long)


def limit_splits(splits: dict[str, Any], limit: int, seed: int) -> None:
    """Cap every split at `limit` items (stratified, seeded), in place.

    Works on anything with ``.labels`` (N,) and ``.subset(index)``: in-memory ``Split``s and
    packed ``PackedSplit`` views alike.
    """
    gen = torch.Generator().manual_seed(seed)
    for name in sorted(splits):
        split = splits[name]
        if len(split) > limit:
            splits[name] = split.subset(stratified_pick(split.labels, limit, gen))


def carve_val(splits: dict[str, Any], fraction: float, seed: int, source: str) -> None:
    """Move a stratified, seeded `fraction` of "train" into a new "val" split, in place."""
    if "val" in splits:
        raise ConvzooError(f"data.val_fraction={fraction} but data source '{source}' already "
                           f"has a val split; set data.val_fraction=0")
    train = splits["train"]
    k = round(fraction * len(train))
    if k < 1 or k >= len(train):
        raise ConvzooError(f"data.val_fraction={fraction} of {len(train)} train images leaves "
                           f"an empty train or val split")
    gen = torch.Generator().manual_seed(seed)
    val_idx = stratified_pick(train.labels, k, gen)
    mask = torch.ones(len(train), dtype=torch.bool)
    mask[val_idx] = False
    splits["val"] = train.subset(val_idx)
    splits["train"] = train.subset(torch.nonzero(mask).flatten())


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


def _cache_path(cache_dir: Path, source: Path, lines: list[str], options: str) -> Path:
    """Cache file for `source`, keyed by the decoding options and `lines` (files, stats)."""
    tag = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    h = hashlib.sha256(f"v{CACHE_VERSION}|{source}|{options}\n".encode())
    h.update("\n".join(lines).encode())
    return cache_dir / f"folder-{tag}-{h.hexdigest()[:20]}.pt"


def _from_cache(payload: dict[str, Any], skip_bad: bool, path: Path) -> Dataset:
    splits = {k: Split(v["images"], v["labels"], v.get("names"))
              for k, v in payload["splits"].items()}
    skipped = list(payload["skipped"])
    if skipped and not skip_bad:
        raise ConvzooError(f"cannot decode image {skipped[0]} (set data.skip_bad=true to skip "
                           f"the {len(skipped)} unreadable file(s))")
    if skipped:
        log.warning(f"{payload['name']}: skipped {len(skipped)} unreadable image(s), first: "
                    f"{skipped[0]}")
    log.info(f"loaded {payload['name']} from cache {path}")
    return Dataset(payload["name"], list(payload["classes"]), splits,
                   Geometry.from_state(payload["geometry"]), skipped)


def load_tree(path: Path, cfg: DataConfig, geometry: Geometry | None = None) -> Dataset:
    """An image folder, or a tar archive of one, decoded into memory (cached in
    ``cfg.root/cache`` under a key of the files' paths, sizes and mtimes, or the archive's)."""
    limits = Limits.from_config(cfg)
    path = path.expanduser().resolve()
    options = (f"{cfg.channels}|{cfg.image_size}|{cfg.resize}|{limits.max_pixels}|"
               f"{geometry.state() if geometry else None}")
    cache_dir = Path(cfg.root).expanduser() / "cache"
    if not path.exists():
        raise ConvzooError(f"image folder not found: {path}")
    if path.is_dir():
        root, tree, lines = images.scan_folder(path)
        classes, files = images.index_tree(tree, lambda rel: str(root / rel))
        cache = _cache_path(cache_dir, root, lines, options)
    else:
        st = path.stat()
        root, tree = path, None
        cache = _cache_path(cache_dir, path, [f"{st.st_size}|{st.st_mtime_ns}"], options)
    with node_lock(cache):
        payload = read_cache(cache)
        if payload is not None:
            return _from_cache(payload, cfg.skip_bad, cache)
        if tree is None:  # an archive: read it only when there is no cache
            prefix, tree, data = images.scan_tar(path, limits)
            classes, files = images.index_tree(tree, lambda rel: f"{path}:{prefix}{rel}")
            inputs: dict[str, list[str | bytes]] = {n: [data[k] for k in f.keys]
                                                   for n, f in files.items()}
            del data
            name = prefix.strip("/") or path.name.split(".")[0]
            show = lambda k: f"{path}:{k}"  # noqa: E731
        else:
            inputs = {n: list(f.keys) for n, f in files.items()}
            name, show = root.name, str
        splits, skipped, geo = images.decode_splits(
            name, files, inputs, show, limits=limits,
            workers=cfg.workers or images.default_workers(), skip_bad=cfg.skip_bad,
            geometry=geometry, channels=cfg.channels, image_size=cfg.image_size,
            resize=cfg.resize)
        ds = Dataset(name, classes, splits, geo, skipped)
        write_cache(cache, {"name": ds.name, "classes": ds.classes, "skipped": skipped,
                            "geometry": geo.state(),
                            "splits": {k: {"images": s.images, "labels": s.labels,
                                           "names": s.names} for k, s in splits.items()}})
    return ds


def _from_path(path: Path, cfg: DataConfig, geometry: Geometry | None) -> Dataset:
    limits = Limits.from_config(cfg)
    if path.is_dir():
        if (path / packed.INDEX_NAME).is_file():
            return packed.load_packed(path, geometry=geometry, image_size=cfg.image_size,
                                      resize=cfg.resize, limits=limits, workers=cfg.workers)
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


def source_geometry(ds: Dataset, cfg: DataConfig) -> Geometry:
    """The geometry of ``cfg.channels`` / ``cfg.image_size`` / ``cfg.resize`` for a dataset
    whose images all have one shape (CIFAR, digits, a raw pack)."""
    c, h, w = ds.image_shape
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (h, w)
    return Geometry(cfg.channels or c, *size, cfg.resize)


def load_dataset(cfg: DataConfig, seed: int = 0, geometry: Geometry | None = None) -> Dataset:
    """Load ``cfg.source`` into memory, then apply limit, val_fraction and the geometry.

    Returns a Dataset with its splits ("train", and "val"/"test" as the source has them or
    ``val_fraction`` carves them), its ``geometry`` and ``skipped`` files. `geometry` (a run's
    own, for eval) overrides ``channels``/``image_size``/``resize``. A source without a
    held-out split is allowed only with a geometry given (evaluation of a split-less folder).
    """
    source = cfg.source.strip()
    if source == "digits":
        side = cfg.image_size or (geometry.height if geometry else 32)
        ds = load_digits(image_size=side, channels=cfg.channels or 3, seed=seed)
    elif source in NAMES:
        ds = _official(source, cfg)
    elif is_url(source):  # a pack behind an fsspec URL (data.remote)
        ds = packed.load_packed(source, geometry=geometry, image_size=cfg.image_size,
                                resize=cfg.resize, limits=Limits.from_config(cfg),
                                workers=cfg.workers, root=cfg.root)
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
    geo = geometry or ds.geometry or source_geometry(ds, cfg)
    for name, split in ds.splits.items():
        converted = geo.apply(split.images)
        if converted is not split.images:
            ds.splits[name] = Split(converted.contiguous(), split.labels, split.names)
    ds.geometry = geo
    return ds
