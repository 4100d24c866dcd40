"""The driver: what the core decided goes out in order, and one task's failure stays its own."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
import trio

from engine import (
    Action,
    CommandContext,
    EmitEvent,
    EngineClosed,
    Event,
    ExecuteCommand,
    Message,
    Outcome,
    SQLiteStore,
    Step,
    UnknownTaskError,
    WaitForEvent,
    Workflow,
    open_engine,
)
from engine._store import FinishTask, TaskWrite

from .conftest import START


class RefusingStore(SQLiteStore):
    """A SQLite store that refuses to file finished tasks (a disk that just filled up)."""

    def commit(self, writes: Sequence[TaskWrite]) -> None:
        if any(isinstance(w, FinishTask) for w in writes):
            raise OSError("disk full")
        super().commit(writes)


@pytest.mark.parametrize("durable", [False, True])
async def test_an_effect_that_fails_fails_its_task_without_group_commits(
    tmp_path: Path, durable: bool
) -> None:
    """An effect that raises fails its task, with or without a store (as with group commits)."""
    workflow = Workflow(
        id="wf", steps=[Step("a", EmitEvent("boom")), Step("b", EmitEvent("after"))]
    )
    store = SQLiteStore(tmp_path / "state.sqlite3", group_commits=False) if durable else None
    seen: list[str] = []

    def observer(message: Message) -> None:
        raise RuntimeError("observer bug")

    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        engine.add_observer(observer, message_types=["boom"])
        engine.add_observer(lambda m: seen.append(m.message_type), message_types=["after"])
        with trio.fail_after(5):
            broken = await engine.run_workflow("wf")
    if store is not None:
        store.close()
    assert broken.outcome is Outcome.FAILED, (broken.outcome, seen)
    assert broken.error == "internal error: RuntimeError: observer bug"


@pytest.mark.parametrize("grouped", [False, True])
async def test_a_result_the_store_refuses_is_said_and_the_task_is_taken_up_after_a_restart(
    tmp_path: Path, grouped: bool
) -> None:
    """A finished task whose history write fails is not announced as ended (the store
    still has it running): an error event says so, and a restart on a store that works
    takes the task up again and ends it, with its task_end then."""
    workflow = Workflow(id="wf", steps=[Step("a", EmitEvent("hello"))])
    path = tmp_path / "state.sqlite3"
    store = RefusingStore(path, group_commits=grouped)
    seen: list[tuple[str, str]] = []

    def watch(message: Message) -> None:
        seen.append((message.message_type, cast("Event", message).data.get("message", "")))

    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        engine.add_observer(watch, message_types=["task_end", "error"])
        result = await engine.run_workflow("wf")
        await trio.sleep(1)
    store.close()
    assert seen == [
        ("error", "task ended, but its result could not be stored (OSError: disk full)")
    ]
    store = SQLiteStore(path, group_commits=grouped)
    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        engine.add_observer(watch, message_types=["task_end"])
        again = await engine.wait_task(result.id)
        await trio.sleep(1)
    store.close()
    assert again.outcome is Outcome.DONE
    assert seen[-1] == ("task_end", "")


async def test_nothing_a_task_does_starts_after_freeze(autojump_clock: trio.abc.Clock) -> None:
    """A task started just before freeze() takes no step: its command never runs."""
    ran: list[str] = []
    seen: list[str] = []

    async def work(context: CommandContext) -> None:
        ran.append(context.task_id)

    workflow = Workflow(id="wf", steps=[Step("a", ExecuteCommand(callable="work"))])
    async with open_engine(
        workflows=[workflow], commands={"work": work}, start_time=START
    ) as engine:
        engine.add_observer(lambda m: seen.append(m.message_type))
        engine.start_workflow("wf")
        engine.freeze()
        await trio.sleep(1)
    assert ran == [], "the command of a task started before freeze() ran after it"
    assert seen == []


async def test_a_task_stopped_before_its_first_move_announces_start_before_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    """task_started never follows task_end: a run stopped in the turn it started in."""
    workflow = Workflow(id="wf", steps=[Step("a")])
    seen: list[tuple[str, str]] = []
    async with open_engine(workflows=[workflow], start_time=START) as engine:
        engine.add_observer(
            lambda m: seen.append((m.message_type, cast("Event", m).data["task_id"])),
            message_types=["task_started", "task_end"],
        )
        task_id = engine.start_workflow("wf").task_id
        assert task_id is not None
        engine.stop_task(task_id)
        result = await engine.wait_task(task_id)
        await trio.sleep(1)
    assert result.outcome is Outcome.STOPPED
    assert [kind for kind, _ in seen] == ["task_started", "task_end"], seen


async def test_an_action_that_goes_out_for_a_stopped_step_is_aborted(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A step stopped in the turn it began: its action is not sent, or is sent and aborted."""
    workflow = Workflow(id="wf", steps=[Step("a"), Step("b")])
    async with open_engine(workflows=[workflow], start_time=START) as engine:
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        async with engine.open_listener(subscriber_id="w") as listener:
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            first = await listener.receive()
            assert isinstance(first, Action)
            assert first.step == "a"
            listener.done(first)  # the task moves on to b ...
            engine.stop_task(task_id)  # ... and is stopped in the same turn
            result = await engine.wait_task(task_id)
            assert result.outcome is Outcome.STOPPED
            received: list[tuple[str, str]] = []
            with trio.move_on_after(5):
                while True:
                    message = await listener.receive()
                    step = getattr(message, "step", "")
                    received.append((type(message).__name__, step))
    if ("Action", "b") in received:
        assert ("ActionAbort", "b") in received, received


