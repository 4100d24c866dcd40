"""Everything the engine writes to and reads from its store; task writes first of all.

When a task reaches a new state, its record is *staged* here together with
the *effects* that state causes (its action or event published, its command
started, its end announced). A crash must never publish what the store does
not hold, so effects go out only once the record is committed (an outbox).

Where a commit is cheap (SQLite: a few microseconds) a staged record is
committed at once and effects follow at once. Where it is dear (a network
round trip: the store's ``group_commits``, and every asynchronous store),
one trio task, the committer, takes everything staged since its last round,
commits every task's latest record in one transaction, and only then
carries out the effects, in the order they were staged: the steps of all
tasks that settled meanwhile cost one commit. A task whose write fails is
reported to the engine (which fails that task) and its effects of that round
are dropped; the others go on. Without a store nothing needs to wait:
effects run at once.

:class:`Persistence` is the only caller of the store. It takes either a
synchronous :class:`~engine._store.Store` (SQLite: every write is made at
once, on the caller's stack) or an :class:`~engine._store.AsyncStore` (Redis).
With an asynchronous store:

- task writes are committed under the replica's lease (``owner`` and its
  fencing token), which :meth:`Persistence.keep_lease` renews in the
  engine's nursery and takes again when it was lost (Redis out of reach
  longer than the lease);
- the other writes (subscriptions, configs, schedule marks, definitions,
  task log entries, config models) are queued in order and applied by the
  committer before each round's task writes; :meth:`Persistence.written`
  waits until what was handed in is in the store and raises the first
  failure, so that an API call answers only once its change is kept;
- reads are coroutines (:meth:`Persistence.history` and the others); the
  synchronous reads raise :class:`~engine._errors.StoreError` naming the
  coroutine to use.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import attrs
import trio

from ._config import Config
from ._errors import ConfigConflict, EngineClosed, LeaseLost, StoreError, TaskTakenOver
from ._store import AsyncStore, Store, StoredState, TaskWrite

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Scheduler passes the committer waits at most for more writes before it commits.
_MAX_GATHERING_PASSES = 16

#: How long a replica's lease lasts unless renewed (renewed every third of it).
DEFAULT_LEASE = timedelta(seconds=10)

#: Failures of queued writes remembered for :meth:`Persistence.written`.
_FAILURES_KEPT = 256

#: What the committer does with a task whose write failed: (task id, error).
OnFailure = Callable[[str, Exception], None]

#: A queued write: what it is (for the log) and the call that makes it.
_Queued = tuple[int, str, Callable[[AsyncStore], Awaitable[object]]]


@attrs.define
class Lease:
    """The lease a replica writes its running tasks under (an asynchronous store)."""

    name: str
    ttl: timedelta
    #: The fencing token of the current acquisition (0: not acquired yet).
    token: int = 0
    #: Until when (trio's clock) the lease is surely ours: the time its last acquisition
    #: or renewal was asked for, plus ``ttl``. Past it (a pause, Redis out of reach),
    #: another replica may have taken its tasks over.
    surely_until: float = float("-inf")

    def held(self, began: float, token: int) -> None:
        """Record an acquisition or renewal asked for at ``began`` (trio's clock)."""
        self.token = token
        self.surely_until = began + self.ttl.total_seconds()

    @property
    def in_doubt(self) -> bool:
        """Tell whether the lease may have expired since it was last renewed."""
        return trio.current_time() >= self.surely_until


def is_async_store(store: object) -> bool:
    """Tell whether ``store`` is an :class:`AsyncStore` (its methods are coroutines)."""
    return inspect.iscoroutinefunction(getattr(store, "load", None))


class _WriteMethods:
    """The writes other than task writes, each made or queued by ``_write``."""

    _store: Store | None
    _models: tuple[list[dict[str, Any]], list[dict[str, Any]]]

    def _write(self, what: str, call: Callable[[Any], Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def save_config(self, config: Config) -> None:
        """Store a config (replacing one with the same id)."""
        self._write(f"config {config.id!r}", lambda s: s.save_config(config))

    def delete_config(self, config_id: str) -> None:
        """Forget a config."""
        self._write(f"the deletion of config {config_id!r}", lambda s: s.delete_config(config_id))

    async def change_config_if(
        self, config_id: str, config: Config | None, revision: str, stored: Callable[[], None]
    ) -> None:  # pragma: no cover - the persistence's
        raise NotImplementedError

    def save_subscriber(self, subscriber_id: str, subscriptions: list[dict[str, Any]]) -> None:
        """Store all of a subscriber's subscriptions."""
        self._write(
            f"subscriber {subscriber_id!r}",
            lambda s: s.save_subscriber(subscriber_id, subscriptions),
        )

    def save_subscription(self, subscriber_id: str, subscription: dict[str, Any]) -> None:
        """Store one subscription of a subscriber."""
        self._write(
            f"a subscription of {subscriber_id!r}",
            lambda s: s.save_subscription(subscriber_id, subscription),
        )

    def delete_subscription(self, subscriber_id: str, message_type: str) -> None:
        """Forget one subscription; the subscriber stays."""
        self._write(
            f"the removal of a subscription of {subscriber_id!r}",
            lambda s: s.delete_subscription(subscriber_id, message_type),
        )

    def delete_subscriber(self, subscriber_id: str) -> None:
        """Forget a subscriber and its subscriptions."""
        self._write(
            f"the removal of subscriber {subscriber_id!r}",
            lambda s: s.delete_subscriber(subscriber_id),
        )

    def save_schedule_mark(self, key: tuple[str, str, str], moment: datetime) -> None:
        """Store the last time a schedule handled (workflow, cron, time zone)."""
        self._write(f"a schedule mark of {key[0]!r}", lambda s: s.save_schedule_mark(key, moment))

    def save_definition(self, definition_id: str, record: bytes) -> None:
        """Store a run-time definition (or a change to a built-in one), as JSON."""
        self._write(
            f"definition {definition_id!r}", lambda s: s.save_definition(definition_id, record)
        )

    def delete_definition(self, definition_id: str) -> None:
        """Forget a run-time definition."""
        self._write(
            f"the deletion of definition {definition_id!r}",
            lambda s: s.delete_definition(definition_id),
        )

    def add_log_entry(self, task_id: str, entry: bytes, *, keep: int) -> None:
        """Append an entry (JSON) to a task's log, keeping only its latest ``keep`` entries."""
        self._write(
            f"a log entry of task {task_id}", lambda s: s.add_log_entry(task_id, entry, keep=keep)
        )

    def load_config_models(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return the stored config kinds and validation settings (an asynchronous store's:
        as read at open)."""
        if self._store is not None:
            return self._store.load_config_models()
        return self._models

    def save_config_kinds(self, kinds: Iterable[Mapping[str, Any]]) -> None:
        """Store config kinds (replacing those with the same fqn)."""
        kept = [dict(kind) for kind in kinds]
        self._write("config kinds", lambda s: s.save_config_kinds(kept))

    def save_config_validation(self, validation: Mapping[str, Any]) -> None:
        """Store a config's validation setting (replacing the one with the same id)."""
        kept = dict(validation)
        self._write(
            f"the validation setting of {kept.get('id')!r}",
            lambda s: s.save_config_validation(kept),
        )

    def delete_config_validation(self, config_id: str) -> None:
        """Forget a config's validation setting."""
        self._write(
            f"the removal of the validation setting of {config_id!r}",
            lambda s: s.delete_config_validation(config_id),
        )


class _ReadMethods:
    """The reads of the store: coroutines for any store, synchronous ones for SQLite."""

    _store: Store | None
    _async: AsyncStore | None
    _handed_in: int
    _closed: bool
    _round_done: trio.Event
    before_read: Callable[[], object]

    def flush(self) -> None:  # pragma: no cover - the persistence's
        raise NotImplementedError

    async def _reached(self, upto: int) -> bool:  # pragma: no cover - the persistence's
        raise NotImplementedError

    def _sync(self, use: str) -> Store:
        """Return the synchronous store, after carrying out and committing what is decided."""
        if self._async is not None:
            raise StoreError(f"the store answers asynchronously: use {use}")
        assert self._store is not None
        self.before_read()
        self.flush()
        return self._store

    async def _settled_store(self) -> Store | AsyncStore:
        """Return the store, once everything decided so far is written to it."""
        if self._async is None:
            assert self._store is not None
            self.before_read()
            self.flush()
            return self._store
        await self._quietly_written()
        return self._async

    async def _quietly_written(self) -> None:
        self.before_read()
        await self._reached(self._handed_in)

    async def caught_up(self) -> bool:
        """Wait until everything decided so far, task writes included, is in the store.

        Returns False when the engine is stopping (what it was to write may not be
        written). A replica acknowledges the answers it takes from Redis only once
        this returns True after it took them: what they caused is kept by then.
        """
        self.before_read()
        if self._closed:
            return False
        return await self._reached(self._handed_in) and not self._closed

    async def round_over(self) -> None:
        """Wait until the committer's round under way (or its next one) is over."""
        await self._round_done.wait()

    def history_now(self, use: str, **filters: Any) -> list[dict[str, Any]]:
        """Return finished tasks, newest first (a synchronous store; ``use`` names the
        coroutine to call instead with an asynchronous one)."""
        return self._sync(use).history(**filters)

    def finished_task_now(self, task_id: str, use: str) -> dict[str, Any] | None:
        """Return one finished task, or None (a synchronous store, see :meth:`history_now`)."""
        return self._sync(use).finished_task(task_id)

    def task_ids_now(self, prefix: str, *, limit: int, use: str) -> list[str]:
        """Return task ids that start with ``prefix`` (a synchronous store)."""
        return self._sync(use).task_ids(prefix, limit=limit)

    def task_log_now(self, task_id: str, use: str) -> list[dict[str, Any]]:
        """Return a task's log entries, oldest first (a synchronous store)."""
        return self._sync(use).task_log(task_id)

    async def history(self, **filters: Any) -> list[dict[str, Any]]:
        """Return finished tasks, newest first, filtered (see :meth:`Store.history`)."""
        store = await self._settled_store()
        return await _maybe(store.history(**filters))

    async def finished_task(self, task_id: str) -> dict[str, Any] | None:
        """Return one finished task, or None."""
        store = await self._settled_store()
        return await _maybe(store.finished_task(task_id))

    async def task_ids(self, prefix: str, *, limit: int) -> list[str]:
        """Return up to ``limit`` ids of running or finished tasks that start with ``prefix``."""
        store = await self._settled_store()
        return await _maybe(store.task_ids(prefix, limit=limit))

    async def task_log(self, task_id: str) -> list[dict[str, Any]]:
        """Return a task's log entries, oldest first."""
        store = await self._settled_store()
        return await _maybe(store.task_log(task_id))

    async def running_task(self, task_id: str) -> dict[str, Any] | None:
        """Return the record of a task running on another engine sharing an asynchronous
        store, or None (and always None for a synchronous store: one engine uses it)."""
        if self._async is None:
            return None
        return await self._async.running_task(task_id)

    async def prune(self, before: datetime) -> int:
        """Delete finished tasks that ended before ``before``; return how many."""
        store = await self._settled_store()
        return await _maybe(store.prune(before))

    @property
    def retention(self) -> timedelta | None:
        """How long the store keeps finished tasks (None: no store)."""
        store = self._store if self._store is not None else self._async
        return None if store is None else store.retention


class Persistence(_WriteMethods, _ReadMethods):
    """Stage task writes and their effects, make the other writes, read (see the module's doc).

    Args:
        store: a synchronous or an asynchronous store, or None (nothing kept).
        lease: the replica's lease, for an asynchronous store.
    """

    def __init__(self, store: Store | AsyncStore | None, *, lease: Lease | None = None) -> None:
        self._async: AsyncStore | None = None
        self._store: Store | None = None
        #: The replica's lease (an asynchronous store only).
        self.lease: Lease | None = None
        if is_async_store(store):
            self._async = cast("AsyncStore", store)
            self.lease = lease or Lease("phasebus", DEFAULT_LEASE)
        else:
            self._store = cast("Store | None", store)
            self.lease = None
        #: Whether writes are gathered into group commits by the committer.
        self.grouped = self._async is not None or (
            self._store is not None and self._store.group_commits
        )
        #: Called before a read of the store (the engine carries out what it decided).
        self.before_read: Callable[[], object] = _nothing
        #: Called with a task another replica took over (its write was refused for that):
        #: the engine forgets it. Without it, the task fails like any refused write.
        self.on_taken: Callable[[str], None] | None = None
        #: Awaited once a lost lease is held again: the engine stores its interest in
        #: the others' events again, and gives up the tasks another replica took over
        #: meanwhile.
        self.on_regained: Callable[[], Awaitable[None]] | None = None
        #: Whether writes are made: there is a store, and it is not closed.
        self._keeping = self._store is not None or self._async is not None
        #: The latest staged record of each task (a record is a task's whole state).
        self._writes: dict[str, TaskWrite] = {}
        self._effects: list[tuple[str, Callable[[], object]]] = []
        #: Writes committed by flush() whose failure the committer still has to report.
        self._failed: dict[str, Exception] = {}
        self._committer: trio.lowlevel.Task | None = None
        self._pending = False
        self._closed = False
        self._in_round_now = False
        #: Set when a round is over (and replaced by a new one).
        self._round_done = trio.Event()
        #: The tasks with effects staged, and those whose effects the round under way runs.
        self._owed: set[str] = set()
        self._in_round: set[str] = set()
        # an asynchronous store: the queued writes, and how far writing got
        self._queue: deque[_Queued] = deque()
        self._handed_in = 0
        self._applied = 0
        self._failures: deque[tuple[int, Exception]] = deque(maxlen=_FAILURES_KEPT)
        self._models: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        #: Set once aclose is over (what it could write is written).
        self._aclosed = trio.Event()
        #: Whether the effects being carried out now were staged before a commit that just
        #: returned (an asynchronous store's round with task writes).
        self.after_commit = False

    @property
    def durable(self) -> bool:
        """Whether effects wait for a commit (there is a store, and it is not closed)."""
        return self._keeping

    @property
    def asynchronous(self) -> bool:
        """Whether the store is an asynchronous one (its reads are coroutines)."""
        return self._async is not None

    @property
    def closed(self) -> bool:
        """Whether nothing is written any more (the engine is stopping)."""
        return self._closed

    # ------------------------------------------------------------ opening

    async def open(self) -> StoredState:
        """Return what the store holds; for an asynchronous store, take the lease first.

        Raises:
            StoreError: the lease is held by another replica (past its time to expire).
        """
        if self._async is None:
            assert self._store is not None
            return self._store.load()
        await self._acquire()
        assert self.lease is not None
        state = await self._async.load(lease=self.lease.name)
        self._models = await self._async.load_config_models()
        return state

    async def _acquire(self) -> None:
        store, lease = self._async, self.lease
        assert store is not None
        assert lease is not None
        ttl = lease.ttl.total_seconds()
        give_up = trio.current_time() + 2 * ttl + 1
        told = False
        while True:
            began = trio.current_time()
            token = await store.acquire_lease(lease.name, lease.ttl)
            if token is not None:
                lease.held(began, token)
                logger.info("holding the lease %r (fencing token %d)", lease.name, token)
                return
            if trio.current_time() > give_up:
                raise StoreError(
                    f"the lease {lease.name!r} is held by another replica: give each replica"
                    " a name of its own (phasebus serve --replica NAME)"
                )
            if not told:
                logger.warning(
                    "the lease %r is held (a replica of that name runs, or its last run"
                    " stopped without giving it up): waiting until it expires",
                    lease.name,
                )
                told = True
            await trio.sleep(ttl / 4)

    async def keep_lease(self) -> None:
        """Renew the lease every third of its time; take it again when it was lost.

        Run it in the engine's nursery (an asynchronous store only).
        """
        store, lease = self._async, self.lease
        assert store is not None
        assert lease is not None
        while True:
            await trio.sleep(lease.ttl.total_seconds() / 3)
            token, began = lease.token, trio.current_time()
            if await store.renew_lease(lease.name, token, lease.ttl):
                lease.held(began, token)
            else:
                logger.error(
                    "the lease %r was lost (not renewed in time): taking it again", lease.name
                )
                await self._regain(token)

    async def _regain(self, lost: int) -> None:
        """Take the lease again after the acquisition with the token ``lost`` ended."""
        store, lease = self._async, self.lease
        assert store is not None
        assert lease is not None
        while lease.token == lost:
            began = trio.current_time()
            token = await store.acquire_lease(lease.name, lease.ttl)
            if token is not None:
                lease.held(began, token)
                logger.warning("holding the lease %r again (fencing token %d)", lease.name, token)
                if self.on_regained is not None:
                    await self.on_regained()
                return
            await trio.sleep(lease.ttl.total_seconds() / 4)

    async def claim_firing(
        self, workflow: str, cron: str, timezone: str, planned: datetime
    ) -> bool:
        """Take a schedule's firing at ``planned``: True for exactly one of the engines
        sharing an asynchronous store (always True for a synchronous one)."""
        if self._async is None:
            return True
        return await self._async.claim_firing(workflow, cron, timezone, planned)

    async def ready(self) -> bool:
        """Tell whether the store answers now (always, for a synchronous store)."""
        if self._async is None:
            return True
        return await self._async.check()

    # ------------------------------------------------------------ task writes

    def stage(self, write: TaskWrite) -> None:
        """Stage a task's new record; it replaces one of the same task not yet committed.

        Raises:
            Exception: whatever the store raised, when the write is committed at once.
        """
        if not self.durable:
            return
        if not self.grouped:
            assert self._store is not None
            self._store.commit([write])
            return
        self._writes[write.task_id] = write
        self._handed_in += 1
        self._wake()

    def after(self, task_id: str, effect: Callable[[], object]) -> None:
        """Run ``effect`` once what is staged now is committed (at once if it is already).

        Once closed, effects are dropped: nothing a task causes goes out any more.
        """
        if self._closed:
            return
        if not (self.grouped and self.durable):
            effect()
            return
        self._effects.append((task_id, effect))
        self._owed.add(task_id)
        self._wake()

    async def settled(self, task_id: str) -> None:
        """Wait until every effect staged so far for the task has been carried out."""
        while task_id in self._owed or task_id in self._in_round:
            await self._round_done.wait()

    def flush(self) -> None:
        """Commit what is staged now, at once (before a read of a synchronous store).

        The effects still wait for the committer, which runs them in order. An
        asynchronous store's writes are the committer's alone: nothing happens.
        """
        if self._writes and self._store is not None:
            writes, self._writes = self._writes, {}
            self._failed.update(_commit(self._store, list(writes.values())))

    def close(self) -> None:
        """Commit what is staged, drop the effects not carried out, and stage nothing more.

        For shutdown: state reached is kept; what it would have caused is
        done again after a restart (delivery is at least once). An
        asynchronous store's writes are made by :meth:`aclose`.
        """
        self.flush()
        self._effects.clear()
        self._owed.clear()
        self._failed.clear()
        self._closed = True
        self._keeping = False
        done, self._round_done = self._round_done, trio.Event()
        done.set()

    async def aclose(self) -> None:
        """Make the writes still queued or staged, then give the lease up (asynchronous store).

        Call it after :meth:`close`, shielded and bounded in time: what is
        not written is done again after a restart, from the last state kept.
        """
        store, lease = self._async, self.lease
        if store is None or lease is None:
            return
        try:
            while self._in_round_now:  # the committer puts back what it could not write
                await self._round_done.wait()
            await self._apply_queued(self._handed_in)
            writes, self._writes = self._writes, {}
            if writes and lease.token:
                await self._commit_async(list(writes.values()))
            self._applied = self._handed_in
            if lease.token:
                await store.release_lease(lease.name, lease.token)
                logger.info("gave the lease %r up", lease.name)
        finally:
            self._aclosed.set()

    async def serve(self, on_failure: OnFailure) -> None:
        """Commit and carry out what is staged, round after round, until cancelled."""
        me = trio.lowlevel.current_task()
        while True:
            if not self._pending:
                self._committer = me
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            # Let the tasks run that have something to stage, pass after pass, while
            # more comes (answers arrive one per listener turn): one commit then
            # covers them all. A task waiting for its commit stages nothing more,
            # so a quiet engine commits after one pass.
            staged = -1
            for _ in range(_MAX_GATHERING_PASSES):
                if len(self._writes) + len(self._effects) + len(self._queue) == staged:
                    break
                staged = len(self._writes) + len(self._effects) + len(self._queue)
                await trio.lowlevel.checkpoint()
            self._pending = False
            if self._async is None:
                self._round(on_failure)
            else:
                await self._round_async(on_failure)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._committer = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _round(self, on_failure: OnFailure) -> None:
        writes, self._writes = self._writes, {}
        effects, self._effects = self._effects, []
        self._in_round, self._owed = self._owed, set()
        failed, self._failed = self._failed, {}
        try:
            if self._closed:
                return
            if writes and self._store is not None:
                failed.update(_commit(self._store, list(writes.values())))
            self._carry_out(effects, failed, on_failure)
        finally:
            self._in_round = set()
            done, self._round_done = self._round_done, trio.Event()
            done.set()

    async def _round_async(self, on_failure: OnFailure) -> None:
        writes, self._writes = self._writes, {}
        effects, self._effects = self._effects, []
        self._in_round, self._owed = self._owed, set()
        upto = self._handed_in
        self._in_round_now = True
        try:
            if self._closed:
                self._writes = {**writes, **self._writes}  # for aclose
                return
            await self._apply_queued(upto)
            failed = await self._commit_async(list(writes.values())) if writes else {}
            self._applied = max(self._applied, upto)
            if not self._closed:  # the engine may have stopped during the commit
                self.after_commit = bool(writes)
                try:
                    self._carry_out(effects, failed, on_failure)
                finally:
                    self.after_commit = False
        except BaseException:
            self._writes = {**writes, **self._writes}  # written at close, if at all
            raise
        finally:
            self._in_round_now = False
            self._in_round = set()
            done, self._round_done = self._round_done, trio.Event()
            done.set()

    def _carry_out(
        self,
        effects: list[tuple[str, Callable[[], object]]],
        failed: dict[str, Exception],
        on_failure: OnFailure,
    ) -> None:
        for task_id, effect in effects:
            if task_id in failed:
                continue
            try:
                effect()
            except Exception as raised:  # one task's effect fails that task alone
                logger.exception("task %s: what its state causes failed", task_id)
                failed[task_id] = raised
        for task_id, error in failed.items():
            if isinstance(error, TaskTakenOver) and self.on_taken is not None:
                self.on_taken(task_id)
            else:
                on_failure(task_id, error)

    async def _commit_async(self, writes: Sequence[TaskWrite]) -> dict[str, Exception]:
        """Commit writes under the lease, in one round trip; if that fails, one by one."""
        store, lease = self._async, self.lease
        assert store is not None
        assert lease is not None
        while True:
            token = lease.token
            try:
                await store.commit(writes, owner=lease.name, fence=token)
            except LeaseLost as error:
                if await store.renew_lease(lease.name, token, lease.ttl):
                    break  # the lease is ours: a task is held under another one
                logger.error("task writes refused (%s): taking the lease again", error)
                await self._regain(token)
                continue
            except Exception:
                break
            return {}
        failed: dict[str, Exception] = {}
        for write in writes:  # find out whose write it was: the others still count
            try:
                await store.commit([write], owner=lease.name, fence=lease.token)
            except LeaseLost as refused:
                holder = await store.lease_of(write.task_id)
                if holder != lease.name:  # held under another lease, or ended there
                    logger.warning(
                        "task %s was taken over by another replica (%s)", write.task_id, refused
                    )
                    taken = f"task {write.task_id} was taken over by another replica: {refused}"
                    failed[write.task_id] = TaskTakenOver(taken)
                else:
                    logger.error("cannot store task %s: %s", write.task_id, refused)
                    failed[write.task_id] = refused
            except Exception as error:
                logger.error("cannot store task %s: %s", write.task_id, error)
                failed[write.task_id] = error
        return failed

    def _wake(self) -> None:
        committer, self._committer = self._committer, None
        if committer is not None:
            trio.lowlevel.reschedule(committer)
        else:
            self._pending = True

    # ------------------------------------------------------------ other writes

    def _write(self, what: str, call: Callable[[Any], Any]) -> None:
        """Make a write now (synchronous store) or queue it for the committer."""
        if self._closed:
            return
        if self._store is not None:
            call(self._store)
        elif self._async is not None:
            self._handed_in += 1
            self._queue.append((self._handed_in, what, call))
            self._wake()

    async def change_config_if(
        self, config_id: str, config: Config | None, revision: str, stored: Callable[[], None]
    ) -> None:
        """Store a config (None: delete it) only if the store holds it at ``revision``,
        checked in the same step as the write (an asynchronous store, which several
        engines may share); wait until that is done.

        The change is queued in order with the other writes; ``stored`` is
        called once the store keeps it, even if the caller stopped waiting.

        Raises:
            ConfigConflict: the store holds another revision (nothing changed).
            StoreError: the write failed.
            EngineClosed: the engine stopped before the change was stored.
        """
        if self._closed or self._async is None:
            raise EngineClosed(f"the engine is stopping: config {config_id!r} not changed")
        refused: list[ConfigConflict] = []

        async def change(store: AsyncStore) -> None:
            try:
                if config is None:
                    await store.delete_config(config_id, if_revision=revision)
                else:
                    await store.save_config(config, if_revision=revision)
            except ConfigConflict as conflict:  # an answer, not a failure of the store
                refused.append(conflict)
                return
            stored()

        self._write(f"config {config_id!r} at revision {revision!r}", change)
        seq = self._handed_in
        if not await self._reached(seq):
            raise EngineClosed("the engine stopped before the change was stored")
        if refused:
            raise refused[0]
        for failed, error in self._failures:
            if failed == seq:
                raise StoreError(f"the change was not stored: {error}") from error

    async def _apply_queued(self, upto: int) -> None:
        store = self._async
        assert store is not None
        queue = self._queue
        while queue and queue[0][0] <= upto:
            seq, what, call = queue[0]
            try:
                await call(store)
            except Exception as error:
                logger.error("cannot store %s: %s", what, error)
                self._failures.append((seq, error))
            queue.popleft()  # not before it was made: a cancelled write is made at close

    def mark(self) -> int:
        """Return how many writes were handed in so far (for :meth:`written`)."""
        return self._handed_in

    async def written(self, since: int = 0) -> None:
        """Wait until every write handed in so far is in the store.

        Raises:
            StoreError: a write handed in after the :meth:`mark` ``since``
                failed (not for task writes: their failure fails the task).
            EngineClosed: the engine stopped before the writes could be made.
        """
        if self._async is None:
            return  # written at once, on the caller's stack
        self.before_read()
        upto = self._handed_in
        if not await self._reached(upto):
            raise EngineClosed("the engine stopped before the change was stored")
        for seq, error in self._failures:
            if since < seq <= upto:
                raise StoreError(f"the change was not stored: {error}") from error

    async def _reached(self, upto: int) -> bool:
        """Wait until the writes up to ``upto`` are made; False if the engine stopped first
        and its last writes at close did not reach them."""
        while self._applied < upto:
            if self._closed:
                await self._aclosed.wait()
                return self._applied >= upto
            await self._round_done.wait()
        return True


async def _maybe(value: Awaitable[T] | T) -> T:
    """Return ``value``, awaited when it is awaitable (an asynchronous store's answer)."""
    if inspect.isawaitable(value):
        return cast("T", await value)
    return value


def _nothing() -> None:
    pass


def _commit(store: Store, writes: Sequence[TaskWrite]) -> dict[str, Exception]:
    """Commit writes in one transaction; if that fails, one by one. Return the failures."""
    try:
        store.commit(writes)
    except Exception:
        failed: dict[str, Exception] = {}
        for write in writes:  # find out whose write it was: the others still count
            try:
                store.commit([write])
            except Exception as error:
                logger.error("cannot store task %s: %s", write.task_id, error)
                failed[write.task_id] = error
        return failed
    return {}
