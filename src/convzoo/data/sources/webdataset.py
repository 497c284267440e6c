"""WebDataset tar shards (``--data 'shards-{000..009}.tar'``), read sample by sample.

The format (https://github.com/webdataset/webdataset#the-webdataset-format): each shard is a
plain POSIX tar file; the files of one sample are consecutive members sharing a key, the
member's path up to the first dot of its base name (``a/b/000017.png`` and
``a/b/000017.cls`` are sample ``a/b/000017``, fields ``png`` and ``cls``). convzoo takes the
image from the first of the fields ``jpg, jpeg, png, webp, ppm`` (or any image suffix) and
the label from ``cls``, ``cls.txt``, ``label`` (text: an integer or a class name) or ``json``
(an object with a ``label``, ``cls`` or ``class`` entry, or a bare integer/text).

Shards are named by a brace pattern (``{000..009}`` ranges keep their zero padding; ``{a,b}``
lists; several braces multiply), a glob, or one file, local or behind any fsspec URL
(``s3://``, ``https://``, ``file://``). Each shard is read as a stream (``tarfile`` mode
``r|*``: no seeking, no extraction to disk, gzip-compressed shards too). The split of a shard
is the first of train / val / test found in its file name (``imagenet-train-0001.tar``),
else ``train``. Class names: ``classes.txt`` (one per line) or ``classes.json`` (a list)
beside the first shard, else the sorted distinct labels (integers keep their numbers).

Written over ``tarfile`` + fsspec rather than with the ``webdataset`` package: reading the
format needs only what the standard library and fsspec (already dependencies) give, the
samples go to convzoo's own decoder and pack writer rather than through webdataset's pipeline,
and the package is not in the development environment convzoo is tested in. Where the package is installed,
tests/test_data_in.py checks that both read the same samples, in the same order, with the
same images and labels.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convzoo.data import images
from convzoo.data.images import DEFAULT_LIMITS, Limits
from convzoo.data.progress import progress
from convzoo.data.sources.records import Records, by_split
from convzoo.errors import ConvzooError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "ppm")
LABEL_FIELDS = ("cls", "cls.txt", "label", "json")
_BRACE = re.compile(r"\{([^{}]*)\}")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHARD_SPLIT = re.compile(r"(?:^|[^a-z])(train|val|valid|validation|test)(?:[^a-z]|$)")


def expand_braces(pattern: str) -> list[str]:
    """``shards-{000..009}.tar`` -> the ten names (zero padding kept); ``{a,b}`` lists."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        options = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [name for o in options for name in expand_braces(head + o + tail)]


def _is_shard_name(name: str) -> bool:
    return name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def looks_like_shards(source: str) -> bool:
    """A brace pattern or a URL/glob of ``.tar`` files (a single local ``.tar`` is decided by
    its content: `is_shard`)."""
    if _BRACE.search(source) and _is_shard_name(source):
        return True
    if _URL.match(source) and _is_shard_name(source):
        return True
    return not _URL.match(source) and any(c in source for c in "*?[") and _is_shard_name(source)


def is_shard(path: Path) -> bool:
    """A local tar whose first files are WebDataset samples (a label field beside an image).
    Reads at most 8 files' headers, and stops at the first file without a suffix (a CIFAR
    archive's batches: no decompressing of their 30 MB each)."""
    try:
        with tarfile.open(path, "r|*") as tar:
            files = (m for m in tar if m.isfile())
            for member in itertools.islice(files, 8):
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    return False
                if base.split(".", 1)[1].lower() in LABEL_FIELDS:
                    return True
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False
    return False


def shard_urls(source: str) -> list[str]:
    """Every shard `source` names, in order (braces expanded, globs matched)."""
    urls = expand_braces(source)
    if any(c in source for c in "*?["):
        import fsspec

        out = []
        for u in urls:
            fs, _, paths = fsspec.get_fs_token_paths(u)
            matched = sorted(paths)
            out += [fs.unstrip_protocol(p) if _URL.match(u) else p for p in matched]
        urls = out
    if not urls:
        raise ConvzooError(f"{source}: no WebDataset shards match this pattern")
    return urls


