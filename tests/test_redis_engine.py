"""The engine on a real redis-server: every promise the SQLite store keeps, kept on Redis.

Redis keeps its own time (leases expire by Redis's clock), so these tests run
in real time, with leases of two seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import trio

from engine import (
    Action,
    Engine,
    Outcome,
    Step,
    Workflow,
    open_engine,
)
from engine._errors import StoreError
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
