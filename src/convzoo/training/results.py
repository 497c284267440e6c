"""What ``convzoo.train`` returns (:class:`TrainResult`), how its callbacks reach the loop (the
loop's one hook, :class:`Hook`: :func:`callback_hook`), and how a model passed as an object is
named (:func:`model_override`).

    class StopAt:
        def on_epoch_end(self, info):            # info: Event (epoch, step, metrics, run_dir)
            return info.epoch >= 2               # True ends the run: a finished run, resumable

    result = convzoo.train("quickstart", callbacks=[StopAt()])
    result.summary["top1"], pandas.DataFrame(result.history), convzoo.load(result)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from convzoo.errors import ConvzooError
from convzoo.models.registry import custom_name, registered_name, supplied
from convzoo.report import read_metrics, read_summary

EVENTS = ("on_step_end", "on_epoch_end", "on_eval_end")


@dataclass
class Event:
    """What ``fit``'s hook is told: ``name`` (``step_end`` after an optimizer step,
    ``eval_end`` after an epoch's evaluation, ``epoch_end`` after every epoch, evaluated or
    not, before its files are written), the epoch (1-based), the run's optimizer steps so far,
    the figures (the epoch's metrics row; for a step, its ``loss`` (running mean of the epoch)
    and ``lr``) and the run directory."""

    name: str
    epoch: int
    step: int
    metrics: dict[str, Any]
    run_dir: Path


@dataclass
class Hook:
    """``fit``'s one hook: ``call(event)`` on every rank; True ends the whole run, as early
    stopping ends a stage: at that epoch's end (a step's True lets the epoch finish), which is
    then evaluated, and the run is an ordinary finished one (summary, last.pt), resumable with
    more epochs. Rank 0's answer counts. ``steps``: also after every optimizer step (costs a
    host sync per step, for the running loss). Its users: ``convzoo.sweep`` (each evaluated
    epoch to the trial, pruned) and ``convzoo.train``'s callbacks."""

    call: Callable[[Event], bool]
    steps: bool = False



@dataclass(eq=False)
class TrainResult:
    """A finished (or stopped) run: its directory, ``summary.json`` and per-epoch history.

    It stands for the run directory where a path was used before: ``os.fspath(result)``,
    ``str(result)``, ``result / "last.pt"``, ``result == path`` and ``convzoo.load(result)``
    work as they did with the returned ``Path``."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json ({}: none yet)
    # metrics.jsonl: one dict per epoch, in order (pandas.DataFrame(result.history))
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: Path) -> TrainResult:
        metrics = run_dir / "metrics.jsonl"
        return cls(run_dir, read_summary(run_dir),
                   read_metrics(run_dir) if metrics.is_file() else [])

    def __fspath__(self) -> str:
        return os.fspath(self.run_dir)

    def __str__(self) -> str:
        return str(self.run_dir)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self.run_dir / other

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TrainResult):
            return self.run_dir == other.run_dir
        if isinstance(other, str | os.PathLike):
            return self.run_dir == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.run_dir)

    def __repr__(self) -> str:
        top1 = self.summary.get("top1")
        figure = f", top1 {top1:.2f}%" if isinstance(top1, int | float) else ""
        return f"TrainResult({self.run_dir}, {len(self.history)} epochs{figure})"


def callback_hook(callbacks: Sequence[Any]) -> Hook | None:
    """The loop's hook calling each callback's ``on_step_end`` / ``on_epoch_end`` /
    ``on_eval_end`` (those it has) with the event; the run ends at that epoch's end when any of
    them returns True. None without callbacks."""
    callbacks = list(callbacks)
    for cb in callbacks:
        if not any(callable(getattr(cb, name, None)) for name in EVENTS):
            raise ConvzooError(f"callbacks: {type(cb).__name__} has none of the methods "
                               f"{', '.join(EVENTS)}")
    if not callbacks:
        return None

    def call(event: Event) -> bool:
        stop = False
        for cb in callbacks:
            method = getattr(cb, f"on_{event.name}", None)
            if callable(method) and method(event) is True:
                stop = True
        return stop

    return Hook(call, steps=any(callable(getattr(cb, "on_step_end", None)) for cb in callbacks))


def is_model_object(value: Any) -> bool:
    """``convzoo.train(model=...)`` given a module or a factory rather than a name or section."""
    return isinstance(value, nn.Module) or (callable(value) and not isinstance(value, str | dict))


@contextlib.contextmanager
def model_override(model: Any, resume: bool = False) -> Iterator[str]:
    """The model name a run records for ``model`` (a module or a factory) and, for the block,
    the registry resolving it: a registered factory is its name; anything else is
    ``custom:<module>.<class>``, built from the object (``registry.supplied``; for a `resume`,
    whatever ``custom:`` name the run recorded, as ``convzoo.load`` takes it: the weights must
    fit the object)."""
    name = registered_name(model) or custom_name(model)
    if not name.startswith("custom:"):
        yield name
        return
    with supplied("custom:" if resume else name, model):
        yield name


def check_same_model(name: str, run_name: str, model: Any) -> None:
    """A resume with ``model=``: the object must be the run's model (a registered name), or the
    run's a module passed as an object."""
    if run_name != name and not run_name.startswith("custom:"):
        raise ConvzooError(f"model={getattr(model, '__name__', type(model).__name__)}: the "
                           f"run's model is {run_name}, this object is {name}; resume a run "
                           "with the model it trained")
