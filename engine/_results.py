"""Results and history: what running tasks look like, and what finished ones left.

:class:`Results` keeps the latest finished tasks in memory and reads the
store's history for the rest; :func:`task_info` describes a running task.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

import attrs

from ._clock import Clock
from ._machine import Outcome
from ._messages import Progress
from ._records import StepResult, TaskResult, step_results
from ._runs import Run
from ._store import Store


@attrs.frozen
class StepInfo:
    """What the current step of a running task is doing."""

    name: str
    action: str
    message_type: str
    started_at: datetime
    deadline: datetime | None
    waiting_for: tuple[str, ...]
    answered: Mapping[str, str] = attrs.field(hash=False)
    progress: Mapping[str, Progress] = attrs.field(hash=False)
    errors: tuple[str, ...]
    last_heard: Mapping[str, datetime] = attrs.field(factory=dict, hash=False)
    stalled: bool = False
    #: Owed subscribers that went away (removed, unsubscribed): the step no longer waits.
    released: tuple[str, ...] = ()


@attrs.frozen
class TaskInfo:
    """A running task: its workflow, state and current step."""

    id: str
    workflow: str
    workflow_name: str
    state: str
    started_at: datetime
    step: StepInfo | None
    #: The steps passed so far, in order, as they ended.
    steps: tuple[StepResult, ...] = ()


def task_info(run: Run, clock: Clock) -> TaskInfo:
    """Describe a running task."""
    task = run.task
    step = task.step
    step_info = None
    if step is not None:
        step_info = StepInfo(
            name=step.step.name,
            action=step.step.action.kind,
            message_type=step.step.message_type,
            started_at=clock.to_wall(step.entered_at),
            deadline=clock.to_wall(step.deadline) if step.deadline is not None else None,
            waiting_for=tuple(sorted(step.waiting_for)),
            answered={sid: str(answer) for sid, answer in step.answers.items()},
            progress=dict(step.progress),
            errors=tuple(step.errors),
            last_heard={sid: clock.to_wall(t) for sid, t in step.heard.items()},
            stalled=step.stalled,
            released=tuple(step.released),
        )
    return TaskInfo(
        task.id,
        task.workflow.id,
        task.workflow.name,
        task.state,
        clock.to_wall(task.created_at),
        step_info,
        step_results(task, clock),
    )


class Results:
    """Finished tasks: the latest ``keep`` in memory, the rest in the store's history.

    ``flush`` is called before every read of the store, so that a read sees
    every write decided before it.
    """

    def __init__(self, store: Store | None, *, keep: int, flush: Callable[[], None]) -> None:
        self._store = store
        self._keep = keep
        self._flush = flush
        self._latest: OrderedDict[str, TaskResult] = OrderedDict()

    def keep(self, result: TaskResult) -> None:
        """Keep a finished task's result in memory (its store write is the core's)."""
        latest = self._latest
        latest[result.id] = result
        while len(latest) > self._keep:
            latest.popitem(last=False)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._latest

    def get(self, task_id: str) -> TaskResult | None:
        """Return a finished task's result, or None."""
        result = self._latest.get(task_id)
        if result is None and self._store is not None:
            self._flush()
            record = self._store.finished_task(task_id)
            if record is not None:
                return TaskResult.from_record(record)
        return result

    def ids(self, prefix: str, *, limit: int, also: Iterable[Iterable[str]]) -> list[str]:
        """Return up to ``limit`` task ids with ``prefix``: from ``also`` (running, queued),
        then the latest finished, then the store's."""
        found: dict[str, None] = {}
        for ids in (*also, reversed(self._latest)):
            for task_id in ids:
                if task_id.startswith(prefix):
                    found[task_id] = None
                    if len(found) >= limit:
                        return list(found)
        if self._store is not None:
            self._flush()
            found.update(dict.fromkeys(self._store.task_ids(prefix, limit=limit)))
        return list(found)[:limit]

    def history(
        self,
        *,
        workflow: str | None = None,
        outcome: Outcome | str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[TaskResult]:
        """Return finished tasks, newest first (see :meth:`Engine.history`)."""
        wanted = None if outcome is None else Outcome(outcome)
        if self._store is not None:
            self._flush()
            return [
                TaskResult.from_record(record)
                for record in self._store.history(
                    workflow=workflow,
                    outcome=None if wanted is None else wanted.value,
                    since=since,
                    has_errors=has_errors,
                    limit=limit,
                )
            ]
        results = [
            r
            for r in reversed(self._latest.values())
            if (workflow is None or r.workflow == workflow)
            and (wanted is None or r.outcome is wanted)
            and (since is None or r.ended_at >= since)
            and (has_errors is None or r.has_errors is has_errors)
        ]
        return results[:limit]

    def last_steps(self, workflow_id: str) -> list[tuple[str, float, float]]:
        """Return the steps of a workflow's last finished run: name, start and end (epoch)."""
        last = self.history(workflow=workflow_id, limit=1)
        if not last:
            return []
        return [(s.name, s.started_at.timestamp(), s.ended_at.timestamp()) for s in last[0].steps]
