"""Replicas sharing one asynchronous store: taking over the tasks of a replica that stopped,
and the events of each shown on all.

Each replica writes its running tasks under its lease (see
:mod:`engine._persistence`). When a replica dies, stalls or stops, its lease
expires (or is given up); :class:`Takeover`, running in every replica, looks
for such leases a few times per lease period, moves their tasks to its own
lease in one atomic step of the store (so that exactly one replica gets
each task) and resumes them from their last committed state: the current
step acts again, so what was owed is sent again. The answers sent to those
tasks that the expired lease's holder had not taken (read or not, they are
in its stream of answers) are taken first: a step they finish is not sent
again, and one that some subscribers still owe is sent again to those only.
Those answers are acknowledged in the expired holder's stream once what they
caused is committed here (:func:`kept`); until then this replica's lease
names that stream (:meth:`RedisStreams.left`), so that whoever takes the
tasks over from this replica, if it dies first, takes them from there.

A stop asked for an adopted task through any replica, which went to the
expired lease's stream, is taken with it too (and any stop kept in the store
for it: :meth:`engine._shared.SharedRuns.take_stops`); a queued run whose
turn came while its holder was away begins.

The replica that lost them, if it wakes up, acts no more on them: every
effect of a task waits for its state to be committed, and the store refuses
a write to a task held under another lease. That refusal, or the check made
when the replica takes its own lease again, makes it forget the task
(:meth:`Takeover.give_up`) without filing a result: the task is the other
replica's now.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import attrs
import orjson
import trio

from ._bus import LISTENER_CONNECTED, LISTENER_DISCONNECTED
from ._convert import message_from_json
from ._errors import LeaseLost
from ._messages import (
    Action,
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    Answer,
    Event,
    Message,
)
from ._restore import resume, take_up
from ._rules import QUEUED

if TYPE_CHECKING:
    from ._bus import Bus
    from ._core import Core
    from ._driver import Driver
    from ._persistence import Persistence
    from ._redis import RedisStreams
    from ._store import AsyncStore
    from ._subscribers import SubscriberRegistry

logger = logging.getLogger(__name__)


class Takeover:
    """Take over the tasks of expired leases; give up those another replica took."""

    def __init__(
        self,
        *,
        core: Core,
        driver: Driver,
        persistence: Persistence,
        store: AsyncStore,
        streams: RedisStreams | None = None,
        publish: Callable[[Message], None] | None = None,
    ) -> None:
        """``streams`` and ``publish``: where the answers left to an expired lease's tasks
        are read (the Redis store's streams), and how they are taken (as a listener's)."""
        self._core = core
        self._driver = driver
        self._persistence = persistence
        self._store = store
        self._streams = streams
        self._publish = publish
        #: Takes up the stops asked for the tasks just adopted (SharedRuns.take_stops).
        self.adopted: Callable[[list[str]], Awaitable[None]] | None = None
        #: Takes an entry of an answer stream that is not an answer (SharedRuns.take).
        self.control: Callable[[dict[str, Any]], None] | None = None

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
            # read before the tasks resume, so that their actions go out knowing the answers
            answers = await self._left_answers(name) if records else {}
            if self._core.frozen:  # stopping: they stay under our lease, for our restart
                return resumed
            now = trio.current_time()
            adopted = set()
            for raw in records:
                record = orjson.loads(raw)
                adopted.add(record["id"])
                if record["id"] in self._core.running:
                    continue
                self._resume(record, now)
                resumed += 1
            self._take_answers(name, answers, adopted)
            if self.adopted is not None and adopted:
                await self.adopted(sorted(adopted))
            logger.warning(
                "took over %d task(s) of replica %r (its lease expired)", len(records), name
            )
            if answers:
                self._driver.poke()
                await self._acknowledge_left(answers, adopted)
        if resumed:
            self._driver.poke()
        return resumed

    def _resume(self, record: dict[str, Any], now: float) -> None:
        core = self._core
        if core.shared:  # its queued runs start when the store says so
            take_up(core, record, now)
            return
        registered = core.workflows.by_id.get(str(record.get("workflow")))
        if record.get("state") == QUEUED and registered is not None and registered.queued is None:
            core.queue(registered, str(record["id"]))
            if not registered.active:
                core.start_queued(str(record["id"]), now)
            return
        resume(core, record, now)

    async def _left_answers(self, expired: str) -> _Left:
        """Return the answers the expired lease's holder had not taken, by stream: in its own
        stream, those it read but did not acknowledge, then those it never read; in the
        streams of the leases it had taken tasks from, those it took with them and did not
        acknowledge (it died before they counted). They become this replica's, owed.
        After the adoption no answer is added to its stream (:meth:`RedisStreams.send_answer`).
        """
        streams = self._streams
        lease = self._persistence.lease
        if streams is None or lease is None:
            return {}
        from ._redis import DRIVER_GROUP  # only with a Redis store (coredis is optional)

        stream = streams.answer_stream(expired)
        # an expired holder read nothing for a lease period: idle that long at least
        entries = await streams.owed(stream, DRIVER_GROUP, lease.name, idle=_LEFT_IDLE)
        while read := await streams.read(stream, DRIVER_GROUP, lease.name):
            entries += read
        left = {expired: entries}
        for name in await streams.left(lease.name):  # the adoption moved them here
            if name not in left:
                inherited = streams.answer_stream(name)
                left[name] = await streams.claim(inherited, DRIVER_GROUP, expired, lease.name)
        return left

    async def _acknowledge_left(self, left: _Left, adopted: set[str]) -> None:
        """Acknowledge the answers taken from expired leases' streams once the state they
        caused is committed (stopping first, they stay owed: taken again at the restart, or
        by whoever takes the tasks over from this replica)."""
        streams = self._streams
        lease = self._persistence.lease
        if streams is None or lease is None:
            return
        if not await kept(self._core, self._persistence, adopted):
            return
        from ._redis import DRIVER_GROUP  # only with a Redis store (coredis is optional)

        for name, entries in left.items():
            stream = streams.answer_stream(name)
            await streams.ack(stream, DRIVER_GROUP, [entry for entry, _ in entries])
        await streams.left_done(lease.name, list(left))

    def _take_answers(self, expired: str, left: _Left, adopted: set[str]) -> None:
        """Take the answers left to the adopted tasks, as if their listeners sent them now."""
        publish = self._publish
        taken = 0
        entries = [entry for stream_entries in left.values() for entry in stream_entries]
        for entry_id, body in entries:
            try:
                entry = _answer_entry(body)
                if isinstance(entry, dict):  # a stop or a start (SharedRuns.take)
                    if self.control is not None and entry.get("t") in adopted:
                        self.control(entry)
                elif publish is not None and entry is not None and entry.task in adopted:
                    publish(entry)
                    taken += 1
            except Exception:  # one bad entry stops neither the others nor the engine
                logger.exception("ignoring entry %s of the answers left to %r", entry_id, expired)
        if taken:
            logger.info("took %d answer(s) left to the tasks of replica %r", taken, expired)

    def give_up(self, task_id: str) -> None:
        """Forget a task another replica drives now: no result is filed, nothing goes out."""
        core = self._core
        registered = core.workflows.queued.pop(task_id, None)  # a queued run held there now
        if registered is not None and registered.queued == task_id:
            registered.queued = None
        run = core.running.pop(task_id, None)
        if run is None:
            return
        run.registered.active.pop(run, None)
        for owing in core.owing.values():
            owing.pop(run, None)
        for waiting in core.event_waiters.values():
            waiting.discard(run)
        self._driver.let_go(run)
        logger.warning("task %s is driven by another replica now: this one let it go", task_id)

    async def check_held(self) -> None:
        """Give up the running and queued tasks held under another lease (after the lease
        was lost)."""
        lease = self._persistence.lease
        assert lease is not None
        for task_id in [*self._core.running, *self._core.workflows.queued]:
            holder = await self._store.lease_of(task_id)
            if holder == lease.name:
                continue
            # held elsewhere, or ended there (a task not stored yet is neither)
            if holder is not None or await self._store.finished_task(task_id) is not None:
                self.give_up(task_id)


async def kept(core: Core, persistence: Persistence, task_ids: Collection[str]) -> bool:
    """Wait until the state that the answers just handed to ``core`` for ``task_ids``
    caused is committed (or they changed nothing); False if the engine stops first.

    An answer taken from a Redis stream is acknowledged there only after this
    returned True: until then it stays owed to this replica, so that whoever takes
    its task over (or this replica, restarted) takes it again.
    """
    running = core.running
    while True:
        if core.frozen or not await persistence.caught_up():
            return False
        # a task held while what its last state caused goes out saves the answers
        # recorded meanwhile after that: one more round
        if not any(
            run is not None and run.dirty and run.committing and not run.gone
            for run in map(running.get, task_ids)
        ):
            return True
        await persistence.round_over()


#: The answers left to an expired lease's tasks: lease name -> (entry id, body) in its stream.
_Left = dict[str, list[tuple[str, bytes]]]

#: Least idle time of an answer read but not acknowledged by an expired lease's holder, for
#: the adopter to take it (the holder is gone: any positive time would do).
_LEFT_IDLE = timedelta(milliseconds=1)

#: Events kept in the shared stream (about): enough for a replica that fell behind.
EVENTS_KEPT = 10_000
#: How long one read of the shared stream waits for entries.
_FOLLOW_BLOCK = timedelta(seconds=5)
#: Event types every replica wants from the others: its ActionRelay follows where each
#: subscriber is connected.
ALWAYS_SHARED = frozenset({LISTENER_CONNECTED, LISTENER_DISCONNECTED})
#: How a replica's interest in every event type is stored.
_EVERY_TYPE = b"*"


class EventFanout:
    """The events of every replica for every replica's listeners, in order, and the
    changes each makes to subscribers, configs and definitions for the others.

    Each event this replica publishes that another replica wants is appended to the
    shared stream of events (a batch per round trip, in the order published, each
    batch once even when sent again after its answer was lost); every
    replica follows the stream from where it joined and hands the other replicas'
    events to ``show``: they reach its listeners and finish the steps of its tasks
    that wait for them, but start no workflow here (the replica that published one
    started those).

    **Interest.** An event nobody else wants is not sent. Each replica keeps its
    interest in Redis (the event types its listeners, observers and waiting steps
    want, or every type), stored whenever it changes, in the same step as the next
    batch, before the batch's events (its listener's ``connected`` announcement
    among them), and counted only while its lease lives. A replica filters a batch
    with the interest it knows, and the append is refused whole when the interest
    changed meanwhile: the replica reads the new one, filters again and retries. So
    an event published after another replica stored its interest (a listener
    connected there, see :meth:`announced`) reaches it. Event types a step of a
    workflow registered here waits for are always sent (the other replicas run the
    same workflows), as are listener announcements (:data:`ALWAYS_SHARED`).

    A replica whose lease lapsed (paused, or cut off from Redis) may miss the events
    the others publish once they read that its interest counts no more (they send
    them only for the replicas counted); when it holds its lease again it stores its
    interest again at once (:meth:`regained`), and gets what they publish from then on.
    """

    def __init__(
        self,
        streams: RedisStreams,
        *,
        replica: str,
        show: Callable[[Event], None],
        changed: Callable[[str, str, Any], None],
        interest: Callable[[], frozenset[str] | None] = lambda: None,
        awaited: Callable[[], frozenset[str]] = frozenset,
        lease: Callable[[], int] = lambda: 0,
        decided: Callable[[], int] | None = None,
    ) -> None:
        """``interest``: the event types wanted here (None: all); ``awaited``: those a step
        of a workflow registered here waits for; ``lease``: the lease's fencing token (a
        new token, a lease taken again, stores the interest again); ``decided``: the
        number of a call to Redis reading the interest's version (see
        :meth:`RedisConnection.ask_interests`) sent after everything that made an event
        published now (the commit of the state that emits it); by default the next call."""
        self._streams = streams
        self._stream = streams.event_stream()
        self._replica = replica
        self._show = show
        self._changed = changed
        self._interest = interest
        self._awaited = awaited
        self._lease = lease
        self._out: list[tuple[Event | bytes, int]] = []
        self._wake = trio.Event()
        #: This run's id and its last batch's number, for appending each batch once.
        self._run = secrets.token_hex(8)
        self._batches = 0
        self._decided = decided or (lambda: streams.store.interest_calls + 1)
        #: The version of the interest known here, and the others' (None: every type).
        self._version = -1
        self._elsewhere: frozenset[str] | None = frozenset()
        #: What is stored of this replica's interest, under which lease token.
        self._stored: tuple[frozenset[str] | None, int] | None = None
        #: Announcements asked for, and those done (see :meth:`announced`).
        self._asked = 0
        self._done = 0
        self._sent = trio.Event()
        self._stopped = False

    def wanted_elsewhere(self, message_type: str) -> bool:
        """Tell whether another replica may want events of ``message_type``, as far as
        known here (a batch's append checks that this is still the case)."""
        elsewhere = self._elsewhere
        return (
            elsewhere is None
            or message_type in elsewhere
            or message_type in ALWAYS_SHARED
            or message_type in self._awaited()
        )

    def send(self, event: Event) -> None:
        """Queue an event of this replica's for the others that want it (sent in order)."""
        self._out.append((event, self._decided()))
        self._wake.set()

    def send_change(self, kind: str, ident: str, value: Any) -> None:
        """Queue a change of this replica's (a subscriber's subscriptions, a config, a
        definition: None when deleted) for the others, which take it as it is (the store
        has it too)."""
        self._out.append(
            (orjson.dumps({"r": self._replica, "c": kind, "id": ident, "v": value}), 0)
        )
        self._wake.set()

    async def announced(self) -> None:
        """Wait until this replica's interest as it is now is stored in Redis: from then
        on, every replica sends the events it wants (a listener connected here gets what
        is published anywhere afterwards)."""
        if self._stored == (self._interest(), self._lease()):
            return
        self._asked += 1
        asked = self._asked
        self._wake.set()
        while self._done < asked and not self._stopped:
            await self._sent.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send this replica's events and show the others', until cancelled."""
        try:
            after = await self._streams.last_id(self._stream)
            await self._publish([])  # this replica's interest, before anything is published
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_out)
                nursery.start_soon(self._follow, after)
                task_status.started()
        finally:
            self._stopped = True  # nobody waits for an announcement any more
            self._sent.set()

    async def poll(self, period: float) -> None:
        """Read the replicas' interest every ``period`` seconds (:meth:`refresh`), until
        cancelled."""
        while True:
            await trio.sleep(period)
            await self.refresh()

    async def refresh(self) -> None:
        """Read the replicas' interest now (a replica whose lease expired counts no more),
        and store this replica's again if its lease was taken again meanwhile (see
        :meth:`regained`, which does so at once)."""
        version, interests = await self._streams.interests()
        self._learn(version, interests)
        if self._stored is not None and self._stored[1] != self._lease():
            self._wake.set()

    async def regained(self) -> None:
        """Store this replica's interest again now that its lease is held again (under a
        new token), and wait until it is stored.

        While the lease had lapsed, the other replicas counted this one's interest no
        more once they read the interest again, and sent the events they published
        meanwhile only for the replicas counted. Storing it again changes the interest's
        version: the next append of every other replica is refused, and filtered again
        with this replica counted.
        """
        await self.announced()

    async def _send_out(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._out = self._out, []
            asked = self._asked
            await self._publish(batch)
            self._done = asked
            self._sent.set()
            self._sent = trio.Event()

    async def _publish(self, batch: list[tuple[Event | bytes, int]]) -> None:
        """Store this replica's interest if it changed, and append what others want of
        ``batch``, filtered with the current interest of every replica.

        Where nothing is to be appended, no call is needed either when a call sent
        after every filtered event was decided read the version known here (the
        commit of the states that emit them, usually)."""
        mine = (self._interest(), self._lease())
        self._batches += 1  # the same number for each attempt: appended once
        interest = None
        if mine != self._stored:
            types = mine[0]
            interest = _EVERY_TYPE if types is None else orjson.dumps(sorted(types))
        while True:
            bodies, filtered = [], 0
            for item, decided in batch:
                if isinstance(item, bytes):
                    bodies.append(item)
                elif self.wanted_elsewhere(item.message_type):
                    body = _event_body(self._replica, item)
                    if body is not None:
                        bodies.append(body)
                else:
                    filtered = max(filtered, decided)
            if not bodies and interest is None:
                call, version = self._streams.store.interests_seen
                if not filtered or (call >= filtered and version == self._version):
                    return
            version, interests = await self._streams.publish_events(
                bodies,
                known=self._version,
                replica=self._replica,
                interest=interest,
                max_length=EVENTS_KEPT,
                run=self._run,
                batch=self._batches,
            )
            if interests is None:
                self._version = version
                if interest is not None:
                    self._stored = mine
                return
            self._learn(version, interests)

    def _learn(self, version: int, interests: dict[str, bytes]) -> None:
        """Take the replicas' interest as stored at ``version``."""
        elsewhere: set[str] = set()
        for name, stored in interests.items():
            if name == self._replica:
                continue
            if stored == _EVERY_TYPE:
                self._version, self._elsewhere = version, None
                return
            try:
                elsewhere.update(orjson.loads(stored))
            except orjson.JSONDecodeError:  # unreadable: take it as wanting every type
                logger.warning("the interest of replica %r is unreadable: %r", name, stored)
                self._version, self._elsewhere = version, None
                return
        self._version, self._elsewhere = version, frozenset(elsewhere)

    async def _follow(self, after: str) -> None:
        while True:
            entries = await self._streams.follow(self._stream, after, block=_FOLLOW_BLOCK)
            for entry_id, body in entries:
                after = entry_id
                try:
                    data = orjson.loads(body)
                    if data["r"] == self._replica:
                        continue
                    if "c" in data:
                        self._changed(data["c"], data["id"], data["v"])
                    else:
                        self._show(Event(data["t"], data["d"]))
                except Exception:  # one bad entry stops neither the others nor the engine
                    logger.exception("ignoring entry %s of the events stream", entry_id)


