"""Running Resoto 3.9.0's own programs against a real phasebus server.

Resoto's worker, metrics exporter and client library pin older releases of
packages phasebus needs newer, so ``.ci/run`` installs them in a virtual
environment of their own, ``.venv-resoto`` (or ``$PHASEBUS_RESOTO_VENV``). The
tests start them as subprocesses. Outside CI a test is skipped, with the
reason, when that environment is missing; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import Engine, open_engine
from engine._catalog import load_catalog
from engine._config import CORE_CONFIG
from engine._serve import serve_app
from engine._store import SQLiteStore
from engine._tls import Authority
from engine._web import PhasebusApp, create_app
from machines import BUILTIN_WORKFLOWS

ROOT = Path(__file__).resolve().parent.parent


def resoto_venv() -> Path:
    """Return the virtual environment with Resoto 3.9.0, or skip (fail under CI) without it."""
    venv = Path(os.environ.get("PHASEBUS_RESOTO_VENV", ROOT / ".venv-resoto"))
    wanted = [venv / "bin" / name for name in ("python", "resotoworker", "resotometrics")]
    missing = [str(path) for path in wanted if not path.exists()]
    if missing:
        reason = (
            f"Resoto 3.9.0 is not installed ({', '.join(missing)} missing): .ci/run installs it"
            " into .venv-resoto"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return venv


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class Recorder:
    """An ASGI wrapper that records every request: (method or WS, path, status)."""

    app: ASGIApp
    seen: list[tuple[str, str, int]] = attrs.field(factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
        path = scope["path"]

        async def recording_send(message: Message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                self.seen.append((method, path, int(message["status"])))
            elif kind == "websocket.accept":
                self.seen.append((method, path, 101))
            await send(message)

        await self.app(scope, receive, recording_send)

    def statuses(self, method: str, path: str) -> list[int]:
        return [status for m, p, status in self.seen if (m, p) == (method, path)]


@attrs.define
class ResotoServer:
    engine: Engine
    app: PhasebusApp
    url: str
    recorder: Recorder
    authority: Authority | None

    @property
    def ca_file(self) -> Path | None:
        return None if self.authority is None else self.authority.certificate_file


@asynccontextmanager
async def resoto_server(
    tmp_path: Path, *, tls: bool = False, psk: str | None = None
) -> AsyncIterator[ResotoServer]:
    """Serve the built-in workflows as ``phasebus serve`` does, with a store in tmp_path."""
    store = SQLiteStore(tmp_path / "store.sqlite3")
    try:
        catalog = load_catalog(None, builtins=BUILTIN_WORKFLOWS.values())
        async with open_engine(workflows=list(catalog.workflows.values()), store=store) as engine:
            # no hourly run of collect_and_cleanup in the middle of a test
            engine.configs.put(
                CORE_CONFIG, {"workflows": {"collect_and_cleanup": {"schedule": None}}}
            )
            authority = Authority.load_or_create(tmp_path / "tls") if tls else None
            app = create_app(engine, psk=psk, tls=authority)
            recorder = Recorder(app)
            context = None if authority is None else authority.server_context()
            try:
                async with trio.open_nursery() as nursery:
                    url = await nursery.start(
                        functools.partial(serve_app, recorder, port=0, ssl_context=context)
                    )
                    yield ResotoServer(engine, app, url, recorder, authority)
                    nursery.cancel_scope.cancel()
            finally:
                app.close()
    finally:
        store.close()


async def stop_process(process: trio.Process) -> None:
    """Stop one of Resoto's programs: SIGTERM (they shut their threads and helper
    processes down, which takes a few seconds), then SIGKILL to its process group
    (resotoworker makes its own, for its helpers) if it is still there after 20 s."""
    process.terminate()
    with trio.move_on_after(20):
        await process.wait()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        group = os.getpgid(process.pid)
        if group == process.pid and group != os.getpgid(0):
            os.killpg(group, signal.SIGKILL)
    process.kill()


@asynccontextmanager
async def resoto_process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[trio.Process]:
    """Run one of Resoto's programs until the block ends (then stop it)."""
    with log.open("wb") as output:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    argv,
                    stdout=output,
                    stderr=output,
                    check=False,
                    env={**os.environ, **(env or {})},
                    deliver_cancel=stop_process,
                )
            )
            yield process
            nursery.cancel_scope.cancel()


async def wait_until(condition: Any, what: str, *, timeout: float, log: Path | None = None) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` (and the log's tail)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.1)
        return
    tail = "" if log is None else log.read_text(errors="replace")[-3000:]
    pytest.fail(f"timed out waiting for {what}\n{tail}")
