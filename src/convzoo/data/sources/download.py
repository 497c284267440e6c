"""Checksummed, atomic downloads of the official data set archives.

A download streams into a new hidden file ``.<dest>.<random>.part``, is verified against its
MD5, and only then is renamed to ``dest`` with ``os.replace`` (atomic on one file system). An interrupted or
corrupted download therefore never leaves a file at ``dest`` that would be taken as good.

`fetch_archive` is how a source asks for one: under the node's file lock, an archive already
present is verified before use (once: a stamp file records the size and mtime it was verified
at) and fetched again when it does not match (with ``data.download=false`` it is the user's own
file: used as it is, with a warning).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from convzoo.data.prepare import node_lock, write_quietly
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

# Official archives of the CIFAR python version (Krizhevsky, 2009) and their MD5 sums.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

_CHUNK = 1 << 20  # bytes read per step (1 MiB)


def file_md5(path: Path) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_md5(path: Path, md5: str) -> bool:
    """True if `path` exists and its MD5 equals `md5` (case-insensitive)."""
    path = Path(path)
    if not path.is_file():
        return False
    return file_md5(path) == md5.lower()


def download_url(url: str, dest: Path, md5: str) -> Path:
    """Download `url` to `dest`, verify its MD5, and return `dest`.

    Streams into ``dest`` + ``.part`` with a progress bar; a wrong checksum or a failed
    transfer deletes the partial file and raises ConvzooError.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A new hidden file of our own (O_EXCL: never an existing file, never through a link).
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    log.info("downloading %s -> %s", url, dest)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with urllib.request.urlopen(url, timeout=60) as response, open(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=None) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise ConvzooError(f"download of {url} failed: {reason}") from None
    except BaseException:
        # KeyboardInterrupt and the like: never leave a partial file behind.
        part.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != md5.lower():
        part.unlink(missing_ok=True)
        raise ConvzooError(f"download of {url} has MD5 {got}, expected {md5}; file discarded")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------- verified archives


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_text(path: Path, md5: str) -> str:
    st = path.stat()
    return f"{md5.lower()} {st.st_size} {st.st_mtime_ns}\n"


def verified(path: Path, md5: str) -> bool:
    """Whether `path` exists with MD5 `md5` (a matching stamp spares re-hashing it)."""
    if not path.is_file():
        return False
    stamp = _stamp(path)
    try:
        if stamp.read_text() == _stamp_text(path, md5):
            return True
    except OSError:
        pass
    if not check_md5(path, md5):
        return False
    write_quietly(stamp, _stamp_text(path, md5).encode())
    return True


def fetch_archive(url: str, dest: Path, md5: str, *, allow_download: bool, name: str) -> Path:
    """`dest`, verified against `md5`; downloaded (under the lock) when missing or corrupt."""
    with node_lock(dest):
        if verified(dest, md5):
            return dest
        if dest.exists():
            if not allow_download:  # the user's own file, to be used as it is
                log.warning(f"{dest}: MD5 differs from the official {name} archive's ({md5}); "
                            "using it as it is (data.download=false)")
                return dest
            # A download lands only once its MD5 matched (download_url), so this file is not
            # one convzoo wrote: never replace it.
            raise ConvzooError(f"{dest}: MD5 differs from the official {name} archive's "
                               f"({md5}); convzoo does not replace a file it did not download: "
                               "move it away to download the archive, or set "
                               "data.download=false to use it as it is")
        elif not allow_download:
            raise ConvzooError(f"{name}: {dest} does not exist (set data.download=true, or put "
                               f"{dest.name} there)")
        download_url(url, dest, md5)
        write_quietly(_stamp(dest), _stamp_text(dest, md5).encode())
        return dest
