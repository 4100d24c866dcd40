"""The state machine of a workflow: it decides, it never acts.

Each workflow gets one :class:`WorkflowMachine`, a ``transitions`` machine
whose states are ``start``, the workflow's steps and ``end``. Its model is a
:class:`Task`: the record of one run. The machine is built once per workflow
and shared by all its tasks; tasks are not registered with it (registering
models is linear per model, so quadratic for many live tasks), the machine's
events are triggered with the task as the model instead.

Nothing here does I/O or knows about trio: the engine feeds facts (an answer
arrived, the deadline passed, the command finished) into the task, passing
the time as a number, and asks the machine to move on. The machine's
conditions say whether the step is done.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, cast

import attrs
from transitions import Event, EventData, Machine, MachineError, State, Transition

from ._definitions import (
    Ends,
    OnError,
    Step,
    Workflow,
)
from ._messages import Progress

START = "start"
END = "end"


class Outcome(enum.StrEnum):
    """How a task ended."""

    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    REPLACED = "replaced"


class Answer(enum.StrEnum):
    """A listener's answer to an action."""

    DONE = "done"
    ERROR = "error"


class StepEnd(enum.StrEnum):
    """How a step ended, worst first: what views show beside each step."""

    #: The task was stopped or replaced while the step was under way.
    STOPPED = "stopped"
    #: The deadline passed before the step's work was over.
    TIMED_OUT = "timed_out"
    #: An error was met: an ``action_error``, a failed command.
    ERROR = "error"
    #: Every answer owed came in except from subscribers that went away (removed or
    #: unsubscribed while owed): the step was released from waiting for them.
    RELEASED = "released"
    #: Everything the step waited for came in.
    DONE = "done"


#: The progress and sign-of-life maps of a step nobody reported in: most steps stay so,
#: and a live task then holds fewer objects for the garbage collector to walk.
_NOTHING: Mapping[str, Any] = MappingProxyType({})


@attrs.define(eq=False)
class StepRun:
    """The live state of one step of a task.

    Times are numbers on the engine's clock (seconds).
    """

    step: Step
    index: int
    entered_at: float
    began: bool = False
    deadline: float | None = None
    waiting_for: set[str] = attrs.Factory(set)
    owed_at_start: frozenset[str] = frozenset()
    answers: dict[str, Answer] = attrs.Factory(dict)
    errors: list[str] = attrs.Factory(list)
    #: Each owed listener's latest progress (a shared empty mapping until one reports).
    progress: Mapping[str, Progress] = _NOTHING
    finished: bool = False
    timed_out: bool = False
    ended_at: float | None = None
    #: When each owed subscriber was last heard from (an answer, progress or info).
    heard: Mapping[str, float] = _NOTHING
    #: Whether the step was reported stalled (nobody heard from for too long).
    stalled: bool = False
    #: Owed subscribers that went away (removed, unsubscribed) before answering.
    released: tuple[str, ...] = ()
    #: Whether the task was stopped (or replaced) while the step was under way.
    stopped: bool = False

    def begin(self, *, deadline: float, waiting_for: frozenset[str] = frozenset()) -> None:
        """Record that the step's action went out and whom it waits for."""
        self.began = True
        self.deadline = deadline
        self.waiting_for = set(waiting_for)
        self.owed_at_start = waiting_for
        if self.step.action.ends is Ends.AT_ONCE:
            self.finished = True

    def record_answer(self, subscriber_id: str, answer: Answer, error: str | None = None) -> bool:
        """Record an answer; return whether it counted (the step waited for it)."""
        if self.ended_at is not None or subscriber_id not in self.waiting_for:
            return False
        self.waiting_for.discard(subscriber_id)
        self.answers[subscriber_id] = answer
        if answer is Answer.ERROR:
            self.errors.append(f"{subscriber_id}: {error or 'n/a'}")
        return True

    def record_progress(self, subscriber_id: str, progress: Progress) -> bool:
        """Record a listener's progress; return whether the step is waiting for it."""
        if self.ended_at is not None or subscriber_id not in self.owed_at_start:
            return False
        if not isinstance(self.progress, dict):
            self.progress = {}
        self.progress[subscriber_id] = progress
        return True

    def record_heard(self, subscriber_id: str, at: float) -> None:
        """Record a sign of life from a subscriber the step waited for."""
        if self.ended_at is None and subscriber_id in self.owed_at_start:
            if not isinstance(self.heard, dict):
                self.heard = {}
            self.heard[subscriber_id] = at

    def last_sign_of_life(self) -> float:
        """Return when anyone the step waits for was last heard from (or when it began)."""
        return max(self.heard.values(), default=self.entered_at)

    def forget_subscriber(self, subscriber_id: str) -> bool:
        """Stop waiting for a subscriber that went away; return whether it was owed."""
        if self.ended_at is not None or subscriber_id not in self.waiting_for:
            return False
        self.waiting_for.discard(subscriber_id)
        self.released = (*self.released, subscriber_id)
        return True

    def record_finished(self, error: str | None = None) -> None:
        """Record that the step's event arrived or its command ended (with ``error``)."""
        if self.ended_at is None and not self.finished:
            self.finished = True
            if error is not None:
                self.errors.append(error)

    def record_deadline(self) -> None:
        """Record that the step's deadline passed."""
        if self.ended_at is not None or self.is_finished():
            return
        self.timed_out = True
        self.errors.append(self.step.action.timeout_error(self.step.name, self.waiting_for))

    def is_finished(self) -> bool:
        """Tell whether the step's work is over (answered, arrived, ended or timed out)."""
        if self.timed_out:
            return True
        if self.step.action.ends is Ends.ANSWERS:
            return self.began and not self.waiting_for
        return self.finished

    def has_error(self) -> bool:
        """Tell whether the step has met an error."""
        return bool(self.errors)

    @property
    def end(self) -> StepEnd:
        """How the step ended (or, while it runs, how it stands)."""
        return step_end(
            stopped=self.stopped,
            timed_out=self.timed_out,
            errors=bool(self.errors),
            released=bool(self.released),
        )


