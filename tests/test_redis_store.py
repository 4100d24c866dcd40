"""The Redis store against a real redis-server: every operation, leases, claims, streams.

Redis keeps its own time (lease expiry is Redis's PX), so these tests wait
in real time, with leases of a few hundred milliseconds.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import coredis
import orjson
import pytest
import trio

from engine._config import Config
from engine._errors import ConfigConflict, LeaseLost, StoreError
from engine._redis import RedisStore, open_redis_store
from engine._store import FinishTask, SaveTask

from .redis_support import RedisServer, free_port, redis_server_program

pytestmark = pytest.mark.redis

HERE = Path(__file__).resolve().parent

T0 = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)
LEASE = timedelta(seconds=1)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    async with open_redis_store(redis_url) as opened:
        yield opened


def running(task_id: str, state: str = "collect") -> SaveTask:
    record = {"id": task_id, "workflow": "wf", "created_at": 1.0, "state": state, "steps": []}
    return SaveTask(task_id, "wf", orjson.dumps(record))


def finished(
    task_id: str,
    ended_at: float,
    *,
    workflow: str = "wf",
    outcome: str = "done",
    has_errors: bool = False,
) -> FinishTask:
    record = {
        "id": task_id,
        "workflow": workflow,
        "outcome": outcome,
        "started_at": ended_at - 1,
        "ended_at": ended_at,
        "has_errors": has_errors,
    }
    return FinishTask(
        task_id,
        workflow,
        outcome,
        ended_at - 1,
        ended_at,
        orjson.dumps(record),
        has_errors=has_errors,
    )


async def test_configs_subscribers_tasks_and_marks_round_trip(store: RedisStore) -> None:
    await store.save_config(Config("b", {"x": [1, "two", None]}, "r3-abc"))
    await store.save_config(Config("a", {"nested": {"k": 1.5}}, "r12-def"))
    await store.save_config(Config("gone", {}, "r1-x"))
    await store.delete_config("gone")
    await store.save_subscriber(
        "w",
        [
            {"message_type": "collect", "wait_for_completion": True, "timeout": 60},
            {"message_type": "tick", "wait_for_completion": False, "timeout": 2.5},
        ],
    )
    await store.save_subscriber("idle", [])
    await store.save_subscription(
        "w", {"message_type": "collect", "wait_for_completion": False, "timeout": 30.0}
    )
    await store.save_subscription(
        "late", {"message_type": "x", "wait_for_completion": True, "timeout": 1}
    )
    await store.save_subscriber("dropped", [])
    await store.delete_subscriber("dropped")
    await store.delete_subscription("w", "tick")
    token = await store.acquire_lease("replica", LEASE * 10)
    assert token is not None
    await store.commit([running("t1"), running("t2"), running("t3")], owner="replica", fence=token)
    await store.commit(
        [running("t1", "notify"), finished("t2", 100.0)], owner="replica", fence=token
    )
    await store.save_schedule_mark(("wf", "0 * * * *", "Europe/Berlin"), T0)
    await store.save_definition("job:x", b'{"id": "x", "kind": "job"}')
    await store.save_definition("wf:gone", b"{}")
    await store.delete_definition("wf:gone")

    state = await store.load()
    assert [(c.id, dict(c.data), c.revision) for c in state.configs] == [
        ("a", {"nested": {"k": 1.5}}, "r12-def"),
        ("b", {"x": [1, "two", None]}, "r3-abc"),
    ]
    assert state.revision_counter == 12
    assert state.subscribers == {
        # replaced in place: the subscription keeps its position; whole seconds read back whole
        "w": [{"message_type": "collect", "wait_for_completion": False, "timeout": 30}],
        "idle": [],
        "late": [{"message_type": "x", "wait_for_completion": True, "timeout": 1}],
    }
    assert list(state.subscribers) == ["w", "idle", "late"]
    assert sorted((t["id"], t["state"]) for t in state.tasks) == [
        ("t1", "notify"),
        ("t3", "collect"),
    ]
    assert state.schedule_marks == {("wf", "0 * * * *", "Europe/Berlin"): T0}
    assert state.definitions == {"job:x": {"id": "x", "kind": "job"}}
    assert await store.finished_task("t2") == orjson.loads(finished("t2", 100.0).record)
    assert await store.finished_task("t1") is None
    assert await store.lease_of("t1") == "replica"
    assert await store.lease_of("t2") is None


async def test_config_kinds_and_validations_round_trip(store: RedisStore) -> None:
    assert await store.load_config_models() == ([], [])
    await store.save_config_kinds(
        [{"fqn": "a", "runtime_kind": "string"}, {"fqn": "b", "properties": [{"name": "x"}]}]
    )
    await store.save_config_kinds([{"fqn": "a", "runtime_kind": "int32"}])
    await store.save_config_kinds([])
    await store.save_config_validation({"id": "app", "external_validation": True})
    await store.save_config_validation({"id": "gone", "external_validation": False})
    await store.delete_config_validation("gone")
    kinds, validations = await store.load_config_models()
    assert sorted(kinds, key=lambda k: k["fqn"]) == [
        {"fqn": "a", "runtime_kind": "int32"},
        {"fqn": "b", "properties": [{"name": "x"}]},
    ]
    assert validations == [{"id": "app", "external_validation": True}]


async def test_a_config_changed_by_another_replica_is_not_overwritten(redis_url: str) -> None:
    async with open_redis_store(redis_url) as first, open_redis_store(redis_url) as second:
        await first.save_config(Config("app", {"n": 1}, "r1-a"))
        await second.save_config(Config("app", {"n": 2}, "r2-b"), if_revision="r1-a")
        with pytest.raises(
            ConfigConflict, match=r"^config 'app' is at revision 'r2-b', not 'r1-a'$"
        ):
            await first.save_config(Config("app", {"n": 3}, "r3-c"), if_revision="r1-a")
        with pytest.raises(ConfigConflict, match=r"^config 'app' is at revision 'r2-b', not"):
            await first.delete_config("app", if_revision="r1-a")
        with pytest.raises(
            ConfigConflict, match=r"^config 'new' does not exist \(expected revision 'r1-a'\)$"
        ):
            await first.save_config(Config("new", {}, "r4-d"), if_revision="r1-a")
        assert [(c.id, dict(c.data)) for c in (await first.load()).configs] == [("app", {"n": 2})]
        await first.delete_config("app", if_revision="r2-b")
        assert (await second.load()).configs == ()


async def test_subscriptions_keep_the_order_they_were_first_stored_in(store: RedisStore) -> None:
    for message_type in ["c", "a", "b"]:
        await store.save_subscription(
            "w", {"message_type": message_type, "wait_for_completion": True, "timeout": 5}
        )
    await store.save_subscription(
        "w", {"message_type": "a", "wait_for_completion": False, "timeout": 6}
    )
    assert [s["message_type"] for s in (await store.load()).subscribers["w"]] == ["c", "a", "b"]
    await store.save_subscriber(
        "w",
        [
            {"message_type": "z", "wait_for_completion": True, "timeout": 5},
            {"message_type": "c", "wait_for_completion": True, "timeout": 5},
        ],
    )
    assert [s["message_type"] for s in (await store.load()).subscribers["w"]] == ["z", "c"]


def test_a_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(
        StoreError,
        match=r"^cannot use state\.sqlite3 as a phasebus store: a Redis URL starts with redis://,"
        r" rediss:// or unix://$",
    ):
        RedisStore("state.sqlite3")
    with pytest.raises(
        StoreError,
        match=r"^cannot use redis://app:\*\*\*@127\.0\.0\.1:port/0 as a phasebus store: ",
    ):
        RedisStore("redis://app:secret@127.0.0.1:port/0")


async def test_a_redis_that_is_not_there_is_retried_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://app:secret@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, logger="engine._redis"):
        store = RedisStore(url)
        with trio.move_on_after(1):
            async with store:
                pass
        assert not store.ready
        assert store.round_trips >= 4
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"redis at redis://app:***@127.0.0.1:{url.split(':')[3]} does not answer"
    ]


# ------------------------------------------------------------------ leases and fencing


async def test_one_client_holds_a_lease_the_other_takes_its_tasks_over_after_it_expires(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url) as first, open_redis_store(redis_url) as second:
        tokens = [await first.acquire_lease("a", LEASE), await second.acquire_lease("a", LEASE)]
        assert tokens[0] is not None
        assert tokens[1] is None
        first_token = tokens[0]
        await first.commit([running("t1"), running("t2")], owner="a", fence=first_token)
        assert await first.renew_lease("a", first_token, LEASE)
        assert await second.expired_leases() == []

        second_token = await second.acquire_lease("b", LEASE * 10)
        assert second_token is not None
        assert second_token > first_token
        with pytest.raises(LeaseLost, match=r"^adopting a refused, nothing moved: lease a is"):
            await second.adopt("a", owner="b", fence=second_token)

        await trio.sleep(LEASE.total_seconds() + 0.1)  # the first one stalls past its lease
        assert await second.expired_leases() == ["a"]
        adopted = sorted(
            orjson.loads(record)["id"]
            for record in await second.adopt("a", owner="b", fence=second_token)
        )
        assert adopted == ["t1", "t2"]
        assert await second.expired_leases() == []
        assert await first.lease_of("t1") == "b"

        # the first wakes up: its commit is refused whole, nothing written
        with pytest.raises(
            LeaseLost,
            match=r"^commit refused, nothing written: lease a is not held \(expired or released\)$",
        ):
            await first.commit([running("t1", "late"), running("t9")], owner="a", fence=first_token)
        assert not await first.renew_lease("a", first_token, LEASE)
        # even with its lease taken again, the tasks are the other's now
        again = await first.acquire_lease("a", LEASE)
        assert again is not None
        assert again > second_token
        with pytest.raises(LeaseLost, match=r"^commit refused, nothing written: task t1 is held"):
            await first.commit([running("t9"), running("t1", "late")], owner="a", fence=again)
        with pytest.raises(LeaseLost, match=r"was acquired again \(token "):
            await first.commit([running("t9")], owner="a", fence=first_token)
        state = await second.load()
        assert sorted((t["id"], t["state"]) for t in state.tasks) == [
            ("t1", "collect"),
            ("t2", "collect"),
        ]
        await second.commit([finished("t1", 5.0)], owner="b", fence=second_token)
        assert await second.lease_of("t1") is None


async def test_a_kept_lease_outlives_its_ttl_and_its_loss_is_raised(redis_url: str) -> None:
    async with open_redis_store(redis_url) as first, open_redis_store(redis_url) as second:
        token = await first.acquire_lease("a", LEASE)
        other = await second.acquire_lease("b", LEASE)
        assert token is not None
        assert other is not None
        await first.commit([running("t1")], owner="a", fence=token)
        await second.commit([running("t2")], owner="b", fence=other)
        assert [t["id"] for t in (await first.load(lease="a")).tasks] == ["t1"]
        assert sorted(t["id"] for t in (await first.load()).tasks) == ["t1", "t2"]
        lost: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(first.keep_lease, "a", token, LEASE)
                await trio.sleep(LEASE.total_seconds() * 2.5)
                assert await second.acquire_lease("a", LEASE) is None
                assert await second.expired_leases() == ["b"]  # b was not kept
                assert await second.release_lease("a", token)  # as if it expired meanwhile
                await trio.sleep(LEASE.total_seconds())
                nursery.cancel_scope.cancel()  # not reached when the loss is noticed
        except* LeaseLost as group:
            lost = [str(error) for error in group.exceptions]
        assert lost == ["lease a was lost: not renewed within 0:00:01"]


async def test_a_released_lease_is_taken_over_at_once(redis_url: str) -> None:
    async with open_redis_store(redis_url) as first, open_redis_store(redis_url) as second:
        token = await first.acquire_lease("a", timedelta(minutes=5))
        assert token is not None
        await first.commit([running("t1")], owner="a", fence=token)
        assert not await first.release_lease("a", token + 1)
        assert await first.release_lease("a", token)
        assert await second.expired_leases() == ["a"]
        other = await second.acquire_lease("b", timedelta(minutes=5))
        assert other is not None
        assert len(await second.adopt("a", owner="b", fence=other)) == 1
        # a lease released with no tasks is not listed
        assert await second.release_lease("b", other) is True
        empty = await second.acquire_lease("c", timedelta(minutes=5))
        assert empty is not None
        assert await second.release_lease("c", empty)
        assert await second.expired_leases() == ["b"]


async def test_a_firing_is_claimed_by_exactly_one_client(redis_url: str) -> None:
    async with open_redis_store(redis_url) as first, open_redis_store(redis_url) as second:
        results: list[bool] = []

        async def claim(store: RedisStore, planned: datetime) -> None:
            results.append(await store.claim_firing("wf", "0 * * * *", "UTC", planned))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(claim, first, T0)
                nursery.start_soon(claim, second, T0)
        assert sorted(results) == [False] * 9 + [True]
        assert await second.claim_firing("wf", "0 * * * *", "UTC", T0 + timedelta(hours=1))
        assert await first.claim_firing("wf", "0 * * * *", "Europe/Berlin", T0)


# ------------------------------------------------------------------ one round trip


@asynccontextmanager
async def monitor(url: str) -> AsyncIterator[list[tuple[str, list[str]]]]:
    """Collect the commands clients send to Redis (not those its scripts run) until exit."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    sent: list[tuple[str, list[str]]] = []
    received = b""

    async def until(marker: bytes) -> None:
        nonlocal received
        while marker not in received:
            received += await stream.receive_some(65536)

    async with stream:
        await stream.send_all(b"MONITOR\r\n")
        await until(b"+OK\r\n")
        received = b""
        yield sent
        async with await trio.open_tcp_stream("127.0.0.1", port) as marker:
            await marker.send_all(b"ECHO end-of-monitoring\r\n")
            await marker.receive_some(1024)
        await until(b'"end-of-monitoring"')
    for line in received.decode().splitlines():
        if "[0 lua]" in line or "end-of-monitoring" in line or " " not in line:
            continue
        words = shlex.split(line.split("] ", 1)[1])
        sent.append((words[0].lower(), words[1:]))


