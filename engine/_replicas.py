"""Replicas sharing one asynchronous store: taking over the tasks of a replica that stopped,
and the events of each shown on all.

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
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import orjson
import trio

from ._errors import LeaseLost
from ._messages import Event
from ._restore import resume
from ._rules import QUEUED

if TYPE_CHECKING:
    from ._core import Core
    from ._driver import Driver
    from ._persistence import Persistence
    from ._redis import RedisStreams
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


#: Events kept in the shared stream (about): enough for a replica that fell behind.
EVENTS_KEPT = 10_000
#: How long one read of the shared stream waits for entries.
_FOLLOW_BLOCK = timedelta(seconds=5)


class EventFanout:
    """The events of every replica for every replica's listeners, in order.

    Each event this replica publishes is appended to the shared stream of
    events (a batch per round trip, in the order published); every replica
    follows the stream from where it joined and shows the other replicas'
    events to its own listeners. Only listeners see them: they start no
    workflow and end no waiting step here (the replica that published one
    did that).
    """

    def __init__(
        self, streams: RedisStreams, *, replica: str, show: Callable[[Event], None]
    ) -> None:
        self._streams = streams
        self._stream = streams.event_stream()
        self._replica = replica
        self._show = show
        self._out: list[bytes] = []
        self._wake = trio.Event()

    def send(self, event: Event) -> None:
        """Queue an event of this replica's for the others (it is sent in order)."""
        self._out.append(
            orjson.dumps({"r": self._replica, "t": event.message_type, "d": event.data})
        )
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send this replica's events and show the others', until cancelled."""
        after = await self._streams.last_id(self._stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_out)
            nursery.start_soon(self._follow, after)
            task_status.started()

    async def _send_out(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._out = self._out, []
            await self._streams.append_many(self._stream, batch, max_length=EVENTS_KEPT)

    async def _follow(self, after: str) -> None:
        while True:
            entries = await self._streams.follow(self._stream, after, block=_FOLLOW_BLOCK)
            for entry_id, body in entries:
                after = entry_id
                data = orjson.loads(body)
                if data["r"] != self._replica:
                    self._show(Event(data["t"], data["d"]))
