"""Delivery between replicas on one Redis: what is sent again after a takeover, when an
answer counts as taken, and calls Redis carried out but answered late.

Leases last two seconds; Redis keeps its own time, so these tests run in real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import coredis
import orjson
import pytest
import trio
from coredis.tokens import PureToken

from engine import Action, ActionDone, Engine, Event, Outcome, open_engine
from engine._bus import LISTENER_CONNECTED
from engine._messages import answer_for
from engine._records import TaskResult
from engine._redis import DRIVER_GROUP, RedisStore, open_redis_store
from engine._replicas import ActionRelay

from .test_redis_replicas import LEASE, THREE_STEPS, next_action
from .test_redis_store import finished, running, stream_bodies

pytestmark = pytest.mark.redis


@asynccontextmanager
async def replica(
    url: str, name: str, *, answer_timeout: float = 5.0
) -> AsyncIterator[tuple[Engine, RedisStore]]:
    async with (
        open_redis_store(url, answer_timeout=answer_timeout) as store,
        open_engine(workflows=[THREE_STEPS], store=store, replica=name, lease=LEASE) as engine,
    ):
        yield engine, store


def answer_body(task_id: str, step: str, subscriber_id: str) -> bytes:
    """Return an answer as a replica relays it to the replica driving the task."""
    done = answer_for(Action(step, task_id, step), ActionDone, subscriber_id)
    return orjson.dumps({"s": subscriber_id, "m": done.to_json()})


async def quiet(listener: Any, seconds: float) -> list[Any]:
    """Return the actions a listener receives within ``seconds`` (none, hopefully)."""
    got = []
    with trio.move_on_after(seconds):
        while True:
            message = await listener.receive()
            if isinstance(message, Action):
                got.append(message)
    return got


async def test_a_step_taken_over_is_sent_again_only_to_the_subscribers_still_owing_it(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, _):
        for subscriber_id in ("w", "v"):
            for step in ("a", "b", "c"):
                one.subscribe(subscriber_id, step)
        async with (
            one.open_listener(subscriber_id="w") as w,
            one.open_listener(subscriber_id="v") as v,
        ):
            task_id = (await one.start_run("durable")).task_id
            assert task_id is not None
            for listener in (w, v):
                listener.done(await next_action(listener))
            for listener in (w, v):
                assert (await next_action(listener)).step == "b"
    # "one" stopped (its lease given up) with both owing b; w's answer to b reached Redis
    # for "one" before another replica took the task over
    async with open_redis_store(redis_url) as store:
        assert await store.lease_of(task_id) == "one"
        assert await store.streams.send_answer(task_id, answer_body(task_id, "b", "w"))
    async with (
        replica(redis_url, "two") as (two, store),
        two.open_listener(subscriber_id="w") as w,
        two.open_listener(subscriber_id="v") as v,
    ):
        sent = await next_action(v, timeout=5)
        assert (sent.task, sent.step) == (task_id, "b")
        assert await store.lease_of(task_id) == "two"
        assert await quiet(w, 0.5) == []  # w answered b: it is not asked again
        v.done(sent)
        for listener in (w, v):
            sent = await next_action(listener, timeout=5)
            assert (sent.task, sent.step) == (task_id, "c")
            listener.done(sent)
        with trio.fail_after(5):
            result = await two.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert [dict(s.answered) for s in result.steps] == [{"w": "done", "v": "done"}] * 3


async def test_a_step_taken_over_skips_a_subscriber_connected_to_another_replica_that_answered(
    redis_url: str,
) -> None:
    """The subscriber that answered listens on a third replica: the action is not put in
    its stream again either."""
    stream = "phasebus:answers:one"
    async with (
        replica(redis_url, "three") as (three, _),
        three.open_listener(subscriber_id="w") as w,
    ):
        async with replica(redis_url, "one") as (one, store):
            for subscriber_id in ("w", "v"):
                for step in ("a", "b", "c"):
                    one.subscribe(subscriber_id, step)
            async with one.open_listener(subscriber_id="v") as v:
                task_id = (await one.start_run("durable")).task_id
                assert task_id is not None
                for listener in (w, v):
                    listener.done(await next_action(listener))
                for listener in (w, v):
                    assert (await next_action(listener)).step == "b"
                # w's answer to a went through "one"'s stream: acknowledged, it is deleted
                with trio.fail_after(5):
                    while await store.streams.follow(stream):
                        await trio.sleep(0.01)
                one.freeze()  # "one" stops: it takes nothing more
                # w answers b through "three": the answer waits in "one"'s stream
                w.done(Action("b", task_id, "b"))
                with trio.fail_after(5):
                    while not await store.streams.follow(stream):
                        await trio.sleep(0.01)
        # "one" gave its lease up; "two" (or "three") takes the task over
        async with (
            replica(redis_url, "two") as (two, store),
            two.open_listener(subscriber_id="v") as v,
        ):
            sent = await next_action(v, timeout=5)
            assert (sent.task, sent.step) == (task_id, "b")
            assert await quiet(w, 0.5) == []
            v.done(sent)
            for listener in (w, v):
                sent = await next_action(listener, timeout=5)
                assert (sent.task, sent.step) == (task_id, "c")
                listener.done(sent)
            with trio.fail_after(5):
                while not isinstance(result := await two.fetch_task(task_id), TaskResult):
                    await trio.sleep(0.05)
    assert result.outcome is Outcome.DONE
    assert [dict(s.answered) for s in result.steps] == [{"w": "done", "v": "done"}] * 3


async def test_an_answer_is_acknowledged_only_once_the_state_it_caused_is_committed(
    redis_url: str,
) -> None:
    stream = "phasebus:answers:one"
    async with (
        replica(redis_url, "two") as (two, _),
        two.open_listener(subscriber_id="w") as w,
    ):
        async with replica(redis_url, "one") as (one, store):
            for step in ("a", "b", "c"):
                one.subscribe("w", step)
            task_id = (await one.start_run("durable")).task_id
            sent = await next_action(w, timeout=5)
            assert (sent.task, sent.step) == (task_id, "a")
            w.done(sent)
            assert (await next_action(w, timeout=5)).step == "b"

            async def never(*_: object, **__: object) -> None:
                await trio.sleep_forever()

            # from now on "one"'s commits never end: it dies before its next one lands
            store.commit = never  # type: ignore[method-assign]
            w.done(Action("b", task_id, "b"))
            with trio.fail_after(5):
                while not (owed := await store.streams.owed(stream, DRIVER_GROUP, "one")):
                    await trio.sleep(0.01)
            # read, taken into the task, but not acknowledged: its state is not committed
            assert [orjson.loads(body)["m"]["data"]["step"] for _, body in owed] == ["b"]
            await trio.sleep(0.5)
            assert len(await store.streams.owed(stream, DRIVER_GROUP, "one")) == 1
        # "one" is gone without giving its lease up; "two" takes the task over with the
        # answer, which it no longer asks for
        sent = await next_action(w, timeout=10)
        assert (sent.task, sent.step) == (task_id, "c")
        w.done(sent)
        with trio.fail_after(5):
            while not isinstance(result := await two.fetch_task(task_id), TaskResult):
                await trio.sleep(0.05)
    assert result.outcome is Outcome.DONE
    assert [dict(s.answered) for s in result.steps] == [{"w": "done"}] * 3


# ------------------------------------------------------------------ calls answered late


@asynccontextmanager
async def writes_paused(url: str, seconds: float) -> AsyncIterator[None]:
    """Hold every write Redis is sent for ``seconds`` (CLIENT PAUSE WRITE): those sent
    meanwhile are carried out when the pause ends, and answered then, late."""
    async with coredis.Redis.from_url(url) as admin:
        assert await admin.client_pause(int(seconds * 1000), PureToken.WRITE)
        try:
            yield
        finally:
            await admin.client_unpause()


async def test_a_lease_acquired_but_answered_late_is_recognised_when_asked_again(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url, answer_timeout=0.3) as store:
        # Redis knows the script (else the abandoned attempt would not be carried out)
        assert await store.acquire_lease("other", timedelta(minutes=1)) is not None
        began = trio.current_time()
        async with writes_paused(redis_url, 1.0):
            token = await store.acquire_lease("a", timedelta(minutes=1))
        # the first attempt took the lease; the one sent again after 0.3 s finds it its own
        assert token is not None
        assert trio.current_time() - began < 5
        assert store.round_trips >= 2
        assert await store.renew_lease("a", token, timedelta(minutes=1))
        # anyone else still finds it held
        async with open_redis_store(redis_url) as other:
            assert await other.acquire_lease("a", timedelta(minutes=1)) is None


async def test_events_sent_again_after_a_late_answer_reach_the_other_replicas_once(
    redis_url: str,
) -> None:
    async with (
        replica(redis_url, "one", answer_timeout=0.3) as (one, store),
        replica(redis_url, "two") as (two, _),
        two.open_listener(message_types=["hello"]) as far,
    ):
        one.publish(Event("hello", {"n": 0}))  # Redis knows the script from now on
        with trio.fail_after(5):
            assert (await far.receive()).data == {"n": 0}
        sent = store.round_trips
        async with writes_paused(redis_url, 1.0):
            one.publish(Event("hello", {"n": 1}))
            one.publish(Event("hello", {"n": 2}))
            await trio.sleep(0.8)
            assert store.round_trips - sent >= 2  # sent again, unanswered
        one.publish(Event("hello", {"n": 3}))
        got = []
        with trio.move_on_after(2):
            while True:
                got.append((await far.receive()).data["n"])
        events = await store.streams.follow(store.streams.event_stream())
    assert got == [1, 2, 3]
    bodies = [orjson.loads(body) for _, body in events]
    assert [body["d"]["n"] for body in bodies if body.get("t") == "hello"] == [0, 1, 2, 3]


async def test_an_adoption_answered_late_returns_the_tasks_it_moved_when_asked_again(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url, answer_timeout=0.3) as store:
        one = await store.acquire_lease("one", LEASE)
        assert one is not None
        await store.commit([running("t1"), running("t2")], owner="one", fence=one)
        assert await store.release_lease("one", one)
        two = await store.acquire_lease("two", timedelta(minutes=1))
        assert two is not None
        assert await store.adopt("nobody", owner="two", fence=two) == []  # the script is known
        async with writes_paused(redis_url, 1.0):
            records = await store.adopt("one", owner="two", fence=two)
        assert sorted(records) == sorted([running("t1").record, running("t2").record])
        assert [await store.lease_of(t) for t in ("t1", "t2")] == ["two", "two"]
        # another adopter's call (an id of its own) finds nothing left
        three = await store.acquire_lease("three", timedelta(minutes=1))
        assert three is not None
        assert await store.adopt("one", owner="three", fence=three) == []


async def test_a_commit_answered_late_writes_its_tasks_once(redis_url: str) -> None:
    async with open_redis_store(redis_url, answer_timeout=0.3) as store:
        token = await store.acquire_lease("one", timedelta(minutes=1))
        assert token is not None
        await store.commit([running("t1"), running("t2")], owner="one", fence=token)
        sent = store.round_trips
        async with writes_paused(redis_url, 1.0):
            await store.commit([finished("t1", 10.0), running("t2", "b")], owner="one", fence=token)
        assert store.round_trips - sent >= 2  # sent again
        assert [task["id"] for task in await store.history()] == ["t1"]
        assert await store.history(workflow="wf") == await store.history()
        state = await store.load(lease="one")
        assert [(task["id"], task["state"]) for task in state.tasks] == [("t2", "b")]
        assert await store.task_ids("t", limit=10) == ["t1", "t2"]


async def test_a_firing_claimed_but_answered_late_is_still_the_claimers(redis_url: str) -> None:
    planned = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
    async with (
        open_redis_store(redis_url, answer_timeout=0.3) as store,
        open_redis_store(redis_url) as other,
    ):
        assert await store.claim_firing("tick", "* * * * *", "UTC", planned)
        later = planned + timedelta(minutes=1)
        async with writes_paused(redis_url, 1.0):
            assert await store.claim_firing("tick", "* * * * *", "UTC", later)
        assert not await other.claim_firing("tick", "* * * * *", "UTC", later)
        assert not await store.claim_firing("tick", "* * * * *", "UTC", later)  # taken once


# ------------------------------------------------------------------ a subscriber connecting


def relay_of(engine: Engine) -> ActionRelay:
    """Return the relay of an engine on a Redis store (it routes the engine's actions)."""
    (relay,) = {router.__self__ for router, _ in engine._bus.routers}  # type: ignore[attr-defined]
    assert isinstance(relay, ActionRelay)
    return relay


async def test_a_subscriber_is_not_sent_twice_what_reached_it_before_its_connection_was_heard_of(
    redis_url: str,
) -> None:
    """The replica driving a task hears late that the subscriber connected to another one:
    what it sends again then is not passed on to that connection a second time."""
    async with replica(redis_url, "one") as (one, _), replica(redis_url, "two") as (two, _):
        for step in ("a", "b", "c"):
            one.subscribe("w", step)
        with trio.fail_after(5):
            while len(getattr(two.subscribers.get("w"), "subscriptions", ())) < 3:
                await trio.sleep(0.01)
        async with two.open_listener(subscriber_id="w") as w:
            task_id = (await one.start_run("durable")).task_id
            first = await next_action(w, timeout=5)
            assert (first.task, first.step) == (task_id, "a")
            # "one" hears now (late) of w's connection to "two": it sends a again
            relay_of(one).listeners_changed(
                Event(LISTENER_CONNECTED, {"subscriber_id": "w", "channels": ["a", "b", "c"]})
            )
            assert await quiet(w, 0.5) == []
            w.done(first)
            for step in ("b", "c"):
                sent = await next_action(w, timeout=5)
                assert (sent.task, sent.step) == (task_id, step)
                w.done(sent)
            assert task_id is not None
            with trio.fail_after(5):
                result = await one.wait_task(task_id)
    assert result.outcome is Outcome.DONE


async def test_a_subscriber_moving_between_replicas_that_do_not_drive_its_task_gets_what_it_owes(
    redis_url: str,
) -> None:
    async with (
        replica(redis_url, "one") as (one, _),
        replica(redis_url, "two") as (two, _),
        replica(redis_url, "three") as (three, _),
    ):
        for step in ("a", "b", "c"):
            one.subscribe("w", step)
        with trio.fail_after(5):
            for engine in (two, three):
                while len(getattr(engine.subscribers.get("w"), "subscriptions", ())) < 3:
                    await trio.sleep(0.01)
        async with two.open_listener(subscriber_id="w") as w:
            task_id = (await one.start_run("durable")).task_id
            first = await next_action(w, timeout=5)
            assert (first.task, first.step) == (task_id, "a")
        # it went away from "two" without answering, and comes back through "three"
        async with three.open_listener(subscriber_id="w") as w:
            owed = await next_action(w, timeout=5)
            assert (owed.task, owed.step) == (task_id, "a")
            assert await quiet(w, 0.3) == []
            w.done(owed)
            for step in ("b", "c"):
                sent = await next_action(w, timeout=5)
                assert (sent.task, sent.step) == (task_id, step)
                w.done(sent)
            assert task_id is not None
            with trio.fail_after(5):
                result = await one.wait_task(task_id)
    assert result.outcome is Outcome.DONE


async def test_answers_taken_over_by_a_replica_that_died_before_they_counted_are_not_lost(
    redis_url: str,
) -> None:
    """ "one" stops owing b with w's answer in its stream; "two" takes the task and the answer
    over but dies before committing what the answer caused; "three" takes both from there."""
    async with replica(redis_url, "one") as (one, _):
        for step in ("a", "b", "c"):
            one.subscribe("w", step)
        async with one.open_listener(subscriber_id="w") as w:
            task_id = (await one.start_run("durable")).task_id
            assert task_id is not None
            w.done(await next_action(w))
            assert (await next_action(w)).step == "b"
    async with open_redis_store(redis_url) as store:
        assert await store.streams.send_answer(task_id, answer_body(task_id, "b", "w"))

    async def never(*_: object, **__: object) -> None:
        await trio.sleep_forever()

    async with open_redis_store(redis_url) as store:
        store.commit = never  # type: ignore[method-assign]  # "two" dies before committing
        async with open_engine(
            workflows=[THREE_STEPS], store=store, replica="two", lease=LEASE
        ) as two:
            with trio.fail_after(5):
                while not await store.streams.owed("phasebus:answers:one", DRIVER_GROUP, "two"):
                    await trio.sleep(0.01)
            assert await store.lease_of(task_id) == "two"
            assert two.tasks()[0].step.name == "c"  # type: ignore[union-attr]
    async with (
        replica(redis_url, "three") as (three, store),
        three.open_listener(subscriber_id="w") as w,
    ):
        sent = await next_action(w, timeout=10)  # b is not asked again: w's answer counts
        assert (sent.task, sent.step) == (task_id, "c")
        assert await store.lease_of(task_id) == "three"
        w.done(sent)
        with trio.fail_after(5):
            result = await three.wait_task(task_id)
        # what "one" left, "two" took and "three" acknowledged (once what it caused was
        # committed: that may come after the task's end is announced) is deleted
        with trio.fail_after(5):
            while (
                await store.streams.owed("phasebus:answers:one", DRIVER_GROUP, "three")
                or await stream_bodies(redis_url, "phasebus:answers:one")
                or await stream_bodies(redis_url, "phasebus:answers:three")
                or await store.streams.left("three")
            ):
                await trio.sleep(0.01)
    assert result.outcome is Outcome.DONE
    assert [dict(s.answered) for s in result.steps] == [{"w": "done"}] * 3
