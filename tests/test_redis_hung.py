"""A Redis that keeps its connections open but answers nothing (paused with SIGSTOP)
counts as out of reach: calls are bounded, retried, and the server says it is not ready."""

from __future__ import annotations

import functools
import logging
import signal
import time

import httpx
import pytest
import trio

from engine import open_engine
from engine._redis import open_redis_store
from engine._server import serve_app
from engine._web import create_app

from .redis_support import RedisServer

pytestmark = pytest.mark.redis


async def test_a_hung_redis_counts_as_unreachable_until_it_answers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "engine")
    async with (
        open_redis_store(redis_server.url, answer_timeout=0.5) as store,
        open_engine(store=store, replica="one") as engine,
        trio.open_nursery() as nursery,
    ):
        app = create_app(engine, store_wait=1.0)
        base = await nursery.start(functools.partial(serve_app, app, port=0))
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/system/ready")).status_code == 200
            guarded = await http.put("/config/guarded", json={"level": 1})
            revision = guarded.headers["Resoto-Config-Revision"]
            redis_server.kill(signal.SIGSTOP)  # the connection stays open; no answer comes
            try:
                read: list[object] = []

                async def read_config() -> None:
                    read.append(await store.load())

                nursery.start_soon(read_config)
                began = time.monotonic()
                ready = await http.get("/system/ready")
                assert ready.status_code == 503
                assert ready.json()["error"] == "the store does not answer"
                assert time.monotonic() - began < 3
                # a change is answered 503 (kept, written once Redis answers), not held forever
                refused = await http.put("/config/app", json={"level": 1})
                assert refused.status_code == 503, refused.text
                # so is one naming a revision, which waits for Redis's own check
                began = time.monotonic()
                checked = await http.put(
                    "/config/guarded", json={"level": 2}, headers={"If-Match": revision}
                )
                assert checked.status_code == 503, checked.text
                assert checked.json()["error"] == "the store does not answer"
                assert time.monotonic() - began < 3
                config = engine.configs.get("guarded")
                assert config is not None
                assert config.data == {"level": 1}  # not taken before Redis keeps it
                with trio.fail_after(5):
                    while store.ready:  # the unanswered calls count as Redis out of reach
                        await trio.sleep(0.05)
                assert not read  # the read is retried, not answered with nothing
                assert any("retrying until it does" in r.getMessage() for r in caplog.records)
            finally:
                redis_server.kill(signal.SIGCONT)
            with trio.fail_after(15):
                while not read or not store.ready:
                    await trio.sleep(0.05)
            assert (await http.get("/system/ready")).status_code == 200
            # what was refused with 503 is stored now, and taken here
            with trio.fail_after(10):
                while "app" not in {c.id for c in (await store.load()).configs}:
                    await trio.sleep(0.05)
                while (await http.get("/config/guarded")).json() != {"level": 2}:
                    await trio.sleep(0.05)
            stored = {c.id: c.data for c in (await store.load()).configs}
            assert stored["guarded"] == {"level": 2}
        assert any("answers again" in r.getMessage() for r in caplog.records)
        app.close()
        nursery.cancel_scope.cancel()
