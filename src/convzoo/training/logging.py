"""Progress output and the metrics writer (metrics.jsonl and the loggers of ``train.loggers``).

On a terminal or in a notebook a tqdm bar (``tqdm.auto``: a widget in Jupyter) shows images/s;
otherwise (CI, nohup, pipes) plain log lines are printed
every ``log_every`` steps and at least every 30 s, with the time left in the whole run. Loss
values are read from the device only at those points, so the training step itself never waits
on the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from convzoo import config as C
from convzoo.data.progress import interactive
from convzoo.log import format_seconds, log
from convzoo.trackers import open_trackers
from convzoo.training.rundir import MetricsLog


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
    each with the time left in the run when an :class:`Eta` is given.

    ``on_log(step, loss, images_per_second)`` is called at every ``log_every``-th step (on a
    terminal too) with the running loss this class reads anyway: the per-step values of the
    metrics writer, at no extra host sync."""

    def __init__(self, total: int, epoch: int, epochs: int, log_every: int, enabled: bool = True,
                 *, eta: Eta | None = None, log_seconds: float = 30.0,
                 clock: Any = time.perf_counter, first_step: int = 0,
                 on_log: Callable[[int, float, float], None] | None = None) -> None:
        """``first_step``: steps of this epoch done before (a run resumed inside the epoch):
        the time per step is measured on the steps this process runs."""
        self.total, self.epoch, self.epochs, self.log_every = total, epoch, epochs, log_every
        self.first_step = first_step
        self.enabled, self.eta, self.log_seconds, self.clock = enabled, eta, log_seconds, clock
        self.on_log = on_log
        self.tty = enabled and interactive()  # a terminal or a notebook: a bar
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
        every = step % self.log_every == 0
        due = every or now - self.last_log >= self.log_seconds
        if self.bar is not None:
            self.bar.update(1)
        if not due and not (self.bar is not None and step == self.total):
            return
        self.last_log = now
        ips = self.images / max(now - self.start, 1e-9)
        left = (self.eta.left(step - self.first_step, now - self.start)
                if self.eta is not None else None)
        loss = read_loss()
        if every and self.on_log is not None:
            self.on_log(step, loss, ips)
        if self.bar is not None:
            extra = {"run_eta": format_seconds(left)} if left is not None else {}
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}", **extra)
        else:
            log.info(f"epoch {self.epoch}/{self.epochs} step {step}/{self.total} "
                     f"loss {loss:.4f} {ips:.0f} img/s"
                     + (f" | run ETA {format_seconds(left)}" if left is not None else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsWriter:
    """The run's one metrics writer (rank 0): each epoch's row to metrics.jsonl
    (``rundir.MetricsLog``: appended, fsync'd) and everything to the loggers of
    ``train.loggers`` (``trackers.py``): per-step values, rows, the summary and figures at
    a stage's end. ``resume_step``: the optimizer step a continuing run resumes after (None: a
    new run)."""

    def __init__(self, run_dir: Path, cfg: C.Config, resume_epoch: int = 0,
                 resume_step: int | None = None) -> None:
        self.log = MetricsLog(run_dir, keep_through=resume_epoch)  # drops rows to be retrained
        self.trackers = open_trackers(cfg, run_dir, resume_step=resume_step)

    def step(self, step: int, values: dict[str, float]) -> None:
        """Values of optimizer step ``step`` (counted over the run): epoch, loss, lr, images/s."""
        self.trackers.log_step(step, values)

    def write(self, row: dict[str, Any]) -> None:
        self.log.append(row)
        self.trackers.log_epoch(int(row.get("step", row["epoch"])), row)

    def stage_end(self, step: int, figures: dict[str, Any], run_dir: Path) -> None:
        """A stage ended at ``step``: its summary (written, with curves.png) to the loggers."""
        self.trackers.log_stage_end(step, figures, run_dir)

    def close(self, status: str = "finished") -> None:
        """``status``: finished | failed | killed (how the trackers record the run's end)."""
        self.trackers.close(status)
