"""The network API against a real server on 127.0.0.1 with real HTTP and WebSocket clients."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio
import trio_websocket

from engine import LISTENER_DISCONNECTED, Action, Event, ListenerDropped, Step, Workflow
from machines import COLLECT_AND_CLEANUP, PHASES

from .web_support import (
    Server,
    answer_actions,
    events_until,
    quick_workflow,
    receive_json,
    running_server,
)

STEPS = [step.name for step in COLLECT_AND_CLEANUP.steps]


def task_messages(messages: list[dict[str, Any]], task_id: str) -> list[tuple[str, str]]:
    """The (kind, message_type) of the messages about one task, in order."""
    out = []
    for message in messages:
        data = message["data"]
        if task_id in (data.get("task"), data.get("task_id")):
            out.append((message["kind"], message["message_type"]))
    return out


# ---------------------------------------------------------------- a whole run


async def test_collect_and_cleanup_driven_by_external_subscribers() -> None:
    async with running_server() as server, trio.open_nursery() as nursery:
        owners = {
            "resoto.worker-collector": PHASES["collect"] + PHASES["cleanup"],
            "resoto.cleanup-planner": PHASES["cleanup_plan"],
            "resoto.metrics": PHASES["generate_metrics"],
        }
        for subscriber_id, steps in owners.items():
            await server.subscribe(subscriber_id, *steps, timeout=10800)
        seen: dict[str, list[dict[str, Any]]] = {}
        for subscriber_id in owners:
            seen[subscriber_id] = []
            ws = await nursery.start(_open_ws, server, f"/subscriber/{subscriber_id}/handle")
            nursery.start_soon(
                lambda ws=ws, sid=subscriber_id: answer_actions(ws, seen=seen[sid], progress=True)
            )
        async with server.websocket("/events") as events:
            started = await server.http.post("/workflow/collect_and_cleanup/run")
            assert started.status_code == 202
            task_id = started.json()["task_id"]
            assert started.json()["decision"] == "started"
            messages = await events_until(events, "task_end")
        nursery.cancel_scope.cancel()

    end = messages[-1]
    assert end["data"]["task_id"] == task_id
    assert end["data"]["outcome"] == "done"
    kinds = task_messages(messages, task_id)
    assert kinds[0] == ("event", "task_started")
    actions = [mt for kind, mt in kinds if kind == "action"]
    assert actions == STEPS
    done = [mt for kind, mt in kinds if kind == "action_done"]
    assert done == STEPS
    # every answer seen on the bus is stamped with the connection's subscriber id and a time
    answers = [m for m in messages if m["kind"] == "action_done"]
    for answer in answers:
        assert answer["data"]["subscriber_id"] in owners
        assert answer["data"]["received_at"].endswith("Z")
    # each subscriber got exactly the actions of its steps, in order
    for subscriber_id, steps in owners.items():
        got = [m["message_type"] for m in seen[subscriber_id] if m["kind"] == "action"]
        assert got == [s for s in STEPS if s in steps]
        action = next(m for m in seen[subscriber_id] if m["kind"] == "action")
        assert action["data"]["task"] == task_id
        assert action["data"]["workflow"] == "collect_and_cleanup"
    progress = [m for m in messages if m["message_type"] == "progress"]
    assert progress[-1]["data"]["message"]["kind"] == "tree"


async def _open_ws(
    server: Server,
    path: str,
    *,
    task_status: trio.TaskStatus[trio_websocket.WebSocketConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with server.websocket(path) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


async def test_finished_task_is_reported_with_its_steps() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        await server.subscribe("worker", "a", "b")
        async with server.websocket("/subscriber/worker/handle") as ws, trio.open_nursery() as n:
            n.start_soon(answer_actions, ws)
            task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
            await server.engine.wait_task(task_id)
            n.cancel_scope.cancel()
        task = (await server.http.get(f"/task/{task_id}")).json()
    assert task["running"] is False
    assert task["outcome"] == "done"
    assert [s["name"] for s in task["steps"]] == ["a", "b"]
    assert task["steps"][0]["answered"] == {"worker": "done"}


# ---------------------------------------------------------------- reconnects and deadlines


async def test_reconnect_mid_step_gets_the_pending_action_again() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        await server.subscribe("worker", "a", "b")
        async with server.websocket("/subscriber/worker/handle") as ws:
            task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
            first = await receive_json(ws)
            assert (first["kind"], first["data"]["step"]) == ("action", "a")
        # gone without answering; the step still waits for it
        running = (await server.http.get("/tasks")).json()
        assert running[0]["step"]["waiting_for"] == ["worker"]
        async with server.websocket("/subscriber/worker/handle") as ws, trio.open_nursery() as n:
            again = await receive_json(ws)
            assert again == first
            await ws.send_message(
                json.dumps({"kind": "action_done", "message_type": "a", "data": again["data"]})
            )
            n.start_soon(answer_actions, ws)
            result = await server.engine.wait_task(task_id)
            n.cancel_scope.cancel()
    assert result.outcome.value == "done"
    assert result.steps[0].answered == {"worker": "done"}
    assert not result.errors


async def test_subscriber_that_never_answers_meets_the_deadline() -> None:
    workflow = quick_workflow(steps=["a"], timeout=0.2)
    async with running_server(workflows=[workflow]) as server:
        await server.subscribe("mute", "a", timeout=0.2)
        async with server.websocket("/subscriber/mute/handle") as ws:
            start = time.monotonic()
            task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
            action = await receive_json(ws)
            abort = await receive_json(ws)
            result = await server.engine.wait_task(task_id)
    assert time.monotonic() - start < 2
    assert action["kind"] == "action"
    assert (abort["kind"], abort["data"]["task"], abort["data"]["step"]) == (
        "action_abort",
        task_id,
        "a",
    )
    assert result.steps[0].timed_out
    assert result.errors  # the missed deadline is recorded


async def test_subscriber_that_disconnects_for_good_does_not_hold_the_task() -> None:
    workflow = quick_workflow(steps=["a", "b"], timeout=0.2)
    async with running_server(workflows=[workflow]) as server:
        await server.subscribe("gone", "a", "b", timeout=0.2)
        async with server.websocket("/events") as events:
            async with server.websocket("/subscriber/gone/handle") as ws:
                task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
                await receive_json(ws)
            messages = await events_until(events, "task_end")
    disconnected = [m for m in messages if m["message_type"] == LISTENER_DISCONNECTED]
    assert disconnected[0]["data"] == {"subscriber_id": "gone", "channels": ["a", "b"]}
    assert messages[-1]["data"]["task_id"] == task_id
    result = server.engine.task(task_id)
    assert [s.timed_out for s in result.steps] == [True, True]  # type: ignore[union-attr]


async def test_second_connection_of_a_subscriber_gets_429() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        await server.subscribe("worker", "a")
        async with server.websocket("/subscriber/worker/handle"):
            rejected = await server.rejection("/subscriber/worker/handle")
            assert rejected.status_code == 429
            assert json.loads(rejected.body or b"") == {
                "error": "subscriber 'worker' is already connected",
                "problems": [],
            }
        # once the first is gone, the subscriber may connect again
        async with server.websocket("/subscriber/worker/handle"):
            pass


@pytest.mark.parametrize("setup", ["unknown", "no subscriptions"])
async def test_handle_of_an_unusable_subscriber_gets_404(setup: str) -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        if setup == "no subscriptions":
            assert (await server.http.put("/subscriber/idle", json=[])).status_code == 200
        rejected = await server.rejection("/subscriber/idle/handle")
        assert rejected.status_code == 404
        assert (await server.rejection("/no/such/socket")).status_code == 404


async def test_answers_for_other_tasks_or_subscribers_are_ignored() -> None:
    async with running_server(workflows=[quick_workflow(steps=["a"])]) as server:
        await server.subscribe("worker", "a")
        await server.subscribe("other", "a")
        async with server.websocket("/subscriber/worker/handle") as ws:
            task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
            action = await receive_json(ws)
            for data in (
                {**action["data"], "task": "no-such-task"},
                {**action["data"], "step": "b"},
                {**action["data"], "subscriber_id": "other"},  # overwritten: it is "worker"
            ):
                await ws.send_message(
                    json.dumps({"kind": "action_done", "message_type": "a", "data": data})
                )
            await trio.sleep(0.05)
            step = (await server.http.get(f"/task/{task_id}")).json()["step"]
            # the third answer counted for "worker" (its connection), not for "other"
            assert step["answered"] == {"worker": "done"}
            assert step["waiting_for"] == ["other"]
            await ws.send_message(
                json.dumps({"kind": "action_done", "message_type": "a", "data": action["data"]})
            )
            # a duplicate answer changes nothing and the connection stays open
            await ws.send_message(json.dumps({"kind": "event", "message_type": "hello"}))
            await trio.sleep(0.05)
            step = (await server.http.get(f"/task/{task_id}")).json()["step"]
            assert step["answered"] == {"worker": "done"}
            assert not ws.closed


async def test_stopping_a_task_sends_action_abort_to_owed_listeners() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        await server.subscribe("worker", "a")
        async with server.websocket("/subscriber/worker/handle") as ws:
            task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
            await receive_json(ws)
            running = (await server.http.get("/tasks")).json()
            assert [t["id"] for t in running] == [task_id]
            assert running[0]["step"]["name"] == "a"
            assert running[0]["step"]["deadline"] is not None
            stopped = await server.http.delete(f"/task/{task_id}")
            assert stopped.json() == {"task_id": task_id, "stopped": True}
            abort = await receive_json(ws)
        assert abort["kind"] == "action_abort"
        result = await server.engine.wait_task(task_id)
        assert result.outcome.value == "stopped"
        again = await server.http.delete(f"/task/{task_id}")
        assert again.json()["stopped"] is False


# ---------------------------------------------------------------- events listeners


async def test_events_listener_publishes_events_and_filters_by_type() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        async with (
            server.websocket("/events?show=task_started,task_end") as shown,
            server.websocket("/events") as publisher,
        ):
            # the start event of a workflow, sent by a client, starts it
            await publisher.send_message(
                json.dumps({"kind": "event", "message_type": "start_quick_workflow", "data": {}})
            )
            started = await receive_json(shown)
            assert started["message_type"] == "task_started"
            ended = await receive_json(shown)  # nobody subscribed: the steps end at once
    assert ended["message_type"] == "task_end"
    assert ended["data"]["task_id"] == started["data"]["task_id"]
    assert ended["data"]["outcome"] == "done"


async def test_200_events_listeners_all_receive_every_event_of_a_run() -> None:
    async with running_server() as server:
        engine = server.engine

        async def worker(message: Any) -> None:
            pass

        for step in STEPS:
            engine.subscribe("worker", step)
        await engine.start_listener(worker, subscriber_id="worker")
        received: list[list[dict[str, Any]]] = [[] for _ in range(200)]
        # every type a run publishes (leaving out the 200 listeners' own connect events)
        show = ",".join(["task_started", "progress", "task_end", "error", *STEPS])
        async with trio.open_nursery() as nursery:
            ready = trio.Semaphore(0)

            async def listen(index: int) -> None:
                async with server.websocket(f"/events?show={show}") as ws:
                    ready.release()
                    received[index] = await events_until(ws, "task_end", timeout=30)

            for index in range(200):
                nursery.start_soon(listen, index)
            for _ in range(200):
                await ready.acquire()
            async with engine.open_listener(message_types=show.split(",")) as reference:
                result = await engine.run_workflow("collect_and_cleanup")
                expected = []
                while True:
                    try:
                        message = reference.receive_nowait()
                    except trio.WouldBlock:
                        break
                    expected.append(message.to_json())
    want = task_messages(expected, result.id)
    assert len(want) > 3 * len(STEPS)
    for messages in received:
        assert task_messages(messages, result.id) == want


async def test_listener_that_stops_reading_is_dropped_without_slowing_the_run() -> None:
    async with running_server(workflows=[quick_workflow()], max_pending_bytes=64 * 1024) as server:
        engine = server.engine
        stalled = trio.socket.socket()
        stalled.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await stalled.connect(server.address)
        await stalled.send(
            b"GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with trio.fail_after(5):
            while len(engine.listeners) < 1:
                await trio.sleep(0.01)
        # it reads nothing from here on; run a workflow while flooding the bus
        await server.subscribe("worker", "a", "b")
        async with server.websocket("/subscriber/worker/handle") as ws, trio.open_nursery() as n:
            n.start_soon(answer_actions, ws)
            start = time.monotonic()
            task_id = engine.start_workflow("quick").task_id
            assert task_id is not None
            pad = "x" * 8192
            with trio.fail_after(10):
                while not engine.dropped_listeners:
                    engine.publish(Event("noise", {"pad": pad}))
                    await trio.sleep(0)
            result = await engine.wait_task(task_id)
            elapsed = time.monotonic() - start
            n.cancel_scope.cancel()
        assert engine.dropped_listeners == 1
        assert result.outcome.value == "done"
        assert result.steps[0].answered == result.steps[1].answered == {"worker": "done"}
        assert elapsed < 2
        # the stalled connection is cut off once its grace period is over
        with trio.fail_after(5):
            while await stalled.recv(1 << 16):
                pass
        stalled.close()
        metrics = (await server.http.get("/metrics")).text
    assert "phasebus_listeners_dropped_total 1.0" in metrics


async def test_engine_listener_drop_is_announced() -> None:
    async with running_server(workflows=[quick_workflow()], listener_buffer=2) as server:
        engine = server.engine
        async with engine.open_listener(message_types=[LISTENER_DISCONNECTED]) as watcher:
            slow = engine.connect(message_types=["noise"], buffer=1)
            engine.publish(Event("noise"))
            engine.publish(Event("noise"))
            disconnected = await watcher.receive()
            assert disconnected.data["subscriber_id"] == slow.id  # type: ignore[union-attr]
            await slow.receive()
            with pytest.raises(ListenerDropped):
                await slow.receive()


# ---------------------------------------------------------------- subscribers over HTTP


async def test_subscriber_endpoints() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        http = server.http
        added = await http.post(
            "/subscriber/resoto.worker-collector/collect",
            params={"timeout": "10800", "wait_for_completion": "True"},
        )
        assert added.status_code == 200
        assert added.json() == {
            "id": "resoto.worker-collector",
            "subscriptions": {
                "collect": {
                    "message_type": "collect",
                    "wait_for_completion": True,
                    "timeout": 10800,
                }
            },
        }
        lax = await http.post(
            "/subscriber/resoto.worker-collector/post_collect",
            params={"wait_for_completion": "FALSE"},
        )
        assert lax.json()["subscriptions"]["post_collect"] == {
            "message_type": "post_collect",
            "wait_for_completion": False,
            "timeout": 60,
        }
        assert [s["id"] for s in (await http.get("/subscribers")).json()] == [
            "resoto.worker-collector"
        ]
        assert (await http.get("/subscribers/for/post_collect")).json() == [lax.json()]
        assert (await http.get("/subscribers/for/cleanup")).json() == []
        removed = await http.delete("/subscriber/resoto.worker-collector/post_collect")
        assert list(removed.json()["subscriptions"]) == ["collect"]
        replaced = await http.put(
            "/subscriber/resoto.worker-collector",
            json=[{"message_type": "a", "timeout": 5}, {"message_type": "b"}],
        )
        assert replaced.json()["subscriptions"] == {
            "a": {"message_type": "a", "wait_for_completion": True, "timeout": 5},
            "b": {"message_type": "b", "wait_for_completion": True, "timeout": 60.0},
        }
        got = await http.get("/subscriber/resoto.worker-collector")
        assert got.json() == replaced.json()
        assert (await http.delete("/subscriber/resoto.worker-collector")).status_code == 204
        assert (await http.get("/subscriber/resoto.worker-collector")).status_code == 404
        assert (await http.delete("/subscriber/resoto.worker-collector")).status_code == 404


# ---------------------------------------------------------------- configs


async def test_configs_with_revisions_and_events() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        http = server.http
        async with server.websocket("/events?show=config-updated,config-deleted") as events:
            put = await http.put("/config/my.app", json={"a": 1, "b": {"c": 2}})
            assert put.status_code == 200
            revision = put.headers["Resoto-Config-Revision"]
            assert put.json() == {"a": 1, "b": {"c": 2}}
            updated = await receive_json(events)
            assert updated["data"] == {"id": "my.app", "revision": revision}
            got = await http.get("/config/my.app")
            assert got.json() == {"a": 1, "b": {"c": 2}}
            assert got.headers["Resoto-Config-Revision"] == revision
            patched = await http.patch(
                "/config/my.app", json={"b": {"d": 3}, "a": None}, headers={"If-Match": revision}
            )
            assert patched.status_code == 200
            assert patched.json() == {"b": {"c": 2, "d": 3}}
            newer = patched.headers["Resoto-Config-Revision"]
            assert newer != revision
            await receive_json(events)
            stale = await http.put("/config/my.app", json={}, headers={"If-Match": revision})
            assert stale.status_code == 409
            assert stale.json()["revision"] == newer
            assert (await http.get("/config/my.app")).json() == {"b": {"c": 2, "d": 3}}
            assert (await http.get("/configs")).json() == ["my.app", "phasebus.core"] or (
                await http.get("/configs")
            ).json() == ["my.app"]
            stale_delete = await http.delete("/config/my.app", headers={"If-Match": revision})
            assert stale_delete.status_code == 409
            deleted = await http.delete("/config/my.app", headers={"If-Match": f'"{newer}"'})
            assert deleted.status_code == 204
            assert (await receive_json(events))["data"] == {"id": "my.app"}
            assert (await http.get("/config/my.app")).status_code == 404
            assert (await http.delete("/config/my.app")).status_code == 404


async def test_core_config_reschedules_at_once() -> None:
    workflow = Workflow(id="hourly", steps=[Step("a")], triggers=[])
    async with running_server(workflows=[workflow, COLLECT_AND_CLEANUP]) as server:
        http = server.http

        async def listed(workflow_id: str) -> dict[str, Any]:
            rows = (await http.get("/workflows")).json()
            return next(row for row in rows if row["id"] == workflow_id)

        before = await listed("collect_and_cleanup")
        assert before["schedules"] == [{"cron": "0 * * * *", "timezone": "UTC"}]
        assert before["next_run"] is not None
        assert (await listed("hourly"))["next_run"] is None
        put = await http.put(
            "/config/phasebus.core",
            json={
                "workflows": {
                    "collect_and_cleanup": {"schedule": None},
                    "hourly": {"schedule": "30 2 * * *", "timezone": "Europe/Berlin"},
                }
            },
        )
        assert put.status_code == 200, put.text
        assert (await listed("collect_and_cleanup"))["next_run"] is None
        hourly = await listed("hourly")
        assert hourly["schedules"] == [{"cron": "30 2 * * *", "timezone": "Europe/Berlin"}]
        assert hourly["next_run"] is not None
        bad = await http.patch(
            "/config/phasebus.core",
            json={"workflows": {"hourly": {"schedule": "61 * * * *"}, "nope": {}}},
        )
        assert bad.status_code == 400
        problems = bad.json()["problems"]
        assert any(p.startswith("workflows.hourly.schedule: ") for p in problems), problems
        assert "workflows.nope: unknown workflow 'nope'" in problems


# ---------------------------------------------------------------- workflows, health, metrics


async def test_workflow_endpoints() -> None:
    async with running_server() as server:
        http = server.http
        rows = (await http.get("/workflows")).json()
        assert [row["id"] for row in rows] == ["collect_and_cleanup"]
        assert rows[0]["steps"] == STEPS
        assert rows[0]["triggers"] == [
            {"cron": "0 * * * *", "timezone": "UTC", **_extra_trigger_fields(rows[0])}
        ]
        declaration = (await http.get("/workflow/collect_and_cleanup")).json()
        assert Workflow.from_dict(declaration) == COLLECT_AND_CLEANUP
        assert (await http.get("/workflow/nope")).status_code == 404
        assert (await http.post("/workflow/nope/run")).status_code == 404
        assert (await http.get("/task/nope")).status_code == 404
        assert (await http.delete("/task/nope")).status_code == 404
        await server.subscribe("worker", "pre_collect")  # so that the run waits
        first = await http.post("/workflow/collect_and_cleanup/run")
        queued = await http.post("/workflow/collect_and_cleanup/run")
        skipped = await http.post("/workflow/collect_and_cleanup/run")
        assert (first.status_code, first.json()["decision"]) == (202, "started")
        assert (queued.status_code, queued.json()["decision"]) == (202, "queued")
        assert (skipped.status_code, skipped.json()["decision"]) == (200, "skipped")
        assert skipped.json()["task_id"] is None
        # the running task, then the queued one (no step yet); each shown, and stopped
        listed = (await http.get("/tasks", params={"limit": "0"})).json()
        queued_id = queued.json()["task_id"]
        assert [(t["id"], t["running"], t["state"]) for t in listed] == [
            (first.json()["task_id"], True, "pre_collect"),
            (queued_id, True, "queued"),
        ]
        assert listed[1]["step"] is None
        shown = await http.get(f"/task/{queued_id}")
        assert (shown.status_code, shown.json()["state"]) == (200, "queued")
        stopped = await http.delete(f"/task/{queued_id}")
        assert (stopped.status_code, stopped.json()["stopped"]) == (200, True)
        listed = (await http.get("/tasks", params={"limit": "0"})).json()
        assert [t["id"] for t in listed if t["running"]] == [first.json()["task_id"]]


def _extra_trigger_fields(row: dict[str, Any]) -> dict[str, Any]:
    trigger = row["triggers"][0]
    return {k: v for k, v in trigger.items() if k not in ("cron", "timezone")}


async def test_health_and_metrics() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        http = server.http
        ping = await http.get("/system/ping")
        assert (ping.status_code, ping.text) == (200, "pong")
        ready = await http.get("/system/ready")
        assert (ready.status_code, ready.text) == (200, "ok")
        await server.subscribe("worker", "a", "b")
        async with server.websocket("/subscriber/worker/handle") as ws, trio.open_nursery() as n:
            n.start_soon(answer_actions, ws)
            await server.engine.run_workflow("quick")
            metrics = await http.get("/metrics")
            n.cancel_scope.cancel()
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'phasebus_tasks_started_total{workflow="quick"} 1.0' in text
    assert 'phasebus_tasks_ended_total{outcome="done",workflow="quick"} 1.0' in text
    assert 'phasebus_step_duration_seconds_count{step="a",workflow="quick"} 1.0' in text
    assert 'phasebus_answers_total{kind="action_done"} 2.0' in text
    assert "phasebus_listeners 1.0" in text
    assert "phasebus_listeners_dropped_total 0.0" in text


async def test_in_process_and_websocket_listeners_share_the_bus() -> None:
    async with running_server(workflows=[quick_workflow(steps=["a"])]) as server:
        engine = server.engine
        await server.subscribe("remote", "a")
        async with (
            server.websocket("/subscriber/remote/handle") as ws,
            engine.open_listener(message_types=["a"]) as local,
        ):
            task_id = engine.start_workflow("quick").task_id
            action = await receive_json(ws)
            assert action["data"]["task"] == task_id
            assert isinstance(await local.receive(), Action)
            await ws.send_message(
                json.dumps(
                    {
                        "kind": "action_error",
                        "message_type": "a",
                        "data": {**action["data"], "extra": [1, 2]},
                    }
                )
            )
            answer = await local.receive()
            assert answer.kind.value == "action_error"
            assert answer.error == "n/a"  # type: ignore[union-attr]
            assert answer.extra["extra"] == [1, 2]  # type: ignore[union-attr]
            result = await engine.wait_task(task_id or "")
    assert result.steps[0].answered == {"remote": "error"}
