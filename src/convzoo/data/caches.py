"""Decode caches: one file per (source content, decode geometry), shared by every command.

An image folder or tar archive is decoded once into uint8 tensors of one `Geometry` and kept in
the cache folder ``<data.root>/cache`` (``~/.cache/convzoo/cache`` by default; ``eval`` and the
Python API use the user's own ``data.root``, never a checkpoint's) as

    <kind>-<source>-<geometry>-<content>.pt     kind: folder | archive

- ``<source>``: a hash of the source's resolved path (the folder holding the splits, or the
  archive);
- ``<geometry>``: a hash of what every image became (channels x height x width, resize rule)
  and of the pixel limit that decided which images are readable (``data.max_image_pixels``) --
  not of the options that led there. ``train`` (geometry resolved from ``data.channels`` /
  ``data.image_size``, perhaps 0 = as stored), ``eval`` (the run's geometry), ``bench``,
  ``sweep`` and the Python API therefore find the same file;
- ``<content>``: a fingerprint of the content (every image file's path, size and mtime; an
  archive's size and mtime) and of `CACHE_VERSION`.

Beside each ``.pt`` is its label, ``<same name>.json``: the source, geometry, fingerprint,
image counts, and the channels and sizes of the images as stored. The label is what lets a
command whose geometry depends on the data (``data.image_size=0``: the most common stored size)
resolve it without decoding (`geometry_for`), and what ``convzoo cache list`` reads (a cache
file is not opened for listing). The ``.pt`` holds the label too, so a lost label is rewritten
on the next use.

Rules:

- a cache is **replaced** only by one of the same source and geometry whose content fingerprint
  differs (the source changed); caches of other geometries of a source stay (``convzoo cache
  clear --stale`` removes those whose source changed or is gone);
- a hit sets the file's mtime: the "last used" of ``cache list`` and ``--older-than``;
- only a ``.pt`` that carries `CACHE_FORMAT` (read back, not guessed from its name), in the
  cache folder itself, is ever removed, with its label and lock;
- concurrency: a cache and its label are written atomically (temp file + rename, the label
  after the ``.pt``) under the source's node lock (``<kind>-<source>.lock``), so one process per
  node decodes a source while the others wait, then read what it wrote. Reading takes no lock:
  a file is only ever renamed into place or unlinked, and an open file outlives its unlink.
  ``cache clear`` takes the same lock without waiting and skips a source being written. The
  cache folder itself is the index (scanned, no index file that concurrent writers would have
  to merge).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convzoo.data import images
from convzoo.data.images import Geometry, resolve_geometry, stored_facts, tree_root
from convzoo.data.prepare import node_lock, write_quietly
from convzoo.errors import ConvzooError
from convzoo.integrity import content_digest

log = logging.getLogger("convzoo")

CACHE_FORMAT = "convzoo-decode-cache"
CACHE_VERSION = 5  # bump when the decoded layout or the decoding rules change (3: file names,
#                   4: the digest covers every value, 5: one key per content and geometry)
# <kind>-<source path tag>-<geometry tag>-<content key>.pt
NAME = re.compile(r"^(folder|archive)-([0-9a-f]{12})-([0-9a-f]{10})-([0-9a-f]{16})\.pt$")
LOCK_NAME = re.compile(r"^(folder|archive)-([0-9a-f]{12})\.lock$")  # one per source and kind


def cache_folder(root: str | Path) -> Path:
    """Where the decode caches of ``data.root`` = `root` live."""
    return Path(root).expanduser() / "cache"


def fingerprint(lines: list[str]) -> str:
    """The content fingerprint of a source from its 'path|size|mtime' lines
    (`images.scan_folder`, or an archive's one line)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    h.update("\n".join(lines).encode())
    return h.hexdigest()[:16]


def archive_line(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}|{st.st_mtime_ns}"


def _path_tag(path: Path | str) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Source:
    """A decoded source as the cache knows it: its resolved path, kind, content fingerprint and
    the pixel limit it was decoded under."""

    path: Path
    kind: str
    fingerprint: str
    max_pixels: int

    @property
    def tag(self) -> str:
        return _path_tag(self.path)

    def stem(self, geometry: Any) -> str:
        """The cache's file name without suffix for `geometry` (a `Geometry`)."""
        g = f"{geometry.channels}x{geometry.height}x{geometry.width}|{geometry.resize}|" \
            f"{self.max_pixels}"
        return f"{self.kind}-{self.tag}-{hashlib.sha256(g.encode()).hexdigest()[:10]}-" \
               f"{self.fingerprint}"


# ----------------------------------------------------------------------------- use


def file_of(folder: Path, source: Source, geometry: Any) -> Path:
    """The cache file of (`source`, `geometry`) in `folder`."""
    return folder / f"{source.stem(geometry)}.pt"


@contextlib.contextmanager
def source_lock(folder: Path, source: Source) -> Iterator[bool]:
    """The node lock of every cache of `source` (`prepare.node_lock`)."""
    with node_lock(folder / f"{source.kind}-{source.tag}") as held:
        yield held


def _read_label(path: Path) -> dict[str, Any] | None:
    try:
        label = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return label if isinstance(label, dict) and label.get("format") == CACHE_FORMAT else None


def geometry_for(folder: Path, source: Source, *, channels: int, image_size: int, resize: str,
                 name: str) -> Any:
    """The `Geometry` these options give `source` (`images.resolve_geometry`), without
    decoding: from the options alone when they fix it, else from the stored channels and sizes
    a label of this content records. None when only decoding can tell."""

    if channels and image_size:
        return Geometry(channels, image_size, image_size, resize)
    for path in sorted(folder.glob(f"{source.kind}-{source.tag}-*-{source.fingerprint}.json")):
        label = _read_label(path)
        if label is None or not _describes(label, source):
            continue
        stored = label["stored"]
        sizes = Counter({(int(h), int(w)): int(n) for h, w, n in stored["sizes"]})
        return resolve_geometry(int(stored["channels"]), sizes, channels=channels,
                                image_size=image_size, resize=resize, name=name)
    return None


def _describes(label: dict[str, Any], source: Source) -> bool:
    return (label.get("source") == str(source.path) and label.get("kind") == source.kind
            and label.get("fingerprint") == source.fingerprint
            and label.get("max_pixels") == source.max_pixels)


def _digest(payload: dict[str, Any]) -> str:
    """The cache's ``integrity.content_digest`` (every value but the digest itself): detects a
    damaged cache, which ``torch.load`` alone does not (it reads a flipped byte back
    silently)."""

    return content_digest({k: v for k, v in payload.items() if k != "digest"})


def read(folder: Path, source: Source, geometry: Any) -> dict[str, Any] | None:
    """The payload cached for (`source`, `geometry`), or None when there is none or it is
    unreadable or fails its digest (it is then rebuilt). A hit marks the file as used now."""
    import torch

    path = file_of(folder, source, geometry)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        ok = (isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT
              and payload.get("digest") == _digest(payload))
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        log.warning(f"ignoring unreadable cache {path} ({type(e).__name__}); rebuilding it")
        return None
    if not ok:
        log.warning(f"ignoring damaged cache {path} (digest mismatch); rebuilding it")
        return None
    label = payload.get("label")
    if not isinstance(label, dict) or not _describes(label, source):
        return None  # another source's file under a colliding name: not this source's cache
    with contextlib.suppress(OSError):  # read-only cache folder: "last used" stays as it was
        os.utime(path)
    label_path = path.with_suffix(".json")
    if _read_label(label_path) is None:  # lost (a writer killed between the two files)
        write_quietly(label_path, _label_bytes(label))
    return payload


def _label_bytes(label: dict[str, Any]) -> bytes:
    return (json.dumps(label) + "\n").encode()  # one line: `sizes` may have thousands


def write(folder: Path, source: Source, payload: dict[str, Any], stored: Counter) -> bool:
    """Write `payload` (name, classes, skipped, geometry, splits) as the cache of `source` at
    its geometry, with its label; `stored`: `images.shape_counts` of the readable images. Then
    remove what it replaces: this source's caches of the same geometry with another content
    fingerprint, and its caches of the old one-per-source naming. A failed write is a warning.
    Call it holding `source_lock`."""
    import torch


    geometry = Geometry.from_state(payload["geometry"])
    path = file_of(folder, source, geometry)
    channels, sizes = stored_facts(stored)
    splits = {k: int(v["labels"].numel()) for k, v in payload["splits"].items()}
    label = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": str(source.path),
             "kind": source.kind, "fingerprint": source.fingerprint,
             "max_pixels": source.max_pixels, "geometry": geometry.state(),
             "name": payload["name"], "classes": len(payload["classes"]), "splits": splits,
             "images": sum(splits.values()), "created": time.time(),
             "stored": {"channels": channels,
                        "sizes": [[h, w, n] for (h, w), n in sizes.most_common()]}}
    # The marker and label first: they open the pickle, ahead of the per-image names.
    payload = {"format": CACHE_FORMAT, "label": label, **payload}
    payload["digest"] = _digest(payload)
    nbytes = sum(t.numel() * t.element_size() for s in payload["splits"].values()
                 for t in (s["images"], s["labels"]))
    log.info(f"writing decode cache {path} ({nbytes / 2**20:,.0f} MB)")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    if not write_quietly(path, buffer.getbuffer()):
        return False
    write_quietly(path.with_suffix(".json"), _label_bytes(label))
    _remove_replaced(folder, source, path)
    return True