async def test_a_commit_is_one_round_trip(store: RedisStore, redis_url: str) -> None:
    token = await store.acquire_lease("a", timedelta(minutes=1))
    assert token is not None
    await store.commit([running("warm")], owner="a", fence=token)  # loads the script once
    writes = [running(f"t{n}") for n in range(60)] + [
        finished(f"f{n}", float(n), has_errors=n % 2 == 0) for n in range(40)
    ]
    actions = [(store.streams.action_stream("w"), b'{"n": %d}' % n) for n in range(3)]
    async with monitor(redis_url) as sent:
        before = store.round_trips
        await store.commit(writes, owner="a", fence=token, messages=actions)
        assert store.round_trips - before == 1
    assert [command for command, _ in sent] == ["evalsha"]
    assert len(sent[0][1]) > 400  # every write and message went with it
    assert len((await store.load()).tasks) == 61
    assert len(await store.history(limit=1000)) == 40
    assert len(await store.streams.read(actions[0][0], "subscriber", "r")) == 3


# ------------------------------------------------------------------ Redis as a server


async def test_a_redis_that_keeps_nothing_on_disk_is_named_at_open(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine._redis"):
        async with open_redis_store(redis_url):
            pass
    assert [r.getMessage() for r in caplog.records] == [
        f"redis at {redis_url} keeps nothing on disk (appendonly no, save ''): when it restarts,"
        " every config, subscriber, running task, history entry and schedule mark is lost;"
        " turn on its append-only file (appendonly yes)"
    ]


async def test_snapshots_only_are_named_and_an_append_only_file_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    program = redis_server_program()
    for appendfsync, extra, expected in [
        ("no", ("--save", "3600 1"), ["only saves snapshots (save '3600 1')"]),
        ("everysec", (), []),
    ]:
        server = RedisServer(program, tmp_path, free_port(), appendfsync, extra)
        server.start()
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, logger="engine._redis"):
                async with open_redis_store(server.url):
                    pass
        finally:
            server.stop()
        found = [e for e in expected if any(e in r.getMessage() for r in caplog.records)]
        assert (found, len(caplog.records)) == (expected, len(expected))