@attrs.define(eq=False)
class Task:
    """One run of a workflow: the model of the workflow's machine.

    Tasks are never added to the machine as models (transitions would attach
    trigger methods to them), so a task can do without an instance dict.
    """

    id: str
    workflow: Workflow
    created_at: float
    state: str = START
    step: StepRun | None = None
    history: list[StepRun] = attrs.Factory(list)
    outcome: Outcome | None = None
    error: str | None = None
    ended_at: float | None = None

    @property
    def errors(self) -> list[str]:
        """Every error met by the task's steps, in order."""
        return [error for run in self.history for error in run.errors]

    @property
    def is_ended(self) -> bool:
        """Tell whether the task reached its end state."""
        return self.state == END


def step_end(*, stopped: bool, timed_out: bool, errors: bool, released: bool) -> StepEnd:
    """Return how a step ended, from what was recorded of it (the worst counts)."""
    if stopped:
        return StepEnd.STOPPED
    if timed_out:
        return StepEnd.TIMED_OUT
    if errors:
        return StepEnd.ERROR
    if released:
        return StepEnd.RELEASED
    return StepEnd.DONE


# ---------------------------------------------------------------- callbacks


def _task(event: EventData) -> Task:
    return cast("Task", event.model)  # the only models are tasks


def _now(event: EventData) -> float:
    now: float = event.kwargs["now"]
    return now


def _leave_step(task: Task, now: float) -> None:
    if task.step is not None and task.step.ended_at is None:
        task.step.ended_at = now


def _enterer(step: Step, index: int) -> Callable[[EventData], None]:
    def enter(event: EventData) -> None:
        task = _task(event)
        now = _now(event)
        _leave_step(task, now)  # the step before, if any
        task.step = StepRun(step, index, entered_at=now)
        task.history.append(task.step)

    return enter


