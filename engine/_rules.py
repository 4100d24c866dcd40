"""The rules the core applies, as functions of what they decide from.

Each is a plain function with no state and no I/O: whether a run may start
beside the active ones (surpass), when a step counts as stalled, and what the
engine's lifecycle events and a finished task's records hold. The core
(:mod:`engine._core`) calls them; tests call them directly.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson

from ._clock import Clock
from ._definitions import Surpass
from ._machine import END, Outcome, StepRun, Task
from ._messages import Event, Progress, ProgressLeaf, ProgressTree
from ._records import TaskResult, finished_record, queued_record
from ._runs import Run
from ._store import FinishTask, SaveTask

logger = logging.getLogger("engine._engine")

TASK_STARTED = "task_started"
PROGRESS = "progress"
TASK_END = "task_end"
ERROR = "error"

#: The stored state of a run queued behind an active one (surpass ``wait``).
QUEUED = "queued"
#: The stored state of a run the shared store admitted (replicas), before its first step.
ADMITTED = "admitted"


class Admit(enum.Enum):
    """What surpass says of a new run."""

    START = "start"
    QUEUE = "queue"
    SKIP = "skip"


def admit(surpass: Surpass, active: Iterable[Run], queued: str | None) -> tuple[Admit, str]:
    """Decide whether a new run starts, waits in the queue or is skipped, and why.

    ``active`` are the workflow's runs not yet asked to stop; with surpass
    ``replace`` the new run starts (the caller stops those).
    """
    if surpass is Surpass.PARALLEL or not any(True for _ in active):
        return Admit.START, ""
    if surpass is Surpass.SKIP:
        return Admit.SKIP, skip_reason(surpass)
    if surpass is Surpass.WAIT:
        if queued is not None:
            return Admit.SKIP, skip_reason(surpass)
        return Admit.QUEUE, ""
    return Admit.START, ""  # replace


def skip_reason(surpass: Surpass, blocking: str | None = None) -> str:
    """Say why surpass skipped a run (``blocking``: the run that made it skip, if known)."""
    which = "" if blocking is None else f": task {blocking}"
    if surpass is Surpass.WAIT:
        return f"a run is active and another is already queued (surpass wait){which}"
    return f"a run is active (surpass skip){which}"


def admission_records(task_id: str, workflow_id: str, created_at: float) -> tuple[bytes, bytes]:
    """Return the first records of a run the shared store admits: started, and queued."""
    return (
        queued_record(task_id, workflow_id, created_at, ADMITTED),
        queued_record(task_id, workflow_id, created_at, QUEUED),
    )


def stall_window(step: StepRun, fraction: float) -> float:
    """Return how long a step's listeners may stay silent before the step counts as stalled."""
    assert step.deadline is not None
    return fraction * (step.deadline - step.entered_at)


def stalled_since(step: StepRun, fraction: float, now: float) -> tuple[float | None, float]:
    """Look whether a step stalled: return (when to look again, or None if it stalled now;
    when its listeners were last heard from)."""
    window = stall_window(step, fraction)
    quiet_since = step.last_sign_of_life()
    if now - quiet_since < window:
        return quiet_since + window, quiet_since
    return None, quiet_since


def stall_message(step: StepRun, quiet_since: float, now: float) -> str:
    """Describe a stalled step: who was silent, for how long, and when its deadline is."""
    assert step.deadline is not None
    silent = ", ".join(sorted(step.waiting_for))
    return (
        f"step {step.step.name!r} stalled: nothing heard from {silent} for"
        f" {now - quiet_since:g}s (deadline in {step.deadline - now:g}s)"
    )


def progress_of(task: Task) -> ProgressTree:
    """Return a task's progress: one part per step, listeners' progress in the current one."""
    current = task.step.index if task.step is not None else -1
    parts: list[Progress] = []
    for index, step in enumerate(task.workflow.steps):
        done = index < current or task.state == END
        if index == current and task.state != END and task.step is not None and task.step.progress:
            parts.append(ProgressTree(step.name, tuple(task.step.progress.values())))
        else:
            parts.append(ProgressLeaf(step.name, 1 if done else 0, 1))
    return ProgressTree(task.workflow.name, tuple(parts))


def progress_event(task: Task) -> Event:
    """Return the ``progress`` event of a task as it stands."""
    step = task.step
    ended = task.state == END
    data = {
        "workflow": task.workflow.name,
        "task": task.id,
        "message": progress_of(task).to_json(),
        "step": task.state if ended or step is None else step.step.name,
        "waiting_for": sorted(step.waiting_for) if step is not None and not ended else [],
    }
    return Event(PROGRESS, data)


def task_started_event(task: Task, clock: Clock) -> Event:
    """Return the ``task_started`` event of a task."""
    data = {
        "task": task.workflow.name,
        "task_id": task.id,
        "workflow": task.workflow.id,
        "started_at": clock.to_wall(task.created_at).isoformat(),
    }
    return Event(TASK_STARTED, data)


def task_end_event(task: Task, result: TaskResult) -> Event:
    """Return the ``task_end`` event of an ended task."""
    data: dict[str, Any] = {
        "task_id": task.id,
        "descriptor_id": task.workflow.id,
        "workflow": task.workflow.name,
        "outcome": result.outcome.value,
        "duration": result.duration,
    }
    if result.error is not None:
        data["error"] = result.error
    return Event(TASK_END, data)


def error_event(task: Task, message: str, subscriber_id: str | None) -> Event:
    """Return the ``error`` event for an error a task met (``subscriber_id``: who sent it)."""
    data = {"workflow": task.workflow.name, "task": task.id, "message": message}
    if subscriber_id is not None:
        data["subscriber_id"] = subscriber_id
    return Event(ERROR, data)


def never_ran(task_id: str, workflow_id: str, reason: str | None, at: datetime) -> TaskResult:
    """Return the result of a queued run stopped before it started."""
    return TaskResult(task_id, workflow_id, Outcome.STOPPED, reason or "stopped", (), at, at, ())


def queued_write(task_id: str, workflow_id: str, created_at: float) -> SaveTask:
    """Return the store write of a queued run (``created_at``: seconds since the epoch)."""
    return SaveTask(task_id, workflow_id, queued_record(task_id, workflow_id, created_at, QUEUED))


def finish_write(result: TaskResult, record: bytes | None, has_errors: bool | None) -> FinishTask:
    """Return the store write that files a finished task in the history."""
    return FinishTask(
        result.id,
        result.workflow,
        result.outcome.value,
        result.started_at.timestamp(),
        result.ended_at.timestamp(),
        record if record is not None else orjson.dumps(result.to_record()),
        result.has_errors if has_errors is None else has_errors,
    )


def result_of(
    task: Task, clock: Clock, encoded: list[Any] | None, *, durable: bool
) -> tuple[TaskResult, bytes | None]:
    """Return an ended task's result and (``durable``) its stored record.

    A task whose texts JSON cannot carry (a lone surrogate from an in-process
    answer) is kept with those replaced, rather than lost.
    """
    result = TaskResult.of(task, clock)
    if not durable:
        return result, None
    try:
        return result, finished_record(task, clock, encoded)
    except Exception as error:
        logger.error("task %s: cannot store its result as it is: %s", task.id, error)
        _replace_unencodable(task)
        return TaskResult.of(task, clock), finished_record(task, clock)


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _replace_unencodable(task: Task) -> None:
    """Replace what UTF-8 cannot hold (lone surrogates) in a task's texts, in place."""
    if task.error is not None:
        task.error = _encodable(task.error)
    for run in task.history:
        run.errors[:] = [_encodable(error) for error in run.errors]
