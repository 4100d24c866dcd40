"""Replicas on one Redis send each other only the events some replica wants.

Each test runs two engines in one process on a real redis-server and reads
the shared events stream to see what was sent.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

from engine import Action, Engine, Event, Outcome, Step, WaitForEvent, Workflow, open_engine
from engine._metrics import EngineMetrics
from engine._redis import RedisStore, open_redis_store
from engine._replicas import EventFanout
from engine._server import serve_app
from engine._web import create_app

from .test_redis_growth import fields
from .web_support import events_until

pytestmark = pytest.mark.redis

LEASE = timedelta(seconds=2)
STEPS = Workflow(id="steps", steps=[Step(name, timeout=30) for name in "abc"], surpass="parallel")
WAITS = Workflow(id="waits", steps=[Step("ready", action=WaitForEvent("go", {"n": 1}))])


@asynccontextmanager
async def replica(
    url: str, name: str, workflows: list[Workflow] | None = None
) -> AsyncIterator[tuple[Engine, RedisStore]]:
    async with (
        open_redis_store(url) as store,
        open_engine(
            workflows=[STEPS] if workflows is None else workflows,
            store=store,
            replica=name,
            lease=LEASE,
        ) as engine,
    ):
        yield engine, store


async def sent(store: RedisStore) -> list[tuple[str, str]]:
    """Return (replica, event type) of every event in the shared stream, oldest first."""
    streams = store.streams
    entries = await streams.follow(streams.event_stream(), "0-0", count=10_000)
    found = []
    for _, body in entries:
        data = orjson.loads(body)
        if "t" in data:
            found.append((data["r"], data["t"]))
    return found


async def run_answered(engine: Engine, subscriber: Any) -> str:
    """Run STEPS on ``engine``, answering its actions through ``subscriber``; return its id."""
    task_id = engine.start_workflow("steps").task_id
    assert task_id is not None
    with trio.fail_after(10):
        async for message in subscriber:
            if isinstance(message, Action) and message.task == task_id:
                subscriber.done(message)
                if message.step == "c":
                    break
        assert (await engine.wait_task(task_id)).outcome is Outcome.DONE
    return task_id


async def test_an_event_nobody_wants_is_not_sent_and_one_wanted_elsewhere_is(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, store), replica(redis_url, "two") as (two, _):
        for step in "abc":
            one.subscribe("w", step)
        async with one.open_listener(subscriber_id="w") as worker:
            await run_answered(one, worker)
            await trio.sleep(0.3)  # its task_end was filtered, not just queued
            # only listener announcements went out: nobody listens to the task's events
            assert {kind for _, kind in await sent(store)} <= {
                "message-listener-connected",
                "message-listener-disconnected",
            }
            async with two.open_listener(message_types=["task_end"]) as far:
                task_id = await run_answered(one, worker)
                with trio.fail_after(5):
                    event = await far.receive()
                assert (event.message_type, event.data["task_id"]) == ("task_end", task_id)
            kinds = [kind for who, kind in await sent(store) if who == "one"]
            assert "task_end" in kinds
            assert "progress" not in kinds
            assert "task_started" not in kinds


async def test_a_listener_connecting_later_on_another_replica_gets_what_is_published_after(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, store), replica(redis_url, "two") as (two, _):
        for step in "abc":
            one.subscribe("w", step)
        async with one.open_listener(subscriber_id="w") as worker:
            await run_answered(one, worker)
            await trio.sleep(0.3)  # "one" filtered its events: it knows nobody wants them
            async with two.open_listener(message_types=["progress", "task_end"]) as far:
                # no wait for "one" to hear of it: its next append finds the interest changed
                task_id = await run_answered(one, worker)
                got = []
                with trio.fail_after(5):
                    while not got or got[-1] != "task_end":
                        event = await far.receive()
                        assert event.data.get("task_id", event.data.get("task")) == task_id
                        got.append(event.message_type)
            assert got == ["progress"] * 4 + ["task_end"]  # as each step starts, and at the end
            assert ("one", "progress") in await sent(store)
        # a listener for every type wants everything, a user's events too
        async with two.open_listener() as everything:
            one.publish(Event("hello", {"n": 1}))
            with trio.fail_after(5):
                while (message := await everything.receive()).message_type != "hello":
                    pass
            assert message.data == {"n": 1}


async def test_an_events_websocket_on_another_server_gets_what_is_published_once_it_opened(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, _), replica(redis_url, "two") as (two, _):
        for step in "abc":
            one.subscribe("w", step)
        app = create_app(two)
        try:
            async with (
                one.open_listener(subscriber_id="w") as worker,
                trio.open_nursery() as nursery,
            ):
                await run_answered(one, worker)
                await trio.sleep(0.3)  # "one" filtered its events: nobody wanted them
                url = await nursery.start(functools.partial(serve_app, app, port=0))
                host, port = url.removeprefix("http://").rsplit(":", 1)
                stream = await trio.open_tcp_stream(host, int(port))
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, host, "/events?show=progress,task_end"
                )
                # accepted: "two" stored its interest first, "one" need not have heard of it
                task_id = await run_answered(one, worker)
                got = await events_until(ws, "task_end", timeout=5)
                await ws.aclose()
                await stream.aclose()
                nursery.cancel_scope.cancel()
        finally:
            app.close()
    assert [(m["message_type"], m["data"].get("task_id", m["data"].get("task"))) for m in got] == [
        *[("progress", task_id)] * 4,
        ("task_end", task_id),
    ]


async def test_events_nobody_wants_cost_no_call_to_redis_beyond_the_commits(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, store), replica(redis_url, "two") as (two, _):
        streams = store.streams
        appends: list[int] = []
        publish_events = streams.publish_events

        async def counted(*args: Any, **kwargs: Any) -> Any:
            appends.append(1)
            return await publish_events(*args, **kwargs)

        streams.publish_events = counted  # type: ignore[method-assign]
        for step in "abc":
            one.subscribe("w", step)
        async with one.open_listener(subscriber_id="w") as worker:
            await run_answered(one, worker)
            await trio.sleep(0.3)
            appends.clear()
            commits = store.last_commit_call
            await run_answered(one, worker)
            await trio.sleep(0.3)
            # each commit read the interest's version: the events it caused needed no check
            assert store.last_commit_call > commits
            assert appends == []
            async with two.open_listener(message_types=["progress"]):
                await run_answered(one, worker)  # "two" wants them now: they are appended
            assert appends


async def test_a_step_waiting_on_another_replica_gets_the_event(redis_url: str) -> None:
    # "two" does not run the waiting workflow: only the waiting replica's interest tells it
    async with (
        replica(redis_url, "one", [WAITS]) as (one, store),
        replica(redis_url, "two", []) as (two, _),
    ):
        two.publish(Event("go", {"n": 1}))
        await trio.sleep(0.3)
        assert await sent(store) == []  # nobody waits yet: not sent
        task_id = (await one.start_run("waits")).task_id
        assert task_id is not None
        with trio.fail_after(5):
            while "go" not in one._core.event_waiters:
                await trio.sleep(0.01)
        await one.wait_listeners_shared()  # its interest covers its waiting step now
        two.publish(Event("go", {"n": 2}))  # sent, and not the one the step waits for
        two.publish(Event("go", {"n": 1}))
        with trio.fail_after(5):
            result = await one.wait_task(task_id)
        assert result.outcome is Outcome.DONE
        assert [kind for who, kind in await sent(store) if who == "two"] == ["go", "go"]


async def test_a_workflow_registered_here_that_waits_makes_its_event_sent_at_once(
    redis_url: str,
) -> None:
    async with (
        replica(redis_url, "one", [WAITS]) as (one, _),
        replica(redis_url, "two", [WAITS]) as (two, _),
    ):
        task_id = (await one.start_run("waits")).task_id
        assert task_id is not None
        two.publish(Event("go", {"n": 1}))  # "two" runs WAITS too: it sends "go" always
        with trio.fail_after(5):
            result = await one.wait_task(task_id)
        assert result.outcome is Outcome.DONE


async def test_the_interest_of_a_replica_goes_with_its_lease(redis_url: str) -> None:
    async with replica(redis_url, "one") as (one, store):
        for step in "abc":
            one.subscribe("w", step)
        async with one.open_listener(subscriber_id="w") as worker:
            async with replica(redis_url, "two") as (two, _), two.open_listener():
                await run_answered(one, worker)
                assert ("one", "progress") in await sent(store)
            # "two" gave its lease up; "one" counts its interest no more once it read it again
            await trio.sleep(LEASE.total_seconds() / 3 + 0.5)
            before = len(await sent(store))
            await run_answered(one, worker)
            after = await sent(store)
        assert after[before:] == []
        streams = store.streams
        version, interests = await streams.interests()
        assert set(interests) == {"one"}
        assert int(version) >= 2


async def stored_interests(url: str) -> set[str]:
    """Return the replicas whose interest is stored, live or not."""
    return set(await fields(url, "interests"))


async def test_a_replica_holding_its_lease_again_gets_at_once_what_the_others_publish(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the replicas read each other's interest only when this test says so: what brings
    # "two" its events back is taking its lease again, not its next read of the interest
    fanouts: dict[str, EventFanout] = {}

    async def read_when_told(self: EventFanout, period: float) -> None:
        fanouts[self._replica] = self
        await trio.sleep_forever()

    monkeypatch.setattr(EventFanout, "poll", read_when_told)
    async with (
        replica(redis_url, "one") as (one, store),
        replica(redis_url, "two") as (two, two_store),
        two.open_listener(message_types=["hello"]) as far,
    ):
        one.publish(Event("hello", {"n": 1}))
        with trio.fail_after(5):
            assert (await far.receive()).data == {"n": 1}

        # "two" cannot take its lease again until "one" has read that it lapsed
        may_acquire = trio.Event()
        acquire = two_store.acquire_lease

        async def held_back(name: str, ttl: timedelta) -> int | None:
            await may_acquire.wait()
            return await acquire(name, ttl)

        two_store.acquire_lease = held_back  # type: ignore[method-assign]
        regained = trio.Event()
        persistence = two._persistence
        on_regained = persistence.on_regained
        assert on_regained is not None

        async def observed() -> None:
            await on_regained()
            regained.set()

        persistence.on_regained = observed
        lease = persistence.lease
        assert lease is not None
        lapsed = lease.token
        assert await store.release_lease("two", lapsed)  # as if "two" had been paused
        await fanouts["one"].refresh()
        assert not fanouts["one"].wanted_elsewhere("hello")  # "two" counts no more
        assert "two" not in await stored_interests(redis_url)  # nor is it kept

        may_acquire.set()
        with trio.fail_after(5):
            await regained.wait()
        assert lease.token > lapsed
        assert "two" in await stored_interests(redis_url)  # stored again
        one.publish(Event("hello", {"n": 2}))  # "one" has read nothing since
        with trio.fail_after(5):
            assert (await far.receive()).data == {"n": 2}
        assert fanouts["one"].wanted_elsewhere("hello")
        assert [kind for who, kind in await sent(store) if who == "one"] == ["hello", "hello"]


async def test_an_append_filtered_with_an_old_interest_is_refused_whole(redis_url: str) -> None:
    async with open_redis_store(redis_url) as store:
        streams = store.streams
        assert await store.acquire_lease("one", LEASE) is not None
        version, interests = await streams.interests()
        assert interests == {}
        version, stale = await streams.publish_events(
            [b"{}"], known=version, replica="one", interest=b'["a"]', max_length=100
        )
        assert stale is None  # stored, and appended
        # a replica that knew the version before "one" stored its interest: refused, told
        refused, told = await streams.publish_events(
            [b"{}"], known="0", replica="two", max_length=100
        )
        assert (refused, told) == (version, {"one": b'["a"]'})
        assert len(await streams.follow(streams.event_stream(), "0-0")) == 1


def counted(metrics: EngineMetrics, name: str) -> float:
    """Return the sum of a metric's samples (all labels)."""
    total = 0.0
    for line in metrics.render().decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_each_server_counts_in_its_metrics_what_it_does_and_nothing_twice(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, store), replica(redis_url, "two") as (two, _):
        metrics = {"one": EngineMetrics(one), "two": EngineMetrics(two)}
        try:
            for step in "abc":
                one.subscribe("w", step)
            # "w" answers through "two": "one" drives the task, "two" receives the answers
            async with two.open_listener(subscriber_id="w") as worker:
                await run_answered(one, worker)
            await trio.sleep(0.3)  # whatever "one" sent, "two" has read
            assert {
                name: (
                    counted(m, "phasebus_tasks_started_total"),
                    counted(m, "phasebus_tasks_ended_total"),
                    counted(m, "phasebus_answers_total"),
                )
                for name, m in metrics.items()
            } == {"one": (1.0, 1.0, 0.0), "two": (0.0, 0.0, 3.0)}
            # and the metrics make "two" want none of "one"'s task events
            kinds = [kind for who, kind in await sent(store) if who == "one"]
            assert "task_started" not in kinds
            assert "task_end" not in kinds
        finally:
            for m in metrics.values():
                m.close()


async def test_an_event_without_data_reaches_other_servers_and_one_not_json_is_said_not_to(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with replica(redis_url, "one") as (one, _), replica(redis_url, "two") as (two, _):
        async with two.open_listener() as everything:
            await two.wait_listeners_shared()
            one.publish(Event("empty", {}))  # as POST /events with "data": {} makes it
            one.publish(Event("odd", {"values": {1, 2}}))  # from Python: a set is not JSON
            one.publish(Event("after", {"n": 1}))
            got = []
            with trio.fail_after(5):
                while not got or got[-1].message_type != "after":
                    message = await everything.receive()
                    if message.message_type in ("empty", "odd", "after"):
                        got.append(message)
        assert [(m.message_type, dict(m.data)) for m in got] == [("empty", {}), ("after", {"n": 1})]
        assert "event odd not sent to the other replicas" in caplog.text
