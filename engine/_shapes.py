"""The JSON shapes of a task: the store's records and the API's views, one class each.

Each class names the keys of one JSON object, in the order they are written;
the converter (:mod:`engine._convert`) turns them into plain data and back,
so a key is spelled once. Store records hold times as seconds since the
epoch; views hold them as datetimes, written in ISO 8601.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import orjson

from ._machine import Outcome, StepEnd
from ._messages import Progress

# ---------------------------------------------------------------- store records

# A task's record and its steps' are built at every step of every task and
# dropped once written: they are attrs.define, not frozen, and built with
# positional arguments, because a frozen class or a keyword call costs half a
# microsecond more each (nothing keeps or changes one).


@attrs.define
class StepRecord:
    """A step as the store keeps it once it ended (and the common part of any step)."""

    name: str
    #: The step's place in its workflow; None in records of results made without a
    #: task (records of older versions lack it then).
    index: int | None
    entered_at: float
    answers: Mapping[str, str]
    errors: Sequence[str]
    timed_out: bool
    #: Not in records of older versions.
    released: Sequence[str] = ()
    stopped: bool = False
    ended_at: float | None = None


@attrs.define
class CurrentStepRecord(StepRecord):
    """The step a task is in: whether its action went out, whom it waits for, until when.

    An ended step is stored without these; read back, it gets the defaults.
    """

    began: bool = True
    deadline: float | None = None
    waiting_for: Sequence[str] = ()
    owed_at_start: Sequence[str] = ()
    finished: bool = True


#: A step in a record's list: a shape, an ended step already encoded, or the
#: step a task is in already converted to plain data.
StoredStep = StepRecord | orjson.Fragment | dict[str, Any]


@attrs.define
class TaskRecord:
    """A running task as the store keeps it, to resume it after a restart."""

    id: str
    workflow: str
    created_at: float
    state: str
    steps: Sequence[StoredStep]


@attrs.define(kw_only=True)
class FinishedRecord:
    """A finished task's result as the store's history keeps it."""

    id: str
    workflow: str
    outcome: Outcome
    error: str | None
    errors: Sequence[str]
    started_at: float
    ended_at: float
    has_errors: bool = False
    steps: Sequence[StoredStep]


# ---------------------------------------------------------------- views


@attrs.frozen(kw_only=True)
class StepResultView:
    """A step that ended, as ``GET /task/{id}`` shows it."""

    name: str
    started_at: datetime
    ended_at: datetime
    duration: float
    answered: Mapping[str, str]
    errors: Sequence[str]
    timed_out: bool
    released: Sequence[str] = ()
    ended: StepEnd = StepEnd.DONE


@attrs.frozen(kw_only=True)
class StepInfoView:
    """A running task's current step, as ``GET /task/{id}`` shows it."""

    name: str
    action: str
    message_type: str
    started_at: datetime
    deadline: datetime | None = None
    waiting_for: Sequence[str]
    answered: Mapping[str, str]
    progress: Mapping[str, Progress] = attrs.field(factory=dict)
    errors: Sequence[str]
    last_heard: Mapping[str, datetime] = attrs.field(factory=dict)
    stalled: bool = False
    released: Sequence[str] = ()


@attrs.frozen(kw_only=True)
class TaskInfoView:
    """A running task, as ``GET /task/{id}`` and ``GET /tasks`` show it."""

    id: str
    workflow: str
    workflow_name: str | None = None
    running: bool = True
    state: str
    started_at: datetime
    step: StepInfoView | None = None
    steps: Sequence[StepResultView] = ()


@attrs.frozen(kw_only=True)
class TaskResultView:
    """A finished task, as ``GET /task/{id}`` and ``GET /tasks`` show it."""

    id: str
    workflow: str
    running: bool = False
    state: str = "end"
    outcome: Outcome
    has_errors: bool = False
    error: str | None = None
    errors: Sequence[str] = ()
    started_at: datetime
    ended_at: datetime
    duration: float = 0.0
    steps: Sequence[StepResultView]


#: Every shape, structured leniently: a newer writer's extra keys are ignored.
SHAPES: tuple[type, ...] = (
    StepRecord,
    CurrentStepRecord,
    TaskRecord,
    FinishedRecord,
    StepResultView,
    StepInfoView,
    TaskInfoView,
    TaskResultView,
)
