"""What the core decides to do: intents, carried out in order by the trio driver.

The core (:mod:`engine._core`) never does I/O. Each fact it takes (an answer,
an event, a deadline, a stop request) changes its state and appends intents
to its queue; the driver (:mod:`engine._driver`) takes them in order and acts:
it stages writes with the store, publishes messages, starts and cancels
commands, arms timers. An intent's ``task_id`` names the task it belongs to
(None: no task), so that a task whose I/O fails loses only its own intents.

Intents are made once and never changed (mutable attrs classes only because
they are several times cheaper to make than frozen ones: one or two per step).

Intents that a task's new state *causes* (publishing, starting a command)
are ``effects``: with a store they go out only once the state that caused
them is committed (the outbox of :mod:`engine._persistence`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ._machine import StepRun
from ._messages import Event, Message
from ._runs import Run
from ._store import TaskWrite
from ._tasklog import LogKind


@attrs.define(slots=True, eq=False)
class Stage:
    """Write a task's new state (or its result) to the store."""

    task_id: str
    write: TaskWrite
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Publish:
    """Publish an engine message (an action, an abort) to the listeners of ``subscribers``
    (all when None). ``step`` is set for a step's action: it has then gone out."""

    task_id: str
    message: Message
    subscribers: frozenset[str] | None = None
    run: Run | None = None
    step: StepRun | None = None
    effect: ClassVar[bool] = True


@attrs.define(slots=True, eq=False)
class Emit:
    """Publish an event of the engine's: triggers and waiting steps see it too."""

    task_id: str | None
    event: Event
    effect: ClassVar[bool] = True


@attrs.define(slots=True, eq=False)
class RunCommand:
    """Start the command of an execute-command step."""

    task_id: str
    run: Run
    step: StepRun
    effect: ClassVar[bool] = True


@attrs.define(slots=True, eq=False)
class CancelCommand:
    """Cancel the command a task runs (its step ended without it)."""

    task_id: str
    run: Run
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Wake:
    """Make sure the core hears of the task again (:meth:`Core.tick`) by time ``at``."""

    task_id: str
    run: Run
    at: float
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Hold:
    """Tell the core once what the task's new state caused has been carried out (with
    group commits, once that state is committed): :meth:`Core.committed`. Until then the
    task moves no further, so a state's effects always go out before the next state."""

    task_id: str
    run: Run
    effect: ClassVar[bool] = True


@attrs.define(slots=True, eq=False)
class Log:
    """Add an entry to a task's log."""

    task_id: str
    kind: LogKind
    text: str
    fields: dict[str, Any]
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Ended:
    """A running task has ended (or stopped where it was): forget it, wake who waits."""

    task_id: str
    run: Run
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Dequeued:
    """A queued run started or was stopped: wake who waits for it."""

    task_id: str
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Start:
    """A task was started or resumed: give it its first move (:meth:`Core.kick`) in the
    driver's next turn, so that what the caller does meanwhile (subscribing, say) counts."""

    task_id: str
    run: Run
    effect: ClassVar[bool] = False


@attrs.define(slots=True, eq=False)
class Admit:
    """Ask the store shared with other replicas whether a new run starts, is queued or is
    skipped: its surpass weighs every replica's runs there, in one atomic step. The
    verdict comes back as a fact (:meth:`Core.admitted`). ``records``: the run's first
    record if it starts (state ``admitted``) and if it is queued."""

    task_id: str
    workflow: str
    surpass: str
    records: tuple[bytes, bytes]
    effect: ClassVar[bool] = False


Intent = (
    Admit
    | Stage
    | Publish
    | Emit
    | RunCommand
    | CancelCommand
    | Wake
    | Hold
    | Log
    | Ended
    | Dequeued
    | Start
)
