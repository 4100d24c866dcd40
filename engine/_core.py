"""The core: it takes facts and decides, it never does I/O.

:class:`Core` holds the running tasks. Each of its public methods is a fact
(a run was asked for, an answer or an event arrived, a deadline passed, a
command ended, a subscriber went away, a write failed) with the time as a
number on the engine's clock (with servers sharing a Redis store, also the
store's verdict on a run asked for: see :mod:`engine._admission`). It
records the fact on the task, asks the task's workflow machine to move on
(``transitions`` decides every state change) and appends what must happen
to :attr:`Core.intents`; the trio
driver (:mod:`engine._driver`) carries those out in order. Nothing here
imports trio or touches the store or the network, so every rule (surpass,
who a step waits for and its deadline, stalls, progress, time-outs, stop,
release) is tested by feeding facts and reading intents.

Every fact is handled without awaiting anything, so each is atomic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._admission import StartDecision as StartDecision
from ._admission import StartResult, admitted, ask, asks_store, start
from ._clock import Clock
from ._intents import Dequeued, Emit, Ended, Hold, Intent, Log, Stage, Start, Wake
from ._machine import END, Answer, Outcome, StepRun, Task
from ._messages import (
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    Event,
)
from ._records import TaskResult, task_has_errors, task_record
from ._rules import ERROR as ERROR
from ._rules import PROGRESS as PROGRESS
from ._rules import QUEUED as QUEUED
from ._rules import TASK_END as TASK_END
from ._rules import TASK_STARTED as TASK_STARTED
from ._rules import (
    error_event,
    finish_write,
    never_ran,
    progress_event,
    result_of,
    stall_message,
    stall_window,
    stalled_since,
    task_end_event,
    task_started_event,
)
from ._runs import Registered, Run
from ._steps import step_kind
from ._store import SaveTask
from ._subscribers import SubscriberRegistry
from ._tasklog import LogKind
from ._workflows import WorkflowTable, routing

logger = logging.getLogger("engine._engine")


#: Characters of a failed command's output kept in its task's log.
COMMAND_OUTPUT_TAIL = 1500


def _waiting_for(waiters: dict[str, set[Run]], event: Event) -> Iterator[tuple[Run, StepRun]]:
    """Yield the runs whose current step ``event`` finishes, with that step (each looked at
    when its turn comes, after the ones before it moved on)."""
    message_type = event.message_type
    for run in list(waiters.get(message_type, ())):
        step = run.task.step
        if step is not None and step_kind(step.step.action).matches(step, message_type, event.data):
            yield run, step


class Core:
    """The running tasks and the rules that move them (see the module's doc)."""

    def __init__(
        self,
        *,
        workflows: WorkflowTable,
        subscribers: SubscriberRegistry,
        clock: Clock,
        keep: Callable[[TaskResult], None],
        wanted: Callable[[str], bool],
        progress_interval: float,
        stall_fraction: float | None,
    ) -> None:
        self.workflows = workflows
        self.subscribers = subscribers
        self.clock = clock
        self._keep = keep
        self._bus_wants = wanted
        self._progress_interval = progress_interval
        self._stall_fraction = stall_fraction
        #: What the driver must do, in order.
        self.intents: list[Intent] = []
        self.running: dict[str, Run] = {}
        #: Message type -> the runs whose current step waits for events of that type.
        self.event_waiters: dict[str, set[Run]] = {}
        #: Message type -> the runs whose current step owes answers of that type.
        self.owing: dict[str, dict[Run, None]] = {}
        #: Whether task states and results are written to a store.
        self.durable = False
        #: Set when the program stops: no fact changes anything any more.
        self.frozen = False
        #: Whether the store shared with other replicas admits runs (see :meth:`ask`).
        self.shared = False
        #: Runs asked of the shared store, not decided yet: id -> (workflow, reason).
        self.asking: dict[str, tuple[Registered, str]] = {}
        #: Runs asked for that the store started before its verdict came here.
        self.promoted: set[str] = set()

    # ------------------------------------------------------------ facts

    def start(self, workflow_id: str, reason: str, now: float) -> StartResult:
        """A run was asked for: start, queue or skip it, as its surpass behaviour says
        (see :func:`engine._admission.start`)."""
        return start(self, workflow_id, reason, now)

    def admitted(
        self, task_id: str, verdict: str, names: tuple[str, ...], now: float
    ) -> StartResult:
        """The shared store decided on a run asked for (see :func:`admitted`)."""
        return admitted(self, task_id, verdict, names, now)

    def stop(
        self, task_id: str, reason: str | None, now: float, *, replaced: bool = False
    ) -> bool | None:
        """A stop was asked for: True if the task stops, False if it had ended, None if the
        core does not know it (it may be in the history). ``replaced``: by a new run."""
        run = self.running.get(task_id)
        if run is not None:
            if run.stop_request is not None or run.task.state == END:
                return False
            self._request_stop(run, replaced, reason, now)
            return True
        registered = self.workflows.queued.pop(task_id, None)
        if registered is None:
            return None
        if registered.queued == task_id:
            registered.queued = None
        self.record(never_ran(task_id, registered.workflow.id, reason, self.clock.to_wall(now)))
        self.intents.append(Dequeued(task_id))
        return True

    def answer(
        self, answer: ActionDone | ActionError | ActionInfo | ActionProgress, now: float
    ) -> None:
        """A listener answered an action (or reported progress or information)."""
        run = self.running.get(answer.task)
        step = run.task.step if run is not None and run.task.state != END else None
        subscriber_id = answer.subscriber_id
        if run is None or step is None or step.step.name != answer.step or subscriber_id is None:
            logger.debug(
                "ignoring %s for %s/%s: not awaited", answer.kind.value, answer.task, answer.step
            )
            return
        step.record_heard(subscriber_id, now)
        kind = type(answer)
        if kind is ActionDone:
            if step.record_answer(subscriber_id, Answer.DONE):
                run.dirty = True
                self._move_on_safely(run, now)
        elif kind is ActionError:
            assert isinstance(answer, ActionError)
            if step.record_answer(subscriber_id, Answer.ERROR, answer.error):
                run.dirty = True
                self._log(
                    run, LogKind.ERROR, answer.error, step=answer.step, subscriber=subscriber_id
                )
                self.emit_error(run, answer.error, subscriber_id)
                self._move_on_safely(run, now)
        elif kind is ActionInfo:
            assert isinstance(answer, ActionInfo)
            self._log(
                run,
                LogKind.INFO,
                answer.message,
                step=answer.step,
                subscriber=subscriber_id,
                level=answer.level,
            )
            if answer.level == "error" and subscriber_id in step.owed_at_start:
                self.emit_error(run, answer.message, subscriber_id)
        else:
            assert isinstance(answer, ActionProgress)
            if step.record_progress(subscriber_id, answer.progress):
                self._progress_changed(run, now)

    def event(self, event: Event, now: float) -> None:
        """An event was published here: it may finish waiting steps and start workflows."""
        self.event_elsewhere(event, now)
        if self.frozen:
            return
        message_type = event.message_type
        table = self.workflows
        workflow_id = table.start_events.get(message_type)
        started = [] if workflow_id is None else [workflow_id]
        for trigger, workflow_id in table.event_triggers.get(message_type, ()):
            if trigger.matches(message_type, event.data):
                started.append(workflow_id)
        for workflow_id in started:
            start_it = ask if asks_store(self, workflow_id) else start
            start_it(self, workflow_id, f"event {message_type}", now)

    def event_elsewhere(self, event: Event, now: float) -> None:
        """An event was published through another replica: it may finish the steps waiting
        for it here, and starts no workflow (the replica it was published through did)."""
        for run, step in () if self.frozen else _waiting_for(self.event_waiters, event):
            step.record_finished()
            run.dirty = True
            self._move_on_safely(run, now)

    def kick(self, run: Run, now: float) -> None:
        """A started or resumed task gets its first move (the driver's next turn)."""
        if self.frozen:
            return
        run.started = True
        if not run.replay and self.wanted(TASK_STARTED):
            self.intents.append(Emit(run.task.id, task_started_event(run.task, self.clock)))
        self._move_on_safely(run, now)

    def tick(self, run: Run, now: float) -> None:
        """The time the core asked for came: publish progress, look for stalls, time out."""
        run.wake_at = None
        if self.frozen or run.task.id not in self.running:
            return
        step = run.task.step
        if step is not None and step.deadline is not None:
            if run.progress_due is not None and now >= run.progress_due:
                self._publish_progress(run, now)
            if run.stall_due is not None and now >= run.stall_due:
                self._check_stall(run, step, now)
            if now >= step.deadline and not step.is_finished():
                step.record_deadline()
                self._log(run, LogKind.TIMEOUT, step.errors[-1], step=step.step.name)
                self.emit_error(run, step.errors[-1])
        self._move_on_safely(run, now)

    def command_ended(
        self, run: Run, step: StepRun, error: str | None, output: str, now: float
    ) -> None:
        """A step's command ended (``error`` None: it succeeded; ``output``: its tail)."""
        if self.frozen or step.ended_at is not None:
            return
        step.record_finished(error)
        run.dirty = True
        if error is not None:
            tail = output.strip()[-COMMAND_OUTPUT_TAIL:]
            text = f"{error}\n--- last output ---\n{tail}" if tail else error
            self._log(run, LogKind.COMMAND_FAILED, text, step=step.step.name)
            self.emit_error(run, f"step {step.step.name!r}: {error}")
        self._move_on_safely(run, now)

    def released(self, subscriber_id: str, message_types: frozenset[str], now: float) -> None:
        """A subscriber no longer takes these message types: steps stop waiting for it."""
        if self.frozen:
            # A subscriber leaving because the program stops releases no step:
            # the tasks resume where they were, still waiting for it.
            return
        for message_type in message_types:
            for run in list(self.owing.get(message_type, ())):
                step = run.task.step
                if step is not None and step.forget_subscriber(subscriber_id):
                    self._log(
                        run,
                        LogKind.RELEASED,
                        f"{subscriber_id} went away: the step no longer waits for it",
                        step=step.step.name,
                        subscriber=subscriber_id,
                    )
                    self._move_on_safely(run, now)

    def committed(self, run: Run, now: float) -> None:
        """The task's staged state is committed and what it caused went out."""
        run.committing = False
        self._move_on_safely(run, now)

    def failed(self, task_id: str, error: Exception, now: float) -> None:
        """Writing the task's state, or carrying out what it caused, failed."""
        if self.frozen:
            return  # stopping: the task stays where the store has it
        run = self.running.get(task_id)
        if run is None and task_id in self.workflows.queued:  # its queued record
            registered = self.workflows.queued.pop(task_id)
            registered.queued = None
            why = f"cannot keep the queued run: {type(error).__name__}: {error}"
            logger.error("task %s of %s: %s", task_id, registered.workflow.id, why)
            result = never_ran(task_id, registered.workflow.id, why, self.clock.to_wall(now))
            self.record(attrs.evolve(result, outcome=Outcome.FAILED, errors=(why,)))
            self.intents.append(Dequeued(task_id))
            return
        if run is None or run.task.state == END:
            # its end is not stored: the store still has it running, so a restart takes
            # it up again from there (and its end is announced then, not now)
            why = f"its result could not be stored ({type(error).__name__}: {error})"
            logger.error("task %s ended, but %s; kept in memory only", task_id, why)
            if run is not None:
                self.emit_error(run, f"task ended, but {why}")
                del self.running[task_id]
            return
        run.committing = False  # what its state caused is dropped: it waits for nothing
        self.fail(run, error, now)
        self._move_on_safely(run, now)

    # ------------------------------------------------------------ runs

    def queue(self, registered: Registered, task_id: str) -> None:
        """Queue a run behind the active ones (surpass ``wait``, or restored)."""
        registered.queued = task_id
        self.workflows.queued[task_id] = registered

    def start_queued(self, task_id: str, now: float) -> None:
        """Start a queued run (with a shared store: as it says); one not queued is left."""
        registered = self.workflows.queued.pop(task_id, None)
        if registered is None:
            if task_id in self.asking:
                self.promoted.add(task_id)
            return
        if registered.queued == task_id:
            registered.queued = None
        self.begin(registered, task_id, "queued run", now)
        self.intents.append(Dequeued(task_id))

    def adopt(self, task: Task, registered: Registered) -> Run:
        """Take over a task restored from the store; its current step acts again."""
        logger.info("resuming task %s of %s in state %s", task.id, task.workflow.id, task.state)
        run = Run(task, registered, registered.routing, replay=True)
        step = run.announced = task.step  # sent before the restart (and sent again now)
        if step is not None and step.began:
            step_kind(step.step.action).resumed(self, run, step)
        self._run(run)
        return run

    def begin(self, registered: Registered, task_id: str, reason: str, now: float) -> None:
        """Begin a new run (started, dequeued, or admitted by the shared store)."""
        task = registered.machine.new_task(task_id, now=now)
        logger.info("starting task %s of %s (%s)", task_id, registered.workflow.id, reason)
        self._run(Run(task, registered, registered.routing))

    def _run(self, run: Run) -> None:
        run.registered.active[run] = None
        self.running[run.task.id] = run
        self.intents.append(Start(run.task.id, run))

    def _request_stop(self, run: Run, replaced: bool, reason: str | None, now: float) -> None:
        run.stop_request = (replaced, reason)
        self._move_on_safely(run, now)

    # ------------------------------------------------------------ moving on

    def _move_on_safely(self, run: Run, now: float) -> None:
        """Move the task on; a failure (encoding its record, say) fails that task alone."""
        try:
            self._move_on(run, now)
        except Exception as error:
            self.fail(run, error, now)
            try:
                self._move_on(run, now)  # to its end
            except Exception:
                logger.exception("task %s: cannot end it cleanly", run.task.id)

    def _move_on(self, run: Run, now: float) -> None:
        """Take every transition the task can take now; finish it at its end."""
        if self.frozen or run.committing or not run.started or run.gone:
            return
        task = run.task
        machine = run.registered.machine
        while True:
            if run.stop_request is not None:
                self._stop_now(run, now)
            if task.state == END:
                if run in run.registered.active:
                    self._finish(run, now)
                return
            step = task.step
            if step is not None and not step.began:
                kind = step_kind(step.step.action)
                kind.begin(self, run, step, now)
                self._save(run)  # durable before its side effects are published
                kind.act(self, run, step, now)
                self._publish_progress(run, now)
                self._hold(run)
                return
            if step is not None and run.replay:
                run.replay = False
                kind = step_kind(step.step.action)
                if not (kind.owes_answers and step.is_finished()):  # else answered meanwhile
                    kind.act(self, run, step, now)
                    self._hold(run)
                    return
            run.replay = False
            previous = task.step
            if machine.may_advance(task) and machine.advance(task, now=now):
                if previous is not None:
                    if run.dirty and previous.waiting_for and task.state != END:
                        self._save(run)  # the answers that led to the aborts come first
                    self._step_ended(run, previous, now)
                continue
            if run.dirty:
                self._save(run)
            self._arm_timer(run)
            return

    def _hold(self, run: Run) -> None:
        """Hold the task until what its new state causes has been carried out (with a store,
        committed first): a state's effects then always go out before the next state is
        reached, and one that fails fails the task in the state that caused it."""
        run.committing = True
        self.intents.append(Hold(run.task.id, run))

    def _save(self, run: Run) -> None:
        run.dirty = False
        if self.durable:
            if run.encoded_steps is None:
                run.encoded_steps = []
            task = run.task
            record = task_record(task, self.clock, run.encoded_steps)
            self.intents.append(Stage(task.id, SaveTask(task.id, task.workflow.id, record)))

    def _step_ended(self, run: Run, step: StepRun, now: float) -> None:
        step_kind(step.step.action).end(self, run, step)
        run.progress_due = None
        run.stall_due = None
        if run.task.state == END:
            self._publish_progress(run, now)

    def _stop_now(self, run: Run, now: float) -> None:
        assert run.stop_request is not None
        replaced, reason = run.stop_request
        step = run.task.step
        machine = run.registered.machine
        if machine.stop(run.task, now=now, replaced=replaced, reason=reason) and step is not None:
            self._step_ended(run, step, now)

    def fail(self, run: Run, error: Exception, now: float) -> None:
        """End a task as failed because the engine could not carry it on."""
        task = run.task
        reason = f"internal error: {type(error).__name__}: {error}"
        logger.error("task %s of %s failed: %s", task.id, task.workflow.id, reason, exc_info=error)
        step = task.step
        if run.registered.machine.fail(task, now=now, reason=reason):
            self.emit_error(run, reason)
            if step is not None:
                self._step_ended(run, step, now)

    def _arm_timer(self, run: Run) -> None:
        """Make sure the core hears of the task by its next due time (deadline, progress,
        stall). A wake-up already asked for an earlier time is kept: the task then finds
        nothing due and comes back here. Most steps end before their first wake-up."""
        step = run.task.step
        assert step is not None
        assert step.deadline is not None
        wake_at = step.deadline
        if run.progress_due is not None and run.progress_due < wake_at:
            wake_at = run.progress_due
        if run.stall_due is not None and run.stall_due < wake_at:
            wake_at = run.stall_due
        if run.wake_at is None or run.wake_at > wake_at:
            run.wake_at = wake_at
            self.intents.append(Wake(run.task.id, run, wake_at))

    # ------------------------------------------------------------ progress and stalls

    def watch_stall(self, run: Run, step: StepRun, now: float) -> None:
        """Plan when to look whether a step that owes answers stalled."""
        if self._stall_fraction is not None:
            run.stall_due = max(now, step.entered_at + stall_window(step, self._stall_fraction))

    def _check_stall(self, run: Run, step: StepRun, now: float) -> None:
        run.stall_due = None
        if step.ended_at is not None or not step.waiting_for:
            return
        assert self._stall_fraction is not None
        run.stall_due, quiet_since = stalled_since(step, self._stall_fraction, now)
        if run.stall_due is None:
            step.stalled = True
            stalled = stall_message(step, quiet_since, now)
            logger.warning("task %s: %s", run.task.id, stalled)
            self._log(run, LogKind.STALLED, stalled, step=step.step.name)
            self.emit_error(run, stalled)

    def _progress_changed(self, run: Run, now: float) -> None:
        if now - run.last_progress >= self._progress_interval:
            self._publish_progress(run, now)
        elif run.progress_due is None:
            run.progress_due = run.last_progress + self._progress_interval
            self._arm_timer(run)

    def _publish_progress(self, run: Run, now: float) -> None:
        run.progress_due = None
        if self.wanted(PROGRESS):
            run.last_progress = now
            self.intents.append(Emit(run.task.id, progress_event(run.task)))

    # ------------------------------------------------------------ ending

    def _finish(self, run: Run, now: float) -> None:
        """File an ended task's result, let the driver forget it, start a queued run."""
        task = run.task
        registered = run.registered
        del registered.active[run]
        try:
            self._file(run)
        finally:
            self.intents.append(Ended(task.id, run))  # whatever happened, nothing waits
        # The queued run waits with the workflow's registration in force (a replaced
        # definition took it over) until no run of either is active.
        current = self.workflows.by_id.get(task.workflow.id)
        if (
            current is not None
            and current.queued is not None
            and not current.active
            and not registered.active
            and not self.shared  # else the store starts it (see RedisStore.commit)
        ):
            self.start_queued(current.queued, now)

    def _file(self, run: Run) -> None:
        """Keep an ended task's result, and announce its end."""
        task = run.task
        clock = self.clock
        result, record = result_of(task, clock, run.encoded_steps, durable=self.durable)
        self.record(result, record, has_errors=task_has_errors(task))
        self.workflows.by_id.get(task.workflow.id, run.registered).routing = routing(
            task.workflow.id,
            (
                (s.step.name, clock.to_epoch(s.entered_at), clock.to_epoch(s.ended_at))
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
        if self.wanted(TASK_END):
            self.intents.append(Emit(task.id, task_end_event(task, result)))

    def record(
        self, result: TaskResult, record: bytes | None = None, *, has_errors: bool | None = None
    ) -> None:
        """Keep a finished task's result (and file it in the store's history)."""
        self._keep(result)
        if self.durable:
            self.intents.append(Stage(result.id, finish_write(result, record, has_errors)))

    # ------------------------------------------------------------ telling

    def wanted(self, message_type: str) -> bool:
        """Tell whether an event of this type would reach anyone (else it need not be built)."""
        return (
            self._bus_wants(message_type)
            or message_type in self.workflows.event_triggers
            or message_type in self.event_waiters
            or message_type in self.workflows.start_events
        )

    def emit_error(self, run: Run, message: str, subscriber_id: str | None = None) -> None:
        """Announce an error met by a task (an ``error`` event)."""
        if self.wanted(ERROR):
            self.intents.append(Emit(run.task.id, error_event(run.task, message, subscriber_id)))

    def _log(self, run: Run, kind: LogKind, text: str, **fields: Any) -> None:
        self.intents.append(Log(run.task.id, kind, text, fields))
