"""Replicas sharing one asynchronous store: taking over the tasks of a replica that stopped.

Each replica writes its running tasks under its lease (see
:mod:`engine._persistence`). When a replica dies, stalls or stops, its lease
expires (or is given up); :class:`Takeover`, running in every replica, looks
for such leases a few times per lease period, moves their tasks to its own
lease in one atomic step of the store (so that exactly one replica gets
each task) and resumes them from their last committed state: the current
step acts again, so what was owed is sent again.

The replica that lost them, if it wakes up, acts no more on them: every
effect of a task waits for its state to be committed, and the store refuses
a write to a task held under another lease. That refusal, or the check made
when the replica takes its own lease again, makes it forget the task
(:meth:`Takeover.give_up`) without filing a result: the task is the other
replica's now.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import trio

from ._errors import LeaseLost
from ._restore import resume
from ._rules import QUEUED

if TYPE_CHECKING:
    from ._core import Core
    from ._driver import Driver
    from ._persistence import Persistence
    from ._store import AsyncStore

logger = logging.getLogger(__name__)


class Takeover:
    """Take over the tasks of expired leases; give up those another replica took."""

    def __init__(
        self, *, core: Core, driver: Driver, persistence: Persistence, store: AsyncStore
    ) -> None:
        self._core = core
        self._driver = driver
        self._persistence = persistence
        self._store = store

    async def serve(self) -> None:
        """Look for expired leases four times per lease period, until cancelled."""
        lease = self._persistence.lease
        assert lease is not None
        while not self._core.frozen:
            await self.take_over()
            await trio.sleep(lease.ttl.total_seconds() / 4)

    async def take_over(self) -> int:
        """Take over the tasks of every expired lease now; return how many were resumed."""
        lease = self._persistence.lease
        assert lease is not None
        resumed = 0
        for name in await self._store.expired_leases():
            if name == lease.name or self._core.frozen:
                continue  # our own expired while we were away: we take it back ourselves
            try:
                records = await self._store.adopt(name, owner=lease.name, fence=lease.token)
            except LeaseLost as error:
                logger.info("not taking over the tasks of %r: %s", name, error)
                continue
            if self._core.frozen:  # stopping: they stay under our lease, for our restart
                return resumed
            now = trio.current_time()
            for raw in records:
                record = orjson.loads(raw)
                if record["id"] in self._core.running:
                    continue
                self._resume(record, now)
                resumed += 1
            logger.warning(
                "took over %d task(s) of replica %r (its lease expired)", len(records), name
            )
        if resumed:
            self._driver.poke()
        return resumed

    def _resume(self, record: dict[str, object], now: float) -> None:
        core = self._core
        registered = core.workflows.by_id.get(str(record.get("workflow")))
        if record.get("state") == QUEUED and registered is not None and registered.queued is None:
            core.queue(registered, str(record["id"]))
            if not registered.active:
                core.start_queued(registered, now)
            return
        resume(core, record, now)

    def give_up(self, task_id: str) -> None:
        """Forget a task another replica drives now: no result is filed, nothing goes out."""
        core = self._core
        run = core.running.pop(task_id, None)
        if run is None:
            return
        run.registered.active.pop(run, None)
        for owing in core.owing.values():
            owing.pop(run, None)
        for waiting in core.event_waiters.values():
            waiting.discard(run)
        self._driver.forget(run)
        logger.warning("task %s is driven by another replica now: this one let it go", task_id)

    async def check_held(self) -> None:
        """Give up the running tasks held under another lease (after the lease was lost)."""
        lease = self._persistence.lease
        assert lease is not None
        for task_id in list(self._core.running):
            holder = await self._store.lease_of(task_id)
            if holder == lease.name:
                continue
            # held elsewhere, or ended there (a task not stored yet is neither)
            if holder is not None or await self._store.finished_task(task_id) is not None:
                self.give_up(task_id)
