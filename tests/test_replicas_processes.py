"""Three ``phasebus serve --store redis://`` processes on one redis-server, as users run them.

Each replica is a real server process on port 0 with a short lease; the test
talks to them over HTTP and WebSocket only, and reads Redis with a store of
its own to see which replica holds a task. Leases are Redis's own time, so
these tests run in real time (a few seconds each); the cron test moves the
servers' wall clock instead of waiting for the next minute
(``tests/shifted_clock.py``). Every process is stopped by its PID at the end,
whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from engine._redis import RedisStore, open_redis_store

from .redis_support import RedisServer
from .test_recovery import DURABLE, ServerProcess, answer

pytestmark = pytest.mark.redis

#: Seconds a replica's lease lasts unless renewed: short, so that a takeover is quick, but
#: long enough that a busy machine does not make a healthy replica miss its renewals.
LEASE = 2.0
HERE = Path(__file__).parent

TICK = """
[[workflows]]
id = "tick"

[[workflows.steps]]
name = "a"
timeout = 30

[[workflows.triggers]]
cron = "* * * * *"
"""


class Replica(ServerProcess):
    """One ``phasebus serve`` replica: its process, URL, name and log file."""

    def __init__(self, process: trio.Process, url: str, name: str, log: Path) -> None:
        super().__init__(process, url)
        self.name = name
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


async def _announced_url(process: trio.Process, log: Path) -> str:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise AssertionError(f"a replica exited before it listened:\n{log.read_text()}")
            line += chunk
    return line.decode().split()[3]  # "phasebus listening on URL (...)"


@asynccontextmanager
async def replicas(
    redis: RedisServer,
    declarations: str,
    folder: Path,
    *,
    names: Sequence[str] = ("one", "two", "three"),
    launcher: Sequence[str] = (sys.executable, "-m", "machines"),
) -> AsyncIterator[list[Replica]]:
    """Start one ``phasebus serve`` per name on ``redis``, all at once; stop them by PID."""
    (folder / "flows").mkdir(exist_ok=True)
    (folder / "flows" / "flows.toml").write_text(declarations)
    started: list[tuple[trio.Process, str, Path]] = []
    async with AsyncExitStack() as stack:
        try:
            for name in names:
                log = folder / f"{name}.log"
                with log.open("wb") as stderr:
                    process = await trio.lowlevel.open_process(
                        [
                            *launcher,
                            *("serve", "--port", "0", "--store", redis.url),
                            *("--workflows", str(folder / "flows")),
                            *("--replica", name, "--lease", str(LEASE)),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                    )
                started.append((process, name, log))
            servers = []
            for process, name, log in started:
                server = Replica(process, await _announced_url(process, log), name, log)
                stack.push_async_callback(server.http.aclose)
                servers.append(server)
            try:
                yield servers
            except BaseException:
                for _, name, log in started:  # shown with the failure
                    print(f"--- replica {name}:\n{log.read_text(errors='replace')}")
                raise
        finally:
            for process, _, _ in started:
                if process.returncode is None:
                    os.kill(process.pid, signal.SIGKILL)  # also ends a stopped process
            with trio.move_on_after(10):
                for process, _, _ in started:
                    await process.wait()


async def subscribe(server: Replica, subscriber_id: str, steps: str = "abc") -> None:
    for step in steps:
        response = await server.http.post(
            f"/subscriber/{subscriber_id}/{step}", params={"timeout": 60}
        )
        assert response.status_code == 200, response.text


async def knows(server: Replica, subscriber_id: str, steps: str = "abc") -> None:
    """Wait until a subscription made through another replica reached ``server``."""
    with trio.fail_after(10):
        while True:
            got = await server.http.get(f"/subscriber/{subscriber_id}")
            if got.status_code == 200 and sorted(got.json()["subscriptions"]) == list(steps):
                return
            await trio.sleep(0.05)


async def run(server: Replica, workflow: str = "durable") -> str:
    started = await server.http.post(f"/workflow/{workflow}/run")
    assert started.status_code == 202, started.text
    task_id: str = started.json()["task_id"]
    return task_id


async def next_action(ws: trio_websocket.WebSocketConnection, timeout: float) -> dict[str, Any]:
    """Return the next action a subscriber receives (events are skipped)."""
    with trio.fail_after(timeout):
        while True:
            message: dict[str, Any] = json.loads(await ws.get_message())
            if message["kind"] == "action":
                return message


@pytest.fixture
async def leases(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A store of the test's own on the replicas' Redis, to read which lease holds a task."""
    async with open_redis_store(redis_server.url) as store:
        yield store


async def finished(server: Replica, task_id: str, timeout: float = 10) -> dict[str, Any]:
    """Wait until ``server`` shows the task finished; return it."""
    with trio.fail_after(timeout):
        while True:
            response = await server.http.get(f"/task/{task_id}")
            if response.status_code == 200 and not (task := response.json())["running"]:
                assert isinstance(task, dict)
                return task
            await trio.sleep(0.05)


