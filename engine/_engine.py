"""The engine: the trio side that acts on what the machines decide.

One nursery holds everything the engine runs: a driver per task, a scheduler
per cron trigger, a runner per executing command and the handlers of
in-process listeners. The engine starts no threads.

Facts (an answer, an event, a subscription change, a stop request, a
deadline) are recorded on the task, and the machine is asked to move on by
``Engine._move_on``, which never awaits, so every move is atomic. The task's
driver runs it after each wake-up; an answer that finishes a step runs it at
once, in the answering listener's turn, when the driver sleeps (a flag keeps
two moves from nesting). The driver also finishes the task.
"""

from __future__ import annotations

import enum
import functools
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from types import MappingProxyType
from typing import Any

import attrs
import orjson
import trio

from ._bus import (
    DEFAULT_BUFFER,
    ENGINE_CLOSED,
    SUBSCRIBER_KINDS,
    Bus,
    Listener,
    ListenerDropped,
    Subscriber,
    SubscriberRegistry,
    Subscription,
)
from ._clock import Clock
from ._config import CORE_CONFIG, Config, ConfigService, schedule_problems
from ._definitions import (
    CronTrigger,
    EmitEvent,
    EventTrigger,
    ExecuteCommand,
    Job,
    PerformAction,
    Surpass,
    WaitForEvent,
    Workflow,
    action_kind,
)
from ._errors import (
    DeclarationError,
    InvalidInputError,
    PhasebusError,
    Problem,
    UnknownTaskError,
    UnknownWorkflowError,
)
from ._errors import EngineClosed as EngineClosed
from ._machine import END, Answer, Outcome, StepRun, Task, WorkflowMachine
from ._messages import (
    Action,
    ActionAbort,
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    Event,
    Kind,
    Message,
    Progress,
    ProgressLeaf,
    ProgressTree,
)
from ._persistence import Persistence
from ._records import (
    RestoreError,
    finished_record,
    restore_task,
    step_results,
    task_has_errors,
    task_record,
)
from ._records import StepResult as StepResult  # re-exported: views import it from here
from ._records import TaskResult as TaskResult
from ._registry import DEFINITION_EVENTS, Registry
from ._schedules import SCHEDULE_FIRED as SCHEDULE_FIRED
from ._schedules import MarkKey, Schedules
from ._schedules import ScheduleFiring as ScheduleFiring
from ._store import FinishTask, SaveTask, Store, StoredState
from ._subscribers import SubscriptionChange
from ._tasklog import LogKind, TaskLog
from ._timers import Timers

logger = logging.getLogger(__name__)

#: An async callable that an execute-command step runs by name.
Command = Callable[["CommandContext"], Awaitable[object]]

#: An in-process listener's handler.
Handler = Callable[[Message], Awaitable[object]]

TASK_STARTED = "task_started"
PROGRESS = "progress"
TASK_END = "task_end"
ERROR = "error"


#: Characters of a failed command's output kept in its task's log.
COMMAND_OUTPUT_TAIL = 1500


#: Event types only the engine publishes: what listeners rely on cannot be forged.
RESERVED_EVENTS = frozenset(
    {
        "task_started",
        "progress",
        "task_end",
        "error",
        "schedule_fired",
        "message-listener-connected",
        "message-listener-disconnected",
        "config-updated",
        "config-deleted",
        *DEFINITION_EVENTS,
    }
)


# ---------------------------------------------------------------- views


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


class StartDecision(enum.StrEnum):
    """What a start request did."""

    STARTED = "started"
    QUEUED = "queued"
    SKIPPED = "skipped"


@attrs.frozen
class StartResult:
    """The answer to a start request.

    ``task_id`` is set when a task was started or queued; ``replaced`` lists
    the tasks that the new one replaces (surpass ``replace``).
    """

    workflow: str
    decision: StartDecision
    task_id: str | None = None
    replaced: tuple[str, ...] = ()
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON of the answer to ``POST /workflow/{id}/run``."""
        return {
            "workflow": self.workflow,
            "decision": self.decision.value,
            "task_id": self.task_id,
            "replaced": list(self.replaced),
            "reason": self.reason,
        }


@attrs.frozen
class CommandContext:
    """What a registered command is told about the step that runs it."""

    engine: Engine
    task_id: str
    workflow: str
    step: str


# ---------------------------------------------------------------- runtime records


@attrs.define(eq=False)
class _Run:
    task: Task
    registered: _Registered
    #: Data sent with each action of the task: the workflow and the previous run's timing.
    routing: Mapping[str, Any] = attrs.field(default=MappingProxyType({}))
    #: The driver's trio task while it sleeps (waiting for a fact or a time).
    sleeper: trio.lowlevel.Task | None = None
    woken: bool = False
    #: Whether the task's transitions are being taken right now (see Engine._move_on).
    moving: bool = False
    #: Whether the task's new state waits to be committed before its effects go out;
    #: it moves no further until they have.
    committing: bool = False
    #: The step whose action last went out (a step that failed before it did owes
    #: nobody an abort).
    announced: StepRun | None = None
    #: Set when the task ends; made only when someone waits for it.
    ended: trio.Event | None = None
    stop_request: tuple[bool, str | None] | None = None
    command_scope: trio.CancelScope | None = None
    last_progress: float = float("-inf")
    progress_due: float | None = None
    timer: list[Any] | None = None
    #: When to look whether the current step stalled (see _check_stall).
    stall_due: float | None = None
    #: Restored after a restart: the current step's side effects are done again.
    replay: bool = False
    #: Facts recorded since the task was last saved (saved before anything acts on them).
    dirty: bool = False
    #: The stored form of the task's ended steps (see task_record).
    encoded_steps: list[Any] | None = None

    def wake(self) -> None:
        """Wake the driver: at once if it sleeps, else its next sleep returns at once."""
        sleeper, self.sleeper = self.sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)
        else:
            self.woken = True

    async def sleep(self) -> None:
        """Sleep until :meth:`wake` (cheaper than a lock or an event: nothing to allocate)."""
        if self.woken:  # woken while it was busy: a fact may be waiting
            self.woken = False
            await trio.lowlevel.checkpoint()
            return
        self.sleeper = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self.sleeper = None
        return trio.lowlevel.Abort.SUCCEEDED


@attrs.define(eq=False)
class _Registered:
    workflow: Workflow
    machine: WorkflowMachine
    #: The job this workflow runs, if it is one.
    job: Job | None
    #: Whether its triggers (schedules, events, ``start_<id>_workflow``) are off.
    paused: bool = False
    active: dict[_Run, None] = attrs.Factory(dict)  # insertion-ordered set
    queued: str | None = None
    queued_event: trio.Event | None = None
    #: Data sent with every action of the workflow, shared (messages never change it).
    routing: Mapping[str, Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.routing = MappingProxyType({"workflow": self.workflow.id})


_ANSWER_TYPES = frozenset({ActionDone, ActionError, ActionInfo, ActionProgress})

#: The stored state of a run queued behind an active one (surpass ``wait``).
QUEUED = "queued"


def _new_id() -> str:
    return str(uuid.uuid4())


def _routing(workflow_id: str, steps: Iterable[tuple[str, float, float]]) -> Mapping[str, Any]:
    """Return the data sent with each action of a workflow: its id and ``timing``.

    ``timing`` maps each step of the workflow's previous run to its
    ``started_at`` and ``finished_at`` in whole seconds since the epoch (``steps``
    gives name, start and end), as Resoto sends it, so that listeners can
    estimate how long they will take.
    """
    timing = {
        name: {"started_at": int(started), "finished_at": int(ended)}
        for name, started, ended in steps
    }
    return MappingProxyType({"workflow": workflow_id, "timing": timing})


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _replace_unencodable(task: Task) -> None:
    """Replace what UTF-8 cannot hold (lone surrogates) in a task's texts, in place."""
    if task.error is not None:
        task.error = _encodable(task.error)
    for run in task.history:
        run.errors[:] = [_encodable(error) for error in run.errors]


