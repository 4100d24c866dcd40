"""Crash recovery of a real ``phasebus serve`` process killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

DURABLE = """
[[workflows]]
id = "durable"
surpass = "skip"

[[workflows.steps]]
name = "a"
timeout = 60
on_error = "stop"

[[workflows.steps]]
name = "b"
timeout = 60
on_error = "stop"

[[workflows.steps]]
name = "c"
timeout = 60
on_error = "stop"
"""

HERE = Path(__file__).parent


class ServerProcess:
    """A ``phasebus serve`` subprocess on 127.0.0.1, port 0."""

    def __init__(self, process: trio.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    @asynccontextmanager
    async def subscriber(
        self, subscriber_id: str
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, host, f"/subscriber/{subscriber_id}/handle"
                )
                yield ws
                nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()


@asynccontextmanager
async def serve(
    store: Path | str,
    workflows: Path | None = None,
    *,
    launcher: list[str] | None = None,
    options: tuple[str, ...] = (),
) -> AsyncIterator[ServerProcess]:
    command = [
        *(launcher or [sys.executable, "-m", "machines"]),
        "serve",
        "--port",
        "0",
        "--store",
        str(store),
        *(["--workflows", str(workflows)] if workflows is not None else []),
        *options,
    ]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    raise AssertionError("the server exited before it listened")
                line += chunk
        url = line.decode().split()[3]  # "phasebus listening on URL (...)"
        server = ServerProcess(process, url)
        try:
            yield server
        finally:
            await server.http.aclose()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(10):
            await process.wait()


async def action(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    """Return the next action sent to a subscriber (events are skipped)."""
    with trio.fail_after(20):
        while True:
            message = json.loads(await ws.get_message())
            if message["kind"] == "action":
                return message


async def answer(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(
        json.dumps(
            {
                "kind": "action_done",
                "message_type": message["message_type"],
                "data": message["data"],
            }
        )
    )


async def prepare(server: ServerProcess) -> str:
    """Store a config and subscriptions, and start the durable workflow."""
    assert (await server.http.put("/config/app", json={"answer": 42})).status_code == 200
    for step in "abc":
        response = await server.http.post(f"/subscriber/w/{step}", params={"timeout": 60})
        assert response.status_code == 200
    started = await server.http.post("/workflow/durable/run")
    assert started.status_code == 202
    task_id: str = started.json()["task_id"]
    return task_id


async def finish_after_restart(
    server: ServerProcess, task_id: str, seen: list[tuple[str, str]]
) -> dict[str, Any]:
    """Check that configs and subscriptions survived; answer what is owed; return the task."""
    config = await server.http.get("/config/app")
    assert config.json() == {"answer": 42}
    subscriber = (await server.http.get("/subscriber/w")).json()
    assert sorted(subscriber["subscriptions"]) == ["a", "b", "c"]
    async with server.subscriber("w") as ws:
        while True:
            message = await action(ws)
            seen.append((message["data"]["task"], message["data"]["step"]))
            await answer(ws, message)
            if message["data"]["step"] == "c":
                break
    with trio.fail_after(20):
        while True:
            task = (await server.http.get(f"/task/{task_id}")).json()
            if not task["running"]:
                return task
            await trio.sleep(0.05)


async def test_killed_mid_step_the_task_resumes_and_nothing_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "durable.toml").write_text(DURABLE)
    store = tmp_path / "state.sqlite3"
    seen: list[tuple[str, str]] = []
    async with serve(store, tmp_path / "flows") as server:
        task_id = await prepare(server)
        async with server.subscriber("w") as ws:
            first = await action(ws)
            seen.append((first["data"]["task"], first["data"]["step"]))
            await answer(ws, first)
            second = await action(ws)  # step b: waiting for us when the server dies
            seen.append((second["data"]["task"], second["data"]["step"]))
            server.kill()
            await server.process.wait()
    assert server.process.returncode == -signal.SIGKILL
    async with serve(store, tmp_path / "flows") as server:
        task = await finish_after_restart(server, task_id, seen)
    assert task["outcome"] == "done"
    assert [step["name"] for step in task["steps"]] == ["a", "b", "c"]
    assert all(step["answered"] == {"w": "done"} for step in task["steps"])
    # every step's action reached the listener, b again after the restart
    assert seen == [(task_id, "a"), (task_id, "b"), (task_id, "b"), (task_id, "c")]


async def test_killed_between_the_state_write_and_the_publish(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "durable.toml").write_text(DURABLE)
    store = tmp_path / "state.sqlite3"
    seen: list[tuple[str, str]] = []
    crashing = [sys.executable, str(HERE / "crash_after_write.py"), "b"]
    async with serve(store, tmp_path / "flows", launcher=crashing) as server:
        task_id = await prepare(server)
        async with server.subscriber("w") as ws:
            first = await action(ws)
            seen.append((first["data"]["task"], first["data"]["step"]))
            await answer(ws, first)
            with trio.fail_after(20):
                await server.process.wait()  # it dies writing step b, before publishing it
            with pytest.raises(trio_websocket.ConnectionClosed):
                await action(ws)
    assert server.process.returncode == -signal.SIGKILL
    async with serve(store, tmp_path / "flows") as server:
        task = await finish_after_restart(server, task_id, seen)
    assert task["outcome"] == "done"
    # b was never published before the crash: it is sent once, after the restart
    assert seen == [(task_id, "a"), (task_id, "b"), (task_id, "c")]
