"""Tools for testing your own workflows on trio's virtual clock.

Scripted listeners stand in for the components that answer actions; a
recorder keeps everything published on the bus and checks its order::

    async def test_my_workflow(phasebus_engine, autojump_clock):
        engine = phasebus_engine
        engine.add_workflow(MY_WORKFLOW)
        await scripted_listener(engine, "collector", ["collect"], Done(after=30))
        recorder = record(engine)
        result = await engine.run_workflow("my_workflow")
        recorder.assert_order(result.id, ["task_started", "action:collect",
                                          "action_done:collect", "task_end"])

The fixtures ``phasebus_engine`` (an engine whose wall clock starts at
``phasebus_start_time``) and ``phasebus_start_time`` come with phasebus as a
pytest plugin. Use them with pytest-trio's ``autojump_clock`` fixture so a day
of schedules passes in milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeAlias

import attrs
import trio

from ._bus import Listener, ListenerDropped
from ._engine import Engine, open_engine
from ._messages import Action, Event, Message, ProgressLeaf

#: The wall-clock time at which test engines start, unless told otherwise.
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- behaviours


@attrs.frozen
class Done:
    """Answer ``action_done`` after ``after`` seconds."""

    after: float = 0.0


@attrs.frozen
class Fail:
    """Answer ``action_error`` with ``error`` after ``after`` seconds."""

    error: str = "failed"
    after: float = 0.0


@attrs.frozen
class Silent:
    """Never answer (the step waits until its deadline)."""


@attrs.frozen
class ReportProgress:
    """Report progress ``parts`` times, every ``every`` seconds, then behave as ``then``."""

    parts: int = 3
    every: float = 1.0
    then: Behaviour = Done()


@attrs.frozen
class Disconnect:
    """Drop the connection ``after`` seconds into the step, without answering."""

    after: float = 0.0


@attrs.frozen
class Twice:
    """Answer ``action_done`` twice (the second answer must change nothing)."""

    after: float = 0.0


@attrs.frozen
class Report:
    """Send an ``action_info`` with ``message`` at ``level``, then behave as ``then``.

    What it reports lands in the task's log (:func:`task_log`).
    """

    message: str
    level: str = "info"
    then: Behaviour = Done()


Behaviour: TypeAlias = Done | Fail | Silent | ReportProgress | Disconnect | Twice | Report


class ScriptedListener:
    """A subscriber that answers actions as its script says.

    Args:
        behaviour: one behaviour for every action, or one per message type
            (message types not named get :class:`Done`).
    """

    def __init__(
        self, engine: Engine, subscriber_id: str, behaviour: Behaviour | Mapping[str, Behaviour]
    ) -> None:
        self.engine = engine
        self.subscriber_id = subscriber_id
        self.behaviour = behaviour
        #: Every message received, in order.
        self.received: list[Message] = []
        #: The actions answered, with the answer sent ("done" or "error").
        self.answered: list[tuple[Action, str]] = []
        #: Whether the listener dropped its connection (a Disconnect behaviour).
        self.disconnected = False
        self._cancel = trio.CancelScope()

    def behaviour_for(self, message_type: str) -> Behaviour:
        """Return the behaviour for actions of ``message_type``."""
        if isinstance(self.behaviour, Mapping):
            return self.behaviour.get(message_type, Done())
        return self.behaviour

    def stop(self) -> None:
        """Disconnect the listener."""
        self._cancel.cancel()

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self._cancel:
            async with (
                self.engine.open_listener(subscriber_id=self.subscriber_id) as listener,
                trio.open_nursery() as nursery,
            ):
                task_status.started()
                try:
                    async for message in listener:
                        self.received.append(message)
                        if isinstance(message, Action):
                            nursery.start_soon(self._act, listener, message)
                except ListenerDropped:
                    self.disconnected = True
                    nursery.cancel_scope.cancel()

    async def _act(self, listener: Listener, action: Action) -> None:
        behaviour = self.behaviour_for(action.message_type)
        while isinstance(behaviour, ReportProgress | Report):
            if isinstance(behaviour, Report):
                listener.info(action, behaviour.message, level=behaviour.level)
            else:
                for part in range(1, behaviour.parts + 1):
                    await trio.sleep(behaviour.every)
                    listener.progress(action, ProgressLeaf(action.step, part, behaviour.parts))
            behaviour = behaviour.then
        if isinstance(behaviour, Silent):
            return
        await trio.sleep(behaviour.after)
        if isinstance(behaviour, Disconnect):
            self.disconnected = True
            self.stop()
            return
        if isinstance(behaviour, Fail):
            listener.error(action, behaviour.error)
            self.answered.append((action, "error"))
            return
        listener.done(action)
        self.answered.append((action, "done"))
        if isinstance(behaviour, Twice):
            listener.done(action)
            self.answered.append((action, "done"))


async def scripted_listener(
    engine: Engine,
    subscriber_id: str,
    message_types: Iterable[str],
    behaviour: Behaviour | Mapping[str, Behaviour] = Done(),
    *,
    timeout: float = 60.0,
    wait_for_completion: bool = True,
) -> ScriptedListener:
    """Subscribe ``subscriber_id`` to ``message_types`` and answer as ``behaviour`` says.

    The listener runs in the engine's nursery until :meth:`ScriptedListener.stop`
    or the engine closes.
    """
    for message_type in message_types:
        engine.subscribe(
            subscriber_id, message_type, timeout=timeout, wait_for_completion=wait_for_completion
        )
    scripted = ScriptedListener(engine, subscriber_id, behaviour)
    await engine.nursery.start(scripted._serve)
    return scripted


# ---------------------------------------------------------------- recording


def describe(message: Message) -> str:
    """Describe a message as ``kind:message_type`` (events: just the message type)."""
    if isinstance(message, Event):
        return message.message_type
    return f"{message.kind.value}:{message.message_type}"


def _task_of(message: Message) -> str | None:
    if isinstance(message, Event):
        data = message.data
        task = data.get("task_id", data.get("task"))
        if message.message_type == "task_started":
            task = data.get("task_id")
        return task if isinstance(task, str) else None
    return message.task


class Recorder:
    """Everything published on an engine's bus since :func:`record` was called."""

    def __init__(self, engine: Engine) -> None:
        #: The messages, in the order they were published.
        self.messages: list[Message] = []
        self._remove = engine.add_observer(self.messages.append)

    def close(self) -> None:
        """Stop recording."""
        self._remove()

    def of_task(self, task_id: str) -> list[Message]:
        """Return the messages about one task, in order."""
        return [m for m in self.messages if _task_of(m) == task_id]

    def sequence(self, task_id: str, *, progress: bool = False) -> list[str]:
        """Describe a task's messages (see :func:`describe`); ``progress`` events only if asked."""
        return [describe(m) for m in self.of_task(task_id) if progress or describe(m) != "progress"]

    def events(self, message_type: str) -> list[Event]:
        """Return the events of one type."""
        return [m for m in self.messages if isinstance(m, Event) and m.message_type == message_type]

    def assert_order(self, task_id: str, expected: Sequence[str]) -> None:
        """Check that a task's messages contain ``expected`` in order (others may come between).

        Raises:
            AssertionError: naming the first expected message not found, and what was seen.
        """
        seen = self.sequence(task_id, progress=True)
        position = 0
        for wanted in expected:
            try:
                position = seen.index(wanted, position) + 1
            except ValueError:
                raise AssertionError(
                    f"expected {wanted!r} after position {position} of the task's messages, "
                    f"which were: {seen}"
                ) from None


