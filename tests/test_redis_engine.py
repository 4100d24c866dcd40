"""The engine on a real redis-server: every promise the SQLite store keeps, kept on Redis.

Redis keeps its own time (leases expire by Redis's clock), so these tests run
in real time, with leases of two seconds.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio

from engine import (
    Action,
    CronTrigger,
    Engine,
    Outcome,
    Step,
    Workflow,
    open_engine,
)
from engine._errors import ConfigConflict, StoreError
from engine._redis import RedisStore, open_redis_store

pytestmark = pytest.mark.redis

LEASE = timedelta(seconds=2)
TWO_STEPS = Workflow(id="wf", steps=[Step("a", timeout=30), Step("b", timeout=30)])


@asynccontextmanager
async def engine_on(
    url: str, *, replica: str = "one", **options: Any
) -> AsyncIterator[tuple[Engine, RedisStore]]:
    options.setdefault("workflows", [TWO_STEPS])
    async with (
        open_redis_store(url) as store,
        open_engine(store=store, replica=replica, lease=LEASE, **options) as engine,
    ):
        yield engine, store


async def answer(
    engine: Engine,
    subscriber_id: str,
    *,
    errors: dict[str, str] | None = None,
    hold: frozenset[str] = frozenset(),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer every action of ``subscriber_id``: an error for the steps in ``errors``, none
    for those in ``hold``, done for the others."""
    async with engine.open_listener(subscriber_id=subscriber_id) as listener:
        task_status.started()
        async for message in listener:
            if not isinstance(message, Action) or message.step in hold:
                continue
            if errors and message.step in errors:
                listener.error(message, errors[message.step])
            else:
                listener.done(message)


async def test_a_run_is_kept_in_redis_and_read_back_through_the_async_reads(
    redis_url: str,
) -> None:
    async with engine_on(redis_url) as (engine, store), trio.open_nursery() as nursery:
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        await nursery.start(answer, engine, "w")
        result = await engine.run_workflow("wf")
        nursery.cancel_scope.cancel()
        assert result.outcome is Outcome.DONE
        history = await engine.fetch_history()
        assert [r.id for r in history] == [result.id]
        assert [s.answered for s in history[0].steps] == [{"w": "done"}, {"w": "done"}]
        assert await engine.fetch_task(result.id) == result
        assert await engine.fetch_task_ids(result.id[:8]) == [result.id]
        # Redis holds it, not only the engine's memory
        stored = await store.finished_task(result.id)
        assert stored is not None
        assert stored["outcome"] == "done"
        with pytest.raises(
            StoreError,
            match=r"^the store answers asynchronously: use await engine.fetch_history\(\)$",
        ):
            engine.history()
        with pytest.raises(StoreError, match=r"use await engine.log.fetch\(\)$"):
            engine.log.entries(result.id)


async def test_a_restart_resumes_where_it_was_and_sends_the_owed_action_again(
    redis_url: str,
) -> None:
    async with engine_on(redis_url) as (engine, _), trio.open_nursery() as nursery:
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        await nursery.start(functools.partial(answer, engine, "w", hold=frozenset({"b"})))
        task_id = (await engine.start_run("wf")).task_id
        assert task_id is not None
        while engine.tasks()[0].step is None or engine.tasks()[0].step.name != "b":  # type: ignore[union-attr]
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # a new engine (a restarted server) under the same name finds the task at step b
    async with engine_on(redis_url) as (engine, _):
        [info] = engine.tasks()
        assert info.id == task_id
        assert info.step is not None
        assert info.step.name == "b"
        assert info.step.waiting_for == ("w",)
        async with engine.open_listener(subscriber_id="w") as listener:
            with trio.fail_after(5):
                owed = await listener.receive()
            assert isinstance(owed, Action)
            assert (owed.task, owed.step) == (task_id, "b")
            listener.done(owed)
            result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert [s.answered for s in result.steps] == [{"w": "done"}, {"w": "done"}]
    async with engine_on(redis_url) as (engine, _):
        assert engine.tasks() == []
        [kept] = await engine.fetch_history()
        assert (kept.id, kept.outcome, kept.steps[1].answered) == (
            result.id,
            Outcome.DONE,
            {"w": "done"},
        )
        # times read back as stored (seconds as floats: within a microsecond)
        assert abs((kept.ended_at - result.ended_at).total_seconds()) <= 1e-6


