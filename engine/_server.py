"""phasebus's HTTP/1.1 and WebSocket server: h11 and wsproto behind a thin trio layer.

:func:`serve_app` runs an ASGI 3 application (``http`` and ``websocket``
scopes; no lifespan) on trio listeners. The protocols are h11's and
wsproto's state machines, fed the bytes read and asked for the bytes to
write; this module only moves bytes, keeps time and enforces the
:class:`ServerLimits`:

* a request's headers must arrive within ``header_timeout`` seconds of the
  connection (or of the previous response); else a connection that sent part
  of them gets 408 and is closed, an idle one is just closed;
* a request's whole body must arrive within ``body_timeout`` seconds of its
  headers; else it gets 408 (if no answer has started) and the connection
  closes. A client that goes away mid-body is logged once, at debug level;
* at most ``max_connections`` connections are served at once; one more gets
  503 at once and is closed;
* a WebSocket message longer than ``max_message_size`` bytes closes its
  connection with 1009, decided from the frame header, before the payload
  is read; a text frame that is not UTF-8 closes it with 1007; other
  malformed frames with 1002. After a close (or when the application
  returns), what is still queued has ``close_timeout`` seconds to go out
  before the socket is aborted, so a client that reads nothing is cut off.

Every refusal the server makes itself has a JSON body ``{"error": ...,
"problems": [...]}``. WebSocket scopes offer two extensions:
``websocket.http.response`` (refuse an upgrade with any HTTP answer) and
:data:`FRAMES_EXTENSION`: the event ``{"type": FRAMES_EXTENSION, "frames":
[...]}`` sends complete frames made by :func:`text_frame`, all in one write.
Server frames are not masked, so one frame's bytes can be sent on any number
of connections: a message fanned out is encoded once.
"""

from __future__ import annotations

import contextlib
import errno
import http
import json
import logging
import math
import resource
import ssl
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

import attrs
import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WSRequest
from wsproto.utilities import ProtocolError as WSProtocolError

from ._errors import PhasebusError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The ASGI extension (and event type) that sends pre-encoded WebSocket frames in one write.
FRAMES_EXTENSION = "phasebus.websocket.frames"

#: Files kept free for everything but connections (the store, logs, ...).
_RESERVED_FILES = 64

#: Bytes read at a time.
_READ_SIZE = 65536

# WebSocket close codes (RFC 6455).
_NORMAL = 1000
_PROTOCOL_ERROR = 1002
_INVALID_DATA = 1007
_TOO_BIG = 1009
_INTERNAL_ERROR = 1011


