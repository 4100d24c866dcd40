"""The engine: the public facade that wires the rooms together.

An :class:`Engine` is made by :func:`open_engine`. Its rooms each have one job:

- :class:`~engine._workflows.WorkflowTable`: the registered workflows and jobs
  and their triggers; :class:`~engine._schedules.Schedules`: cron schedules;
- :class:`~engine._core.Core`: the running tasks and every rule that moves
  them; it takes facts and decides, without I/O;
- :class:`~engine._driver.Driver`: the trio task that carries out what the
  core decided, through :class:`~engine._persistence.Persistence` (the
  outbox in front of the store) and the :class:`~engine._bus.Bus`;
- :class:`~engine._listeners.Listeners`: who is connected to the bus;
- :class:`~engine._results.Results`: finished tasks and the history.

The facade turns each call into a fact for the core, then lets the driver
act. One nursery holds everything the engine runs; it starts no threads.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from ._admission import UNDECIDED, StartResult
from ._admission import StartDecision as StartDecision
from ._bus import (
    DEFAULT_BUFFER,
    ENGINE_CLOSED,
    LISTENER_CONNECTED,
    LISTENER_DISCONNECTED,
    Bus,
    Subscriber,
    SubscriberRegistry,
    Subscription,
)
from ._clock import Clock
from ._config import Config, ConfigService
from ._config_model import CONFIG_KIND, CONFIG_VALIDATION
from ._core import ERROR as ERROR
from ._core import PROGRESS as PROGRESS
from ._core import TASK_END as TASK_END
from ._core import TASK_STARTED as TASK_STARTED
from ._core import Core
from ._definitions import CronTrigger, Job, Workflow
from ._driver import Driver, run_command
from ._engine_configs import ConfigMethods
from ._errors import DeclarationError, PhasebusError, Problem, UnknownTaskError
from ._errors import EngineClosed as EngineClosed
from ._listeners import ListenerMethods
from ._machine import Task
from ._messages import (
    Action,
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    Answer,
    Event,
    Kind,
    Message,
    ProgressTree,
)
from ._persistence import DEFAULT_LEASE, Lease, Persistence
from ._records import StepResult as StepResult
from ._records import TaskResult as TaskResult
from ._registry import DEFINITION_EVENTS, Registry
from ._replicas import ActionRelay, EventFanout, Takeover  # re-exported: views import it from here
from ._restore import restore_state
from ._results import ResultMethods, Results, StepInfo, TaskInfo
from ._results import StepInfo as StepInfo  # noqa: F811
from ._rules import progress_of
from ._runs import Run
from ._schedules import SCHEDULE_FIRED as SCHEDULE_FIRED
from ._schedules import MarkKey, Schedules
from ._schedules import ScheduleFiring as ScheduleFiring
from ._shared import RunsStore, SharedRunMethods, SharedRuns, shares_runs
from ._steps import action_of
from ._store import AsyncStore, Store, StoredState
from ._subscribers import SubscriptionChange
from ._tasklog import TaskLog
from ._workflows import WorkflowTable

if TYPE_CHECKING:
    from ._redis import RedisConnection  # only with a Redis store (coredis is optional)

#: An async callable that an execute-command step runs by name.
Command = Callable[["CommandContext"], Awaitable[object]]

#: Event types only the engine publishes: what listeners rely on cannot be forged.
RESERVED_EVENTS = frozenset(
    {
        TASK_STARTED,
        PROGRESS,
        TASK_END,
        ERROR,
        SCHEDULE_FIRED,
        "message-listener-connected",
        "message-listener-disconnected",
        "config-updated",
        "config-deleted",
        *DEFINITION_EVENTS,
    }
)

_ANSWER_TYPES = frozenset({ActionDone, ActionError, ActionInfo, ActionProgress})

__all__ = ["StartResult", "StepInfo", "TaskInfo"]


@attrs.frozen
class CommandContext:
    """What a registered command is told about the step that runs it."""

    engine: Engine
    task_id: str
    workflow: str
    step: str


class Engine(ListenerMethods, ResultMethods, SharedRunMethods, ConfigMethods):
    """A running engine. Make one with :func:`open_engine`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        clock: Clock,
        commands: Mapping[str, Command],
        progress_interval: float,
        listener_buffer: int,
        keep_results: int,
        stall_fraction: float | None = None,
        store: Store | AsyncStore | None = None,
        lease: Lease | None = None,
    ) -> None:
        self._nursery = nursery
        self._store = store
        self._closed = False
        #: Sends each event published here to the other replicas (see EventFanout).
        self._fanout: Callable[[Event], None] | None = None
        #: Tells the other replicas of a change to a subscriber or a config (EventFanout).
        self._share: Callable[[str, str, Any], None] | None = None
        #: Sends an answer for a task another replica drives to it (see ActionRelay).
        self._relay: Callable[[Answer], None] | None = None
        self._listeners_shared: Callable[[], Awaitable[None]] | None = None
        self.clock = clock
        self._commands: dict[str, Command] = dict(commands)
        self._restoring = False
        self._listener_buffer = listener_buffer
        #: The subscriber registry (read it here; change it through the engine's methods).
        self.subscribers = SubscriberRegistry(self._subscriptions_changed)
        self._bus = Bus(self.subscribers, self._emit_event)
        #: The only caller of the store: task writes and what they cause, committed
        #: before effects go out (an outbox), the other writes, and the reads.
        self._persistence = Persistence(store, lease=lease)
        stored = None if store is None else self._persistence
        self._results = Results(stored, keep=keep_results)
        self._schedules = Schedules(
            clock=clock,
            nursery=nursery,
            fire=self._fire,
            announce=self._announce_firing,
            save_mark=self._save_mark,
            claim=self._persistence.claim_firing if self._persistence.asynchronous else None,
        )
        self._workflows = WorkflowTable(
            self._schedules,
            has_command=self._commands.__contains__,
            last_steps=self._results.last_steps,
        )
        self._core = Core(
            workflows=self._workflows,
            subscribers=self.subscribers,
            clock=clock,
            keep=self._results.keep,
            # replicas sharing a store show each other's events: every event is wanted
            wanted=_always if self._persistence.asynchronous else self._bus.has_listeners,
            progress_interval=progress_interval,
            stall_fraction=stall_fraction,
        )
        self._core.durable = self._persistence.durable
        #: Every task's log (see engine._tasklog).
        self.log = TaskLog(clock.now, stored, keep_tasks=keep_results)
        self._driver = Driver(
            self._core,
            persistence=self._persistence,
            bus=self._bus,
            log=self.log,
            emit=self._emit_event,
            run_command=self._run_command,
            nursery=nursery,
        )
        self._persistence.before_read = self._driver.run_pending
        #: Runs admitted, stopped and listed across the servers sharing the store (Redis).
        self._shared: SharedRuns | None = None
        if self._persistence.asynchronous and shares_runs(store):
            self._core.shared = True
            self._shared = SharedRuns(
                core=self._core,
                driver=self._driver,
                persistence=self._persistence,
                store=cast("RunsStore", store),
                nursery=nursery,
            )
            self._driver.admit = self._shared.admit
        nursery.start_soon(self._driver.serve)
        nursery.start_soon(self._driver.timers.serve)
        nursery.start_soon(self._persistence.serve, self._driver.write_failed)
        #: The config service; ``phasebus.core`` holds the workflow schedules.
        self.configs = ConfigService(
            self._emit,
            check=self._workflows.check_config,
            changed=self._workflows.config_changed,
            persist=self._persist_config if store is not None else None,
            persist_checked=self._persist_config_checked
            if self._persistence.asynchronous
            else None,
            stamp=self._revision_stamp if self._persistence.asynchronous else None,
        )
        #: The workflows and jobs by origin, changed at run time (see engine._registry).
        self.definitions = Registry(self, stored, self._emit)
        self._config_models = None

    @property
    def store(self) -> Store | AsyncStore | None:
        """The store the engine keeps its state in (None: nothing is kept)."""
        return self._store

    @property
    def nursery(self) -> trio.Nursery:
        """The engine's nursery: what runs in it is cancelled when the engine closes."""
        return self._nursery

    # ------------------------------------------------------------ declarations

    @property
    def workflows(self) -> dict[str, Workflow]:
        """The registered workflows and jobs (as workflows), by id."""
        return {wid: reg.workflow for wid, reg in self._workflows.by_id.items()}

    def is_job(self, workflow_id: str) -> bool:
        """Tell whether the workflow with this id was registered as a job."""
        return self._workflows.get(workflow_id).job is not None

    def job(self, workflow_id: str) -> Job | None:
        """Return the job registered under this id, or None (a workflow, or nothing)."""
        registered = self._workflows.by_id.get(workflow_id)
        return None if registered is None else registered.job

    def register_command(self, name: str, command: Command) -> None:
        """Register an async callable that execute-command steps can run by ``name``."""
        if not callable(command):
            raise TypeError(f"command {name!r} must be an async callable, got {command!r}")
        self._commands[name] = command

    def add_workflow(self, workflow: Workflow, *, replace: bool = False) -> None:
        """Register a workflow and start its schedules.

        With ``replace``, a workflow of the same id is replaced: its running
        tasks finish on the definition they started with, a queued run waits
        for the new one, and a workflow stays paused if it was (see
        :meth:`set_paused`). A job is paused when declared inactive
        (``active = false``).

        Raises:
            DeclarationError: the id is taken (unless ``replace``), or a step
                runs a command that is not registered. Nothing is registered then.
        """
        self._workflows.add(workflow, job=None, replace=replace)

    def add_job(self, job: Job, *, replace: bool = False) -> None:
        """Register a job (see :meth:`add_workflow`)."""
        if not isinstance(job, Job):
            raise TypeError(f"expected a Job, got {job!r}")
        try:
            self._workflows.add(job.as_workflow(), job=job, replace=replace)
        except DeclarationError as error:  # name the job's fields, not its workflow's
            problems = [
                Problem("callable", p.message) if p.path.endswith("action.callable") else p
                for p in error.problems
            ]
            raise DeclarationError(problems, source=error.source) from None

    def remove_workflow(self, workflow_id: str) -> None:
        """Unregister a workflow or job; its running tasks go on to their end."""
        registered = self._workflows.remove(workflow_id)
        if registered.queued is not None:
            self.stop_task(registered.queued, reason=f"workflow {workflow_id!r} was removed")

    def is_paused(self, workflow_id: str) -> bool:
        """Tell whether a workflow's triggers are off (see :meth:`set_paused`)."""
        return self._workflows.get(workflow_id).paused

    def set_paused(self, workflow_id: str, paused: bool) -> None:
        """Turn a workflow's triggers off or on again: schedules, events, its start event.

        It can still be started on demand (:meth:`start_workflow`) while paused.
        Schedule times that pass while it is paused are not caught up.
        """
        self._workflows.set_paused(workflow_id, paused)

    def schedules(self, workflow_id: str) -> list[CronTrigger]:
        """Return the cron triggers in force for a workflow.

        They are the declared ones unless the config ``phasebus.core`` sets
        the workflow's schedule.
        """
        return self._schedules.in_force(self._workflows.get(workflow_id).workflow)

    def next_run(self, workflow_id: str) -> datetime | None:
        """Return when a schedule next starts the workflow, or None (also while it is paused)."""
        return self._workflows.next_run(workflow_id)

    def schedule_ledger(self, workflow_id: str) -> list[ScheduleFiring]:
        """Return the most recent schedule firings of a workflow, oldest first."""
        self._workflows.get(workflow_id)
        return self._schedules.ledger(workflow_id)

    async def _fire(self, workflow_id: str, reason: str) -> tuple[str, str | None]:
        if self._core.frozen:  # a firing that woke in the same pass as the shutdown
            return "stopped", None
        started = await self.start_run(workflow_id, reason=reason)
        if started.decision is StartDecision.SKIPPED:
            if started.reason.startswith(UNDECIDED):  # the store failed, not surpass
                logger.error("schedule of %s: %s", workflow_id, started.reason)
                return "failed", None
            return "skipped_overlap", None
        if started.decision is StartDecision.QUEUED:
            return "queued", started.task_id
        return "started", started.task_id

    def _announce_firing(self, firing: ScheduleFiring) -> None:
        if self._core.wanted(SCHEDULE_FIRED):
            self._emit(SCHEDULE_FIRED, firing.to_json())

    def _save_mark(self, key: MarkKey, moment: datetime) -> bool:
        if self._core.frozen:
            return False
        self._persistence.save_schedule_mark(key, moment)
        return True

    # ------------------------------------------------------------ subscribers

    def subscribe(
        self,
        subscriber_id: str,
        message_type: str,
        *,
        wait_for_completion: bool = True,
        timeout: float = 60.0,
    ) -> Subscriber:
        """Add or update a subscription (idempotent); return the subscriber."""
        return self.subscribers.add(
            subscriber_id, message_type, wait_for_completion=wait_for_completion, timeout=timeout
        )

    def unsubscribe(self, subscriber_id: str, message_type: str) -> Subscriber | None:
        """Remove one subscription; steps stop waiting for it. Return the subscriber."""
        return self.subscribers.remove(subscriber_id, message_type)

    def set_subscriptions(
        self, subscriber_id: str, subscriptions: Iterable[Subscription]
    ) -> Subscriber:
        """Replace all of a subscriber's subscriptions."""
        return self.subscribers.replace(subscriber_id, subscriptions)

    def remove_subscriber(self, subscriber_id: str) -> bool:
        """Remove a subscriber; steps stop waiting for it. Return whether it existed."""
        return self.subscribers.remove_subscriber(subscriber_id)

    def _subscriptions_changed(self, change: SubscriptionChange) -> None:
        subscriber_id, removed = change.subscriber_id, change.removed
        writer = self._persistence
        if self._store is not None and not self._restoring:
            if not change.exists:
                writer.delete_subscriber(subscriber_id)
            elif change.replaced:
                writer.save_subscriber(subscriber_id, [s.to_json() for s in change.added])
            else:
                for subscription in change.added:
                    writer.save_subscription(subscriber_id, subscription.to_json())
                for message_type in removed:
                    writer.delete_subscription(subscriber_id, message_type)
            if self._share is not None:
                kept = self.subscribers.get(subscriber_id)
                shared = (
                    None if kept is None else [s.to_json() for s in kept.subscriptions.values()]
                )
                self._share("subscriber", subscriber_id, shared)
        self._bus.refresh(subscriber_id, (s.message_type for s in change.added), removed)
        if removed:
            self._core.released(subscriber_id, removed, trio.current_time())
            self._driver.poke()

    # ------------------------------------------------------------ listeners (and ListenerMethods)

    def owed_actions(self, subscriber_id: str) -> list[Action]:
        """Return the actions of running steps still waiting for ``subscriber_id``."""
        subscriber = self.subscribers.get(subscriber_id)
        if subscriber is None:
            return []
        if self._core.frozen:
            return []
        owed = [
            run
            for message_type in subscriber.subscriptions
            for run in self._core.owing.get(message_type, ())
            if run.task.step is not None  # its action has gone out, and it is still owed
            and run.announced is run.task.step
            and not run.committing  # else its action is still on its way there
            and subscriber_id in run.task.step.waiting_for
        ]
        owed.sort(key=lambda r: r.task.created_at)
        return [action_of(run, run.task.step) for run in owed if run.task.step is not None]

    # ------------------------------------------------------------ publishing

    def publish(self, message: Message) -> None:
        """Publish an event or an answer to an action.

        Answers count when they match a running task's current step and a
        subscriber it waits for; any other answer changes nothing. Events start
        the workflows they trigger and finish the steps waiting for them.
        Once the engine is stopping (see :meth:`freeze`) nothing is published.
        """
        self._take(message, elsewhere=False)

    def _take_relayed(self, answer: Message) -> None:
        """Take an answer another server sharing the store received (it is published
        there: observers of what this server receives do not see it again)."""
        self._take(answer, elsewhere=True)

    def _take(self, message: Message, *, elsewhere: bool) -> None:
        kind = type(message)
        if self._core.frozen:
            # stopping: nothing may move a task on or start one; an answer is not
            # recorded, so the subscriber still owes it after a restart
            return
        if kind in _ANSWER_TYPES:
            # the answer goes out before what it causes (the next step's action)
            answer = cast("Answer", message)
            self._bus.publish(answer, elsewhere=elsewhere)
            lease = self._persistence.lease
            if self._relay is not None and (
                answer.task not in self._core.running or (lease is not None and lease.in_doubt)
            ):
                # to the replica driving it; while this replica's lease may have expired
                # (it was paused, say), that may be another one, or this one once it
                # renewed: the answer must not be spent on a write that will be refused
                self._relay(answer)
                return
            self._core.answer(answer, trio.current_time())
        elif kind is Event:
            if message.message_type in RESERVED_EVENTS:
                raise PhasebusError(f"only the engine publishes {message.message_type!r} events")
            self._core.event(message, trio.current_time())  # type: ignore[arg-type]
            self._bus.publish(message)
            if self._fanout is not None:
                self._fanout(message)  # type: ignore[arg-type]
        else:
            raise PhasebusError(f"only the engine sends {message.kind.value} messages")
        self._driver.poke()

    def _emit(self, message_type: str, data: dict[str, Any]) -> None:
        self._emit_event(Event(message_type, data))

    def _emit_event(self, event: Event) -> None:
        self._core.event(event, trio.current_time())
        self._bus.publish(event)
        if self._fanout is not None:
            self._fanout(event)
        self._driver.poke()

    # ------------------------------------------------------------ starting and stopping

    def start_workflow(self, workflow_id: str, *, reason: str = "manual") -> StartResult:
        """Start a run of a workflow or job, as its surpass behaviour allows.

        Servers sharing a Redis store weigh every server's runs: there a run
        of a workflow whose surpass is not ``parallel`` is decided by the
        store, which takes a round trip: use :meth:`start_run`.

        Raises:
            UnknownWorkflowError: nothing is registered under ``workflow_id``.
            StoreError: the store shared with other servers decides this start.
        """
        started = self._core.start(workflow_id, reason, trio.current_time())
        self._driver.poke()
        return started

    def stop_task(self, task_id: str, *, reason: str | None = None) -> bool:
        """Stop a running or queued task; return False if it had already ended.

        The listeners the current step still waits for get ``action_abort``;
        the task ends as ``stopped``.

        Raises:
            UnknownTaskError: no task has this id.
        """
        stopped = self._core.stop(task_id, reason, trio.current_time())
        self._driver.poke()
        if stopped is not None:
            return stopped
        if self._results.get(task_id) is not None:  # with an asynchronous store: in memory
            return False
        raise UnknownTaskError(task_id)

    async def wait_task(self, task_id: str) -> TaskResult:
        """Wait until a task (running, queued or finished) has ended; return its result.

        Raises:
            UnknownTaskError: no task has this id.
            EngineClosed: the engine closed first.
        """
        while True:
            run = self._core.running.get(task_id)
            waiting = (run is not None and not run.gone) or task_id in self._workflows.queued
            if waiting and not self._closed:
                await self._driver.changed(task_id)
                continue
            result = await self._results.fetch(task_id)
            if result is not None:
                await self._persistence.settled(task_id)  # its task_end has gone out
                return result
            if waiting:
                raise EngineClosed(f"the engine closed before task {task_id!r} ended")
            raise UnknownTaskError(task_id)

    async def run_workflow(self, workflow_id: str) -> TaskResult:
        """Start a workflow and wait for the task to end (see :meth:`start_workflow`).

        Raises:
            PhasebusError: the surpass behaviour skipped the run.
        """
        started = await self.start_run(workflow_id)
        if started.task_id is None:
            raise PhasebusError(f"workflow {workflow_id!r} was not started: {started.reason}")
        return await self.wait_task(started.task_id)

    # ------------------------------------------------------------ observing

    @staticmethod
    def progress_of(task: Task) -> ProgressTree:
        """Return a task's progress: one part per step, listeners' progress in the current one."""
        return progress_of(task)

    # ------------------------------------------------------------ durable state

    async def _run_command(self, run: Run, step: Any) -> None:
        await run_command(self._core, self._driver, run, step, self._call_command)

    async def _call_command(self, name: str, run: Run, step: Any) -> object:
        context = CommandContext(self, run.task.id, run.task.workflow.id, step.step.name)
        return await self._commands[name](context)

    def _restore(self, state: StoredState) -> None:
        """Load what the store kept and resume the interrupted tasks."""
        self._restoring = True  # what is loaded is not written back
        try:
            assert self._store is not None
            restore_state(
                state,
                core=self._core,
                definitions=self.definitions,
                configs=self.configs,
                subscribers=self.subscribers,
                store=self._persistence,
                now=trio.current_time(),
            )
        finally:
            self._restoring = False
        self._driver.poke()

    async def _prune_history(self) -> None:
        retention = self._persistence.retention
        assert retention is not None
        while not self._core.frozen:
            pruned = await self._persistence.prune(self.clock.now() - retention)
            if pruned:
                logger.info("removed %d finished tasks older than %s", pruned, retention)
            await trio.sleep(3600)

    @property
    def closing(self) -> bool:
        """Whether the engine is stopping (see :meth:`freeze`)."""
        return self._core.frozen

    def freeze(self) -> None:
        """Stop every task where it is, because the program is stopping.

        From now on no task moves, nothing is published for a task, nothing is
        written to the store and nothing starts (:meth:`start_workflow` raises
        :class:`EngineClosed`); answers and events published are ignored (a
        subscriber still owes its answer after a restart), and a subscriber
        removed now releases no step. What was decided but not yet carried
        out is dropped, as in a crash. Call it before anything goes away
        (listeners, subscribers): a restart on the same store then resumes
        every task where it was. Leaving :func:`open_engine` freezes the engine
        first. Idempotent.
        """
        if self._core.frozen:
            return
        # What was decided but not carried out yet is dropped, as in a crash: nothing it
        # caused was committed, so a restart takes the tasks up before those decisions.
        self._core.frozen = True
        self._persistence.close()
        self._driver.close()
        self._schedules.stop_all()  # no schedule fires any more

    def _close(self) -> None:
        self.freeze()
        self._closed = True
        if self._shared is not None:
            self._shared.close()
        self._driver.close()
        for listener in list(self._bus.listeners):
            self._bus.detach(listener, ENGINE_CLOSED)


