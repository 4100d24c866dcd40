"""Delivery between replicas on one Redis: what is sent again after a takeover, when an
answer counts as taken, and calls Redis carried out but answered late.

Leases last two seconds; Redis keeps its own time, so these tests run in real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio

from engine import Action, ActionDone, Engine, Outcome, open_engine
from engine._messages import answer_for
from engine._records import TaskResult
from engine._redis import DRIVER_GROUP, RedisStore, open_redis_store

from .test_redis_replicas import LEASE, THREE_STEPS, next_action

pytestmark = pytest.mark.redis


@asynccontextmanager
async def replica(url: str, name: str) -> AsyncIterator[tuple[Engine, RedisStore]]:
    async with (
        open_redis_store(url) as store,
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
            task_id = one.start_workflow("durable").task_id
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
                task_id = one.start_workflow("durable").task_id
                assert task_id is not None
                for listener in (w, v):
                    listener.done(await next_action(listener))
                for listener in (w, v):
                    assert (await next_action(listener)).step == "b"
                one.freeze()  # "one" stops: it takes nothing more
                # w answers b through "three": the answer waits in "one"'s stream, after
                # w's answer to a
                assert len(await store.streams.follow(stream)) == 1
                w.done(Action("b", task_id, "b"))
                with trio.fail_after(5):
                    while len(await store.streams.follow(stream)) < 2:
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
            task_id = one.start_workflow("durable").task_id
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
