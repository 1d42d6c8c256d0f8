"""Progress events: what core code tells the terminal while it works.

Core functions take ``progress: Progress | None`` and call it with one of the frozen dataclasses
below; ``report.Renderer`` is their one reader (it shows every type). Core code never prints.
``run`` (when set) names the sweep run dir an event belongs to (declared once, on ``Tagged``;
the sweep's own ``RunStart`` / ``RunFailed`` always name it); ``in_run`` tags a callback's
events with it.

Counted stages (``synth``, ``preprocess``) keep their plain ``progress(done, total)`` callback
(worker pools call it); ``counter(progress, stage)`` turns it into ``Count`` events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tagged:
    """An event that a sweep run may own: ``run`` names its run dir (``in_run`` sets it)."""

    run: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Note(Tagged):
    """A line worth reading: a plan summary, a config note, a stage that starts."""

    text: str


@dataclass(frozen=True)
class Status(Tagged):
    """What a command is doing now (``evaluating test``, ``predicting val``)."""

    text: str


@dataclass(frozen=True)
class Count(Tagged):
    """``done`` of ``total`` items of a counted stage (synth studies, preprocessed files)."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Step(Tagged):
    """A training batch: ``batch`` of ``batches`` in ``epoch`` of ``epochs``; running mean loss."""

    epoch: int
    epochs: int
    batch: int
    batches: int | None
    loss: float


@dataclass(frozen=True)
class Epoch(Tagged):
    """An epoch ended; ``row`` is its history.csv row (loss, val metrics, lr, seconds)."""

    epoch: int
    epochs: int
    row: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalBatch(Tagged):
    """An evaluation batch (inference over a split): ``batch`` of ``batches``."""

    batch: int
    batches: int | None


@dataclass(frozen=True)
class RunStart:
    """A sweep run starts: ``index`` of ``total`` runs this invocation trains."""

    index: int
    total: int
    run: str
    resume: bool = False


@dataclass(frozen=True)
class RunFailed:
    """A sweep run raised a UserError (recorded in its run dir; the sweep goes on)."""

    index: int
    total: int
    run: str
    error: str


@dataclass(frozen=True)
class Eta:
    """Time left for ``runs_left`` runs, measured on finished runs (``basis`` says which)."""

    seconds: float
    runs_left: int
    basis: str


Event = Note | Status | Count | Step | Epoch | EvalBatch | RunStart | RunFailed | Eta
EVENT_TYPES = (Note, Status, Count, Step, Epoch, EvalBatch, RunStart, RunFailed, Eta)
Progress = Callable[[Event], None]


def in_run(progress: Progress | None, run: str) -> Progress | None:
    """A callback that tags every event with the sweep run ``run`` before passing it on."""
    if progress is None:
        return None

    def tagged(event: Event) -> None:
        has_run = any(f.name == "run" for f in dataclasses.fields(event))
        progress(dataclasses.replace(event, run=run) if has_run else event)

    return tagged


def counter(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    """``progress(done, total)`` for the counted stages, as ``Count(stage, done, total)`` events."""
    if progress is None:
        return None
    return lambda done, total: progress(Count(stage, int(done), int(total)))


def fmt_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m``, ``95`` -> ``1m35s`` (ETA events and sweep plans)."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"
