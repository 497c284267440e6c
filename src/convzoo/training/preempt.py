"""Preemption-safe training: stop requests, the step every rank stops at, mid-epoch positions.

**Signals.** SIGTERM and SIGUSR1 are what clusters send before they take a job's machines away
(SLURM ``--signal``/``scancel``/time limit, Kubernetes eviction, torchrun's agent forwarding its
own SIGTERM to its workers); SIGINT is a user's Ctrl-C. While the loop trains
(:class:`StopSignals`), any of them only *requests* a stop: every rank finishes the step it is
in, the run writes a checkpoint at that step (``last.pt``, atomically, through ``rundir``) and
every rank exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL`` of sysexits.h: "try again
later"), or 130 after a Ctrl-C, as a shell expects. A second signal stops at once (the run
keeps its last checkpoint). Outside the loop (data loading, model
building: nothing trained yet to lose) rank 0's ``runlock.RunLock`` turns the signal into an
exit at once, as before.

**One step for all ranks** (:class:`StepControl`). A signal may reach one rank only, or the
ranks in different steps. After every step each rank starts a non-blocking all-reduce (MAX) of
its request flags (the signal number, and rank 0's "minutes since the last checkpoint are up")
on a gloo group of its own (CPU tensors: no device sync, and no interleaving with DDP's
collectives), and waits for the one it started after the previous step. So every rank decides
on the same reduced flags after the same step: a request seen during step k stops every rank
after step k + 1 (one step later; in one process, right after step k). The cost is one 8-byte
gloo all-reduce per step, overlapped with the next step (``benchmarks/stop_agreement.py``
measures it). At each epoch end the flags are reduced once more, blocking, so a request made
during evaluation stops the run at that epoch's checkpoint. ``train.checkpoint_every_steps``
needs no agreement (every rank counts the same steps).

**Mid-epoch positions** (:class:`Position`). A checkpoint taken inside epoch e records the
position (``epoch`` = e - 1 epochs done, ``step`` = steps of epoch e done) and, per rank, what
the rest of the epoch needs to continue bit-identically: the global RNG state (dropout, drop
path) and the epoch's running loss / accuracy sums. Everything else is already in the
checkpoint (weights, optimizer, scaler, lookahead, EMA, schedule, plateau and early-stop
state), and the data of step k is a pure function of (seed, epoch, rank, k)
(``data/sampler.py``).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from convzoo import saved as ckpt_io
from convzoo.errors import ConvzooError

log = logging.getLogger("convzoo")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; run again to continue
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell expects of a program stopped by Ctrl-C
# SIGINT (Ctrl-C) is a stop request like the cluster signals: the first one keeps the work of
# the epoch in progress (a checkpoint at the current step), a second one stops at once.
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by ``signum`` after its checkpoint: 130 for Ctrl-C (as
    a shell expects), 75 for a scheduler's signal (EX_TEMPFAIL: run again to continue)."""
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


class Preempted(Exception):
    """The run stopped on request after writing a checkpoint at ``epoch``/``step``."""

    def __init__(self, signum: int, run_dir: Any, epoch: int, step: int, steps: int) -> None:
        self.signum, self.run_dir = signum, run_dir
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "a stop request"
        where = (f"in epoch {epoch} after step {step}/{steps}" if 0 < step < steps
                 else f"after epoch {epoch}")
        self.exit_status = exit_status(signum)
        super().__init__(f"stopped by {name} {where}; checkpoint written to {run_dir}/last.pt; "
                         f"`convzoo train --resume {run_dir}` (or --resume auto) continues it "
                         f"exactly (exit status {self.exit_status})")


class StopSignals:
    """SIGTERM and SIGUSR1 as stop requests while the training loop runs (a context manager;
    main thread only). ``requested``: the first signal's number, or 0."""

    def __init__(self) -> None:
        self.requested = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # asked twice: stop now, the last checkpoint stays
            log.warning(f"convzoo: {signal.Signals(signum).name} again: stopping at once; the "
                        "run directory keeps its last checkpoint")
            raise SystemExit(128 + signum)
        self.requested = signum
        log.warning(f"convzoo: {signal.Signals(signum).name}: finishing this step, then writing "
                    "a checkpoint and stopping")


@dataclass
class Decision:
    """What every rank does after a step: write a mid-epoch checkpoint, and/or stop."""

    save: bool = False
    stop: int = 0  # the signal number that asked for it (0: go on)

    def __or__(self, other: Decision) -> Decision:
        return Decision(self.save or other.save, self.stop or other.stop)


