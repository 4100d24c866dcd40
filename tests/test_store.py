"""Durable state: the SQLite store, recovery after a crash, history, bad files."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import (
    Action,
    CronTrigger,
    EmitEvent,
    Engine,
    Message,
    OnError,
    Outcome,
    Step,
    Workflow,
    open_engine,
)
from engine._store import (
    _MIGRATIONS,
    _SCHEMA_V1,
    APPLICATION_ID,
    SCHEMA_VERSION,
    SQLiteStore,
    StoreError,
)

from .test_engine import drain, events

T0 = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)


@asynccontextmanager
async def engine_on(
    path: Path, workflows: list[Workflow], start: datetime
) -> AsyncIterator[Engine]:
    """An engine on the store at ``path``, closed (like a stopped process) at the end."""
    store = SQLiteStore(path)
    try:
        async with open_engine(workflows=workflows, start_time=start, store=store) as engine:
            yield engine
    finally:
        store.close()


TWO_STEPS = Workflow(
    id="wf", steps=[Step("collect", timeout=60), Step("notify", EmitEvent("collected", {"n": 1}))]
)


async def crash_mid_step(path: Path) -> str:
    """Start a task, let its first step wait for 'w', then stop the engine as a crash would."""
    async with engine_on(path, [TWO_STEPS], T0) as engine:
        engine.subscribe("w", "collect", timeout=60)
        engine.subscribe("other", "collect", timeout=60)
        engine.configs.put("app", {"answer": 42})
        async with engine.open_listener(subscriber_id="other") as other:
            task_id = engine.start_workflow("wf").task_id
            action = await other.receive()
            assert isinstance(action, Action)
            other.done(action)
            await trio.sleep(5)
    assert task_id is not None
    return task_id


async def test_an_interrupted_task_resumes_where_it_was(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "state.sqlite3"
    task_id = await crash_mid_step(path)
    later = T0 + timedelta(seconds=30)
    async with engine_on(path, [TWO_STEPS], later) as engine:
        config = engine.configs.get("app")
        assert config is not None
        assert config.data == {"answer": 42}
        assert sorted(s.id for s in engine.subscribers) == ["other", "w"]
        (info,) = engine.tasks()
        assert info.id == task_id
        assert info.step is not None
        assert (info.state, info.step.waiting_for, info.step.answered) == (
            "collect",
            ("w",),
            {"other": "done"},
        )
        assert info.step.deadline == T0 + timedelta(seconds=60)  # continues, not restarted
        async with engine.open_listener(message_types=["collected"]) as watch:
            async with engine.open_listener(subscriber_id="w") as w:
                owed = await w.receive()
                assert isinstance(owed, Action)
                assert (owed.task, owed.step) == (task_id, "collect")
                w.done(owed)
                result = await engine.wait_task(task_id)
            assert [e.data["task"] for e in events(drain(watch))] == [task_id]
    assert result.outcome is Outcome.DONE
    assert result.started_at == T0
    assert result.steps[0].answered == {"other": "done", "w": "done"}


async def test_a_deadline_that_passed_while_down_resolves_at_once(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "state.sqlite3"
    stopping = Workflow(id="wf", steps=[Step("collect", timeout=60, on_error=OnError.STOP)])
    async with engine_on(path, [stopping], T0) as engine:
        engine.subscribe("w", "collect", timeout=60)
        task_id = engine.start_workflow("wf").task_id
        await trio.sleep(1)
    assert task_id is not None
    async with engine_on(path, [stopping], T0 + timedelta(hours=1)) as engine:
        result = await engine.wait_task(task_id)
        assert engine.clock.now() == T0 + timedelta(hours=1)
    assert result.outcome is Outcome.FAILED
    assert result.error == "step 'collect' timed out waiting for w"


async def test_state_is_written_before_the_action_is_published(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    store = SQLiteStore(tmp_path / "state.sqlite3")
    seen_in_store: list[dict[str, Any]] = []

    def check(message: Message) -> None:
        if isinstance(message, Action):
            # each write is a transaction of its own, committed when save_task returns
            seen_in_store.extend(store.load().tasks)

    async with open_engine(workflows=[TWO_STEPS], start_time=T0, store=store) as engine:
        engine.add_observer(check)
        await engine.run_workflow("wf")
    (stored,) = seen_in_store
    assert stored["state"] == "collect"
    assert stored["steps"][0]["began"] is True


async def test_a_task_whose_workflow_is_gone_is_failed_not_dropped(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "state.sqlite3"
    task_id = await crash_mid_step(path)
    renamed = Workflow(id="wf", steps=[Step("other_step")])
    async with engine_on(path, [renamed], T0) as engine:
        assert engine.tasks() == []
        result = engine.task(task_id)
    assert result.outcome is Outcome.FAILED  # type: ignore[union-attr]
    assert result.error == (  # type: ignore[union-attr]
        "cannot resume after a restart: workflow 'wf' no longer has the step 'collect'"
    )


async def test_history_is_kept_filtered_and_pruned(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "state.sqlite3"
    failing = Workflow(id="bad", steps=[Step("x", timeout=1, on_error=OnError.STOP)])
    store = SQLiteStore(path, retention=timedelta(days=2))
    async with open_engine(workflows=[TWO_STEPS, failing], start_time=T0, store=store) as engine:
        engine.subscribe("silent", "x")
        first = await engine.run_workflow("wf")
        await trio.sleep(86400)
        await engine.run_workflow("bad")
        second = await engine.run_workflow("wf")
        assert [r.id for r in engine.history()] == [second.id, engine.history()[1].id, first.id]
        assert [r.id for r in engine.history(workflow="wf")] == [second.id, first.id]
        assert [r.workflow for r in engine.history(outcome="failed")] == ["bad"]
        assert [r.id for r in engine.history(since=T0 + timedelta(hours=1))][-1] != first.id
        assert len(engine.history(limit=1)) == 1
        assert engine.task(first.id) == first
        await trio.sleep(2 * 86400)  # the hourly pruning removes what is older than 2 days
        assert first.id not in [r.id for r in engine.history()]


async def test_missed_schedules_are_caught_up_after_downtime(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "state.sqlite3"
    hourly = Workflow(id="hourly", steps=[Step("work")], triggers=[CronTrigger("0 * * * *")])
    async with engine_on(path, [hourly], T0) as engine:
        await trio.sleep(3600)  # fires at 01:00
    restart = T0.replace(hour=4, minute=30)
    async with engine_on(path, [hourly], restart) as engine:
        await trio.sleep(1)
        ledger = [(f.planned.hour, f.outcome) for f in engine.schedule_ledger("hourly")]
    assert ledger == [(2, "missed"), (3, "missed"), (4, "caught_up")]


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is not a database at all", "it is not an SQLite database"),
        (b"SQLite format 3\x00" + b"\x10\x00\x01\x01" + b"\x00" * 40, "file is not a database"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused_and_kept(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=rf"^cannot use {path} as a phasebus store: .*{message}"):
        SQLiteStore(path)
    assert path.read_bytes() == content


def test_a_truncated_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(path)
    for index in range(200):
        store.save_subscriber(
            f"s{index}", [{"message_type": "x" * 200, "wait_for_completion": True, "timeout": 60}]
        )
    store.close()
    content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    with pytest.raises(StoreError, match=rf"^cannot use {path} as a phasebus store: "):
        SQLiteStore(path).load()
    assert path.read_bytes() == content


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(
        StoreError,
        match=rf"^cannot use {path} as a phasebus store: it is another program's database"
        r" \(tables: invoices\)$",
    ):
        SQLiteStore(path)


def test_a_store_from_a_newer_phasebus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match=r"its schema version 99 is newer than this phasebus"):
        SQLiteStore(path)


def test_a_store_of_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO configs VALUES ('app', 'r7', '{\"a\": 1}')")
    db.close()
    store = SQLiteStore(path)
    state = store.load()
    assert [(c.id, c.revision, dict(c.data)) for c in state.configs] == [("app", "r7", {"a": 1})]
    assert state.revision_counter == 7
    store.save_schedule_mark(("wf", "0 * * * *", "UTC"), T0)
    assert store.load().schedule_marks == {("wf", "0 * * * *", "UTC"): T0}
    store.save_config_kinds([{"fqn": "app", "properties": []}])
    store.save_config_validation({"id": "app", "external_validation": True})
    store.close()
    check = sqlite3.connect(path)
    (version,) = check.execute("PRAGMA user_version").fetchone()
    check.close()
    assert version == SCHEMA_VERSION
    store = SQLiteStore(path)
    assert store.load_config_models() == (
        [{"fqn": "app", "properties": []}],
        [{"id": "app", "external_validation": True}],
    )
    store.delete_config_validation("app")
    assert store.load_config_models()[1] == []
    store.close()


def test_a_version_2_store_keeps_its_subscriptions_and_marks_tasks_with_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in (_SCHEMA_V1 + _MIGRATIONS[2]).split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 2")
    subscriptions = [
        {"message_type": "collect", "wait_for_completion": True, "timeout": 600},
        {"message_type": "tick", "wait_for_completion": False, "timeout": 2.5},
    ]
    db.execute("INSERT INTO subscribers VALUES ('w', ?)", (json.dumps(subscriptions),))
    db.execute("INSERT INTO subscribers VALUES ('idle', '[]')")
    for task_id, errors in (("clean", []), ("failing", ["w: no quota"])):
        record = {
            "id": task_id,
            "workflow": "wf",
            "outcome": "done",
            "error": None,
            "errors": errors,
            "started_at": 0.0,
            "ended_at": 1.0,
            "steps": [],
        }
        db.execute(
            "INSERT INTO history VALUES (?, 'wf', 'done', 0, 1, ?)",
            (task_id, json.dumps(record)),
        )
    db.close()
    store = SQLiteStore(path)
    assert store.load().subscribers == {"w": subscriptions, "idle": []}
    assert [r["id"] for r in store.history(has_errors=True)] == ["failing"]
    assert [r["id"] for r in store.history(has_errors=False)] == ["clean"]
    store.save_subscription(
        "w", {"message_type": "tick", "wait_for_completion": True, "timeout": 5}
    )
    store.delete_subscription("w", "collect")
    assert store.load().subscribers["w"] == [
        {"message_type": "tick", "wait_for_completion": True, "timeout": 5}
    ]
    store.close()


def test_a_store_in_use_by_another_engine_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SQLiteStore(path)
    with pytest.raises(
        StoreError, match=rf"^cannot use {path} as a phasebus store: another process is using it$"
    ):
        SQLiteStore(path)
    first.close()
    SQLiteStore(path).close()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "state.sqlite3"
    with pytest.raises(
        StoreError, match=rf"^cannot use {path} as a phasebus store: {path.parent} does not exist$"
    ):
        SQLiteStore(path)


async def test_a_queued_run_survives_a_restart(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "state.sqlite3"
    waiting = Workflow(id="wf", steps=[Step("collect", timeout=60)])
    async with engine_on(path, [waiting], T0) as engine:
        engine.subscribe("w", "collect", timeout=60)
        first = engine.start_workflow("wf").task_id
        queued = engine.start_workflow("wf")
        assert queued.decision.value == "queued"
        await trio.sleep(1)
    async with engine_on(path, [waiting], T0 + timedelta(seconds=10)) as engine:
        assert [t.id for t in engine.tasks()] == [first]
        assert queued.task_id is not None
        result = await engine.wait_task(queued.task_id)
        assert result.outcome is Outcome.DONE
        assert result.started_at == T0 + timedelta(seconds=60)  # after the first one's deadline