async def test_acknowledged_writes_survive_kill_9_with_aof_everysec_and_calls_wait_for_redis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(redis_server_program(), tmp_path, free_port(), "everysec")
    server.start()
    acknowledged: list[str] = []
    try:
        with caplog.at_level(logging.WARNING, logger="engine._redis"):
            async with open_redis_store(server.url) as store:
                token = await store.acquire_lease("a", timedelta(minutes=5))
                assert token is not None

                async def write() -> None:
                    for n in range(3000):
                        await store.commit([running(f"t{n}")], owner="a", fence=token)
                        acknowledged.append(f"t{n}")

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write)
                    while len(acknowledged) < 1000:
                        await trio.sleep(0.001)
                    server.kill(signal.SIGKILL)
                    killed_at = len(acknowledged)
                    await trio.sleep(0.5)  # the writer retries meanwhile
                    assert not store.ready
                    assert not await store.check()
                    assert len(acknowledged) <= killed_at + 1
                    server.start()  # the same folder: it replays the append-only file
                state = await store.load()
                assert store.ready
    finally:
        server.stop()
    assert len(acknowledged) == 3000
    stored = {task["id"] for task in state.tasks}
    assert set(acknowledged) <= stored
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "does not answer" in m]) == 1, messages
    assert len([m for m in messages if "answers again after" in m]) == 1, messages