def _ender(outcome: Outcome) -> Callable[[EventData], None]:
    def end(event: EventData) -> None:
        task = _task(event)
        task.outcome = outcome
        task.ended_at = _now(event)
        step = task.step
        if (
            outcome in (Outcome.STOPPED, Outcome.REPLACED)
            and step is not None
            and step.ended_at is None
            and not step.is_finished()
        ):
            step.stopped = True
        _leave_step(task, task.ended_at)
        reason = event.kwargs.get("reason")
        if outcome is Outcome.FAILED and reason is not None:  # failed from outside the step
            task.error = reason
            if step is not None:
                step.errors.append(reason)
        elif outcome is Outcome.FAILED and step is not None:
            task.error = step.errors[0] if step.errors else "failed"
        elif outcome in (Outcome.STOPPED, Outcome.REPLACED):
            task.error = reason or outcome.value

    return end


def step_finished(task: Task) -> bool:
    """Tell whether the task's step is over (answered, arrived, ended or timed out)."""
    step = task.step
    return step is not None and step.is_finished()


def step_failed(task: Task) -> bool:
    """Tell whether the task's step has met an error."""
    step = task.step
    return step is not None and step.has_error()


def _is_finished(event: EventData) -> bool:
    return step_finished(_task(event))


def _has_error(event: EventData) -> bool:
    return step_failed(_task(event))


#: The task-level test behind each condition of the machine's transitions.
_GUARDS: dict[Callable[[EventData], bool], Callable[[Task], bool]] = {
    _is_finished: step_finished,
    _has_error: step_failed,
}


def _always(task: Task) -> bool:
    return True


@attrs.frozen
class TransitionSpec:
    """One transition of a workflow's machine, described as data (for diagrams)."""

    trigger: str
    source: str
    dest: str
    label: str
    conditions: tuple[Callable[[EventData], bool], ...] = ()
    before: tuple[Callable[[EventData], None], ...] = ()
    #: How the task ends when this transition goes to ``end`` (None otherwise).
    outcome: Outcome | None = None


def machine_spec(workflow: Workflow) -> tuple[list[State], list[TransitionSpec]]:
    """Return the states and transitions of a workflow's machine.

    ``advance`` moves from each step to the next once the step is finished
    (all answers in, event seen, command ended, or deadline passed); a step
    whose ``on_error`` is ``stop`` goes to ``end`` as soon as it has an error.
    ``stop``, ``replace`` and ``fail`` (the engine could not carry the task on:
    its record or its messages failed) go from any state but ``end`` to ``end``.
    """
    steps = workflow.steps
    states = [State(START)]
    transitions = [TransitionSpec("advance", START, steps[0].name, "start")]
    for index, step in enumerate(steps):
        states.append(State(step.name, on_enter=[_enterer(step, index)]))
        if step.on_error is OnError.STOP:
            transitions.append(
                TransitionSpec(
                    "advance",
                    step.name,
                    END,
                    "error: stop",
                    conditions=(_has_error,),
                    before=(_ender(Outcome.FAILED),),
                    outcome=Outcome.FAILED,
                )
            )
        last = index == len(steps) - 1
        transitions.append(
            TransitionSpec(
                "advance",
                step.name,
                END if last else steps[index + 1].name,
                "done" if step.on_error is OnError.STOP else "done or error: continue",
                conditions=(_is_finished,),
                before=(_ender(Outcome.DONE),) if last else (),
                outcome=Outcome.DONE if last else None,
            )
        )
    states.append(State(END))
    for trigger, outcome in (
        ("stop", Outcome.STOPPED),
        ("replace", Outcome.REPLACED),
        ("fail", Outcome.FAILED),
    ):
        for state in [START, *(step.name for step in steps)]:
            transitions.append(
                TransitionSpec(
                    trigger, state, END, trigger, before=(_ender(outcome),), outcome=outcome
                )
            )
    return states, transitions


def describe_state(step: Step) -> str:
    """Describe a step's state for views: its action and timeout."""
    return f"{step.action.describe()}, timeout {step.timeout:g}s, on error {step.on_error.value}"


