"""Results and history: what running tasks look like, and what finished ones left.

:class:`Results` keeps the latest finished tasks in memory and reads the
store's history for the rest; :func:`task_info` describes a running task.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._clock import Clock
from ._errors import StoreError, UnknownTaskError
from ._machine import START, Outcome
from ._messages import Progress
from ._persistence import Persistence
from ._records import RestoreError, StepResult, TaskResult, restore_task, step_results
from ._rules import ADMITTED, QUEUED
from ._runs import Run

if TYPE_CHECKING:
    from ._core import Core
    from ._workflows import WorkflowTable


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


def queued_infos(workflows: WorkflowTable) -> list[TaskInfo]:
    """Describe the runs queued here whose time is known (surpass ``wait``)."""
    return [
        TaskInfo(task_id, r.workflow.id, r.workflow.name, QUEUED, r.queued_since, None)
        for task_id, r in workflows.queued.items()
        if r.queued == task_id and r.queued_since is not None
    ]


def stored_task_info(
    record: Mapping[str, Any], workflows: WorkflowTable, clock: Clock
) -> TaskInfo | None:
    """Describe a running or queued task from its stored record (another server's, say);
    None if its workflow is not registered here or the record cannot be read.

    A queued run shows the state ``queued``; a run admitted by the shared store
    that has not begun yet shows ``start``.
    """
    registered = workflows.by_id.get(record.get("workflow"))  # type: ignore[arg-type]
    if registered is None:
        return None
    try:
        if record.get("state") in (QUEUED, ADMITTED):
            workflow = registered.workflow
            created = datetime.fromtimestamp(float(record["created_at"]), UTC)
            state = QUEUED if record["state"] == QUEUED else START
            return TaskInfo(record["id"], workflow.id, workflow.name, state, created, None)
        task = restore_task(record, registered.workflow, clock)
    except (RestoreError, KeyError, TypeError, ValueError, OverflowError):
        return None
    return task_info(Run(task, registered), clock)


class Results:
    """Finished tasks: the latest ``keep`` in memory, the rest in the store's history.

    Every read of the store goes through ``persistence``, which first carries
    out and commits what was decided, so that a read sees every write decided
    before it. With an asynchronous store the synchronous reads find only
    what is in memory; the ``fetch_*`` coroutines read the store.
    """

    def __init__(self, persistence: Persistence | None, *, keep: int) -> None:
        self._persistence = persistence
        self._keep = keep
        self._latest: OrderedDict[str, TaskResult] = OrderedDict()

    @property
    def _sync_store(self) -> Persistence | None:
        """The persistence, when its store answers synchronously."""
        persistence = self._persistence
        return None if persistence is None or persistence.asynchronous else persistence

    def keep(self, result: TaskResult) -> None:
        """Keep a finished task's result in memory (its store write is the core's)."""
        latest = self._latest
        latest[result.id] = result
        while len(latest) > self._keep:
            latest.popitem(last=False)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._latest

    def get(self, task_id: str) -> TaskResult | None:
        """Return a finished task's result, or None (an asynchronous store: from memory)."""
        result = self._latest.get(task_id)
        persistence = self._sync_store
        if result is None and persistence is not None:
            record = persistence.finished_task_now(task_id, "await engine.fetch_task()")
            if record is not None:
                return TaskResult.from_record(record)
        return result

    async def fetch(self, task_id: str) -> TaskResult | None:
        """Return a finished task's result, or None, reading any store."""
        result = self._latest.get(task_id)
        if result is None and self._persistence is not None:
            record = await self._persistence.finished_task(task_id)
            if record is not None:
                return TaskResult.from_record(record)
        return result

    def ids(self, prefix: str, *, limit: int, also: Iterable[Iterable[str]]) -> list[str]:
        """Return up to ``limit`` task ids with ``prefix``: from ``also`` (running, queued),
        then the latest finished, then the store's (a synchronous one)."""
        found = _ids_in_memory(prefix, limit, (*also, reversed(self._latest)))
        persistence = self._sync_store
        if len(found) < limit and persistence is not None:
            found.update(
                dict.fromkeys(
                    persistence.task_ids_now(
                        prefix, limit=limit, use="await engine.fetch_task_ids()"
                    )
                )
            )
        return list(found)[:limit]

    async def fetch_ids(
        self, prefix: str, *, limit: int, also: Iterable[Iterable[str]]
    ) -> list[str]:
        """Return up to ``limit`` task ids with ``prefix``, reading any store (see :meth:`ids`)."""
        found = _ids_in_memory(prefix, limit, (*also, reversed(self._latest)))
        if len(found) < limit and self._persistence is not None:
            found.update(dict.fromkeys(await self._persistence.task_ids(prefix, limit=limit)))
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
        """Return finished tasks, newest first (see :meth:`Engine.history`).

        Raises:
            StoreError: the store answers asynchronously (use :meth:`fetch_history`).
        """
        filters = _filters(workflow, outcome, since, has_errors, limit)
        if self._persistence is not None:
            records = self._persistence.history_now("await engine.fetch_history()", **filters)
            return [TaskResult.from_record(record) for record in records]
        return self._from_memory(filters)

    async def fetch_history(
        self,
        *,
        workflow: str | None = None,
        outcome: Outcome | str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[TaskResult]:
        """Return finished tasks, newest first, reading any store (see :meth:`history`)."""
        filters = _filters(workflow, outcome, since, has_errors, limit)
        if self._persistence is not None:
            records = await self._persistence.history(**filters)
            return [TaskResult.from_record(record) for record in records]
        return self._from_memory(filters)

    def _from_memory(self, filters: dict[str, Any]) -> list[TaskResult]:
        workflow, since, has_errors = filters["workflow"], filters["since"], filters["has_errors"]
        wanted = None if filters["outcome"] is None else Outcome(filters["outcome"])
        results = [
            r
            for r in reversed(self._latest.values())
            if (workflow is None or r.workflow == workflow)
            and (wanted is None or r.outcome is wanted)
            and (since is None or r.ended_at >= since)
            and (has_errors is None or r.has_errors is has_errors)
        ]
        return results[: filters["limit"]]

    def last_steps(self, workflow_id: str) -> list[tuple[str, float, float]]:
        """Return the steps of a workflow's last finished run: name, start and end (epoch).

        With an asynchronous store, only the runs finished since the start count.
        """
        filters = _filters(workflow_id, None, None, None, 1)
        if self._sync_store is not None:
            last = self.history(workflow=workflow_id, limit=1)
        else:
            last = self._from_memory(filters)
        if not last:
            return []
        return [(s.name, s.started_at.timestamp(), s.ended_at.timestamp()) for s in last[0].steps]


def _filters(
    workflow: str | None,
    outcome: Outcome | str | None,
    since: datetime | None,
    has_errors: bool | None,
    limit: int,
) -> dict[str, Any]:
    wanted = None if outcome is None else Outcome(outcome)
    return {
        "workflow": workflow,
        "outcome": None if wanted is None else wanted.value,
        "since": since,
        "has_errors": has_errors,
        "limit": limit,
    }


def _ids_in_memory(prefix: str, limit: int, sources: Iterable[Iterable[str]]) -> dict[str, None]:
    found: dict[str, None] = {}
    for ids in sources:
        for task_id in ids:
            if task_id.startswith(prefix):
                found[task_id] = None
                if len(found) >= limit:
                    return found
    return found


class ResultMethods:
    """The engine's methods for running and finished tasks and its store (a part of
    :class:`~engine.Engine`)."""

    clock: Clock
    _core: Core
    _workflows: WorkflowTable
    _results: Results
    _persistence: Persistence

    # ------------------------------------------------------------ the store

    def writes_mark(self) -> int:
        """Return a mark of the writes handed to the store so far (for :meth:`wait_written`)."""
        return self._persistence.mark()

    async def wait_written(self, since: int = 0) -> None:
        """Wait until every change made so far is in the store (at once without one, or
        with a synchronous store, which writes on the caller's stack).

        Raises:
            StoreError: a write handed in after the mark ``since`` (see
                :meth:`writes_mark`) failed.
            EngineClosed: the engine stopped before the writes were made.
        """
        await self._persistence.written(since)

    async def store_ready(self) -> bool:
        """Tell whether the store answers now (always True without one or for SQLite)."""
        return await self._persistence.ready()

    # ------------------------------------------------------------ observing

    def tasks(self) -> list[TaskInfo]:
        """Return the running tasks, oldest first."""
        return [
            task_info(run, self.clock)
            for run in self._core.running.values()
            if run.registered.active.get(run, 0) is None
        ]

    def task(self, task_id: str) -> TaskInfo | TaskResult:
        """Return a running task's info or a finished task's result.

        Raises:
            UnknownTaskError: no task has this id (finished results are kept
                for the most recent ``keep_results`` tasks).
            StoreError: the task is not in memory and the store answers
                asynchronously: use :meth:`fetch_task`.
        """
        run = self._core.running.get(task_id)
        if run is not None and run in run.registered.active:
            return task_info(run, self.clock)
        result = self._results.get(task_id)
        if result is None:
            if self._persistence.asynchronous:
                raise StoreError(
                    f"task {task_id!r} is not in memory and the store answers asynchronously:"
                    " use await engine.fetch_task()"
                )
            raise UnknownTaskError(task_id)
        return result

    async def fetch_task(self, task_id: str) -> TaskInfo | TaskResult:
        """Return a running task's info or a finished task's result, reading any store.

        Raises:
            UnknownTaskError: no task has this id.
        """
        run = self._core.running.get(task_id)
        if run is not None and run in run.registered.active:
            return task_info(run, self.clock)
        if task_id in self._workflows.queued:
            shown = [info for info in queued_infos(self._workflows) if info.id == task_id]
            if shown:
                return shown[0]
        result = await self._results.fetch(task_id)
        if result is not None:
            return result
        elsewhere = await self._running_elsewhere(task_id)
        if elsewhere is None:
            raise UnknownTaskError(task_id)
        return elsewhere

    async def _running_elsewhere(self, task_id: str) -> TaskInfo | None:
        """Describe a task another engine sharing the store drives, from its last record."""
        record = await self._persistence.running_task(task_id)
        return None if record is None else stored_task_info(record, self._workflows, self.clock)

    def task_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Return up to ``limit`` ids of known tasks (running, queued, finished) with ``prefix``.

        With an asynchronous store, only the tasks in memory (see :meth:`fetch_task_ids`).
        """
        also = (self._core.running, self._workflows.queued)
        return self._results.ids(prefix, limit=limit, also=also)

    async def fetch_task_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Return up to ``limit`` ids of known tasks with ``prefix``, reading any store."""
        also = (self._core.running, self._workflows.queued)
        return await self._results.fetch_ids(prefix, limit=limit, also=also)

    def history(
        self,
        *,
        workflow: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[TaskResult]:
        """Return finished tasks, newest first, filtered as asked.

        With a store, the history holds every task finished within the
        retention period; without one, the last ``keep_results`` tasks.

        Raises:
            StoreError: the store answers asynchronously: use :meth:`fetch_history`.
        """
        return self._results.history(
            workflow=workflow, outcome=outcome, since=since, has_errors=has_errors, limit=limit
        )

    async def fetch_history(
        self,
        *,
        workflow: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[TaskResult]:
        """Return finished tasks, newest first, filtered as asked, reading any store
        (see :meth:`history`)."""
        return await self._results.fetch_history(
            workflow=workflow, outcome=outcome, since=since, has_errors=has_errors, limit=limit
        )