def _event_body(replica: str, event: Event) -> bytes | None:
    """Return an event as the shared stream carries it, or None (logged) if its data is not
    JSON: it then reaches this replica's listeners only."""
    try:  # read-only mappings (an event without data shares one) are written as objects
        return orjson.dumps({"r": replica, "t": event.message_type, "d": event.data}, default=dict)
    except TypeError as error:
        logger.error("event %s not sent to the other replicas: %s", event.message_type, error)
        return None


#: How long a subscriber's action may stay with a replica that read it but died before
#: passing it on, before another replica holding the subscriber's connection takes it.
ACTIONS_IDLE = timedelta(seconds=30)
#: Actions kept (about) in a subscriber's stream while it is connected nowhere.
ACTIONS_KEPT = 10_000


class ActionRelay:
    """Actions to subscribers connected to other replicas, answers to the replica driving.

    - An action (or abort) published here goes, for each subscriber of its
      message type without a connection to this replica, to that
      subscriber's stream; the replica holding the subscriber's connection
      reads the stream (a consumer group: each entry goes to one reader) and
      hands the action to its listener.
    - A subscriber that connects to another replica gets there the actions
      the tasks here still owe it (they are sent to its stream again, marked
      so: the replica it connected to passes on only those it did not pass
      on to that connection already, since this replica hears of the
      connection late, after its new actions may have reached it).
    - An answer that reaches this replica for a task another replica drives
      goes to the stream of that replica's lease (looked up in the same step
      as the append); the driving replica reads its stream and takes the
      answer as if its listener had sent it, and acknowledges it in Redis
      only once the state it caused is committed (:func:`kept`): a replica
      that dies before leaves it owed, and whoever takes the task over takes
      the answer with it. The stops and starts the store appends to that
      stream go to :attr:`control`.

    Delivery is at least once, as everywhere: a replica that takes a task
    over sends its current step's action again, to the subscribers that
    still owe it.
    """

    def __init__(
        self,
        streams: RedisStreams,
        *,
        replica: str,
        bus: Bus,
        core: Core,
        subscribers: SubscriberRegistry,
        publish: Callable[[Message], None],
        owed: Callable[[str], list[Action]],
        persistence: Persistence,
    ) -> None:
        self._streams = streams
        self._persistence = persistence
        self._owed = owed
        self._replica = replica
        self._bus = bus
        self._core = core
        self._subscribers = subscribers
        self._publish = publish
        self._actions: list[tuple[str, bytes]] = []
        self._answers: list[tuple[str, bytes]] = []
        #: Answers queued for other replicas, and those sent (they are sent in order).
        self._answers_queued = 0
        self._answers_sent = 0
        self._answers_gone = trio.Event()
        self._wake = trio.Event()
        self._delivering = False
        self._readers: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        #: Takes an entry of this replica's answer stream that is not an answer: a stop
        #: or the start of a queued run (SharedRuns.take).
        self.control: Callable[[dict[str, Any]], None] | None = None

    # ------------------------------------------------------------ seen here

    def observe(self, message: Message, addressed: Collection[str] | None = None) -> None:
        """See an action or abort published here for the ``addressed`` subscribers (None:
        every subscriber of its type): queue it for those connected elsewhere."""
        if self._delivering:
            return  # it came from another replica
        body: bytes | None = None
        for subscriber in self._subscribers.for_type(message.message_type):
            if addressed is not None and subscriber.id not in addressed:
                continue
            if self._bus.listener_of(subscriber.id) is None:
                body = body or orjson.dumps(message.to_json())
                self._actions.append((self._streams.action_stream(subscriber.id), body))
        if body is not None:
            self._wake.set()

    def send_answer(self, answer: Answer) -> None:
        """Queue an answer for the replica driving its task."""
        body = orjson.dumps({"s": answer.subscriber_id, "m": answer.to_json()})
        self._answers.append((answer.task, body))
        self._answers_queued += 1
        self._wake.set()

    def listeners_changed(self, event: Message) -> None:
        """See a listener connect or go away here (read its subscriber's actions, or stop),
        or a subscriber connect to another replica (send it what it is owed here)."""
        nursery = self._nursery
        subscriber_id = event.data.get("subscriber_id") if isinstance(event, Event) else None
        if nursery is None or not isinstance(subscriber_id, str):
            return
        connected = self._bus.listener_of(subscriber_id) is not None
        if (
            not connected
            and event.message_type == LISTENER_CONNECTED
            and self._subscribers.get(subscriber_id) is not None
        ):
            # it connected to another replica: what the tasks here owe it goes there, marked
            # as sent again (that replica may have passed it on to it already)
            for action in self._owed(subscriber_id):
                stream = self._streams.action_stream(subscriber_id)
                self._actions.append((stream, orjson.dumps({_AGAIN: action.to_json()})))
                self._wake.set()
        if connected and subscriber_id not in self._readers:
            scope = self._readers[subscriber_id] = trio.CancelScope()
            nursery.start_soon(self._read_actions, subscriber_id, scope)
        elif not connected and subscriber_id in self._readers:
            self._readers.pop(subscriber_id).cancel()

    # ------------------------------------------------------------ the trio side

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what is queued and read what is sent here, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._send_out)
            nursery.start_soon(self._read_answers)
            for listener in list(self._bus.listeners):
                if listener.subscriber_id is not None:
                    self.listeners_changed(
                        Event("connected", {"subscriber_id": listener.subscriber_id})
                    )
            task_status.started()

    async def _send_out(self) -> None:
        streams = self._streams
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            actions, self._actions = self._actions, []
            answers, self._answers = self._answers, []
            for stream, body in actions:
                await streams.append(stream, body, max_length=ACTIONS_KEPT)
            for task_id, body in answers:
                if await streams.send_answer(task_id, body) is None:
                    logger.debug("an answer for task %s: it is running nowhere", task_id)
                self._answers_sent += 1
            if answers:
                gone, self._answers_gone = self._answers_gone, trio.Event()
                gone.set()

    async def _read_actions(self, subscriber_id: str, scope: trio.CancelScope) -> None:
        from ._redis import SUBSCRIBER_GROUP  # only with a Redis store (coredis is optional)

        streams = self._streams
        stream = streams.action_stream(subscriber_id)
        #: The actions passed on to this connection of the subscriber (the latest only).
        passed: dict[tuple[str, str, str], None] = {}
        with scope:
            entries = await streams.owed(stream, SUBSCRIBER_GROUP, self._replica, idle=ACTIONS_IDLE)
            while True:
                for entry_id, body in entries:
                    try:
                        data = orjson.loads(body)
                        again = _AGAIN in data
                        message = message_from_json(data[_AGAIN] if again else data)
                        if isinstance(message, Action):
                            key = (message.message_type, message.task, message.step)
                            if again and key in passed:
                                continue  # this connection has it
                            passed[key] = None
                            if len(passed) > ACTIONS_KEPT:
                                del passed[next(iter(passed))]
                        self._deliver(subscriber_id, message)
                    except Exception:  # one bad entry stops neither the others nor the engine
                        logger.exception("ignoring entry %s of %s", entry_id, stream)
                await streams.ack(stream, SUBSCRIBER_GROUP, [entry for entry, _ in entries])
                entries = await streams.read(
                    stream, SUBSCRIBER_GROUP, self._replica, block=_FOLLOW_BLOCK
                )

    def _deliver(self, subscriber_id: str, message: Message) -> None:
        self._delivering = True
        try:
            self._bus.publish(message, subscribers=(subscriber_id,))
        finally:
            self._delivering = False

    async def _read_answers(self) -> None:
        from ._redis import DRIVER_GROUP  # only with a Redis store (coredis is optional)

        streams = self._streams
        stream = streams.answer_stream(self._replica)
        entries = await streams.owed(stream, DRIVER_GROUP, self._replica)
        while True:
            taken: set[str] = set()
            for entry_id, body in entries:
                try:
                    entry = _answer_entry(body)
                    if isinstance(entry, dict):  # a stop or a start (SharedRuns.take)
                        if self.control is not None:
                            self.control(entry)
                            if isinstance(entry.get("t"), str):
                                taken.add(entry["t"])
                    elif entry is not None and entry.task in self._core.running:
                        self._publish(entry)
                        taken.add(entry.task)
                except Exception:  # one bad entry stops neither the others nor the engine
                    logger.exception("ignoring entry %s of %s", entry_id, stream)
            if entries:
                if not await self._taken(taken):
                    return  # stopping: they stay owed here, for whoever takes the tasks
                await streams.ack(stream, DRIVER_GROUP, [entry for entry, _ in entries])
            entries = await streams.read(stream, DRIVER_GROUP, self._replica, block=_FOLLOW_BLOCK)

    async def _taken(self, task_ids: Collection[str]) -> bool:
        """Wait until the answers just published for ``task_ids`` are kept: the state they
        caused committed, those passed on (this replica's lease was in doubt) appended to
        another stream. False: the engine stops first."""
        relayed = self._answers_queued
        if task_ids and not await kept(self._core, self._persistence, task_ids):
            return False
        while self._answers_sent < relayed:
            await self._answers_gone.wait()
        return True


_ANSWERS = (ActionDone, ActionError, ActionInfo, ActionProgress)


def _answer_entry(body: bytes) -> dict[str, Any] | Answer | None:
    """Decode an entry of an answer stream: a stop or a start (its JSON, for
    ``SharedRuns.take``), an answer as its subscriber sent it, or None (a message that is
    not an answer)."""
    data = orjson.loads(body)
    if "c" in data:
        return cast("dict[str, Any]", data)
    answer = message_from_json(data["m"])
    if not isinstance(answer, _ANSWERS):
        return None
    return attrs.evolve(answer, subscriber_id=data["s"])


#: The key wrapping an action sent again to a subscriber's stream because the subscriber
#: connected to another replica (``{"again": <the action>}``): the replica reading the
#: stream does not pass it on to a connection it passed that action to already.
_AGAIN = "again"
