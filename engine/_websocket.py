"""The API's WebSocket sessions: one bus listener per connection, frames in and out.

A session reads the client's frames, stamps ``data.subscriber_id`` and
``data.received_at`` on each message and publishes it; a bad frame closes
that connection only (1007, 1008, 1009), and so does an error in its own
handling (1011).

Out, each message is encoded once for every connection that sends it (as
the frame's bytes when the server offers
:data:`~engine._server.FRAMES_EXTENSION`, else as text for the standard
``websocket.send``). A *drainer* moves everything the listener has buffered
into the connection's queue at once; a *writer* sends all that is queued in
one write. The slow-consumer policy looks at what is pending: the bytes
queued or being written, and the age of the oldest of those messages. Past
either limit the listener is dropped (:meth:`Engine.drop_listener`: counted
and logged once, announced) and the connection is closed with 1008
``too slow: ...``; the server aborts it if the client does not read even
its close frame.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from ._bus import ENGINE_CLOSED, TOO_SLOW, Listener, ListenerDropped
from ._convert import message_from_json
from ._engine import Engine
from ._errors import MessageError, PhasebusError
from ._json import JSONInputError, parse_json
from ._messages import Action, ActionAbort, Message
from ._server import FRAMES_EXTENSION, text_frame

logger = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455).
NORMAL = 1000
GOING_AWAY = 1001
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011

#: Bytes pending for one connection (queued or being written) before it is dropped.
DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024
#: Seconds the oldest message pending for one connection may wait before it is dropped.
DEFAULT_MAX_PENDING_AGE = 30.0
#: Messages the bus buffers for a connection: large, so that the pending bytes and
#: age decide about a slow client, not a burst faster than one scheduling round.
LISTENER_BUFFER = 1 << 20

_MAX_REASON = 123  # bytes of UTF-8 in a close frame's reason


def describe(value: object) -> str:
    """Return a short ``repr`` of a value, for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def close_reason(text: str) -> str:
    """Return ``text`` cut to fit a close frame's reason."""
    data = text.encode("utf-8")
    if len(data) <= _MAX_REASON:
        return text
    return data[: _MAX_REASON - 3].decode("utf-8", "ignore") + "..."


@attrs.frozen
class SlowConsumerPolicy:
    """When a WebSocket connection is too slow: limits on what is pending for it.

    Args:
        max_pending_bytes: bytes of messages queued for it or being written.
        max_pending_age: seconds the oldest of those messages may have waited.
    """

    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    max_pending_age: float = DEFAULT_MAX_PENDING_AGE

    def __attrs_post_init__(self) -> None:
        size = self.max_pending_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"max_pending_bytes must be a whole number >= 1, got {size!r}")
        if not 0 < self.max_pending_age < math.inf:
            raise ValueError(f"max_pending_age must be > 0 seconds, got {self.max_pending_age!r}")


class _Encoder:
    """Recently sent messages, encoded: each message is encoded once for all connections.

    Entries are keyed by the message's id and hold the message itself, so an
    id cannot be reused while its entry lives.
    """

    def __init__(self, size: int = 16384) -> None:
        self._size = size
        self._entries: OrderedDict[int, tuple[Message, str, bytes]] = OrderedDict()

    def encode(self, message: Message) -> tuple[str, bytes]:
        """Return the message's text and its complete (unmasked) text frame."""
        entry = self._entries.get(id(message))
        if entry is not None and entry[0] is message:
            return entry[1], entry[2]
        text = json.dumps(message.to_json(), separators=(",", ":"), default=str)
        frame = text_frame(text.encode("utf-8"))
        self._entries[id(message)] = (message, text, frame)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return text, frame


class WebSocketSessions:
    """The WebSocket sessions of an application: what they share (encoder, limits)."""

    def __init__(self, engine: Engine, *, max_message_size: int, policy: SlowConsumerPolicy):
        self.engine = engine
        self.max_message_size = max_message_size
        self.policy = policy
        self.encoder = _Encoder()

    async def run(self, scope: Scope, receive: Receive, send: Send, listener: Listener) -> None:
        """Accept the WebSocket and serve ``listener`` over it until either side ends."""
        try:
            await self.engine.wait_listeners_shared()  # the other servers send what it wants
            await _Session(self, scope, receive, send, listener).run()
        finally:
            self.engine.disconnect(listener)


