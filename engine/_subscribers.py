"""Subscribers and their subscriptions.

A *subscriber* is an id with subscriptions (message type, whether steps wait
for its answer, and its timeout); it exists whether or not a listener is
connected for it. Changing one subscription costs the same however many a
subscriber has: subscriptions are kept in place, each change is reported as
what changed (so the store writes one row), and a subscriber's JSON is built
from the encoded form of each subscription, kept as it was added.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import orjson

from ._definitions import MAX_TIMEOUT
from ._errors import InvalidInputError, Problem

#: The longest subscriber id or subscribed message type.
MAX_ID_LENGTH = 200


def id_problem(value: object, what: str) -> str | None:
    """Return what is wrong with a subscriber id or message type, or None.

    Both travel in URL paths and log lines: 1 to 200 printable characters
    (no control characters, no lone surrogates), no ``/``, not ``.`` or ``..``.
    """
    if not isinstance(value, str) or not value:
        return f"{what} must be a non-empty string, got {value!r}"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    if not value.isprintable():
        return f"{what} must be printable (no control characters), got {value!r}"
    if "/" in value or value in (".", ".."):
        return f"{what} must not contain '/' or be '.' or '..', got {value!r}"
    return None


def _check_timeout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError([Problem("timeout", f"must be a number of seconds, got {value!r}")])
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError([Problem("timeout", f"must be > 0, got {value!r}")])
    if value > MAX_TIMEOUT:
        raise InvalidInputError(
            [Problem("timeout", f"must be at most {MAX_TIMEOUT} seconds, got {value!r}")]
        )


@attrs.frozen
class Subscription:
    """A subscriber's interest in one message type.

    Args:
        message_type: the actions and events it receives.
        wait_for_completion: whether perform-action steps wait for its answer.
        timeout: seconds it may take; a step waiting for it lasts at least this long.
    """

    message_type: str
    wait_for_completion: bool = True
    timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        problems = []
        problem = id_problem(self.message_type, "a message type")
        if problem is not None:
            problems.append(Problem("message_type", problem))
        if not isinstance(self.wait_for_completion, bool):
            problems.append(
                Problem(
                    "wait_for_completion",
                    f"must be true or false, got {self.wait_for_completion!r}",
                )
            )
        try:
            _check_timeout(self.timeout)
        except InvalidInputError as error:
            problems.extend(error.problems)
        if problems:
            raise InvalidInputError(problems)

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "message_type": self.message_type,
            "wait_for_completion": self.wait_for_completion,
            "timeout": self.timeout,
        }


@attrs.frozen
class Subscriber:
    """A subscriber id and its subscriptions by message type.

    A subscriber read from a :class:`SubscriberRegistry` is a live, read-only
    view: it shows later changes of the subscriber's subscriptions.
    """

    id: str
    subscriptions: Mapping[str, Subscription] = attrs.field(factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "id": self.id,
            "subscriptions": {mt: s.to_json() for mt, s in self.subscriptions.items()},
        }


@attrs.frozen
class SubscriptionChange:
    """What one change of the registry did to one subscriber."""

    subscriber_id: str
    #: Subscriptions added or changed.
    added: tuple[Subscription, ...] = ()
    #: Message types no longer subscribed to.
    removed: frozenset[str] = frozenset()
    #: Whether all of the subscriber's subscriptions were replaced at once.
    replaced: bool = False
    #: Whether the subscriber still exists (False: it was removed).
    exists: bool = True


def check_subscriber_id(subscriber_id: object) -> None:
    """Raise :class:`InvalidInputError` unless ``subscriber_id`` follows the id rule."""
    problem = id_problem(subscriber_id, "a subscriber id")
    if problem is not None:
        raise InvalidInputError([Problem("subscriber_id", problem)])


@attrs.define(eq=False)
class _Entry:
    subscriptions: dict[str, Subscription]
    view: Subscriber
    #: Each subscription's JSON member (``"type":{...}``), in the order they were added.
    members: dict[str, bytes]
    #: The subscriber's whole JSON, until it next changes.
    encoded: bytes | None = None


class SubscriberRegistry:
    """Subscribers and their subscriptions, indexed by message type.

    ``on_change`` is called after every change with a :class:`SubscriptionChange`.
    """

    def __init__(self, on_change: Callable[[SubscriptionChange], None] | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._by_type: dict[str, dict[str, Subscription]] = {}
        self._awaited: dict[str, tuple[frozenset[str], float]] = {}
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Subscriber]:
        return iter([self._entries[sid].view for sid in sorted(self._entries)])

    def get(self, subscriber_id: str) -> Subscriber | None:
        """Return the subscriber, or None."""
        entry = self._entries.get(subscriber_id)
        return None if entry is None else entry.view

    def encoded(self, subscriber_id: str) -> bytes | None:
        """Return the subscriber's JSON (as :meth:`Subscriber.to_json`), or None if unknown."""
        entry = self._entries.get(subscriber_id)
        if entry is None:
            return None
        if entry.encoded is None:
            entry.encoded = b"".join(
                (
                    b'{"id":',
                    orjson.dumps(subscriber_id),
                    b',"subscriptions":{',
                    b",".join(entry.members.values()),
                    b"}}",
                )
            )
        return entry.encoded

    def for_type(self, message_type: str) -> list[Subscriber]:
        """Return the subscribers of a message type."""
        return [self._entries[sid].view for sid in sorted(self._by_type.get(message_type, ()))]

    def awaited(self, message_type: str) -> tuple[frozenset[str], float]:
        """Return who steps of ``message_type`` wait for, and the longest of their timeouts.

        Kept per message type until its subscriptions change: steps ask at every start.
        """
        cached = self._awaited.get(message_type)
        if cached is None:
            subscriptions = self.waiting_for(message_type)
            cached = (
                frozenset(subscriptions),
                max((s.timeout for s in subscriptions.values()), default=0.0),
            )
            self._awaited[message_type] = cached
        return cached

    def waiting_for(self, message_type: str) -> dict[str, Subscription]:
        """Return the subscriptions to ``message_type`` that steps wait for, by subscriber id."""
        subs = self._by_type.get(message_type)
        if not subs:
            return {}
        return {sid: s for sid, s in subs.items() if s.wait_for_completion}

    def add(
        self,
        subscriber_id: str,
        message_type: str,
        *,
        wait_for_completion: bool = True,
        timeout: float = 60.0,
    ) -> Subscriber:
        """Add or update one subscription (idempotent); return the subscriber."""
        check_subscriber_id(subscriber_id)
        subscription = Subscription(message_type, wait_for_completion, timeout)
        entry = self._entry(subscriber_id)
        if entry.subscriptions.get(message_type) != subscription:
            self._put(subscriber_id, entry, subscription)
            self._changed(SubscriptionChange(subscriber_id, added=(subscription,)))
        return entry.view

    def remove(self, subscriber_id: str, message_type: str) -> Subscriber | None:
        """Remove one subscription; return the subscriber (None if it was unknown)."""
        entry = self._entries.get(subscriber_id)
        if entry is None:
            return None
        if message_type in entry.subscriptions:
            self._drop(subscriber_id, entry, message_type)
            self._changed(SubscriptionChange(subscriber_id, removed=frozenset({message_type})))
        return entry.view

    def replace(self, subscriber_id: str, subscriptions: Iterable[Subscription]) -> Subscriber:
        """Replace all subscriptions of a subscriber (creating it if needed)."""
        check_subscriber_id(subscriber_id)
        by_type: dict[str, Subscription] = {}
        for index, subscription in enumerate(subscriptions):
            if not isinstance(subscription, Subscription):
                raise InvalidInputError(
                    [Problem(f"[{index}]", f"must be a Subscription, got {subscription!r}")]
                )
            by_type[subscription.message_type] = subscription
        entry = self._entry(subscriber_id)
        removed = frozenset(entry.subscriptions.keys() - by_type.keys())
        for message_type in removed:
            self._drop(subscriber_id, entry, message_type)
        for subscription in by_type.values():
            self._put(subscriber_id, entry, subscription)
        self._changed(
            SubscriptionChange(
                subscriber_id, added=tuple(by_type.values()), removed=removed, replaced=True
            )
        )
        return entry.view

    def remove_subscriber(self, subscriber_id: str) -> bool:
        """Remove a subscriber and all its subscriptions; return whether it existed."""
        entry = self._entries.pop(subscriber_id, None)
        if entry is None:
            return False
        for message_type in entry.subscriptions:
            self._unindex(subscriber_id, message_type)
        removed = frozenset(entry.subscriptions)
        self._changed(SubscriptionChange(subscriber_id, removed=removed, exists=False))
        return True

    def _entry(self, subscriber_id: str) -> _Entry:
        entry = self._entries.get(subscriber_id)
        if entry is None:
            subscriptions: dict[str, Subscription] = {}
            view = Subscriber(subscriber_id, MappingProxyType(subscriptions))
            entry = self._entries[subscriber_id] = _Entry(subscriptions, view, {})
        return entry

    def _put(self, subscriber_id: str, entry: _Entry, subscription: Subscription) -> None:
        message_type = subscription.message_type
        entry.subscriptions[message_type] = subscription
        entry.members[message_type] = b"%b:%b" % (
            orjson.dumps(message_type),
            orjson.dumps(subscription.to_json()),
        )
        entry.encoded = None
        self._by_type.setdefault(message_type, {})[subscriber_id] = subscription
        self._awaited.pop(message_type, None)

    def _drop(self, subscriber_id: str, entry: _Entry, message_type: str) -> None:
        del entry.subscriptions[message_type]
        del entry.members[message_type]
        entry.encoded = None
        self._unindex(subscriber_id, message_type)

    def _unindex(self, subscriber_id: str, message_type: str) -> None:
        self._awaited.pop(message_type, None)
        subs = self._by_type.get(message_type)
        if subs is not None:
            subs.pop(subscriber_id, None)
            if not subs:
                del self._by_type[message_type]

    def _changed(self, change: SubscriptionChange) -> None:
        if self._on_change is not None:
            self._on_change(change)
