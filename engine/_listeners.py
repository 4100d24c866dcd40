"""Listeners: who is connected to the bus, and in-process handlers of messages.

:class:`ListenerMethods` is the part of the engine's facade that connects
listeners (a subscriber's, receiving its actions, or an observer of message
types), hands a subscriber's listener the actions it still owes on
connecting, and runs in-process handlers that answer actions.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from ._bus import SUBSCRIBER_KINDS, Bus, Listener, ListenerDropped
from ._messages import Action, Kind, Message
from ._subscribers import SubscriberRegistry

logger = logging.getLogger("engine._engine")

#: An in-process listener's handler.
Handler = Callable[[Message], Awaitable[object]]


class ListenerMethods:
    """The engine's methods for listeners (a part of :class:`~engine.Engine`)."""

    _bus: Bus
    _nursery: trio.Nursery
    _listener_buffer: int
    #: Waits until the other replicas send what the listeners here want (see EventFanout).
    _listeners_shared: Callable[[], Awaitable[None]] | None
    subscribers: SubscriberRegistry

    def publish(self, message: Message) -> None:  # pragma: no cover - the engine's
        raise NotImplementedError

    def owed_actions(self, subscriber_id: str) -> list[Action]:  # pragma: no cover
        raise NotImplementedError

    def connect(
        self,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> Listener:
        """Connect a listener to the bus and return it; :meth:`disconnect` it when done.

        With ``subscriber_id`` the listener receives the actions, aborts and
        events of that subscriber's message types (kept current as its
        subscriptions change) and first the actions it still owes an answer.
        Otherwise it receives every message of ``message_types`` (all when
        None). Prefer :meth:`open_listener`, which disconnects for you.

        Raises:
            ListenerError: the subscriber already has a listener.
        """
        types: frozenset[str] | set[str] | None
        if subscriber_id is not None:
            subscriber = self.subscribers.get(subscriber_id)
            types = set(subscriber.subscriptions) if subscriber else set()  # kept current
            kinds = SUBSCRIBER_KINDS
        else:
            types = None if message_types is None else frozenset(message_types)
            kinds = None
        listener = Listener(
            self._bus,
            subscriber_id=subscriber_id,
            message_types=types,
            kinds=kinds,
            buffer=self._listener_buffer if buffer is None else buffer,
            publish=self.publish,
        )
        self._bus.attach(listener)
        if subscriber_id is not None:
            for action in self.owed_actions(subscriber_id):
                if not listener._deliver(action):
                    self._bus.drop(listener, "its buffer cannot hold the actions it owes")
                    break
        return listener

    async def wait_listeners_shared(self) -> None:
        """Wait until the listeners connected so far receive what is published through any
        server sharing the store from now on.

        Servers sharing a Redis store send each other only the event types
        some server's listeners want; a listener connected here counts for
        the others once this server stored its interest (a round trip).
        :meth:`open_listener` and the server's WebSockets wait for it before
        they are used; after :meth:`connect`, call it yourself. Returns at
        once with any other store.
        """
        if self._listeners_shared is not None:
            await self._listeners_shared()

    def disconnect(self, listener: Listener) -> None:
        """Disconnect a listener (idempotent)."""
        self._bus.detach(listener)

    def drop_listener(self, listener: Listener, why: str) -> bool:
        """Disconnect a listener for being too slow; ``why`` says how (it is logged).

        The drop is counted in :attr:`dropped_listeners` once, however often it
        is asked for. Returns whether the listener was still connected.
        """
        return self._bus.drop(listener, why)

    @asynccontextmanager
    async def open_listener(
        self,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> AsyncIterator[Listener]:
        """Connect a listener for the duration of the block (see :meth:`connect`)."""
        listener = self.connect(
            subscriber_id=subscriber_id, message_types=message_types, buffer=buffer
        )
        try:
            await self.wait_listeners_shared()
            yield listener
        finally:
            self._bus.detach(listener)

    async def serve_listener(
        self,
        handler: Handler,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
        task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``handler`` with each message, one at a time, until cancelled.

        For a subscriber's listener, an action is answered ``action_done`` when
        the handler returns and ``action_error`` (with the exception) when it
        raises. Start it with ``await nursery.start(engine.serve_listener, ...)``,
        which returns the listener.
        """
        async with self.open_listener(
            subscriber_id=subscriber_id, message_types=message_types, buffer=buffer
        ) as listener:
            task_status.started(listener)
            try:
                async for message in listener:
                    await _handle(listener, handler, message)
            except ListenerDropped:
                logger.warning("listener %s stopped: %s", listener.id, listener.dropped)

    async def start_listener(
        self,
        handler: Handler,
        *,
        subscriber_id: str | None = None,
        message_types: Iterable[str] | None = None,
        buffer: int | None = None,
    ) -> Listener:
        """Run :meth:`serve_listener` in the engine's nursery; return the listener.

        It runs until the engine closes or :meth:`disconnect` is called with it.
        """
        listener: Listener = await self._nursery.start(
            functools.partial(
                self.serve_listener,
                handler,
                subscriber_id=subscriber_id,
                message_types=message_types,
                buffer=buffer,
            )
        )
        return listener

    @property
    def listeners(self) -> list[Listener]:
        """The connected listeners."""
        return sorted(self._bus.listeners, key=lambda listener: listener.id)

    def add_observer(
        self,
        observer: Callable[[Message], None],
        *,
        message_types: Iterable[str] | None = None,
        kinds: Iterable[Kind] | None = None,
        here_only: bool = False,
    ) -> Callable[[], None]:
        """Call ``observer`` with each message published, before any listener gets it.

        Only messages of ``message_types`` and ``kinds`` are observed (all when
        None): events that nobody observes or listens to are not even built.
        With ``here_only``, only the messages published through this server
        are observed, not the events of other servers sharing its store (what
        this server counts, say). An observer must be quick and must not
        raise. Returns a function that removes it.
        """
        entry = (
            observer,
            None if message_types is None else frozenset(message_types),
            None if kinds is None else frozenset(kinds),
        )
        observers = self._bus.local_observers if here_only else self._bus.observers
        observers.append(entry)
        return lambda: observers.remove(entry)

    @property
    def dropped_listeners(self) -> int:
        """How many listeners were dropped for being too slow."""
        return self._bus.dropped_count


async def _handle(listener: Listener, handler: Handler, message: Message) -> None:
    answers = listener.subscriber_id is not None and type(message) is Action
    try:
        await handler(message)
    except Exception as error:
        if answers:
            listener.error(message, f"{type(error).__name__}: {error}")  # type: ignore[arg-type]
        else:
            logger.exception("listener %s failed to handle %s", listener.id, message.message_type)
        return
    if answers:
        listener.done(message)  # type: ignore[arg-type]
