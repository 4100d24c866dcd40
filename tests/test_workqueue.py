"""Resoto's worker task queue on /work/queue, driven by a WebSocket client speaking its protocol."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from .web_support import Server, receive_json, running_server

TAG = {"name": "tag", "info": "i", "description": "d", "filter": {"cloud": ["aws"]}}


@asynccontextmanager
async def worker(
    server: Server, offers: list[dict[str, Any]]
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A worker as resotolib's CoreTasks is: connect, send the offered tasks, then serve."""
    async with server.websocket("/work/queue") as ws:
        await ws.send_message(json.dumps(offers))
        await wait_for_workers(server, count=None)
        yield ws


async def wait_for_workers(server: Server, count: int | None) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        while True:
            workers = (await server.http.get("/work/workers")).json()
            if (count is None and workers) or len(workers) == count:
                return list(workers)
            await trio.sleep(0.01)


async def submit(
    server: Server, name: str, body: dict[str, Any], into: list[httpx.Response]
) -> None:
    into.append(await server.http.post(f"/work/{name}", json=body, timeout=10))


async def test_a_task_goes_to_a_worker_that_offers_it_and_its_result_comes_back() -> None:
    async with running_server() as server, worker(server, [TAG]) as ws:
        workers = await wait_for_workers(server, 1)
        assert workers[0]["offers"] == [{"name": "tag", "filter": {"cloud": ["aws"]}}]
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                submit,
                server,
                "tag",
                {"data": {"node": {"id": "n1"}}, "attrs": {"cloud": "aws"}},
                answers,
            )
            task = await receive_json(ws)
            assert task["task_name"] == "tag"
            assert task["attrs"] == {"cloud": "aws"}
            assert task["data"] == {"node": {"id": "n1"}}
            listed = (await server.http.get("/work/list")).json()
            assert [(e["task"]["task_id"], e["worker"]) for e in listed] == [
                (task["task_id"], workers[0]["id"])
            ]
            await ws.send_message(
                json.dumps({"task_id": task["task_id"], "result": "done", "data": {"ok": 1}})
            )
        assert answers[0].status_code == 200
        assert answers[0].json() == {"task_name": "tag", "result": {"ok": 1}}
        assert (await server.http.get("/work/list")).json() == []


async def test_attributes_pick_the_worker_and_errors_come_back_as_502() -> None:
    gcp = {**TAG, "filter": {"cloud": ["gcp"]}}
    async with running_server() as server, worker(server, [TAG]) as aws_ws:
        async with worker(server, [gcp]) as gcp_ws:
            await wait_for_workers(server, 2)
            answers: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, server, "tag", {"attrs": {"cloud": "gcp"}}, answers)
                task = await receive_json(gcp_ws)
                await gcp_ws.send_message(
                    json.dumps({"task_id": task["task_id"], "result": "error", "error": "denied"})
                )
            assert answers[0].status_code == 502
            assert answers[0].json()["error"] == "denied"
            # nothing reached the aws worker
            with trio.move_on_after(0.1):
                await aws_ws.get_message()
                pytest.fail("the aws worker got a gcp task")


async def test_the_work_of_a_worker_that_leaves_goes_to_another() -> None:
    async with running_server() as server:
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            async with worker(server, [TAG]) as first:
                nursery.start_soon(submit, server, "tag", {"attrs": {"cloud": "aws"}}, answers)
                task = await receive_json(first)
            # the first worker left without answering; the task waits for the next one
            async with worker(server, [TAG]) as second:
                again = await receive_json(second)
                assert again["task_id"] == task["task_id"]
                await second.send_message(
                    json.dumps({"task_id": again["task_id"], "result": "done", "data": 7})
                )
        assert answers[0].json()["result"] == 7


async def test_a_task_that_keeps_losing_its_workers_fails_and_says_so() -> None:
    async with running_server() as server:
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, server, "tag", {"attrs": {"cloud": "aws"}}, answers)
            for _ in range(2):
                async with worker(server, [TAG]) as ws:
                    await receive_json(ws)
        assert answers[0].status_code == 502
        assert "disconnected before it answered task 'tag'" in answers[0].json()["error"]


async def test_a_task_nobody_takes_times_out_with_504() -> None:
    async with running_server() as server:
        answer = await server.http.post("/work/tag", json={"timeout": 0.2})
        assert answer.status_code == 504
        assert answer.json()["error"] == "task 'tag' timed out after 0.2s: no worker offers it"
        bad = await server.http.post("/work/tag", json={"timeout": -1, "attrs": [], "x": 1})
        assert bad.status_code == 400
        assert bad.json()["problems"] == [
            "x: unknown field",
            "attrs: must be an object of strings, got []",
            "timeout: must be a number of seconds from 0 to 86400, got -1",
        ]


async def test_a_worker_that_does_not_introduce_itself_properly_is_closed() -> None:
    async with running_server() as server, server.websocket("/work/queue") as ws:
        await ws.send_message(json.dumps({"name": "tag"}))
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1008
        assert closed.value.reason.reason.startswith("invalid task list: expected a non-empty list")
        assert (await server.http.get("/work/workers")).json() == []


async def test_a_config_that_needs_approval_is_stored_only_when_a_worker_approves() -> None:
    offer = {"name": "validate_config", "filter": {"config_id": ["acme"]}}
    async with running_server() as server, worker(server, [offer]) as ws:
        http = server.http
        setting = await http.put("/config/acme/validation", json={"external_validation": True})
        assert setting.status_code == 200

        async def approve(result: dict[str, Any]) -> dict[str, Any]:
            task = await receive_json(ws)
            await ws.send_message(json.dumps({"task_id": task["task_id"], **result}))
            return dict(task)

        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit_config, server, {"a": 1}, answers)
            task = await approve({"result": "error", "error": "a must be 2"})
        assert task["attrs"] == {"config_id": "acme"}
        assert task["data"] == {
            "task": "validate_config",
            "config": {"a": 1},
            "config_id": "acme.x",
        }
        assert answers[0].status_code == 400
        assert answers[0].json()["problems"] == ["a must be 2"]
        assert (await http.get("/config/acme.x")).status_code == 404
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit_config, server, {"a": 2}, answers)
            await approve({"result": "done"})
        assert answers[1].status_code == 200
        assert (await http.get("/config/acme.x")).json() == {"a": 2}


async def submit_config(server: Server, body: dict[str, Any], into: list[httpx.Response]) -> None:
    into.append(await server.http.put("/config/acme.x", json=body, timeout=10))
