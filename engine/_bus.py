"""The in-process message bus and the subscriber registry.

A *listener* receives messages through a bounded buffer (a trio memory
channel). Publishing never waits: a listener whose buffer is full is dropped
at once, so a slow listener never slows the engine or other listeners. A
dropped listener still gets what was buffered before the drop; its next
receive then raises :class:`ListenerDropped`. Its subscriptions are kept, so
a reconnecting subscriber is sent again the actions it still owes.

Subscribers (an id with subscriptions) live in :mod:`engine._subscribers`;
a subscriber's listener receives what its subscriptions name.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any

import trio

from ._errors import ListenerDropped as ListenerDropped
from ._errors import ListenerError
from ._messages import (
    Action,
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    Answer,
    Event,
    Kind,
    Message,
    Progress,
    answer_for,
)
from ._subscribers import Subscriber as Subscriber
from ._subscribers import SubscriberRegistry as SubscriberRegistry
from ._subscribers import Subscription as Subscription

logger = logging.getLogger(__name__)

#: Messages a listener may hold unread before it is dropped, unless told otherwise.
DEFAULT_BUFFER = 4096

#: The kinds a subscriber's own listener receives.
SUBSCRIBER_KINDS = frozenset({Kind.EVENT, Kind.ACTION, Kind.ACTION_ABORT})

#: Reasons a listener stops: closed by its owner or the engine (iteration just
#: ends), or dropped for being too slow (iteration raises ListenerDropped).
CLOSED = "closed"
ENGINE_CLOSED = "the engine closed"
TOO_SLOW = "too slow"

LISTENER_CONNECTED = "message-listener-connected"
LISTENER_DISCONNECTED = "message-listener-disconnected"


# ---------------------------------------------------------------- listeners


_listener_ids = itertools.count(1)


class Listener:
    """A connection to the bus: receive messages, and answer actions.

    Iterate over it (``async for message in listener``) or call
    :meth:`receive`. A listener opened for a subscriber receives the actions,
    aborts and events of that subscriber's message types, and answers with
    :meth:`done`, :meth:`error`, :meth:`info` and :meth:`progress`.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        subscriber_id: str | None,
        message_types: frozenset[str] | set[str] | None,
        kinds: frozenset[Kind] | None,
        buffer: int,
        publish: Callable[[Message], None],
    ) -> None:
        self.id = subscriber_id or f"listener-{next(_listener_ids)}"
        self.subscriber_id = subscriber_id
        self.message_types = message_types
        self.kinds = kinds
        self._bus = bus
        self._publish = publish
        self._send, self._receive = trio.open_memory_channel[Message](buffer)
        #: Why the listener stopped receiving (``"too slow"``, ``"closed"``), or None.
        self.dropped: str | None = None

    def __repr__(self) -> str:
        types = "all" if self.message_types is None else sorted(self.message_types)
        return f"<Listener {self.id} types={types}>"

    def wants(self, message: Message) -> bool:
        """Tell whether this listener receives ``message``."""
        if self.kinds is not None and message.kind not in self.kinds:
            return False
        return self.message_types is None or message.message_type in self.message_types

    def _deliver(self, message: Message) -> bool:
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        return True

    def _close(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
        self._send.close()

    async def receive(self) -> Message:
        """Receive the next message.

        Raises:
            ListenerDropped: the listener was dropped or closed and its buffer is empty.
        """
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ListenerDropped(
                f"listener {self.id!r} was dropped: {self.dropped or 'closed'}"
            ) from None

    def receive_nowait(self) -> Message:
        """Receive a buffered message, or raise :class:`trio.WouldBlock`."""
        try:
            return self._receive.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ListenerDropped(
                f"listener {self.id!r} was dropped: {self.dropped or 'closed'}"
            ) from None

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self.dropped not in (None, CLOSED, ENGINE_CLOSED):
                raise ListenerDropped(f"listener {self.id!r} was dropped: {self.dropped}") from None
            raise StopAsyncIteration from None

    # answering

    def _answer(self, action: Action, kind: type[Answer], **fields: Any) -> None:
        if self.subscriber_id is None:
            raise ListenerError(
                f"listener {self.id!r} has no subscriber id and cannot answer actions"
            )
        if not isinstance(action, Action):
            raise TypeError(f"can only answer an Action, got {action!r}")
        self._publish(answer_for(action, kind, self.subscriber_id, **fields))

    def done(self, action: Action) -> None:
        """Answer that the action's work is done."""
        self._answer(action, ActionDone)

    def error(self, action: Action, error: str) -> None:
        """Answer that the action's work failed."""
        self._answer(action, ActionError, error=error)

    def info(self, action: Action, message: str, *, level: str = "info") -> None:
        """Report a message about the action's work (``level="error"`` publishes an error event)."""
        self._answer(action, ActionInfo, level=level, message=message)

    def progress(self, action: Action, progress: Progress) -> None:
        """Report how far the action's work got."""
        self._answer(action, ActionProgress, progress=progress)

    def publish(self, event: Event) -> None:
        """Publish an event on the bus."""
        if not isinstance(event, Event):
            raise TypeError(f"listeners publish events, got {event!r}")
        self._publish(event)


class Bus:
    """Routes messages to listeners by message type, without ever waiting."""

    def __init__(
        self, registry: SubscriberRegistry, announce: Callable[[Event], None] | None = None
    ) -> None:
        self._registry = registry
        #: Publishes the bus's own events (the engine's, so triggers and waits see them).
        self._announce = announce or self.publish
        self._by_type: dict[str, set[Listener]] = {}
        self._all: set[Listener] = set()
        self._by_subscriber: dict[str, Listener] = {}
        self.listeners: set[Listener] = set()
        #: How many listeners were dropped for being too slow.
        self.dropped_count = 0
        #: Callables that see published messages first (metrics, storage), each with
        #: the message types and kinds it wants (None: all).
        self.observers: list[
            tuple[Callable[[Message], None], frozenset[str] | None, frozenset[Kind] | None]
        ] = []
        #: Observers as above that see only the messages published through this server,
        #: not those another server sharing the store published (metrics, say): they do
        #: not make this server want those events from the others.
        self.local_observers: list[
            tuple[Callable[[Message], None], frozenset[str] | None, frozenset[Kind] | None]
        ] = []
        #: Callables that see each message of their kinds (actions and aborts, say) first,
        #: with the subscribers it is addressed to (None: every subscriber of its type), for
        #: passing it on to the subscribers whose listeners are elsewhere.
        self.routers: list[
            tuple[Callable[[Message, Collection[str] | None], None], frozenset[Kind]]
        ] = []

    def has_listeners(self, message_type: str) -> bool:
        """Tell whether any listener may receive messages of ``message_type``."""
        if self._all or self._by_type.get(message_type):
            return True
        if not self.observers and not self.local_observers:
            return False
        return any(
            (types is None or message_type in types) and (kinds is None or Kind.EVENT in kinds)
            for observers in (self.observers, self.local_observers)
            for _, types, kinds in observers
        )

    def wanted_events(self) -> frozenset[str] | None:
        """Return the event types some listener or observer here receives (None: every type)."""
        if any(listener.kinds is None or Kind.EVENT in listener.kinds for listener in self._all):
            return None
        wanted = {
            message_type
            for message_type, listeners in self._by_type.items()
            if any(listener.kinds is None or Kind.EVENT in listener.kinds for listener in listeners)
        }
        for _, types, kinds in self.observers:
            if kinds is None or Kind.EVENT in kinds:
                if types is None:
                    return None
                wanted.update(types)
        return frozenset(wanted)

    def attach(self, listener: Listener) -> None:
        """Connect a listener and publish ``message-listener-connected``."""
        if listener.subscriber_id is not None:
            if listener.subscriber_id in self._by_subscriber:
                raise ListenerError(f"subscriber {listener.subscriber_id!r} already has a listener")
            self._by_subscriber[listener.subscriber_id] = listener
        self._announce(Event(LISTENER_CONNECTED, self._describe(listener)))
        self._index(listener)
        self.listeners.add(listener)

    def detach(self, listener: Listener, reason: str = CLOSED) -> None:
        """Disconnect a listener (idempotent) and publish ``message-listener-disconnected``."""
        if self._remove(listener, reason):
            self._announce(Event(LISTENER_DISCONNECTED, self._describe(listener)))

    def _remove(self, listener: Listener, reason: str) -> bool:
        """Take a listener off the bus and close it; return whether it was on."""
        if listener not in self.listeners:
            return False
        self.listeners.discard(listener)
        self._unindex(listener)
        if self._by_subscriber.get(listener.subscriber_id or "") is listener:
            del self._by_subscriber[listener.subscriber_id or ""]
        listener._close(reason)
        return True

    def listener_of(self, subscriber_id: str) -> Listener | None:
        """Return the listener connected here for a subscriber, or None."""
        return self._by_subscriber.get(subscriber_id)

    def refresh(
        self, subscriber_id: str, added: Iterable[str], removed: Iterable[str] = ()
    ) -> None:
        """Follow a change of a subscriber's subscriptions: its listener now receives
        ``added`` message types too, and no longer ``removed`` ones."""
        listener = self._by_subscriber.get(subscriber_id)
        if listener is None or not isinstance(listener.message_types, set):
            return
        for message_type in removed:
            listener.message_types.discard(message_type)
            listeners = self._by_type.get(message_type)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._by_type[message_type]
        for message_type in added:
            listener.message_types.add(message_type)
            self._by_type.setdefault(message_type, set()).add(listener)

    def publish(
        self,
        message: Message,
        *,
        subscribers: Collection[str] | None = None,
        elsewhere: bool = False,
    ) -> None:
        """Deliver a message to every listener that wants it; drop those that are full.

        With ``subscribers``, the listeners of subscribers receive it only if
        their subscriber is one of those (other listeners as usual).
        ``elsewhere``: another server sharing the store published it (the
        local observers do not see it).
        """
        for observers in (self.observers, () if elsewhere else self.local_observers):
            for observer, types, kinds in observers:
                if (types is None or message.message_type in types) and (
                    kinds is None or message.kind in kinds
                ):
                    observer(message)
        for router, kinds in self.routers:
            if message.kind in kinds:
                router(message, subscribers)
        slow = None
        for group in (self._by_type.get(message.message_type), self._all):
            if not group:
                continue
            for listener in group:
                if (
                    (listener.kinds is None or message.kind in listener.kinds)
                    and (
                        subscribers is None
                        or listener.subscriber_id is None
                        or listener.subscriber_id in subscribers
                    )
                    and not listener._deliver(message)
                ):
                    slow = [*(slow or ()), listener]
        if slow:
            # Every full listener leaves the bus before any departure is announced:
            # an announcement is itself published, and must not find them again.
            dropped = [listener for listener in slow if self._remove(listener, TOO_SLOW)]
            for listener in dropped:
                self._count_drop(listener, "its buffer of unread messages is full")
            for listener in dropped:
                self._announce(Event(LISTENER_DISCONNECTED, self._describe(listener)))

    def drop(self, listener: Listener, why: str) -> bool:
        """Drop a listener for being too slow: counted once, logged once, announced.

        Returns whether it was connected (a listener already gone is not counted again).
        """
        if not self._remove(listener, TOO_SLOW):
            return False
        self._count_drop(listener, why)
        self._announce(Event(LISTENER_DISCONNECTED, self._describe(listener)))
        return True

    def _count_drop(self, listener: Listener, why: str) -> None:
        self.dropped_count += 1
        logger.warning("dropping listener %s (too slow): %s", listener.id, why)

    def _describe(self, listener: Listener) -> dict[str, Any]:
        channels = sorted(listener.message_types) if listener.message_types is not None else None
        return {"subscriber_id": listener.id, "channels": channels}

    def _index(self, listener: Listener) -> None:
        if listener.message_types is None:
            self._all.add(listener)
        else:
            for message_type in listener.message_types:
                self._by_type.setdefault(message_type, set()).add(listener)

    def _unindex(self, listener: Listener) -> None:
        self._all.discard(listener)
        for message_type in listener.message_types or ():
            listeners = self._by_type.get(message_type)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._by_type[message_type]
