"""One entry point from ``DataConfig`` to an in-memory Dataset, whatever the source.

``cfg.source`` may be a name (cifar10, cifar100, cifar100-coarse, digits), a path to an
official CIFAR python archive or its extracted folder, an image-folder tree, a ``.tar.gz``
of an image-folder tree (decoded straight from the archive), or a packed dataset (a folder
with ``index.json``). Afterwards, in this order: `limit` caps every split, `val_fraction`
carves a stratified hold-out from train, `channels` and `image_size` convert every split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from convzoo.config import DataConfig
from convzoo.data import cifar, download, folder
from convzoo.data.dataset import Dataset, Split
from convzoo.data.digits import load_digits
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

NAMES = ("cifar10", "cifar100", "cifar100-coarse", "digits")
_OFFICIAL = {  # name -> (folder inside the archive, archive file name, url, md5)
    "cifar10": (cifar.CIFAR10_DIR, "cifar-10-python.tar.gz", download.CIFAR10_URL,
                download.CIFAR10_MD5),
    "cifar100": (cifar.CIFAR100_DIR, "cifar-100-python.tar.gz", download.CIFAR100_URL,
                 download.CIFAR100_MD5),
}
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _valid_sources() -> str:
    return (f"{', '.join(NAMES)}, or a path to a CIFAR python archive/folder, an image folder "
            f"(train/ + test/ or val/), a .tar.gz of one, or a packed dataset")


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
    if not 0.0 < fraction < 1.0:
        raise ConvzooError(f"data.val_fraction must be in [0, 1), got {fraction}")
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
    if (root / folder_name).is_dir():
        return cifar.load_cifar(root / folder_name, fine=fine)
    archive = root / archive_name
    if not archive.is_file():
        if not cfg.download:
            raise ConvzooError(f"{name}: neither {root / folder_name} nor {archive} exists "
                               f"(set data.download=true, or put {archive_name} there)")
        download.download_url(url, archive, md5)
    return cifar.load_cifar(archive, fine=fine)


def _folder_root(path: Path) -> Path:
    """The image-folder root: `path` itself, or its single subfolder holding train/."""
    if (path / "train").is_dir():
        return path
    try:
        subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return path  # load_image_folder reports the unreadable folder
    if len(subs) == 1 and (subs[0] / "train").is_dir():
        return subs[0]
    return path  # load_image_folder names what is missing


def _load_packed(path: Path) -> Dataset:
    try:
        from convzoo.data import records  # lazy: written separately, needed only here
    except ImportError:
        raise ConvzooError(f"{path} is a packed dataset (index.json) but this convzoo has no "
                           f"packed-record support (convzoo.data.records)") from None
    if not records.is_packed(path):
        raise ConvzooError(f"{path}: has index.json but is not a valid packed dataset")
    return records.load_packed(path)


def _from_path(path: Path, cfg: DataConfig) -> Dataset:
    cache = Path(cfg.root).expanduser()
    options = dict(channels=cfg.channels, skip_bad=cfg.skip_bad, workers=cfg.workers,
                   cache_dir=cache / "cache", image_size=cfg.image_size)
    if path.is_dir():
        if (path / "index.json").is_file():
            return _load_packed(path)
        if cifar.is_cifar_dir(path):
            return cifar.load_cifar(path)
        return folder.load_image_folder(_folder_root(path), **options)
    if path.is_file() and path.name.endswith(_TAR_SUFFIXES):
        if cifar.is_cifar_archive(path):
            return cifar.load_cifar(path)
        return folder.load_image_tar(path, **options)
    raise ConvzooError(f"data source '{cfg.source}' is not a folder or a .tar.gz archive "
                       f"(valid: {_valid_sources()})")


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load ``cfg.source`` into memory, then apply limit, val_fraction, channels, image_size.

    Returns a Dataset with splits "train", "test" and, when ``cfg.val_fraction > 0``, a
    stratified, seeded "val" split removed from train. ``dataset.skipped`` lists image
    files skipped as unreadable (``cfg.skip_bad``).
    """
    if cfg.channels not in (0, 1, 3):
        raise ConvzooError(f"data.channels must be 0, 1 or 3, got {cfg.channels}")
    if cfg.image_size < 0 or cfg.limit < 0:
        raise ConvzooError("data.image_size and data.limit must be >= 0")
    source = cfg.source.strip()
    if source == "digits":
        ds = load_digits(image_size=cfg.image_size or 32, channels=cfg.channels or 3, seed=seed)
    elif source in NAMES:
        ds = _official(source, cfg)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ConvzooError(f"unknown data source '{cfg.source}': no such name or path "
                               f"(valid: {_valid_sources()})")
        ds = _from_path(path, cfg)

    if "train" not in ds.splits:
        raise ConvzooError(f"data source '{cfg.source}' has no train split")
    if cfg.limit:
        limit_splits(ds.splits, cfg.limit, seed)
    if cfg.val_fraction:
        carve_val(ds.splits, cfg.val_fraction, seed, ds.name)
    if "test" not in ds.splits and "val" not in ds.splits:
        raise ConvzooError(f"data source '{cfg.source}' has no test/ or val/ split; add one "
                           f"or set data.val_fraction to carve one from train")
    for name, split in ds.splits.items():
        images = folder.convert_channels(split.images, cfg.channels)
        if cfg.image_size:
            images = folder.resize_images(images, cfg.image_size)
        if images is not split.images:
            ds.splits[name] = Split(images, split.labels)
    if not hasattr(ds, "skipped"):
        ds.skipped = []  # type: ignore[attr-defined]
    return ds