_STEP_KINDS = frozenset({Kind.ACTION, Kind.ACTION_ABORT})
_LISTENER_EVENTS = frozenset({LISTENER_CONNECTED, LISTENER_DISCONNECTED})
_EVENT_KIND = frozenset({Kind.EVENT})


def _apply_shared(engine: Engine, kind: str, ident: str, value: Any) -> None:
    """Take a change another replica made to a subscriber, a config or a definition (see
    EventFanout)."""
    if kind == "subscriber":
        engine._restoring = True  # stored there already: not written again, nor shared
        try:
            if value is None:
                engine.subscribers.remove_subscriber(ident)
            else:
                engine.subscribers.replace(ident, [Subscription(**entry) for entry in value])
        finally:
            engine._restoring = False
    elif kind == "config":
        config = None if value is None else Config(ident, value["data"], value["revision"])
        engine.configs.apply(ident, config)
    elif kind == "definition":
        engine.definitions.apply(ident, value)
    elif kind in (CONFIG_KIND, CONFIG_VALIDATION):
        engine.config_models.apply(kind, ident, value)


def _event_elsewhere(engine: Engine, event: Event) -> None:
    """Take an event published through another replica: it finishes the steps waiting for it
    here and reaches the listeners here; the workflows it triggers started there."""
    engine._core.event_elsewhere(event, trio.current_time())
    engine._bus.publish(event, elsewhere=True)
    engine._driver.poke()


