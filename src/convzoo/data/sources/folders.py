"""Image folders and tar archives of them, decoded into memory once and cached.

A folder is ``root/{train,val,test}/<class>/*`` or a split-less ``root/<class>/*`` (the
layouts of `convzoo.data.images`); an archive (``.tar``, ``.tar.gz``, ``.tgz``) holds the same
tree and is read member by member, never extracted. Every image goes through the one decoder
and is brought to one `Geometry` (`images.decode_splits`). The decoded splits are cached in
``data.root/cache`` under a key of the files' paths, sizes and mtimes (or the archive's), the
decoding options and `CACHE_VERSION`, made once per node under a file lock
(`convzoo.data.prepare`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from convzoo.config import DataConfig
from convzoo.data import images
from convzoo.data.dataset import Dataset, Split, from_decoded
from convzoo.data.images import Geometry, Limits
from convzoo.data.prepare import node_lock, read_cache, write_cache
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

CACHE_VERSION = 4  # bump when the decoded layout or the decoding rules change (3: file names,
#                   4: the digest covers every value)


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
        decoded, skipped, geo = images.decode_splits(
            name, files, inputs, show, limits=limits,
            workers=cfg.workers or images.default_workers(), skip_bad=cfg.skip_bad,
            geometry=geometry, channels=cfg.channels, image_size=cfg.image_size,
            resize=cfg.resize)
        splits = from_decoded(decoded)
        ds = Dataset(name, classes, splits, geo, skipped)
        write_cache(cache, {"name": ds.name, "classes": ds.classes, "skipped": skipped,
                            "geometry": geo.state(),
                            "splits": {k: {"images": s.images, "labels": s.labels,
                                           "names": s.names} for k, s in splits.items()}})
    return ds