def _open(url: str) -> Any:
    """A readable binary stream of a shard (a local file, or fsspec for a URL)."""
    if not _URL.match(url):
        if not os.path.isfile(url):
            raise ConvzooError(f"WebDataset shard not found: {url}")
        return open(url, "rb")  # noqa: SIM115 - closed by the caller
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:
        raise ConvzooError(f"cannot open WebDataset shard {url}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _samples(url: str, limits: Limits) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) of each sample of one shard, read as a stream."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.removeprefix("./")
            folder, _, base = name.rpartition("/")
            if base.startswith(".") or "." not in base:
                continue
            stem, field = base.split(".", 1)
            k = f"{folder}/{stem}" if folder else stem
            if k != key:
                if key is not None:
                    yield key, fields
                key, fields = k, {}
            limits.check_member(url, name, member.size)
            data = tar.extractfile(member)
            assert data is not None  # a regular file member
            fields[field.lower()] = data.read()
        if key is not None:
            yield key, fields


def _label_of(fields: dict[str, bytes]) -> int | str | None:
    for name in LABEL_FIELDS:
        if name not in fields:
            continue
        text = fields[name].decode("utf-8", "replace").strip()
        if name == "json":
            try:
                value = json.loads(text)
            except ValueError:
                return None
            if isinstance(value, dict):
                value = next((value[k] for k in ("label", "cls", "class") if k in value), None)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                return None
            return value
        return int(text) if text.lstrip("-").isdigit() else (text or None)
    return None


def _image_of(fields: dict[str, bytes]) -> bytes | None:
    for name in IMAGE_FIELDS:
        if name in fields:
            return fields[name]
    for name, data in fields.items():
        if images.is_image(f"x.{name}"):
            return data
    return None


def _shard_split(url: str) -> str:
    m = _SHARD_SPLIT.search(url.rstrip("/").rsplit("/", 1)[-1].lower())
    if m is None:
        return "train"
    return {"valid": "val", "validation": "val"}.get(m.group(1), m.group(1))


def _beside(first: str) -> list[str] | None:
    """Class names from classes.txt / classes.json beside the first shard, if there is one."""
    folder = first.rsplit("/", 1)[0] if "/" in first else "."
    for name in ("classes.txt", "classes.json"):
        where = f"{folder}/{name}"
        try:
            if _URL.match(where):
                import fsspec

                with fsspec.open(where, "rb") as f:
                    text = f.read().decode("utf-8")
            else:
                if not os.path.isfile(where):
                    continue
                text = Path(where).read_text(encoding="utf-8")
        except (FileNotFoundError, OSError, ValueError):
            continue
        if name == "classes.txt":
            return [line.strip() for line in text.splitlines() if line.strip()]
        try:
            value = json.loads(text)
        except ValueError:
            raise ConvzooError(f"{where}: not valid JSON (expected a list of class names)") \
                from None
        if not isinstance(value, list):
            raise ConvzooError(f"{where}: expected a JSON list of class names")
        return [str(v) for v in value]
    return None


def read_shards(source: str, limits: Limits = DEFAULT_LIMITS) -> Records:
    """`Records` of the WebDataset shards `source` names (see the module docstring)."""
    urls = shard_urls(source)
    keys: dict[str, list[str]] = {}
    data: dict[str, list[bytes]] = {}
    labels: dict[str, list[int | str]] = {}
    with progress(None, f"reading {len(urls)} shard(s)", unit="sample") as bar:
        for url in urls:
            split = _shard_split(url)
            try:
                for key, fields in _samples(url, limits):
                    where = f"{url}:{key}"
                    image, label = _image_of(fields), _label_of(fields)
                    if image is None:
                        raise ConvzooError(f"{where}: sample has no image field (fields: "
                                           f"{', '.join(sorted(fields))}; expected one of "
                                           f"{', '.join(IMAGE_FIELDS)})")
                    if label is None:
                        raise ConvzooError(f"{where}: sample has no readable label (fields: "
                                           f"{', '.join(sorted(fields))}; expected one of "
                                           f"{', '.join(LABEL_FIELDS)})")
                    keys.setdefault(split, []).append(where)
                    data.setdefault(split, []).append(image)
                    labels.setdefault(split, []).append(label)
                    bar.update(1)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise images.archive_error(Path(url), e, "WebDataset shard") from None
    if not keys:
        raise ConvzooError(f"{source}: no samples in {len(urls)} WebDataset shard(s) (an empty "
                           "dataset)")
    names = _beside(urls[0])
    base = urls[0].rstrip("/").rsplit("/", 1)[-1]
    name = re.split(r"[-_.{]", base, maxsplit=1)[0] or "webdataset"
    return by_split(name, keys, labels, data, names, lambda lab: (
        f"{source}: label '{lab}' is not in the class names beside the shards "
        f"({len(names or [])} classes)" if names else f"{source}: label {lab} is negative"))
