"""Packed datasets behind any fsspec URL (``s3://``, ``gs://``, ``https://``, ``file://``, a
mounted shared filesystem...), read through a node-local cache, each rank reading only the
records of its own shard.

``data.source: s3://bucket/imagenet.packed`` names a pack made by ``convzoo pack`` and copied
there as it is (``index.json``, ``*-index.npy``, ``*.rec``). Opening it (:func:`fetch_metadata`,
once per node, under a file lock) copies ``index.json`` and the index tables (a few MB) into
``data.root/remote/<name>-<hash>/``; the shard files stay remote. A record is then read from
its shard in blocks of :data:`BLOCK_BYTES`: a block is fetched with one range request the first
time any process of the node needs a record in it, written into the cache as its own file
(temp + rename), and read from there afterwards. So a rank fetches only blocks holding records
of its own batches (the sampler's shard of each epoch, for training and evaluation alike), the
node fetches each block once, and later epochs read the local disk.

Written here rather than with fsspec's ``blockcache``/``filecache``: those keep one cache
metadata file per cache that concurrent processes (the ranks and DataLoader workers of a node)
overwrite one another's changes to; one file per block, renamed into place, needs no
coordination. The cache is keyed by the URL and checked against the remote ``index.json`` and
shard sizes at every start: a re-packed dataset empties it. It grows to the dataset's size; delete
the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from convzoo.data.prepare import node_lock, write_quietly
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

BLOCK_BYTES = 8 * 2**20  # one range request; about 70 ImageNet JPEGs of 110 KB
INDEX_NAME = "index.json"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a URL (``scheme://...``) rather than a local path or a name."""
    return bool(_URL.match(str(source)))


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) for ``url``; an unknown or missing protocol is one line."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:  # unknown protocol; its package not installed
        raise ConvzooError(f"data.source={url}: {str(e).splitlines()[0]}") from None


def cache_dir(url: str, root: str | Path) -> Path:
    """The node-local cache of the pack at ``url`` under ``data.root``."""
    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:60]
    return Path(root).expanduser() / "remote" / f"{name}-{digest}"


class Remote:
    """An opened remote pack: its filesystem, its base path, the local cache and the size of
    every file in it."""

    def __init__(self, url: str, fs: Any, base: str, cache: Path, sizes: dict[str, int]) -> None:
        self.url, self.fs, self.base, self.cache, self.sizes = url, fs, base, cache, sizes

    def path(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}"

    def shards(self, names: list[str], block: int | None = None) -> RemoteShards:
        for name in names:
            if name not in self.sizes:
                raise ConvzooError(f"{self.url}: shard file {name} missing")
        return RemoteShards(self.fs, [self.path(n) for n in names], [self.sizes[n] for n in names],
                            self.cache / "blocks", [f"{self.url}/{n}" for n in names],
                            block or BLOCK_BYTES)


_OPENED: dict[tuple[str, str], Remote] = {}  # per process: the remote metadata is read once


def fetch_metadata(url: str, root: str | Path) -> Remote:
    """``index.json`` and the index tables of the pack at ``url`` in the node-local cache
    (module docstring). Call it on local rank 0 first (``prepare.once_per_node``)."""
    key = (url, str(root))
    if key in _OPENED:
        return _OPENED[key]
    fs, base = filesystem(url)
    cache = cache_dir(url, root)
    try:
        listing = fs.ls(base, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        raise ConvzooError(f"data.source={url}: no such folder") from None
    sizes = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
             for e in listing if e.get("type", "file") == "file"}
    if INDEX_NAME not in sizes:
        raise ConvzooError(f"data.source={url}: no {INDEX_NAME} there (not a pack made by "
                           "`convzoo pack`)")
    with node_lock(cache):
        index = fs.cat_file(f"{base.rstrip('/')}/{INDEX_NAME}")
        stamp = json.dumps({"index": hashlib.sha256(index).hexdigest(), "sizes": sizes},
                           sort_keys=True)
        stamp_file = cache / "stamp.json"
        if not stamp_file.is_file() or stamp_file.read_text() != stamp:
            if cache.is_dir():  # a different pack now lives at this URL: start the cache over
                log.info(f"{url}: new or changed pack; emptying its cache {cache}")
                shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True, exist_ok=True)
            try:
                info = json.loads(index)
                tables = [s["table"] for s in info["splits"].values()]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ConvzooError(f"{url}/{INDEX_NAME}: malformed index ({e!r})") from None
            for name in tables:
                if not write_quietly(cache / name, fs.cat_file(f"{base.rstrip('/')}/{name}")):
                    raise ConvzooError(f"cannot write the index tables of {url} into {cache} "
                                       "(set data.root to a writable folder)")
            write_quietly(cache / INDEX_NAME, index)
            write_quietly(stamp_file, stamp.encode())  # last: the cache is complete
    _OPENED[key] = Remote(url, fs, base, cache, sizes)
    return _OPENED[key]