async def test_a_redis_loading_its_data_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(
        redis_server_program(),
        tmp_path,
        free_port(),
        "everysec",
        ("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024"),
    )
    server.start()
    try:
        async with coredis.Redis.from_url(server.url) as client:
            for chunk in range(20):
                async with client.pipeline(transaction=False) as pipeline:
                    for n in range(500):
                        pipeline.set(f"filler:{chunk}:{n}", "x" * 100)
            await client.bgrewriteaof()
            await trio.sleep(1)
        async with open_redis_store(server.url) as store:
            token = await store.acquire_lease("a", timedelta(minutes=1))
            assert token is not None
            await store.commit([running("kept")], owner="a", fence=token)
        server.kill(signal.SIGTERM)
        server.start(wait=False)
        with caplog.at_level(logging.WARNING, logger="engine._redis"):
            async with open_redis_store(server.url) as store:
                state = await store.load()
    finally:
        server.stop()
    assert [t["id"] for t in state.tasks] == ["kept"]
    assert any("is loading its data; waiting" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ streams


async def test_entries_owed_to_a_reader_are_handed_back_after_it_reconnects(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url) as writer:
        stream = writer.streams.action_stream("w")
        ids = [await writer.streams.append(stream, b"%d" % n) for n in range(5)]
        async with open_redis_store(redis_url) as reader:
            read = await reader.streams.read(stream, "subscriber", "replica-1", count=3)
            assert [body for _, body in read] == [b"0", b"1", b"2"]
            assert await reader.streams.ack(stream, "subscriber", [read[0][0]]) == 1
        # the same reader, reconnected: what it read and did not acknowledge, then the rest
        async with open_redis_store(redis_url) as reader:
            owed = await reader.streams.owed(stream, "subscriber", "replica-1")
            assert owed == [(ids[1], b"1"), (ids[2], b"2")]
            rest = await reader.streams.read(stream, "subscriber", "replica-1")
            assert [body for _, body in rest] == [b"3", b"4"]
        # another reader takes over what the first one left, once idle long enough
        async with open_redis_store(redis_url) as other:
            assert (
                await other.streams.owed(
                    stream, "subscriber", "replica-2", idle=timedelta(seconds=5)
                )
                == []
            )
            await trio.sleep(0.2)
            taken = await other.streams.owed(
                stream, "subscriber", "replica-2", idle=timedelta(milliseconds=100)
            )
            assert [body for _, body in taken] == [b"1", b"2", b"3", b"4"]
            await other.streams.ack(stream, "subscriber", [entry for entry, _ in taken[:2]])
            # acknowledged entries are deleted as they are acknowledged: nothing left to trim
            assert await other.streams.trim(stream) == 0
            assert [b for _, b in await other.streams.owed(stream, "subscriber", "replica-2")] == [
                b"3",
                b"4",
            ]
            assert await stream_bodies(redis_url, stream) == [b"3", b"4"]


async def stream_bodies(url: str, stream: str) -> list[bytes]:
    """Return the bodies of every entry ``stream`` holds, owed or not."""
    async with coredis.Redis.from_url(url) as client:
        entries = await client.xrange(stream)
    return [bytes(entry.field_values[b"m"]) for entry in entries]


async def test_acknowledging_deletes_the_entries_and_only_those(redis_url: str) -> None:
    async with open_redis_store(redis_url) as store:
        streams = store.streams
        stream = streams.answer_stream("one")
        for n in range(6):
            await streams.append(stream, b"%d" % n)
        first = await streams.read(stream, "driver", "one", count=2)
        second = await streams.read(stream, "driver", "two", count=2)
        # one reader acknowledges one of its entries: that one goes, what is owed stays
        assert await streams.ack(stream, "driver", [first[0][0]]) == 1
        assert await stream_bodies(redis_url, stream) == [b"1", b"2", b"3", b"4", b"5"]
        assert [b for _, b in await streams.owed(stream, "driver", "one")] == [b"1"]
        assert [b for _, b in await streams.owed(stream, "driver", "two")] == [b"2", b"3"]
        # acknowledged again (the call sent again after its answer was lost): nothing owed
        assert await streams.ack(stream, "driver", [first[0][0]]) == 0
        assert await streams.ack(stream, "driver", [e for e, _ in first + second]) == 3
        assert await stream_bodies(redis_url, stream) == [b"4", b"5"]  # never read: kept
        rest = await streams.read(stream, "driver", "one")
        assert [b for _, b in rest] == [b"4", b"5"]
        many = [await streams.append(stream, b"x") for _ in range(2500)]
        assert len(await streams.read(stream, "driver", "one", count=3000)) == 2500
        # more entries than one script call takes: acknowledged in several
        assert await streams.ack(stream, "driver", [e for e, _ in rest] + many) == 2502
        assert await stream_bodies(redis_url, stream) == []


async def test_nothing_is_lost_reading_in_a_loop_while_writers_append(redis_url: str) -> None:
    per_writer = 400
    async with (
        open_redis_store(redis_url) as first,
        open_redis_store(redis_url) as second,
        open_redis_store(redis_url) as reader,
    ):
        stream = first.streams.action_stream("w")
        events = first.streams.event_stream()
        grouped: list[bytes] = []
        followed: list[bytes] = []

        async def append(store: RedisStore, name: bytes) -> None:
            for n in range(per_writer):
                body = b"%s:%d" % (name, n)
                await store.streams.append(stream, body)
                await store.streams.append(events, body)
                if n % 50 == 0:
                    await trio.sleep(0.01)

        async def read_group() -> None:
            while len(grouped) < 2 * per_writer:
                entries = await reader.streams.read(
                    stream, "subscriber", "r", count=37, block=timedelta(milliseconds=50)
                )
                grouped.extend(body for _, body in entries)
                await reader.streams.ack(stream, "subscriber", [entry for entry, _ in entries])

        async def follow() -> None:
            last = "0-0"
            while len(followed) < 2 * per_writer:
                entries = await reader.streams.follow(
                    events, last, count=29, block=timedelta(milliseconds=50)
                )
                if entries:
                    last = entries[-1][0]
                followed.extend(body for _, body in entries)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_group)
                nursery.start_soon(follow)
                nursery.start_soon(append, first, b"a")
                nursery.start_soon(append, second, b"b")
    for seen in (grouped, followed):
        assert len(seen) == len(set(seen)) == 2 * per_writer
        for name in (b"a", b"b"):
            mine = [body for body in seen if body.startswith(name + b":")]
            assert mine == [b"%s:%d" % (name, n) for n in range(per_writer)]