class _Session:
    """One WebSocket connection's listener, drainer, writer and reader."""

    def __init__(
        self,
        sessions: WebSocketSessions,
        scope: Scope,
        receive: Receive,
        send: Send,
        listener: Listener,
    ) -> None:
        self.sessions = sessions
        self.engine = sessions.engine
        self.listener = listener
        self.receive = receive
        self.send = send
        self.frames = FRAMES_EXTENSION in (scope.get("extensions") or {})
        self.close: tuple[int, str] | None = None
        self.client_gone = False
        self._scope: trio.CancelScope | None = None
        # pending: queued (not yet handed to the server) and in flight (being written)
        self._queued: list[Any] = []
        self._queued_bytes = 0
        self._queued_since = 0.0
        self._flight_bytes = 0
        self._flight_since = 0.0
        self._wake_writer = trio.Event()
        self._all_written = trio.Event()

    def stop(self, code: int, reason: str) -> None:
        """Close the connection with ``code``: stop reading and sending."""
        if self.close is None:
            self.close = (code, close_reason(reason))
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Accept, then send and receive until either side ends; close with a reason."""
        connect = await self.receive()
        if connect["type"] != "websocket.connect":
            return
        await self.send({"type": "websocket.accept"})
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._guarded, self._drain)
            nursery.start_soon(self._guarded, self._write)
            try:
                close = await self._receive_loop()
            except Exception as error:
                logger.exception("error handling a frame from %s", self.listener.id)
                close = (INTERNAL_ERROR, f"internal error: {type(error).__name__}")
            if close is not None:
                self.stop(*close)
            nursery.cancel_scope.cancel()
        if self.close is not None and not self.client_gone:
            code, reason = self.close
            if code != NORMAL:
                logger.info("closing %s with %d: %s", self.listener.id, code, reason)
            await self.send({"type": "websocket.close", "code": code, "reason": reason})

    async def _guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run the drainer or the writer; an error in it closes this connection with 1011."""
        try:
            await loop()
        except Exception as error:
            logger.exception("error sending to %s", self.listener.id)
            self.stop(INTERNAL_ERROR, f"internal error: {type(error).__name__}")

    # ------------------------------------------------------------ out

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for the client or being written to it."""
        return self._queued_bytes + self._flight_bytes

    def _oldest(self) -> float | None:
        if self._flight_bytes:
            return self._flight_since
        return self._queued_since if self._queued else None

    async def _drain(self) -> None:
        listener = self.listener
        encode = self.sessions.encoder.encode
        policy = self.sessions.policy
        use_frames = self.frames
        ended = False
        while not ended:
            oldest = self._oldest()
            first: Message | None = None
            try:
                if oldest is None:  # nothing pending: no deadline (the common case)
                    first = await listener.receive()
                else:
                    with trio.move_on_at(oldest + policy.max_pending_age):
                        first = await listener.receive()
            except ListenerDropped:
                break
            if first is not None:
                batch = [first]
                try:
                    while True:
                        batch.append(listener.receive_nowait())
                except trio.WouldBlock:
                    pass
                except ListenerDropped:
                    ended = True
                if not self._queued:
                    self._queued_since = trio.current_time()
                queued = self._queued
                size = 0
                for message in batch:
                    item = encode(message)[1 if use_frames else 0]
                    queued.append(item)
                    size += len(item)
                self._queued_bytes += size
                self._wake_writer.set()
            why = self._too_slow()
            if why is not None:
                self.engine.drop_listener(listener, why)
                self.stop(POLICY_VIOLATION, f"{TOO_SLOW}: {why}")
                return
        if listener.dropped == TOO_SLOW:
            self.stop(POLICY_VIOLATION, TOO_SLOW)
            return
        # the engine closed or the listener was closed: send what is left, then close
        if self._queued or self._flight_bytes:
            self._all_written = trio.Event()
            await self._all_written.wait()
        if listener.dropped == ENGINE_CLOSED:
            self.stop(GOING_AWAY, "the engine closed")
        else:
            self.stop(NORMAL, "")

    def _too_slow(self) -> str | None:
        policy = self.sessions.policy
        pending = self.pending_bytes
        if pending > policy.max_pending_bytes:
            return f"{pending} bytes pending, more than {policy.max_pending_bytes}"
        oldest = self._oldest()
        if oldest is not None and trio.current_time() - oldest >= policy.max_pending_age:
            return f"a message pending for more than {policy.max_pending_age:g} s"
        return None

    async def _write(self) -> None:
        send = self.send
        while True:
            if not self._queued:
                self._all_written.set()
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            batch, self._queued = self._queued, []
            self._flight_bytes, self._flight_since = self._queued_bytes, self._queued_since
            self._queued_bytes = 0
            if self.frames:
                await send({"type": FRAMES_EXTENSION, "frames": batch})
            else:
                for text in batch:
                    await send({"type": "websocket.send", "text": text})
            self._flight_bytes = 0

    # ------------------------------------------------------------ in

    async def _receive_loop(self) -> tuple[int, str] | None:
        while True:
            message: ASGIMessage = await self.receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is None:
                    try:
                        text = bytes(message.get("bytes") or b"").decode("utf-8")
                    except UnicodeDecodeError:
                        return (INVALID_DATA, "frame is not valid UTF-8")
                close = self._handle_frame(text)
                if close is not None:
                    return close
            elif kind == "websocket.disconnect":
                self.client_gone = True
                return None

    def _handle_frame(self, text: str) -> tuple[int, str] | None:
        """Publish one frame's message; return (code, reason) to close the connection."""
        limit = self.sessions.max_message_size
        if len(text) > limit:
            return (TOO_BIG, f"message larger than {limit} bytes")
        try:
            value = parse_json(text)
        except JSONInputError as error:
            return (INVALID_DATA, "not JSON: " + "; ".join(map(str, error.problems)))
        if not isinstance(value, dict):
            return (POLICY_VIOLATION, f"a message must be a JSON object, got {describe(value)}")
        data = value.setdefault("data", {})
        if isinstance(data, dict):
            data["subscriber_id"] = self.listener.id
            now = self.engine.clock.now()
            data["received_at"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            message = message_from_json(value)
        except MessageError as error:
            return (
                POLICY_VIOLATION,
                "invalid message: " + "; ".join(str(p) for p in error.problems),
            )
        if isinstance(message, Action | ActionAbort):
            return (POLICY_VIOLATION, f"clients may not send {message.kind.value} messages")
        try:
            self.engine.publish(message)
        except PhasebusError as error:
            return (POLICY_VIOLATION, str(error))
        return None
