"""Hostile input: what JSON cannot carry is refused at the door, and one task's failure is
that task's alone."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import (
    ERROR,
    TASK_END,
    Action,
    DeclarationError,
    Declarations,
    Event,
    InvalidInputError,
    Outcome,
    SQLiteStore,
    Step,
    Workflow,
    open_engine,
)
from engine._json import JSONInputError, parse_json

from .test_engine import next_action
from .web_support import Server, quick_workflow, receive_json, running_server

SURROGATE = '"\\ud800"'  # JSON text for a lone surrogate: valid JSON, not valid Unicode


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"error": ' + SURROGATE + "}", r"error: lone surrogate in a string: '\ud800'"),
        ('{"a": {"\\udfff": 1}}', r"a: lone surrogate in a key: '\udfff'"),
        ('{"a": [1, 1e999]}', "a[1]: number is not finite (inf): JSON cannot carry it"),
        ('{"a": -1e999}', "a: number is not finite (-inf): JSON cannot carry it"),
        ('{"a": NaN}', "invalid JSON: NaN is not a JSON number"),
        ('{"a": Infinity}', "invalid JSON: Infinity is not a JSON number"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ('{"a": 1', "invalid JSON: Expecting ',' delimiter: line 1 column 8 (char 7)"),
    ],
)
def test_json_that_cannot_be_carried_is_refused_with_its_path(text: str, problem: str) -> None:
    with pytest.raises(JSONInputError) as raised:
        parse_json(text)
    assert [str(p) for p in raised.value.problems] == [problem]


def test_what_can_be_carried_is_accepted() -> None:
    assert parse_json('{"a": "\\ud83d\\ude00", "b": 1.5e308, "c": [true, null]}') == {
        "a": "\U0001f600",
        "b": 1.5e308,
        "c": [True, None],
    }


async def answer_frame(ws: trio_websocket.WebSocketConnection, kind: str, **data: Any) -> str:
    """Send an answer to the next action, with ``data`` spelled as raw JSON values."""
    while True:
        message = await receive_json(ws)
        if message["kind"] == "action":
            break
    fields = ",".join(
        f'"{key}":{value}' for key, value in {**_quoted(message["data"]), **data}.items()
    )
    return f'{{"kind":"{kind}","message_type":"{message["message_type"]}","data":{{{fields}}}}}'


def _quoted(data: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in data.items()}


async def closed_with(ws: trio_websocket.WebSocketConnection) -> tuple[int | None, str | None]:
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason


@pytest.mark.parametrize(
    ("kind", "data", "reason"),
    [
        ("action_error", {"error": SURROGATE}, "data.error: lone surrogate in a string"),
        (
            "action_progress",
            {
                "progress": '{"kind":"progress","name":' + SURROGATE + ',"current":1,"total":2}',
            },
            "data.progress.name: lone surrogate in a string",
        ),
        ("action_done", {"size": "1e999"}, "data.size: number is not finite (inf)"),
    ],
)
async def test_an_answer_holding_what_json_cannot_carry_closes_only_its_connection(
    kind: str, data: dict[str, str], reason: str
) -> None:
    async with running_server(workflows=[quick_workflow(steps=("a",))]) as server:
        await server.subscribe("w", "a")
        task_id = server.engine.start_workflow("quick").task_id
        async with server.websocket("/subscriber/w/handle") as ws:
            await ws.send_message(await answer_frame(ws, kind, **data))
            code, text = await closed_with(ws)
        assert code == 1007
        assert text is not None
        assert reason in text
        # nothing was recorded: the task still waits for w, and every view answers
        for path in (f"/task/{task_id}", "/tasks"):
            assert (await server.http.get(path)).status_code == 200
        (info,) = server.engine.tasks()
        assert info.step is not None
        assert info.step.waiting_for == ("w",)
        # the subscriber still owes its answer: reconnecting, it gets the action again
        async with server.websocket("/subscriber/w/handle") as ws:
            await ws.send_message(await answer_frame(ws, "action_done"))
            result = await server.engine.wait_task(task_id)  # type: ignore[arg-type]
        assert result.outcome is Outcome.DONE


async def test_an_event_holding_a_huge_number_is_refused_and_not_forwarded() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        async with (
            server.websocket("/events?show=tick") as watcher,
            server.websocket("/events") as sender,
        ):
            await sender.send_message('{"kind":"event","message_type":"tick","data":{"x":1e999}}')
            code, text = await closed_with(sender)
            assert code == 1007
            assert text is not None
            assert "data.x: number is not finite" in text
            async with server.websocket("/events") as other:
                await other.send_message('{"kind":"event","message_type":"tick","data":{"x":1}}')
                message = await receive_json(watcher)
        assert message == {
            "kind": "event",
            "message_type": "tick",
            "data": {"x": 1, **_stamp(message)},
        }


def _stamp(message: dict[str, Any]) -> dict[str, Any]:
    data = message["data"]
    return {"subscriber_id": data["subscriber_id"], "received_at": data["received_at"]}


@pytest.mark.parametrize(
    ("method", "path", "body", "problem"),
    [
        ("PUT", "/config/x", '{"a": ' + SURROGATE + "}", "body.a: lone surrogate in a string"),
        ("PATCH", "/config/x", '{"a": {"b": 1e999}}', "body.a.b: number is not finite (inf)"),
        ("PUT", "/config/x", '{"x": 1e999}', "body.x: number is not finite (inf)"),
        (
            "PUT",
            "/subscriber/w",
            '[{"message_type": ' + SURROGATE + "}]",
            "body[0].message_type: lone surrogate in a string",
        ),
    ],
)
async def test_http_bodies_holding_what_json_cannot_carry_are_refused_and_not_stored(
    method: str, path: str, body: str, problem: str
) -> None:
    async with running_server() as server:
        answer = await server.http.request(method, path, content=body.encode())
        assert answer.status_code == 400, answer.text
        assert any(p.startswith(problem) for p in answer.json()["problems"]), answer.json()
        assert (await server.http.get(path)).status_code == 404
        assert (await server.http.get("/subscribers")).json() == []


def test_a_config_from_python_must_be_carried_by_json() -> None:
    async def main() -> None:
        async with open_engine() as engine:
            with pytest.raises(InvalidInputError, match=r"^a: number is not finite \(nan\)"):
                engine.configs.put("x", {"a": float("nan")})
            assert engine.configs.get("x") is None

    trio.run(main)


async def test_a_stored_config_that_cannot_be_read_back_is_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite3"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO configs VALUES ('bad', 'r1-x', ?)", ('{"a": "\\ud800", "b": NaN}',))
    db.execute("INSERT INTO configs VALUES ('good', 'r2-y', '{\"a\": 1}')")
    db.execute("INSERT INTO subscribers VALUES (?)", ("bad\x00id",))
    db.commit()
    db.close()
    caplog.set_level(logging.ERROR, logger="engine")
    async with running_server(store=SQLiteStore(path)) as server:
        assert (await server.http.get("/configs")).json() == ["bad", "good"]
        answer = await server.http.get("/config/bad")
        assert answer.status_code == 409
        assert answer.json()["problems"] == [
            r"data.a: lone surrogate in a string: '\ud800'",
            "data.b: number is not finite (nan): JSON cannot carry it",
        ]
        assert (await server.http.get("/config/good")).json() == {"a": 1}
        assert (await server.http.get("/subscribers")).json() == []
        assert (await server.http.delete("/config/bad")).status_code == 204
        assert (await server.http.get("/config/bad")).status_code == 404
    logged = [r.getMessage() for r in caplog.records]
    assert any("the stored config 'bad' cannot be served" in line for line in logged), logged
    assert any("removing the stored subscriber 'bad\\x00id'" in line for line in logged), logged


async def test_a_task_whose_record_cannot_be_written_fails_alone(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    workflow = Workflow(id="wf", steps=[Step("a"), Step("b")], surpass="parallel")
    store = SQLiteStore(tmp_path / "state.sqlite3")
    async with open_engine(workflows=[workflow], store=store) as engine:
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        seen: list[Event] = []
        engine.add_observer(seen.append, message_types=(TASK_END, ERROR))  # type: ignore[arg-type]
        async with engine.open_listener(subscriber_id="w") as w:
            broken = engine.start_workflow("wf").task_id
            fine = engine.start_workflow("wf").task_id
            first = await w.receive()
            second = await w.receive()
            assert isinstance(first, Action)
            assert isinstance(second, Action)
            if first.task != broken:  # the two drivers start in either order
                first, second = second, first
            assert first.task == broken
            w.error(first, "bad \ud800 text")  # a Python caller can still write one
            w.done(second)
            result = await engine.wait_task(broken)  # type: ignore[arg-type]
            assert result.outcome is Outcome.FAILED
            assert result.error is not None
            assert result.error.startswith("internal error: TypeError: str is not valid UTF-8")
            # the engine goes on: the other task finishes its run
            w.done(await next_action(w))
            assert (await engine.wait_task(fine)).outcome is Outcome.DONE  # type: ignore[arg-type]
    ends = {e.data["task_id"]: e.data["outcome"] for e in seen if e.message_type == TASK_END}
    assert ends == {broken: "failed", fine: "done"}
    errors = [e.data["message"] for e in seen if e.message_type == ERROR]
    assert any(m.startswith("internal error: ") for m in errors)
    # its result is kept, with what UTF-8 cannot hold replaced
    (stored,) = [r for r in store.history() if r["id"] == broken]
    assert stored["outcome"] == "failed"
    assert "w: bad ? text" in stored["errors"]
    store.close()


# ---------------------------------------------------------------- any value, anywhere

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(["1e999", "-1e999", "1.5e308", "0.0"]).map(lambda s: ("raw", s)),
    st.text(max_size=8),
    st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000"]).map(
        lambda s: ("raw", f'"{s}"')
    ),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def to_json_text(value: Any) -> str:
    """Spell a generated value as JSON text (raw pieces as they are: 1e999, lone surrogates)."""
    if isinstance(value, tuple) and value[0] == "raw":
        return str(value[1])
    if isinstance(value, list):
        return "[" + ",".join(to_json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


ROUTES = [
    ("PUT", "/config/fuzz", lambda v: '{"v":' + v + "}"),
    ("PUT", "/config/fuzz", lambda v: v),
    ("PATCH", "/config/fuzz", lambda v: '{"p":' + v + "}"),
    ("PUT", "/subscriber/fuzz", lambda v: '[{"message_type":' + v + "}]"),
    ("PUT", "/subscriber/fuzz", lambda v: '[{"message_type":"a","timeout":' + v + "}]"),
    ("PUT", "/subscriber/fuzz", lambda v: v),
]
FRAMES = [
    lambda v: '{"kind":"event","message_type":"tick","data":{"v":' + v + "}}",
    lambda v: '{"kind":"event","message_type":' + v + ',"data":{}}',
    lambda v: (
        '{"kind":"action_error","message_type":"a","data":{"task":"t","step":"a","error":'
        + v
        + "}}"
    ),
    lambda v: (
        '{"kind":"action_progress","message_type":"a","data":{"task":"t","step":"a",'
        '"progress":' + v + "}}"
    ),
    lambda v: v,
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=JSON_VALUES, route=st.sampled_from(ROUTES), frame=st.sampled_from(FRAMES))
def test_any_value_in_any_field_gets_an_answer_never_a_failure(
    value: Any, route: Any, frame: Any
) -> None:
    text = to_json_text(value)

    async def main() -> None:
        async with running_server(workflows=[quick_workflow()]) as server:
            method, path, body = route
            answer = await server.http.request(method, path, content=body(text).encode())
            assert answer.status_code in (200, 400), answer.text
            answer.json()  # every answer is JSON
            await check_readable(server, path)
            async with server.websocket("/events") as ws:
                await ws.send_message(frame(text))
                closed = None
                with trio.move_on_after(0.2):
                    try:
                        await ws.get_message()
                    except trio_websocket.ConnectionClosed as error:
                        closed = error.reason
                assert closed is None or closed.code in (1000, 1007, 1008), closed
            assert (await server.http.get("/system/ping")).text == "pong"

    trio.run(main)


async def check_readable(server: Server, path: str) -> None:
    """What was stored reads back: no 500 on any view."""
    for view in (path, "/configs", "/subscribers", "/tasks"):
        answer = await server.http.get(view)
        assert answer.status_code in (200, 404), (view, answer.text)
        answer.json()


@pytest.mark.parametrize(
    ("suffix", "text", "problem"),
    [
        (
            ".toml",
            '[[workflows]]\nid = "w"\n[[workflows.steps]]\nname = "a"\n'
            'action = { kind = "emit_event", message_type = "x", data = { n = inf } }\n',
            "workflows[0].steps[0].action.data.n: number is not finite (inf)",
        ),
        (
            ".json",
            '{"workflows": [{"id": "w", "steps": [{"name": "a", "action": {"kind": "emit_event",'
            ' "message_type": "x", "data": {"s": "\\ud800"}}}]}]}',
            "workflows[0].steps[0].action.data.s: lone surrogate in a string",
        ),
    ],
)
def test_data_files_follow_the_same_rule(
    tmp_path: Path, suffix: str, text: str, problem: str
) -> None:
    path = tmp_path / f"flows{suffix}"
    path.write_text(text)
    with pytest.raises(DeclarationError) as raised:
        Declarations.from_file(path)
    assert any(str(p).startswith(problem) for p in raised.value.problems), raised.value
