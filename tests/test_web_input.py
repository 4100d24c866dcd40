"""Bad input over HTTP and WebSocket: each case gets a specific answer; the server goes on."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Kind
from machines import COLLECT_AND_CLEANUP

from .web_support import Server, answer_actions, quick_workflow, receive_json, running_server

STEPS = [step.name for step in COLLECT_AND_CLEANUP.steps]

# ---------------------------------------------------------------- HTTP

DEEP = "[" * 100 + "]" * 100


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "problem"),
    [
        ("PUT", "/config/x", "{not json", 400, "body: invalid JSON: "),
        ("PUT", "/config/x", "", 400, "body: empty, expected JSON"),
        ("PUT", "/config/x", "[1, 2]", 400, "body: must be a JSON object, got [1, 2]"),
        ("PUT", "/config/x", '{"a": NaN}', 400, "body: invalid JSON: NaN is not a JSON number"),
        ("PUT", "/config/x", '{"a": ' + DEEP + "}", 400, "body: nested deeper than 64 levels"),
        ("PUT", "/config/bad id!", "{}", 400, "id: must be 1-200 letters"),
        ("PATCH", "/config/x", '"text"', 400, "body: must be a JSON object, got 'text'"),
        (
            "PUT",
            "/config/phasebus.core",
            '{"workflows": {"quick": {"schedule": "61 * * * *"}}}',
            400,
            "workflows.quick.schedule: '61 * * * *' is not a valid cron expression",
        ),
        (
            "PUT",
            "/config/phasebus.core",
            '{"workflows": {"quick": {"schedule": "0 * * * *", "timezone": "Mars/Base"}}}',
            400,
            "workflows.quick.timezone: ",
        ),
        (
            "PUT",
            "/config/phasebus.core",
            '{"workflows": {"quick": {"cron": "0 * * * *"}}}',
            400,
            "workflows.quick.cron: unknown field",
        ),
        (
            "PUT",
            "/subscriber/w",
            '{"message_type": "a"}',
            400,
            "body: must be a list of subscriptions",
        ),
        (
            "PUT",
            "/subscriber/w",
            '[{"message_type": "a", "foo": 1}]',
            400,
            "[0].foo: unknown field",
        ),
        (
            "PUT",
            "/subscriber/w",
            '[{"message_type": "a"}, {"message_type": "b", "timeout": "soon"}]',
            400,
            "[1].timeout: must be a number, got 'soon'",
        ),
        (
            "PUT",
            "/subscriber/w",
            '[{"message_type": "a", "wait_for_completion": "false"}]',
            400,
            "[0].wait_for_completion: ",
        ),
        ("PUT", "/subscriber/w", '[{"timeout": 5}]', 400, "[0].message_type: "),
        ("PUT", "/subscriber/w", '[{"message_type": "a", "timeout": -1}]', 400, "[0].timeout: "),
        ("POST", "/subscriber/w/a?timeout=soon", "", 400, "timeout: must be a number of seconds"),
        ("POST", "/subscriber/w/a?timeout=0", "", 400, "timeout: must be > 0, got '0'"),
        ("POST", "/subscriber/w/a?timeout=inf", "", 400, "timeout: must be > 0, got 'inf'"),
        (
            "POST",
            "/subscriber/a%00b/a",
            "",
            400,
            "subscriber_id: a subscriber id must be printable",
        ),
        ("POST", "/subscriber/a%0D%0Ab/a", "", 400, "subscriber_id: a subscriber id must be print"),
        ("POST", "/subscriber/../a", "", 404, None),
        ("POST", "/subscriber/%2E%2E/a", "", 400, "subscriber_id: a subscriber id must not"),
        ("POST", "/subscriber/" + "x" * 201 + "/a", "", 400, "subscriber_id: a subscriber id must"),
        ("POST", "/subscriber/w/a%09b", "", 400, "message_type: a message type must be printable"),
        ("PUT", "/subscriber/a%07", "[]", 400, "subscriber_id: a subscriber id must be printable"),
        (
            "PUT",
            "/subscriber/w",
            '[{"message_type": "x\\u0000"}]',
            400,
            "[0].message_type: a message type must be printable",
        ),
        ("GET", "/subscriber/nobody", "", 404, None),
        ("DELETE", "/subscriber/nobody", "", 404, None),
        ("DELETE", "/subscriber/nobody/a", "", 404, None),
        ("GET", "/config/none", "", 404, None),
        ("DELETE", "/config/none", "", 404, None),
        ("GET", "/workflow/none", "", 404, None),
        ("POST", "/workflow/none/run", "", 404, None),
        ("GET", "/task/none", "", 404, None),
        ("DELETE", "/task/none", "", 404, None),
        ("GET", "/no/such/path", "", 404, None),
        ("POST", "/configs", "", 405, None),
    ],
)
async def test_bad_http_input(
    method: str, path: str, body: str, status: int, problem: str | None
) -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        answer = await server.http.request(
            method, path, content=body.encode(), headers={"content-type": "application/json"}
        )
        assert answer.status_code == status, answer.text
        payload = answer.json()
        assert payload["error"]
        if problem is not None:
            assert any(p.startswith(problem) for p in payload["problems"]), payload
        # the server goes on
        assert (await server.http.get("/system/ping")).text == "pong"


async def test_oversized_bodies_get_413() -> None:
    async with running_server(max_body_size=1000) as server:
        big = json.dumps({"pad": "x" * 2000}).encode()
        declared = await server.http.put("/config/big", content=big)
        assert declared.status_code == 413
        assert declared.json()["problems"] == ["body: more than 1000 bytes"]

        async def chunks() -> Any:
            for _ in range(4):
                yield b" " * 400
            yield b"{}"

        streamed = await server.http.put("/config/big", content=chunks())
        assert streamed.status_code == 413
        assert (await server.http.get("/config/big")).status_code == 404
        small = await server.http.put("/config/small", json={"ok": True})
        assert small.status_code == 200


async def test_if_match_on_a_missing_config_is_a_conflict() -> None:
    async with running_server() as server:
        answer = await server.http.put("/config/new", json={}, headers={"If-Match": "r1"})
        assert answer.status_code == 409
        assert answer.json() == {
            "error": "config 'new' does not exist (expected revision 'r1')",
            "problems": [],
            "revision": None,
        }


# ---------------------------------------------------------------- WebSocket


def _frame(kind: str, message_type: str = "a", **data: Any) -> str:
    return json.dumps({"kind": kind, "message_type": message_type, "data": data})


BAD_FRAMES: list[tuple[str, str | bytes, int, str]] = [
    ("not JSON", "this is not json", 1007, "not JSON: invalid JSON: Expecting value"),
    ("not UTF-8", b"\xff\xfe\xfd", 1007, "frame is not valid UTF-8"),
    ("empty", "", 1007, "not JSON: "),
    ("NaN", '{"kind": "event", "message_type": "x", "data": {"v": NaN}}', 1007, "not JSON: "),
    ("too deep", "[" * 200 + "]" * 200, 1007, "not JSON: nested deeper than 64 levels"),
    ("not an object", "[1, 2, 3]", 1008, "a message must be a JSON object, got [1, 2, 3]"),
    (
        "unknown kind",
        _frame("shout"),
        1008,
        "invalid message: kind: unknown kind 'shout', expected one of 'event'",
    ),
    (
        "missing kind",
        '{"message_type": "a", "data": {}}',
        1008,
        "invalid message: kind: required field missing",
    ),
    (
        "missing message type",
        '{"kind": "action_done", "data": {"task": "t", "step": "a"}}',
        1008,
        "invalid message: message_type: required field missing",
    ),
    (
        "missing task",
        _frame("action_done", step="a"),
        1008,
        "invalid message: data.task: required field missing",
    ),
    (
        "wrong type",
        _frame("action_done", task=7, step="a"),
        1008,
        "invalid message: data.task: must be a string, got 7",
    ),
    (
        "data not an object",
        '{"kind": "event", "message_type": "x", "data": [1]}',
        1008,
        "invalid message: data: must be a JSON object, got [1]",
    ),
    (
        "bad progress",
        _frame(
            "action_progress",
            task="t",
            step="a",
            progress={"kind": "progress", "name": "n", "current": 3, "total": 2},
        ),
        1008,
        "invalid message: data.progress",
    ),
    ("action", _frame("action", task="t", step="a"), 1008, "clients may not send action messages"),
    (
        "action_abort",
        _frame("action_abort", task="t", step="a"),
        1008,
        "clients may not send action_abort messages",
    ),
    (
        "oversized",
        json.dumps({"pad": "x" * 70_000}),
        1009,
        "message of 70011 bytes over the limit of 65536 bytes",
    ),
]


async def _close_of(ws: trio_websocket.WebSocketConnection) -> trio_websocket.CloseReason:
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [pytest.param(frame, code, reason, id=name) for name, frame, code, reason in BAD_FRAMES],
)
async def test_bad_frame_closes_only_that_connection(
    frame: str | bytes, code: int, reason: str
) -> None:
    async with running_server(workflows=[quick_workflow(steps=["a"])]) as server:
        await server.subscribe("worker", "a")
        async with server.websocket("/events") as bystander:
            async with server.websocket("/subscriber/worker/handle") as ws:
                task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
                action = await receive_json(ws)
                await ws.send_message(frame)
                closed = await _close_of(ws)
            assert closed.code == code
            assert closed.reason is not None
            assert closed.reason.startswith(reason), closed.reason
            assert len(closed.reason.encode()) <= 123
            # what the subscriber owes is sent again when it reconnects
            async with server.websocket("/subscriber/worker/handle") as ws:
                assert await receive_json(ws) == action
                await ws.send_message(_frame("action_done", **action["data"]))
                result = await server.engine.wait_task(task_id)
            assert result.steps[0].answered == {"worker": "done"}
            # other connections went on
            await bystander.send_message(_frame("event", "still-here"))
            with trio.fail_after(5):
                while (await receive_json(bystander))["message_type"] != "still-here":
                    pass


async def test_events_connection_may_not_send_actions() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        async with server.websocket("/events") as ws:
            await ws.send_message(_frame("action", task="t", step="a"))
            closed = await _close_of(ws)
    assert (closed.code, closed.reason) == (1008, "clients may not send action messages")


# ---------------------------------------------------------------- generated garbage

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_kinds = st.sampled_from([*(kind.value for kind in Kind), "bogus", ""]) | _scalars
_data = _json | st.fixed_dictionaries(
    {},
    optional={
        "task": _json,
        "step": st.sampled_from(STEPS) | _json,
        "error": _json,
        "level": _json,
        "message": _json,
        "progress": _json
        | st.fixed_dictionaries(
            {"kind": st.sampled_from(["progress", "tree"]) | _json},
            optional={"name": _json, "current": _json, "total": _json, "parts": _json},
        ),
    },
)
_messages = st.fixed_dictionaries(
    {},
    optional={
        "kind": _kinds,
        "message_type": st.sampled_from(STEPS) | _json,
        "data": _data,
        "extra": _json,
    },
)
_frames = st.one_of(
    st.text(max_size=64),
    st.binary(max_size=64),
    _json.map(json.dumps),
    _messages.map(json.dumps),
    _messages.map(lambda m: json.dumps(m)[:-1]),  # cut short
)


async def _garbage_then_full_run(frames: list[str | bytes]) -> None:
    async with running_server() as server:
        await server.subscribe("worker", *STEPS)
        closes: list[trio_websocket.CloseReason] = []
        for path in ("/subscriber/worker/handle", "/events"):
            pending = list(frames)
            while pending:
                async with server.websocket(path) as ws:
                    try:
                        while pending:
                            await ws.send_message(pending.pop(0))
                        # an event the connection receives back: all went through
                        await ws.send_message(_frame("event", STEPS[0], probe="end"))
                        with trio.fail_after(5):
                            while json.loads(await ws.get_message())["data"].get("probe") != "end":
                                pass
                    except trio_websocket.ConnectionClosed as closed:
                        closes.append(closed.reason)
        for close in closes:
            assert close.code in (1007, 1008, 1009), close
        await _full_run(server)


async def _full_run(server: Server) -> None:
    async with (
        server.websocket("/subscriber/worker/handle") as ws,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(answer_actions, ws)
        with trio.fail_after(10):
            result = await server.engine.run_workflow("collect_and_cleanup")
        nursery.cancel_scope.cancel()
    assert result.outcome.value == "done"
    assert all(step.answered == {"worker": "done"} for step in result.steps)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(_frames, min_size=1, max_size=8))
def test_generated_garbage_never_breaks_the_server(frames: list[str | bytes]) -> None:
    trio.run(_garbage_then_full_run, frames)