@attrs.frozen
class ServerLimits:
    """What one client may take of the server; every field is checked.

    Args:
        header_timeout: seconds from a connection (or the previous response on
            it) to the end of a request's headers.
        body_timeout: seconds from the end of a request's headers to the end
            of its body.
        max_connections: connections served at once (HTTP and WebSocket);
            one more gets 503 and is closed. Lowered at start to what the
            process's open-file limit allows.
        max_header_size: bytes of a request line and its headers (431 beyond).
        max_message_size: bytes of one WebSocket message (1009 beyond).
        close_timeout: seconds a closing connection has to take what is queued
            for it (its close frame included) before its socket is aborted.
    """

    header_timeout: float = 5.0
    body_timeout: float = 30.0
    max_connections: int = 10_000
    max_header_size: int = 64 * 1024
    max_message_size: int = 1024 * 1024
    close_timeout: float = 2.0

    def __attrs_post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "close_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        for name in ("max_connections", "max_header_size", "max_message_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def text_frame(payload: bytes) -> bytes:
    """Return a final, unmasked WebSocket text frame carrying ``payload`` (UTF-8)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def error_body(error: str, *problems: str) -> bytes:
    """Return the JSON body of an error answer."""
    return json.dumps({"error": error, "problems": list(problems)}).encode()


def _raw_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """Return a whole HTTP/1.1 answer that closes the connection."""
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines += [
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _address(sockname: Any) -> tuple[str, int] | None:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return (str(sockname[0]), int(sockname[1]))
    return None


def _url(sockname: Any, scheme: str) -> str:
    host, port = sockname[0], sockname[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def raise_file_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the limit now in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (OSError, ValueError) as error:  # pragma: no cover - depends on the system
        logger.info("cannot raise the open-file limit: %s", error)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


# ---------------------------------------------------------------- WebSocket frame headers


class _FrameGuard:
    """Read the headers of incoming WebSocket frames to refuse oversized messages early.

    A frame's header announces its payload's length, so a message over the
    limit is refused before its payload is read, however little of it came.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._header = bytearray()
        self._skip = 0  # payload bytes of the current frame still to come
        self._message = 0  # payload bytes of the data message being received

    def _header_size(self) -> int:
        if len(self._header) < 2:
            return 2
        second = self._header[1]
        size = 2 + (4 if second & 0x80 else 0)
        length = second & 0x7F
        return size + (2 if length == 126 else 8 if length == 127 else 0)

    def scan(self, data: bytes) -> tuple[int, str | None]:
        """Return how many bytes of ``data`` may be parsed, and why the rest may not (or None)."""
        position, size = 0, len(data)
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            start = position - len(self._header)
            take = min(self._header_size() - len(self._header), size - position)
            self._header += data[position : position + take]
            position += take
            if len(self._header) < self._header_size():
                continue
            header = self._header
            opcode = header[0] & 0x0F
            length = header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(header[2:4], "big")
            elif length == 127:
                length = int.from_bytes(header[2:10], "big")
            self._header = bytearray()
            if opcode < 8:  # a data frame (control frames are small and checked by wsproto)
                fragment = opcode == 0
                self._message = self._message + length if fragment else length
                if self._message > self.limit:
                    if fragment:
                        why = f"fragmented message over the limit of {self.limit} bytes"
                    else:
                        why = f"message of {length} bytes over the limit of {self.limit} bytes"
                    return max(start, 0), why
            self._skip = length
        return size, None


# ---------------------------------------------------------------- the server


class _Server:
    """Accept connections and hand each to its own :class:`_Connection`."""

    def __init__(self, app: ASGIApp, limits: ServerLimits, ssl_context: ssl.SSLContext | None):
        self.app = app
        self.limits = limits
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        self.active = 0
        self.refusing = 0
        self._last_accept_warning = -math.inf

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections until cancelled; refuse those over the limit with 503."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                now = trio.current_time()
                if now - self._last_accept_warning > 10:
                    self._last_accept_warning = now
                    logger.warning("cannot accept connections: %s (retrying)", error)
                await trio.sleep(0.1)
                continue
            if self.active >= self.limits.max_connections:
                if self.refusing >= 256:
                    await trio.aclose_forcefully(stream)
                else:
                    self.refusing += 1
                    nursery.start_soon(self._refuse_busy, stream)
                continue
            self.active += 1
            nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            await _Connection(self, stream).run()
        except Exception:
            logger.exception("error serving a connection")
        finally:
            self.active -= 1

    async def _refuse_busy(self, stream: trio.SocketStream) -> None:
        body = error_body(
            "too many connections",
            f"server: {self.limits.max_connections} connections in flight, the most it serves",
        )
        try:
            with trio.move_on_after(1):
                await stream.send_all(_raw_response(503, body, [("retry-after", "1")]))
                await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)


async def _linger(stream: trio.abc.Stream, limit: int = 1 << 20) -> None:
    """Half-close and read what the client still sends, so that it sees the answer.

    Closing a socket with unread data resets it, and a reset can destroy an
    answer the client has not read yet.
    """
    if isinstance(stream, trio.SocketStream):
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
    read = 0
    with trio.move_on_after(1):
        while read < limit:
            try:
                data = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            read += len(data)


