"""Subscribers: the id rule, and changes that cost the same however many subscriptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine import InvalidInputError, SQLiteStore, Subscription, open_engine
from engine._subscribers import SubscriberRegistry, SubscriptionChange

from .web_support import running_server


@pytest.mark.parametrize(
    ("subscriber_id", "problem"),
    [
        ("", "a subscriber id must be a non-empty string, got ''"),
        ("a\x00b", r"a subscriber id must be printable (no control characters), got 'a\x00b'"),
        ("a\r\nb", r"a subscriber id must be printable (no control characters), got 'a\r\nb'"),
        ("\ud800", r"a subscriber id must be printable (no control characters), got '\ud800'"),
        ("..", "a subscriber id must not contain '/' or be '.' or '..', got '..'"),
        ("a/b", "a subscriber id must not contain '/' or be '.' or '..', got 'a/b'"),
        ("x" * 201, "a subscriber id must be at most 200 characters, got 201"),
    ],
)
def test_subscriber_ids_follow_one_rule(subscriber_id: str, problem: str) -> None:
    registry = SubscriberRegistry()
    with pytest.raises(InvalidInputError) as raised:
        registry.add(subscriber_id, "collect")
    assert [str(p) for p in raised.value.problems] == [f"subscriber_id: {problem}"]
    with pytest.raises(InvalidInputError):
        registry.replace(subscriber_id, [])
    assert len(registry) == 0


def test_each_change_reports_only_what_changed() -> None:
    changes: list[SubscriptionChange] = []
    registry = SubscriberRegistry(changes.append)
    for index in range(2000):
        registry.add("many", f"type{index}", timeout=index + 1)
    registry.add("many", "type5", timeout=6)  # the same again: nothing changes
    registry.remove("many", "type7")
    assert len(changes) == 2001
    assert all(len(change.added) == 1 and not change.replaced for change in changes[:2000])
    assert changes[-1] == SubscriptionChange("many", removed=frozenset({"type7"}))
    subscriber = registry.get("many")
    assert subscriber is not None
    assert len(subscriber.subscriptions) == 1999
    encoded = registry.encoded("many")
    assert encoded is not None
    assert json.loads(encoded) == subscriber.to_json()


async def test_a_subscription_change_writes_one_row(tmp_path: Path) -> None:
    calls: list[tuple[str, Any]] = []

    class CountingStore(SQLiteStore):
        def save_subscriber(self, subscriber_id: str, subscriptions: list[dict[str, Any]]) -> None:
            calls.append(("save_subscriber", len(subscriptions)))
            super().save_subscriber(subscriber_id, subscriptions)

        def save_subscription(self, subscriber_id: str, subscription: dict[str, Any]) -> None:
            calls.append(("save_subscription", subscription["message_type"]))
            super().save_subscription(subscriber_id, subscription)

    store = CountingStore(tmp_path / "state.sqlite3")
    async with open_engine(store=store) as engine:
        for index in range(500):
            engine.subscribe("many", f"type{index}")
        engine.unsubscribe("many", "type3")
        engine.set_subscriptions("other", [Subscription("a"), Subscription("b", timeout=5)])
    assert calls[:500] == [("save_subscription", f"type{index}") for index in range(500)]
    assert calls[500:] == [("save_subscriber", 2)]
    store.close()
    store = SQLiteStore(tmp_path / "state.sqlite3")
    stored = store.load().subscribers
    store.close()
    assert len(stored["many"]) == 499
    assert stored["other"] == [
        {"message_type": "a", "wait_for_completion": True, "timeout": 60},
        {"message_type": "b", "wait_for_completion": True, "timeout": 5},
    ]


async def test_the_http_answer_is_the_whole_subscriber() -> None:
    async with running_server() as server:
        for index in range(300):
            answer = await server.http.post(f"/subscriber/many/type{index}")
            assert answer.status_code == 200
        body = answer.json()
        assert body["id"] == "many"
        assert list(body["subscriptions"]) == [f"type{index}" for index in range(300)]
        assert body["subscriptions"]["type0"] == {
            "message_type": "type0",
            "wait_for_completion": True,
            "timeout": 60.0,
        }
        listed = (await server.http.get("/subscribers")).json()
        assert listed == [body]