async def test_events_keep_about_their_last_entries_and_trimming_a_missing_stream_is_nothing(
    store: RedisStore,
) -> None:
    events = store.streams.event_stream()
    for n in range(2000):
        await store.streams.append(events, b"%d" % n, max_length=100)
    kept = await store.streams.follow(events, count=5000)
    assert 100 <= len(kept) < 300  # trimmed by whole nodes of the stream
    assert kept[-1][1] == b"1999"
    assert await store.streams.trim(store.streams.action_stream("nobody")) == 0


async def test_an_answer_goes_to_the_stream_of_the_lease_holding_the_task(
    store: RedisStore,
) -> None:
    token = await store.acquire_lease("a", timedelta(minutes=1))
    assert token is not None
    await store.commit([running("t1")], owner="a", fence=token)
    entry = await store.streams.send_answer("t1", b'{"done": true}')
    assert entry is not None
    assert await store.streams.send_answer("nobody", b"{}") is None
    owed = await store.streams.read(store.streams.answer_stream("a"), "driver", "a")
    assert owed == [(entry, b'{"done": true}')]


async def test_a_replica_paused_past_its_lease_writes_nothing_when_it_wakes(
    redis_url: str,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "redis_lease_holder.py"), redis_url, "paused", "500"],
        stdout=subprocess.PIPE,
        cwd=HERE.parent,
    )
    assert holder.stdout is not None
    lines: list[str] = []

    async def line() -> str:
        assert holder.stdout is not None
        text = (await trio.to_thread.run_sync(holder.stdout.readline)).decode().strip()
        lines.append(text)
        return text

    try:
        with trio.fail_after(30):
            while not (await line()).startswith("wrote 5"):
                pass
            holder.send_signal(signal.SIGSTOP)
            async with open_redis_store(redis_url) as other:
                while await other.expired_leases() != ["paused"]:
                    await trio.sleep(0.05)
                token = await other.acquire_lease("other", timedelta(minutes=1))
                assert token is not None
                (record,) = await other.adopt("paused", owner="other", fence=token)
                adopted_state = orjson.loads(record)["state"]
                holder.send_signal(signal.SIGCONT)
                last = await line()
                while last.startswith("wrote"):  # only a write that was under way when paused
                    last = await line()
                returncode = await trio.to_thread.run_sync(holder.wait)
                (stored,) = (await other.load()).tasks
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    written = [text for text in lines if text.startswith("wrote")]
    assert written[-1] == f"wrote {adopted_state.removeprefix('step-')}"
    assert stored["state"] == adopted_state
    assert (returncode, last) == (
        3,
        "refused: commit refused, nothing written: lease paused is not held (expired or released)",
    ), lines
