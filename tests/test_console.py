"""The console's routes: its files, diagrams, listeners, sign-in and the WebSocket's token."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import jwt
import pytest
import trio
import trio_websocket

from engine import CronTrigger, Step, Workflow, _console
from engine._auth import make_token

from .web_support import Server, quick_workflow, receive_json, running_server

PSK = "console-key"


async def test_the_root_redirects_to_the_console_and_its_files_have_their_types() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        for path in ("/", "/ui"):
            answer = await server.http.get(path)
            assert answer.status_code == 307
            assert answer.headers["location"] == "/ui/"
        page = await server.http.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script src="console.js" defer></script>' in page.text
        for name, kind in [
            ("console.js", "text/javascript; charset=utf-8"),
            ("console.css", "text/css; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
            ("index.html", "text/html; charset=utf-8"),
        ]:
            answer = await server.http.get(f"/ui/{name}")
            assert answer.status_code == 200, name
            assert answer.headers["content-type"] == kind
            assert answer.content
        missing = await server.http.get("/ui/secrets.txt")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no console file 'secrets.txt'", "problems": []}
        assert (await server.http.get("/ui/../pyproject.toml")).status_code == 404


async def test_diagrams_are_drawn_for_known_workflows_only() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        answer = await server.http.get("/ui/diagram/quick.svg")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/svg+xml; charset=utf-8"
        assert 'data-state="a"' in answer.text
        assert 'data-state="b"' in answer.text
        unknown = await server.http.get("/ui/diagram/nope.svg")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "unknown workflow 'nope'"


async def test_listeners_are_listed_with_the_dropped_count() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        await server.subscribe("w", "a")
        async with server.websocket("/subscriber/w/handle"), server.websocket("/events?show=a,b"):
            body = (await server.http.get("/ui/listeners")).json()
        assert body["dropped"] == 0
        by_subscriber = {item["subscriber_id"]: item for item in body["listeners"]}
        assert by_subscriber["w"] == {"id": "w", "subscriber_id": "w", "message_types": ["a"]}
        assert by_subscriber[None]["message_types"] == ["a", "b"]


async def test_a_running_task_lists_the_steps_it_passed() -> None:
    async with running_server(workflows=[quick_workflow(steps=("a", "b"))]) as server:
        await server.subscribe("w", "a", "b")
        async with server.websocket("/subscriber/w/handle") as ws:
            task_id = (await server.http.post("/workflow/quick/run")).json()["task_id"]
            action = await receive_json(ws)
            assert (await server.http.get(f"/task/{task_id}")).json()["steps"] == []
            await ws.send_message(
                json.dumps({"kind": "action_done", "message_type": "a", "data": action["data"]})
            )
            assert (await receive_json(ws))["data"]["step"] == "b"
            task = (await server.http.get(f"/task/{task_id}")).json()
        assert task["running"] is True
        assert task["step"]["name"] == "b"
        assert [(s["name"], s["answered"], s["ended"]) for s in task["steps"]] == [
            ("a", {"w": "done"}, "done")
        ]


async def test_with_a_psk_the_page_loads_but_no_data_without_a_token() -> None:
    async with running_server(workflows=[quick_workflow()], psk=PSK) as server:
        for path in ("/ui/", "/ui/console.js", "/ui/console.css", "/ui/icon.svg"):
            assert (await server.http.get(path)).status_code == 200, path
        assert (await server.http.get("/")).status_code == 307
        for path in ("/ui/diagram/quick.svg", "/ui/listeners", "/tasks", "/ui/nope"):
            answer = await server.http.get(path)
            assert answer.status_code == 401, path
            assert answer.json()["error"] == "unauthorized"


async def test_sign_in_answers_a_token_for_the_right_key_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_console, "WRONG_KEY_PAUSE", 0.2)
    async with running_server(workflows=[quick_workflow()], psk=PSK) as server:
        before = trio.current_time()
        wrong = await server.http.post("/ui/sign-in", json={"psk": "guess"})
        assert trio.current_time() - before >= 0.2
        assert wrong.status_code == 401
        assert wrong.json() == {
            "error": "wrong pre-shared key",
            "problems": ["psk: does not match the server's key"],
        }
        for body, problem in [
            ({}, "psk: must be a non-empty string"),
            ({"psk": 12}, "psk: must be a non-empty string"),
            ([PSK], "psk: must be a non-empty string"),
        ]:
            answer = await server.http.post("/ui/sign-in", json=body)
            assert answer.status_code == 400
            assert answer.json()["problems"] == [problem]
        broken = await server.http.post("/ui/sign-in", content=b"{psk")
        assert broken.status_code == 400
        assert broken.json()["error"] == "invalid JSON body"

        right = await server.http.post("/ui/sign-in", json={"psk": PSK})
        assert right.status_code == 200
        assert right.headers["cache-control"] == "no-store"
        body = right.json()
        assert body["expires_in"] == _console.TOKEN_LIFETIME
        token = body["token"]
        assert PSK not in token
        tasks = await server.http.get("/tasks", headers={"authorization": f"Bearer {token}"})
        assert tasks.status_code == 200
        claims = jwt.decode(token, options={"verify_signature": False})
        assert body["expires_at"] == claims["exp"]
        assert time.time() + _console.TOKEN_LIFETIME - claims["exp"] < 5

        # a shorter sign-in when asked, never a longer one
        short = (await server.http.post("/ui/sign-in", json={"psk": PSK, "expires_in": 5})).json()
        assert short["expires_in"] == 5
        assert short["expires_at"] - time.time() <= 5
        for lifetime in (0, -1, _console.TOKEN_LIFETIME + 1, "5", True, None):
            answer = await server.http.post(
                "/ui/sign-in", json={"psk": PSK, "expires_in": lifetime}
            )
            assert answer.status_code == 400
            assert answer.json()["problems"] == [
                f"expires_in: must be from 1 to 900 seconds, got {lifetime!r}"
            ]


async def test_sign_in_without_a_psk_is_not_found() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        answer = await server.http.post("/ui/sign-in", json={"psk": "x"})
        assert answer.status_code == 404
        assert "needs no sign-in" in answer.json()["error"]


@asynccontextmanager
async def websocket(
    server: Server, path: str, subprotocols: list[str]
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Open a WebSocket offering ``subprotocols``, on a stream of ours (closed however it goes)."""
    host, port = server.address
    stream = await trio.open_tcp_stream(host, port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, host, path, subprotocols=subprotocols
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


async def refusal(server: Server, path: str, subprotocols: list[str]) -> int:
    """Return the HTTP status with which the server refuses a WebSocket."""
    refusals: list[int] = []
    try:
        async with websocket(server, path, subprotocols):
            pass
    except* trio_websocket.ConnectionRejected as group:
        refusals.extend(int(e.status_code) for e in group.exceptions)  # type: ignore[attr-defined]
    assert refusals, f"the server accepted a WebSocket on {path}"
    return refusals[0]


async def test_events_take_the_token_as_a_subprotocol_and_refuse_without_it() -> None:
    async with running_server(workflows=[quick_workflow()], psk=PSK) as server:
        token = make_token(PSK)
        offered = [_console.SUBPROTOCOL, _console.TOKEN_SUBPROTOCOL + token]
        async with websocket(server, "/events?show=task_started", offered) as ws:
            assert ws.subprotocol == _console.SUBPROTOCOL
            headers = {"authorization": f"Bearer {token}"}
            await server.http.post("/workflow/quick/run", headers=headers)
            assert (await receive_json(ws))["message_type"] == "task_started"

        # refused: no token, a bad token, an expired one, and the subprotocol anywhere else
        expired = make_token(PSK, expires_in=-60)
        for path, protocols in [
            ("/events", [_console.SUBPROTOCOL]),
            ("/events", [_console.SUBPROTOCOL, _console.TOKEN_SUBPROTOCOL + "not-a-jwt"]),
            ("/events", [_console.SUBPROTOCOL, _console.TOKEN_SUBPROTOCOL + expired]),
            ("/events", [_console.TOKEN_SUBPROTOCOL + make_token("another key")]),
            ("/subscriber/w/handle", offered),
        ]:
            assert await refusal(server, path, protocols) == 401, (path, protocols)


async def test_an_open_api_accepts_the_console_subprotocol_and_plain_websockets() -> None:
    async with running_server(workflows=[quick_workflow()]) as server:
        async with websocket(server, "/events", [_console.SUBPROTOCOL]) as ws:
            assert ws.subprotocol == _console.SUBPROTOCOL
        async with server.websocket("/events") as plain:
            assert plain.subprotocol is None


async def test_a_console_websocket_is_closed_when_its_token_expires() -> None:
    async with running_server(workflows=[quick_workflow()], psk=PSK) as server:
        # exp is whole seconds: 2 s ahead leaves more than one for the upgrade
        token = make_token(PSK, expires_in=2)
        expiry = jwt.decode(token, options={"verify_signature": False})["exp"]
        offered = [_console.SUBPROTOCOL, _console.TOKEN_SUBPROTOCOL + token]
        async with websocket(server, "/events", offered) as ws:
            with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
        assert expiry - 0.1 <= time.time() <= expiry + 1.5
        assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "token expired")

        # a client with a bearer token keeps its connection as the protocol has it
        short = make_token(PSK, expires_in=2)
        expiry = jwt.decode(short, options={"verify_signature": False})["exp"]
        fresh = {"authorization": f"Bearer {make_token(PSK)}"}
        async with server.websocket("/events", headers=bearer(short)) as ws:
            await trio.sleep(max(0.0, expiry - time.time()) + 0.5)
            await server.http.post("/workflow/quick/run", headers=fresh)
            assert (await receive_json(ws))["message_type"] == "task_started"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_the_next_fire_times_of_each_schedule() -> None:
    hourly = Workflow(id="hourly", steps=[Step("a")], triggers=[CronTrigger("0 * * * *")])
    berlin = Workflow(
        id="berlin",
        steps=[Step("a")],
        triggers=[
            CronTrigger("30 2 * * *", timezone="Europe/Berlin"),
            CronTrigger("0 12 * * *", timezone="Europe/Berlin"),
        ],
    )
    async with running_server(workflows=[hourly, berlin, quick_workflow()]) as server:
        body = (await server.http.get("/ui/schedules")).json()
    now = datetime.fromisoformat(body["now"])
    assert set(body["next"]) == {"hourly", "berlin"}  # quick has no schedule
    times = [datetime.fromisoformat(t) for t in body["next"]["hourly"]]
    assert len(times) == _console.NEXT_FIRE_TIMES
    assert now < times[0] <= now + timedelta(hours=1)
    assert all(t.minute == 0 and t.second == 0 for t in times)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(times))
    # two triggers of one workflow, merged in order
    local = [
        datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Berlin"))
        for t in body["next"]["berlin"]
    ]
    assert local == sorted(local)
    assert {(t.hour, t.minute) for t in local} == {(2, 30), (12, 0)}