class RefusingQueuedStore(SQLiteStore):
    """A SQLite store whose disk fills up just as a run is queued."""

    def commit(self, writes: Sequence[TaskWrite]) -> None:
        if any(b'"state":"queued"' in w.record for w in writes):
            raise OSError("disk full")
        super().commit(writes)

    def save_task(self, task_id: str, workflow_id: str, record: bytes) -> None:
        if b'"state":"queued"' in record:
            raise OSError("disk full")
        super().save_task(task_id, workflow_id, record)


async def test_a_queued_run_the_store_refuses_fails_loudly(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A queued run that cannot be written is not kept as if it were: it ends failed,
    saying why, and no run starts for it later."""
    workflow = Workflow(id="wf", steps=[Step("a")], surpass="wait")
    store = RefusingQueuedStore(tmp_path / "state.sqlite3", group_commits=False)
    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        engine.subscribe("w", "a")  # the first run stays active: the next one queues
        first = engine.start_workflow("wf").task_id
        queued = engine.start_workflow("wf")
        assert queued.task_id is not None
        result = await engine.wait_task(queued.task_id)
        assert result.outcome is Outcome.FAILED
        assert result.error == "cannot keep the queued run: OSError: disk full"
        assert [info.id for info in engine.tasks()] == [first]
        assert engine.start_workflow("wf").decision.value == "queued"  # room for another
    store.close()


@pytest.mark.parametrize("store_mode", ["none", "sqlite", "grouped"])
async def test_a_wait_step_does_not_see_an_event_sent_before_it_began(
    tmp_path: Path, autojump_clock: trio.abc.Clock, store_mode: str
) -> None:
    """Only events published while a wait step is current count (WaitForEvent's contract):
    the event the previous step emitted does not finish it, whatever the store."""
    workflow = Workflow(
        id="wf",
        steps=[
            Step("say", EmitEvent("ping")),
            Step("hear", WaitForEvent("ping"), timeout=5),
        ],
    )
    store = (
        None
        if store_mode == "none"
        else SQLiteStore(tmp_path / "state.sqlite3", group_commits=store_mode == "grouped")
    )
    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        result = await engine.run_workflow("wf")
    if store is not None:
        store.close()
    assert result.steps[1].timed_out, result.steps[1]


async def test_no_error_event_of_a_task_after_its_task_end(autojump_clock: trio.abc.Clock) -> None:
    """What a task's listener reports in the turn the task ends is announced before its end."""
    workflow = Workflow(id="wf", steps=[Step("a")])
    seen: list[str] = []
    async with open_engine(workflows=[workflow], start_time=START) as engine:
        engine.subscribe("w", "a")
        engine.add_observer(
            lambda m: seen.append(m.message_type), message_types=["error", "task_end"]
        )
        async with engine.open_listener(subscriber_id="w") as listener:
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            action = await listener.receive()
            assert isinstance(action, Action)
            listener.done(action)  # the task ends ...
            listener.info(action, "cleanup failed", level="error")  # ... then this, same turn
            await engine.wait_task(task_id)
            await trio.sleep(1)
    assert seen[-1] == "task_end", seen


@pytest.mark.parametrize("read", [False, True])
async def test_a_store_read_during_a_batch_does_not_put_a_task_back(
    tmp_path: Path, autojump_clock: trio.abc.Clock, read: bool
) -> None:
    """A store read from an observer (it carries out what is decided first) must not let an
    older state of a task be written over a newer one."""
    workflow = Workflow(
        id="wf",
        steps=[
            Step("say", EmitEvent("ping")),
            Step("hear", WaitForEvent("ping"), timeout=5),
            Step("collect", timeout=60),
        ],
    )
    store = SQLiteStore(tmp_path / "state.sqlite3", group_commits=False)
    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        engine.subscribe("w", "collect")
        if read:

            def look(message: Message) -> None:
                engine.history(limit=1)  # any store read: it runs what is pending first

            engine.add_observer(look, message_types=["ping"])
        task_id = engine.start_workflow("wf").task_id
        assert task_id is not None
        await trio.sleep(6)  # "hear" waits for a ping after its own start: it times out
        (info,) = engine.tasks()
        assert info.state == "collect"
        stored = {t["id"]: t for t in store.load().tasks}[task_id]
    store.close()
    assert stored["state"] == "collect", stored["state"]


async def test_waiting_for_a_task_of_a_closed_engine_does_not_hang(
    autojump_clock: trio.abc.Clock,
) -> None:
    """wait_task on an engine that has closed says so instead of waiting forever."""
    workflow = Workflow(id="wf", steps=[Step("a", timeout=3600)])
    async with open_engine(workflows=[workflow], start_time=START) as engine:
        engine.subscribe("w", "a")
        task_id = engine.start_workflow("wf").task_id
        assert task_id is not None
        await trio.sleep(1)
    with trio.fail_after(60), pytest.raises((EngineClosed, UnknownTaskError)):
        await engine.wait_task(task_id)


_ECHO = """
import trio
from engine import EmitEvent, EventTrigger, Step, Workflow, open_engine

ECHO = Workflow(
    id="echo",
    steps=[Step("say", EmitEvent("again"))],
    triggers=[EventTrigger("again")],
    surpass="parallel",
)


async def main():
    async with open_engine(workflows=[ECHO], keep_results=10) as engine:
        engine.start_workflow("echo")
        for _ in range(10):
            await trio.sleep(0)  # each returns only if the engine lets other tasks run
        engine.freeze()


trio.run(main)
"""


async def test_a_workflow_that_triggers_itself_does_not_starve_the_program() -> None:
    """A chain of runs that never ends (a parallel workflow started by its own event) must
    not keep the engine from letting anything else run: the program stays responsive (run
    in a child process, which is killed if it hangs)."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-c", _ECHO], capture_stdout=True, capture_stderr=True
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
