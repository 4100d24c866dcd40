"""Measure the network API against a bare reference server, in the same run.

Run ``python benchmarks/api_bench.py`` (``--quick`` for a run of about a minute).
Clients run in separate processes; everything is on 127.0.0.1. The last line
is machine-readable::

    RESULT ws_us_per_step=... echo_us=... ws_ratio=... fanout_events_per_s=...
    fanout_bare_events_per_s=... fanout_vs_bare=... load_frames_per_s=...
    load_dropped=...

(on one line).

The reference is a bare server on the stack phasebus served with before its
own server: Hypercorn's HTTP/1.1 and WebSocket protocol on trio listeners,
with Starlette routing. It is kept here, unchanged, as the fixed baseline.

* ``ws_us_per_step``: wall time per step of ``collect_and_cleanup`` run after
  run, with one external subscriber (trio-websocket, in another process)
  answering every action at once over a loopback WebSocket.
* ``echo_us``: one WebSocket round trip (a frame of an answer's size, echoed)
  on the bare reference server with the same client library;
  ``ws_ratio`` = ws_us_per_step / echo_us.
* ``fanout_events_per_s``: frames per second delivered in total to 100
  ``/events`` listeners while the engine runs ``collect_and_cleanup`` with an
  in-process worker; the clients (another process) count frames between a
  start and an end marker event.
* ``fanout_bare_events_per_s``: the same frames, pushed to 100 connections by
  the bare reference server with no engine (one sender per connection);
  ``fanout_vs_bare`` = phasebus / bare.
* ``load_frames_per_s`` and ``load_dropped``: 200 ``/events`` listeners with
  no filter, each reading as fast as it can (another process), while 100
  runs of a ``surpass = "parallel"`` workflow start at once and each waits
  for 50 subscribers that answer at once (in-process listeners): the frames
  per second the 200 listeners got, and how many of them were dropped as too
  slow (phasebus's counter).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, LifespanState
from hypercorn.utils import wrap_app
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import Engine, Event, Message, Step, Workflow, open_engine
from engine._serve import serve_app
from engine._web import create_app
from machines import COLLECT_AND_CLEANUP

STEPS = [step.message_type for step in COLLECT_AND_CLEANUP.steps]
LISTENERS = 100
SUBSCRIBER = "bench.worker"
START, END = "bench_start", "bench_end"
#: An answer as the subscriber sends it, for the echo's frame size.
ECHO_FRAME = json.dumps(
    {
        "kind": "action_done",
        "message_type": "post_collect",
        "data": {
            "workflow": "collect_and_cleanup",
            "task": "5f0c54a2-0b7e-4b83-9a51-0d5c3c1d2e3f",
            "step": "post_collect",
        },
    }
)


async def serve_reference(
    app: ASGIApp, *, port: int, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on the reference stack: Hypercorn's protocol on trio listeners."""
    config = HypercornConfig()
    config.websocket_max_message_size = 1024 * 1024
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    context = WorkerContext(None)
    wrapped = wrap_app(cast("ASGIFramework", app), config.wsgi_max_body_size, "asgi")
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")

    async def handle(stream: trio.SocketStream) -> None:
        state: LifespanState = {}
        await TCPServer(wrapped, config, context, state, stream).run()  # type: ignore[arg-type]

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            host, bound = listeners[0].socket.getsockname()[:2]
            task_status.started(f"http://{host}:{bound}")
    finally:
        for listener in listeners:
            await listener.aclose()


def _encode(message: Message) -> str:
    return json.dumps(message.to_json(), separators=(",", ":"), default=str)


class _Endpoint:
    """A raw ASGI WebSocket endpoint, as phasebus's own."""

    def __init__(self, handle: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send)