class _Transition(Transition):
    """A transition of a workflow's machine, carried out without indirection.

    The machine's transitions are built from callables (never names) and the
    machine has no machine-wide callbacks, so the conditions and callbacks
    are called directly, in transitions' order: conditions, ``before``, the
    source's exit callbacks, the new state, its enter callbacks, ``after``.
    Transitions' own ``execute`` resolves every callback by name and logs
    each stage; on the path of every answer, that was most of a step's cost.
    """

    def execute(self, event_data: EventData) -> bool:
        # every callback is a callable (machine_spec builds them): Any says so to mypy
        conditions: Any = self.conditions
        for condition in conditions:
            if condition.func(event_data) != condition.target:
                return False
        callbacks: Any = self.before
        for callback in callbacks:
            callback(event_data)
        states: Any = event_data.machine.states
        for callback in states[self.source].on_exit:
            callback(event_data)
        task: Any = event_data.model
        task.state = self.dest
        dest = states[self.dest]
        event_data.state = dest
        for callback in dest.on_enter:
            callback(event_data)
        callbacks = self.after
        for callback in callbacks:
            callback(event_data)
        return True


class _Event(Event):
    """A trigger of a workflow's machine: the first of its transitions from the task's
    state whose conditions hold is taken (as transitions does, without its queue and
    machine-wide callbacks, which these machines do not use)."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        transitions = self.transitions.get(model.state)
        if transitions is None:
            raise MachineError(f"can't trigger {self.name} from state {model.state}")
        event_data = EventData(
            self.machine.states[model.state], self, self.machine, model, args, kwargs
        )
        for transition in transitions:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                return True
        return False


class _Machine(Machine):
    transition_cls = _Transition
    event_cls = _Event


class WorkflowMachine:
    """The machine of one workflow, shared by all of its tasks."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        states, transitions = machine_spec(workflow)
        self._machine = _Machine(
            model=None,
            states=states,
            transitions=[
                {
                    "trigger": t.trigger,
                    "source": t.source,
                    "dest": t.dest,
                    "conditions": list(t.conditions),
                    "before": list(t.before),
                }
                for t in transitions
            ],
            initial=START,
            auto_transitions=False,
            send_event=True,
            model_override=True,
        )
        machine = self._machine
        # what _Event and _Transition leave out must be unused
        unused = (
            machine.prepare_event,
            machine.finalize_event,
            machine.before_state_change,
            machine.after_state_change,
            machine.on_exception,
            machine.on_final,
            machine.has_queue,
        )
        assert not any(unused)
        events: Mapping[str, Any] = machine.events
        self._advance = events["advance"]
        #: Per state, the tests of its ``advance`` transitions' conditions (see may_advance).
        self._guards: dict[str, tuple[Callable[[Task], bool], ...]] = {}
        for t in transitions:
            if t.trigger == "advance":
                guard = _GUARDS[t.conditions[0]] if t.conditions else _always
                self._guards[t.source] = (*self._guards.get(t.source, ()), guard)
        self._stop = events["stop"]
        self._replace = events["replace"]
        self._fail = events["fail"]

    def new_task(self, task_id: str, *, now: float) -> Task:
        """Return a task of this workflow in the ``start`` state."""
        return Task(task_id, self.workflow, created_at=now)

    def may_advance(self, task: Task) -> bool:
        """Tell whether :meth:`advance` would move the task now, from the very conditions of
        the machine's transitions (a cheap test: no event is triggered)."""
        for guard in self._guards.get(task.state, ()):  # noqa: SIM110 (no generator per call)
            if guard(task):
                return True
        return False

    def advance(self, task: Task, *, now: float) -> bool:
        """Move the task on if its step is done; return whether it moved."""
        if task.state == END:
            return False
        moved: bool = self._advance.trigger(task, now=now)
        return moved

    def stop(
        self, task: Task, *, now: float, replaced: bool = False, reason: str | None = None
    ) -> bool:
        """End the task as ``stopped`` (or ``replaced``); return whether it was running."""
        if task.state == END:
            return False
        event = self._replace if replaced else self._stop
        moved: bool = event.trigger(task, now=now, reason=reason)
        return moved

    def fail(self, task: Task, *, now: float, reason: str) -> bool:
        """End the task as ``failed`` for ``reason``; return whether it was running."""
        if task.state == END:
            return False
        moved: bool = self._fail.trigger(task, now=now, reason=reason)
        return moved
