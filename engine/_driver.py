"""The driver: the thin trio layer that carries out what the core decided.

One trio task takes the core's intents in order and acts on them: it stages
task writes (:mod:`engine._persistence`, the only caller of the store for
tasks), publishes messages on the bus once the state that caused them is
committed, starts and cancels commands, arms timers and wakes whoever waits
for a task. Facts that come back from the world (a timer fired, a command
ended, a write committed or failed) go to the core, whose new intents the
driver takes next.

Nothing the driver does runs on a listener's stack: an answer only records
a fact in the core and wakes the driver. (A synchronous read of the store,
from the API or a program, first carries out what is pending, on the
reader's stack, so that it sees every write decided before it; inside a
batch it does not nest.) An exception while carrying out one task's intents
fails that task (the core hears of it) and drops what else that task was to
cause in the same batch; the other tasks go on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio

from ._bus import Bus
from ._core import Core
from ._definitions import ExecuteCommand
from ._intents import (
    Admit,
    CancelCommand,
    Dequeued,
    Emit,
    Ended,
    Hold,
    Log,
    Publish,
    RunCommand,
    Stage,
    Start,
    Wake,
)
from ._machine import StepRun
from ._messages import Event
from ._persistence import Persistence
from ._runs import Run
from ._tasklog import TaskLog
from ._timers import Timers

logger = logging.getLogger("engine._engine")

#: Rounds of intents the driver carries out before it lets the rest of the program run.
_BATCHES_PER_TURN = 64


class Driver:
    """Carry out the core's intents (see the module's doc)."""

    def __init__(
        self,
        core: Core,
        *,
        persistence: Persistence,
        bus: Bus,
        log: TaskLog,
        emit: Callable[[Event], None],
        run_command: Callable[[Run, StepRun], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> None:
        self._core = core
        self._persistence = persistence
        self._bus = bus
        self._log = log
        self._emit = emit
        self._run_command = run_command
        self._nursery = nursery
        self.timers = Timers()
        self._sleeper: trio.lowlevel.Task | None = None
        #: Whether a batch is being carried out (run_pending does not nest).
        self._busy = False
        #: Task id -> an event set when the task ends or its queued run starts or stops.
        self._waiters: dict[str, trio.Event] = {}
        #: Carries a run asked for to the store shared with other servers (SharedRuns).
        self.admit: Callable[[Admit], None] | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            Admit: self._admit,
            Stage: self._stage,
            Publish: self._publish,
            Emit: self._emit_intent,
            RunCommand: self._start_command,
            CancelCommand: self._cancel_command,
            Wake: self._wake,
            Hold: self._hold,
            Log: self._add_log,
            Ended: self._ended,
            Dequeued: self._dequeued,
            Start: self._start,
        }

    async def serve(self) -> None:
        """Carry out intents as the core makes them, until cancelled."""
        me = trio.lowlevel.current_task()
        core = self._core
        while True:
            if not core.intents:
                self._sleeper = me
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            elif self.run_pending(_BATCHES_PER_TURN):
                # work keeps coming (a workflow its own events start, say): let the
                # rest of the program run before going on
                await trio.lowlevel.checkpoint()

    def poke(self) -> None:
        """Tell the driver the core has new intents (after a fact)."""
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)

    def run_pending(self, batches: int = _BATCHES_PER_TURN) -> bool:
        """Carry out the intents the core has made so far, now (also before a store read),
        and what they lead to, for at most ``batches`` rounds; return whether more wait.

        Called while a batch is being carried out (a store read by an observer), it does
        nothing: the batch under way goes on in order.
        """
        core = self._core
        if self._busy:
            return bool(core.intents)
        self._busy = True
        try:
            for _ in range(batches):
                if not core.intents:
                    return False
                batch, core.intents = core.intents, []
                if core.frozen:
                    return False  # stopping: nothing the tasks would cause goes out any more
                self._execute(batch)
            return bool(core.intents)
        finally:
            self._busy = False

    async def changed(self, task_id: str) -> None:
        """Wait until a task ends, or its queued run starts or is stopped."""
        event = self._waiters.get(task_id)
        if event is None:
            event = self._waiters[task_id] = trio.Event()
        await event.wait()

    def close(self) -> None:
        """Stop: cancel every timer and wake everyone waiting for a task."""
        self._core.intents.clear()
        for run in self._core.running.values():
            if run.timer is not None:
                self.timers.cancel(run.timer)
                run.timer = None
        for event in self._waiters.values():
            event.set()
        self._waiters.clear()

    def let_go(self, run: Run) -> None:
        """Drop a task the core let go (another replica drives it): its timer, its command,
        and wake whoever waits for it."""
        if run.timer is not None:
            self.timers.cancel(run.timer)
            run.timer = None
        if run.command is not None:
            run.command.cancel()
        self._dequeued(Dequeued(run.task.id))

    def write_failed(self, task_id: str, error: Exception) -> None:
        """A group commit failed for a task (the committer's report): what its state caused
        was dropped with it."""
        run = self._core.running.get(task_id)
        if run is not None and run.committing:
            run.announced = None  # the current step's action never went out
        self._core.failed(task_id, error, trio.current_time())
        self.poke()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._sleeper = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _execute(self, batch: list[Any]) -> None:
        handlers = self._handlers
        persistence = self._persistence
        deferred = persistence.grouped and persistence.durable
        failed: set[str] | None = None
        for index, intent in enumerate(batch):
            if failed is not None and intent.effect and intent.task_id in failed:
                continue  # that task failed: what it was to cause is dropped
            handler = handlers[type(intent)]
            try:
                if deferred and intent.effect:
                    persistence.after(intent.task_id, _Deferred(handler, intent, self))
                else:
                    handler(intent)
            except Exception as error:
                task_id = intent.task_id
                if task_id is None:
                    logger.exception("cannot publish %s", getattr(intent, "event", intent))
                    continue
                logger.exception("task %s: what its state causes failed", task_id)
                if failed is None:
                    failed = set()
                failed.add(task_id)
                for dropped in (intent, *batch[index + 1 :]):
                    if dropped.task_id == task_id:
                        _dropped(dropped)  # its action never went out: nothing to abort
                self._core.failed(task_id, error, trio.current_time())

    # ------------------------------------------------------------ intents

    def _admit(self, intent: Admit) -> None:
        if self.admit is None:
            raise RuntimeError("no store shared with other servers admits runs here")
        self.admit(intent)

    def _stage(self, intent: Stage) -> None:
        self._persistence.stage(intent.write)

    def _publish(self, intent: Publish) -> None:
        self._bus.publish(intent.message, subscribers=intent.subscribers)

    def _emit_intent(self, intent: Emit) -> None:
        self._emit(intent.event)

    def _start_command(self, intent: RunCommand) -> None:
        self._nursery.start_soon(self._run_command, intent.run, intent.step)

    def _cancel_command(self, intent: CancelCommand) -> None:
        scope = intent.run.command
        if scope is not None:
            scope.cancel()

    def _wake(self, intent: Wake) -> None:
        run = intent.run
        if run.timer is not None:
            self.timers.cancel(run.timer)
        run.timer = self.timers.schedule(intent.at, self._tick, run)

    def _tick(self, run: Run) -> None:
        run.timer = None
        self._core.tick(run, trio.current_time())
        self.poke()

    def _hold(self, intent: Hold) -> None:
        # the driver's own loop takes what follows (a deferred one is poked for)
        self._core.committed(intent.run, trio.current_time())

    def _add_log(self, intent: Log) -> None:
        self._log.add(intent.task_id, intent.kind, intent.text, **intent.fields)

    def _ended(self, intent: Ended) -> None:
        run = intent.run
        if run.timer is not None:
            self.timers.cancel(run.timer)
            run.timer = None
        run.gone = True
        # forgotten once its result is committed: until then a failure can still be said
        self._persistence.after(intent.task_id, functools.partial(self._forget, run))
        self._dequeued(intent)

    def _forget(self, run: Run) -> None:
        running = self._core.running
        if running.get(run.task.id) is run:
            del running[run.task.id]

    def _dequeued(self, intent: Ended | Dequeued) -> None:
        event = self._waiters.pop(intent.task_id, None)
        if event is not None:
            event.set()

    def _start(self, intent: Start) -> None:
        self._core.kick(intent.run, trio.current_time())


def _dropped(intent: Any) -> None:
    """Forget that a step's action went out when its Publish is dropped."""
    if type(intent) is Publish and intent.run is not None and intent.run.announced is intent.step:
        intent.run.announced = None


class _Deferred:
    """An effect carried out by the committer once its state is committed."""

    __slots__ = ("_driver", "_handler", "_intent")

    def __init__(self, handler: Callable[[Any], None], intent: Any, driver: Driver) -> None:
        self._handler = handler
        self._intent = intent
        self._driver = driver

    def __call__(self) -> None:
        self._handler(self._intent)
        self._driver.poke()


async def run_command(
    core: Core,
    driver: Driver,
    run: Run,
    step: StepRun,
    call: Callable[[str, Run, StepRun], Awaitable[object]],
) -> None:
    """Run a step's command (a registered callable or a program) and tell the core how it
    ended; cancelled when the step ends without it."""
    action = cast("ExecuteCommand", step.step.action)
    error: str | None = None
    output = ""
    if step.ended_at is not None:  # stopped before the command could start
        return
    with trio.CancelScope() as scope:
        run.command = scope
        try:
            if action.callable is not None:
                await call(action.callable, run, step)
            else:
                result = await trio.run_process(
                    list(action.command), capture_stdout=True, capture_stderr=True, check=False
                )
                if result.returncode != 0:
                    output = (result.stdout + result.stderr).decode("utf-8", "replace")
                    stderr = result.stderr.decode("utf-8", "replace").strip()[-400:]
                    error = f"command {action.command[0]!r} exited with status {result.returncode}"
                    if stderr:
                        error += f": {stderr}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    if run.command is scope:  # a later step's command may have its own by now
        run.command = None
    if scope.cancelled_caught or step.ended_at is not None:
        return
    core.command_ended(run, step, error, output, trio.current_time())
    driver.poke()
