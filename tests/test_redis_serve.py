"""The API on a Redis store: answers once Redis keeps a change, readiness while Redis is away,
and ``phasebus serve --store redis://`` as a user runs it."""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from engine import Action, Engine, Outcome, Step, Workflow, open_engine
from engine._redis import RedisStore, open_redis_store
from engine._server import serve_app
from engine._web import create_app

from .redis_support import RedisServer, free_port, redis_server_program
from .test_recovery import serve

pytestmark = pytest.mark.redis

TWO_STEPS = Workflow(id="wf", steps=[Step("a", timeout=60), Step("b", timeout=60)])


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with an append-only file: it keeps what it had when restarted."""
    server = RedisServer(redis_server_program(), tmp_path, free_port(), appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@attrs.define
class Api:
    engine: Engine
    store: RedisStore
    http: httpx.AsyncClient


@asynccontextmanager
async def api_on(url: str, *, store_wait: float = 1.0, replica: str = "one") -> AsyncIterator[Api]:
    async with (
        open_redis_store(url) as store,
        open_engine(
            workflows=[TWO_STEPS], store=store, replica=replica, lease=timedelta(seconds=2)
        ) as engine,
        trio.open_nursery() as nursery,
    ):
        app = create_app(engine, store_wait=store_wait)
        base = await nursery.start(functools.partial(serve_app, app, port=0))
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            yield Api(engine, store, http)
        app.close()
        nursery.cancel_scope.cancel()


async def stored_subscribers(url: str) -> dict[str, Any]:
    """Read the subscribers Redis holds now, with a client of its own."""
    async with open_redis_store(url) as other:
        return dict((await other.load()).subscribers)


async def test_a_change_is_answered_once_redis_keeps_it(redis_url: str) -> None:
    async with api_on(redis_url) as api:
        assert (await api.http.get("/system/ready")).status_code == 200
        answer = await api.http.put(
            "/subscriber/w", json=[{"message_type": "a", "wait_for_completion": True}]
        )
        assert answer.status_code == 200, answer.text
        # the answer came: Redis holds the change already
        assert list(await stored_subscribers(redis_url)) == ["w"]
        answer = await api.http.put("/config/app", json={"level": 1})
        assert answer.status_code == 200, answer.text
        assert [c.id for c in (await api.store.load()).configs] == ["app"]
        started = await api.http.post("/workflow/wf/run")
        task_id = started.json()["task_id"]
        assert await api.store.lease_of(task_id) == "one"  # its first step is kept


async def test_redis_stopped_and_started_again_under_a_running_server(
    durable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "engine")
    url = durable_redis.url
    async with api_on(url) as api, api.engine.open_listener(subscriber_id="w") as listener:
        for step in ("a", "b"):
            answer = await api.http.post(f"/subscriber/w/{step}")
            assert answer.status_code == 200, answer.text
        task_id = (await api.http.post("/workflow/wf/run")).json()["task_id"]
        with trio.fail_after(5):
            first = await listener.receive()
        assert isinstance(first, Action)
        assert first.step == "a"

        durable_redis.kill(signal.SIGTERM)  # Redis goes away, the server stays
        ready = await api.http.get("/system/ready")
        assert ready.status_code == 503
        assert ready.json() == {"error": "the store does not answer", "problems": []}
        refused = await api.http.post("/subscriber/late/a")
        assert refused.status_code == 503
        assert refused.json()["error"] == "the store does not answer"
        listener.done(first)  # its state waits for Redis; step b's action waits with it
        with trio.move_on_after(0.5):
            early = await listener.receive()
            raise AssertionError(f"{early} went out before its state was stored")

        durable_redis.start()
        with trio.fail_after(15):
            second = await listener.receive()
        assert isinstance(second, Action)
        assert second.step == "b"
        listener.done(second)
        result = await api.engine.wait_task(task_id)
        assert result.outcome is Outcome.DONE
        assert (await api.http.get("/system/ready")).status_code == 200
        listed = (await api.http.get("/tasks", params={"outcome": "done"})).json()
        assert [t["id"] for t in listed] == [task_id]
        # the subscription refused with 503 was written once Redis answered again
        assert set(await stored_subscribers(url)) == {"w", "late"}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retrying until it does" in m for m in messages) == 1
    assert any("answers again" in m for m in messages)


async def test_phasebus_serve_on_redis_keeps_its_history_across_a_restart(
    redis_url: str,
) -> None:
    options = ("--demo", "--replica", "one")
    async with serve(redis_url, options=options) as server:  # type: ignore[arg-type]
        started = await server.http.post("/workflow/collect_and_cleanup/run")
        task_id = started.json()["task_id"]
        with trio.fail_after(30):
            while (task := (await server.http.get(f"/task/{task_id}")).json())["running"]:
                await trio.sleep(0.1)
        assert task["outcome"] == "done"
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.process.wait() == 0
        assert server.process.stderr is not None
        stderr = (await server.process.stderr.receive_some(65536)).decode()
    assert "keeps nothing on disk" in stderr
    async with serve(redis_url, options=options) as server:  # type: ignore[arg-type]
        kept = (await server.http.get(f"/task/{task_id[:8]}")).json()
        assert (kept["id"], kept["outcome"]) == (task_id, "done")
        history = await trio.run_process(
            [sys.executable, "-m", "machines", "history", "--url", server.url, "--json"],
            capture_stdout=True,
        )
        assert task_id in history.stdout.decode()
        log = (await server.http.get(f"/task/{task_id}/log")).json()
        assert log["task_id"] == task_id


def test_replica_needs_a_redis_store(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    run = subprocess.run(
        [sys.executable, "-m", "machines", "serve", "--store", store, "--replica", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.strip().endswith(
        "--replica and --lease: only for a Redis store (--store redis://...), got --store"
        f" {str(tmp_path / 's')!r}"
    )


async def test_tls_on_redis_needs_a_certificate_and_a_lease_its_bounds() -> None:
    from engine._errors import PhasebusError
    from engine._serve import serve as serve_engine

    with pytest.raises(PhasebusError, match=r"^--tls: with a Redis store, give --cert and --key"):
        await serve_engine(store="redis://127.0.0.1:1/0", tls=True, announce=False)
    with pytest.raises(
        PhasebusError, match=r"^--lease: must be from 0.3 to 3600 seconds, got 0.1$"
    ):
        await serve_engine(store="redis://127.0.0.1:1/0", lease_seconds=0.1, announce=False)
