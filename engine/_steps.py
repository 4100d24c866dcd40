"""Step kinds: what each kind of step sends, what finishes it, and what its end undoes.

A workflow's step declares an action (:mod:`engine._definitions`): perform an
action, emit an event, wait for an event, execute a command. Each action
class has one :class:`StepKind` here, which the core asks when a step of
that kind begins, acts and ends; the core itself never asks which kind a
step is. What ends a step (answers, at once, a fact) and how it is
described are said by the action class itself (``ends``, ``describe``).

Adding a kind is one action class (with its converter hook, see
:func:`engine._convert.set_readers`) and one :class:`StepKind` registered in
:data:`STEP_KINDS` under the action's ``kind``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._definitions import EmitEvent, StepAction, WaitForEvent
from ._intents import CancelCommand, Emit, Publish, RunCommand
from ._messages import Action, ActionAbort, Event

if TYPE_CHECKING:
    from ._machine import StepRun
    from ._runs import Run
    from ._subscribers import SubscriberRegistry


class Core(Protocol):
    """What a step kind may use of the core: it appends intents and files watches."""

    intents: list[Any]
    subscribers: SubscriberRegistry
    #: Message type -> the runs whose current step owes answers of that type.
    owing: dict[str, dict[Run, None]]
    #: Message type -> the runs whose current step waits for events of that type.
    event_waiters: dict[str, set[Run]]

    def watch_stall(self, run: Run, step: StepRun, now: float) -> None:
        """Plan when to look whether a step that owes answers stalled."""


class StepKind:
    """What the core does with steps of one kind (the base: a step that only waits)."""

    #: Whether steps of this kind owe answers to subscribers (perform action).
    owes_answers = False

    def begin(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        """Decide whom the step waits for and its deadline (nothing goes out yet)."""
        step.begin(deadline=now + step.step.timeout)

    def act(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        """Do what the step does once its state is saved."""

    def act_again(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        """Do what the step does again, after a restart or a takeover (the answers taken
        meanwhile are recorded already)."""
        self.act(core, run, step, now)

    def resumed(self, core: Core, run: Run, step: StepRun) -> None:
        """Take up a step restored after a restart, before it acts again."""

    def end(self, core: Core, run: Run, step: StepRun) -> None:
        """Undo what the step left behind once it ended (aborts, watches, commands)."""

    def matches(self, step: StepRun, message_type: str, data: Mapping[str, Any]) -> bool:
        """Tell whether an event finishes the step (only steps that wait for one)."""
        return False


class PerformActionKind(StepKind):
    """Send an action to the subscribers of its message type; done when all answered."""

    owes_answers = True

    def begin(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        awaited, longest = core.subscribers.awaited(step.step.message_type)
        step.begin(deadline=now + max(step.step.timeout, longest), waiting_for=awaited)
        self.resumed(core, run, step)

    def resumed(self, core: Core, run: Run, step: StepRun) -> None:
        if step.waiting_for:  # a subscriber that goes away releases it (Core.released)
            owing = core.owing.get(step.step.message_type)
            if owing is None:
                owing = core.owing[step.step.message_type] = {}
            owing[run] = None

    def act(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        run.announced = step
        core.intents.append(Publish(run.task.id, action_of(run, step), None, run, step))
        if step.waiting_for:
            core.watch_stall(run, step, now)

    def act_again(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        """Send the action again to its subscribers, but not to those the step no longer
        waits for (they answered, before the restart or among the answers taken over)."""
        settled = step.owed_at_start - step.waiting_for
        if not settled:
            self.act(core, run, step, now)
            return
        message_type = step.step.message_type
        addressed = frozenset(
            subscriber.id
            for subscriber in core.subscribers.for_type(message_type)
            if subscriber.id not in settled
        )
        run.announced = step
        core.intents.append(Publish(run.task.id, action_of(run, step), addressed, run, step))
        if step.waiting_for:
            core.watch_stall(run, step, now)

    def end(self, core: Core, run: Run, step: StepRun) -> None:
        message_type = step.step.message_type
        owing = core.owing.get(message_type)
        if owing is not None and owing.pop(run, 0) is None and not owing:
            del core.owing[message_type]
        if step.waiting_for and run.announced is step:
            task = run.task
            abort = ActionAbort(message_type, task.id, step.step.name, extra=run.routing)
            core.intents.append(Publish(task.id, abort, frozenset(step.waiting_for)))


class EmitEventKind(StepKind):
    """Publish an event with the step's data; done at once."""

    def act(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        action = cast("EmitEvent", step.step.action)
        task = run.task
        data = {**action.data, "workflow": task.workflow.id, "task": task.id}
        core.intents.append(Emit(task.id, Event(step.step.message_type, data)))


class WaitForEventKind(StepKind):
    """Wait until a matching event is published."""

    def act(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        if not step.finished:
            core.event_waiters.setdefault(step.step.message_type, set()).add(run)

    def matches(self, step: StepRun, message_type: str, data: Mapping[str, Any]) -> bool:
        return cast("WaitForEvent", step.step.action).matches(message_type, data)

    def end(self, core: Core, run: Run, step: StepRun) -> None:
        waiters = core.event_waiters.get(step.step.message_type)
        if waiters is not None:
            waiters.discard(run)
            if not waiters:
                del core.event_waiters[step.step.message_type]


class ExecuteCommandKind(StepKind):
    """Run a registered command or a program; done when it ends."""

    def act(self, core: Core, run: Run, step: StepRun, now: float) -> None:
        if not step.finished:
            core.intents.append(RunCommand(run.task.id, run, step))

    def end(self, core: Core, run: Run, step: StepRun) -> None:
        core.intents.append(CancelCommand(run.task.id, run))  # if it still runs


def action_of(run: Run, step: StepRun) -> Action:
    """Return the action a perform-action step of the task sends (the same each time)."""
    return Action(step.step.message_type, run.task.id, step.step.name, extra=run.routing)


#: The kind of each action, by the action class's ``kind``.
STEP_KINDS: dict[str, StepKind] = {
    "perform_action": PerformActionKind(),
    "emit_event": EmitEventKind(),
    "wait_for_event": WaitForEventKind(),
    "execute_command": ExecuteCommandKind(),
}


def step_kind(action: StepAction) -> StepKind:
    """Return the kind of steps that take ``action``."""
    return STEP_KINDS[action.kind]
