"""Task writes, each committed before what it causes goes out (an outbox).

When a task reaches a new state, its record is *staged* here together with
the *effects* that state causes (its action or event published, its command
started, its end announced). A crash must never publish what the store does
not hold, so effects go out only once the record is committed.

Where a commit is cheap (SQLite: a few microseconds) a staged record is
committed at once and effects follow at once. Where it is dear (a network
round trip: the store's ``group_commits``), one trio task, the committer,
takes everything staged since its last round, commits every task's latest
record in one transaction, and only then carries out the effects, in the
order they were staged: the steps of all tasks that settled meanwhile cost
one commit. A task whose write fails is reported to the engine (which fails
that task) and its effects of that round are dropped; the others go on.
Without a store nothing needs to wait: effects run at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from ._store import Store, TaskWrite

logger = logging.getLogger(__name__)

#: Scheduler passes the committer waits at most for more writes before it commits.
_MAX_GATHERING_PASSES = 16

#: What the committer does with a task whose write failed: (task id, error).
OnFailure = Callable[[str, Exception], None]


class Persistence:
    """Stage task writes and their effects; commit them in groups (see the module's doc)."""

    def __init__(self, store: Store | None) -> None:
        self._store = store
        #: Whether writes are gathered into group commits by the committer.
        self.grouped = store is not None and store.group_commits
        #: The latest staged record of each task (a record is a task's whole state).
        self._writes: dict[str, TaskWrite] = {}
        self._effects: list[tuple[str, Callable[[], object]]] = []
        #: Writes committed by flush() whose failure the committer still has to report.
        self._failed: dict[str, Exception] = {}
        self._committer: trio.lowlevel.Task | None = None
        self._pending = False
        self._closed = False
        #: Set when a round is over (and replaced by a new one).
        self._round_done = trio.Event()
        #: The tasks with effects staged, and those whose effects the round under way runs.
        self._owed: set[str] = set()
        self._in_round: set[str] = set()

    @property
    def durable(self) -> bool:
        """Whether effects wait for a commit (there is a store, and it is not closed)."""
        return self._store is not None and not self._closed

    def stage(self, write: TaskWrite) -> None:
        """Stage a task's new record; it replaces one of the same task not yet committed.

        Raises:
            Exception: whatever the store raised, when the write is committed at once.
        """
        if not self.durable or self._store is None:
            return
        if not self.grouped:
            self._store.commit([write])
            return
        self._writes[write.task_id] = write
        self._wake()

    def after(self, task_id: str, effect: Callable[[], object]) -> None:
        """Run ``effect`` once what is staged now is committed (at once if it is already).

        Once closed, effects are dropped: nothing a task causes goes out any more.
        """
        if self._closed:
            return
        if not (self._store is not None and self.grouped):
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
        """Commit what is staged now, at once (before a read of the store).

        The effects still wait for the committer, which runs them in order.
        """
        if self._writes and self._store is not None:
            writes, self._writes = self._writes, {}
            self._failed.update(_commit(self._store, list(writes.values())))

    def close(self) -> None:
        """Commit what is staged, drop the effects not carried out, and stage nothing more.

        For shutdown: state reached is kept; what it would have caused is
        done again after a restart (delivery is at least once).
        """
        self.flush()
        self._effects.clear()
        self._owed.clear()
        self._failed.clear()
        self._closed = True
        self._round_done.set()

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
                if len(self._writes) + len(self._effects) == staged:
                    break
                staged = len(self._writes) + len(self._effects)
                await trio.lowlevel.checkpoint()
            self._pending = False
            self._round(on_failure)

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
            for task_id, effect in effects:
                if task_id in failed:
                    continue
                try:
                    effect()
                except Exception as raised:  # one task's effect fails that task alone
                    logger.exception("task %s: what its state causes failed", task_id)
                    failed[task_id] = raised
            for task_id, error in failed.items():
                on_failure(task_id, error)
        finally:
            self._in_round = set()
            done, self._round_done = self._round_done, trio.Event()
            done.set()

    def _wake(self) -> None:
        committer, self._committer = self._committer, None
        if committer is not None:
            trio.lowlevel.reschedule(committer)
        else:
            self._pending = True


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