def record(engine: Engine) -> Recorder:
    """Start recording everything published on the engine's bus."""
    return Recorder(engine)


def task_log(engine: Engine, task_id: str) -> list[str]:
    """Return a task's log as lines to compare: ``kind step subscriber: message``.

    ``info`` entries read ``info(level)``; a missing step or subscriber is left out.
    """
    lines = []
    for entry in engine.log.entries(task_id):
        kind = f"info({entry.level})" if entry.level is not None else entry.kind.value
        where = " ".join(part for part in (kind, entry.step, entry.subscriber) if part)
        lines.append(f"{where}: {entry.message}")
    return lines


@asynccontextmanager
async def open_test_engine(
    *, start_time: datetime = DEFAULT_START, **options: Any
) -> AsyncIterator[Engine]:
    """Open an engine whose wall clock starts at ``start_time`` and follows trio's clock.

    Use it under a virtual clock (pytest-trio's ``autojump_clock``) and time
    passes as fast as the program can run. Other options go to :func:`open_engine`.
    """
    async with open_engine(start_time=start_time, **options) as engine:
        yield engine


__all__ = [
    "DEFAULT_START",
    "Behaviour",
    "Disconnect",
    "Done",
    "Fail",
    "Recorder",
    "Report",
    "ReportProgress",
    "ScriptedListener",
    "Silent",
    "Twice",
    "describe",
    "open_test_engine",
    "record",
    "scripted_listener",
    "task_log",
]
