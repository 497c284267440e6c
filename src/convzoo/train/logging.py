"""Progress output and per-epoch metric files (metrics.jsonl, TensorBoard).

On a terminal a tqdm bar shows images/s; otherwise (CI, nohup, pipes) plain log lines are printed
every ``log_every`` steps and at least every 30 s, with the time left in the whole run. Loss
values are read from the device only at those points, so the training step itself never waits
on the host.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from convzoo.log import format_seconds, log
from convzoo.train.rundir import MetricsLog


class Eta:
    """Time left in a run: training steps left x the mean seconds per step so far, plus
    evaluations left x the mean seconds per evaluation so far.

    Before the first evaluation has been timed, evaluations count as nothing; the estimate
    then firms up after the first evaluated epoch.
    """

    def __init__(self, steps: int, evals: int = 0) -> None:
        self.steps_left, self.evals_left = steps, evals
        self.steps_done, self.step_seconds = 0, 0.0
        self.evals_done, self.eval_seconds = 0, 0.0

    def done(self, steps: int = 0, seconds: float = 0.0, evals: int = 0,
             eval_seconds: float = 0.0) -> None:
        """Record finished work: ``steps`` training steps in ``seconds``, ``evals`` evaluations
        in ``eval_seconds``."""
        self.steps_left -= steps
        self.steps_done += steps
        self.step_seconds += seconds
        self.evals_left -= evals
        self.evals_done += evals
        self.eval_seconds += eval_seconds

    def left(self, steps: int = 0, seconds: float = 0.0) -> float | None:
        """Seconds left, counting ``steps`` more steps that took ``seconds`` (the epoch now
        running); None until any step has been timed."""
        n, t = self.steps_done + steps, self.step_seconds + seconds
        if n == 0 or t <= 0:
            return None
        rest = max(self.steps_left - steps, 0) * t / n
        if self.evals_done:
            rest += max(self.evals_left, 0) * self.eval_seconds / self.evals_done
        return rest


class Progress:
    """Per-epoch progress: a tqdm bar on a TTY; otherwise a log line every ``log_every`` steps
    and at least every ``log_seconds`` (so a short or slow epoch off a terminal is not silent),
    each with the time left in the run when an :class:`Eta` is given."""

    def __init__(self, total: int, epoch: int, epochs: int, log_every: int, enabled: bool = True,
                 *, eta: Eta | None = None, log_seconds: float = 30.0,
                 clock: Any = time.perf_counter, first_step: int = 0) -> None:
        """``first_step``: steps of this epoch done before (a run resumed inside the epoch):
        the time per step is measured on the steps this process runs."""
        self.total, self.epoch, self.epochs, self.log_every = total, epoch, epochs, log_every
        self.first_step = first_step
        self.enabled, self.eta, self.log_seconds, self.clock = enabled, eta, log_seconds, clock
        self.tty = enabled and sys.stderr.isatty()
        self.bar = (
            tqdm(total=total, initial=first_step, desc=f"epoch {epoch}/{epochs}", unit="step",
                 leave=False, dynamic_ncols=True)
            if self.tty
            else None
        )
        self.start = self.last_log = clock()
        self.images = 0

    def update(self, step: int, images: int, read_loss: Any) -> None:
        """``read_loss`` is a callable returning the running loss (a host sync), called rarely."""
        self.images += images
        if not self.enabled:
            return
        now = self.clock()
        due = step % self.log_every == 0 or now - self.last_log >= self.log_seconds
        if self.bar is not None:
            self.bar.update(1)
        if not due and not (self.bar is not None and step == self.total):
            return
        self.last_log = now
        ips = self.images / max(now - self.start, 1e-9)
        left = (self.eta.left(step - self.first_step, now - self.start)
                if self.eta is not None else None)
        if self.bar is not None:
            extra = {"run_eta": format_seconds(left)} if left is not None else {}
            self.bar.set_postfix(loss=f"{read_loss():.4f}", img_s=f"{ips:.0f}", **extra)
        else:
            log.info(f"epoch {self.epoch}/{self.epochs} step {step}/{self.total} "
                     f"loss {read_loss():.4f} {ips:.0f} img/s"
                     + (f" | run ETA {format_seconds(left)}" if left is not None else ""))

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