def _decided(store: RedisConnection, persistence: Persistence) -> int:
    """Return the number of a call to Redis sent after what made an event published now
    (see EventFanout): the commit just made when the event is an effect of the states it
    committed, else the next call."""
    if persistence.after_commit:
        return store.last_commit_call
    return store.interest_calls + 1


def _interest_of(engine: Engine) -> frozenset[str] | None:
    """Return the event types this replica wants from the others (None: every type): those
    its listeners and observers receive, and those its waiting steps wait for."""
    wanted = engine._bus.wanted_events()
    return None if wanted is None else wanted | engine._core.event_waiters.keys()


async def _regained(fanout: EventFanout, takeover: Takeover) -> None:
    """Count this replica's interest again, then give up the tasks taken over meanwhile,
    once its lease lapsed and is held again."""
    await fanout.regained()  # from the others' next append on, they send it what it wants
    await takeover.check_held()


def _always(_: str) -> bool:
    return True


logger = logging.getLogger(__name__)

#: Seconds an engine on an asynchronous store waits at close to write what is staged.
CLOSE_WAIT = 5.0


@asynccontextmanager
async def open_engine(
    *,
    workflows: Iterable[Workflow] = (),
    jobs: Iterable[Job] = (),
    commands: Mapping[str, Command] | None = None,
    start_time: datetime | None = None,
    progress_interval: float = 1.0,
    listener_buffer: int = DEFAULT_BUFFER,
    keep_results: int = 10_000,
    stall_fraction: float | None = 0.5,
    store: Store | AsyncStore | None = None,
    sources: Mapping[str, str] | None = None,
    replica: str | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the ``async with`` block.

    Args:
        workflows: workflows to register at once.
        jobs: jobs to register at once.
        commands: async callables that execute-command steps run by name.
        start_time: wall-clock time at the engine's start; when given, wall time
            follows trio's clock from there (for virtual time in tests).
        progress_interval: least seconds between two ``progress`` events of a
            task caused by listener progress (state changes always publish).
        listener_buffer: messages a listener may leave unread before it is dropped.
        keep_results: how many finished tasks' results are kept for :meth:`Engine.task`.
        stall_fraction: a perform-action step whose listeners have all been
            silent (no answer, progress or info) for this fraction of its
            timeout is reported stalled, with an ``error`` event naming them;
            None turns this off.
        store: where state is kept across restarts: a :class:`SQLiteStore`,
            or an entered asynchronous store (a :class:`RedisStore`); on
            open, configs, subscribers and schedule marks are loaded and
            interrupted tasks resume where they were. None keeps nothing.
        sources: the file that declared each of ``workflows`` and ``jobs``, by
            id; those cannot be changed at run time (see
            :attr:`Engine.definitions`). The others count as built in.
        replica: with an asynchronous store, the name of the lease this engine
            writes its running tasks under (default: the host's name). A
            restart under the same name resumes its tasks; two engines sharing
            a store need names of their own.
        lease: how long the lease lasts unless renewed (every third of it).
            Open waits up to twice that for a lease left by a crashed run.

    Raises:
        StoreError: another engine holds the lease ``replica``.

    Leaving the block cancels everything the engine runs: running tasks stop
    where they are, without ``task_end``, and listeners are disconnected.
    """
    if progress_interval < 0:
        raise ValueError(f"progress_interval must be >= 0, got {progress_interval!r}")
    if listener_buffer < 1:
        raise ValueError(f"listener_buffer must be >= 1, got {listener_buffer!r}")
    if stall_fraction is not None and not 0 < stall_fraction < 1:
        raise ValueError(f"stall_fraction must be between 0 and 1, got {stall_fraction!r}")
    if lease <= timedelta(0):
        raise ValueError(f"lease must be positive, got {lease}")
    async with trio.open_nursery() as nursery:
        engine = Engine(
            nursery,
            clock=Clock(start_time),
            commands=commands or {},
            progress_interval=progress_interval,
            listener_buffer=listener_buffer,
            keep_results=keep_results,
            stall_fraction=stall_fraction,
            store=store,
            lease=Lease(replica or socket.gethostname(), lease),
        )
        persistence = engine._persistence
        try:
            # read before any schedule starts, so that each catches up from its mark
            state = None if store is None else await persistence.open()
            for workflow in workflows:
                engine.add_workflow(workflow)
            for job in jobs:
                engine.add_job(job)
            engine.definitions.declare(sources or {})
            if state is not None:
                engine._restore(state)
                if persistence.asynchronous:
                    streams = getattr(store, "streams", None)
                    takeover = Takeover(
                        core=engine._core,
                        driver=engine._driver,
                        persistence=persistence,
                        store=cast("AsyncStore", store),
                        streams=streams,
                        publish=engine._take_relayed,
                    )
                    persistence.on_taken = takeover.give_up
                    persistence.on_regained = takeover.check_held
                    shared = engine._shared
                    if shared is not None:  # stops asked for before the restart or takeover
                        await shared.take_stops([*engine._core.running, *engine._workflows.queued])
                        takeover.adopted = shared.take_stops
                        takeover.control = shared.take
                    nursery.start_soon(persistence.keep_lease)
                    nursery.start_soon(takeover.serve)
                    assert persistence.lease is not None
                    if streams is not None:  # the Redis store's: events reach every replica
                        lease_held = persistence.lease
                        fanout = EventFanout(
                            streams,
                            replica=lease_held.name,
                            show=functools.partial(_event_elsewhere, engine),
                            changed=functools.partial(_apply_shared, engine),
                            interest=functools.partial(_interest_of, engine),
                            awaited=lambda: engine._workflows.awaited,
                            lease=lambda: lease_held.token,
                            decided=functools.partial(_decided, streams.store, persistence),
                        )
                        await nursery.start(fanout.serve)
                        persistence.on_regained = functools.partial(_regained, fanout, takeover)
                        nursery.start_soon(fanout.poll, lease_held.ttl.total_seconds() / 3)
                        engine._listeners_shared = fanout.announced
                        engine._fanout = fanout.send
                        engine._share = fanout.send_change
                        engine.definitions.share = functools.partial(
                            fanout.send_change, "definition"
                        )
                        relay = ActionRelay(
                            streams,
                            replica=persistence.lease.name,
                            bus=engine._bus,
                            core=engine._core,
                            subscribers=engine.subscribers,
                            publish=engine._take_relayed,
                            owed=engine.owed_actions,
                            persistence=persistence,
                        )
                        engine._bus.routers.append((relay.observe, _STEP_KINDS))
                        engine._bus.observers.append(
                            (relay.listeners_changed, _LISTENER_EVENTS, _EVENT_KIND)
                        )
                        if shared is not None:
                            relay.control = shared.take
                        await nursery.start(relay.serve)
                        engine._relay = relay.send_answer
                nursery.start_soon(engine._prune_history)
            yield engine
        finally:
            engine._close()
            if persistence.asynchronous:
                # what was staged is kept, and the lease given up, so that a restart
                # resumes at once; bounded: what is not written is done again then
                with trio.move_on_after(CLOSE_WAIT) as closing:
                    closing.shield = True
                    await persistence.aclose()
            nursery.cancel_scope.cancel()
