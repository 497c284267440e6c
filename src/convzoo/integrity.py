"""What convzoo checks before it trusts bytes it reads.

- :func:`content_digest`: one BLAKE2b digest of a nested value (tensors by dtype, shape and
  values; dicts, lists and scalars), stored in every file convzoo writes to read back later
  (checkpoints, ``model.safetensors``, decode caches) and compared on every load.
  ``torch.load`` and ``safetensors`` read a flipped byte back silently: PyTorch does not check
  the CRCs of its zip records, and safetensors has no checksum at all.
- :func:`check_finite`: weights with NaN or infinite values are refused where they are read,
  naming the file, instead of evaluating to ``"loss": NaN``.
- :func:`regular_file` / :func:`read_regular`: user paths are read only when they are regular
  files, with a size cap: ``/dev/zero`` would be read until memory runs out, and opening a FIFO
  for reading blocks until someone writes to it.

Valid JSON out (no NaN/Infinity) is ``convzoo.jsonio``, which the command line imports without
torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from convzoo.errors import ConvzooError

# ----------------------------------------------------------------------------- digests


def content_digest(obj: Any) -> str:
    """BLAKE2b-128 (hex) of `obj`: tensors, mappings, lists/tuples, str, bytes, int, float,
    bool, None, and ``torch.dtype``/``torch.device``/``torch.Size``.

    Written by hand because neither torch nor safetensors offers a digest of content. It is
    a digest of *values*, not of a file's bytes: the same object digests alike on any device
    and memory format (a channels-last CUDA tensor before ``torch.save``, its CPU copy after
    ``torch.load``), and the same tensors digest alike in a ``.pt`` and a ``.safetensors``.
    Every value is written with a type tag and its length, so no two different objects give
    the same byte stream (``["ab"]`` vs ``["a", "b"]``, ``1`` vs ``1.0`` vs ``True``). Mapping
    items are taken in the order of their keys' ``(type, repr)``: the safetensors header is a
    JSON object without a guaranteed order. Another type is a TypeError (a programming error:
    checkpoints hold plain values).
    """
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    def tagged(tag: bytes, data: bytes) -> None:
        h.update(tag + struct.pack("<Q", len(data)) + data)

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)  # a 0-dim tensor cannot change dtype
        tagged(b"T", f"{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    elif obj is None:
        tagged(b"N", b"")
    elif isinstance(obj, bool):  # before int: bool is an int
        tagged(b"B", b"1" if obj else b"0")
    elif isinstance(obj, int):
        tagged(b"I", str(obj).encode())
    elif isinstance(obj, float):
        tagged(b"F", struct.pack("<d", obj))  # exact, NaN and infinities included
    elif isinstance(obj, str):
        tagged(b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, bytes | bytearray):
        tagged(b"Y", bytes(obj))
    elif isinstance(obj, torch.dtype | torch.device | torch.Size):
        tagged(b"D", repr(obj).encode())
    elif isinstance(obj, Mapping):
        items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        tagged(b"M", str(len(items)).encode())
        for key, value in items:
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        tagged(b"L", str(len(obj)).encode())
        for value in obj:
            _feed(h, value)
    else:
        raise TypeError(f"content_digest: cannot digest a {type(obj).__name__}")


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str, advice: str) -> None:
    """ConvzooError naming `where` and the first floating tensor with NaN or infinite values.
    `advice`: what to use instead (the message's end)."""
    for name, t in tensors:
        if t.is_floating_point() or t.is_complex():
            bad = int(t.numel() - torch.isfinite(t).sum())
            if bad:
                raise ConvzooError(f"{where}: tensor {name} holds {bad} NaN or infinite "
                                   f"value{'s' if bad > 1 else ''} of {t.numel()}; these weights "
                                   f"cannot be used ({advice})")


def named_tensors(obj: Any, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """(dotted path, tensor) of every tensor inside nested dicts and lists, in order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}/{i}" if prefix else str(i))


# ----------------------------------------------------------------------------- regular files


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _check(st: os.stat_result, path: str | Path, what: str, max_bytes: int,
           limit_name: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConvzooError(f"{path}: {_kind(st.st_mode)}, not a regular file ({what} must be "
                           "a regular file)")
    if max_bytes and st.st_size > max_bytes:
        raise ConvzooError(f"{path}: {what} of {st.st_size:,} bytes exceeds {limit_name}="
                           f"{max_bytes // 2**20} MB; raise the limit if the file is genuine")


def regular_file(path: str | Path, what: str = "file", max_bytes: int = 0,
                 limit_name: str = "data.max_member_mb") -> int:
    """The size of `path`, a regular file (followed through links) of at most `max_bytes`
    (0 = any size); ConvzooError naming what it is otherwise. Checked with ``os.stat`` before
    anything opens it: for readers that take a path (``torch.load``, ``safe_open``, tar)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConvzooError(f"{what} not found: {path}") from None
    except OSError as e:
        raise ConvzooError(f"cannot read {what} {path}: {e.strerror or e}") from None
    _check(st, path, what, max_bytes, limit_name)
    return st.st_size


def read_regular(path: str | Path, what: str = "file", max_bytes: int = 0,
                 limit_name: str = "data.max_member_mb") -> bytes:
    """The bytes of `path`, a regular file of at most `max_bytes` (0 = any size).

    Opened non-blocking and checked on the open descriptor (``fstat``), so a FIFO neither
    blocks nor is read, and a file swapped after a check is still checked; at most
    `max_bytes` + 1 bytes are read (a file growing while read is caught too)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConvzooError(f"{what} not found: {path}") from None
    except OSError as e:  # a socket cannot be opened (ENXIO): say what it is
        with contextlib.suppress(OSError):
            _check(os.stat(path), path, what, max_bytes, limit_name)
        raise ConvzooError(f"cannot read {what} {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        _check(os.fstat(fd), path, what, max_bytes, limit_name)
        try:
            data = f.read(max_bytes + 1) if max_bytes else f.read()
        except OSError as e:
            raise ConvzooError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if max_bytes and len(data) > max_bytes:
        raise ConvzooError(f"{path}: {what} grew past {limit_name}={max_bytes // 2**20} MB "
                           "while it was read")
    return data