class RemoteShards:
    """The shard files of one split behind fsspec, read by blocks through the local cache.

    ``readinto(k, view, offset)`` fills ``view`` from shard ``k`` at ``offset``;
    ``fetch(rows)`` first fetches, in one ``cat_ranges`` call (parallel on async filesystems
    such as s3/gcs/http), every block the records ``rows`` (table rows: shard, offset,
    length, label) need that the cache does not hold yet. Picklable into DataLoader workers.
    """

    def __init__(self, fs: Any, paths: list[str], sizes: list[int], cache: Path,
                 names: list[str], block: int = BLOCK_BYTES) -> None:
        self.fs, self.paths, self.sizes, self.cache = fs, paths, sizes, cache
        self.names, self.block = names, block
        self.fetched_bytes = 0  # bytes this process fetched from the remote store
        self._uncached: dict[tuple[int, int], bytes] = {}  # blocks the cache could not take

    def size(self, k: int) -> int:
        return self.sizes[k]

    def name(self, k: int) -> str:
        return self.names[k]

    def _file(self, k: int, b: int) -> Path:
        return self.cache / f"{k:05d}-{b:07d}.blk"

    def _length(self, k: int, b: int) -> int:
        return min(self.block, self.sizes[k] - b * self.block)

    def _present(self, k: int, b: int) -> bool:
        if (k, b) in self._uncached:
            return True
        try:  # a block cut short (a killed writer on a filesystem that lost it) is fetched again
            return self._file(k, b).stat().st_size == self._length(k, b)
        except FileNotFoundError:
            return False

    def _blocks(self, k: int, offset: int, length: int) -> range:
        return range(offset // self.block, (offset + max(length, 1) - 1) // self.block + 1)

    def fetch(self, rows: np.ndarray) -> None:
        """Fetch the missing blocks of records ``rows`` (int64 (B, 4)) in one call."""
        need = sorted({(int(k), b) for k, off, n, _ in rows.tolist()
                       for b in self._blocks(int(k), off, n)})
        missing = [(k, b) for k, b in need if not self._present(k, b)]
        if not missing:
            return
        starts = [b * self.block for _, b in missing]
        ends = [s + self._length(k, b) for (k, b), s in zip(missing, starts)]
        try:
            data = self.fs.cat_ranges([self.paths[k] for k, _ in missing], starts, ends)
        except OSError as e:
            raise ConvzooError(f"{self.names[missing[0][0]]}: cannot read ({e})") from None
        self.cache.mkdir(parents=True, exist_ok=True)
        for (k, b), blob in zip(missing, data):
            if isinstance(blob, Exception):
                raise ConvzooError(f"{self.names[k]}: cannot read ({blob})")
            if len(blob) != self._length(k, b):
                raise ConvzooError(f"{self.names[k]}: short read at byte {b * self.block}")
            self.fetched_bytes += len(blob)
            if not write_quietly(self._file(k, b), blob):  # no cache space: serve from memory
                self._uncached[(k, b)] = blob

    def readinto(self, k: int, view: memoryview, offset: int) -> int:
        """Fill ``view`` with the bytes of shard ``k`` from ``offset``; returns the count."""
        length = len(view)
        self.fetch(np.array([[k, offset, length, 0]], dtype=np.int64))
        done = 0
        for b in self._blocks(k, offset, length):
            lo = max(offset + done, b * self.block)
            hi = min(offset + length, (b + 1) * self.block)
            if hi <= lo:
                continue
            piece = view[done:done + hi - lo]
            blob = self._uncached.pop((k, b), None)
            if blob is not None:
                piece[:] = blob[lo - b * self.block:hi - b * self.block]
                n = hi - lo
            else:
                fd = os.open(self._file(k, b), os.O_RDONLY)
                try:
                    n = os.preadv(fd, [piece], lo - b * self.block)
                finally:
                    os.close(fd)
            if n != hi - lo:
                raise ConvzooError(f"{self.names[k]}: short read at byte {lo}")
            done += n
        return done

    def read_all(self, k: int) -> np.ndarray:
        """The whole shard ``k`` as uint8 (through the cache)."""
        out = np.empty(self.sizes[k], dtype=np.uint8)
        self.readinto(k, memoryview(out), 0)
        return out
