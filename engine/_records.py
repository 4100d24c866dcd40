"""Finished tasks' results, and the records that store running and finished tasks.

Records are plain JSON data; times in them are seconds since the epoch (UTC),
so that a task survives a restart whatever trio's clock reads then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, overload

import attrs
import orjson

from ._clock import Clock
from ._definitions import Workflow
from ._errors import RestoreError as RestoreError
from ._machine import Answer, Outcome, StepEnd, StepRun, Task, step_end


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
        """Return the result as plain JSON data."""
        return {
            "id": self.id,
            "workflow": self.workflow,
            "outcome": self.outcome.value,
            "error": self.error,
            "errors": list(self.errors),
            "started_at": self.started_at.timestamp(),
            "ended_at": self.ended_at.timestamp(),
            "has_errors": self.has_errors,
            "steps": [
                {
                    "name": s.name,
                    "entered_at": s.started_at.timestamp(),
                    "ended_at": s.ended_at.timestamp(),
                    "answers": dict(s.answered),
                    "errors": list(s.errors),
                    "timed_out": s.timed_out,
                    "released": list(s.released),
                    "stopped": s.stopped,
                }
                for s in self.steps
            ],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TaskResult:
        """Read a result written by :meth:`to_record` or :func:`finished_record`."""
        return cls(
            record["id"],
            record["workflow"],
            Outcome(record["outcome"]),
            record["error"],
            tuple(record["errors"]),
            _wall(record["started_at"]),
            _wall(record["ended_at"]),
            tuple(
                StepResult(
                    s["name"],
                    _wall(s["entered_at"]),
                    _wall(s["ended_at"] if s["ended_at"] is not None else s["entered_at"]),
                    s["answers"],
                    tuple(s["errors"]),
                    s["timed_out"],
                    tuple(s.get("released", ())),  # not in records of older versions
                    s.get("stopped", False),
                )
                for s in record["steps"]
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
) -> list[orjson.Fragment | dict[str, Any]]:
    def seconds(moment: float | None) -> float | None:
        return None if moment is None else clock.to_epoch(moment)

    encoded = ended if ended is not None else []
    steps: list[orjson.Fragment | dict[str, Any]] = list(encoded)
    for index in range(len(encoded), len(task.history)):
        run = task.history[index]
        step: dict[str, Any] = {
            "name": run.step.name,
            "index": run.index,
            "entered_at": seconds(run.entered_at),
            "answers": dict(run.answers),  # orjson writes str enums as their value
            "errors": run.errors,
            "timed_out": run.timed_out,
            "released": run.released,
            "stopped": run.stopped,
            "ended_at": seconds(run.ended_at),
        }
        if run.ended_at is not None:
            # an ended step is history: what it needs to wait on no longer matters
            if index == len(encoded):
                encoded.append(orjson.Fragment(orjson.dumps(step)))
        else:
            step["began"] = run.began
            step["deadline"] = seconds(run.deadline)
            step["waiting_for"] = sorted(run.waiting_for)
            step["owed_at_start"] = sorted(run.owed_at_start)
            step["finished"] = run.finished
        steps.append(step)
    return steps


def task_record(task: Task, clock: Clock, ended: list[orjson.Fragment] | None = None) -> bytes:
    """Return a running task's state as JSON.

    ``ended`` caches the encoded steps that have ended (they never change
    again), so that writing a task after each step does not re-encode its
    whole history; pass the same list for every write of one task.
    """
    return orjson.dumps(
        {
            "id": task.id,
            "workflow": task.workflow.id,
            "created_at": clock.to_epoch(task.created_at),
            "state": task.state,
            "steps": _step_records(task, clock, ended),
        }
    )


def finished_record(task: Task, clock: Clock, ended: list[orjson.Fragment] | None = None) -> bytes:
    """Return an ended task's result as JSON (read back by :meth:`TaskResult.from_record`).

    ``ended`` is the cache :func:`task_record` filled, so the steps are not encoded again.
    """
    assert task.ended_at is not None
    return orjson.dumps(
        {
            "id": task.id,
            "workflow": task.workflow.id,
            "outcome": (task.outcome or Outcome.FAILED).value,
            "error": task.error,
            "errors": task.errors,
            "started_at": clock.to_epoch(task.created_at),
            "ended_at": clock.to_epoch(task.ended_at),
            "has_errors": task_has_errors(task),
            "steps": _step_records(task, clock, ended),
        }
    )


def task_has_errors(task: Task) -> bool:
    """Tell whether a task's steps met errors or were released (see TaskResult.has_errors)."""
    return any(run.errors or run.released for run in task.history)


def restore_task(record: Mapping[str, Any], workflow: Workflow, clock: Clock) -> Task:
    """Rebuild a running task from :func:`task_record` data.

    Raises:
        RestoreError: the workflow no longer has the task's steps.
    """

    def trio_time(seconds: float | None) -> float | None:
        return None if seconds is None else clock.to_trio(_wall(seconds))

    task = Task(record["id"], workflow, created_at=clock.to_trio(_wall(record["created_at"])))
    for entry in record["steps"]:
        try:
            step = workflow.step(entry["name"])
        except KeyError:
            raise RestoreError(
                f"workflow {workflow.id!r} no longer has the step {entry['name']!r}"
            ) from None
        run = StepRun(step, entry["index"], entered_at=clock.to_trio(_wall(entry["entered_at"])))
        run.answers = {sid: Answer(answer) for sid, answer in entry["answers"].items()}
        run.errors = list(entry["errors"])
        run.timed_out = entry["timed_out"]
        run.released = tuple(entry.get("released", ()))
        run.stopped = entry.get("stopped", False)
        run.ended_at = trio_time(entry["ended_at"])
        # an ended step is stored without its waits (see _step_records)
        run.began = entry.get("began", True)
        run.deadline = trio_time(entry.get("deadline"))
        run.waiting_for = set(entry.get("waiting_for", ()))
        run.owed_at_start = frozenset(entry.get("owed_at_start", ()))
        run.finished = entry.get("finished", True)
        task.history.append(run)
    state = record["state"]
    if state not in ("start", *(s.name for s in workflow.steps)):
        raise RestoreError(f"workflow {workflow.id!r} no longer has the step {state!r}")
    task.state = state
    if task.history and task.history[-1].step.name == state:
        task.step = task.history[-1]
    return task
