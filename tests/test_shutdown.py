"""Stopping: SIGINT, SIGTERM or leaving open_engine freezes every task where it is."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import Outcome, SQLiteStore, open_engine
from machines import COLLECT_AND_CLEANUP

from .test_recovery import ServerProcess, serve


async def wait_for_step(server: ServerProcess, task_id: str, step: str) -> None:
    with trio.fail_after(20):
        while True:
            task = (await server.http.get(f"/task/{task_id}")).json()
            assert task["running"], task
            if task["step"] is not None and task["step"]["name"] == step:
                return
            await trio.sleep(0.02)


async def wait_for_end(server: ServerProcess, task_id: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            task: dict[str, Any] = (await server.http.get(f"/task/{task_id}")).json()
            if not task["running"]:
                return task
            await trio.sleep(0.05)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_a_signal_freezes_the_run_and_a_restart_resumes_it(
    tmp_path: Path, signum: int, status: int
) -> None:
    store = tmp_path / "state.sqlite3"
    async with serve(store, options=("--demo",)) as server:
        started = await server.http.post("/workflow/collect_and_cleanup/run")
        task_id = started.json()["task_id"]
        await wait_for_step(server, task_id, "collect")  # the demo collector takes a while
        server.process.send_signal(signum)
        with trio.fail_after(20):
            await server.process.wait()
    assert server.process.returncode == status
    async with serve(store, options=("--demo",)) as server:
        resumed = (await server.http.get(f"/task/{task_id}")).json()
        assert resumed["running"], resumed  # not recorded as done while stopping
        assert resumed["step"]["name"] == "collect"
        task = await wait_for_end(server, task_id)
    assert task["outcome"] == "done"
    assert [step["name"] for step in task["steps"]] == [s.name for s in COLLECT_AND_CLEANUP.steps]
    for step in task["steps"]:  # every step really answered, none skipped while stopping
        assert step["answered"], step
        assert set(step["answered"].values()) == {"done"}, step
        assert step["errors"] == [], step


async def test_a_restart_without_the_demo_releases_what_its_listeners_owed(
    tmp_path: Path,
) -> None:
    store = tmp_path / "state.sqlite3"
    async with serve(store, options=("--demo",)) as server:
        task_id = (await server.http.post("/workflow/metrics/run")).json()["task_id"]
        await wait_for_step(server, task_id, "generate_metrics")
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await server.process.wait()
    async with serve(store) as server:
        subscribers = (await server.http.get("/subscribers")).json()
        assert [s["id"] for s in subscribers if s["id"].startswith("demo.")] == []
        task = await wait_for_end(server, task_id)
    assert task["outcome"] == "done"
    assert task["steps"][0]["answered"] == {"demo.hooks": "done"}


async def test_leaving_open_engine_stops_tasks_where_they_are(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(path)
    async with open_engine(workflows=[COLLECT_AND_CLEANUP], store=store) as engine:
        engine.subscribe("w", "pre_collect")
        engine.subscribe("w", "collect")
        async with engine.open_listener(subscriber_id="w") as listener:
            task_id = engine.start_workflow("collect_and_cleanup").task_id
            assert task_id is not None
            listener.done(await listener.receive())  # pre_collect
            await listener.receive()  # collect: owed when the engine stops
            engine.freeze()
            assert engine.closing
            # what leaves or arrives while stopping moves no task on
            engine.remove_subscriber("w")
    store.close()
    store = SQLiteStore(path)
    state = store.load()
    store.close()
    (record,) = state.tasks
    assert record["id"] == task_id
    assert record["state"] == "collect"
    assert state.subscribers == {
        "w": [
            {"message_type": "pre_collect", "wait_for_completion": True, "timeout": 60.0},
            {"message_type": "collect", "wait_for_completion": True, "timeout": 60.0},
        ]
    }
    async with open_engine(workflows=[COLLECT_AND_CLEANUP], store=SQLiteStore(path)) as engine:
        (info,) = engine.tasks()
        assert info.id == task_id
        assert info.step is not None
        assert info.step.waiting_for == ("w",)
        async with engine.open_listener(subscriber_id="w") as listener:
            owed = await listener.receive()
            assert (owed.message_type, owed.task) == ("collect", task_id)
            listener.done(owed)
            engine.unsubscribe("w", "pre_collect")
            engine.unsubscribe("w", "collect")
            result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert result.steps[1].answered == {"w": "done"}


async def test_a_write_while_stopping_gets_503_and_changes_nothing(tmp_path: Path) -> None:
    from .web_support import running_server

    async with running_server(store=SQLiteStore(tmp_path / "state.sqlite3")) as server:
        server.engine.freeze()
        answer = await server.http.put("/config/app", json={"a": 1})
        assert answer.status_code == 503
        assert answer.json()["error"] == "the engine is stopping: config 'app' not changed"
        assert (await server.http.get("/config/app")).status_code == 404
