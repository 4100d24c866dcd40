"""Finished tasks' results, and the records that store running and finished tasks.

Records are plain JSON data; times in them are seconds since the epoch (UTC),
so that a task survives a restart whatever trio's clock reads then. Their
shapes are classes of :mod:`engine._shapes`, written and read by the one
converter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast, overload

import attrs
import orjson

from ._clock import Clock
from ._convert import encode_shape, structure_shape, unstructure_shape, unstructure_step
from ._definitions import Workflow
from ._errors import InvalidInputError
from ._errors import RestoreError as RestoreError
from ._machine import Answer, Outcome, StepEnd, StepRun, Task, step_end
from ._shapes import (
    CurrentStepRecord,
    FinishedRecord,
    StepRecord,
    StepResultView,
    StoredStep,
    TaskRecord,
)


@attrs.frozen
class StepResult:
    """How one step of a finished task went."""

    name: str
    started_at: datetime
    ended_at: datetime
    answered: Mapping[str, str] = attrs.field(hash=False)
    errors: tuple[str, ...]
    timed_out: bool
    #: Owed subscribers that went away before answering (the step stopped waiting).
    released: tuple[str, ...] = ()
    #: Whether the task was stopped or replaced while the step was under way.
    stopped: bool = False

    @property
    def duration(self) -> float:
        """Seconds the step took."""
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def ended(self) -> StepEnd:
        """How the step ended: done, error, timed out, released or stopped."""
        return step_end(
            stopped=self.stopped,
            timed_out=self.timed_out,
            errors=bool(self.errors),
            released=bool(self.released),
        )


class _StepResults(Sequence[StepResult]):
    """A task's step results, worked out on first use.

    Most results are waited for and never asked for their steps; building
    them (times as datetimes, one record per step) is then saved.
    """

    def __init__(self, task: Task, clock: Clock) -> None:
        self._source: tuple[Task, Clock] | None = (task, clock)
        self._steps: tuple[StepResult, ...] = ()

    def _resolve(self) -> tuple[StepResult, ...]:
        if self._source is not None:
            task, clock = self._source
            self._steps = tuple(
                StepResult(
                    s.step.name,
                    clock.to_wall(s.entered_at),
                    clock.to_wall(s.ended_at if s.ended_at is not None else s.entered_at),
                    # str() of a str enum is its value, and much cheaper than .value
                    {sid: str(answer) for sid, answer in s.answers.items()},
                    tuple(s.errors),
                    s.timed_out,
                    tuple(s.released),
                    s.stopped,
                )
                for s in task.history
            )
            self._source = None
        return self._steps

    @overload
    def __getitem__(self, index: int) -> StepResult: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[StepResult, ...]: ...
    def __getitem__(self, index: int | slice) -> StepResult | tuple[StepResult, ...]:
        return self._resolve()[index]

    def __len__(self) -> int:
        return len(self._resolve())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _StepResults | tuple):
            return self._resolve() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._resolve())

    def __repr__(self) -> str:
        return repr(self._resolve())


def steps_from_view(steps: Sequence[StepResultView]) -> tuple[StepResult, ...]:
    """Return the step results of a task's view (``GET /task/{id}``)."""
    return tuple(
        StepResult(
            s.name,
            s.started_at,
            s.ended_at,
            dict(s.answered),
            tuple(s.errors),
            s.timed_out,
            tuple(s.released),
            s.ended is StepEnd.STOPPED,
        )
        for s in steps
    )


def step_results(task: Task, clock: Clock) -> tuple[StepResult, ...]:
    """Return the results of the steps a task has left so far (not the one it is in)."""
    left = sum(1 for run in task.history if run.ended_at is not None)
    return _StepResults(task, clock)[:left]


