"""Cron schedules: when each workflow fires, what a gap made it miss, and the ledger.

:func:`catch_up` decides, without any I/O, what happens to the times a
schedule passed while the engine was down or blocked; :class:`Schedules`
runs one trio task per cron trigger in force, starts the workflow through
the callable it is given, keeps the last time each schedule fired (stored,
so that a restart catches up by the trigger's policy) and the ledger of
recent firings.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs
import trio

from ._clock import Clock
from ._definitions import CatchUp, CronTrigger, Workflow

logger = logging.getLogger(__name__)

SCHEDULE_FIRED = "schedule_fired"

#: Seconds a scheduled time may be late and still count as on time.
SCHEDULE_GRACE = 60.0
#: Missed times looked at, at most, after a gap (the latest ones).
MISSED_RECORD_LIMIT = 1000
#: Schedule firings kept per workflow.
LEDGER_LENGTH = 100

#: A schedule's identity in the marks: (workflow id, cron expression, time zone).
MarkKey = tuple[str, str, str]


@attrs.frozen
class ScheduleFiring:
    """One time a schedule fired, and what came of it.

    ``outcome`` is ``started``, ``skipped_overlap`` (surpass skipped it),
    ``queued`` (surpass wait queued it), ``caught_up`` (a missed time run
    late), ``missed`` (a missed time not run, by the catch-up policy),
    ``stopped`` (the engine was stopping), ``failed`` (starting the run
    failed) or ``another_replica`` (another server sharing the store took it).
    """

    workflow: str
    cron: str
    timezone: str
    planned: datetime
    actual: datetime
    outcome: str
    task_id: str | None

    def to_json(self) -> dict[str, Any]:
        """Return the data of the ``schedule_fired`` event."""
        return {
            "workflow": self.workflow,
            "cron": self.cron,
            "timezone": self.timezone,
            "planned": self.planned.isoformat(),
            "actual": self.actual.isoformat(),
            "outcome": self.outcome,
            "task_id": self.task_id,
        }


@attrs.frozen
class CatchUpPlan:
    """What to do with the times a schedule passed: run some, record the others missed."""

    run: tuple[datetime, ...]
    missed: tuple[datetime, ...]
    #: Whether the times run are late (caught up), not on time.
    late: bool


def catch_up(trigger: CronTrigger, due: list[datetime], now: datetime) -> CatchUpPlan:
    """Decide which of the passed fire times ``due`` (oldest first) run, by the trigger's policy.

    One time no more than :data:`SCHEDULE_GRACE` late is simply on time. Otherwise
    ``skip`` runs none, ``latest`` the latest one, ``all`` the latest
    ``catch_up_limit`` of them; the others are missed.
    """
    if len(due) == 1 and (now - due[0]).total_seconds() <= SCHEDULE_GRACE:
        return CatchUpPlan(tuple(due), (), late=False)
    if trigger.catch_up is CatchUp.SKIP:
        run: list[datetime] = []
    elif trigger.catch_up is CatchUp.LATEST:
        run = due[-1:]
    else:
        run = due[-trigger.catch_up_limit :]
    return CatchUpPlan(tuple(run), tuple(due[: len(due) - len(run)]), late=True)


_DECLARED = object()

#: Starts a workflow for a schedule: (workflow id, reason) -> (outcome, task id), or an
#: awaitable of it (servers sharing a store wait for the store's decision).
Fire = Callable[[str, str], "tuple[str, str | None] | Awaitable[tuple[str, str | None]]"]

#: Takes a schedule's firing for this engine: (workflow id, cron, time zone, planned time)
#: -> whether it is this engine's to start (exactly one of the replicas sharing a store).
Claim = Callable[[str, str, str, datetime], Awaitable[bool]]


class Schedules:
    """The cron schedules in force and their trio tasks.

    Args:
        clock: wall-clock time.
        nursery: where each workflow's schedule tasks run.
        fire: starts a workflow for a schedule; returns the firing's outcome
            (``started``, ``queued``, ``skipped_overlap``) and the task id.
        announce: called with each firing (for the ``schedule_fired`` event).
        save_mark: keeps the last time a schedule handled, to survive a restart;
            returns False when nothing may be kept any more (the engine stops).
        claim: takes each firing before it starts the workflow, where several
            engines share a store (None: every firing is this engine's).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        nursery: trio.Nursery,
        fire: Fire,
        announce: Callable[[ScheduleFiring], None],
        save_mark: Callable[[MarkKey, datetime], bool],
        claim: Claim | None = None,
    ) -> None:
        self._clock = clock
        self._claim = claim
        self._nursery = nursery
        self._fire = fire
        self._announce = announce
        self._save_mark = save_mark
        self._overrides: dict[str, CronTrigger | None] = {}
        self._marks: dict[MarkKey, datetime] = {}
        self._ledger: dict[str, deque[ScheduleFiring]] = {}
        self._scopes: dict[str, trio.CancelScope] = {}

    def restore(self, marks: Mapping[MarkKey, datetime]) -> None:
        """Take the stored marks: schedules catch up from them."""
        self._marks.update(marks)

    def in_force(self, workflow: Workflow) -> list[CronTrigger]:
        """Return the cron triggers in force for a workflow: its declared ones, unless
        the config ``phasebus.core`` sets its schedule (see :meth:`set_overrides`)."""
        override = self._overrides.get(workflow.id, _DECLARED)
        if override is _DECLARED:
            return [t for t in workflow.triggers if isinstance(t, CronTrigger)]
        return [] if override is None else [override]  # type: ignore[list-item]

    def next_run(self, workflow: Workflow) -> datetime | None:
        """Return when a schedule next starts the workflow, or None."""
        now = self._clock.now()
        times = [t.next_after(now) for t in self.in_force(workflow)]
        return min(times) if times else None

    def set_overrides(self, overrides: Mapping[str, CronTrigger | None]) -> None:
        """Replace the schedules set by configuration (None: the workflow has none).

        Call :meth:`start` again for each workflow to apply them.
        """
        self._overrides = dict(overrides)

    def start(self, workflow: Workflow) -> None:
        """Run the workflow's schedules in force (stopping the ones it ran before)."""
        self.stop(workflow.id)
        triggers = self.in_force(workflow)
        if triggers:
            scope = self._scopes[workflow.id] = trio.CancelScope()
            self._nursery.start_soon(self._run, workflow.id, scope, triggers)

    def stop(self, workflow_id: str) -> None:
        """Stop a workflow's schedules (its marks and ledger stay)."""
        scope = self._scopes.pop(workflow_id, None)
        if scope is not None:
            scope.cancel()

    def stop_all(self) -> None:
        """Stop every schedule."""
        for workflow_id in list(self._scopes):
            self.stop(workflow_id)

    def forgive(self, workflow_id: str) -> None:
        """Count the workflow's schedules as handled up to now: nothing passed catches up."""
        now = self._clock.now()
        for key in [k for k in self._marks if k[0] == workflow_id]:
            self._marks[key] = now
            self._save_mark(key, now)

    def ledger(self, workflow_id: str) -> list[ScheduleFiring]:
        """Return the most recent firings of a workflow's schedules, oldest first."""
        return list(self._ledger.get(workflow_id, ()))

    async def _run(
        self, workflow_id: str, scope: trio.CancelScope, triggers: Iterable[CronTrigger]
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for trigger in triggers:
                    nursery.start_soon(self._follow, workflow_id, trigger)

    async def _follow(self, workflow_id: str, trigger: CronTrigger) -> None:
        key = (workflow_id, trigger.cron, trigger.timezone)
        last = self._marks.get(key) or self._clock.now()
        while True:
            await self._clock.sleep_until(trigger.next_after(last))
            now = self._clock.now()
            due = trigger.fire_times(last, now, limit=MISSED_RECORD_LIMIT)
            if not due:  # woke a hair early (clock rounding): sleep again
                continue
            plan = catch_up(trigger, due, now)
            for planned in plan.missed:
                self._record(workflow_id, trigger, planned, now, "missed", None)
            for planned in plan.run:
                if self._claim is not None and not await self._claim(
                    workflow_id, trigger.cron, trigger.timezone, planned
                ):
                    self._record(workflow_id, trigger, planned, now, "another_replica", None)
                    continue
                try:
                    fired = self._fire(
                        workflow_id, f"schedule {trigger.cron} ({trigger.timezone}) for {planned}"
                    )
                    outcome, task_id = await fired if inspect.isawaitable(fired) else fired
                except Exception:  # one schedule's failure stops neither it nor the engine
                    logger.exception("schedule %s of %s failed to fire", trigger.cron, workflow_id)
                    outcome, task_id = "failed", None
                if plan.late and outcome == "started":
                    outcome = "caught_up"
                self._record(workflow_id, trigger, planned, now, outcome, task_id)
            last = due[-1]
            try:
                if not self._save_mark(key, last):
                    return
            except Exception:
                logger.exception(
                    "cannot store when schedule %s of %s fired", trigger.cron, workflow_id
                )
            self._marks[key] = last

    def _record(
        self,
        workflow_id: str,
        trigger: CronTrigger,
        planned: datetime,
        actual: datetime,
        outcome: str,
        task_id: str | None,
    ) -> None:
        firing = ScheduleFiring(
            workflow_id, trigger.cron, trigger.timezone, planned, actual, outcome, task_id
        )
        self._ledger.setdefault(workflow_id, deque(maxlen=LEDGER_LENGTH)).append(firing)
        if outcome == "missed":
            logger.warning("schedule %s of %s missed %s", trigger.cron, workflow_id, planned)
        self._announce(firing)