class _Connection:
    """One accepted connection: HTTP/1.1 requests in turn, then perhaps a WebSocket."""

    def __init__(self, server: _Server, socket_stream: trio.SocketStream) -> None:
        self.server = server
        self.limits = server.limits
        self.stream: trio.abc.Stream = socket_stream
        self.socket_stream = socket_stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_size)
        sock = socket_stream.socket
        try:
            self.client = _address(sock.getpeername())
            self.local = _address(sock.getsockname())
        except OSError:
            self.client = self.local = None

    async def run(self) -> None:
        """Serve requests until the connection closes."""
        try:
            if self.server.ssl_context is not None and not await self._handshake():
                return
            while True:
                request = await self._read_head()
                if request is None:
                    return
                if _wants_websocket(request):
                    await _WebSocket(self, request).run()
                    return
                if not await _HTTPExchange(self, request).run():
                    return
                self.h11.start_next_cycle()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _handshake(self) -> bool:
        assert self.server.ssl_context is not None
        ssl_stream = trio.SSLStream(
            self.socket_stream, self.server.ssl_context, server_side=True, https_compatible=True
        )
        self.stream = ssl_stream
        with trio.move_on_after(self.limits.header_timeout):
            try:
                await ssl_stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                logger.debug("TLS handshake with %s failed: %s", self.client, error.__cause__)
                return False
            return True
        logger.debug("TLS handshake with %s timed out", self.client)
        return False

    async def receive(self) -> bytes:
        """Read some bytes (b"" at the end of the stream or when the connection broke)."""
        try:
            return bytes(await self.stream.receive_some(_READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def send(self, data: bytes) -> bool:
        """Write ``data``; return whether it went out."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def refuse(self, status: int, error: str, *problems: str) -> None:
        """Answer with an error of our own and let the connection close."""
        if await self.send(_raw_response(status, error_body(error, *problems))):
            await _linger(self.stream)

    async def _read_head(self) -> h11.Request | None:
        deadline = trio.current_time() + self.limits.header_timeout
        partial = False
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                status = error.error_status_hint
                await self.refuse(status, _refusal(status), f"request: {error}")
                return None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:  # ConnectionClosed
                return None
            data = b""
            with trio.move_on_at(deadline):
                data = await self.receive()
                if not data:
                    self.h11.receive_data(b"")
                    continue
            if not data:
                if partial:
                    seconds = f"{self.limits.header_timeout:g}"
                    await self.refuse(
                        408, "request timed out", f"headers: not complete within {seconds} s"
                    )
                return None
            partial = True
            self.h11.receive_data(data)

    def scope(self, kind: str, request: h11.Request) -> Scope:
        """Return the ASGI scope of ``request``."""
        target = bytes(request.target)
        raw_path, _, query = target.partition(b"?")
        scheme = self.server.scheme if kind == "http" else self.server.scheme.replace("http", "ws")
        return {
            "type": kind,
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": scheme,
            "path": unquote(raw_path.decode("ascii", "replace")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": self.client,
            "server": self.local,
            "extensions": {},
        }


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        return b""


def _refusal(status: int) -> str:
    return {431: "request headers too large"}.get(status, "bad request")


def _wants_websocket(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


# ---------------------------------------------------------------- HTTP


class _HTTPExchange:
    """One HTTP request and its answer: the ASGI ``http`` scope's receive and send."""

    def __init__(self, conn: _Connection, request: h11.Request) -> None:
        self.conn = conn
        self.request = request
        self.h11 = conn.h11
        self.deadline = trio.current_time() + conn.limits.body_timeout
        self.body_done = False
        self.started = False
        self.finished = False
        self.gone: str | None = None  # why the client's side ended early
        self.ended = trio.Event()
        self._first: ASGIMessage | None = None

    async def run(self) -> bool:
        """Run the application on the request; return whether the connection may go on."""
        scope = self.conn.scope("http", self.request)
        self._first = self._buffered()
        try:
            await self.conn.server.app(scope, self.receive, self.send)
        except Exception as error:
            if self.gone is None:  # (else the client's going is logged already)
                logger.exception("error in the application answering %s", scope["path"])
                if not self.started:
                    await self.conn.refuse(500, "internal error", f"server: {type(error).__name__}")
            return False
        finally:
            self.ended.set()
        if self.gone is not None:
            return False
        if not self.finished:
            if not self.started:
                await self.conn.refuse(
                    500, "internal error", "server: the application sent no answer"
                )
            return False
        if self.h11.their_state is not h11.DONE and not await self._skip_body():
            await _linger(self.conn.stream)
            return False
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def _buffered(self) -> ASGIMessage | None:
        """Return the body's first part if it is here already (all of it, for no body)."""
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError:
            return None  # receive() meets the error again
        if isinstance(event, h11.EndOfMessage):
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        return None

    async def _skip_body(self, limit: int = 256 * 1024) -> bool:
        """Read and drop a body the application did not read; return whether it ended."""
        skipped = 0
        while skipped <= limit:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.EndOfMessage):
                return True
            if isinstance(event, h11.Data):
                skipped += len(event.data)
                continue
            if event is not h11.NEED_DATA:
                return False
            data = None
            with trio.move_on_at(min(self.deadline, trio.current_time() + 1)):
                data = await self.conn.receive()
            if not data:
                return False
            self.h11.receive_data(data)
        return False

    async def receive(self) -> ASGIMessage:
        """Return the next part of the request body, or ``http.disconnect``."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self.body_done and self.gone is None:
            await self.ended.wait()
        if self.gone is not None:
            return {"type": "http.disconnect"}
        if self.h11.they_are_waiting_for_100_continue:
            await self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                return await self._client_gone(f"bad request body: {error}")
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if event is not h11.NEED_DATA:
                return await self._client_gone("client disconnected mid-body")
            data = None
            with trio.move_on_at(self.deadline):
                data = await self.conn.receive()
            if data is None:
                return await self._body_timed_out()
            if not data:
                return await self._client_gone("client disconnected mid-body")
            self.h11.receive_data(data)

    async def _client_gone(self, why: str) -> ASGIMessage:
        if self.gone is None:
            self.gone = why
            logger.debug("%s: %s", self.conn.client, why)
            if why.startswith("bad request body") and not self.started:
                await self.conn.refuse(400, "bad request", why.removeprefix("bad request "))
        return {"type": "http.disconnect"}

    async def _body_timed_out(self) -> ASGIMessage:
        seconds = f"{self.conn.limits.body_timeout:g}"
        self.gone = f"request body not complete within {seconds} s"
        logger.debug("%s: %s", self.conn.client, self.gone)
        if not self.started:
            await self.conn.refuse(
                408, "request timed out", f"body: not complete within {seconds} s of the headers"
            )
        return {"type": "http.disconnect"}

    async def _write(self, data: bytes | None) -> None:
        if data and not await self.conn.send(data) and self.gone is None:
            self.gone = "client disconnected before the answer was sent"
            logger.debug("%s: %s", self.conn.client, self.gone)

    async def send(self, message: ASGIMessage) -> None:
        """Send the answer's start or a part of its body."""
        if self.gone is not None or self.finished:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            status = int(message["status"])
            response = h11.Response(status_code=status, headers=headers, reason=_phrase(status))
            await self._write(self.h11.send(response))
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body sent before http.response.start")
            body = bytes(message.get("body", b""))
            data = self.h11.send(h11.Data(data=body)) if body else b""
            if not message.get("more_body", False):
                self.finished = True
                data = (data or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
            await self._write(data)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an HTTP exchange")


# ---------------------------------------------------------------- WebSocket


class _WebSocket:
    """One WebSocket: the ASGI ``websocket`` scope over wsproto, with a writer of its own.

    Everything written goes through one buffer that a writer task empties in
    one write at a time, so frames queued together go out together, and a
    sender that is cancelled never leaves half a frame behind.
    """

    def __init__(self, conn: _Connection, request: h11.Request) -> None:
        self.conn = conn
        self.request = request
        self.limits = conn.limits
        self.ws = WSConnection(ConnectionType.SERVER)
        self.guard = _FrameGuard(conn.limits.max_message_size)
        self.accepted = False
        self.answered = False  # an HTTP answer instead of the upgrade
        self.closing = False  # a close frame is queued
        self.failed = False  # closed for a frame the server refused
        self._parts: list[Any] = []  # the message being received, frame by frame
        self._out = bytearray()
        self._queued = 0  # bytes queued since the start
        self._written = 0  # bytes written since the start
        self._broken = False
        self._writing = False  # a write is under way (the writer's, or a sender's)
        # plain TCP: senders may write at once (see _send_data); not through TLS
        self._socket = conn.stream.socket if isinstance(conn.stream, trio.SocketStream) else None
        self._wake_writer = trio.Event()
        self._progress = trio.Event()
        self._to_app, self._from_reader = trio.open_memory_channel[ASGIMessage](16)
        self._reader_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._response: dict[str, Any] | None = None

    async def run(self) -> None:
        """Run the upgrade and the application; close when both are done."""
        try:
            self.ws.initiate_upgrade_connection(list(self.request.headers), self.request.target)
            ws_request = next(e for e in self.ws.events() if isinstance(e, WSRequest))
        except (WSProtocolError, StopIteration) as error:
            await self.conn.refuse(400, "bad WebSocket upgrade", f"request: {error}")
            return
        scope = self.conn.scope("websocket", self.request)
        scope["subprotocols"] = list(ws_request.subprotocols)
        scope["extensions"] = {"websocket.http.response": {}, FRAMES_EXTENSION: {}}
        self._to_app.send_nowait({"type": "websocket.connect"})
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer)
            try:
                await self.conn.server.app(scope, self._receive, self._send)
            except Exception as error:
                logger.exception("error in the application's WebSocket %s", scope["path"])
                await self._close_after_error(error)
            else:
                if not self.accepted and not self.answered:
                    await self._refuse_upgrade(403, "WebSocket refused by the application")
                elif self.accepted and not self.closing:
                    self._queue_close(_NORMAL, "")
            await self._finish()
            nursery.cancel_scope.cancel()

    async def _close_after_error(self, error: Exception) -> None:
        if self.accepted:
            if not self.closing:
                self._queue_close(_INTERNAL_ERROR, f"internal error: {type(error).__name__}")
        elif not self.answered:
            await self._refuse_upgrade(500, "internal error", f"server: {type(error).__name__}")

    async def _finish(self) -> None:
        """Let what is queued go out and the client answer the close; abort when time is up."""
        self._from_reader.close()
        with trio.move_on_after(self.limits.close_timeout):
            while not self._broken and self._written < self._queued:
                await self._wait_progress()
            if self.accepted and not self._broken:
                await self._reader_done.wait()

    async def _wait_progress(self) -> None:
        self._progress = trio.Event() if self._progress.is_set() else self._progress
        await self._progress.wait()

    # ------------------------------------------------------------ writing

    def _queue(self, data: bytes) -> int:
        """Queue bytes for the writer; return the mark at which they are all written."""
        if data and not self._broken:
            self._out += data
            self._queued += len(data)
            self._wake_writer.set()
        return self._queued

    async def _writer(self) -> None:
        while True:
            if not self._out or self._writing:
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            data = bytes(self._out)
            self._out.clear()
            self._writing = True
            ok = await self.conn.send(data)
            self._writing = False
            self._written += len(data)
            if not ok:
                self._broken = True
                self._out.clear()
                self._written = self._queued
            self._progress.set()
            if self._broken:
                return

    async def _flush(self, mark: int) -> None:
        while self._written < mark and not self._broken:
            await self._wait_progress()

    async def _send_data(self, data: bytes) -> None:
        """Send ``data`` after what is queued; return once it is written.

        When nothing is queued or being written, it is sent at once from the
        caller's task, by one attempt on the socket that either sends some
        bytes or, if cancelled, none: whatever is left goes to the writer, so
        a cancelled sender never leaves half a frame behind.
        """
        sock = self._socket
        if sock is None or self._writing or self._out or self._broken or not data:
            await self._flush(self._queue(data))
            return
        self._writing = True
        try:
            sent = await sock.send(data)
        except OSError:
            self._broken = True
            sent = 0
        finally:
            self._writing = False
        self._queued += sent
        self._written += sent
        if self._broken:
            self._written = self._queued
        self._progress.set()
        if sent < len(data) and not self._broken:
            # the rest goes first: what was queued meanwhile (a pong) must not split the frame
            rest = data[sent:]
            self._out[0:0] = rest
            self._queued += len(rest)
            self._wake_writer.set()
            await self._flush(self._queued)
        elif self._out:
            self._wake_writer.set()

    def _queue_close(self, code: int, reason: str) -> None:
        if self.closing or self.ws.state not in (
            ConnectionState.OPEN,
            ConnectionState.REMOTE_CLOSING,
        ):
            return
        self.closing = True
        self._queue(self.ws.send(CloseConnection(code=code, reason=reason)))

    # ------------------------------------------------------------ the application's side

    async def _receive(self) -> ASGIMessage:
        try:
            return await self._from_reader.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return {"type": "websocket.disconnect", "code": 1006}

    async def _send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if kind == FRAMES_EXTENSION:
            if self.accepted and not self.closing:
                await self._send_data(b"".join(message["frames"]))
        elif kind == "websocket.send":
            if self.accepted and not self.closing:
                text = message.get("text")
                if text is not None:
                    data = self.ws.send(TextMessage(data=text))
                else:
                    data = self.ws.send(BytesMessage(data=bytes(message.get("bytes") or b"")))
                await self._send_data(data)
        elif kind == "websocket.accept":
            await self._accept(message)
        elif kind == "websocket.close":
            if self.accepted:
                self._queue_close(int(message.get("code", _NORMAL)), message.get("reason") or "")
            elif not self.answered:
                await self._refuse_upgrade(403, "WebSocket refused by the application")
        elif kind == "websocket.http.response.start":
            if self.accepted or self.answered or self._response is not None:
                raise RuntimeError("websocket.http.response.start after an answer")
            self._response = {"status": int(message["status"]), "headers": message["headers"]}
            self._response["body"] = bytearray()
        elif kind == "websocket.http.response.body":
            if self._response is None or self.answered:
                raise RuntimeError("websocket.http.response.body without its start")
            self._response["body"] += bytes(message.get("body", b""))
            if not message.get("more_body", False):
                await self._send_response()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a WebSocket")

    async def _accept(self, message: ASGIMessage) -> None:
        if self.accepted or self.answered:
            raise RuntimeError("websocket.accept after the WebSocket was answered")
        self.accepted = True
        headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        accept = AcceptConnection(
            subprotocol=message.get("subprotocol"), extra_headers=headers or []
        )
        self._queue(self.ws.send(accept))
        while self.conn.h11.next_event() not in (h11.PAUSED, h11.NEED_DATA):
            pass  # the upgrade request's end: what follows is the WebSocket's
        trailing = self.conn.h11.trailing_data[0]
        assert self._nursery is not None
        self._nursery.start_soon(self._reader, bytes(trailing))

    async def _send_response(self) -> None:
        assert self._response is not None
        self.answered = True
        status = self._response["status"]
        headers = [(bytes(k), bytes(v)) for k, v in self._response["headers"]]
        headers = [(k, v) for k, v in headers if k.lower() not in (b"connection",)]
        headers.append((b"connection", b"close"))
        body = bytes(self._response["body"])
        response = h11.Response(status_code=status, headers=headers, reason=_phrase(status))
        data = self.conn.h11.send(response) or b""
        if body:
            data += self.conn.h11.send(h11.Data(data=body)) or b""
        data += self.conn.h11.send(h11.EndOfMessage()) or b""
        await self._flush(self._queue(data))

    async def _refuse_upgrade(self, status: int, error: str, *problems: str) -> None:
        self.answered = True
        await self._flush(self._queue(_raw_response(status, error_body(error, *problems))))

    # ------------------------------------------------------------ reading

    async def _reader(self, data: bytes) -> None:
        try:
            while True:
                if data:
                    allowed, why = self.guard.scan(data)
                    self.ws.receive_data(data[:allowed])
                    if await self._dispatch():
                        break
                    if why is not None:
                        await self._fail(_TOO_BIG, why)
                        break
                data = await self.conn.receive()
                if not data:
                    if not self.closing:
                        logger.debug("%s: WebSocket closed without a close frame", self.conn.client)
                    await self._tell_app({"type": "websocket.disconnect", "code": 1006})
                    return
            if self.failed:
                # the client may still be sending what was refused: read it away until it
                # closes (or time is up), so that closing does not reset the connection
                # before the client has read the close frame
                while await self.conn.receive():
                    pass
        finally:
            self._reader_done.set()

    async def _tell_app(self, message: ASGIMessage) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._to_app.send(message)  # (when broken: the application is done)

    async def _dispatch(self) -> bool:
        """Hand complete messages to the application; return True when the reading is over."""
        parts = self._parts
        for event in self.ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    message: ASGIMessage = {"type": "websocket.receive"}
                    if isinstance(event, TextMessage):
                        message["text"] = "".join(parts)
                    else:
                        message["bytes"] = b"".join(parts)
                    parts.clear()
                    await self._tell_app(message)
            elif isinstance(event, Ping):
                self._queue(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.OPEN:  # a frame wsproto refused
                    reason = event.reason or ""
                    if event.code == _INVALID_DATA:
                        reason = "text frame is not valid UTF-8"
                    await self._fail(event.code or _PROTOCOL_ERROR, reason)
                    return True
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.closing = True
                    self._queue(self.ws.send(event.response()))
                await self._tell_app(
                    {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
                )
                return True
        return False

    async def _fail(self, code: int, reason: str) -> None:
        """Close for a frame the server refuses, and tell the application."""
        logger.info("closing WebSocket of %s with %d: %s", self.conn.client, code, reason)
        self.failed = True
        self._queue_close(code, reason)
        await self._tell_app({"type": "websocket.disconnect", "code": code, "reason": reason})


# ---------------------------------------------------------------- entry point


async def serve_app(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8900,
    ssl_context: ssl.SSLContext | None = None,
    limits: ServerLimits = ServerLimits(),
    max_message_size: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI application on ``host``:``port`` until cancelled.

    Start it with ``url = await nursery.start(serve_app, app, port=0)``: it
    reports the base URL it listens on (``http://127.0.0.1:<port>``, or
    ``https://`` with ``ssl_context``), with the port chosen by the system
    when ``port`` is 0. At start the soft limit of open files is raised to the
    hard limit, and ``limits.max_connections`` is lowered to what it allows.

    Args:
        app: the ASGI application (``http`` and ``websocket`` scopes).
        host: the address to listen on (loopback by default).
        port: the port (0 for any free port).
        ssl_context: serve TLS with this context (a server-side context with
            its certificate loaded).
        limits: time-outs and sizes (:class:`ServerLimits`).
        max_message_size: largest WebSocket message, in bytes (overrides
            ``limits.max_message_size``).

    Raises:
        PhasebusError: it cannot listen there (naming the port in use).
    """
    if max_message_size is not None:
        limits = attrs.evolve(limits, max_message_size=max_message_size)
    files = raise_file_limit()
    if limits.max_connections > files - _RESERVED_FILES:
        allowed = max(1, files - _RESERVED_FILES)
        logger.info(
            "serving at most %d connections at once (the open-file limit is %d)", allowed, files
        )
        limits = attrs.evolve(limits, max_connections=allowed)
    server = _Server(app, limits, ssl_context)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as error:
        why = "the port is in use" if error.errno == errno.EADDRINUSE else error.strerror or error
        raise PhasebusError(f"cannot listen on {host}:{port}: {why}") from None
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(server.accept_loop, listener, nursery)
            task_status.started(_url(listeners[0].socket.getsockname(), server.scheme))
    finally:
        for listener in listeners:
            await listener.aclose()
