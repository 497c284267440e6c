"""Progress output and per-epoch metric files (metrics.jsonl, TensorBoard).

On a terminal a tqdm bar shows images/s; otherwise (CI, nohup, pipes) plain log lines are printed
every ``log_every`` steps. Loss values are read from the device only at those points, so the
training step itself never waits on the host.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from convzoo.train.rundir import MetricsLog

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


class Progress:
    """Per-epoch progress: a tqdm bar on a TTY, a log line every `log_every` steps otherwise."""

    def __init__(self, total: int, epoch: int, epochs: int, log_every: int, enabled: bool = True):
        self.total, self.epoch, self.epochs, self.log_every = total, epoch, epochs, log_every
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bar = (
            tqdm(
                total=total,
                desc=f"epoch {epoch}/{epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
            )
            if self.tty
            else None
        )
        self.start = time.perf_counter()
        self.images = 0

    def update(self, step: int, images: int, read_loss: Any) -> None:
        """`read_loss` is a callable returning the running loss (a host sync), called rarely."""
        self.images += images
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % self.log_every == 0 or step == self.total:
                ips = self.images / max(time.perf_counter() - self.start, 1e-9)
                self.bar.set_postfix(loss=f"{read_loss():.4f}", img_s=f"{ips:.0f}")
        elif step % self.log_every == 0:
            ips = self.images / max(time.perf_counter() - self.start, 1e-9)
            log.info(
                f"epoch {self.epoch}/{self.epochs} step {step}/{self.total} "
                f"loss {read_loss():.4f} {ips:.0f} img/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsWriter:
    """One row per epoch to metrics.jsonl (``rundir.MetricsLog``: appended, fsync'd) and to
    TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_epoch: int = 0):
        self.log = MetricsLog(run_dir, keep_through=resume_epoch)  # drops rows to be retrained
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(
                    log_dir=str(run_dir / "tensorboard"), purge_step=resume_epoch + 1
                )
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                log.warning("tensorboard unavailable; skipping event files")

    def write(self, row: dict[str, Any]) -> None:
        self.log.append(row)
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tb.add_scalar(key, value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