async def history(server: Replica, workflow: str) -> list[dict[str, Any]]:
    """Return every task of ``workflow`` that ``server`` lists, running or finished."""
    response = await server.http.get("/tasks", params={"workflow": workflow})
    assert response.status_code == 200, response.text
    tasks: list[dict[str, Any]] = response.json()
    return tasks


async def assert_ran_once(servers: Sequence[Replica], task_id: str, subscriber: str) -> None:
    """Every replica lists the task once, done, each step answered once by ``subscriber``."""
    for server in servers:
        tasks = await history(server, "durable")
        assert [(t["id"], t["running"], t["outcome"]) for t in tasks] == [
            (task_id, False, "done")
        ], server.name
        steps = tasks[0]["steps"]
        assert [step["name"] for step in steps] == ["a", "b", "c"], server.name
        assert [step["answered"] for step in steps] == [{subscriber: "done"}] * 3, server.name
        assert all(step["errors"] == [] for step in steps), server.name


async def test_a_run_started_on_one_replica_is_answered_through_another(
    redis_server: RedisServer, leases: RedisStore, tmp_path: Path
) -> None:
    async with replicas(redis_server, DURABLE, tmp_path) as (one, two, three):
        await subscribe(three, "w")  # subscribed through one replica,
        for server in (one, two):
            await knows(server, "w")
        async with two.subscriber("w") as ws:  # connected to another,
            task_id = await run(one)  # its run started on the third
            assert await leases.lease_of(task_id) == "one"
            seen = []
            for _ in "abc":
                sent = await next_action(ws, timeout=10)
                seen.append((sent["data"]["task"], sent["data"]["step"]))
                await answer(ws, sent)  # answered to "two", for the task "one" drives
            task = await finished(one, task_id)
        assert task["outcome"] == "done"
        assert seen == [(task_id, "a"), (task_id, "b"), (task_id, "c")]
        await assert_ran_once((one, two, three), task_id, "w")
        assert await leases.lease_of(task_id) is None  # filed, held by nobody


async def test_the_replica_driving_a_task_killed_mid_step_another_finishes_it(
    redis_server: RedisServer, leases: RedisStore, tmp_path: Path
) -> None:
    async with replicas(redis_server, DURABLE, tmp_path) as (one, two, three):
        await subscribe(two, "w")
        for server in (one, three):
            await knows(server, "w")
        async with three.subscriber("w") as ws:
            task_id = await run(one)
            seen = []
            first = await next_action(ws, timeout=10)
            seen.append(first["data"]["step"])
            await answer(ws, first)
            owed = await next_action(ws, timeout=10)  # step b, unanswered when "one" dies
            seen.append(owed["data"]["step"])
            assert await leases.lease_of(task_id) == "one"
            killed = time.monotonic()
            one.kill()
            with trio.fail_after(10):
                await one.process.wait()
            again = await next_action(ws, timeout=10)  # sent again by the replica taking over
            took = time.monotonic() - killed
            seen.append(again["data"]["step"])
            assert again["data"]["task"] == task_id
            assert await leases.lease_of(task_id) in {"two", "three"}
            await answer(ws, again)
            last = await next_action(ws, timeout=10)
            seen.append(last["data"]["step"])
            await answer(ws, last)
            task = await finished(three, task_id)
        assert one.process.returncode == -signal.SIGKILL
        assert task["outcome"] == "done"
        assert seen == ["a", "b", "b", "c"]  # b owed, so sent again; nothing else twice
        await assert_ran_once((two, three), task_id, "w")
        # the lease lasts LEASE after its last renewal; takeovers are looked for 4 times per LEASE
        assert took < 3 * LEASE, f"taken over after {took:.2f} s"
        taker = two if "took over 1 task(s) of replica 'one'" in two.logged() else three
        assert "took over 1 task(s) of replica 'one'" in taker.logged()


