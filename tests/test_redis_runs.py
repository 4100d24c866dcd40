"""Runs across servers on one Redis: surpass weighed over every server's runs, stops carried
to the server driving a task, every server's running and queued tasks listed.

The first tests drive the store's scripts directly; the others run engines in one trio
process (and, where a server must die, ``phasebus serve`` processes) on one real
``redis-server``. Leases last two seconds; Redis keeps its own time, so these tests run
in real time.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from engine import (
    Action,
    ActionAbort,
    Engine,
    Event,
    EventTrigger,
    Outcome,
    StartDecision,
    Step,
    TaskResult,
    Workflow,
    open_engine,
)
from engine._errors import LeaseLost, StoreError
from engine._redis import RedisStore, open_redis_store
from engine._rules import admission_records
from engine._web import create_app
from machines.__main__ import main_async

from .redis_support import RedisServer
from .test_recovery import DURABLE, action, serve
from .test_redis_store import finished

pytestmark = pytest.mark.redis

LEASE = timedelta(seconds=2)


async def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = await main_async(list(argv), stdout=out, stderr=io.StringIO())
    return status, out.getvalue()


def store_of(engine: Engine) -> RedisStore:
    assert isinstance(engine.store, RedisStore)
    return engine.store


def records(task_id: str, workflow: str = "wf") -> tuple[bytes, bytes]:
    return admission_records(task_id, workflow, 1.0)


async def state_of(store: RedisStore, task_id: str) -> str | None:
    record = await store.running_task(task_id)
    return None if record is None else str(record["state"])


# ---------------------------------------------------------------- the scripts


async def test_the_store_admits_skip_wait_and_replace_over_every_lease(redis_url: str) -> None:
    async with open_redis_store(redis_url) as store:
        one = await store.acquire_lease("one", LEASE)
        two = await store.acquire_lease("two", LEASE)
        assert one is not None
        assert two is not None

        async def admit(task_id: str, surpass: str, owner: str, fence: int) -> Any:
            return await store.admit(
                "wf", task_id, surpass, owner=owner, fence=fence, records=records(task_id)
            )

        assert await admit("a", "skip", "one", one) == ("start", ())
        assert await admit("b", "skip", "two", two) == ("skip", ("a",))
        # asked again (no answer the first time): the first verdict stands
        assert await admit("a", "skip", "one", one) == ("start", ())
        assert (await store.lease_of("a"), await state_of(store, "a")) == ("one", "admitted")
        assert await store.lease_of("b") is None
        # wait: one run queued across leases, the next skipped
        assert await admit("q", "wait", "two", two) == ("queue", ())
        assert await admit("r", "wait", "one", one) == ("skip", ("q",))
        assert (await store.lease_of("q"), await state_of(store, "q")) == ("two", "queued")
        # the active run ends under "one": the queued one under "two" becomes active,
        # and "two" is told to start it
        await store.commit([finished("a", 10.0)], owner="one", fence=one)
        assert await state_of(store, "q") == "admitted"
        entries = await store.streams.follow(store.streams.answer_stream("two"))
        assert [orjson.loads(body) for _, body in entries] == [{"c": "start", "t": "q"}]
        assert await admit("s", "skip", "one", one) == ("skip", ("q",))
        # replace: the active run is asked to stop through its holder's stream
        assert await admit("n", "replace", "one", one) == ("start", ("q",))
        # asked again: the runs it replaces are named again, and not stopped twice
        assert await admit("n", "replace", "one", one) == ("start", ("q",))
        stop = {"c": "stop", "t": "q", "why": "replaced by task n", "r": True}
        entries = await store.streams.follow(store.streams.answer_stream("two"))
        assert orjson.loads(entries[-1][1]) == stop
        assert await store.stop_requests(["q", "n"]) == {"q": stop}
        # a run asked to stop no longer counts: another replace names only "n"
        assert await admit("m", "replace", "two", two) == ("start", ("n",))
        await store.commit([finished("q", 11.0, outcome="replaced")], owner="two", fence=two)
        assert await store.stop_requests(["q"]) == {}
        with pytest.raises(LeaseLost, match=r"^admission refused, nothing decided: lease one"):
            await admit("x", "skip", "one", one + 100)


async def test_a_stop_is_sent_to_the_lease_holding_the_task(redis_url: str) -> None:
    async with open_redis_store(redis_url) as store:
        one = await store.acquire_lease("one", LEASE)
        assert one is not None
        assert await store.admit(
            "wf", "t", "skip", owner="one", fence=one, records=records("t")
        ) == ("start", ())
        assert await store.request_stop("t", "enough") == ("sent", "one")
        assert await store.request_stop("t", "again") == ("sent", "one")
        sent = {"c": "stop", "t": "t", "why": "enough", "r": False}
        assert await store.stop_requests(["t"]) == {"t": sent}  # the first reason stands
        entries = await store.streams.follow(store.streams.answer_stream("one"))
        assert [orjson.loads(body)["why"] for _, body in entries] == ["enough", "again"]
        # asked to stop, it no longer holds a skip back
        assert await store.admit(
            "wf", "u", "skip", owner="one", fence=one, records=records("u")
        ) == ("start", ())
        await store.commit([finished("t", 10.0, outcome="stopped")], owner="one", fence=one)
        assert await store.request_stop("t", "late") == ("ended", None)
        assert await store.request_stop("nothing", "why") == ("unknown", None)
        assert [r["id"] for r in await store.running_tasks()] == ["u"]


# ---------------------------------------------------------------- engines

SKIP = Workflow(id="durable", surpass="skip", steps=[Step(s, timeout=60) for s in "abc"])
WAIT = Workflow(id="waits", surpass="wait", steps=[Step("w1", timeout=60)])
REPLACE = Workflow(id="replaces", surpass="replace", steps=[Step("r1", timeout=60)])
TRIGGERED = Workflow(
    id="triggered",
    surpass="skip",
    steps=[Step("t1", timeout=60)],
    triggers=[EventTrigger("go")],
)


@asynccontextmanager
async def replica(url: str, name: str) -> AsyncIterator[Engine]:
    async with (
        open_redis_store(url) as store,
        open_engine(
            workflows=[SKIP, WAIT, REPLACE, TRIGGERED], store=store, replica=name, lease=LEASE
        ) as engine,
    ):
        yield engine


async def next_message(listener: Any, kind: type, timeout: float = 10) -> Any:
    with trio.fail_after(timeout):
        while True:
            message = await listener.receive()
            if isinstance(message, kind):
                return message


async def test_servers_starting_a_skip_workflow_at_once_start_one_run(redis_url: str) -> None:
    async with replica(redis_url, "one") as one, replica(redis_url, "two") as two:
        for engine in (one, two):  # the runs stay active until "w" answers
            engine.subscribe("w", "a")
            engine.subscribe("w", "t1")
        results: list[Any] = []

        async def start(engine: Engine) -> None:
            results.append(await engine.start_run("durable", reason="race"))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(start, one)
                nursery.start_soon(start, two)
        started = [r for r in results if r.decision is StartDecision.STARTED]
        assert len(started) == 1
        winner = started[0].task_id
        skipped = [r for r in results if r.decision is StartDecision.SKIPPED]
        assert len(skipped) == 19
        assert {r.reason for r in skipped} == {f"a run is active (surpass skip): task {winner}"}
        assert all(r.task_id is None for r in skipped)
        # the synchronous start cannot weigh the other server's runs: it says so
        with pytest.raises(StoreError, match=r"use await engine.start_run\(\)$"):
            one.start_workflow("durable")
        # an event published on both servers at once triggers one run
        one.publish(Event("go", {"n": 1}))
        two.publish(Event("go", {"n": 2}))
        with trio.fail_after(5):
            while not [t for t in await one.fetch_tasks() if t.workflow == "triggered"]:
                await trio.sleep(0.01)
        await trio.sleep(0.3)  # time for a second run, if there were one
        assert len([t for t in await two.fetch_tasks() if t.workflow == "triggered"]) == 1
        # the API says the same
        app = create_app(two)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://two"
            ) as http:
                skipped_here = await http.post("/workflow/durable/run")
                assert skipped_here.status_code == 200
                assert skipped_here.json() == {
                    "workflow": "durable",
                    "decision": "skipped",
                    "task_id": None,
                    "replaced": [],
                    "reason": f"a run is active (surpass skip): task {winner}",
                }
                unknown = await http.post("/workflow/nothing/run")
                assert (unknown.status_code, unknown.json()["error"]) == (
                    404,
                    "unknown workflow 'nothing'",
                )
        finally:
            app.close()


async def test_a_run_queued_on_one_server_starts_when_the_run_on_another_ends(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as one, replica(redis_url, "two") as two:
        one.subscribe("w", "w1")
        async with one.open_listener(subscriber_id="w") as listener:
            first = await one.start_run("waits")
            assert first.decision is StartDecision.STARTED
            queued = await two.start_run("waits")
            assert queued.decision is StartDecision.QUEUED
            again = await one.start_run("waits")
            assert (again.decision, again.reason) == (
                StartDecision.SKIPPED,
                f"a run is active and another is already queued (surpass wait): task"
                f" {queued.task_id}",
            )
            app = create_app(one)
            try:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://one"
                ) as http:
                    shown = (await http.get("/tasks", params={"workflow": "waits"})).json()
                    assert [(t["id"], t["running"]) for t in shown[:2]] == [
                        (first.task_id, True),
                        (queued.task_id, True),
                    ]
                    assert shown[1]["state"] == "queued"
                    assert shown[1]["step"] is None
            finally:
                app.close()
            sent = await next_message(listener, Action)
            assert sent.task == first.task_id
            listener.done(sent)
            # the run "one" drove ended: "two" starts the queued run; its action reaches "w"
            second = await next_message(listener, Action)
            assert second.task == queued.task_id
            assert queued.task_id is not None
            listener.done(second)
            result = await two.wait_task(queued.task_id)
        assert result.outcome is Outcome.DONE
        assert first.task_id is not None
        assert (await one.fetch_task(first.task_id)).outcome is Outcome.DONE  # type: ignore[union-attr]


async def test_replace_stops_the_run_another_server_drives(redis_url: str) -> None:
    async with replica(redis_url, "one") as one, replica(redis_url, "two") as two:
        one.subscribe("w", "r1")
        async with one.open_listener(subscriber_id="w") as listener:
            old = await one.start_run("replaces")
            assert old.task_id is not None
            assert (await next_message(listener, Action)).task == old.task_id
            new = await two.start_run("replaces")
            assert (new.decision, new.replaced) == (StartDecision.STARTED, (old.task_id,))
            abort = await next_message(listener, ActionAbort)
            assert abort.task == old.task_id
            result = await one.wait_task(old.task_id)
            assert result.outcome is Outcome.REPLACED
            assert result.error == f"replaced by task {new.task_id}"
            sent = await next_message(listener, Action)  # the new run's, from "two"
            assert sent.task == new.task_id
            listener.done(sent)
            assert new.task_id is not None
            assert (await two.wait_task(new.task_id)).outcome is Outcome.DONE


async def test_a_run_replaced_before_its_own_verdict_came_back_stops(redis_url: str) -> None:
    """The store admitted "one"'s run, but its answer comes late: "two" replaces the run
    meanwhile, and the stop reaches "one" before the verdict does."""
    async with replica(redis_url, "one") as one, replica(redis_url, "two") as two:
        one.subscribe("w", "r1")
        store = store_of(one)
        admit = store.admit
        answer = trio.Event()

        async def late(*args: Any, **kwargs: Any) -> Any:
            verdict = await admit(*args, **kwargs)
            await answer.wait()
            return verdict

        store.admit = late  # type: ignore[method-assign]
        async with one.open_listener(subscriber_id="w"), trio.open_nursery() as nursery:
            got: list[Any] = []

            async def start_one() -> None:
                got.append(await one.start_run("replaces"))

            nursery.start_soon(start_one)
            with trio.fail_after(5):  # admitted in Redis; "one" does not know it yet
                while not (running := await store.running_tasks()):
                    await trio.sleep(0.01)
            (old_id,) = [record["id"] for record in running]
            new = await two.start_run("replaces")
            assert (new.decision, new.replaced) == (StartDecision.STARTED, (old_id,))
            shared = one._shared
            assert shared is not None
            with trio.fail_after(5):  # the stop reached "one" first
                while old_id not in shared._early:
                    await trio.sleep(0.01)
            answer.set()
        (old,) = got
        assert (old.decision, old.task_id) == (StartDecision.STARTED, old_id)
        with trio.fail_after(10):
            result = await one.wait_task(old_id)
        assert result.outcome is Outcome.REPLACED
        assert result.error == f"replaced by task {new.task_id}"


async def test_a_task_is_listed_and_stopped_through_any_server(redis_url: str) -> None:
    async with replica(redis_url, "one") as one, replica(redis_url, "two") as two:
        one.subscribe("w", "a")
        async with one.open_listener(subscriber_id="w") as listener:
            task_id = (await one.start_run("durable")).task_id
            assert task_id is not None
            assert (await next_message(listener, Action)).step == "a"
            app = create_app(two)
            try:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://two"
                ) as http:
                    listed = (await http.get("/tasks", params={"limit": "0"})).json()
                    assert [(t["id"], t["step"]["name"]) for t in listed] == [(task_id, "a")]
                    assert (await http.get("/tasks", params={"workflow": "waits"})).json() == []
                    stopped = await http.delete(f"/task/{task_id[:8]}")
                    assert (stopped.status_code, stopped.json()) == (
                        200,
                        {"task_id": task_id, "stopped": True},
                    )
                    abort = await next_message(listener, ActionAbort)
                    assert (abort.task, abort.step) == (task_id, "a")
                    result = await one.wait_task(task_id)
                    assert result.outcome is Outcome.STOPPED
                    assert result.error == "stopped through the API"
                    again = await http.delete(f"/task/{task_id}")
                    assert (again.status_code, again.json()) == (
                        200,
                        {"task_id": task_id, "stopped": False},
                    )
                    unknown = await http.delete("/task/nothing")
                    assert (unknown.status_code, unknown.json()["error"]) == (
                        404,
                        "unknown task 'nothing'",
                    )
                    assert (await http.get("/tasks", params={"limit": "0"})).json() == []
            finally:
                app.close()


async def test_a_stop_sent_to_a_dead_server_is_taken_with_its_tasks(
    redis_url: str, tmp_path: Path
) -> None:
    declarations = tmp_path / "durable.toml"
    declarations.write_text(DURABLE)
    options = ("--replica", "one", "--lease", "2")
    async with serve(redis_url, declarations, options=options) as one:  # type: ignore[arg-type]
        assert (await one.http.post("/subscriber/w/a")).status_code == 200
        async with replica(redis_url, "two") as two:
            async with one.subscriber("w") as ws:
                task_id = (await one.http.post("/workflow/durable/run")).json()["task_id"]
                assert (await action(ws))["data"]["step"] == "a"
                one.process.kill()  # "one" dies while "w" owes a
                with trio.fail_after(10):
                    await one.process.wait()
            app = create_app(two, store_wait=1.0)
            try:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://two"
                ) as http:
                    # its lease has not expired: the request waits in its stream
                    asked = await http.delete(f"/task/{task_id}")
                    assert (asked.status_code, asked.json()) == (
                        202,
                        {"task_id": task_id, "stopped": True, "pending": True},
                    )
            finally:
                app.close()
            with trio.fail_after(10):  # "two" takes the task over, and the stop with it
                while not isinstance(result := await two.fetch_task(task_id), TaskResult):
                    await trio.sleep(0.05)
            assert await store_of(two).lease_of(task_id) is None
    assert result.outcome is Outcome.STOPPED
    assert result.error == "stopped through the API"


async def test_a_queued_run_outlives_the_server_holding_it(redis_url: str, tmp_path: Path) -> None:
    declarations = tmp_path / "waits.toml"
    declarations.write_text(DURABLE.replace('surpass = "skip"', 'surpass = "wait"'))
    options = ("--replica", "one", "--lease", "2")
    async with serve(redis_url, declarations, options=options) as one:  # type: ignore[arg-type]
        async with open_redis_store(redis_url) as store, replica(redis_url, "two") as two:
            durable = Workflow(
                id="durable", surpass="wait", steps=[Step(s, timeout=60) for s in "abc"]
            )
            two.add_workflow(durable, replace=True)
            for step in "abc":
                two.subscribe("w", step)
            async with two.open_listener(subscriber_id="w") as listener:
                first = await two.start_run("durable")
                assert first.decision is StartDecision.STARTED
                queued = (await one.http.post("/workflow/durable/run")).json()
                assert queued["decision"] == "queued"
                assert await store.lease_of(queued["task_id"]) == "one"
                # "phasebus tasks" through "one" shows the run "two" drives, and its own
                status, out = await cli("tasks", "--url", one.url, "--json")
                listed = [(t["id"], t["state"]) for t in json.loads(out)]
                assert (status, listed) == (
                    0,
                    [(first.task_id, "a"), (queued["task_id"], "queued")],
                )
                status, out = await cli("tasks", "--url", one.url)
                assert status == 0
                assert f"{queued['task_id']}  durable  started" in out
                assert "  queued: starts when the active run ends\n" in out
                one.process.kill()  # "one" dies holding the queued run
                with trio.fail_after(10):
                    await one.process.wait()
                for step in "abc":
                    sent = await next_message(listener, Action)
                    assert (sent.task, sent.step) == (first.task_id, step)
                    listener.done(sent)
                # the run "two" drove ended: the queued run starts, on whichever server
                # holds it once "one"'s lease expired: "two"
                sent = await next_message(listener, Action)
                assert (sent.task, sent.step) == (queued["task_id"], "a")
                assert await store.lease_of(queued["task_id"]) == "two"


async def test_while_redis_does_not_answer_a_start_or_a_remote_stop_answers_503(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    async with replica(url, "one") as one, replica(url, "two") as two:
        one.subscribe("w", "a")
        running_id = (await one.start_run("durable")).task_id
        assert running_id is not None
        with trio.fail_after(5):  # "two" knows the task from its record
            while [t.id for t in await two.fetch_tasks()] != [running_id]:
                await trio.sleep(0.01)
        app = create_app(two, store_wait=1.0)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://two"
            ) as http:
                redis_server.kill(signal.SIGSTOP)  # connections stay open; no answer comes
                try:
                    started = await http.post("/workflow/waits/run")
                    assert (started.status_code, started.json()) == (
                        503,
                        {
                            "error": "the store does not answer",
                            "problems": [
                                "the start of a run of 'waits' was not decided within 1 s: it"
                                " is decided once the store answers (GET /tasks shows the run"
                                " if it starts)"
                            ],
                        },
                    )
                    stopped = await http.delete(f"/task/{running_id}")
                    assert stopped.status_code == 503
                    assert stopped.json()["problems"] == [
                        f"the stop of task {running_id!r} was not confirmed within 1 s: it"
                        " reaches the server driving the task once the store answers, if it"
                        " was sent"
                    ]
                finally:
                    redis_server.kill(signal.SIGCONT)
                # Redis answers again: the start asked for was decided, and the run ran
                with trio.fail_after(20):
                    while not await two.fetch_history(workflow="waits"):
                        await trio.sleep(0.05)
        finally:
            app.close()


async def test_while_redis_does_not_answer_the_driving_server_stops_its_task_and_says_so(
    redis_server: RedisServer,
) -> None:
    async with replica(redis_server.url, "one") as one:
        one.subscribe("w", "a")
        task_id = (await one.start_run("durable")).task_id
        assert task_id is not None
        with trio.fail_after(5):  # its first state is stored
            while await state_of(store_of(one), task_id) != "a":
                await trio.sleep(0.01)
        app = create_app(one, store_wait=1.0)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://one"
            ) as http:
                redis_server.kill(signal.SIGSTOP)  # connections stay open; no answer comes
                try:
                    stopped = await http.delete(f"/task/{task_id}")
                    # stopped here, as every change: kept in memory, stored once Redis answers
                    assert (stopped.status_code, stopped.json()) == (
                        503,
                        {
                            "error": "the store does not answer",
                            "problems": [
                                "the change was not stored within 1 s: it is kept in memory"
                                " and written once the store answers"
                            ],
                        },
                    )
                    run = one._core.running[task_id]
                    assert run.stop_request == (False, "stopped through the API")
                finally:
                    redis_server.kill(signal.SIGCONT)
            with trio.fail_after(20):  # Redis answers again: the end is stored
                result = await one.wait_task(task_id)
            assert (result.outcome, result.error) == (Outcome.STOPPED, "stopped through the API")
        finally:
            app.close()


async def test_a_stop_the_driving_server_answered_outlives_that_server(redis_url: str) -> None:
    async with replica(redis_url, "one") as one:
        one.subscribe("w", "a")
        async with one.open_listener(subscriber_id="w") as listener:
            task_id = (await one.start_run("durable")).task_id
            assert task_id is not None
            assert (await next_message(listener, Action)).step == "a"
            assert await one.stop_task_anywhere(task_id, reason="enough") == "stopping"
            one.freeze()  # it dies before the task's end is stored
        store = store_of(one)
        assert await state_of(store, task_id) == "a"
        assert await store.stop_requests([task_id]) == {
            task_id: {"c": "stop", "t": task_id, "why": "enough", "r": False}
        }
    # "one" gave its lease up; "two" takes the task over, and the stop with it
    async with replica(redis_url, "two") as two:
        with trio.fail_after(10):
            while not isinstance(result := await two.fetch_task(task_id), TaskResult):
                await trio.sleep(0.05)
    assert (result.outcome, result.error) == (Outcome.STOPPED, "enough")


async def test_a_stop_its_server_took_but_did_not_carry_out_is_taken_with_the_task(
    redis_url: str,
) -> None:
    async with open_redis_store(redis_url) as store:
        # "one" admitted a run, took the stop asked for it from its stream, and stopped
        # before that stop was carried out (nothing of it stored)
        fence = await store.acquire_lease("one", LEASE)
        assert fence is not None
        task_id = "0d6a0d6a-0000-4000-8000-000000000001"
        admitted = await store.admit(
            "durable",
            task_id,
            "skip",
            owner="one",
            fence=fence,
            records=records(task_id, "durable"),
        )
        assert admitted == ("start", ())
        assert await store.request_stop(task_id, "enough") == ("sent", "one")
        stream = store.streams.answer_stream("one")
        taken = await store.streams.read(stream, "driver", "one")
        assert len(taken) == 1
        await store.streams.ack(stream, "driver", [entry for entry, _ in taken])
        assert await store.release_lease("one", fence)
        # "two" takes the run over: the stop kept in Redis comes with it
        async with replica(redis_url, "two") as two:
            with trio.fail_after(10):
                while not isinstance(result := await two.fetch_task(task_id), TaskResult):
                    await trio.sleep(0.05)
        assert (result.outcome, result.error) == (Outcome.STOPPED, "enough")
        assert await store.stop_requests([task_id]) == {}
        assert await store.running_tasks() == []


async def test_a_run_queued_behind_a_run_whose_server_died_starts_when_that_run_ends(
    redis_url: str, tmp_path: Path
) -> None:
    declarations = tmp_path / "waits.toml"
    declarations.write_text(DURABLE.replace('surpass = "skip"', 'surpass = "wait"'))
    options = ("--replica", "one", "--lease", "2")
    async with serve(redis_url, declarations, options=options) as one:  # type: ignore[arg-type]
        for step in "abc":
            assert (await one.http.post(f"/subscriber/w/{step}")).status_code == 200
        async with replica(redis_url, "two") as two:
            two.add_workflow(
                Workflow(id="durable", surpass="wait", steps=[Step(s, timeout=60) for s in "abc"]),
                replace=True,
            )
            async with one.subscriber("w") as ws:
                active = (await one.http.post("/workflow/durable/run")).json()["task_id"]
                assert (await action(ws))["data"]["step"] == "a"
                queued = await two.start_run("durable")
                assert queued.decision is StartDecision.QUEUED
                one.process.kill()  # the server driving the active run dies
                with trio.fail_after(10):
                    await one.process.wait()
            with trio.fail_after(10):
                while two.subscribers.get("w") is None:
                    await trio.sleep(0.05)
            async with two.open_listener(subscriber_id="w") as listener:
                # "two" takes the active run over at a, and it runs to its end
                for step in "abc":
                    sent = await next_message(listener, Action)
                    assert (sent.task, sent.step) == (active, step)
                    listener.done(sent)
                # then the queued run starts
                sent = await next_message(listener, Action)
                assert (sent.task, sent.step) == (queued.task_id, "a")
            assert (await two.fetch_task(active)).outcome is Outcome.DONE  # type: ignore[union-attr]


async def test_a_schedule_firing_the_store_could_not_decide_is_recorded_failed(
    redis_url: str,
) -> None:
    async with replica(redis_url, "one") as one:
        store = store_of(one)

        async def broken(*_: object, **__: object) -> Any:
            raise RuntimeError("the script is gone")

        store.admit = broken  # type: ignore[method-assign]
        # what a cron firing does: not a surpass skip, so not recorded as one
        assert await one._fire("durable", "schedule") == ("failed", None)
        started = await one.start_run("durable")
        assert (started.decision, started.reason) == (
            StartDecision.SKIPPED,
            "the run could not be decided, so it did not start: RuntimeError: the script is gone",
        )
