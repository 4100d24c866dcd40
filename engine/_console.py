"""The web console's routes: its files, its diagrams and its sign-in.

The console is a page (``engine/console/``: HTML, CSS and a little
JavaScript, shipped as package data and fetched from nowhere else) that reads
the same API as every other client: ``GET /tasks``, ``GET /workflows``,
``GET /subscribers``, ``POST /workflow/{id}/run``, ``DELETE /task/{id}`` and
the bus over the WebSocket ``/events``. This module adds what only the page
needs:

- ``GET /`` and ``GET /ui`` redirect to ``/ui/``; ``GET /ui/`` is the page and
  ``GET /ui/<file>`` its files;
- ``GET /ui/diagram/{workflow}.svg``: the workflow's state machine drawn by
  :func:`engine._svg.state_svg`;
- ``GET /ui/listeners``: the listeners connected to the bus (``listeners``:
  id, subscriber id, message types or null for all) and how many were
  dropped for being too slow (``dropped``);
- ``GET /ui/schedules``: the next :data:`NEXT_FIRE_TIMES` fire times of each
  scheduled workflow, from the schedules in force (``next``: id to UTC times);
- ``POST /ui/sign-in`` (body ``{"psk": "...", "expires_in": seconds?}``):
  with a pre-shared key, answers a token like the ones Resoto's clients make
  (HS256 over a key derived from the PSK, ``exp`` in ``expires_in`` seconds,
  at most and by default :data:`TOKEN_LIFETIME`) with ``expires_at`` (Unix
  time). The page keeps the token in memory only and sends it as
  ``Authorization: Bearer``; ``/ui/?session=SECONDS`` asks for a shorter one.

The page, its files and the sign-in need no token (they hold no data); the
diagrams and the whole API do. A browser cannot set headers on a WebSocket,
so for ``/events`` alone the token may come as a WebSocket subprotocol: the
page offers ``phasebus.console`` and ``phasebus.token.<jwt>`` and the server
accepts ``phasebus.console``. The token is checked exactly like a bearer
token, and such a connection ends when its token expires; other clients and
other paths are not affected.

A wrong key is refused with 401 after a pause of :data:`WRONG_KEY_PAUSE`
seconds, one wrong key at a time, so keys cannot be guessed quickly.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import time
from collections.abc import Mapping
from typing import Any

import jwt
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from ._auth import bearer_token, make_token
from ._engine import Engine
from ._json import JSONInputError, parse_json
from ._svg import state_svg

logger = logging.getLogger(__name__)

#: The close code of a console WebSocket whose token expired (policy violation).
POLICY_VIOLATION = 1008

#: The close reason of a console WebSocket whose token expired.
EXPIRED = "token expired"

#: How many next fire times ``GET /ui/schedules`` gives per workflow.
NEXT_FIRE_TIMES = 5

#: Where the page lives.
PREFIX = "/ui/"

#: Seconds a token from the sign-in is valid (the page then asks for the key again).
TOKEN_LIFETIME = 900.0

#: Seconds a wrong key waits before it is refused (one at a time).
WRONG_KEY_PAUSE = 1.0

#: The subprotocol the console's WebSocket offers, and the prefix of the one that carries its token.
SUBPROTOCOL = "phasebus.console"
TOKEN_SUBPROTOCOL = "phasebus.token."

#: The page's files and their content types.
FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

#: Paths served without a token: the page and its files hold no data.
PUBLIC_PATHS = frozenset({"/", "/ui", PREFIX, PREFIX + "sign-in", *(PREFIX + f for f in FILES)})

_HEADERS = {
    # everything the page loads comes from this server; it opens WebSockets only to it
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_MAX_PSK = 4096


def _error(status: int, error: str, *problems: str) -> JSONResponse:
    return JSONResponse({"error": error, "problems": list(problems)}, status)


class Console:
    """The console's routes over an engine, and how its requests authenticate.

    Args:
        engine: the engine whose workflows are drawn.
        psk: the pre-shared key, or None when the API is open.
    """

    def __init__(self, engine: Engine, *, psk: str | None) -> None:
        self.engine = engine
        self._psk = psk
        self._wrong_key = trio.Lock()
        self._files = importlib.resources.files("engine") / "console"

    def routes(self) -> list[BaseRoute]:
        """Return the HTTP routes of the console."""
        return [
            Route("/", self.to_console, methods=["GET"]),
            Route("/ui", self.to_console, methods=["GET"]),
            Route(PREFIX, self.page, methods=["GET"]),
            Route(PREFIX + "sign-in", self.sign_in, methods=["POST"]),
            Route(PREFIX + "diagram/{workflow}.svg", self.diagram, methods=["GET"]),
            Route(PREFIX + "listeners", self.listeners, methods=["GET"]),
            Route(PREFIX + "schedules", self.schedules, methods=["GET"]),
            Route(PREFIX + "{name}", self.file, methods=["GET"]),
        ]

    # ------------------------------------------------------------ authentication

    @staticmethod
    def is_public(scope: Scope) -> bool:
        """Tell whether a request is one of the console's that needs no token."""
        return scope["type"] == "http" and scope["path"] in PUBLIC_PATHS

    @staticmethod
    def offers_token(scope: Scope) -> bool:
        """Tell whether a WebSocket is the console's: it offers the console's subprotocols.

        Such a connection is authorized at the upgrade by the token it offers,
        never by a first message.
        """
        if scope["type"] != "websocket":
            return False
        return any(
            offered == SUBPROTOCOL or offered.startswith(TOKEN_SUBPROTOCOL)
            for offered in scope.get("subprotocols") or ()
        )

    @staticmethod
    def token(scope: Scope, authorization: str | None) -> str:
        """Return the token a request carries.

        The token is the ``Authorization: Bearer`` one; a WebSocket to
        ``/events`` without that header may carry it as the subprotocol
        ``phasebus.token.<jwt>`` instead.

        Raises:
            AuthError: the request carries no token.
        """
        if authorization is None and scope["type"] == "websocket" and scope["path"] == "/events":
            for offered in scope.get("subprotocols") or ():
                if offered.startswith(TOKEN_SUBPROTOCOL):
                    return str(offered[len(TOKEN_SUBPROTOCOL) :])
        return bearer_token(authorization)

    @staticmethod
    def expiring(
        scope: Scope,
        receive: Receive,
        send: Send,
        authorization: str | None,
        claims: Mapping[str, Any],
    ) -> tuple[Receive, Send]:
        """Return ``receive`` and ``send``, made to close a console's WebSocket when its
        token expires.

        Only a WebSocket whose token came as a subprotocol is closed (1008,
        ``token expired``): the page signs in again. Other clients keep their
        connections as the protocol has it.
        """
        if scope["type"] != "websocket" or authorization is not None:
            return receive, send
        deadline = trio.current_time() + (float(claims["exp"]) - time.time())
        closed = False

        async def receive_until_expiry() -> ASGIMessage:
            nonlocal closed
            with trio.move_on_at(deadline):
                return await receive()
            if not closed:
                logger.info("closing a console WebSocket: its token expired")
                await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": EXPIRED})
                closed = True
            return {"type": "websocket.disconnect", "code": POLICY_VIOLATION}

        async def send_until_closed(message: ASGIMessage) -> None:
            if not closed:  # nothing goes out after the close frame
                await send(message)

        return receive_until_expiry, send_until_closed

    @staticmethod
    def accepting(scope: Scope, send: Send) -> Send:
        """Return ``send``, made to accept the console's subprotocol when the client offers it."""
        if scope["type"] != "websocket" or SUBPROTOCOL not in (scope.get("subprotocols") or ()):
            return send

        async def send_accepting(message: ASGIMessage) -> None:
            if message["type"] == "websocket.accept" and "subprotocol" not in message:
                message = {**message, "subprotocol": SUBPROTOCOL}
            await send(message)

        return send_accepting

    # ------------------------------------------------------------ routes

    async def to_console(self, request: Request) -> Response:
        return RedirectResponse(PREFIX, 307)

    async def page(self, request: Request) -> Response:
        return self._file("index.html")

    async def file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in FILES:
            return _error(404, f"no console file {name!r}")
        return self._file(name)

    def _file(self, name: str) -> Response:
        body = (self._files / name).read_bytes()
        return Response(body, headers={**_HEADERS, "Content-Type": FILES[name]})

    async def diagram(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow"]
        workflow = self.engine.workflows.get(workflow_id)
        if workflow is None:
            return _error(404, f"unknown workflow {workflow_id!r}")
        return Response(
            state_svg(workflow),
            headers={**_HEADERS, "Content-Type": "image/svg+xml; charset=utf-8"},
        )

    async def listeners(self, request: Request) -> Response:
        listeners = [
            {
                "id": listener.id,
                "subscriber_id": listener.subscriber_id,
                "message_types": None
                if listener.message_types is None
                else sorted(listener.message_types),
            }
            for listener in self.engine.listeners
        ]
        return JSONResponse({"listeners": listeners, "dropped": self.engine.dropped_listeners})

    async def schedules(self, request: Request) -> Response:
        engine = self.engine
        now = engine.clock.now()
        out = {}
        for workflow_id in sorted(engine.workflows):
            times = sorted(
                {
                    moment
                    for trigger in engine.schedules(workflow_id)
                    for moment in trigger.next_fire_times(now, NEXT_FIRE_TIMES)
                }
            )[:NEXT_FIRE_TIMES]
            if times:
                out[workflow_id] = [moment.isoformat() for moment in times]
        return JSONResponse({"now": now.isoformat(), "next": out})

    async def sign_in(self, request: Request) -> Response:
        key = self._psk
        if key is None:
            return _error(404, "the server has no pre-shared key: the console needs no sign-in")
        try:
            body: Any = parse_json(await request.body(), path="body")
        except JSONInputError as error:
            return _error(400, "invalid JSON body", *(str(p) for p in error.problems))
        psk = body.get("psk") if isinstance(body, dict) else None
        if not isinstance(psk, str) or not psk:
            return _error(400, "invalid sign-in", "psk: must be a non-empty string")
        lifetime = body.get("expires_in", TOKEN_LIFETIME)
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not 1 <= lifetime <= TOKEN_LIFETIME
        ):
            return _error(
                400,
                "invalid sign-in",
                f"expires_in: must be from 1 to {TOKEN_LIFETIME:g} seconds, got {lifetime!r}",
            )
        if len(psk) > _MAX_PSK or not hmac.compare_digest(psk.encode("utf-8"), key.encode("utf-8")):
            async with self._wrong_key:
                await trio.sleep(WRONG_KEY_PAUSE)
            return _error(401, "wrong pre-shared key", "psk: does not match the server's key")
        token = await trio.to_thread.run_sync(lambda: make_token(key, expires_in=lifetime))
        expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
        return JSONResponse(
            {"token": token, "expires_at": expires_at, "expires_in": lifetime},
            headers={"Cache-Control": "no-store"},
        )