class BareServer:
    """The reference stack without an engine: an echo endpoint and a fan-out of fixed frames."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames
        self.connected = 0
        self.go = trio.Event()
        self.app = Starlette(
            routes=[
                WebSocketRoute("/echo", _Endpoint(self.echo)),
                WebSocketRoute("/events", _Endpoint(self.fanout)),
            ]
        )

    async def echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            await send({"type": "websocket.send", "text": message.get("text")})

    async def fanout(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        self.connected += 1

        async def sender() -> None:
            await self.go.wait()
            for text in self.frames:
                await send({"type": "websocket.send", "text": text})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            while (await receive())["type"] == "websocket.receive":
                pass
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- clients (other processes)


async def client_answer(url: str) -> None:
    """Answer every action with action_done until the server closes the connection."""
    import trio_websocket

    async with trio_websocket.open_websocket_url(f"{url}/subscriber/{SUBSCRIBER}/handle") as ws:
        try:
            while True:
                message = json.loads(await ws.get_message())
                if message["kind"] == "action":
                    message["kind"] = "action_done"
                    await ws.send_message(json.dumps(message))
        except trio_websocket.ConnectionClosed:
            pass


async def client_echo(url: str, count: int) -> None:
    """Print the mean microseconds of ``count`` echoed round trips (after a warm-up)."""
    import trio_websocket

    async with trio_websocket.open_websocket_url(f"{url}/echo") as ws:
        for _ in range(count // 10):
            await ws.send_message(ECHO_FRAME)
            await ws.get_message()
        start = time.perf_counter()
        for _ in range(count):
            await ws.send_message(ECHO_FRAME)
            await ws.get_message()
        elapsed = time.perf_counter() - start
    print(json.dumps({"echo_us": elapsed / count * 1e6}), flush=True)


def client_fanout(url: str, count: int) -> None:
    """Open ``count`` /events connections and count frames from the start to the end marker.

    A minimal client on plain sockets (server frames are unmasked), so that the
    clients cost little next to the server. Prints the frames counted and the
    seconds from the first start marker to the last end marker.
    """
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    request = (
        f"GET /events HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    selector = selectors.DefaultSelector()
    states = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status + b" ", status
        state = {"sock": sock, "buf": bytearray(head.split(b"\r\n\r\n", 1)[1]), "count": 0}
        state["started"] = state["ended"] = False
        states.append(state)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, state)
    first = last = 0.0
    open_count = count
    while open_count:
        for key, _ in selector.select(timeout=30):
            state = key.data
            data = state["sock"].recv(1 << 18)
            if not data:
                raise SystemExit("the server closed a connection before the end marker")
            buf = state["buf"]
            buf += data
            offset = 0
            size = len(buf)
            while size - offset >= 2:
                length = buf[offset + 1] & 0x7F
                header = 2
                if length == 126:
                    if size - offset < 4:
                        break
                    length = int.from_bytes(buf[offset + 2 : offset + 4], "big")
                    header = 4
                elif length == 127:
                    if size - offset < 10:
                        break
                    length = int.from_bytes(buf[offset + 2 : offset + 10], "big")
                    header = 10
                end = offset + header + length
                if end > size:
                    break
                start = offset + header
                if not state["started"]:
                    if buf.find(START.encode(), start, end) >= 0:
                        state["started"] = True
                        first = first or time.perf_counter()
                else:
                    state["count"] += 1
                    if buf.find(END.encode(), start, end) >= 0:
                        state["ended"] = True
                        last = time.perf_counter()
                        selector.unregister(state["sock"])
                        open_count -= 1
                        break
                offset = end
            del buf[:offset]
    total = sum(state["count"] for state in states)
    for state in states:
        state["sock"].close()
    print(json.dumps({"frames": total, "seconds": last - first}), flush=True)


def client_main(mode: str, url: str, count: int) -> None:
    if mode == "answer":
        trio.run(client_answer, url)
    elif mode == "echo":
        trio.run(client_echo, url, count)
    else:
        client_fanout(url, count)


# ---------------------------------------------------------------- the measurements


def _client(mode: str, url: str, count: int = 0) -> subprocess.Popen[str]:
    ws_url = "ws" + url.removeprefix("http")
    return subprocess.Popen(
        [sys.executable, __file__, "--client", mode, ws_url, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


async def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


async def _client_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    output = await trio.to_thread.run_sync(process.communicate)
    if process.returncode != 0:
        raise SystemExit(f"a client process failed with status {process.returncode}")
    result: dict[str, Any] = json.loads(output[0].strip().splitlines()[-1])
    return result


async def ws_per_step(runs: int) -> float:
    """Microseconds per step of collect_and_cleanup answered by an external subscriber."""
    async with open_engine(workflows=[COLLECT_AND_CLEANUP]) as engine:
        for step in STEPS:
            engine.subscribe(SUBSCRIBER, step, timeout=60)
        app = create_app(engine)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_app, app, port=0))
            process = _client("answer", url)
            await _wait_for(
                lambda: any(li.subscriber_id == SUBSCRIBER for li in engine.listeners), "client"
            )
            for _ in range(3):
                await engine.run_workflow("collect_and_cleanup")
            start = time.perf_counter()
            for _ in range(runs):
                await engine.run_workflow("collect_and_cleanup")
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        app.close()
    process.wait(10)
    return elapsed / (runs * len(STEPS)) * 1e6


async def echo_round_trip(count: int) -> float:
    """Microseconds per echoed frame on the bare server."""
    bare = BareServer([])
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve_reference, bare.app, port=0))
        result = await _client_result(_client("echo", url, count))
        nursery.cancel_scope.cancel()
    return float(result["echo_us"])


async def _run_times(engine: Engine, workflow_id: str, runs: int) -> None:
    for _ in range(runs):
        await engine.run_workflow(workflow_id)


async def fanout_phasebus(runs: int) -> tuple[float, list[str]]:
    """Frames per second to 100 /events listeners during ``runs`` runs; and the frames sent."""

    async def worker(message: Message) -> None:
        pass  # returning answers action_done

    copies = [attrs.evolve(COLLECT_AND_CLEANUP, id=f"collect_and_cleanup_{i}") for i in range(4)]
    async with open_engine(workflows=copies, listener_buffer=1 << 22) as engine:
        for step in STEPS:
            engine.subscribe("worker", step, timeout=60)
        await engine.start_listener(worker, subscriber_id="worker")
        app = create_app(engine)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_app, app, port=0))
            process = _client("fanout", url, LISTENERS)
            await _wait_for(lambda: len(engine.listeners) >= LISTENERS + 1, "clients")
            async with engine.open_listener(buffer=1 << 22) as capture:
                engine.publish(Event(START))
                async with trio.open_nursery() as runners:
                    for copy in copies:
                        runners.start_soon(_run_times, engine, copy.id, runs // len(copies))
                engine.publish(Event(END))
                frames = []
                while not frames or START not in frames[0]:
                    frames = [_encode(await capture.receive())]
                while END not in frames[-1]:
                    frames.append(_encode(await capture.receive()))
            result = await _client_result(process)
            nursery.cancel_scope.cancel()
        app.close()
    expected = LISTENERS * (len(frames) - 1)
    if result["frames"] != expected:
        raise SystemExit(f"phasebus fan-out: {result['frames']} frames, expected {expected}")
    return result["frames"] / result["seconds"], frames


async def fanout_bare(frames: list[str]) -> float:
    """Frames per second when a bare server pushes ``frames`` to 100 connections."""
    bare = BareServer(frames)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve_reference, bare.app, port=0))
        process = _client("fanout", url, LISTENERS)
        await _wait_for(lambda: bare.connected >= LISTENERS, "clients")
        bare.go.set()
        result = await _client_result(process)
        nursery.cancel_scope.cancel()
    expected = LISTENERS * (len(frames) - 1)
    if result["frames"] != expected:
        raise SystemExit(f"bare fan-out: {result['frames']} frames, expected {expected}")
    return float(result["frames"] / result["seconds"])


LOAD_LISTENERS = 200
LOAD_RUNS = 100
LOAD_SUBSCRIBERS = 50
LOAD_WORKFLOW = Workflow(
    id="parallel_load", surpass="parallel", steps=[Step("load_step", timeout=120)]
)


async def load_case() -> tuple[float, int, int]:
    """The load case: frames per second to 200 /events listeners, drops, and frames per listener."""

    async def answer(message: Message) -> None:
        pass  # returning answers action_done

    async with open_engine(workflows=[LOAD_WORKFLOW]) as engine:
        for index in range(LOAD_SUBSCRIBERS):
            engine.subscribe(f"load-{index}", "load_step", timeout=120)
            await engine.start_listener(answer, subscriber_id=f"load-{index}")
        app = create_app(engine)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_app, app, port=0))
            process = _client("fanout", url, LOAD_LISTENERS)
            await _wait_for(
                lambda: len(engine.listeners) >= LOAD_LISTENERS + LOAD_SUBSCRIBERS, "clients", 60
            )
            async with engine.open_listener(buffer=1 << 22) as capture:
                engine.publish(Event(START))
                task_ids = [
                    engine.start_workflow(LOAD_WORKFLOW.id).task_id for _ in range(LOAD_RUNS)
                ]
                for task_id in task_ids:
                    assert task_id is not None
                    await engine.wait_task(task_id)
                engine.publish(Event(END))
                count = 0
                while (await capture.receive()).message_type != START:
                    pass
                while (await capture.receive()).message_type != END:
                    count += 1
            result = await _client_result(process)
            dropped = engine.dropped_listeners
            nursery.cancel_scope.cancel()
        app.close()
    if not dropped and result["frames"] != LOAD_LISTENERS * (count + 1):
        raise SystemExit(f"load case: {result['frames']} frames, expected {count + 1} each")
    return result["frames"] / result["seconds"], dropped, count + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about a minute)")
    parser.add_argument("--client", nargs=3, metavar=("MODE", "URL", "COUNT"), help="internal")
    args = parser.parse_args(argv)
    if args.client:
        mode, url, count = args.client
        client_main(mode, url, int(count))
        return 0
    runs = 100 if args.quick else 400
    echoes = 2000 if args.quick else 8000
    fan_runs = 32 if args.quick else 100
    repeats = 3 if args.quick else 5

    ws_runs, echo_runs = [], []
    for _ in range(repeats):
        ws_runs.append(trio.run(ws_per_step, runs))
        echo_runs.append(trio.run(echo_round_trip, echoes))
    ws_us, echo_us = statistics.median(ws_runs), statistics.median(echo_runs)
    print(f"collect_and_cleanup over a WebSocket, {runs} runs x {repeats}:")
    print(f"  phasebus {ws_us:8.1f} us/step (one external subscriber)")
    print(f"  echo     {echo_us:8.1f} us/round trip (bare reference server, same client)")
    print(f"  ratio    {ws_us / echo_us:8.2f}")

    fan_runs_phasebus, fan_runs_bare = [], []
    for _ in range(max(2, repeats - 1)):
        rate, frames = trio.run(fanout_phasebus, fan_runs)
        fan_runs_phasebus.append(rate)
        fan_runs_bare.append(trio.run(fanout_bare, frames))
    fan, bare = statistics.median(fan_runs_phasebus), statistics.median(fan_runs_bare)
    print(f"fan-out to {LISTENERS} /events listeners, {fan_runs} runs ({len(frames)} frames each):")
    print(f"  phasebus {fan:10.0f} frames/s")
    print(f"  bare     {bare:10.0f} frames/s (same frames, reference stack, no engine)")
    print(f"  ratio    {fan / bare:10.2f}")

    load_rate, dropped, per_listener = trio.run(load_case)
    print(
        f"load: {LOAD_LISTENERS} /events listeners reading everything, {LOAD_RUNS} parallel runs"
        f" each waiting for {LOAD_SUBSCRIBERS} subscribers:"
    )
    print(f"  {load_rate:10.0f} frames/s ({per_listener} frames per listener)")
    print(f"  {dropped:10d} listeners dropped as too slow")
    print(
        f"RESULT ws_us_per_step={ws_us:.2f} echo_us={echo_us:.2f} ws_ratio={ws_us / echo_us:.3f} "
        f"fanout_events_per_s={fan:.0f} fanout_bare_events_per_s={bare:.0f} "
        f"fanout_vs_bare={fan / bare:.3f} load_frames_per_s={load_rate:.0f} "
        f"load_dropped={dropped}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
