"""Several engines on one Redis: a stopped, dead or paused replica's tasks taken over.

Leases last two seconds; Redis keeps its own time, so these tests run in real time.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import (
    Action,
    CronTrigger,
    Engine,
    Event,
    EventTrigger,
    Outcome,
    Step,
    WaitForEvent,
    Workflow,
    open_engine,
)
from engine._errors import LeaseLost
from engine._redis import RedisStore, open_redis_store

from .test_recovery import DURABLE, action, answer, serve
from .test_redis_store import finished, running, stream_bodies

pytestmark = pytest.mark.redis

LEASE = timedelta(seconds=2)
#: The workflow of test_recovery's DURABLE declaration, as a Python value.
THREE_STEPS = Workflow(
    id="durable",
    surpass="skip",
    steps=[Step(name, timeout=60, on_error="stop") for name in ("a", "b", "c")],
)


@asynccontextmanager
async def replica(url: str, name: str) -> AsyncIterator[tuple[Engine, RedisStore]]:
    async with (
        open_redis_store(url) as store,
        open_engine(workflows=[THREE_STEPS], store=store, replica=name, lease=LEASE) as engine,
    ):
        yield engine, store


async def next_action(listener: Any, timeout: float = 10) -> Action:
    with trio.fail_after(timeout):
        while True:
            message = await listener.receive()
            if isinstance(message, Action):
                return message


async def test_a_stopped_replica_hands_its_tasks_to_another(redis_url: str) -> None:
    async with replica(redis_url, "two") as (two, _):
        async with replica(redis_url, "one") as (one, _):
            for step in ("a", "b", "c"):
                one.subscribe("w", step)
                two.subscribe("w", step)
            async with one.open_listener(subscriber_id="w") as listener:
                task_id = (await one.start_run("durable")).task_id
                first = await next_action(listener)
                listener.done(first)
                assert (await next_action(listener)).step == "b"  # owed, unanswered
        # "one" stopped and gave its lease up: "two" takes the task over at step b
        async with two.open_listener(subscriber_id="w") as listener:
            owed = await next_action(listener, timeout=5)
            assert (owed.task, owed.step) == (task_id, "b")
            listener.done(owed)
            last = await next_action(listener)
            assert last.step == "c"
            listener.done(last)
            assert task_id is not None
            result = await two.wait_task(task_id)
        assert result.outcome is Outcome.DONE
        assert [list(s.answered) for s in result.steps] == [["w"], ["w"], ["w"]]
        assert [r.id for r in await two.fetch_history()] == [task_id]
        assert two.tasks() == []


async def test_a_paused_replica_is_taken_over_and_acts_no_more_when_it_wakes(
    redis_url: str, tmp_path: Path
) -> None:
    declarations = tmp_path / "durable.toml"
    declarations.write_text(DURABLE)
    options = ("--replica", "one", "--lease", "2")
    async with serve(redis_url, declarations, options=options) as one:  # type: ignore[arg-type]
        for step in ("a", "b", "c"):
            assert (await one.http.post(f"/subscriber/w/{step}")).status_code == 200
        async with replica(redis_url, "two") as (two, store):
            async with one.subscriber("w") as ws:
                task_id = (await one.http.post("/workflow/durable/run")).json()["task_id"]
                await answer(ws, await action(ws))
                owed = await action(ws)
                assert owed["data"]["step"] == "b"
                one.process.send_signal(signal.SIGSTOP)  # stalls past its lease
                try:
                    async with two.open_listener(subscriber_id="w") as listener:
                        started = trio.current_time()
                        taken = await next_action(listener, timeout=10)
                        took = trio.current_time() - started
                        assert (taken.task, taken.step) == (task_id, "b")
                        assert await store.lease_of(task_id) == "two"
                        listener.done(taken)
                        listener.done(await next_action(listener))
                        result = await two.wait_task(task_id)
                finally:
                    one.process.send_signal(signal.SIGCONT)
                assert result.outcome is Outcome.DONE
                assert took < 2 * LEASE.total_seconds()
                # "one" wakes up: its lease is gone, and so is the task: nothing more of it
                await answer(ws, owed)  # an answer it can no longer act on
                with trio.fail_after(10):
                    while any(t["running"] for t in (await one.http.get("/tasks")).json()):
                        await trio.sleep(0.1)
        finished = (await one.http.get("/tasks", params={"outcome": "done"})).json()
    assert [t["id"] for t in finished] == [task_id]
    assert [len(s["answered"]) for s in finished[0]["steps"]] == [1, 1, 1]
    assert json.dumps(finished[0]["steps"][1]["answered"]) == '{"w": "done"}'


async def test_a_task_another_replica_finished_cannot_be_written_again(redis_url: str) -> None:
    async with open_redis_store(redis_url) as store:
        one = await store.acquire_lease("one", LEASE)
        assert one is not None
        await store.commit([running("t1")], owner="one", fence=one)
        assert await store.release_lease("one", one)
        two = await store.acquire_lease("two", LEASE)
        assert two is not None
        assert await store.adopt("one", owner="two", fence=two) == [running("t1").record]
        await store.commit([finished("t1", 10.0)], owner="two", fence=two)
        # "one" wakes up, takes its lease again, and writes what it had
        again = await store.acquire_lease("one", LEASE)
        assert again is not None
        for stale in (running("t1", "b"), finished("t1", 11.0, outcome="failed")):
            with pytest.raises(LeaseLost, match=r"task t1 has ended under lease two$"):
                await store.commit([stale], owner="one", fence=again)
        kept = await store.finished_task("t1")
        assert kept is not None
        assert kept["outcome"] == "done"
        assert await store.load(lease="one") == await store.load(lease="nobody")
        # the replica that filed it may file it again
        await store.commit([finished("t1", 12.0)], owner="two", fence=two)


async def test_a_cron_firing_starts_one_run_across_replicas(redis_url: str) -> None:
    every_minute = Workflow(
        id="tick", steps=[Step("a", timeout=30)], triggers=[CronTrigger("* * * * *")]
    )
    start = datetime(2026, 3, 2, 0, 0, 59, 200_000, tzinfo=UTC)
    async with (
        open_redis_store(redis_url) as store_one,
        open_redis_store(redis_url) as store_two,
        open_engine(
            workflows=[every_minute], store=store_one, replica="one", start_time=start
        ) as one,
        open_engine(
            workflows=[every_minute], store=store_two, replica="two", start_time=start
        ) as two,
    ):
        await trio.sleep(1.5)
        ledgers = [
            [(f.planned.minute, f.outcome) for f in e.schedule_ledger("tick")] for e in (one, two)
        ]
        task_ids = [f.task_id for e in (one, two) for f in e.schedule_ledger("tick") if f.task_id]
        await trio.sleep(0.2)
        history = await one.fetch_history()
    assert sorted(ledgers) == [[(1, "another_replica")], [(1, "started")]]
    assert len(task_ids) == 1
    assert [r.id for r in history] == task_ids


async def test_events_reach_the_listeners_of_every_replica_in_order(redis_url: str) -> None:
    steps = Workflow(id="steps", steps=[Step(name, timeout=30) for name in "abc"])
    async with (
        replica(redis_url, "one") as (one, _),
        replica(redis_url, "two") as (two, _),
        one.open_listener(message_types=["task_started", "progress", "task_end", "hello"]) as mine,
        two.open_listener(message_types=["task_started", "progress", "task_end", "hello"]) as far,
    ):
        one.add_workflow(steps)
        result = await one.run_workflow("steps")
        two.publish(Event("hello", {"from": "two"}))

        async def seen(listener: Any) -> list[tuple[str, Any]]:
            got: list[tuple[str, Any]] = []
            with trio.fail_after(5):
                while {"hello", "task_end"} - {kind for kind, _ in got}:
                    message = await listener.receive()
                    data = message.data
                    got.append((message.message_type, data.get("task_id", data.get("task", data))))
            return got

        here = await seen(mine)
        there = await seen(far)
    # the task's events on both, in the order "one" published them; and "two"'s event
    hello = ("hello", {"from": "two"})
    task = [event for event in here if event != hello]
    assert task == [event for event in there if event != hello]
    assert hello in here
    assert hello in there
    assert task[0] == ("task_started", result.id)
    assert task[-1] == ("task_end", result.id)
    assert task[1:-1] == [("progress", result.id)] * 4  # as each step starts, and at the end


async def test_actions_and_answers_cross_replicas(redis_url: str) -> None:
    async with replica(redis_url, "one") as (one, _), replica(redis_url, "two") as (two, _):
        for engine in (one, two):
            for step in ("a", "b", "c"):
                engine.subscribe("w", step)
        # the subscriber is connected to "two"; the task runs on "one"
        async with two.open_listener(subscriber_id="w") as listener:
            started = await one.start_run("durable")
            assert started.task_id is not None
            for step in ("a", "b", "c"):
                sent = await next_action(listener, timeout=5)
                assert (sent.task, sent.step) == (started.task_id, step)
                listener.done(sent)
            with trio.fail_after(5):
                result = await one.wait_task(started.task_id)
                # the actions to w and w's answers went through streams: once acknowledged,
                # none of them is kept there
                for stream in ("phasebus:actions:w", "phasebus:answers:one"):
                    while await stream_bodies(redis_url, stream):
                        await trio.sleep(0.01)
    assert result.outcome is Outcome.DONE
    assert [dict(s.answered) for s in result.steps] == [{"w": "done"}] * 3


PARALLEL_TOML = DURABLE.replace('surpass = "skip"', 'surpass = "parallel"')


async def test_three_servers_share_the_work_and_survive_one_killed(
    redis_url: str, tmp_path: Path
) -> None:
    declarations = tmp_path / "parallel.toml"
    declarations.write_text(PARALLEL_TOML)
    seen: dict[str, list[tuple[str, str]]] = {"w": [], "v": []}

    async def answer_all(ws: Any, subscriber_id: str) -> None:
        while True:
            message = await action(ws)
            seen[subscriber_id].append((message["data"]["task"], message["data"]["step"]))
            await answer(ws, message)

    async with (
        serve(redis_url, declarations, options=("--replica", "r1", "--lease", "2")) as r1,  # type: ignore[arg-type]
        serve(redis_url, declarations, options=("--replica", "r2", "--lease", "2")) as r2,  # type: ignore[arg-type]
        serve(redis_url, declarations, options=("--replica", "r3", "--lease", "2")) as r3,  # type: ignore[arg-type]
    ):
        for server in (r1, r2, r3):
            for subscriber_id in ("w", "v"):
                for step in ("a", "b", "c"):
                    answered = await server.http.post(f"/subscriber/{subscriber_id}/{step}")
                    assert answered.status_code == 200, answered.text
        # w listens on r2, v on r3; the runs start on r1
        async with r2.subscriber("w") as w, r3.subscriber("v") as v, trio.open_nursery() as nursery:
            nursery.start_soon(answer_all, w, "w")
            nursery.start_soon(answer_all, v, "v")
            await trio.sleep(0.2)
            task_ids = [
                (await r1.http.post("/workflow/durable/run")).json()["task_id"] for _ in range(3)
            ]
            with trio.fail_after(10):  # r1 dies while its tasks are at step b
                while not all(any(s == "b" for _, s in got) for got in seen.values()):
                    await trio.sleep(0.01)
            r1.kill()
            with trio.fail_after(20):
                while True:
                    listed = (await r2.http.get("/tasks", params={"outcome": "done"})).json()
                    if len(listed) == 3:
                        break
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        on_r3 = (await r3.http.get("/tasks", params={"outcome": "done"})).json()
    assert sorted(t["id"] for t in listed) == sorted(task_ids)
    assert sorted(t["id"] for t in on_r3) == sorted(task_ids)
    for task in listed:
        assert [s["answered"] for s in task["steps"]] == [{"w": "done", "v": "done"}] * 3
    for got in seen.values():  # every step of every task reached both subscribers
        assert {(t, s) for t, s in got} == {(t, s) for t in task_ids for s in ("a", "b", "c")}


async def test_subscribers_configs_and_definitions_changed_on_one_replica_reach_the_others(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, _), replica(redis_url, "two") as (two, _):
        one.subscribe("w", "a", timeout=5)
        one.subscribe("w", "b")
        first = two.configs.put("app", {"level": 1})

        async def until(condition: Any) -> None:
            with trio.fail_after(5):
                while not condition():
                    await trio.sleep(0.01)

        await until(lambda: len(getattr(two.subscribers.get("w"), "subscriptions", ())) == 2)
        subscriber = two.subscribers.get("w")
        assert subscriber is not None
        assert sorted(subscriber.subscriptions) == ["a", "b"]
        assert subscriber.subscriptions["a"].timeout == 5
        await until(lambda: one.configs.get("app") == first)
        # a change on the other side, with the revision the first side gave
        second = one.configs.put("app", {"level": 2}, if_match=first.revision)
        await until(lambda: two.configs.get("app") == second)
        assert second.revision != first.revision
        two.unsubscribe("w", "b")
        await until(lambda: sorted(one.subscribers.get("w").subscriptions) == ["a"])  # type: ignore[union-attr]
        one.remove_subscriber("w")
        one.configs.delete("app")
        await until(lambda: two.subscribers.get("w") is None and two.configs.get("app") is None)
        # run-time definitions, their pausing and deletion
        later = one.definitions.parse("workflow", "later", {"steps": [{"name": "x"}]})
        one.definitions.put(later)
        await until(lambda: "later" in two.workflows)
        assert two.definitions.origin("later") == "api"
        two.definitions.set_active("workflow", "later", False)
        await until(lambda: one.is_paused("later"))
        one.definitions.delete("workflow", "later")
        await until(lambda: "later" not in two.workflows)


async def test_an_event_trigger_starts_one_run_across_replicas(redis_url: str) -> None:
    on_event = Workflow(
        id="reacts",
        steps=[Step("a", timeout=30)],
        triggers=[EventTrigger("deployed")],
        surpass="parallel",
    )
    async with (
        open_redis_store(redis_url) as store_one,
        open_redis_store(redis_url) as store_two,
        open_engine(workflows=[on_event], store=store_one, replica="one", lease=LEASE) as one,
        open_engine(workflows=[on_event], store=store_two, replica="two", lease=LEASE) as two,
        two.open_listener(message_types=["deployed", "task_end"]) as far,
    ):
        one.publish(Event("deployed", {"version": "1"}))
        seen = []
        with trio.fail_after(5):
            while len(seen) < 2:
                message = await far.receive()
                seen.append(message.message_type)
        await trio.sleep(0.3)  # "two" had its chance to start one too
        history = await two.fetch_history()
    assert seen == ["deployed", "task_end"]  # "two" saw the event, and the run "one" started
    assert [r.workflow for r in history] == ["reacts"]


async def test_a_step_waiting_on_one_replica_is_finished_by_an_event_published_on_another(
    redis_url: str,
) -> None:
    waits = Workflow(id="waits", steps=[Step("ready", action=WaitForEvent("go", {"n": 1}))])
    triggered = Workflow(id="reacts", steps=[Step("x", timeout=30)], triggers=[EventTrigger("go")])
    declared = [waits, triggered]
    async with (
        open_redis_store(redis_url) as store_one,
        open_redis_store(redis_url) as store_two,
        open_engine(workflows=declared, store=store_one, replica="one", lease=LEASE) as one,
        open_engine(workflows=declared, store=store_two, replica="two", lease=LEASE) as two,
        one.open_listener(message_types=["go"]) as heard,
    ):
        task_id = (await one.start_run("waits")).task_id
        assert task_id is not None
        two.publish(Event("go", {"n": 2}))  # not the event the step waits for
        with trio.fail_after(5):
            assert (await heard.receive()).data == {"n": 2}
        assert [t.id for t in one.tasks()] == [task_id]
        two.publish(Event("go", {"n": 1}))
        with trio.fail_after(5):
            result = await one.wait_task(task_id)
        await trio.sleep(0.3)  # "one" had its chance to start a triggered run too
        assert one.tasks() == []
        history = await two.fetch_history()
    assert result.outcome is Outcome.DONE
    # each event started one run of "reacts", on "two", where it was published
    assert sorted(r.workflow for r in history) == ["reacts", "reacts", "waits"]


async def test_answers_left_to_a_dead_replica_are_taken_over_with_its_tasks(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    declarations = tmp_path / "durable.toml"
    declarations.write_text(DURABLE)
    options = ("--replica", "one", "--lease", "2")
    async with serve(redis_url, declarations, options=options) as one:  # type: ignore[arg-type]
        for subscriber_id in ("w", "v"):
            for step in ("a", "b", "c"):
                response = await one.http.post(f"/subscriber/{subscriber_id}/{step}")
                assert response.status_code == 200
        async with replica(redis_url, "two") as (two, store):
            async with one.subscriber("w") as w_ws, one.subscriber("v") as v_ws:
                task_id = (await one.http.post("/workflow/durable/run")).json()["task_id"]
                for ws in (w_ws, v_ws):
                    await answer(ws, await action(ws))
                for ws in (w_ws, v_ws):
                    assert (await action(ws))["data"]["step"] == "b"
                one.process.kill()  # "one" dies while both owe b
                with trio.fail_after(10):
                    await one.process.wait()
            stream = store.streams.answer_stream("one")
            async with (
                two.open_listener(subscriber_id="w") as w,
                two.open_listener(subscriber_id="v") as v,
            ):
                # both answer b through "two": the answers go to "one", which holds the task
                for listener in (w, v):
                    listener.done(Action("b", task_id, "b"))
                with trio.fail_after(5):
                    while len(left := await store.streams.follow(stream)) < 2:
                        await trio.sleep(0.01)
                # "one" had read w's answer just before it died, and not yet taken it
                read = await store.streams.read(stream, "driver", "one", count=1)
                assert read == left[:1]
                assert await store.lease_of(task_id) == "one"  # not taken over yet
                caplog.set_level("INFO", logger="engine._replicas")
                for listener in (w, v):  # b is not asked again: both answers count
                    sent = await next_action(listener, timeout=10)
                    assert (sent.task, sent.step) == (task_id, "c")
                    listener.done(sent)
                with trio.fail_after(5):
                    result = await two.wait_task(task_id)
                    # acknowledged once what they caused was committed, then deleted
                    while await store.streams.owed(stream, "driver", "two"):
                        await trio.sleep(0.01)
                assert await stream_bodies(redis_url, stream) == []
    assert result.outcome is Outcome.DONE
    assert [dict(s.answered) for s in result.steps] == [{"w": "done", "v": "done"}] * 3
    assert "took 2 answer(s) left to the tasks of replica 'one'" in caplog.messages


async def test_a_subscriber_that_moves_to_another_replica_gets_what_it_is_owed_there(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as (one, _), replica(redis_url, "two") as (two, _):
        for step in ("a", "b", "c"):
            one.subscribe("w", step)
        with trio.fail_after(5):
            while len(getattr(two.subscribers.get("w"), "subscriptions", ())) < 3:
                await trio.sleep(0.01)
        async with one.open_listener(subscriber_id="w") as listener:
            task_id = (await one.start_run("durable")).task_id
            first = await next_action(listener)
            assert (first.task, first.step) == (task_id, "a")
        # it went away without answering, and comes back through the other replica
        async with two.open_listener(subscriber_id="w") as listener:
            owed = await next_action(listener, timeout=5)
            assert (owed.task, owed.step) == (task_id, "a")
            listener.done(owed)
            for step in ("b", "c"):
                sent = await next_action(listener, timeout=5)
                assert (sent.task, sent.step) == (task_id, step)
                listener.done(sent)
            assert task_id is not None
            result = await one.wait_task(task_id)
    assert result.outcome is Outcome.DONE


async def test_a_bad_entry_in_a_shared_stream_is_skipped(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        replica(redis_url, "one") as (one, store),
        replica(redis_url, "two") as (two, _),
        one.open_listener(message_types=["hello"]) as heard,
    ):
        one.subscribe("w", "a")
        async with two.open_listener(subscriber_id="w") as listener:
            streams = store.streams
            await streams.append(streams.event_stream(), b"{not json")
            await streams.append(streams.action_stream("w"), b'{"kind": "nonsense"}')
            two.publish(Event("hello", {"n": 1}))
            with trio.fail_after(5):
                assert (await heard.receive()).data == {"n": 1}
            task_id = (await one.start_run("durable")).task_id
            sent = await next_action(listener, timeout=5)
            assert (sent.task, sent.step) == (task_id, "a")
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring")]
    # each replica skipped the bad event; the one reading w's actions, the bad action
    assert sorted(m.split(" of ")[1] for m in skipped) == [
        "phasebus:actions:w",
        "the events stream",
        "the events stream",
    ]