# ---------------------------------------------------------------- the engine


class Engine:
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
        store: Store | None = None,
    ) -> None:
        self._nursery = nursery
        self._store = store
        #: Where writes go: the store, until the engine freezes (then None: nothing is written).
        self._writer = store
        self._frozen = False
        self.clock = clock
        self._commands: dict[str, Command] = dict(commands)
        self._progress_interval = progress_interval
        self._stall_fraction = stall_fraction
        self._listener_buffer = listener_buffer
        self._keep_results = keep_results
        #: The subscriber registry (read it here; change it through the engine's methods).
        self._restoring = False
        self.subscribers = SubscriberRegistry(self._subscriptions_changed)
        self._bus = Bus(self.subscribers, self._emit_event)
        self._workflows: dict[str, _Registered] = {}
        self._start_events: dict[str, str] = {}
        self._event_triggers: dict[str, list[tuple[EventTrigger, str]]] = {}
        self._event_waiters: dict[str, set[_Run]] = {}
        self._running: dict[str, _Run] = {}
        self._queued: dict[str, _Registered] = {}
        self._results: OrderedDict[str, TaskResult] = OrderedDict()
        #: The cron schedules in force and their ledger.
        self._schedules = Schedules(
            clock=clock,
            nursery=nursery,
            fire=self._fire,
            announce=self._announce_firing,
            save_mark=self._save_mark,
        )
        #: The config service; ``phasebus.core`` holds the workflow schedules.
        self.configs = ConfigService(
            self._emit,
            check=self._check_config,
            changed=self._config_changed,
            persist=self._persist_config if store is not None else None,
        )
        self._timers = Timers()
        nursery.start_soon(self._timers.serve)
        #: Task writes and what they cause: committed in groups, effects after (an outbox).
        self._persistence = Persistence(store)
        nursery.start_soon(self._persistence.serve, self._write_failed)
        self._closed = False
        #: The workflows and jobs by origin, changed at run time (see engine._registry).
        self.definitions = Registry(self, store, self._emit)
        #: Every task's log (see engine._tasklog).
        self.log = TaskLog(clock.now, store, keep_tasks=keep_results)

    @property
    def store(self) -> Store | None:
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
        return {wid: reg.workflow for wid, reg in self._workflows.items()}

    def is_job(self, workflow_id: str) -> bool:
        """Tell whether the workflow with this id was registered as a job."""
        return self._registered(workflow_id).job is not None

    def job(self, workflow_id: str) -> Job | None:
        """Return the job registered under this id, or None (a workflow, or nothing)."""
        registered = self._workflows.get(workflow_id)
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
        self._add(workflow, job=None, replace=replace)

    def add_job(self, job: Job, *, replace: bool = False) -> None:
        """Register a job (see :meth:`add_workflow`)."""
        if not isinstance(job, Job):
            raise TypeError(f"expected a Job, got {job!r}")
        try:
            self._add(job.as_workflow(), job=job, replace=replace)
        except DeclarationError as error:  # name the job's fields, not its workflow's
            problems = [
                Problem("callable", p.message) if p.path.endswith("action.callable") else p
                for p in error.problems
            ]
            raise DeclarationError(problems, source=error.source) from None

    def _add(self, workflow: Workflow, *, job: Job | None, replace: bool) -> None:
        if not isinstance(workflow, Workflow):
            raise TypeError(f"expected a Workflow, got {workflow!r}")
        problems = []
        if workflow.id in self._workflows and not replace:
            problems.append(
                Problem("id", f"a workflow or job {workflow.id!r} is already registered")
            )
        for index, step in enumerate(workflow.steps):
            action = step.action
            if (
                isinstance(action, ExecuteCommand)
                and action.callable is not None
                and action.callable not in self._commands
            ):
                problems.append(
                    Problem(
                        f"steps[{index}].action.callable",
                        f"no command is registered as {action.callable!r}",
                    )
                )
        if problems:
            raise DeclarationError(problems, source=workflow.id)
        registered = _Registered(workflow, WorkflowMachine(workflow), job)
        previous = self._workflows.pop(workflow.id, None)
        # a job's declaration says whether it is active; a workflow keeps its state
        registered.paused = (
            not job.active if job is not None else previous is not None and previous.paused
        )
        if previous is not None:  # replaced: a queued run now waits for the new definition
            registered.queued, registered.queued_event = previous.queued, previous.queued_event
            previous.queued = previous.queued_event = None
            if registered.queued is not None:
                self._queued[registered.queued] = registered
            self._disarm(previous)
        self._workflows[workflow.id] = registered
        registered.routing = self._routing(workflow.id)
        self._arm(registered)

    def remove_workflow(self, workflow_id: str) -> None:
        """Unregister a workflow or job; its running tasks go on to their end."""
        registered = self._workflows.pop(workflow_id, None)
        if registered is None:
            raise UnknownWorkflowError(workflow_id)
        self._disarm(registered)
        if registered.queued is not None:
            self.stop_task(registered.queued, reason=f"workflow {workflow_id!r} was removed")

    def is_paused(self, workflow_id: str) -> bool:
        """Tell whether a workflow's triggers are off (see :meth:`set_paused`)."""
        return self._registered(workflow_id).paused

    def set_paused(self, workflow_id: str, paused: bool) -> None:
        """Turn a workflow's triggers off or on again: schedules, events, its start event.

        It can still be started on demand (:meth:`start_workflow`) while paused.
        Schedule times that pass while it is paused are not caught up.
        """
        registered = self._registered(workflow_id)
        if registered.paused != paused:
            registered.paused = paused
            if not paused:  # times passed while paused are not missed: nothing catches up
                self._schedules.forgive(workflow_id)
            self._disarm(registered)
            self._arm(registered)

    def _arm(self, registered: _Registered) -> None:
        """Register a workflow's start event and event triggers and start its schedules."""
        workflow = registered.workflow
        if not registered.paused:
            self._start_events[workflow.start_event] = workflow.id
            for trigger in workflow.triggers:
                if isinstance(trigger, EventTrigger):
                    self._event_triggers.setdefault(trigger.event, []).append(
                        (trigger, workflow.id)
                    )
            self._schedules.start(workflow)

    def _disarm(self, registered: _Registered) -> None:
        """Stop a workflow's schedules and forget its start event and event triggers."""
        workflow_id = registered.workflow.id
        self._schedules.stop(workflow_id)
        if self._start_events.get(registered.workflow.start_event) == workflow_id:
            del self._start_events[registered.workflow.start_event]
        for event_type in list(self._event_triggers):
            kept = [(t, w) for t, w in self._event_triggers[event_type] if w != workflow_id]
            if kept:
                self._event_triggers[event_type] = kept
            else:
                del self._event_triggers[event_type]

    def schedules(self, workflow_id: str) -> list[CronTrigger]:
        """Return the cron triggers in force for a workflow.

        They are the declared ones unless the config ``phasebus.core`` sets
        the workflow's schedule.
        """
        return self._schedules.in_force(self._registered(workflow_id).workflow)

    def next_run(self, workflow_id: str) -> datetime | None:
        """Return when a schedule next starts the workflow, or None (also while it is paused)."""
        registered = self._registered(workflow_id)
        return None if registered.paused else self._schedules.next_run(registered.workflow)

    def _check_config(self, config_id: str, data: Mapping[str, Any]) -> list[Problem]:
        if config_id != CORE_CONFIG:
            return []
        return schedule_problems(data, frozenset(self._workflows))

    def _config_changed(self, config_id: str, data: Mapping[str, Any] | None) -> None:
        if config_id != CORE_CONFIG:
            return
        overrides: dict[str, CronTrigger | None] = {}
        for workflow_id, entry in ((data or {}).get("workflows") or {}).items():
            schedule = entry.get("schedule")
            overrides[workflow_id] = (
                None if schedule is None else CronTrigger(schedule, entry.get("timezone", "UTC"))
            )
        self._schedules.set_overrides(overrides)
        for registered in self._workflows.values():
            if not registered.paused:
                self._schedules.start(registered.workflow)

    def _routing(self, workflow_id: str) -> Mapping[str, Any]:
        """Return the data of a workflow's actions, with its last finished run's timing."""
        last = self.history(workflow=workflow_id, limit=1)
        steps = (
            ((s.name, s.started_at.timestamp(), s.ended_at.timestamp()) for s in last[0].steps)
            if last
            else ()
        )
        return _routing(workflow_id, steps)

    def _registered(self, workflow_id: str) -> _Registered:
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise UnknownWorkflowError(workflow_id) from None

    def schedule_ledger(self, workflow_id: str) -> list[ScheduleFiring]:
        """Return the most recent schedule firings of a workflow, oldest first."""
        self._registered(workflow_id)
        return self._schedules.ledger(workflow_id)

    def _fire(self, workflow_id: str, reason: str) -> tuple[str, str | None]:
        if self._frozen:  # a firing that woke in the same pass as the shutdown
            return "stopped", None
        started = self.start_workflow(workflow_id, reason=reason)
        if started.decision is StartDecision.SKIPPED:
            return "skipped_overlap", None
        if started.decision is StartDecision.QUEUED:
            return "queued", started.task_id
        return "started", started.task_id

    def _announce_firing(self, firing: ScheduleFiring) -> None:
        if self._wanted(SCHEDULE_FIRED):
            self._emit(SCHEDULE_FIRED, firing.to_json())

    def _save_mark(self, key: MarkKey, moment: datetime) -> bool:
        if self._frozen:
            return False
        if self._writer is not None:
            self._writer.save_schedule_mark(key, moment)
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
        writer = self._writer
        if writer is not None and not self._restoring:
            if not change.exists:
                writer.delete_subscriber(subscriber_id)
            elif change.replaced:
                writer.save_subscriber(subscriber_id, [s.to_json() for s in change.added])
            else:
                for subscription in change.added:
                    writer.save_subscription(subscriber_id, subscription.to_json())
                for message_type in removed:
                    writer.delete_subscription(subscriber_id, message_type)
        self._bus.refresh(subscriber_id, (s.message_type for s in change.added), removed)
        if not removed or self._frozen:
            # A subscriber leaving because the program stops releases no step:
            # the tasks resume where they were, still waiting for it.
            return
        for run in self._running.values():
            step = run.task.step
            if (
                step is not None
                and step.step.message_type in removed
                and isinstance(step.step.action, PerformAction)
                and step.forget_subscriber(subscriber_id)
            ):
                self.log.add(
                    run.task.id,
                    LogKind.RELEASED,
                    f"{subscriber_id} went away: the step no longer waits for it",
                    step=step.step.name,
                    subscriber=subscriber_id,
                )
                run.wake()

    # ------------------------------------------------------------ listeners

    def connect(
        self,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> Listener:
        """Connect a listener to the bus and return it; :meth:`disconnect` it when done.

        With ``subscriber_id`` the listener receives the actions, aborts and
        events of that subscriber's message types (kept current as its
        subscriptions change) and first the actions it still owes an answer.
        Otherwise it receives every message of ``message_types`` (all when
        None). Prefer :meth:`open_listener`, which disconnects for you.

        Raises:
            ListenerError: the subscriber already has a listener.
        """
        types: frozenset[str] | set[str] | None
        if subscriber_id is not None:
            subscriber = self.subscribers.get(subscriber_id)
            types = set(subscriber.subscriptions) if subscriber else set()  # kept current
            kinds = SUBSCRIBER_KINDS
        else:
            types = None if message_types is None else frozenset(message_types)
            kinds = None
        listener = Listener(
            self._bus,
            subscriber_id=subscriber_id,
            message_types=types,
            kinds=kinds,
            buffer=self._listener_buffer if buffer is None else buffer,
            publish=self.publish,
        )
        self._bus.attach(listener)
        if subscriber_id is not None:
            for action in self.owed_actions(subscriber_id):
                if not listener._deliver(action):
                    self._bus.drop(listener, "its buffer cannot hold the actions it owes")
                    break
        return listener

    def disconnect(self, listener: Listener) -> None:
        """Disconnect a listener (idempotent)."""
        self._bus.detach(listener)

    def drop_listener(self, listener: Listener, why: str) -> bool:
        """Disconnect a listener for being too slow; ``why`` says how (it is logged).

        The drop is counted in :attr:`dropped_listeners` once, however often it
        is asked for. Returns whether the listener was still connected.
        """
        return self._bus.drop(listener, why)

    @asynccontextmanager
    async def open_listener(
        self,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> AsyncIterator[Listener]:
        """Connect a listener for the duration of the block (see :meth:`connect`)."""
        listener = self.connect(
            subscriber_id=subscriber_id, message_types=message_types, buffer=buffer
        )
        try:
            yield listener
        finally:
            self.disconnect(listener)

    async def serve_listener(
        self,
        handler: Handler,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
        task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``handler`` with each message, one at a time, until cancelled.

        For a subscriber's listener, an action is answered ``action_done`` when
        the handler returns and ``action_error`` (with the exception) when it
        raises. Start it with ``await nursery.start(engine.serve_listener, ...)``,
        which returns the listener.
        """
        async with self.open_listener(
            subscriber_id=subscriber_id, message_types=message_types, buffer=buffer
        ) as listener:
            task_status.started(listener)
            try:
                async for message in listener:
                    await self._handle(listener, handler, message)
            except ListenerDropped:
                logger.warning("listener %s stopped: %s", listener.id, listener.dropped)

    async def start_listener(
        self,
        handler: Handler,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> Listener:
        """Run :meth:`serve_listener` in the engine's nursery; return the listener.

        It runs until the engine closes or :meth:`disconnect` is called with it.
        """
        listener: Listener = await self._nursery.start(
            functools.partial(
                self.serve_listener,
                handler,
                subscriber_id=subscriber_id,
                message_types=message_types,
                buffer=buffer,
            )
        )
        return listener

    async def _handle(self, listener: Listener, handler: Handler, message: Message) -> None:
        try:
            await handler(message)
        except Exception as error:
            if isinstance(message, Action) and listener.subscriber_id is not None:
                listener.error(message, f"{type(error).__name__}: {error}")
            else:
                logger.exception(
                    "listener %s failed to handle %s", listener.id, message.message_type
                )
            return
        if isinstance(message, Action) and listener.subscriber_id is not None:
            listener.done(message)

    def owed_actions(self, subscriber_id: str) -> list[Action]:
        """Return the actions of running steps still waiting for ``subscriber_id``."""
        if self._frozen:
            return []
        return [
            self._action(run)
            for run in self._running.values()
            if run.task.step is not None
            and not run.committing  # its action goes out with the commit
            and subscriber_id in run.task.step.waiting_for
        ]

    @property
    def listeners(self) -> list[Listener]:
        """The connected listeners."""
        return sorted(self._bus.listeners, key=lambda listener: listener.id)

    def add_observer(
        self,
        observer: Callable[[Message], None],
        *,
        message_types: Iterable[str] | None = None,
        kinds: Iterable[Kind] | None = None,
    ) -> Callable[[], None]:
        """Call ``observer`` with each message published, before any listener gets it.

        Only messages of ``message_types`` and ``kinds`` are observed (all when
        None): events that nobody observes or listens to are not even built.
        An observer must be quick and must not raise. Returns a function that
        removes it.
        """
        entry = (
            observer,
            None if message_types is None else frozenset(message_types),
            None if kinds is None else frozenset(kinds),
        )
        self._bus.observers.append(entry)
        return lambda: self._bus.observers.remove(entry)

    @property
    def dropped_listeners(self) -> int:
        """How many listeners were dropped for being too slow."""
        return self._bus.dropped_count

    # ------------------------------------------------------------ publishing

    def publish(self, message: Message) -> None:
        """Publish an event or an answer to an action.

        Answers count when they match a running task's current step and a
        subscriber it waits for; any other answer changes nothing. Events start
        the workflows they trigger and finish the steps waiting for them.
        Once the engine is stopping (see :meth:`freeze`) nothing is published.
        """
        kind = type(message)
        if self._frozen:
            # stopping: nothing may move a task on or start one; an answer is not
            # recorded, so the subscriber still owes it after a restart
            logger.debug("stopping: ignoring %s %s", message.kind.value, message.message_type)
            return
        if kind in _ANSWER_TYPES:
            # the answer goes out before what it causes (the next step's action)
            self._bus.publish(message)
            self._on_answer(message)  # type: ignore[arg-type]
        elif kind is Event:
            if message.message_type in RESERVED_EVENTS:
                raise PhasebusError(f"only the engine publishes {message.message_type!r} events")
            self._on_event(message)  # type: ignore[arg-type]
            self._bus.publish(message)
        else:
            raise PhasebusError(f"only the engine sends {message.kind.value} messages")

    def _emit(self, message_type: str, data: dict[str, Any]) -> None:
        self._emit_event(Event(message_type, data))

    def _emit_event(self, event: Event) -> None:
        self._on_event(event)
        self._bus.publish(event)

    def _wanted(self, message_type: str) -> bool:
        """Tell whether an event of this type would reach anyone (else it need not be built)."""
        return (
            self._bus.has_listeners(message_type)
            or message_type in self._event_triggers
            or message_type in self._event_waiters
            or message_type in self._start_events
        )

    def _on_event(self, event: Event) -> None:
        if self._frozen:
            return
        message_type = event.message_type
        waiters = self._event_waiters.get(message_type)
        if waiters:
            for run in list(waiters):
                step = run.task.step
                if (
                    step is not None
                    and isinstance(step.step.action, WaitForEvent)
                    and step.step.action.matches(message_type, event.data)
                ):
                    step.record_finished()
                    run.dirty = True
                    run.wake()
        workflow_id = self._start_events.get(message_type)
        if workflow_id is not None:
            self.start_workflow(workflow_id, reason=f"event {message_type}")
        for trigger, workflow_id in self._event_triggers.get(message_type, ()):
            if trigger.matches(message_type, event.data):
                self.start_workflow(workflow_id, reason=f"event {message_type}")

    def _on_answer(self, answer: ActionDone | ActionError | ActionInfo | ActionProgress) -> None:
        run = self._running.get(answer.task)
        step = run.task.step if run is not None else None
        subscriber_id = answer.subscriber_id
        if run is None or step is None or step.step.name != answer.step or subscriber_id is None:
            logger.debug(
                "ignoring %s for %s/%s: not awaited", answer.kind.value, answer.task, answer.step
            )
            return
        step.record_heard(subscriber_id, trio.current_time())
        if isinstance(answer, ActionDone):
            if step.record_answer(subscriber_id, Answer.DONE):
                run.dirty = True
                self._answered(run)
        elif isinstance(answer, ActionError):
            if step.record_answer(subscriber_id, Answer.ERROR, answer.error):
                run.dirty = True
                self.log.add(
                    run.task.id,
                    LogKind.ERROR,
                    answer.error,
                    step=answer.step,
                    subscriber=subscriber_id,
                )
                self._emit_error(run, answer.error, subscriber_id)
                self._answered(run)
        elif isinstance(answer, ActionInfo):
            self.log.add(
                run.task.id,
                LogKind.INFO,
                answer.message,
                step=answer.step,
                subscriber=subscriber_id,
                level=answer.level,
            )
            if answer.level == "error" and subscriber_id in step.owed_at_start:
                self._emit_error(run, answer.message, subscriber_id)
        elif step.record_progress(subscriber_id, answer.progress):
            self._progress_changed(run)

    def _answered(self, run: _Run) -> None:
        """Move the task on after a counted answer: at once if its driver sleeps.

        Taking the step's transitions here, in the caller's turn, saves a
        switch to the driver and back for every answer; the driver only
        finishes the task, and keeps handling the timed facts (deadlines,
        progress, stalls).
        """
        if run.sleeper is None or run.moving:
            run.wake()  # the driver is running, or this is inside its own move: it will see
            return
        if not self._move_on_safely(run):
            run.wake()  # the task ended (or failed): the driver takes it from here

    def _emit_error(self, run: _Run, message: str, subscriber_id: str | None = None) -> None:
        if self._wanted(ERROR):
            data = {"workflow": run.task.workflow.name, "task": run.task.id, "message": message}
            if subscriber_id is not None:
                data["subscriber_id"] = subscriber_id
            self._emit(ERROR, data)

    # ------------------------------------------------------------ starting and stopping

    def start_workflow(self, workflow_id: str, *, reason: str = "manual") -> StartResult:
        """Start a run of a workflow or job, as its surpass behaviour allows.

        Raises:
            UnknownWorkflowError: nothing is registered under ``workflow_id``.
        """
        registered = self._registered(workflow_id)
        if self._frozen:
            raise EngineClosed(f"the engine is stopping: workflow {workflow_id!r} not started")
        surpass = registered.workflow.surpass
        active = (
            []
            if surpass is Surpass.PARALLEL
            else [run for run in registered.active if run.stop_request is None]
        )
        if active:
            if surpass is Surpass.SKIP:
                return StartResult(
                    workflow_id, StartDecision.SKIPPED, reason="a run is active (surpass skip)"
                )
            if surpass is Surpass.WAIT:
                if registered.queued is not None:
                    return StartResult(
                        workflow_id,
                        StartDecision.SKIPPED,
                        reason="a run is active and another is already queued (surpass wait)",
                    )
                queued = _new_id()
                self._queue(registered, queued)
                if self._writer is not None:  # a queued run survives a restart too
                    self._writer.save_task(
                        queued,
                        workflow_id,
                        orjson.dumps(
                            {
                                "id": queued,
                                "workflow": workflow_id,
                                "created_at": self.clock.to_epoch(trio.current_time()),
                                "state": QUEUED,
                                "steps": [],
                            }
                        ),
                    )
                logger.info("queued a run of %s (%s)", workflow_id, reason)
                return StartResult(workflow_id, StartDecision.QUEUED, queued)
            if surpass is Surpass.REPLACE:
                task_id = _new_id()
                for run in active:
                    self._request_stop(run, replaced=True, reason=f"replaced by task {task_id}")
                self._start(registered, task_id, reason)
                return StartResult(
                    workflow_id,
                    StartDecision.STARTED,
                    task_id,
                    replaced=tuple(r.task.id for r in active),
                )
        return StartResult(
            workflow_id, StartDecision.STARTED, self._start(registered, _new_id(), reason)
        )

    def _start(self, registered: _Registered, task_id: str, reason: str) -> str:
        task = registered.machine.new_task(task_id, now=trio.current_time())
        run = _Run(task, registered, registered.routing)
        registered.active[run] = None
        self._running[task_id] = run
        logger.info("starting task %s of %s (%s)", task_id, registered.workflow.id, reason)
        self._nursery.start_soon(self._drive, run)
        return task_id

    def stop_task(self, task_id: str, *, reason: str | None = None) -> bool:
        """Stop a running or queued task; return False if it had already ended.

        The listeners the current step still waits for get ``action_abort``;
        the task ends as ``stopped``.

        Raises:
            UnknownTaskError: no task has this id.
        """
        run = self._running.get(task_id)
        if run is not None:
            if run.stop_request is not None or run.task.state == END:
                return False
            self._request_stop(run, replaced=False, reason=reason)
            return True
        registered = self._queued.pop(task_id, None)
        if registered is not None:
            event = registered.queued_event
            registered.queued = registered.queued_event = None
            now = self.clock.now()
            try:
                self._record(
                    TaskResult(
                        task_id,
                        registered.workflow.id,
                        Outcome.STOPPED,
                        reason or "stopped",
                        (),
                        now,
                        now,
                        (),
                    )
                )
            finally:  # whatever the store says, nothing waits for this run any more
                if event is not None:
                    event.set()
            return True
        if self._finished(task_id) is not None:
            return False
        raise UnknownTaskError(task_id)

    def _request_stop(self, run: _Run, *, replaced: bool, reason: str | None) -> None:
        run.stop_request = (replaced, reason)
        run.wake()

    async def wait_task(self, task_id: str) -> TaskResult:
        """Wait until a task (running, queued or finished) has ended; return its result.

        Raises:
            UnknownTaskError: no task has this id.
            EngineClosed: the engine closed first.
        """
        while True:
            result = self._finished(task_id)
            if result is not None:
                await self._persistence.settled(task_id)  # its task_end has gone out
                return result
            run = self._running.get(task_id)
            if run is not None:
                if run.ended is None:
                    run.ended = trio.Event()
                await run.ended.wait()
            elif task_id in self._queued:
                event = self._queued[task_id].queued_event
                assert event is not None
                await event.wait()
            else:
                raise UnknownTaskError(task_id)
            if self._closed and task_id not in self._results:
                raise EngineClosed(f"the engine closed before task {task_id!r} ended")

    async def run_workflow(self, workflow_id: str) -> TaskResult:
        """Start a workflow and wait for the task to end (see :meth:`start_workflow`).

        Raises:
            PhasebusError: the surpass behaviour skipped the run.
        """
        started = self.start_workflow(workflow_id)
        if started.task_id is None:
            raise PhasebusError(f"workflow {workflow_id!r} was not started: {started.reason}")
        return await self.wait_task(started.task_id)

    # ------------------------------------------------------------ observing

    def tasks(self) -> list[TaskInfo]:
        """Return the running tasks, oldest first."""
        return [self._info(run) for run in self._running.values()]

    def task(self, task_id: str) -> TaskInfo | TaskResult:
        """Return a running task's info or a finished task's result.

        Raises:
            UnknownTaskError: no task has this id (finished results are kept
                for the most recent ``keep_results`` tasks).
        """
        run = self._running.get(task_id)
        if run is not None:
            return self._info(run)
        result = self._finished(task_id)
        if result is None:
            raise UnknownTaskError(task_id)
        return result

    def task_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Return up to ``limit`` ids of known tasks (running, queued, finished) with ``prefix``."""
        found: dict[str, None] = {}
        for ids in (self._running, self._queued, reversed(self._results)):
            for task_id in ids:
                if task_id.startswith(prefix):
                    found[task_id] = None
                    if len(found) >= limit:
                        return list(found)
        if self._store is not None:
            self._persistence.flush()  # reads see every write staged before them
            found.update(dict.fromkeys(self._store.task_ids(prefix, limit=limit)))
        return list(found)[:limit]

    def _finished(self, task_id: str) -> TaskResult | None:
        if task_id in self._results:
            return self._results[task_id]
        if self._store is not None:
            self._persistence.flush()
            record = self._store.finished_task(task_id)
            if record is not None:
                return TaskResult.from_record(record)
        return None

    def _info(self, run: _Run) -> TaskInfo:
        task = run.task
        step = task.step
        step_info = None
        if step is not None:
            step_info = StepInfo(
                name=step.step.name,
                action=action_kind(step.step.action),
                message_type=step.step.message_type,
                started_at=self.clock.to_wall(step.entered_at),
                deadline=self.clock.to_wall(step.deadline) if step.deadline is not None else None,
                waiting_for=tuple(sorted(step.waiting_for)),
                answered={sid: str(answer) for sid, answer in step.answers.items()},
                progress=dict(step.progress),
                errors=tuple(step.errors),
                last_heard={sid: self.clock.to_wall(t) for sid, t in step.heard.items()},
                stalled=step.stalled,
                released=tuple(step.released),
            )
        return TaskInfo(
            task.id,
            task.workflow.id,
            task.workflow.name,
            task.state,
            self.clock.to_wall(task.created_at),
            step_info,
            step_results(task, self.clock),
        )

    # ------------------------------------------------------------ driving a task

    async def _drive(self, run: _Run) -> None:
        task = run.task
        try:
            try:
                if not run.replay and not self._frozen and self._wanted(TASK_STARTED):
                    self._emit(
                        TASK_STARTED,
                        {
                            "task": task.workflow.name,
                            "task_id": task.id,
                            "workflow": task.workflow.id,
                            "started_at": self.clock.to_wall(task.created_at).isoformat(),
                        },
                    )
            except Exception as error:
                self._fail(run, error)
            while self._move_on_safely(run):
                await self._sleep(run)
        finally:
            self._finish(run)

    def _move_on_safely(self, run: _Run) -> bool:
        """Run :meth:`_move_on`; a failure in it (writing the task's record, publishing its
        messages) fails that task, never the engine or another task."""
        try:
            return self._move_on(run)
        except Exception as error:
            self._fail(run, error)
            return False

    def _fail(self, run: _Run, error: Exception) -> None:
        run.moving = False
        task = run.task
        reason = f"internal error: {type(error).__name__}: {error}"
        logger.error("task %s of %s failed: %s", task.id, task.workflow.id, reason, exc_info=error)
        step = task.step
        if run.registered.machine.fail(task, now=trio.current_time(), reason=reason):
            try:
                self._emit_error(run, reason)
            except Exception:  # an observer that fails too: the task ends all the same
                logger.exception("task %s: cannot announce its failure", task.id)
            if step is not None:
                self._step_ended(run, step)

    def _move_on(self, run: _Run) -> bool:
        """Take every transition the task can take now; return whether it must wait.

        It runs without awaiting, so it is atomic; the driver runs it after
        each wake-up, and an answer that finishes a step runs it at once
        (see :meth:`_on_answer`), never both at a time.
        """
        if self._frozen or run.committing:
            # stopped where it is (the engine closes), or its state is not yet
            # committed: what it causes has not gone out, so it moves no further
            return True
        task = run.task
        machine = run.registered.machine
        run.moving = True
        try:
            while True:
                if run.stop_request is not None:
                    self._stop_now(run)
                if task.state == END:
                    return False
                step = task.step
                now = trio.current_time()
                if step is not None and not step.began:
                    self._prepare_step(run, step, now)
                    self._save(run)  # durable before its side effects are published
                    self._act(run, step, now)
                    if self._wait_for_commit(run):
                        return True
                elif step is not None and run.replay:
                    self._act(run, step, now)
                run.replay = False
                previous = task.step
                if (previous is None or previous.settled()) and machine.advance(task, now=now):
                    if previous is not None:
                        if run.dirty and previous.waiting_for and task.state != END:
                            self._save(run)  # the answers that led to the aborts come first
                        self._step_ended(run, previous)
                    continue
                if run.dirty:
                    self._save(run)
                self._arm_timer(run)
                return True
        finally:
            run.moving = False

    def _prepare_step(self, run: _Run, step: StepRun, now: float) -> None:
        """Decide whom the step waits for and its deadline (no side effects)."""
        action = step.step.action
        if isinstance(action, PerformAction):
            awaited, longest = self.subscribers.awaited(action.message_type)
            timeout = max(step.step.timeout, longest)
            step.begin(deadline=now + timeout, waiting_for=awaited)
        else:
            step.begin(deadline=now + step.step.timeout)

    def _act(self, run: _Run, step: StepRun, now: float) -> None:
        """Publish the step's action or event, start its command, watch for its event."""
        task = run.task
        action = step.step.action
        if isinstance(action, PerformAction):
            self._after(run, functools.partial(self._announce, run, step, self._action(run)))
            if self._stall_fraction is not None and step.waiting_for:
                assert step.deadline is not None
                window = self._stall_fraction * (step.deadline - step.entered_at)
                run.stall_due = max(now, step.entered_at + window)
        elif isinstance(action, EmitEvent):
            data = {**action.data, "workflow": task.workflow.id, "task": task.id}
            self._after(run, functools.partial(self._emit, action.message_type, data))
        elif isinstance(action, WaitForEvent):
            if not step.finished:
                self._event_waiters.setdefault(action.message_type, set()).add(run)
        elif not step.finished:
            self._after(
                run, functools.partial(self._nursery.start_soon, self._run_command, run, step)
            )
        self._publish_progress(run, after_commit=True)

    def _save(self, run: _Run) -> None:
        run.dirty = False
        if self._persistence.durable:
            if run.encoded_steps is None:
                run.encoded_steps = []
            task = run.task
            self._persistence.stage(
                SaveTask(
                    task.id, task.workflow.id, task_record(task, self.clock, run.encoded_steps)
                )
            )

    def _wait_for_commit(self, run: _Run) -> bool:
        """Hold the task until its new state is committed and what it causes went out.

        Each state's effects then go out before the task reaches the next state:
        a crash never loses what a state caused, whatever the next commit holds.
        Returns whether the task waits (only with a store).
        """
        if not (self._persistence.durable and self._persistence.grouped):
            return False  # committed already
        run.committing = True
        self._after(run, functools.partial(self._committed, run))
        return True

    def _committed(self, run: _Run) -> None:
        run.committing = False
        run.wake()

    def _announce(self, run: _Run, step: StepRun, action: Action) -> None:
        run.announced = step
        self._bus.publish(action)

    def _after(self, run: _Run, effect: Callable[[], object]) -> None:
        """Carry out ``effect`` of the task's state once that state is committed."""
        self._persistence.after(run.task.id, effect)

    def _write_failed(self, task_id: str, error: Exception) -> None:
        run = self._running.get(task_id)
        if self._frozen:
            return  # stopping: the task stays where the store has it
        if run is None:  # its result could not be filed: it is kept in memory only
            logger.error("task %s: its result is kept in memory only: %s", task_id, error)
            return
        run.committing = False  # what its state caused is dropped: it waits for nothing
        self._fail(run, error)
        run.wake()

    def _check_stall(self, run: _Run, step: StepRun) -> None:
        run.stall_due = None
        if step.ended_at is not None or not step.waiting_for:
            return
        assert self._stall_fraction is not None
        assert step.deadline is not None
        window = self._stall_fraction * (step.deadline - step.entered_at)
        quiet_since = step.last_sign_of_life()
        now = trio.current_time()
        if now - quiet_since < window:
            run.stall_due = quiet_since + window
            return
        step.stalled = True
        silent = ", ".join(sorted(step.waiting_for))
        logger.warning(
            "task %s: step %s stalled, waiting for %s", run.task.id, step.step.name, silent
        )
        quiet = now - quiet_since
        stalled = (
            f"step {step.step.name!r} stalled: nothing heard from {silent} for {quiet:g}s"
            f" (deadline in {step.deadline - now:g}s)"
        )
        self.log.add(run.task.id, LogKind.STALLED, stalled, step=step.step.name)
        self._emit_error(run, stalled)

    def _action(self, run: _Run) -> Action:
        task = run.task
        assert task.step is not None
        step = task.step.step
        return Action(step.message_type, task.id, step.name, extra=run.routing)

    def _arm_timer(self, run: _Run) -> None:
        """Make sure the task's timer fires by its next due time (deadline, progress, stall)."""
        step = run.task.step
        assert step is not None
        assert step.deadline is not None
        wake_at = step.deadline
        if run.progress_due is not None:
            wake_at = min(wake_at, run.progress_due)
        if run.stall_due is not None:
            wake_at = min(wake_at, run.stall_due)
        # A timer already set for an earlier time is kept: when it fires, the
        # driver finds nothing due and comes back here to set the right one.
        # Most steps end before their first timer, which is then never moved.
        if not self._timers.pending(run.timer, wake_at):
            if run.timer is not None:
                self._timers.cancel(run.timer)
            run.timer = self._timers.schedule(wake_at, _Run.wake, run)

    async def _sleep(self, run: _Run) -> None:
        await run.sleep()
        if self._frozen:
            return
        step = run.task.step  # the current one: an answer may have moved the task on
        if step is None or step.deadline is None:
            return
        now = trio.current_time()
        if run.progress_due is not None and now >= run.progress_due:
            self._publish_progress(run)
        if run.stall_due is not None and now >= run.stall_due:
            self._check_stall(run, step)
        if now >= step.deadline and not step.is_finished():
            step.record_deadline()
            self.log.add(run.task.id, LogKind.TIMEOUT, step.errors[-1], step=step.step.name)
            self._emit_error(run, step.errors[-1])

    def _step_ended(self, run: _Run, step: StepRun) -> None:
        action = step.step.action
        if isinstance(action, PerformAction) and step.waiting_for:
            if run.announced is step:
                self._abort(run, step)
        elif isinstance(action, WaitForEvent):
            waiters = self._event_waiters.get(action.message_type)
            if waiters is not None:
                waiters.discard(run)
                if not waiters:
                    del self._event_waiters[action.message_type]
        elif isinstance(action, ExecuteCommand) and run.command_scope is not None:
            run.command_scope.cancel()
        run.progress_due = None
        run.stall_due = None
        if run.task.state != END:
            return
        self._publish_progress(run, after_commit=True)

    def _abort(self, run: _Run, step: StepRun) -> None:
        task = run.task
        abort = ActionAbort(step.step.message_type, task.id, step.step.name, extra=run.routing)
        owed = frozenset(step.waiting_for)
        self._after(run, functools.partial(self._bus.publish, abort, subscribers=owed))

    def _stop_now(self, run: _Run) -> None:
        assert run.stop_request is not None
        replaced, reason = run.stop_request
        step = run.task.step
        if (
            run.registered.machine.stop(
                run.task, now=trio.current_time(), replaced=replaced, reason=reason
            )
            and step is not None
        ):
            self._step_ended(run, step)

    async def _run_command(self, run: _Run, step: StepRun) -> None:
        action = step.step.action
        assert isinstance(action, ExecuteCommand)
        error: str | None = None
        output = ""
        if step.ended_at is not None:  # stopped before the command could start
            return
        with trio.CancelScope() as scope:
            run.command_scope = scope
            try:
                if action.callable is not None:
                    command = self._commands[action.callable]
                    await command(
                        CommandContext(self, run.task.id, run.task.workflow.id, step.step.name)
                    )
                else:
                    result = await trio.run_process(
                        list(action.command), capture_stdout=True, capture_stderr=True, check=False
                    )
                    if result.returncode != 0:
                        output = (result.stdout + result.stderr).decode("utf-8", "replace")
                        stderr = result.stderr.decode("utf-8", "replace").strip()[-400:]
                        error = (
                            f"command {action.command[0]!r} exited with status {result.returncode}"
                        )
                        if stderr:
                            error += f": {stderr}"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        if run.command_scope is scope:  # a later step's command may have its own by now
            run.command_scope = None
        if scope.cancelled_caught or step.ended_at is not None:
            return
        step.record_finished(error)
        run.dirty = True
        if error is not None:
            tail = output.strip()[-COMMAND_OUTPUT_TAIL:]
            self.log.add(
                run.task.id,
                LogKind.COMMAND_FAILED,
                f"{error}\n--- last output ---\n{tail}" if tail else error,
                step=step.step.name,
            )
            self._emit_error(run, f"step {step.step.name!r}: {error}")
        run.wake()

    # ------------------------------------------------------------ progress

    def _progress_changed(self, run: _Run) -> None:
        now = trio.current_time()
        if now - run.last_progress >= self._progress_interval:
            self._publish_progress(run)
        elif run.progress_due is None:
            run.progress_due = run.last_progress + self._progress_interval
            run.wake()

    def _publish_progress(self, run: _Run, *, after_commit: bool = False) -> None:
        """Publish the task's progress, now or (``after_commit``) once its state is committed."""
        run.progress_due = None
        if not self._wanted(PROGRESS):
            return
        run.last_progress = trio.current_time()
        task = run.task
        step = task.step
        data = {
            "workflow": task.workflow.name,
            "task": task.id,
            "message": self.progress_of(task).to_json(),
            "step": task.state if task.state == END or step is None else step.step.name,
            "waiting_for": (
                sorted(step.waiting_for) if step is not None and task.state != END else []
            ),
        }
        if after_commit:
            self._after(run, functools.partial(self._emit, PROGRESS, data))
        else:
            self._emit(PROGRESS, data)

    @staticmethod
    def progress_of(task: Task) -> ProgressTree:
        """Return a task's progress: one part per step, listeners' progress in the current one."""
        current = task.step.index if task.step is not None else -1
        parts: list[Progress] = []
        for index, step in enumerate(task.workflow.steps):
            done = index < current or task.state == END
            if (
                index == current
                and task.state != END
                and task.step is not None
                and task.step.progress
            ):
                parts.append(ProgressTree(step.name, tuple(task.step.progress.values())))
            else:
                parts.append(ProgressLeaf(step.name, 1 if done else 0, 1))
        return ProgressTree(task.workflow.name, tuple(parts))

    # ------------------------------------------------------------ ending

    def _finish(self, run: _Run) -> None:
        task = run.task
        registered = run.registered
        if run.timer is not None:
            self._timers.cancel(run.timer)
        del self._running[task.id]
        del registered.active[run]
        if run.ended is not None:
            run.ended.set()
        if task.state != END or self._frozen:
            return  # the engine is closing: the task stays where the store has it
        result = TaskResult.of(task, self.clock)
        try:
            record = None
            if self._persistence.durable:
                record = finished_record(task, self.clock, run.encoded_steps)
            self._record(result, record, has_errors=task_has_errors(task))
        except Exception as error:
            # its texts may hold what JSON cannot carry (a lone surrogate from an
            # in-process answer): keep it with those replaced, rather than lose it
            logger.error("task %s: cannot store its result as it is: %s", task.id, error)
            _replace_unencodable(task)
            result = TaskResult.of(task, self.clock)
            try:
                record = None
                if self._persistence.durable:
                    record = finished_record(task, self.clock)
                self._record(result, record, has_errors=task_has_errors(task))
            except Exception:
                logger.exception("task %s: its result is kept in memory only", task.id)
                self._results[result.id] = result
        to_epoch = self.clock.to_epoch
        self._workflows.get(task.workflow.id, registered).routing = _routing(
            task.workflow.id,
            (
                (s.step.name, to_epoch(s.entered_at), to_epoch(s.ended_at))
                for s in task.history
                if s.ended_at is not None
            ),
        )
        errors = task.errors
        logger.info(
            "task %s of %s ended %s in %.1fs%s",
            task.id,
            task.workflow.id,
            result.outcome.value,
            result.duration,
            f" with {len(errors)} error(s): {'; '.join(errors)[:300]}" if errors else "",
        )
        if self._wanted(TASK_END):
            data: dict[str, Any] = {
                "task_id": task.id,
                "descriptor_id": task.workflow.id,
                "workflow": task.workflow.name,
                "outcome": result.outcome.value,
                "duration": result.duration,
            }
            if result.error is not None:
                data["error"] = result.error
            try:
                self._after(run, functools.partial(self._emit, TASK_END, data))
            except Exception:  # a failing observer: the task has ended all the same
                logger.exception("task %s: cannot announce its end", task.id)
        # The queued run waits with the workflow's registration in force (a replaced
        # definition took it over) until no run of either is active.
        current = self._workflows.get(task.workflow.id)
        if (
            current is not None
            and current.queued is not None
            and not current.active
            and not registered.active
        ):
            self._start_queued(current)

    def _record(
        self, result: TaskResult, record: bytes | None = None, *, has_errors: bool | None = None
    ) -> None:
        """Keep a finished task's result (in the store's history, when there is one)."""
        if self._persistence.durable:
            self._persistence.stage(
                FinishTask(
                    result.id,
                    result.workflow,
                    result.outcome.value,
                    result.started_at.timestamp(),
                    result.ended_at.timestamp(),
                    record if record is not None else orjson.dumps(result.to_record()),
                    result.has_errors if has_errors is None else has_errors,
                )
            )
        self._results[result.id] = result
        while len(self._results) > self._keep_results:
            self._results.popitem(last=False)

    # ------------------------------------------------------------ durable state

    def _persist_config(self, config_id: str, config: Config | None) -> None:
        if self._writer is None:
            raise EngineClosed(f"the engine is stopping: config {config_id!r} not changed")
        if config is None:
            self._writer.delete_config(config_id)
        else:
            self._writer.save_config(config)

    def _restore(self, state: StoredState) -> None:
        """Load what the store kept and resume the interrupted tasks."""
        self.definitions.restore(state.definitions)
        self._restoring = True
        try:
            for config_id in self.configs.restore(state.configs, state.revision_counter):
                logger.error(
                    "the stored config %r cannot be served: %s (stored by an older version;"
                    " replace it with PUT /config/%s or delete it)",
                    config_id,
                    "; ".join(map(str, self.configs.unreadable[config_id])),
                    config_id,
                )
            for subscriber_id, subscriptions in state.subscribers.items():
                try:
                    self.subscribers.replace(
                        subscriber_id, [Subscription(**entry) for entry in subscriptions]
                    )
                except (InvalidInputError, TypeError) as error:
                    # kept by an older version that took any id: it cannot be served
                    # (nor named in a URL) now, so it is dropped, loudly
                    logger.error(
                        "removing the stored subscriber %r: it cannot be used (%s)",
                        subscriber_id,
                        "; ".join(str(error).splitlines()),
                    )
                    if self._writer is not None:
                        self._writer.delete_subscriber(subscriber_id)
            self._schedules.restore(state.schedule_marks)
        finally:
            self._restoring = False
        core = self.configs.get(CORE_CONFIG)
        if core is not None:
            problems = self._check_config(CORE_CONFIG, core.data)
            if problems:
                logger.error(
                    "ignoring the stored %s: %s", CORE_CONFIG, "; ".join(map(str, problems))
                )
            else:
                self._config_changed(CORE_CONFIG, core.data)
        for record in state.tasks:
            if record.get("state") == QUEUED and record.get("workflow") in self._workflows:
                self._queue(self._workflows[record["workflow"]], record["id"])
            else:
                self._resume(record)
        for registered in self._workflows.values():
            if registered.queued is not None and not registered.active:
                self._start_queued(registered)

    def _queue(self, registered: _Registered, task_id: str) -> None:
        registered.queued = task_id
        registered.queued_event = trio.Event()
        self._queued[task_id] = registered

    def _start_queued(self, registered: _Registered) -> None:
        task_id, event = registered.queued, registered.queued_event
        assert task_id is not None
        assert event is not None
        registered.queued = registered.queued_event = None
        del self._queued[task_id]
        self._start(registered, task_id, "queued run")
        event.set()

    def _resume(self, record: Mapping[str, Any]) -> None:
        registered = self._workflows.get(record["workflow"])
        try:
            if registered is None:
                raise RestoreError(f"workflow {record['workflow']!r} is no longer registered")
            task = restore_task(record, registered.workflow, self.clock)
        except (RestoreError, KeyError, TypeError, ValueError, OverflowError) as error:
            logger.error("task %s cannot resume: %s", record["id"], error)
            now = self.clock.now()
            try:
                started = datetime.fromtimestamp(record["created_at"], now.tzinfo)
            except (KeyError, TypeError, ValueError, OverflowError):
                started = now
            self._record(
                TaskResult(
                    record["id"],
                    record["workflow"],
                    Outcome.FAILED,
                    f"cannot resume after a restart: {error}",
                    (str(error),),
                    started,
                    now,
                    (),
                )
            )
            return
        step = task.step
        if step is not None and step.began and isinstance(step.step.action, PerformAction):
            subscribed = self.subscribers.waiting_for(step.step.action.message_type)
            for subscriber_id in list(step.waiting_for):
                if subscriber_id not in subscribed and step.forget_subscriber(subscriber_id):
                    self.log.add(
                        task.id,
                        LogKind.RELEASED,
                        f"{subscriber_id} is gone since the restart: the step no longer waits"
                        " for it",
                        step=step.step.name,
                        subscriber=subscriber_id,
                    )
        logger.info("resuming task %s of %s in state %s", task.id, task.workflow.id, task.state)
        run = _Run(task, registered, registered.routing, replay=True)
        run.announced = task.step  # sent before the restart (and sent again now)
        registered.active[run] = None
        self._running[task.id] = run
        self._nursery.start_soon(self._drive, run)

    def history(
        self,
        *,
        workflow: str | None = None,
        outcome: Outcome | str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[TaskResult]:
        """Return finished tasks, newest first, filtered as asked.

        With a store, the history holds every task finished within the
        retention period; without one, the last ``keep_results`` tasks.
        """
        wanted = None if outcome is None else Outcome(outcome)
        if self._store is not None:
            self._persistence.flush()  # reads see every write staged before them
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
            for r in reversed(self._results.values())
            if (workflow is None or r.workflow == workflow)
            and (wanted is None or r.outcome is wanted)
            and (since is None or r.ended_at >= since)
            and (has_errors is None or r.has_errors is has_errors)
        ]
        return results[:limit]

    async def _prune_history(self, store: Store) -> None:
        while not self._frozen:
            pruned = store.prune(self.clock.now() - store.retention)
            if pruned:
                logger.info("removed %d finished tasks older than %s", pruned, store.retention)
            await trio.sleep(3600)

    @property
    def closing(self) -> bool:
        """Whether the engine is stopping (see :meth:`freeze`)."""
        return self._frozen

    def freeze(self) -> None:
        """Stop every task where it is, because the program is stopping.

        From now on no task moves, nothing is published for a task, nothing is
        written to the store and nothing starts; answers and events are
        refused (:class:`EngineClosed`), and a subscriber removed now releases
        no step. Call it before anything goes away (listeners, subscribers):
        a restart on the same store then resumes every task where it was.
        Leaving :func:`open_engine` freezes the engine first. Idempotent.
        """
        if self._frozen:
            return
        self._frozen = True
        self._persistence.close()
        self._writer = None
        for run in self._running.values():
            if run.timer is not None:
                self._timers.cancel(run.timer)
                run.timer = None
        self._schedules.stop_all()  # no schedule fires any more

    def _close(self) -> None:
        self.freeze()
        self._closed = True
        for run in list(self._running.values()):
            if run.ended is not None:
                run.ended.set()
        for registered in self._queued.values():
            if registered.queued_event is not None:
                registered.queued_event.set()
        for listener in list(self._bus.listeners):
            self._bus.detach(listener, ENGINE_CLOSED)


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
    store: Store | None = None,
    sources: Mapping[str, str] | None = None,
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
        store: where state is kept across restarts (see :class:`SQLiteStore`);
            on open, configs, subscribers and schedule marks are loaded and
            interrupted tasks resume where they were. None keeps nothing.
        sources: the file that declared each of ``workflows`` and ``jobs``, by
            id; those cannot be changed at run time (see
            :attr:`Engine.definitions`). The others count as built in.

    Leaving the block cancels everything the engine runs: running tasks stop
    where they are, without ``task_end``, and listeners are disconnected.
    """
    if progress_interval < 0:
        raise ValueError(f"progress_interval must be >= 0, got {progress_interval!r}")
    if listener_buffer < 1:
        raise ValueError(f"listener_buffer must be >= 1, got {listener_buffer!r}")
    if stall_fraction is not None and not 0 < stall_fraction < 1:
        raise ValueError(f"stall_fraction must be between 0 and 1, got {stall_fraction!r}")
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
        )
        for workflow in workflows:
            engine.add_workflow(workflow)
        for job in jobs:
            engine.add_job(job)
        engine.definitions.declare(sources or {})
        if store is not None:
            engine._restore(store.load())
            nursery.start_soon(engine._prune_history, store)
        try:
            yield engine
        finally:
            engine._close()
            nursery.cancel_scope.cancel()
