"""Task writes are committed in groups, each before what it causes goes out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from engine import (
    Action,
    ActionAbort,
    EmitEvent,
    Message,
    Outcome,
    SQLiteStore,
    Step,
    Workflow,
    open_engine,
)
from engine._store import TaskWrite
from machines import COLLECT_AND_CLEANUP

from .conftest import START

PARALLEL = attrs.evolve(COLLECT_AND_CLEANUP, surpass="parallel")


class CountingStore(SQLiteStore):
    """A SQLite store that counts its commits and the task writes in them."""

    def __init__(self, path: Path, *, group_commits: bool = True) -> None:
        super().__init__(path, group_commits=group_commits)
        self.commits: list[int] = []
        self.refuse: bytes | None = None

    def commit(self, writes: Sequence[TaskWrite]) -> None:
        if self.refuse is not None and any(self.refuse in w.record for w in writes):
            raise OSError("disk full")
        self.commits.append(len(writes))
        super().commit(writes)


async def answer_all(listener: Any) -> None:
    async for message in listener:
        if isinstance(message, Action):
            listener.done(message)


async def test_steps_settling_together_are_committed_together(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "state.sqlite3")
    async with open_engine(workflows=[PARALLEL], store=store, start_time=START) as engine:
        for step in PARALLEL.steps:
            engine.subscribe("w", step.name)
        async with engine.open_listener(subscriber_id="w") as listener, trio.open_nursery() as n:
            n.start_soon(answer_all, listener)
            ids = [engine.start_workflow(PARALLEL.id).task_id for _ in range(100)]
            results = [await engine.wait_task(task_id) for task_id in ids]  # type: ignore[arg-type]
            n.cancel_scope.cancel()
    assert {r.outcome for r in results} == {Outcome.DONE}
    writes = sum(store.commits)
    # 100 tasks x (13 steps + their end): one commit each would be 1,400
    assert writes >= 100 * len(PARALLEL.steps)
    assert store.commits[0] == 100  # the first steps of all, started together
    assert len(store.commits) * 3 < writes, store.commits
    history = store.history(limit=1000)
    assert len(history) == 100
    store.close()


@pytest.mark.parametrize("grouped", [True, False])
async def test_a_task_whose_write_fails_fails_alone(tmp_path: Path, grouped: bool) -> None:
    workflow = Workflow(id="wf", steps=[Step("a"), Step("b")], surpass="parallel")
    store = CountingStore(tmp_path / "state.sqlite3", group_commits=grouped)
    async with open_engine(workflows=[workflow], store=store, start_time=START) as engine:
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        async with engine.open_listener(subscriber_id="w") as listener:
            doomed = engine.start_workflow("wf").task_id
            fine = engine.start_workflow("wf").task_id
            assert doomed is not None
            assert fine is not None
            store.refuse = f'"id":"{doomed}","workflow":"wf","created_at"'.encode()
            seen: list[Action] = []
            aborts: list[ActionAbort] = []
            with trio.fail_after(5):
                while not any(a.task == fine and a.step == "b" for a in seen):
                    message = await listener.receive()
                    if isinstance(message, Action):
                        seen.append(message)
                        listener.done(message)
                    elif isinstance(message, ActionAbort):
                        aborts.append(message)
            store.refuse = None
            assert (await engine.wait_task(fine)).outcome is Outcome.DONE
            result = await engine.wait_task(doomed)
    assert result.outcome is Outcome.FAILED
    assert result.error == "internal error: OSError: disk full"
    # what the doomed task's unwritten state would have caused never went out, and
    # nobody is told to abort an action that was never sent
    assert not any(a.task == doomed for a in seen)
    assert aborts == []
    store.close()


async def test_without_group_commits_each_write_is_committed_at_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "state.sqlite3", group_commits=False)
    async with open_engine(workflows=[PARALLEL], store=store, start_time=START) as engine:
        for step in PARALLEL.steps:
            engine.subscribe("w", step.name)
        async with engine.open_listener(subscriber_id="w") as listener, trio.open_nursery() as n:
            n.start_soon(answer_all, listener)
            ids = [engine.start_workflow(PARALLEL.id).task_id for _ in range(3)]
            for task_id in ids:
                await engine.wait_task(task_id)  # type: ignore[arg-type]
            n.cancel_scope.cancel()
    assert set(store.commits) == {1}
    store.close()


async def test_an_effect_that_fails_fails_its_task_alone(tmp_path: Path) -> None:
    workflow = Workflow(
        id="wf", steps=[Step("a", EmitEvent("boom")), Step("b")], surpass="parallel"
    )
    quiet = Workflow(id="quiet", steps=[Step("b")])
    store = CountingStore(tmp_path / "state.sqlite3")

    def observer(message: Message) -> None:
        raise RuntimeError("observer bug")

    async with open_engine(workflows=[workflow, quiet], store=store, start_time=START) as engine:
        engine.add_observer(observer, message_types=["boom"])
        broken = await engine.run_workflow("wf")
        assert broken.outcome is Outcome.FAILED
        assert broken.error == "internal error: RuntimeError: observer bug"
        # the engine goes on
        assert (await engine.run_workflow("quiet")).outcome is Outcome.DONE
    store.close()
