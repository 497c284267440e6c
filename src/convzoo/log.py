"""The ``convzoo`` logger: one plain handler, one voice under torchrun. Kept apart from the
training package so that the command line (``convzoo --help``, ``recipes``, ``config``) sets up
its output without importing torch."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("convzoo")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    A caller that swaps stderr (a test harness, a notebook) must not leave the logger bound
    to a stream that has since been closed.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """One plain handler on the 'convzoo' logger (idempotent)."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    level = logging.DEBUG if verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: one voice, rank 0's
        level = logging.WARNING
    log.setLevel(level)
    log.propagate = False


def format_seconds(seconds: float) -> str:
    """``3725`` -> ``1h02m``, ``185`` -> ``3m05s``, ``7.2`` -> ``7s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