def _remove_replaced(folder: Path, source: Source, new: Path) -> None:
    geo_tag = NAME.match(new.name).group(3)  # type: ignore[union-attr]
    stale_mb, stale = 0.0, 0
    for entry in scan(folder, check_sources=False, tag=source.tag):
        if entry.path == new or entry.label.get("source") != str(source.path):
            continue
        same_geometry = NAME.match(entry.path.name).group(3) == geo_tag  # type: ignore[union-attr]
        if same_geometry and entry.label["fingerprint"] != source.fingerprint:
            if _remove(entry) is not None:
                log.info(f"removed the decode cache it replaces: {entry.path.name}")
        elif entry.label.get("fingerprint") != source.fingerprint:
            stale, stale_mb = stale + 1, stale_mb + entry.mb
    if stale:
        log.info(f"{stale} cache(s) of {source.path} at other geometries were made from its "
                 f"earlier content ({stale_mb:,.1f} MB); `convzoo cache clear --stale` "
                 "removes them")


# ----------------------------------------------------------------------------- list / clear


@dataclass
class Entry:
    """One decode cache in a cache folder, as `scan` found it."""

    path: Path
    label: dict[str, Any]  # its .json beside it, or the copy inside the file
    bytes: int
    last_used: float  # the file's mtime: set when written and on every hit
    lock: Path = field(repr=False)  # its source's lock (one per source and kind)
    state: str = "?"  # ok | changed | missing (its source); "?" = not checked

    @property
    def mb(self) -> float:
        return self.bytes / 2**20

    @property
    def stale(self) -> bool:
        return self.state in ("changed", "missing")

    def public(self) -> dict[str, Any]:
        """What ``cache list --json`` prints for it."""
        label = self.label
        return {"file": str(self.path), "source": label.get("source"), "kind": label.get("kind"),
                "geometry": label.get("geometry"), "max_pixels": label.get("max_pixels"),
                "images": label.get("images"), "splits": label.get("splits"),
                "size_mb": round(self.mb, 3), "created": _iso(label.get("created")),
                "last_used": _iso(self.last_used), "state": self.state}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def carries_marker(path: Path) -> dict[str, Any] | None:
    """The payload of `path` (tensors memory-mapped, not read) when it is a regular file that
    carries `CACHE_FORMAT`, else None: the test of a file convzoo made."""
    import torch

    if path.is_symlink() or not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except Exception:  # not a torch file, or damaged: not provably ours
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT else None