@attrs.frozen
class TaskResult:
    """A finished task: its outcome and what its steps did."""

    id: str
    workflow: str
    outcome: Outcome
    error: str | None
    errors: tuple[str, ...]
    started_at: datetime
    ended_at: datetime
    steps: Sequence[StepResult]

    @property
    def duration(self) -> float:
        """Seconds the task took."""
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def has_errors(self) -> bool:
        """Whether any step met an error, timed out or was released from an owed answer.

        A task can end ``done`` with errors (its steps continue on error): views
        mark it apart from a clean ``done``.
        """
        return bool(self.errors) or any(step.released for step in self.steps)

    def to_record(self) -> dict[str, Any]:
        """Return the result as plain JSON data (as :func:`finished_record` writes it)."""
        return cast("dict[str, Any]", unstructure_shape(self.to_shape()))

    def to_shape(self) -> FinishedRecord:
        """Return the result's store record."""
        return FinishedRecord(
            id=self.id,
            workflow=self.workflow,
            outcome=self.outcome,
            error=self.error,
            errors=self.errors,
            started_at=self.started_at.timestamp(),
            ended_at=self.ended_at.timestamp(),
            has_errors=self.has_errors,
            steps=[
                StepRecord(
                    name=s.name,
                    index=None,
                    entered_at=s.started_at.timestamp(),
                    answers=s.answered,
                    errors=s.errors,
                    timed_out=s.timed_out,
                    released=s.released,
                    stopped=s.stopped,
                    ended_at=s.ended_at.timestamp(),
                )
                for s in self.steps
            ],
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TaskResult:
        """Read a result written by :meth:`to_record` or :func:`finished_record`.

        Raises:
            RestoreError: the record is not a finished task's.
        """
        try:
            shape = structure_shape(record, FinishedRecord)
        except InvalidInputError as error:
            raise RestoreError(f"unreadable finished task record: {error}") from None
        return cls(
            shape.id,
            shape.workflow,
            shape.outcome,
            shape.error,
            tuple(shape.errors),
            _wall(shape.started_at),
            _wall(shape.ended_at),
            tuple(
                StepResult(
                    s.name,
                    _wall(s.entered_at),
                    _wall(s.ended_at if s.ended_at is not None else s.entered_at),
                    dict(s.answers),
                    tuple(s.errors),
                    s.timed_out,
                    tuple(s.released),
                    s.stopped,
                )
                for s in cast("Sequence[StepRecord]", shape.steps)
            ),
        )

    @classmethod
    def of(cls, task: Task, clock: Clock) -> TaskResult:
        """Return the result of an ended task."""
        assert task.ended_at is not None
        return cls(
            task.id,
            task.workflow.id,
            task.outcome or Outcome.FAILED,
            task.error,
            tuple(task.errors),
            clock.to_wall(task.created_at),
            clock.to_wall(task.ended_at),
            _StepResults(task, clock),
        )


def _wall(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _step_records(
    task: Task, clock: Clock, ended: list[orjson.Fragment] | None
) -> list[StoredStep]:
    to_epoch = clock.to_epoch
    encoded = ended if ended is not None else []
    steps: list[StoredStep] = list(encoded)
    for index in range(len(encoded), len(task.history)):
        run = task.history[index]
        if run.ended_at is not None:
            # an ended step is history: what it needs to wait on no longer matters
            # (positional arguments, in the order of StepRecord's fields: see _shapes)
            step: StepRecord = StepRecord(
                run.step.name,
                run.index,
                to_epoch(run.entered_at),
                run.answers,  # orjson writes str enums as their value
                run.errors,
                run.timed_out,
                run.released,
                run.stopped,
                to_epoch(run.ended_at),
            )
            if index == len(encoded):
                fragment = orjson.Fragment(encode_shape(step))
                encoded.append(fragment)
                steps.append(fragment)
                continue
        else:
            current = CurrentStepRecord(
                run.step.name,
                run.index,
                to_epoch(run.entered_at),
                run.answers,
                run.errors,
                run.timed_out,
                run.released,
                run.stopped,
                None,  # ended_at
                run.began,
                None if run.deadline is None else to_epoch(run.deadline),
                sorted(run.waiting_for),
                sorted(run.owed_at_start),
                run.finished,
            )
            steps.append(unstructure_step(current))
            continue
        steps.append(step)
    return steps


def task_record(task: Task, clock: Clock, ended: list[orjson.Fragment] | None = None) -> bytes:
    """Return a running task's state as JSON.

    ``ended`` caches the encoded steps that have ended (they never change
    again), so that writing a task after each step does not re-encode its
    whole history; pass the same list for every write of one task.
    """
    return encode_shape(
        TaskRecord(
            task.id,
            task.workflow.id,
            clock.to_epoch(task.created_at),
            task.state,
            _step_records(task, clock, ended),
        )
    )


def queued_record(task_id: str, workflow_id: str, created_at: float, state: str) -> bytes:
    """Return the record of a run queued behind another: no steps yet, in ``state``.

    ``created_at`` is in seconds since the epoch.
    """
    return encode_shape(TaskRecord(task_id, workflow_id, created_at, state, ()))


def finished_record(task: Task, clock: Clock, ended: list[orjson.Fragment] | None = None) -> bytes:
    """Return an ended task's result as JSON (read back by :meth:`TaskResult.from_record`).

    ``ended`` is the cache :func:`task_record` filled, so the steps are not encoded again.
    """
    assert task.ended_at is not None
    return encode_shape(
        FinishedRecord(
            id=task.id,
            workflow=task.workflow.id,
            outcome=task.outcome or Outcome.FAILED,
            error=task.error,
            errors=task.errors,
            started_at=clock.to_epoch(task.created_at),
            ended_at=clock.to_epoch(task.ended_at),
            has_errors=task_has_errors(task),
            steps=_step_records(task, clock, ended),
        )
    )


def task_has_errors(task: Task) -> bool:
    """Tell whether a task's steps met errors or were released (see TaskResult.has_errors)."""
    return any(run.errors or run.released for run in task.history)


def restore_task(record: Mapping[str, Any], workflow: Workflow, clock: Clock) -> Task:
    """Rebuild a running task from :func:`task_record` data.

    Raises:
        RestoreError: the record is unreadable, or the workflow no longer has
            the task's steps.
    """
    try:
        shape = structure_shape(record, TaskRecord)
    except InvalidInputError as error:
        raise RestoreError(f"unreadable task record: {error}") from None

    def trio_time(seconds: float | None) -> float | None:
        return None if seconds is None else clock.to_trio(_wall(seconds))

    task = Task(shape.id, workflow, created_at=clock.to_trio(_wall(shape.created_at)))
    for entry in cast("Sequence[CurrentStepRecord]", shape.steps):
        try:
            step = workflow.step(entry.name)
        except KeyError:
            raise RestoreError(
                f"workflow {workflow.id!r} no longer has the step {entry.name!r}"
            ) from None
        if entry.index is None:
            raise RestoreError(f"task record: step {entry.name!r} has no index")
        run = StepRun(step, entry.index, entered_at=clock.to_trio(_wall(entry.entered_at)))
        run.answers = {sid: Answer(answer) for sid, answer in entry.answers.items()}
        run.errors = list(entry.errors)
        run.timed_out = entry.timed_out
        run.released = tuple(entry.released)
        run.stopped = entry.stopped
        run.ended_at = trio_time(entry.ended_at)
        # an ended step is stored without its waits (see _step_records)
        run.began = entry.began
        run.deadline = trio_time(entry.deadline)
        run.waiting_for = set(entry.waiting_for)
        run.owed_at_start = frozenset(entry.owed_at_start)
        run.finished = entry.finished
        task.history.append(run)
    state = shape.state
    if state not in ("start", *(s.name for s in workflow.steps)):
        raise RestoreError(f"workflow {workflow.id!r} no longer has the step {state!r}")
    task.state = state
    if task.history and task.history[-1].step.name == state:
        task.step = task.history[-1]
    return task