async def test_a_paused_replica_writes_nothing_more_for_the_tasks_taken_from_it(
    redis_server: RedisServer, leases: RedisStore, tmp_path: Path
) -> None:
    async with replicas(redis_server, DURABLE, tmp_path) as (one, two, three):
        await subscribe(three, "w")
        for server in (one, two):
            await knows(server, "w")
        seen = []
        async with one.subscriber("w") as ws:  # the subscriber is connected to the driver
            task_id = await run(one)
            first = await next_action(ws, timeout=10)
            await answer(ws, first)
            owed = await next_action(ws, timeout=10)
            seen.append(owed["data"]["step"])
            os.kill(one.pid, signal.SIGSTOP)  # "one" stalls, past its lease
            try:
                # the answer waits in the paused replica's socket: it reads it when it wakes
                await answer(ws, owed)
                with trio.fail_after(3 * LEASE):
                    while (taker_name := await leases.lease_of(task_id)) == "one":
                        await trio.sleep(0.05)
                assert taker_name in {"two", "three"}
                await trio.sleep(LEASE / 2)  # the taker has sent b again, to w's stream
            finally:
                os.kill(one.pid, signal.SIGCONT)
            # "one" wakes with its lease gone: it lets the task go without writing, hands the
            # answer it read to the taker or drops it, and passes on what the taker sends w
            while (sent := await next_action(ws, timeout=10))["data"]["step"] != "c":
                assert (sent["data"]["task"], sent["data"]["step"]) == (task_id, "b")
                seen.append("b")
                await answer(ws, sent)
            seen.append("c")
            await answer(ws, sent)
            taker = two if taker_name == "two" else three
            task = await finished(taker, task_id)
        assert task["outcome"] == "done"
        assert seen in (["b", "c"], ["b", "b", "c"])
        await assert_ran_once((one, two, three), task_id, "w")
        assert "this one let it go" in one.logged()
        assert await leases.lease_of(task_id) is None
        # nothing more from "one" for it: the record stays as the taker filed it
        kept = (await taker.http.get(f"/task/{task_id}")).json()
        await trio.sleep(2 * LEASE)
        assert (await taker.http.get(f"/task/{task_id}")).json() == kept
        await assert_ran_once((one, two, three), task_id, "w")


async def test_a_cron_firing_starts_one_run_across_three_replicas(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The servers' clocks read 00:00:52 now, so every minute's firing comes 8 s from now,
    # when all three are listening.
    now = time.time()
    wall = datetime(2026, 3, 2, 0, 0, 52, tzinfo=UTC)
    launcher = (sys.executable, str(HERE / "shifted_clock.py"), wall.isoformat(), str(now))
    async with replicas(redis_server, TICK, tmp_path, launcher=launcher) as servers:
        assert time.time() < now + 7, "the replicas took too long to start"
        firings: list[dict[str, Any]] = []
        with trio.fail_after(15):
            while len(firings) < 3:
                await trio.sleep(0.2)
                firings = []
                for server in servers:
                    listed = (await server.http.get("/workflows")).json()
                    firings += next(w["ledger"] for w in listed if w["id"] == "tick")
        assert {f["planned"] for f in firings} == {(wall + timedelta(seconds=8)).isoformat()}
        assert sorted(f["outcome"] for f in firings) == [
            "another_replica",
            "another_replica",
            "started",
        ]
        (task_id,) = [f["task_id"] for f in firings if f["task_id"] is not None]
        await finished(servers[0], task_id)
        for server in servers:
            tasks = await history(server, "tick")
            assert [(t["id"], t["outcome"]) for t in tasks] == [(task_id, "done")], server.name


async def test_three_replicas_start_one_skip_run_and_stop_it_through_another(
    redis_server: RedisServer, leases: RedisStore, tmp_path: Path
) -> None:
    async with replicas(redis_server, DURABLE, tmp_path) as servers:
        one, two, three = servers
        await subscribe(one, "w")
        for server in (two, three):
            await knows(server, "w")
        async with three.subscriber("w") as ws:
            answers: list[dict[str, Any]] = []

            async def start(server: Replica) -> None:
                response = await server.http.post("/workflow/durable/run")
                answers.append({"status": response.status_code, **response.json()})

            async with trio.open_nursery() as nursery:  # all at once, through every server
                for _ in range(3):
                    for server in servers:
                        nursery.start_soon(start, server)
            started = [a for a in answers if a["decision"] == "started"]
            assert [a["status"] for a in started] == [202]
            task_id = started[0]["task_id"]
            skipped = [a for a in answers if a["decision"] == "skipped"]
            assert len(skipped) == 8
            assert {(a["status"], a["task_id"], a["reason"]) for a in skipped} == {
                (200, None, f"a run is active (surpass skip): task {task_id}")
            }
            first = await next_action(ws, timeout=10)
            assert (first["data"]["task"], first["data"]["step"]) == (task_id, "a")
            driver = await leases.lease_of(task_id)
            other = next(s for s in servers if s.name != driver)
            for server in servers:  # every server lists it, with its current step
                listed = (await server.http.get("/tasks", params={"limit": "0"})).json()
                assert [(t["id"], t["step"]["name"]) for t in listed] == [(task_id, "a")]
            stopped = await other.http.delete(f"/task/{task_id}")
            assert (stopped.status_code, stopped.json()) == (
                200,
                {"task_id": task_id, "stopped": True},
            )
            with trio.fail_after(10):
                while True:  # the driving server told the listener to stop
                    message = json.loads(await ws.get_message())
                    if message["kind"] == "action_abort":
                        break
            assert message["data"]["task"] == task_id
        for server in servers:
            task = await finished(server, task_id)
            assert (task["outcome"], task["error"]) == ("stopped", "stopped through the API")
        again = await other.http.delete(f"/task/{task_id}")
        assert (again.status_code, again.json()["stopped"]) == (200, False)
        assert [t["id"] for t in await history(one, "durable")] == [task_id]
