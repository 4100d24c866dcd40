"""A real phasebus server on 127.0.0.1 (port 0) and clients for it, for the API tests."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio
import trio_websocket

from engine import Engine, Step, Store, Workflow, open_engine
from engine._server import ServerLimits, serve_app
from engine._web import PhasebusApp, create_app
from machines import COLLECT_AND_CLEANUP


def quick_workflow(
    workflow_id: str = "quick", steps: Sequence[str] = ("a", "b"), timeout: float = 10.0
) -> Workflow:
    """A workflow of a few perform-action steps."""
    return Workflow(id=workflow_id, steps=[Step(name, timeout=timeout) for name in steps])


@attrs.define
class Server:
    engine: Engine
    app: PhasebusApp
    url: str
    http: httpx.AsyncClient
    headers: list[tuple[bytes, bytes]]

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @asynccontextmanager
    async def websocket(
        self, path: str, *, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        """Open a WebSocket with trio-websocket (on a stream of ours: the library leaves
        its own client stream open when the server closes first)."""
        host, port = self.address
        stream = await trio.open_tcp_stream(host, port)
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    path,
                    extra_headers=list(self.headers if headers is None else headers),
                )
                try:
                    yield ws
                finally:
                    with trio.move_on_after(2):
                        await ws.aclose()  # cancelled at once when the caller is
                    nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()

    async def rejection(
        self, path: str, *, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> trio_websocket.ConnectionRejected:
        """Try to open a WebSocket that the server must refuse; return the refusal."""
        host, port = self.address
        stream = await trio.open_tcp_stream(host, port)
        refusals: list[trio_websocket.ConnectionRejected] = []
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    path,
                    extra_headers=list(self.headers if headers is None else headers),
                )
                await ws.aclose()
        except* trio_websocket.ConnectionRejected as group:
            refusals.extend(group.exceptions)  # type: ignore[arg-type]
        finally:
            await stream.aclose()
        assert refusals, f"the server accepted a WebSocket on {path}"
        return refusals[0]

    async def subscribe(
        self, subscriber_id: str, *message_types: str, timeout: float = 30, wait: bool = True
    ) -> None:
        for message_type in message_types:
            answer = await self.http.post(
                f"/subscriber/{subscriber_id}/{message_type}",
                params={"timeout": str(timeout), "wait_for_completion": str(wait)},
            )
            assert answer.status_code == 200, answer.text


@asynccontextmanager
async def running_server(
    *,
    workflows: Iterable[Workflow] = (COLLECT_AND_CLEANUP,),
    psk: str | None = None,
    token: str | None = None,
    listener_buffer: int = 4096,
    max_body_size: int = 64 * 1024,
    max_message_size: int = 64 * 1024,
    close_grace: float = 0.2,
    max_pending_bytes: int = 16 * 1024 * 1024,
    max_pending_age: float = 30.0,
    limits: ServerLimits | None = None,
    store: Store | None = None,
) -> AsyncIterator[Server]:
    """Run an engine and its API on 127.0.0.1, port 0, with an HTTP client.

    ``close_grace`` is the server's ``close_timeout``: how long a closing
    WebSocket may take its close frame before its socket is aborted.
    """
    async with open_engine(
        workflows=workflows, listener_buffer=listener_buffer, store=store
    ) as engine:
        app = create_app(
            engine,
            psk=psk,
            max_body_size=max_body_size,
            max_message_size=max_message_size,
            max_pending_bytes=max_pending_bytes,
            max_pending_age=max_pending_age,
        )
        limits = limits or ServerLimits(close_timeout=close_grace)
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        try:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    functools.partial(
                        serve_app, app, port=0, limits=limits, max_message_size=max_message_size
                    )
                )
                async with httpx.AsyncClient(
                    base_url=url,
                    headers={k.decode(): v.decode() for k, v in headers},
                    timeout=5,
                ) as http:
                    yield Server(engine, app, url, http, headers)
                nursery.cancel_scope.cancel()
        finally:
            app.close()


async def receive_json(ws: trio_websocket.WebSocketConnection, timeout: float = 5) -> Any:
    """Receive one message and parse it."""
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def answer_actions(
    ws: trio_websocket.WebSocketConnection,
    *,
    seen: list[dict[str, Any]] | None = None,
    progress: bool = False,
) -> None:
    """Answer every action with action_done (echoing its data) until the connection closes."""
    try:
        while True:
            message = json.loads(await ws.get_message())
            if seen is not None:
                seen.append(message)
            if message["kind"] != "action":
                continue
            data = dict(message["data"])
            if progress:
                await ws.send_message(
                    json.dumps(
                        {
                            "kind": "action_progress",
                            "message_type": message["message_type"],
                            "data": {
                                **data,
                                "progress": {
                                    "kind": "progress",
                                    "name": "eu-west-1",
                                    "path": ["aws", "123"],
                                    "current": 1,
                                    "total": 2,
                                },
                                "at": "2023-11-04T12:33:40Z",
                            },
                        }
                    )
                )
            await ws.send_message(
                json.dumps(
                    {"kind": "action_done", "message_type": message["message_type"], "data": data}
                )
            )
    except trio_websocket.ConnectionClosed:
        return


async def events_until(
    ws: trio_websocket.WebSocketConnection,
    message_type: str,
    *,
    timeout: float = 10,
) -> list[dict[str, Any]]:
    """Collect messages until one of ``message_type`` arrives (included)."""
    messages = []
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            messages.append(message)
            if message["message_type"] == message_type:
                return messages
