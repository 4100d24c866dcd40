"""Slow WebSocket clients: dropped by what is pending for them; fast ones never are."""

from __future__ import annotations

import functools
import json
import struct
from typing import Any

import pytest
import trio
import trio_websocket

from engine import Event

from .web_support import Server, running_server

UPGRADE = (
    b"GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def stalled_client(server: Server) -> trio.socket.SocketType:
    """An /events WebSocket whose client reads nothing (a small receive buffer)."""
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(server.address)
    await sock.send(UPGRADE)
    before = len(server.engine.listeners)
    with trio.fail_after(5):
        while len(server.engine.listeners) <= before:
            await trio.sleep(0.01)
    return sock


async def frames_until_closed(sock: trio.socket.SocketType) -> list[tuple[int, bytes]]:
    """Read the handshake answer, then frames up to the close frame; return the frames."""
    data = b""
    frames: list[tuple[int, bytes]] = []
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            data += await sock.recv(1 << 16)
        data = data.split(b"\r\n\r\n", 1)[1]
        while True:
            while len(data) >= 2:
                size, start = data[1] & 0x7F, 2
                if size == 126:
                    size, start = struct.unpack("!H", data[2:4])[0], 4
                elif size == 127:
                    size, start = struct.unpack("!Q", data[2:10])[0], 10
                if len(data) < start + size:
                    break
                frames.append((data[0] & 0x0F, data[start : start + size]))
                data = data[start + size :]
                if frames[-1][0] == 8:
                    return frames
            chunk = await sock.recv(1 << 16)
            assert chunk, "closed without a close frame"
            data += chunk


async def test_a_client_that_never_reads_is_dropped_with_1008_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(max_pending_bytes=128 * 1024, close_grace=10) as server:
        engine = server.engine
        sock = await stalled_client(server)
        pad = "x" * 8192
        with trio.fail_after(10):
            while not engine.dropped_listeners:
                engine.publish(Event("noise", {"pad": pad}))
                await trio.sleep(0)
        for _ in range(50):  # more for a connection already dropped: not counted again
            engine.publish(Event("noise", {"pad": pad}))
            await trio.sleep(0)
        frames = await frames_until_closed(sock)
        sock.close()
        metrics = (await server.http.get("/metrics")).text
    assert engine.dropped_listeners == 1
    assert "phasebus_listeners_dropped_total 1.0" in metrics
    opcode, payload = frames[-1]
    assert opcode == 8
    assert struct.unpack("!H", payload[:2])[0] == 1008
    reason = payload[2:].decode()
    assert reason.startswith("too slow: "), reason
    assert reason.endswith(" bytes pending, more than 131072"), reason
    assert all(opcode == 1 for opcode, _ in frames[:-1])
    warnings = [r for r in caplog.records if "dropping listener" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_message_pending_too_long_drops_the_client(autojump_clock: Any) -> None:
    async with running_server(max_pending_bytes=1 << 30, max_pending_age=10) as server:
        engine = server.engine
        sock = await stalled_client(server)
        pad = "x" * 32768
        for _ in range(300):  # ~10 MB: more than the sockets hold, far less than the byte limit
            engine.publish(Event("noise", {"pad": pad}))
        await trio.sleep(9)
        assert engine.dropped_listeners == 0
        await trio.sleep(2)
        assert engine.dropped_listeners == 1
        sock.close()


async def test_a_client_that_reads_keeps_up_through_a_burst() -> None:
    count = 30_000
    async with running_server() as server:  # the engine's listeners buffer 4096 messages
        engine = server.engine
        received = 0
        async with server.websocket("/events") as ws:
            with trio.fail_after(5):
                while len(engine.listeners) < 1:
                    await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    nonlocal received
                    with trio.fail_after(60):
                        while True:
                            message = json.loads(await ws.get_message())
                            if message["message_type"] == "burst":
                                received += 1
                            elif message["message_type"] == "burst-end":
                                return

                nursery.start_soon(read)
                for index in range(count):  # all at once, with no checkpoint in between
                    engine.publish(Event("burst", {"n": index}))
                engine.publish(Event("burst-end"))
    assert received == count
    assert engine.dropped_listeners == 0


def test_the_policy_is_checked() -> None:
    from engine._websocket import SlowConsumerPolicy

    with pytest.raises(ValueError, match=r"^max_pending_bytes must be a whole number >= 1, got 0$"):
        SlowConsumerPolicy(max_pending_bytes=0)
    with pytest.raises(ValueError, match=r"^max_pending_age must be > 0 seconds, got -1$"):
        SlowConsumerPolicy(max_pending_age=-1)


async def test_without_the_frames_extension_the_standard_send_is_used() -> None:
    """Any ASGI server will do: without phasebus's extension, frames go as websocket.send."""
    from engine import open_engine
    from engine._server import FRAMES_EXTENSION, serve_app
    from engine._web import create_app

    async with open_engine() as engine:
        app = create_app(engine, max_pending_bytes=64 * 1024)
        sent: list[str] = []

        async def plain(scope: Any, receive: Any, send: Any) -> None:
            scope = {**scope, "extensions": dict(scope.get("extensions") or {})}
            scope["extensions"].pop(FRAMES_EXTENSION, None)

            async def watch(message: Any) -> None:
                sent.append(message["type"])
                await send(message)

            await app(scope, receive, watch)

        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_app, plain, port=0))
            host, port = url.removeprefix("http://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            async with trio.open_nursery() as client:
                ws = await trio_websocket.wrap_client_stream(client, stream, host, "/events")
                with trio.fail_after(5):
                    while not engine.listeners:
                        await trio.sleep(0.01)
                for index in range(100):
                    engine.publish(Event("plain", {"n": index}))
                got = []
                with trio.fail_after(5):
                    while len(got) < 100:
                        message = json.loads(await ws.get_message())
                        if message["message_type"] == "plain":
                            got.append(message["data"]["n"])
                await ws.aclose()
                client.cancel_scope.cancel()
            await stream.aclose()
            nursery.cancel_scope.cancel()
        app.close()
    assert got == list(range(100))
    assert "websocket.send" in sent
    assert FRAMES_EXTENSION not in sent


async def test_a_burst_is_encoded_once_and_sent_in_one_event() -> None:
    """Messages buffered for a connection go to the server together, as shared frames."""
    from engine import open_engine
    from engine._server import FRAMES_EXTENSION, serve_app
    from engine._web import create_app

    async with open_engine() as engine:
        app = create_app(engine)
        batches: list[list[bytes]] = []

        async def watching(scope: Any, receive: Any, send: Any) -> None:
            async def watch(message: Any) -> None:
                if message["type"] == FRAMES_EXTENSION:
                    batches.append(list(message["frames"]))
                await send(message)

            await app(scope, receive, watch)

        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_app, watching, port=0))
            host, port = url.removeprefix("http://").rsplit(":", 1)
            streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(2)]
            async with trio.open_nursery() as clients:
                sockets = [
                    await trio_websocket.wrap_client_stream(clients, s, host, "/events?show=burst")
                    for s in streams
                ]
                with trio.fail_after(5):
                    while len(engine.listeners) < 2:
                        await trio.sleep(0.01)
                for index in range(1000):  # no checkpoint: all buffered before a sender runs
                    engine.publish(Event("burst", {"n": index}))
                for ws in sockets:
                    with trio.fail_after(5):
                        got = [json.loads(await ws.get_message())["data"]["n"] for _ in range(1000)]
                    assert got == list(range(1000))
                    await ws.aclose()
                clients.cancel_scope.cancel()
            for stream in streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()
        app.close()
    assert [len(batch) for batch in batches] == [1000, 1000]  # one event per connection
    assert all(a is b for a, b in zip(batches[0], batches[1], strict=True))  # encoded once
