"""PSK authentication: Resoto-style JWTs over HTTP and WebSocket."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import time
from typing import Any

import jwt
import pytest
import trio
import trio_websocket

from engine._auth import AuthError, TokenVerifier, make_token

from .web_support import quick_workflow, receive_json, running_server

PSK = "changeme"


def resoto_token(psk: str, *, exp: float | None = 600.0, salt: bytes | None = None) -> str:
    """A token made as Resoto's clients make it, written out from the protocol's description."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha256", psk.encode(), salt, 100_000, 32)
    payload: dict[str, Any] = {} if exp is None else {"exp": int(time.time() + exp)}
    return jwt.encode(
        payload, key, algorithm="HS256", headers={"salt": base64.b64encode(salt).decode()}
    )


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_a_resoto_token_is_accepted_over_http_and_websocket() -> None:
    token = resoto_token(PSK)
    async with running_server(workflows=[quick_workflow()], psk=PSK, token=token) as server:
        assert (await server.http.get("/configs")).status_code == 200
        assert (await server.http.post("/subscriber/w/a")).status_code == 200
        async with server.websocket("/subscriber/w/handle") as ws:
            await server.http.post("/workflow/quick/run")
            assert (await receive_json(ws))["kind"] == "action"
        # the helper makes the same kind of token
        made = await server.http.get(
            "/subscribers", headers={"authorization": f"Bearer {make_token(PSK)}"}
        )
        assert made.status_code == 200


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (None, "missing Authorization header (expected 'Bearer <jwt>')"),
        ("Basic dXNlcjpwYXNz", "the Authorization header must be 'Bearer <jwt>'"),
        ("Bearer not-a-jwt", "malformed token: "),
        ("Bearer " + resoto_token("another key"), "the token's signature does not match"),
        ("Bearer " + resoto_token(PSK, exp=-60), "the token has expired"),
        (
            "Bearer " + jwt.encode({"exp": time.time() + 60}, "k" * 32, algorithm="HS256"),
            "the token header has no 'salt'",
        ),
    ],
)
async def test_requests_without_a_valid_token_get_401(
    authorization: str | None, problem: str
) -> None:
    async with running_server(workflows=[quick_workflow()], psk=PSK) as server:
        server.engine.subscribe("w", "a")
        headers = {} if authorization is None else {"authorization": authorization}
        answer = await server.http.get("/subscribers", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"] == "unauthorized"
        assert answer.json()["problems"][0].startswith(problem)
        ws_headers = [] if authorization is None else [(b"authorization", authorization.encode())]
        # without any header, /events and /work/queue wait for an authorization message
        paths = ["/subscriber/w/handle"] + ([] if authorization is None else ["/events"])
        for path in paths:
            rejected = await server.rejection(path, headers=ws_headers)
            assert rejected.status_code == 401
        assert server.engine.listeners == []


async def test_a_token_without_exp_is_accepted_as_resoto_accepts_it() -> None:
    async with running_server(psk=PSK, token=resoto_token(PSK, exp=None)) as server:
        assert (await server.http.get("/configs")).status_code == 200


async def test_health_checks_metrics_and_the_ca_certificate_need_no_token() -> None:
    async with running_server(psk=PSK) as server:
        assert (await server.http.get("/system/ping")).text == "pong"
        assert (await server.http.get("/system/ready")).text == "ok"
        metrics = await server.http.get("/metrics")
        assert metrics.status_code == 200
        assert "phasebus" in metrics.text
        # without --tls there is no CA: the answer says so, it does not ask for a token
        ca = await server.http.get("/ca/cert")
        assert ca.status_code == 404
        assert "without TLS" in ca.json()["error"]
        # /ca/sign is not open
        assert (await server.http.post("/ca/sign", content=b"x")).status_code == 401
        # anything else still needs one
        assert (await server.http.get("/system/other")).status_code == 404
        assert (await server.http.get("/metrics/other")).status_code == 401


async def test_verifier_caches_keys_only_for_good_signatures() -> None:
    verifier = TokenVerifier(PSK, cache_size=2)
    salt = b"s" * 16
    assert (await verifier.verify(resoto_token(PSK, salt=salt)))["exp"] > time.time()
    assert list(verifier._keys) == [salt]
    with pytest.raises(AuthError, match=r"^the token's signature does not match"):
        await verifier.verify(resoto_token("wrong", salt=b"t" * 16))
    assert list(verifier._keys) == [salt]
    with pytest.raises(ValueError, match=r"^psk must be a non-empty string$"):
        TokenVerifier("")


async def test_events_and_the_work_queue_may_authorize_with_their_first_message() -> None:
    async with running_server(workflows=[quick_workflow()], psk=PSK) as server:
        authorize = json.dumps({"kind": "authorization", "jwt": f"Bearer {resoto_token(PSK)}"})
        async with server.websocket("/events?show=config-updated", headers=[]) as ws:
            # nothing reaches a client that has not authorized yet
            server.engine.configs.put("before", {"a": 1})
            await ws.send_message(authorize)
            # the token is checked in a worker thread: publish until one arrives
            event = None
            with trio.fail_after(10):
                for number in itertools.count():
                    server.engine.configs.put(f"after-{number}", {"a": 1})
                    with trio.move_on_after(0.2):
                        event = await receive_json(ws)
                        break
            assert event is not None
            assert event["data"]["id"].startswith("after-")
        async with server.websocket("/work/queue", headers=[]) as ws:
            await ws.send_message(authorize)
            await ws.send_message(json.dumps([{"name": "tag", "filter": {}}]))
            with trio.fail_after(5):
                while not server.app.work.queue.workers:
                    await trio.sleep(0.01)


@pytest.mark.parametrize(
    "first",
    [
        json.dumps({"kind": "authorization", "jwt": "Bearer " + resoto_token("wrong")}),
        json.dumps({"kind": "authorization"}),
        json.dumps([{"name": "tag"}]),
        "not json",
    ],
)
async def test_a_bad_first_message_closes_the_unauthorized_websocket(first: str) -> None:
    async with running_server(psk=PSK) as server:
        for path in ("/events", "/work/queue"):
            async with server.websocket(path, headers=[]) as ws:
                await ws.send_message(first)
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    with trio.fail_after(5):
                        await ws.get_message()
                assert closed.value.reason.code == 1008
                assert (closed.value.reason.reason or "").startswith("unauthorized: ")
        assert server.app.work.queue.workers == []