async def test_the_history_filters_read_redis(redis_url: str) -> None:
    other = Workflow(id="other", steps=[Step("a", timeout=30)], surpass="parallel")
    parallel = attrs.evolve(TWO_STEPS, surpass="parallel")
    async with (
        engine_on(redis_url, workflows=[parallel, other]) as (engine, _),
        trio.open_nursery() as nursery,
    ):
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        await nursery.start(functools.partial(answer, engine, "w", errors={"b": "disk full"}))
        failed = await engine.run_workflow("wf")
        before = engine.clock.now()
        await trio.sleep(0.01)
        done = await engine.run_workflow("other")
        nursery.cancel_scope.cancel()
    async with engine_on(redis_url, workflows=[parallel, other]) as (engine, _):
        assert [r.id for r in await engine.fetch_history()] == [done.id, failed.id]
        assert [r.id for r in await engine.fetch_history(workflow="wf")] == [failed.id]
        assert [r.id for r in await engine.fetch_history(has_errors=True)] == [failed.id]
        assert [r.id for r in await engine.fetch_history(has_errors=False)] == [done.id]
        assert [r.id for r in await engine.fetch_history(since=before)] == [done.id]
        assert [r.id for r in await engine.fetch_history(limit=1)] == [done.id]
        assert failed.outcome is Outcome.DONE
        assert failed.has_errors
        assert [r.id for r in await engine.fetch_history(outcome="done")] == [done.id, failed.id]
        assert await engine.fetch_history(outcome="failed") == []
        entries = await engine.log.fetch(failed.id)
        assert [(e.kind.value, e.step, e.subscriber, e.message) for e in entries] == [
            ("error", "b", "w", "disk full")
        ]


async def test_configs_subscribers_and_definitions_survive_a_restart(redis_url: str) -> None:
    async with engine_on(redis_url) as (engine, _):
        first = engine.configs.put("app", {"level": 1})
        second = engine.configs.put("app", {"level": 2}, if_match=first.revision)
        with pytest.raises(ConfigConflict):
            engine.configs.put("app", {"level": 3}, if_match=first.revision)
        engine.configs.put("gone", {})
        engine.configs.delete("gone")
        engine.subscribe("w", "a", timeout=5)
        engine.subscribe("w", "b")
        engine.unsubscribe("w", "b")
        engine.subscribe("x", "b", wait_for_completion=False)
        engine.remove_subscriber("x")
        job = engine.definitions.parse(
            "workflow", "later", {"steps": [{"name": "only", "timeout": 5}]}
        )
        engine.definitions.put(job)
        await engine.wait_written()
    async with engine_on(redis_url) as (engine, _):
        kept = engine.configs.get("app")
        assert kept == second
        assert engine.configs.get("gone") is None
        with pytest.raises(ConfigConflict):
            engine.configs.put("app", {"level": 3}, if_match=first.revision)
        third = engine.configs.put("app", {"level": 3}, if_match=second.revision)
        assert third.revision != second.revision
        subscriber = engine.subscribers.get("w")
        assert subscriber is not None
        assert list(subscriber.subscriptions) == ["a"]
        assert subscriber.subscriptions["a"].timeout == 5
        assert engine.subscribers.get("x") is None
        assert engine.definitions.origin("later") == "api"
        assert [s.name for s in engine.workflows["later"].steps] == ["only"]


async def test_schedules_catch_up_from_the_marks_kept_in_redis(redis_url: str) -> None:
    every_minute = Workflow(
        id="tick",
        steps=[Step("a", timeout=30)],
        triggers=[CronTrigger("* * * * *", catch_up="latest")],
    )
    start = datetime(2026, 3, 2, 0, 0, 59, 200_000, tzinfo=UTC)
    async with engine_on(redis_url, workflows=[every_minute], start_time=start) as (engine, _):
        await trio.sleep(1.5)
        fired = [(f.planned.minute, f.outcome) for f in engine.schedule_ledger("tick")]
        assert fired == [(1, "started")]
    later = datetime(2026, 3, 2, 0, 5, 30, tzinfo=UTC)
    async with engine_on(redis_url, workflows=[every_minute], start_time=later) as (engine, _):
        await trio.sleep(0.5)
        fired = [(f.planned.minute, f.outcome) for f in engine.schedule_ledger("tick")]
    assert fired == [(2, "missed"), (3, "missed"), (4, "missed"), (5, "caught_up")]
