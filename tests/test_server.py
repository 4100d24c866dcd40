"""phasebus's HTTP/1.1 and WebSocket server on real sockets: limits, time-outs, refusals."""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from engine._server import FRAMES_EXTENSION, ServerLimits, serve_app, text_frame

from .web_support import running_server

UPGRADE = (
    b"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class EchoApp:
    """An ASGI app: HTTP answers with what it got; WebSockets echo, or fail on request."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            data = json.dumps({"path": scope["path"], "body": body.decode()}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(data)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": data})
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text == "boom":
                raise RuntimeError("boom")
            if text == "frames":
                frames = [text_frame(f"frame {i}".encode()) for i in range(3)]
                await send({"type": FRAMES_EXTENSION, "frames": frames})
            else:
                await send({"type": "websocket.send", "text": text})


@asynccontextmanager
async def echo_server(
    limits: ServerLimits | None = None, **options: Any
) -> AsyncIterator[tuple[str, EchoApp]]:
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(serve_app, app, port=0, limits=limits or ServerLimits(), **options)
        )
        yield url, app
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def ws_client(
    url: str, path: str, ssl_context: Any = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A trio-websocket client on a stream of ours, closed however the server ends."""
    host, port = _address(url)
    stream: Any = await trio.open_tcp_stream(host, port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, host, path)
            try:
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def _read_all(stream: trio.SocketStream, limit: float = 10) -> bytes:
    data = b""
    with trio.fail_after(limit):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def _json_answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


# ---------------------------------------------------------------- HTTP


async def test_keep_alive_chunked_bodies_and_addresses_in_the_scope() -> None:
    async with echo_server() as (url, app), httpx.AsyncClient(base_url=url) as http:

        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"hello ", b"chunked ", b"world"):
                yield part

        first = await http.post("/a%20b", content=chunks())
        second = await http.get("/second?x=1")
    assert first.json() == {"path": "/a b", "body": "hello chunked world"}
    assert second.json() == {"path": "/second", "body": ""}
    one, two = app.scopes
    assert (b"transfer-encoding", b"chunked") in one["headers"]
    assert one["client"] == two["client"]  # the same connection, kept alive
    assert one["server"] == _address(url)
    assert one["client"][0] == "127.0.0.1"
    assert two["query_string"] == b"x=1"
    assert two["raw_path"] == b"/second"


@pytest.mark.parametrize(
    ("request_bytes", "status", "problem"),
    [
        (b"GARBAGE\r\n\r\n", 400, "request: "),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "request: "),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, ""),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 140_000 + b"\r\n\r\n", 431, "request"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "body: "),
    ],
    ids=["request line", "content-length", "two lengths", "headers too large", "bad chunk"],
)
async def test_malformed_requests_get_a_json_error(
    request_bytes: bytes, status: int, problem: str
) -> None:
    async with echo_server() as (url, _):
        stream = await trio.open_tcp_stream(*_address(url))
        await stream.send_all(request_bytes)
        got, body = _json_answer(await _read_all(stream))
        await stream.aclose()
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/still-here")).status_code == 200
    assert got == status
    assert body["error"]
    assert body["problems"][0].startswith(problem), body


