"""Progress of data preparation (decoding, caching, packing, fitting), on stderr.

On a terminal or in a notebook: a tqdm bar (rate and ETA; ``tqdm.auto`` picks the notebook
widget in Jupyter). Otherwise (logs, CI, nohup): a line with the count, rate and ETA once the work
has taken ``FIRST_SECONDS`` (so a few seconds of work stays quiet), then at most every
``LOG_SECONDS``, and one at the end. Quiet on every
torchrun rank but 0. Training's per-step progress is ``training.logging.Progress``; this is
everything else that takes a while: decoding, packing, fitting, eval, predict and bench.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType

from tqdm.auto import tqdm

log = logging.getLogger("convzoo")
FIRST_SECONDS = 5.0
LOG_SECONDS = 30.0
END_SECONDS = 1.0  # work shorter than this ends without a line


def interactive() -> bool:
    """Whether progress is drawn as a bar: stderr is a terminal, or this is a notebook's kernel
    (where ``tqdm.auto`` draws a widget); otherwise progress is log lines."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class progress:  # noqa: N801 - used like tqdm, as a context manager
    """``with progress(total, "decoding", unit="img") as bar: bar.update(n)``."""

    def __init__(self, total: int | None, desc: str, unit: str = "it",
                 enabled: bool = True) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled and _is_main_rank()
        self.bar: tqdm | None = None
        if self.enabled and interactive():
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                            dynamic_ncols=True, leave=False)
        self.done, self.logged = 0, False
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        wait = LOG_SECONDS if self.logged else FIRST_SECONDS
        if self.enabled and now - self.last >= wait:
            self.logged = True
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = ""
            if self.total:
                eta = f", ETA {(self.total - self.done) / max(rate, 1e-9):.0f}s"
            of = f"/{self.total:,}" if self.total else ""
            log.info(f"{self.desc}: {self.done:,}{of} {self.unit} ({rate:,.0f}/s{eta})")

    def __enter__(self) -> progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()
        seconds = time.perf_counter() - self.start
        if self.enabled and kind is None and seconds >= END_SECONDS and self.done:
            log.info(f"{self.desc}: {self.done:,} {self.unit} in {seconds:.1f}s")
