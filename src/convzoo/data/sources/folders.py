"""Image folders and tar archives of them, decoded into memory once and cached.

A folder is ``root/{train,val,test}/<class>/*`` or a split-less ``root/<class>/*`` (the
layouts of `convzoo.data.images`); an archive (``.tar``, ``.tar.gz``, ``.tgz``) holds the same
tree and is read member by member, never extracted. Every image goes through the one decoder
and is brought to one `Geometry` (`images.decode_splits`). The decoded splits are cached in
``data.root/cache`` under one key per (content, geometry) that every command shares
(`convzoo.data.caches`), made once per node under a file lock.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from convzoo.config import DataConfig
from convzoo.data import caches, images
from convzoo.data.caches import Source, archive_line, cache_folder, fingerprint
from convzoo.data.dataset import Dataset, Split, from_decoded
from convzoo.data.images import Geometry, Limits
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")


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
    """An image folder, or a tar archive of one, decoded into memory at `geometry` (None: the
    one ``cfg.channels``/``image_size``/``resize`` give it), through its decode cache in
    ``cfg.root/cache`` (`convzoo.data.caches`)."""
    limits = Limits.from_config(cfg)
    path = path.expanduser().resolve()
    folder = cache_folder(cfg.root)
    if not path.exists():
        raise ConvzooError(f"image folder not found: {path}")
    if path.is_dir():
        root, tree, lines = images.scan_folder(path)
        classes, files = images.index_tree(tree, lambda rel: str(root / rel))
        source = Source(root, "folder", fingerprint(lines), limits.max_pixels)
    else:
        root, tree = path, None
        source = Source(path, "archive", fingerprint([archive_line(path)]), limits.max_pixels)
    options = dict(channels=cfg.channels, image_size=cfg.image_size, resize=cfg.resize,
                   name=root.name)

    def cached() -> Dataset | None:
        target = geometry or caches.geometry_for(folder, source, **options)
        payload = None if target is None else caches.read(folder, source, target)
        return None if payload is None else _from_cache(payload, cfg.skip_bad,
                                                        caches.file_of(folder, source, target))

    ds = cached()  # no lock to read: a cache is only ever renamed into place
    if ds is not None:
        return ds
    with caches.source_lock(folder, source):
        ds = cached()  # another process may have made it while this one waited
        if ds is not None:
            return ds
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
        target = geometry or caches.geometry_for(folder, source, **options)
        decoded, skipped, geo, stored = images.decode_splits(
            name, files, inputs, show, limits=limits,
            workers=cfg.workers or images.default_workers(), skip_bad=cfg.skip_bad,
            geometry=target, channels=cfg.channels, image_size=cfg.image_size,
            resize=cfg.resize)
        splits = from_decoded(decoded)
        ds = Dataset(name, classes, splits, geo, skipped)
        caches.write(folder, source, {
            "name": ds.name, "classes": ds.classes, "skipped": skipped, "geometry": geo.state(),
            "splits": {k: {"images": s.images, "labels": s.labels, "names": s.names}
                       for k, s in splits.items()}}, stored)
    return ds
