"""History: the SQLite and the Redis store filter, order and prune finished tasks alike.

One test body runs against both stores and against a plain Python model of
the rule: newest ``ended_at`` first, ties broken by which task was stored
last (a task stored again keeps its place), filters combined with AND.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from engine._redis import RedisStore
from engine._store import FinishTask, SaveTask, SQLiteStore

T0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()


@attrs.define
class History:
    """The part of a store these tests use, as coroutines whichever store is behind."""

    sqlite: SQLiteStore | None = None
    redis: RedisStore | None = None
    fence: int = 0

    async def finish(self, write: FinishTask) -> None:
        if self.sqlite is not None:
            self.sqlite.finish_task(
                write.task_id,
                write.workflow,
                write.outcome,
                write.started_at,
                write.ended_at,
                write.record,
                has_errors=write.has_errors,
            )
        else:
            assert self.redis is not None
            await self.redis.commit([write], owner="replica", fence=self.fence)

    async def history(self, **filters: Any) -> list[dict[str, Any]]:
        if self.sqlite is not None:
            return self.sqlite.history(**filters)
        assert self.redis is not None
        return await self.redis.history(**filters)

    async def prune(self, before: datetime) -> int:
        if self.sqlite is not None:
            return self.sqlite.prune(before)
        assert self.redis is not None
        return await self.redis.prune(before, batch=3)

    async def save_running(self, task_id: str) -> None:
        record = orjson.dumps({"id": task_id, "state": "collect"})
        if self.sqlite is not None:
            self.sqlite.save_task(task_id, "wf", record)
        else:
            assert self.redis is not None
            await self.redis.commit([SaveTask(task_id, "wf", record)], owner="replica", fence=1)

    async def task_ids(self, prefix: str, *, limit: int) -> list[str]:
        if self.sqlite is not None:
            return self.sqlite.task_ids(prefix, limit=limit)
        assert self.redis is not None
        return await self.redis.task_ids(prefix, limit=limit)

    async def add_log_entry(self, task_id: str, entry: bytes, *, keep: int) -> None:
        if self.sqlite is not None:
            self.sqlite.add_log_entry(task_id, entry, keep=keep)
        else:
            assert self.redis is not None
            await self.redis.add_log_entry(task_id, entry, keep=keep)

    async def task_log(self, task_id: str) -> list[dict[str, Any]]:
        if self.sqlite is not None:
            return self.sqlite.task_log(task_id)
        assert self.redis is not None
        return await self.redis.task_log(task_id)

    async def finished_task(self, task_id: str) -> dict[str, Any] | None:
        if self.sqlite is not None:
            return self.sqlite.finished_task(task_id)
        assert self.redis is not None
        return await self.redis.finished_task(task_id)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[History]:
    if request.param == "sqlite":
        sqlite = SQLiteStore(tmp_path / "state.sqlite3")
        try:
            yield History(sqlite=sqlite)
        finally:
            sqlite.close()
        return
    url = request.getfixturevalue("redis_url")
    async with RedisStore(url) as redis:
        token = await redis.acquire_lease("replica", timedelta(minutes=10))
        assert token is not None
        yield History(redis=redis, fence=token)


def finish(task_id: str, ended: float, workflow: str, outcome: str, errors: bool) -> FinishTask:
    record = {"id": task_id, "workflow": workflow, "outcome": outcome, "ended_at": T0 + ended}
    return FinishTask(
        task_id,
        workflow,
        outcome,
        T0 + ended - 5,
        T0 + ended,
        orjson.dumps(record),
        has_errors=errors,
    )


#: Finished tasks in the order they are stored: ties of ended_at, and "a3" stored twice.
WRITES = [
    finish("a1", 10, "wf", "done", False),
    finish("a2", 20, "wf", "failed", True),
    finish("a3", 20, "other", "done", False),
    finish("a4", 20, "wf", "done", True),
    finish("a5", 5, "other", "stopped", False),
    finish("a6", 30.25, "wf", "done", False),
    finish("a7", 40, "other", "failed", True),
    finish("a3", 25, "other", "failed", True),
    finish("a8", 25, "wf", "done", False),
    finish("a9", 0.5, "wf", "done", False),
]


def expected(
    writes: list[FinishTask],
    *,
    workflow: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    has_errors: bool | None = None,
    limit: int = 100,
) -> list[str]:
    """The rule, in Python: latest values, first positions, newest first."""
    latest: dict[str, tuple[int, FinishTask]] = {}
    for position, write in enumerate(writes):
        first = latest[write.task_id][0] if write.task_id in latest else position
        latest[write.task_id] = (first, write)
    chosen = [
        (write.ended_at, position, write.task_id)
        for position, write in latest.values()
        if (workflow is None or write.workflow == workflow)
        and (outcome is None or write.outcome == outcome)
        and (since is None or write.ended_at >= since.timestamp())
        and (has_errors is None or write.has_errors == has_errors)
    ]
    ids = [task_id for _, _, task_id in sorted(chosen, reverse=True)]
    return ids if limit < 0 else ids[:limit]


FILTERS = [
    {
        key: value
        for key, value in zip(
            ("workflow", "outcome", "has_errors", "since", "limit"), combination, strict=True
        )
        if value is not None
    }
    for combination in itertools.product(
        (None, "wf", "other", "missing"),
        (None, "done", "failed"),
        (None, True, False),
        (None, datetime.fromtimestamp(T0 + 20, UTC)),
        (None, 2, 0, -1),
    )
]


async def test_history_filters_and_orders_as_the_rule_says(store: History) -> None:
    for write in WRITES:
        await store.finish(write)
    assert [r["id"] for r in await store.history()] == [
        "a7",
        "a6",
        "a8",
        "a3",
        "a4",
        "a2",
        "a1",
        "a5",
        "a9",
    ]
    for filters in FILTERS:
        found = [r["id"] for r in await store.history(**filters)]
        assert found == expected(WRITES, **filters), filters
    assert await store.finished_task("a3") == orjson.loads(WRITES[7].record)
    assert await store.finished_task("nothing") is None


async def test_pruning_removes_what_ended_before_and_keeps_the_filters_right(
    store: History,
) -> None:
    for write in WRITES:
        await store.finish(write)
    before = datetime.fromtimestamp(T0 + 20, UTC)
    assert await store.prune(before) == 3  # a1, a5, a9; a2 and a4 ended exactly then
    assert await store.prune(before) == 0
    kept = [w for w in WRITES if w.ended_at >= before.timestamp() or w.task_id == "a3"]
    for filters in FILTERS:
        found = [r["id"] for r in await store.history(**filters)]
        assert found == expected(kept, **filters), filters
    await store.finish(finish("a1", 50, "wf", "done", False))  # stored again after pruning
    assert [r["id"] for r in await store.history(workflow="wf", limit=2)] == ["a1", "a6"]


async def test_tasks_are_found_by_a_prefix_of_their_id_and_logs_go_with_pruning(
    store: History,
) -> None:
    for write in WRITES:
        await store.finish(write)
    await store.save_running("a10")
    await store.save_running("b1")
    # the order differs (SQLite lists running tasks first): the set is the rule
    assert sorted(await store.task_ids("a", limit=100)) == [
        "a1",
        "a10",
        "a2",
        "a3",
        "a4",
        "a5",
        "a6",
        "a7",
        "a8",
        "a9",
    ]
    assert sorted(await store.task_ids("a1", limit=100)) == ["a1", "a10"]
    assert len(await store.task_ids("", limit=3)) == 3
    assert await store.task_ids("c", limit=3) == []
    for n in range(5):
        await store.add_log_entry("a1", orjson.dumps({"n": n}), keep=3)
        await store.add_log_entry("a8", orjson.dumps({"n": n}), keep=10)
    assert await store.task_log("a1") == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert len(await store.task_log("a8")) == 5
    assert await store.task_log("nothing") == []
    assert await store.prune(datetime.fromtimestamp(T0 + 20, UTC)) == 3
    assert await store.task_log("a1") == []
    assert len(await store.task_log("a8")) == 5
    assert sorted(await store.task_ids("a", limit=100)) == [
        "a10",
        "a2",
        "a3",
        "a4",
        "a6",
        "a7",
        "a8",
    ]
