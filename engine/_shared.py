"""Runs across the servers sharing one Redis store: admitted, stopped and listed there.

:class:`SharedRuns` is the trio side of three promises that hold across
servers (the core, :mod:`engine._core`, keeps deciding without I/O):

- **surpass weighs every server's runs**: the core asks for a run of a
  ``skip``, ``wait`` or ``replace`` workflow with an
  :class:`~engine._intents.Admit` intent; :meth:`SharedRuns.admit` carries
  it to the store, which decides atomically over the workflow's runs on
  every server (:meth:`engine._redis.SharedRunsMethods.admit`), and hands
  the verdict back to the core as a fact. A queued run is started when the
  store says so (a ``start`` entry in the answer stream of its lease), and
  the runs a ``replace`` ends are stopped through the same road.
- **a stop reaches the server driving the task** (:meth:`SharedRuns.stop`):
  the request goes to the answer stream of the task's lease, looked up in
  the same atomic step, and is kept until the task is filed, so that the
  server taking the lease's tasks over takes the stop too
  (:meth:`SharedRuns.take_stops`).
- **every server's running and queued tasks are listed**
  (:meth:`SharedRuns.elsewhere`), from the store's last committed state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._admission import StartResult, ask, asks_store
from ._errors import EngineClosed, LeaseLost, UnknownTaskError
from ._results import TaskInfo, queued_infos, stored_task_info

if TYPE_CHECKING:
    from ._core import Core
    from ._driver import Driver
    from ._intents import Admit
    from ._persistence import Persistence
    from ._workflows import WorkflowTable

logger = logging.getLogger(__name__)

#: How often a stop waiting for its task's end looks at the store (seconds).
_END_POLL = 0.05


class RunsStore(Protocol):
    """What a store shared by servers offers for their runs (the Redis store does)."""

    async def admit(
        self,
        workflow: str,
        task_id: str,
        surpass: str,
        *,
        owner: str,
        fence: int,
        records: tuple[bytes, bytes],
    ) -> tuple[str, tuple[str, ...]]: ...

    async def request_stop(
        self, task_id: str, reason: str, *, here: str = ""
    ) -> tuple[str, str | None]: ...

    async def stop_requests(self, task_ids: list[str]) -> dict[str, dict[str, Any]]: ...

    async def running_tasks(self) -> list[dict[str, Any]]: ...

    async def finished_task(self, task_id: str) -> dict[str, Any] | None: ...


def shares_runs(store: object) -> bool:
    """Tell whether ``store`` weighs, stops and lists the runs of every server sharing it."""
    return callable(getattr(store, "admit", None)) and callable(
        getattr(store, "request_stop", None)
    )


class SharedRuns:
    """Admissions, stops and listings of runs across servers (see the module's doc)."""

    def __init__(
        self,
        *,
        core: Core,
        driver: Driver,
        persistence: Persistence,
        store: RunsStore,
        nursery: trio.Nursery,
    ) -> None:
        self._core = core
        self._driver = driver
        self._persistence = persistence
        self._store = store
        self._nursery = nursery
        #: Runs asked for whose caller waits for the verdict: id -> (set when known, verdict).
        self._waiting: dict[str, tuple[trio.Event, list[StartResult]]] = {}
        #: Stops that reached this server before the verdict on their run (another server
        #: replaced it, or stopped it, as soon as the store admitted it): id -> the entry.
        self._early: dict[str, Mapping[str, Any]] = {}

    # ------------------------------------------------------------ admission

    def admit(self, intent: Admit) -> None:
        """Carry a run asked for to the store (the driver's handler of ``Admit``)."""
        self._nursery.start_soon(self._admit, intent)

    async def _admit(self, intent: Admit) -> None:
        lease = self._persistence.lease
        assert lease is not None
        verdict: str = "error"
        names: tuple[str, ...] = ("the engine stopped first",)
        while not self._core.frozen:
            token = lease.token
            try:
                verdict, names = await self._store.admit(
                    intent.workflow,
                    intent.task_id,
                    intent.surpass,
                    owner=lease.name,
                    fence=token,
                    records=intent.records,
                )
            except LeaseLost:
                # the lease is being taken again (keep_lease): ask under the new token
                while lease.token == token and not self._core.frozen:
                    await trio.sleep(lease.ttl.total_seconds() / 8)
                continue
            except Exception as error:  # a run that cannot be decided is not started
                logger.exception("cannot decide on a run of %s", intent.workflow)
                verdict, names = "error", (f"{type(error).__name__}: {error}",)
            break
        result = self._core.admitted(intent.task_id, verdict, names, trio.current_time())
        early = self._early.pop(intent.task_id, None)
        if early is not None:  # it is known now: stopped (if it started or was queued)
            self.take(early)
        self._driver.poke()
        waiting = self._waiting.pop(intent.task_id, None)
        if waiting is not None:
            waiting[1].append(result)
            waiting[0].set()

    def expect(self, task_id: str) -> None:
        """Keep the verdict on a run asked for now, for :meth:`decision`."""
        self._waiting[task_id] = (trio.Event(), [])

    async def decision(self, task_id: str) -> StartResult:
        """Wait for the verdict on a run :meth:`expect`\\ ed.

        Raises:
            EngineClosed: the engine stopped first.
        """
        done, verdict = self._waiting[task_id]
        await done.wait()
        if not verdict:
            raise EngineClosed(f"the engine stopped before the run {task_id} was decided")
        return verdict[0]

    def close(self) -> None:
        """Wake everyone waiting for a verdict (the engine stops)."""
        waiting, self._waiting = self._waiting, {}
        for done, _ in waiting.values():
            done.set()

    # ------------------------------------------------------------ stops and starts

    def take(self, entry: Mapping[str, Any]) -> None:
        """Take an entry of this server's answer stream that is not an answer: a stop asked
        through any server (or by a replacing run), or the start of a queued run."""
        kind, task_id = entry.get("c"), entry.get("t")
        now = trio.current_time()
        if kind == "stop" and task_id in self._core.asking:
            self._early[task_id] = entry  # taken with the verdict (see _admit)
        elif kind == "stop" and isinstance(task_id, str):
            why = entry.get("why")
            replaced = bool(entry.get("r"))
            if self._core.stop(
                task_id, why if isinstance(why, str) else None, now, replaced=replaced
            ):
                logger.info("task %s: stopping it, as asked through the store", task_id)
        elif kind == "start" and isinstance(task_id, str):
            self._core.start_queued(task_id, now)
        else:
            logger.warning("ignoring an entry of the answer stream: %r", dict(entry))
        self._driver.poke()

    async def take_stops(self, task_ids: Iterable[str]) -> None:
        """Stop the tasks taken up here (adopted, or resumed) whose stop was asked for
        before (the stream entry may have gone to the server that held them)."""
        for entry in (await self._store.stop_requests(list(task_ids))).values():
            self.take(entry)

    async def keep_stop(self, task_id: str, reason: str, *, wait: float) -> bool:
        """Keep in the store the stop of a task this server drives (or holds queued), so
        that the server taking its tasks over stops it too if this one dies before the
        end is stored. Return whether it was kept within ``wait`` seconds; if not, it is
        kept once the store answers (the write goes on in this server's nursery)."""
        lease = self._persistence.lease
        assert lease is not None
        kept = trio.Event()

        async def keep() -> None:
            try:
                await self._store.request_stop(task_id, reason, here=lease.name)
            except Exception as error:  # nothing kept: the task stops here all the same
                logger.warning(
                    "task %s: its stop could not be kept in the store: %s", task_id, error
                )
            else:
                kept.set()

        self._nursery.start_soon(keep)
        with trio.move_on_after(wait):
            await kept.wait()
        return kept.is_set()

    async def stop(self, task_id: str, reason: str, *, wait: float) -> tuple[str, str | None]:
        """Ask the server driving a task to stop it; wait up to ``wait`` s for its end.

        Return what happened, and the lease the request went to:
        ``stopped`` (it ended stopped), ``ended`` (it had ended, or ended
        otherwise before the request reached it), ``requested`` (the server
        driving it, or the one taking its tasks over, stops it when it takes
        the request) or ``unknown`` (no task has this id).
        """
        status, lease = await self._store.request_stop(task_id, reason)
        if status != "sent":
            return status, None
        with trio.move_on_after(wait):
            while True:
                record = await self._store.finished_task(task_id)
                if record is not None:
                    return ("stopped" if record.get("outcome") == "stopped" else "ended"), lease
                await trio.sleep(_END_POLL)
        return "requested", lease

    # ------------------------------------------------------------ listing

    async def elsewhere(self, here: Iterable[str]) -> list[TaskInfo]:
        """Return the running and queued tasks of every server (this one's queued runs
        included) but those in ``here``, as last committed (a task whose workflow is not
        registered here is left out)."""
        known = set(here)
        core = self._core
        found = []
        for record in await self._store.running_tasks():
            if record.get("id") in known:
                continue
            info = stored_task_info(record, core.workflows, core.clock)
            if info is not None:
                found.append(info)
        return found


class SharedRunMethods:
    """The engine's methods for runs across the servers sharing its store (a part of
    :class:`~engine.Engine`)."""

    _core: Core
    _driver: Driver
    _workflows: WorkflowTable
    _shared: SharedRuns | None

    def start_workflow(self, workflow_id: str, *, reason: str = "manual") -> StartResult:
        raise NotImplementedError  # pragma: no cover - the engine's

    def stop_task(self, task_id: str, *, reason: str | None = None) -> bool:
        raise NotImplementedError  # pragma: no cover - the engine's

    def tasks(self) -> list[TaskInfo]:
        raise NotImplementedError  # pragma: no cover - the engine's

    async def start_run(self, workflow_id: str, *, reason: str = "manual") -> StartResult:
        """Start a run of a workflow or job, as its surpass behaviour allows, weighing the
        runs of every server sharing the store; return once that is decided.

        With one server (or a ``parallel`` workflow) this is
        :meth:`start_workflow`. Servers sharing a Redis store decide in one
        atomic step of the store: of two servers starting a ``skip``
        workflow at once one starts it and the other skips; ``wait`` queues
        at most one run across servers, started when the last active one
        ends, on whichever server; ``replace`` stops the active runs on every
        server. While Redis does not answer the decision waits for it (bound
        the wait with a cancel scope: the run is then decided once Redis
        answers, and shows in :meth:`fetch_tasks` if it started).

        Raises:
            UnknownWorkflowError: nothing is registered under ``workflow_id``.
            EngineClosed: the engine stopped first.
        """
        shared = self._shared
        if shared is None or not asks_store(self._core, workflow_id):
            return self.start_workflow(workflow_id, reason=reason)
        task_id = ask(self._core, workflow_id, reason, trio.current_time())
        shared.expect(task_id)
        self._driver.poke()
        return await shared.decision(task_id)

    async def fetch_tasks(self) -> list[TaskInfo]:
        """Return the running and queued tasks, oldest first: with a store shared by
        servers, those of every server (this one's running tasks as it holds them, the
        others' and the queued runs as last committed); else this one's. A queued run
        shows the state ``queued`` and no step."""
        here = self.tasks()
        if self._shared is None:
            found = here + queued_infos(self._workflows)
        else:  # this server's queued runs are stored with the others'
            found = here + await self._shared.elsewhere(self._core.running)
        return sorted(found, key=lambda task: task.started_at)

    async def stop_task_anywhere(
        self, task_id: str, *, reason: str | None = None, wait: float = 5.0
    ) -> str:
        """Stop a running or queued task, whichever server sharing the store drives it.

        Return what happened: ``stopping`` (this server drives it and stops it
        now: see :meth:`stop_task`), ``ended`` (it had ended, or ended
        otherwise before the request reached it), ``stopped`` (another server
        stopped it, within ``wait`` seconds), ``requested`` (the request
        is with the server driving it, and the server that takes its tasks
        over if it dies first; the task had not ended within ``wait``) or
        ``unconfirmed`` (this server drives it and stops it now, but the
        shared store did not answer within ``wait``: the stop is kept, and
        the task's end stored, once it answers).

        With a store shared by servers, the stop of a task this server drives
        is kept in the store before the task stops (one round trip), so that
        if this server dies before the task's end is stored, the server taking
        its tasks over stops it too.

        Raises:
            UnknownTaskError: no task has this id.
        """
        run = self._core.running.get(task_id)
        here = task_id in self._workflows.queued or (
            run is not None and run.stop_request is None and not run.gone
        )
        if self._shared is not None and here:
            # kept in the store first, so that the stop outlives this server
            kept = await self._shared.keep_stop(task_id, reason or "stopped", wait=wait)
            if not self.stop_task(task_id, reason=reason):  # and carried out here
                return "ended"
            return "stopping" if kept else "unconfirmed"
        try:
            return "stopping" if self.stop_task(task_id, reason=reason) else "ended"
        except UnknownTaskError:
            if self._shared is None:
                raise
        why = reason or "stopped through another server"
        status, _ = await self._shared.stop(task_id, why, wait=wait)
        if status == "unknown":
            raise UnknownTaskError(task_id)
        return status