async def test_phasebus_answers_a_bad_content_length_with_json() -> None:
    async with running_server() as server:
        stream = await trio.open_tcp_stream(*server.address)
        await stream.send_all(b"PUT /config/x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        status, body = _json_answer(await _read_all(stream))
        await stream.aclose()
    assert status == 400
    assert body["error"] == "bad request"
    assert "content-length" in body["problems"][0].lower()


async def test_incomplete_headers_get_408_and_idle_connections_close(autojump_clock: Any) -> None:
    async with echo_server() as (url, _):
        partial = await trio.open_tcp_stream(*_address(url))
        idle = await trio.open_tcp_stream(*_address(url))
        await partial.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        start = trio.current_time()
        status, body = _json_answer(await _read_all(partial))
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
        assert await _read_all(idle) == b""
        await partial.aclose()
        await idle.aclose()
    assert status == 408
    assert body == {
        "error": "request timed out",
        "problems": ["headers: not complete within 5 s"],
    }


def _stalled_put(size: int = 100) -> bytes:
    return (
        f"PUT /config/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode() + b'{"x": '


async def test_thousands_of_stalled_bodies_time_out_with_408_quietly(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine")
    count = 1500
    async with running_server() as server:
        streams = []
        for _ in range(count):
            stream = await trio.open_tcp_stream(*server.address)
            await stream.send_all(_stalled_put())
            streams.append(stream)
        start = trio.current_time()
        answers = [_json_answer(await _read_all(stream, 60)) for stream in streams]
        waited = trio.current_time() - start
        for stream in streams:
            await stream.aclose()
        ping = await server.http.get("/system/ping")
        stored = server.engine.configs.get("x")
    assert ping.text == "pong"
    assert stored is None
    assert 30 <= waited < 31
    assert {status for status, _ in answers} == {408}
    assert answers[0][1] == {
        "error": "request timed out",
        "problems": ["body: not complete within 30 s of the headers"],
    }
    # the access log's line per request aside (info), nothing above debug
    server_records = [
        r for r in caplog.records if r.name.startswith("engine") and r.name != "engine.access"
    ]
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in server_records)
    timed_out = [r for r in server_records if "not complete within" in r.getMessage()]
    assert len(timed_out) == count  # once per connection


async def test_a_client_gone_mid_body_is_logged_once_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server() as server:
        stream = await trio.open_tcp_stream(*server.address)
        await stream.send_all(_stalled_put())
        await trio.sleep(0.1)
        await stream.aclose()
        with trio.fail_after(5):
            while not any("mid-body" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)
        assert (await server.http.get("/system/ping")).text == "pong"
    gone = [r for r in caplog.records if "mid-body" in r.getMessage()]
    assert len(gone) == 1
    assert gone[0].levelno == logging.DEBUG
    assert all(r.exc_info is None for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_connection_over_the_limit_gets_503_at_once() -> None:
    async with echo_server(ServerLimits(max_connections=3)) as (url, _):
        held = [await trio.open_tcp_stream(*_address(url)) for _ in range(3)]
        await trio.sleep(0.05)
        extra = await trio.open_tcp_stream(*_address(url))
        await extra.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await _read_all(extra, 2)
        await extra.aclose()
        await held.pop().aclose()
        await trio.sleep(0.05)
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/served-again")).status_code == 200
        for stream in held:
            await stream.aclose()
    status, body = _json_answer(raw)
    assert status == 503
    assert b"\r\nretry-after: 1\r\n" in raw
    assert body == {
        "error": "too many connections",
        "problems": ["server: 3 connections in flight, the most it serves"],
    }


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^body_timeout must be a number of seconds > 0, got 0$"):
        ServerLimits(body_timeout=0)
    with pytest.raises(ValueError, match=r"^max_connections must be a whole number >= 1, got 0$"):
        ServerLimits(max_connections=0)


# ---------------------------------------------------------------- WebSocket


async def _raw_websocket(address: tuple[str, int], path: str = "/events") -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(UPGRADE.replace(b"{path}", path.encode()))
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return stream


def _client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None
) -> bytes:
    """A masked client frame (the mask is zero, so the payload is sent as it is)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size < 65536:
        header = bytes((first, 0x80 | 126)) + struct.pack("!H", size)
    else:
        header = bytes((first, 0x80 | 127)) + struct.pack("!Q", size)
    return header + b"\0\0\0\0" + payload


async def _server_close(stream: trio.SocketStream) -> tuple[int, str]:
    """Read server frames until the close frame; return its code and reason."""
    buffer = b""
    with trio.fail_after(5):
        while True:
            while len(buffer) >= 2:
                size, start = buffer[1] & 0x7F, 2
                if size == 126:
                    size, start = struct.unpack("!H", buffer[2:4])[0], 4
                elif size == 127:
                    size, start = struct.unpack("!Q", buffer[2:10])[0], 10
                if len(buffer) < start + size:
                    break
                opcode, payload = buffer[0] & 0x0F, buffer[start : start + size]
                buffer = buffer[start + size :]
                if opcode == 8:
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed the connection without a close frame"
            buffer += chunk


BAD_FRAMES = [
    (
        "invalid UTF-8",
        _client_frame(1, b'{"a": "\xff\xfe"}'),
        1007,
        "text frame is not valid UTF-8",
    ),
    (
        "announced too large, payload not sent",
        _client_frame(1, b'{"pad": "', length=100_000),
        1009,
        "message of 100000 bytes over the limit of 65536 bytes",
    ),
    (
        "fragments growing past the limit",
        _client_frame(1, b"x" * 40_000, fin=False) + _client_frame(0, b"x" * 40_000, fin=False),
        1009,
        "fragmented message over the limit of 65536 bytes",
    ),
    ("unmasked", b"\x81\x02hi", 1002, ""),
    ("reserved bits", b"\xf1\x80\0\0\0\0", 1002, ""),
]


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [pytest.param(frame, code, reason, id=name) for name, frame, code, reason in BAD_FRAMES],
)
async def test_malformed_frames_close_with_a_code_and_a_reason(
    frame: bytes, code: int, reason: str
) -> None:
    async with running_server() as server:
        async with server.websocket("/events") as bystander:
            stream = await _raw_websocket(server.address)
            await stream.send_all(frame)
            got = await _server_close(stream)
            await stream.aclose()
            await bystander.send_message(json.dumps({"kind": "event", "message_type": "still"}))
            with trio.fail_after(5):
                while json.loads(await bystander.get_message())["message_type"] != "still":
                    pass
    assert got[0] == code
    assert got[1], got
    assert got[1].startswith(reason), got


async def test_an_error_in_a_handler_closes_that_connection_only_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_server() as server:
        publish = server.engine.publish

        def exploding(message: Any, **options: Any) -> None:
            if message.message_type == "explode":
                raise RuntimeError("kaboom")
            publish(message, **options)

        monkeypatch.setattr(server.engine, "publish", exploding)
        async with server.websocket("/events") as bystander, server.websocket("/events") as ws:
            await ws.send_message(json.dumps({"kind": "event", "message_type": "explode"}))
            with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
            await bystander.send_message(json.dumps({"kind": "event", "message_type": "still"}))
            with trio.fail_after(5):
                while json.loads(await bystander.get_message())["message_type"] != "still":
                    pass
        assert (await server.http.get("/system/ping")).text == "pong"
    assert (closed.value.reason.code, closed.value.reason.reason) == (
        1011,
        "internal error: RuntimeError",
    )


async def test_an_application_error_after_accept_closes_with_1011() -> None:
    async with echo_server() as (url, _):
        async with ws_client(url, "/x") as other:
            async with ws_client(url, "/y") as ws:
                await ws.send_message("boom")
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    with trio.fail_after(5):
                        await ws.get_message()
            await other.send_message("frames")
            got = [await other.get_message() for _ in range(3)]
            await other.send_message("plain")
            assert await other.get_message() == "plain"
    assert (closed.value.reason.code, closed.value.reason.reason) == (
        1011,
        "internal error: RuntimeError",
    )
    assert got == ["frame 0", "frame 1", "frame 2"]


# ---------------------------------------------------------------- TLS


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(tmp_path, "cert.pem"), os.path.join(tmp_path, "key.pem")
    with open(cert_path, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


async def test_tls_serves_https_and_wss(tmp_path: Any) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=cert)
    async with echo_server(ssl_context=server_context) as (url, _):
        assert url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, verify=client_context) as http:
            answer = await http.post("/secure", content=b"over tls")
        async with ws_client(url, "/ws", client_context) as ws:
            await ws.send_message("hello")
            echoed = await ws.get_message()
        # a client that does not speak TLS is dropped; the server goes on
        plain = await trio.open_tcp_stream(*_address(url))
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _read_all(plain) == b""
        await plain.aclose()
        async with httpx.AsyncClient(base_url=url, verify=client_context) as http:
            assert (await http.get("/again")).status_code == 200
    assert answer.json() == {"path": "/secure", "body": "over tls"}
    assert echoed == "hello"


# ---------------------------------------------------------------- frame headers, without sockets


def test_the_frame_guard_follows_frames_split_anywhere() -> None:
    from engine._server import _FrameGuard

    frames = (
        _client_frame(1, b"a" * 300, fin=False)
        + _client_frame(9, b"ping")  # a control frame between fragments
        + _client_frame(0, b"b" * 70_000)
        + _client_frame(2, b"c" * 10)
    )
    guard = _FrameGuard(limit=70_300)
    for index in range(0, len(frames), 7):  # any split: headers cut in the middle too
        chunk = frames[index : index + 7]
        assert guard.scan(chunk) == (len(chunk), None)
    guard = _FrameGuard(limit=70_299)
    allowed, why = guard.scan(frames)
    assert why == "fragmented message over the limit of 70299 bytes"
    assert allowed == len(_client_frame(1, b"a" * 300, fin=False) + _client_frame(9, b"ping"))


def test_the_frame_guard_refuses_from_the_header_alone() -> None:
    from engine._server import _FrameGuard

    header = _client_frame(1, b"", length=2**40)
    guard = _FrameGuard(limit=1024)
    assert guard.scan(header[:3]) == (3, None)  # not a whole header yet
    assert guard.scan(header[3:]) == (
        0,
        "message of 1099511627776 bytes over the limit of 1024 bytes",
    )


async def test_a_client_expecting_100_continue_gets_it_before_sending_the_body() -> None:
    async with echo_server() as (url, _):
        stream = await trio.open_tcp_stream(*_address(url))
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n"
        )
        with trio.fail_after(5):
            interim = await stream.receive_some(65536)
        await stream.send_all(b"hello")
        raw = await _read_all(stream)
        await stream.aclose()
    assert interim.startswith(b"HTTP/1.1 100 ")
    status, body = _json_answer(raw)
    assert (status, body) == (200, {"path": "/upload", "body": "hello"})