class StepControl:
    """Decides after each step, identically on every rank, whether to checkpoint or stop (see
    the module docstring). ``every_steps`` / ``every_minutes``: ``train.checkpoint_every_*``
    of the stage being trained (0 = off)."""

    def __init__(self, signals: StopSignals, world_size: int) -> None:
        self.signals, self.world_size = signals, world_size
        self.every_steps, self.every_seconds = 0, 0.0
        self.last_save = time.monotonic()
        self.stop = 0  # set once a stop has been decided
        self.group = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        if world_size > 1:
            self.group = torch.distributed.new_group(backend="gloo")

    def configure(self, every_steps: int, every_minutes: float) -> None:
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60.0

    def _local(self) -> torch.Tensor:
        """This rank's flags: (signal number, time-based checkpoint due). Only rank 0's clock
        counts, so the ranks never disagree on time."""
        due = (self.every_seconds > 0 and time.monotonic() - self.last_save >= self.every_seconds
               and (self.group is None or torch.distributed.get_rank() == 0))
        return torch.tensor([self.signals.requested, int(due)], dtype=torch.int64)

    def _wait(self) -> Decision:
        if self._pending is None:
            return Decision()
        work, flags = self._pending
        self._pending = None
        work.wait()
        return Decision(bool(flags[1]), int(flags[0]))

    def after_step(self, global_step: int) -> Decision:
        """The decision after the step numbered ``global_step`` (counted over the run)."""
        if self.group is None:
            flags = self._local()
            decision = Decision(bool(flags[1]), int(flags[0]))
        else:
            decision = self._wait()
            if decision.save:
                self.last_save = time.monotonic()  # so the flags sent now do not ask again
            flags = self._local()
            work = torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX,
                                                group=self.group, async_op=True)
            self._pending = (work, flags)
        if self.every_steps and global_step % self.every_steps == 0:
            decision.save = True
        self.stop = self.stop or decision.stop
        return decision

    def epoch_end(self) -> Decision:
        """The flags still in flight and those raised since (during evaluation), all ranks."""
        decision = self._wait()
        flags = self._local()
        if self.group is not None:
            torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX, group=self.group)
        decision = decision | Decision(bool(flags[1]), int(flags[0]))
        self.stop = self.stop or decision.stop
        return decision

    def saved(self) -> None:
        """A checkpoint was written now: the minutes count from here."""
        self.last_save = time.monotonic()


# ----------------------------------------------------------------------------- positions


@dataclass
class Position:
    """Where inside an epoch a checkpoint was taken, as this rank continues from it."""

    epoch: int  # the (1-based) epoch being trained
    step: int  # its steps done
    loss_sum: float  # this rank's running sums of the epoch so far
    correct: int
    mixed: int  # images whose targets mixup/cutmix mixed
    count: int
    rng: dict[str, Any] | None  # this rank's global RNG state (None: reseed, see below)
    seconds: float  # training seconds of the epoch so far

    def apply_rng(self, reseed: int) -> None:
        if self.rng is not None:
            ckpt_io.set_rng_state(self.rng)
        else:
            torch.manual_seed(reseed)


def rank_state(loss_sum: torch.Tensor, correct: torch.Tensor, mixed: torch.Tensor,
               count: int) -> dict[str, Any]:
    """What one rank contributes to a mid-epoch checkpoint (one host sync)."""
    return {"loss_sum": float(loss_sum.item()), "correct": int(correct.item()),
            "mixed": int(mixed.item()), "count": int(count), "rng": ckpt_io.rng_state()}


def position_fields(step: int, steps: int, ranks: list[dict[str, Any]],
                    seconds: float) -> dict[str, Any]:
    """The checkpoint fields of a mid-epoch position (``ranks``: every rank's
    :func:`rank_state`, rank order)."""
    return {"step": step, "steps_per_epoch": steps, "epoch_ranks": ranks,
            "epoch_seconds": seconds}


def finite(ranks: list[dict[str, Any]]) -> bool:
    return all(math.isfinite(r["loss_sum"]) for r in ranks)


def position_from(ckpt: dict[str, Any] | None, rank: int, world_size: int,
                  steps: int) -> Position | None:
    """This rank's position in a mid-epoch checkpoint, or None for an epoch-end one.

    The same number of processes continues exactly. Another number continues from the same
    global batch (the same images: ``data/sampler.py``) with the epoch's sums so far on rank 0
    and each rank's RNG reseeded (its draws are its own anyway), so not bit for bit; a changed
    number of steps per epoch (other data or batch size) cannot continue mid-epoch.
    """
    if ckpt is None or not ckpt.get("step"):
        return None
    step, saved = int(ckpt["step"]), int(ckpt["steps_per_epoch"])
    if saved != steps:
        raise ConvzooError(f"last.pt was written in epoch {ckpt['epoch'] + 1} after step "
                           f"{step}/{saved}, but that epoch now has {steps} steps (other data or "
                           "train.batch_size): a mid-epoch checkpoint continues the same batches")
    ranks = ckpt["epoch_ranks"]
    epoch, seconds = int(ckpt["epoch"]) + 1, float(ckpt.get("epoch_seconds", 0.0))
    if len(ranks) == world_size:
        r = ranks[rank]
        return Position(epoch, step, r["loss_sum"], r["correct"], r["mixed"], r["count"],
                        r["rng"], seconds)
    log.warning(f"continuing epoch {epoch} from step {step} with {world_size} processes (the "
                f"checkpoint had {len(ranks)}): the same batches, other random draws")
    if rank == 0:
        return Position(epoch, step, math.fsum(r["loss_sum"] for r in ranks),
                        sum(r["correct"] for r in ranks), sum(r["mixed"] for r in ranks),
                        sum(r["count"] for r in ranks), None, seconds)
    return Position(epoch, step, 0.0, 0, 0, 0, None, seconds)