def scan(folder: Path, check_sources: bool = True, tag: str | None = None) -> list[Entry]:
    """Every decode cache in `folder` (not below it; only those of the source path hashed to
    `tag` when given), by source then last use; with `check_sources`, each entry's state says
    whether its source is unchanged (each source scanned once)."""
    entries: list[Entry] = []
    try:
        names = sorted(p.name for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for name in names:
        m = NAME.match(name)
        if not m or (tag is not None and m.group(2) != tag):
            continue
        path = folder / name
        label = _read_label(path.with_suffix(".json"))
        if label is None:  # label lost: read the one in the file
            payload = carries_marker(path)
            if payload is None:
                continue
            label = payload.get("label")
            if not isinstance(label, dict):
                continue
        try:
            st = path.stat()
        except FileNotFoundError:  # removed meanwhile
            continue
        lock = folder / f"{m.group(1)}-{m.group(2)}.lock"
        entries.append(Entry(path, label, st.st_size, st.st_mtime, lock))
    if check_sources:
        states: dict[tuple[str, str], str] = {}
        for e in entries:
            key = (e.label["source"], e.label["kind"])
            if key not in states:
                states[key] = _source_fingerprint(Path(key[0]), key[1])
            now = states[key]
            e.state = now if now == "missing" else \
                "ok" if now == e.label["fingerprint"] else "changed"
    return sorted(entries, key=lambda e: (str(e.label.get("source")), e.last_used))


def _source_fingerprint(path: Path, kind: str) -> str:
    """The fingerprint `path` has now, or "missing"."""

    try:
        if kind == "archive":
            return fingerprint([archive_line(path)]) if path.is_file() else "missing"
        if not path.is_dir():
            return "missing"
        return fingerprint(images.scan_folder(path)[2])
    except (OSError, ConvzooError):
        return "missing"


def _remove(entry: Entry, dry_run: bool = False) -> float | None:
    """Remove a cache (label first, then the file) once its file proved to carry the format
    marker; returns the MB reclaimed, or None when it is not removable (not ours, or gone)."""
    if carries_marker(entry.path) is None:
        return None
    if dry_run:
        return entry.mb
    try:
        entry.path.with_suffix(".json").unlink(missing_ok=True)
        entry.path.unlink()
    except FileNotFoundError:  # removed meanwhile by another process
        return None
    except OSError as e:
        log.warning(f"could not remove {entry.path}: {e.strerror or e}")
        return None
    return entry.mb


def select(entries: list[Entry], *, source: Path | None = None,
           older_than_days: float | None = None, stale: bool = False,
           every: bool = False) -> list[Entry]:
    """The entries every given condition picks (``cache clear``'s selectors, combined by and);
    at least one condition is required."""
    if source is None and older_than_days is None and not stale and not every:
        raise ConvzooError("cache clear: say what to remove: --all, --stale, --source PATH or "
                           "--older-than DAYS (add --dry-run to see it first)")
    if older_than_days is not None and not (older_than_days >= 0):
        raise ConvzooError(f"--older-than {older_than_days}: a number of days >= 0")
    picked = entries
    if source is not None:
        wanted = _source_names(source)
        picked = [e for e in picked if e.label.get("source") in wanted]
    if older_than_days is not None:
        cutoff = time.time() - older_than_days * 86400
        picked = [e for e in picked if e.last_used < cutoff]
    if stale:
        picked = [e for e in picked if e.stale]
    return picked


def _source_names(source: Path) -> set[str]:
    """The recorded source paths `source` (as the user typed it) may stand for: its resolved
    path, and the folder holding its splits (`images.tree_root`) when that is another."""

    resolved = source.expanduser().resolve()
    names = {str(resolved)}
    if resolved.is_dir():
        with contextlib.suppress(OSError):
            names.add(str(tree_root(resolved)))
    return names


def clear(folder: Path, picked: list[Entry], dry_run: bool = False, labels: bool = False
          ) -> tuple[list[Entry], list[Entry]]:
    """Remove the `picked` caches of `folder`: (removed, skipped because a process is writing
    that source now). A source's lock file goes with its last cache; with `labels`, so do the
    labels whose cache file is gone (removed by hand, say) and the locks of sources with no
    cache left (a decode that failed on a bad image leaves its lock)."""
    removed, busy = [], []
    if labels and not dry_run:
        for path in folder.glob("*.json"):
            if NAME.match(path.with_suffix(".pt").name) and not path.with_suffix(".pt").exists() \
                    and _read_label(path) is not None:
                path.unlink(missing_ok=True)
    by_lock: dict[Path, list[Entry]] = {}
    for e in picked:
        by_lock.setdefault(e.lock, []).append(e)
    if labels:
        for lock in folder.glob("*.lock"):
            with contextlib.suppress(OSError):  # a lock file is empty: anything else is kept
                if LOCK_NAME.match(lock.name) and lock.is_file() and lock.stat().st_size == 0:
                    by_lock.setdefault(lock, [])
    for lock, group in by_lock.items():
        with node_lock(lock.with_suffix(""), wait=False) as held:
            if not held:
                busy += group
                continue
            removed += [e for e in group if _remove(e, dry_run) is not None]
            prefix = lock.name.removesuffix(".lock") + "-"
            if not dry_run and not any(p.name.startswith(prefix) and p.suffix == ".pt"
                                       for p in folder.iterdir()):
                # Unlinked while held: a process already waiting on it gets the old file, one
                # arriving now a new one; at worst both decode once, each writing atomically.
                lock.unlink(missing_ok=True)
    return removed, busy
