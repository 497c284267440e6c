"""Where convzoo writes: every output path is checked before any work, and what is there is
replaced only when it is a regular file that the command may replace.

The rule (README): convzoo never deletes or replaces a file it did not create, whatever fails
and whatever flag was given. A path the user names for an output (``export --out``,
``predict --out``, ``eval --report``, ``plot --out``, ``bench --out-md/--out-csv``, ``pack``'s
destination, a run directory) is refused, with one line, when it is

* a symbolic link: a rename would replace the link, a write would go through it into a file
  the user did not name;
* a device, FIFO or socket: a rename would replace the node (``--out /dev/null`` as root
  breaks the machine), a write into a FIFO blocks;
* a directory where a file goes, or a file where a directory goes;
* one of the files a run directory is made of (:data:`RUN_FILES`: its checkpoints, weights,
  config, metric log), or an input of the same command (the same file, by inode);
* a file without the suffix of the format it is about to hold (``export --format
  safetensors --out thesis.txt``).

An existing regular file with the right suffix is replaced atomically (:func:`write_output`),
as every tool replaces its own previous output. A folder output (``eval --report``) may be new,
empty, or a previous output of the same kind (``is_ours``); a folder holding anything else is
refused rather than written into.

The checks run before any work (a model loaded, images read) and are repeated just before the
write, so a path that changed meanwhile is still refused; the write itself is a temp file in
the same folder renamed over the target, which never writes through a link or into a node.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from convzoo import files
from convzoo.errors import ConvzooError

# The files of a run directory (training/rundir.py writes them): no output replaces one, whether
# or not that run is an input of the command.
RUN_FILES = ("config.yaml", "init.json", "metrics.jsonl", "metrics.csv", "summary.json",
             "model.safetensors", "best.pt", "last.pt", "curves.png", "README.md", ".lock")


def kind_of(path: Path) -> str | None:
    """What is at ``path`` without following a link: None (nothing), "file", "directory",
    or a phrase naming anything else ("a symbolic link", "a FIFO", ...)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a file above it)
        return None
    except OSError as e:
        raise ConvzooError(f"cannot inspect {path}: {e.strerror}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def is_run_dir(path: Path) -> bool:
    """A convzoo run directory: its config and a checkpoint or weights file."""
    return (path / "config.yaml").is_file() and any(
        (path / n).is_file() for n in ("last.pt", "best.pt", "model.safetensors"))


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The files an output must not replace: each input, and for a run (its directory or a
    file in it) the run's own files."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        run = p if p.is_dir() else p.parent
        out.append(p)
        if (run / "config.yaml").is_file():
            out += [run / n for n in RUN_FILES]
    return out


def _writable_parent(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder this process may write in
    (missing folders in between are created at write time)."""
    existing = path.parent
    while kind_of(existing) is None and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConvzooError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConvzooError(f"{option} {path}: {existing} is not writable")


def check_output_file(path: str | Path, *, option: str, suffixes: Iterable[str] = (),
                      inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` as a file this command may write (see the module docstring), or ConvzooError
    naming ``option`` (the flag, for the message), the path and what is wrong. ``suffixes``:
    the accepted suffixes, lower case with the dot (empty: any)."""
    p = Path(path).expanduser()
    suffixes = tuple(suffixes)
    if suffixes and p.suffix.lower() not in suffixes:
        raise ConvzooError(f"{option} {p}: expected a {' or '.join(suffixes)} file")
    kind = kind_of(p)
    if kind is not None and kind != "file":
        what = "a directory" if kind == "directory" else kind
        raise ConvzooError(f"{option} {p}: is {what}; convzoo writes a new file or replaces a "
                           "regular file of its own, nothing else")
    if kind == "file":
        for q in _inputs(inputs):
            if _same(p, q):
                raise ConvzooError(f"{option} {p}: is an input of this command ({q}); name "
                                   "another file")
        if p.name in RUN_FILES and (p.parent / "config.yaml").is_file():
            raise ConvzooError(f"{option} {p}: is a file of the run in {p.parent}; name a file "
                               "outside the run's own files")
    _writable_parent(p, option)
    return p


def check_output_dir(path: str | Path, *, option: str, is_ours: Callable[[Path], bool],
                     what: str, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` as a folder this command may write its files into: missing, empty, or one that
    ``is_ours`` recognises as an earlier output of the same kind (``what`` names it in the
    message). Never a run directory or an input of the command."""
    p = Path(path).expanduser()
    kind = kind_of(p)
    if kind is None:
        _writable_parent(p, option)
        return p
    if kind != "directory":
        raise ConvzooError(f"{option} {p}: is {'a file' if kind == 'file' else kind}; name a "
                           "new or empty folder")
    if is_run_dir(p):
        raise ConvzooError(f"{option} {p}: is a run directory; name a new or empty folder")
    for q in inputs:
        if _same(p, Path(q).expanduser()):
            raise ConvzooError(f"{option} {p}: is an input of this command; name another folder")
    try:
        entries = sorted(e.name for e in os.scandir(p))
    except OSError as e:
        raise ConvzooError(f"{option} {p}: cannot list it: {e.strerror}") from None
    if entries and not is_ours(p):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConvzooError(f"{option} {p}: holds files that are not {what} ({shown}); name a "
                           "new or empty folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConvzooError(f"{option} {p}: is not writable")
    return p


def write_output(path: Path, write: Callable[[Path], object], *, option: str = "output",
                 suffixes: Iterable[str] = (), inputs: Iterable[str | Path] = ()) -> Path:
    """Check ``path`` again (it may have changed since the command started), create missing
    folders above it, and write it atomically: ``write(tmp)`` fills a temp file with the same
    suffix in the same folder, which is renamed over ``path``. A failed write leaves what was
    there as it was and no temp file behind."""
    p = check_output_file(path, option=option, suffixes=suffixes, inputs=inputs)
    with files.writing(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(p, write)
    return p
