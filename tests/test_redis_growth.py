"""What servers that are gone leave in Redis is removed: their interest, the mark of their
last batch of events, and (after a while) the record of an adoption of their tasks.

Servers come and go under new names (one per pod, say): nothing kept per name may
outlive the server for good.
"""

from __future__ import annotations

from datetime import timedelta

import coredis
import orjson
import pytest
import trio

from engine._redis import open_redis_store

from .test_redis_store import running

pytestmark = pytest.mark.redis

LEASE = timedelta(minutes=1)


async def fields(url: str, key: str) -> dict[str, bytes]:
    """Return a hash of the store (its name without the prefix) as field -> value."""
    async with coredis.Redis.from_url(url) as client:
        stored = await client.hgetall(f"phasebus:{key}")
    return {bytes(name).decode(): bytes(value) for name, value in stored.items()}


async def test_the_interest_and_last_batch_of_a_server_whose_lease_is_gone_are_removed(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url) as store:
        streams = store.streams
        one = await store.acquire_lease("one", LEASE)
        two = await store.acquire_lease("two", LEASE)
        assert one is not None
        assert two is not None
        version, _ = await streams.interests()
        for name in ("one", "two"):
            version, stale = await streams.publish_events(
                [b"{}"],
                known=version,
                replica=name,
                interest=b'["a"]',
                max_length=100,
                run=f"run-{name}",
                batch=1,
            )
            assert stale is None
        assert set(await fields(redis_url, "interests")) == {"one", "two"}
        assert set(await fields(redis_url, "batches")) == {"one", "two"}
        # "one" is gone: the next reading of the interests removes what it left
        assert await store.release_lease("one", one)
        assert set(await fields(redis_url, "interests")) == {"one", "two"}
        version, interests = await streams.interests()
        assert interests == {"two": b'["a"]'}
        assert await fields(redis_url, "interests") == {"two": b'["a"]'}
        assert set(await fields(redis_url, "batches")) == {"two"}
        # a server holding its lease again stores its interest again, and counts then
        again = await store.acquire_lease("one", LEASE)
        assert again is not None
        version, stale = await streams.publish_events(
            [], known=version, replica="one", interest=b'["b"]', max_length=100
        )
        assert stale is None
        assert (await streams.interests())[1] == {"one": b'["b"]', "two": b'["a"]'}


async def test_an_append_told_of_a_newer_interest_removes_what_servers_gone_left(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url) as store:
        streams = store.streams
        one = await store.acquire_lease("one", LEASE)
        assert one is not None
        assert await store.acquire_lease("two", LEASE) is not None
        version, stale = await streams.publish_events(
            [], known=0, replica="one", interest=b"*", max_length=100, run="r", batch=1
        )
        assert stale is None
        assert await store.release_lease("one", one)
        # "two" appends with an interest it knew before "one" stored its own: refused, told
        # of the live interests only, and "one"'s fields are gone
        refused, told = await streams.publish_events([b"{}"], known=0, replica="two", max_length=1)
        assert (refused, told) == (version, {})
        assert await fields(redis_url, "interests") == {}
        assert await fields(redis_url, "batches") == {}
        assert await streams.follow(streams.event_stream()) == []


async def test_adopting_the_tasks_of_a_server_removes_its_last_batch(redis_url: str) -> None:
    async with open_redis_store(redis_url) as store:
        streams = store.streams
        one = await store.acquire_lease("one", LEASE)
        two = await store.acquire_lease("two", LEASE)
        assert one is not None
        assert two is not None
        await store.commit([running("t1")], owner="one", fence=one)
        for name in ("one", "two"):
            await streams.publish_events(
                [b"{}"], known=0, replica=name, max_length=100, run=f"run-{name}", batch=1
            )
        assert set(await fields(redis_url, "batches")) == {"one", "two"}
        assert await store.release_lease("one", one)
        assert await store.adopt("one", owner="two", fence=two) == [running("t1").record]
        assert set(await fields(redis_url, "batches")) == {"two"}


async def test_an_adoption_is_recorded_until_no_call_can_be_sent_again_for_it(
    redis_url: str,
) -> None:
    kept = timedelta(milliseconds=300)
    async with open_redis_store(redis_url) as store:
        owner = await store.acquire_lease("owner", LEASE)
        assert owner is not None
        for name in ("one", "two"):
            token = await store.acquire_lease(name, LEASE)
            assert token is not None
            await store.commit([running(f"t-{name}")], owner=name, fence=token)
            assert await store.release_lease(name, token)
        async with coredis.Redis.from_url(redis_url) as client:  # written by an older version
            await client.hset("phasebus:adoptions", {"old": orjson.dumps(["call", ["t0"]])})
        assert len(await store.adopt("one", owner="owner", fence=owner, kept=kept)) == 1
        # the records of earlier adoptions are removed once older than kept, not before
        assert set(await fields(redis_url, "adoptions")) == {"one"}
        await trio.sleep(kept.total_seconds() + 0.1)
        assert len(await store.adopt("two", owner="owner", fence=owner, kept=kept)) == 1
        recorded = await fields(redis_url, "adoptions")
        assert set(recorded) == {"two"}
        assert orjson.loads(recorded["two"])[1] == ["t-two"]
        assert await store.adopt("nobody", owner="owner", fence=owner, kept=kept) == []
        assert set(await fields(redis_url, "adoptions")) == {"two", "nobody"}
        assert sorted(t["id"] for t in (await store.load(lease="owner")).tasks) == [
            "t-one",
            "t-two",
        ]
