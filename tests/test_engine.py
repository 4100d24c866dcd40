"""Conformance of the engine: steps, answers, deadlines, behaviours, triggers, events."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import pytest
import trio

from engine import (
    LISTENER_CONNECTED,
    LISTENER_DISCONNECTED,
    Action,
    ActionAbort,
    ActionDone,
    CommandContext,
    CronTrigger,
    DeclarationError,
    EmitEvent,
    Engine,
    Event,
    EventTrigger,
    ExecuteCommand,
    Job,
    Kind,
    Listener,
    ListenerDropped,
    ListenerError,
    Message,
    OnError,
    Outcome,
    PhasebusError,
    ProgressLeaf,
    StartDecision,
    Step,
    StepEnd,
    Surpass,
    TaskInfo,
    UnknownTaskError,
    UnknownWorkflowError,
    WaitForEvent,
    Workflow,
    open_engine,
)
from machines import COLLECT_AND_CLEANUP

from .conftest import START


def drain(listener: Listener) -> list[Message]:
    messages = []
    while True:
        try:
            messages.append(listener.receive_nowait())
        except trio.WouldBlock:
            return messages


def events(messages: Iterable[Message], message_type: str | None = None) -> list[Event]:
    return [m for m in messages if isinstance(m, Event) and message_type in (None, m.message_type)]


@asynccontextmanager
async def engine_with(*workflows: Workflow, **options: object) -> AsyncIterator[Engine]:
    async with open_engine(workflows=workflows, start_time=START, **options) as engine:  # type: ignore[arg-type]
        yield engine


async def answer_all(listener: Listener, *, delay: float = 0.0) -> None:
    """Answer every action the listener gets with action_done after ``delay`` seconds."""
    async for message in listener:
        if isinstance(message, Action):
            if delay:
                await trio.sleep(delay)
            listener.done(message)


def one_step(
    step: Step | None = None, *, id: str = "wf", surpass: Surpass = Surpass.WAIT, **kw: object
) -> Workflow:
    return Workflow(id=id, steps=[step or Step("work")], surpass=surpass, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ a whole run


async def test_collect_and_cleanup_runs_every_step_in_order_with_lifecycle_events(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(COLLECT_AND_CLEANUP) as engine:
        for message_type in ("collect", "cleanup", "generate_metrics"):
            engine.subscribe("worker", message_type)
        async with (
            engine.open_listener() as watch,
            engine.open_listener(subscriber_id="worker") as worker,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(answer_all, worker, delay=2.0))
                result = await engine.run_workflow("collect_and_cleanup")
                nursery.cancel_scope.cancel()
            seen = drain(watch)
    assert result.outcome is Outcome.DONE
    assert result.error is None
    names = [s.name for s in COLLECT_AND_CLEANUP.steps]
    assert [s.name for s in result.steps] == names
    assert [m.message_type for m in seen if isinstance(m, Action)] == names
    answered = [m.message_type for m in seen if isinstance(m, ActionDone)]
    assert answered == ["collect", "cleanup", "generate_metrics"]
    kinds = [m.message_type for m in events(seen) if m.message_type != "progress"]
    assert kinds == [LISTENER_CONNECTED, "task_started", "task_end"]
    started = events(seen, "task_started")[0].data
    assert started == {
        "task": "collect_and_cleanup",
        "task_id": result.id,
        "workflow": "collect_and_cleanup",
        "started_at": START.isoformat(),
    }
    end = events(seen, "task_end")[0].data
    assert end == {
        "task_id": result.id,
        "descriptor_id": "collect_and_cleanup",
        "workflow": "collect_and_cleanup",
        "outcome": "done",
        "duration": pytest.approx(6.0),
    }
    progress = events(seen, "progress")
    # one per state change: each of the 13 steps, and the end
    assert [p.data["step"] for p in progress] == [*names, "end"]
    assert progress[1].data["waiting_for"] == ["worker"]
    assert progress[-1].data["message"]["parts"][0] == {
        "kind": "progress",
        "name": "pre_collect",
        "current": 1,
        "total": 1,
    }
    assert result.steps[1].answered == {"worker": "done"}
    assert result.steps[1].duration == pytest.approx(2.0)


async def test_a_step_with_no_subscriber_completes_at_once_and_still_sends_the_action(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step()) as engine, engine.open_listener() as watch:
        before = trio.current_time()
        result = await engine.run_workflow("wf")
        assert trio.current_time() == before
        assert result.outcome is Outcome.DONE
        assert [m.message_type for m in drain(watch) if isinstance(m, Action)] == ["work"]


# ------------------------------------------------------------------ perform action


async def test_step_waits_for_every_waiting_subscriber_but_not_for_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step()) as engine:
        engine.subscribe("a", "work")
        engine.subscribe("b", "work")
        engine.subscribe("observer", "work", wait_for_completion=False)
        async with (
            engine.open_listener(subscriber_id="a") as a,
            engine.open_listener(subscriber_id="b") as b,
            engine.open_listener(subscriber_id="observer") as observer,
        ):
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            action = await a.receive()
            assert isinstance(action, Action)
            assert isinstance(await observer.receive(), Action)
            info = engine.tasks()[0]
            assert info.step is not None
            assert info.step.waiting_for == ("a", "b")
            assert info.step.deadline == START + timedelta(seconds=60)
            a.done(action)
            await trio.sleep(1)
            info = engine.tasks()[0]
            assert info.step is not None
            assert info.step.waiting_for == ("b",)
            assert info.step.answered == {"a": "done"}
            b.done(await b.receive())  # type: ignore[arg-type]
            result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert result.duration == pytest.approx(1.0)
    assert result.steps[0].answered == {"a": "done", "b": "done"}


async def test_deadline_is_the_largest_of_step_timeout_and_subscription_timeouts(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=10))) as engine:
        engine.subscribe("slow", "work", timeout=30)
        engine.subscribe("quick", "work", timeout=5)
        result = await engine.run_workflow("wf")
    assert result.duration == pytest.approx(30.0)
    assert result.outcome is Outcome.DONE
    assert result.steps[0].timed_out
    assert result.errors == ("step 'work' timed out waiting for quick, slow",)


async def test_deadline_under_continue_moves_on_and_publishes_an_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(id="wf", steps=[Step("a", timeout=5), Step("b", timeout=5)])
    async with engine_with(workflow) as engine, engine.open_listener() as watch:
        engine.subscribe("silent", "a", timeout=1)
        result = await engine.run_workflow("wf")
        seen = drain(watch)
    assert result.outcome is Outcome.DONE
    assert [s.name for s in result.steps] == ["a", "b"]
    assert result.duration == pytest.approx(5.0)
    assert [e.data for e in events(seen, "error")] == [
        {
            "workflow": "wf",
            "task": result.id,
            "message": "step 'a' stalled: nothing heard from silent for 2.5s (deadline in 2.5s)",
        },
        {"workflow": "wf", "task": result.id, "message": "step 'a' timed out waiting for silent"},
    ]


async def test_deadline_under_stop_fails_the_task(autojump_clock: trio.abc.Clock) -> None:
    workflow = Workflow(id="wf", steps=[Step("a", timeout=5, on_error=OnError.STOP), Step("b")])
    async with engine_with(workflow) as engine, engine.open_listener() as watch:
        engine.subscribe("silent", "a", timeout=1)
        result = await engine.run_workflow("wf")
        seen = drain(watch)
    assert result.outcome is Outcome.FAILED
    assert result.error == "step 'a' timed out waiting for silent"
    assert [s.name for s in result.steps] == ["a"]
    end = events(seen, "task_end")[0].data
    assert end["outcome"] == "failed"
    assert end["error"] == "step 'a' timed out waiting for silent"


async def test_action_error_counts_as_an_answer_under_continue(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(id="wf", steps=[Step("a"), Step("b")])
    async with engine_with(workflow) as engine, engine.open_listener() as watch:
        engine.subscribe("w", "a")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            action = await w.receive()
            assert isinstance(action, Action)
            w.error(action, "Failed to collect: boom")
            result = await engine.wait_task(task_id)
        seen = drain(watch)
    assert result.outcome is Outcome.DONE
    assert result.duration == 0
    assert result.steps[0].answered == {"w": "error"}
    assert result.errors == ("w: Failed to collect: boom",)
    # the message as the subscriber sent it; who sent it in a field of its own
    assert events(seen, "error")[0].data == {
        "workflow": "wf",
        "task": result.id,
        "message": "Failed to collect: boom",
        "subscriber_id": "w",
    }


async def test_action_error_under_stop_fails_at_once_and_aborts_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(id="wf", steps=[Step("a", on_error=OnError.STOP), Step("b")])
    async with engine_with(workflow) as engine:
        engine.subscribe("failing", "a")
        engine.subscribe("other", "a")
        async with (
            engine.open_listener(subscriber_id="failing") as failing,
            engine.open_listener(subscriber_id="other") as other,
        ):
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            action = await failing.receive()
            assert isinstance(action, Action)
            failing.error(action, "no access")
            result = await engine.wait_task(task_id)
            assert isinstance(await other.receive(), Action)
            abort = await other.receive()
            assert drain(failing) == []
    assert result.outcome is Outcome.FAILED
    assert result.error == "failing: no access"
    assert isinstance(abort, ActionAbort)
    assert (abort.task, abort.step) == (task_id, "a")


async def test_duplicate_late_unknown_and_other_step_answers_change_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(id="wf", steps=[Step("a"), Step("b")])
    async with engine_with(workflow) as engine:
        engine.subscribe("w", "a")
        engine.subscribe("w", "b")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            first = await w.receive()
            assert isinstance(first, Action)
            # an answer for another step, an unknown task, an unknown subscriber
            engine.publish(ActionDone("b", first.task, "b", subscriber_id="w"))
            engine.publish(ActionDone("a", "no-such-task", "a", subscriber_id="w"))
            engine.publish(ActionDone("a", first.task, "a", subscriber_id="stranger"))
            engine.publish(ActionDone("a", first.task, "a"))
            await trio.sleep(1)
            assert engine.tasks()[0].state == "a"
            w.done(first)
            w.done(first)  # a duplicate
            second = await w.receive()
            assert isinstance(second, Action)
            assert second.step == "b"
            w.error(first, "late")  # late, for a finished step
            await trio.sleep(1)
            info = engine.tasks()[0]
            assert info.step is not None
            assert (info.state, info.step.answered, info.step.errors) == ("b", {}, ())
            w.done(second)
            assert task_id is not None
            result = await engine.wait_task(task_id)
    assert result.errors == ()
    assert result.steps[0].answered == {"w": "done"}


async def test_a_subscriber_removed_during_the_step_is_no_longer_waited_for(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=100))) as engine:
        engine.subscribe("gone", "work")
        engine.subscribe("leaving", "work")
        engine.subscribe("leaving", "other")
        task_id = engine.start_workflow("wf").task_id
        assert task_id is not None
        await trio.sleep(3)
        engine.remove_subscriber("gone")
        await trio.sleep(3)
        engine.unsubscribe("leaving", "work")
        result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert result.duration == pytest.approx(6.0)
    assert result.errors == ()


async def test_a_subscriber_added_during_the_step_is_not_waited_for(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=10))) as engine:
        engine.subscribe("first", "work", timeout=10)
        async with engine.open_listener(subscriber_id="first") as first:
            task_id = engine.start_workflow("wf").task_id
            action = await first.receive()
            engine.subscribe("late", "work", timeout=1000)
            await trio.sleep(1)
            assert engine.tasks()[0].step.waiting_for == ("first",)  # type: ignore[union-attr]
            first.done(action)  # type: ignore[arg-type]
            assert task_id is not None
            result = await engine.wait_task(task_id)
    assert result.duration == pytest.approx(1.0)


async def test_two_steps_of_the_same_message_type_are_awaited_separately(
    autojump_clock: trio.abc.Clock,
) -> None:
    from engine import PerformAction

    workflow = Workflow(
        id="wf",
        steps=[Step("first", PerformAction("collect")), Step("second", PerformAction("collect"))],
    )
    async with engine_with(workflow) as engine:
        engine.subscribe("w", "collect")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            first = await w.receive()
            assert isinstance(first, Action)
            w.done(first)
            second = await w.receive()
            assert isinstance(second, Action)
            assert (first.step, second.step) == ("first", "second")
            w.done(first)  # answers the first step again: changes nothing
            await trio.sleep(5)
            assert engine.tasks()[0].state == "second"
            w.done(second)
            assert task_id is not None
            result = await engine.wait_task(task_id)
    assert [s.answered for s in result.steps] == [{"w": "done"}, {"w": "done"}]


async def test_owed_actions_are_sent_again_when_the_subscriber_reconnects(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step()) as engine:
        engine.subscribe("w", "work")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            await w.receive()
        await trio.sleep(5)
        async with engine.open_listener(subscriber_id="w") as again:
            action = await again.receive()
            assert isinstance(action, Action)
            assert (action.task, action.step) == (task_id, "work")
            again.done(action)
            assert task_id is not None
            assert (await engine.wait_task(task_id)).outcome is Outcome.DONE


async def test_a_subscriber_has_at_most_one_listener() -> None:
    async with engine_with() as engine, engine.open_listener(subscriber_id="w"):
        with pytest.raises(ListenerError, match=r"^subscriber 'w' already has a listener$"):
            engine.connect(subscriber_id="w")


# ------------------------------------------------------------------ other step actions


async def test_emit_event_publishes_its_data_and_moves_on(autojump_clock: trio.abc.Clock) -> None:
    workflow = one_step(Step("notify", EmitEvent("collect_done", {"cloud": "aws"})))
    async with (
        engine_with(workflow) as engine,
        engine.open_listener(message_types=["collect_done"]) as watch,
    ):
        result = await engine.run_workflow("wf")
        seen = drain(watch)
    assert result.outcome is Outcome.DONE
    assert [e.data for e in events(seen)] == [{"cloud": "aws", "workflow": "wf", "task": result.id}]


async def test_wait_for_event_counts_only_matching_events_during_the_step(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(
        id="wf",
        steps=[
            Step("before", timeout=10),
            Step("wait", WaitForEvent("ready", {"cloud": {"name": "aws"}}), timeout=100),
        ],
    )
    async with engine_with(workflow) as engine:
        engine.subscribe("w", "before")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            action = await w.receive()
            engine.publish(Event("ready", {"cloud": {"name": "aws"}}))  # too early
            w.done(action)  # type: ignore[arg-type]
            await trio.sleep(5)
            engine.publish(Event("ready", {"cloud": {"name": "gcp"}}))  # does not match
            engine.publish(Event("other", {"cloud": {"name": "aws"}}))
            await trio.sleep(5)
            assert engine.tasks()[0].state == "wait"
            engine.publish(Event("ready", {"cloud": {"name": "aws", "region": "x"}}))
            assert task_id is not None
            result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert result.steps[1].duration == pytest.approx(10.0)


async def test_wait_for_event_times_out(autojump_clock: trio.abc.Clock) -> None:
    workflow = one_step(Step("wait", WaitForEvent("never"), timeout=7, on_error=OnError.STOP))
    async with engine_with(workflow) as engine:
        result = await engine.run_workflow("wf")
    assert result.outcome is Outcome.FAILED
    assert result.error == "step 'wait' timed out waiting for event 'never'"
    assert result.duration == pytest.approx(7.0)


async def test_execute_command_runs_a_subprocess() -> None:
    ok = one_step(
        Step(
            "run", ExecuteCommand((sys.executable, "-c", "pass")), timeout=30, on_error=OnError.STOP
        ),
        id="ok",
    )
    failing = one_step(
        Step(
            "run",
            ExecuteCommand((sys.executable, "-c", "import sys; sys.exit('bad input')")),
            timeout=30,
            on_error=OnError.STOP,
        ),
        id="failing",
    )
    missing = one_step(
        Step("run", ExecuteCommand(("/no/such/program",)), on_error=OnError.STOP), id="missing"
    )
    async with open_engine(workflows=[ok, failing, missing]) as engine:
        assert (await engine.run_workflow("ok")).outcome is Outcome.DONE
        result = await engine.run_workflow("failing")
        assert result.outcome is Outcome.FAILED
        assert result.error == f"command {sys.executable!r} exited with status 1: bad input"
        result = await engine.run_workflow("missing")
        assert result.outcome is Outcome.FAILED
        assert result.error is not None
        assert result.error.startswith("FileNotFoundError: ")


async def test_execute_command_is_killed_at_its_timeout() -> None:
    workflow = one_step(
        Step(
            "run",
            ExecuteCommand((sys.executable, "-c", "import time; time.sleep(60)")),
            timeout=0.5,
            on_error=OnError.STOP,
        )
    )
    async with open_engine(workflows=[workflow]) as engine:
        start = time.monotonic()
        result = await engine.run_workflow("wf")
        assert time.monotonic() - start < 10
    assert result.outcome is Outcome.FAILED
    assert result.error == "step 'run' timed out: the command was cancelled"


async def test_execute_command_runs_a_registered_callable(autojump_clock: trio.abc.Clock) -> None:
    calls: list[CommandContext] = []

    async def report(context: CommandContext) -> None:
        calls.append(context)
        await trio.sleep(2)

    async def broken(context: CommandContext) -> None:
        raise RuntimeError("disk full")

    workflows = [
        one_step(Step("run", ExecuteCommand(callable="report")), id="good"),
        one_step(Step("run", ExecuteCommand(callable="broken")), id="bad"),
    ]
    async with open_engine(
        start_time=START, commands={"report": report, "broken": broken}
    ) as engine:
        for workflow in workflows:
            engine.add_workflow(workflow)
        result = await engine.run_workflow("good")
        assert result.outcome is Outcome.DONE
        assert result.duration == pytest.approx(2.0)
        assert (calls[0].task_id, calls[0].workflow, calls[0].step) == (result.id, "good", "run")
        result = await engine.run_workflow("bad")
        assert result.outcome is Outcome.DONE  # on error continue
        assert result.errors == ("RuntimeError: disk full",)


async def test_a_workflow_naming_an_unregistered_command_is_rejected_whole() -> None:
    workflow = one_step(Step("run", ExecuteCommand(callable="os.system")))
    async with open_engine() as engine:
        with pytest.raises(
            DeclarationError,
            match=(r"^wf: steps\[0\]\.action\.callable: no command is registered as 'os\.system'$"),
        ):
            engine.add_workflow(workflow)
        assert engine.workflows == {}
        with pytest.raises(UnknownWorkflowError, match=r"^unknown workflow 'wf'$"):
            engine.start_workflow("wf")


# ------------------------------------------------------------------ surpass


@pytest.mark.parametrize("surpass", list(Surpass))
async def test_surpass_behaviours(surpass: Surpass, autojump_clock: trio.abc.Clock) -> None:
    workflow = one_step(Step("work", timeout=10), surpass=surpass)
    async with engine_with(workflow) as engine:
        engine.subscribe("w", "work", timeout=10)
        async with engine.open_listener(subscriber_id="w") as w:
            first = engine.start_workflow("wf")
            await trio.sleep(1)
            second = engine.start_workflow("wf")
            third = engine.start_workflow("wf")
            assert first.task_id is not None
            first_result = await engine.wait_task(first.task_id)
            seen = drain(w)
            while engine.tasks():
                await trio.sleep(1)
    if surpass is Surpass.SKIP:
        assert (second.decision, third.decision) == (StartDecision.SKIPPED, StartDecision.SKIPPED)
        assert first_result.outcome is Outcome.DONE
    elif surpass is Surpass.PARALLEL:
        assert (second.decision, third.decision) == (StartDecision.STARTED, StartDecision.STARTED)
        assert len({first.task_id, second.task_id, third.task_id}) == 3
    elif surpass is Surpass.WAIT:
        assert second.decision is StartDecision.QUEUED
        assert third.decision is StartDecision.SKIPPED
        assert second.task_id is not None
        second_result = await engine.wait_task(second.task_id)
        assert second_result.started_at == first_result.ended_at
    else:
        assert second.decision is StartDecision.STARTED
        assert second.replaced == (first.task_id,)
        assert third.replaced == (second.task_id,)
        assert first_result.outcome is Outcome.REPLACED
        assert first_result.error == f"replaced by task {second.task_id}"
        assert first_result.duration == pytest.approx(1.0)
        aborts = [m for m in seen if isinstance(m, ActionAbort)]
        # the second run was replaced before it sent its action: nobody owed it anything
        assert [a.task for a in aborts] == [first.task_id]


# ------------------------------------------------------------------ stop


async def test_stop_aborts_owed_listeners_and_ends_the_task_as_stopped(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step()) as engine, engine.open_listener() as watch:
        engine.subscribe("w", "work")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            await w.receive()
            await trio.sleep(2)
            assert engine.stop_task(task_id) is True
            assert engine.stop_task(task_id) is False
            result = await engine.wait_task(task_id)
            abort = await w.receive()
        seen = drain(watch)
        assert engine.stop_task(task_id) is False
        with pytest.raises(UnknownTaskError, match=r"^unknown task 'nope'$"):
            engine.stop_task("nope")
    assert isinstance(abort, ActionAbort)
    assert result.outcome is Outcome.STOPPED
    assert result.duration == pytest.approx(2.0)
    assert events(seen, "task_end")[0].data["outcome"] == "stopped"


async def test_stopping_a_queued_run_ends_it_without_starting(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=10))) as engine:
        engine.subscribe("w", "work", timeout=10)
        engine.start_workflow("wf")
        queued = engine.start_workflow("wf")
        assert queued.decision is StartDecision.QUEUED
        assert queued.task_id is not None
        assert engine.stop_task(queued.task_id) is True
        result = await engine.wait_task(queued.task_id)
        assert result.outcome is Outcome.STOPPED
        assert result.steps == ()
        await trio.sleep(20)
        assert engine.tasks() == []


# ------------------------------------------------------------------ triggers


async def test_a_day_of_the_hourly_schedule_runs_24_times(autojump_clock: trio.abc.Clock) -> None:
    started = time.monotonic()
    async with (
        engine_with(COLLECT_AND_CLEANUP) as engine,
        engine.open_listener(message_types=["task_end"]) as ends,
    ):
        assert engine.next_run("collect_and_cleanup") == START.replace(hour=1, minute=0, second=0)
        await trio.sleep(24 * 3600)
        finished = drain(ends)
    assert len(finished) == 24
    assert {e.data["outcome"] for e in finished} == {"done"}
    assert time.monotonic() - started < 1.0


async def test_cron_schedules_follow_their_time_zone(autojump_clock: trio.abc.Clock) -> None:
    workflow = one_step(triggers=[CronTrigger("0 9 * * *", "America/New_York")])
    async with (
        engine_with(workflow) as engine,
        engine.open_listener(message_types=["task_started"]) as watch,
    ):
        await trio.sleep(2 * 24 * 3600)
        starts = [datetime.fromisoformat(e.data["started_at"]) for e in events(drain(watch))]
    # 9:00 in New York in March 2026, before the DST change on the 8th: 14:00 UTC
    assert [s.isoformat() for s in starts] == [
        "2026-03-02T14:00:00+00:00",
        "2026-03-03T14:00:00+00:00",
    ]


async def test_event_triggers_match_filters_and_every_workflow_has_a_start_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = one_step(
        triggers=[EventTrigger("post_collect", {"cloud": "aws"})], surpass=Surpass.PARALLEL
    )
    async with (
        engine_with(workflow) as engine,
        engine.open_listener(message_types=["task_started"]) as watch,
    ):
        engine.publish(Event("post_collect", {"cloud": "gcp"}))
        engine.publish(Event("post_collect", {"cloud": "aws", "account": "1"}))
        engine.publish(Event("start_wf_workflow"))
        await trio.sleep(1)
        assert len(events(drain(watch))) == 2


async def test_jobs_run_on_their_triggers(autojump_clock: trio.abc.Clock) -> None:
    ran: list[str] = []

    async def record(context: CommandContext) -> None:
        ran.append(context.task_id)

    job = Job(
        id="after_collect",
        callable="record",
        triggers=[EventTrigger("task_end", {"workflow": "collect"})],
        wait_for=WaitForEvent("ready"),
        wait_timeout=30,
    )
    from machines import COLLECT

    async with open_engine(
        workflows=[COLLECT], jobs=[job], commands={"record": record}, start_time=START
    ) as engine:
        assert engine.is_job("after_collect")
        await engine.run_workflow("collect")
        await trio.sleep(1)
        assert ran == []
        (task,) = engine.tasks()
        assert task.state == "wait"
        engine.publish(Event("ready"))
        await trio.sleep(1)
        assert len(ran) == 1
        assert engine.tasks() == []


# ------------------------------------------------------------------ listeners and events


async def test_in_process_handlers_answer_done_on_return_and_error_on_exception(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(id="wf", steps=[Step("good"), Step("bad")])

    async def handler(message: Message) -> None:
        if isinstance(message, Action) and message.step == "bad":
            raise ValueError("quota exceeded")

    async with engine_with(workflow) as engine:
        engine.subscribe("h", "good")
        engine.subscribe("h", "bad")
        await engine.start_listener(handler, subscriber_id="h")
        result = await engine.run_workflow("wf")
    assert [s.answered for s in result.steps] == [{"h": "done"}, {"h": "error"}]
    assert result.errors == ("h: ValueError: quota exceeded",)


async def test_listener_connected_and_disconnected_events() -> None:
    async with (
        engine_with() as engine,
        engine.open_listener(message_types=[LISTENER_CONNECTED, LISTENER_DISCONNECTED]) as watch,
    ):
        engine.subscribe("w", "collect")
        async with engine.open_listener(subscriber_id="w"):
            pass
        seen = [(e.message_type, e.data) for e in events(drain(watch))]
    assert seen == [
        (LISTENER_CONNECTED, {"subscriber_id": "w", "channels": ["collect"]}),
        (LISTENER_DISCONNECTED, {"subscriber_id": "w", "channels": ["collect"]}),
    ]


async def test_a_slow_listener_is_dropped_without_slowing_anyone(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        engine_with(one_step(), listener_buffer=5) as engine,
        engine.open_listener() as slow,
        engine.open_listener(buffer=1000) as fast,
    ):
        for index in range(6):
            engine.publish(Event("tick", {"n": index}))
        assert engine.dropped_listeners == 1
        assert slow.dropped == "too slow"
        kept = [m.data.get("n") for m in drain_until_dropped(slow) if isinstance(m, Event)]
        assert kept == [None, 0, 1, 2, 3]  # the fast listener's connection, then ticks
        with pytest.raises(ListenerDropped, match=r"^listener '.*' was dropped: too slow$"):
            await slow.receive()
        assert (await engine.run_workflow("wf")).outcome is Outcome.DONE
        seen = drain(fast)
        assert len(events(seen, "tick")) == 6
        assert [e.data["subscriber_id"] for e in events(seen, LISTENER_DISCONNECTED)] == [slow.id]


@pytest.mark.parametrize("count", [10, 200])
async def test_listeners_dropped_together_are_each_counted_once(count: int) -> None:
    async with engine_with(one_step(), listener_buffer=5) as engine:
        async with engine.open_listener(buffer=100_000) as fast:
            slow = [engine.connect(message_types=["tick"]) for _ in range(count)]
            for index in range(6):
                engine.publish(Event("tick", {"n": index}))
            assert engine.dropped_listeners == count
            assert all(listener.dropped == "too slow" for listener in slow)
            gone = [e.data["subscriber_id"] for e in events(drain(fast), LISTENER_DISCONNECTED)]
            assert sorted(gone) == sorted(listener.id for listener in slow)
            assert engine.drop_listener(slow[0], "asked twice") is False
            assert engine.dropped_listeners == count


def drain_until_dropped(listener: Listener) -> list[Message]:
    messages: list[Message] = []
    while True:
        try:
            messages.append(listener.receive_nowait())
        except ListenerDropped:
            return messages


async def test_listener_progress_is_published_rate_limited(autojump_clock: trio.abc.Clock) -> None:
    async with engine_with(one_step(Step("work", timeout=100)), progress_interval=1.0) as engine:
        engine.subscribe("w", "work")
        async with (
            engine.open_listener(message_types=["progress"]) as watch,
            engine.open_listener(subscriber_id="w") as w,
        ):
            task_id = engine.start_workflow("wf").task_id
            action = await w.receive()
            assert isinstance(action, Action)
            await trio.sleep(5)
            drain(watch)
            for current in range(1, 11):
                w.progress(action, ProgressLeaf("eu-west-1", current, 10, path=("aws", "123")))
                await trio.sleep(0.1)
            await trio.sleep(2)
            published = events(drain(watch))
            assert engine.tasks()[0].step.progress["w"] == ProgressLeaf(
                "eu-west-1", 10, 10, ("aws", "123")
            )  # type: ignore[union-attr]
            w.done(action)
            assert task_id is not None
            await engine.wait_task(task_id)
    # the first at once, then at most one a second, the last one trailing
    assert len(published) == 2
    last = published[-1].data["message"]["parts"][0]
    assert last == {
        "kind": "tree",
        "name": "work",
        "parts": [
            {
                "kind": "progress",
                "name": "eu-west-1",
                "path": ["aws", "123"],
                "current": 10,
                "total": 10,
            }
        ],
    }


async def test_error_events_for_action_errors_and_error_infos(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        engine_with(one_step()) as engine,
        engine.open_listener(message_types=["error"]) as watch,
    ):
        engine.subscribe("w", "work")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            action = await w.receive()
            assert isinstance(action, Action)
            w.info(action, "[aws:123] Access Denied", level="error")
            w.info(action, "collected 10 resources")
            w.error(action, "gave up")
            assert task_id is not None
            await engine.wait_task(task_id)
        messages = [(e.data["subscriber_id"], e.data["message"]) for e in events(drain(watch))]
    assert messages == [("w", "[aws:123] Access Denied"), ("w", "gave up")]


# ------------------------------------------------------------------ bad input


async def test_bad_calls_get_specific_errors_and_leave_nothing_behind() -> None:
    workflow = one_step()
    async with engine_with(workflow) as engine:
        with pytest.raises(
            DeclarationError, match=r"^wf: id: a workflow or job 'wf' is already registered$"
        ):
            engine.add_workflow(one_step(Step("other")))
        assert engine.workflows["wf"].steps[0].name == "work"
        with pytest.raises(PhasebusError, match=r"^only the engine sends action messages$"):
            engine.publish(Action("work", "t", "work"))
        with pytest.raises(PhasebusError, match=r"^timeout: must be > 0, got -1$"):
            engine.subscribe("w", "work", timeout=-1)
        assert engine.subscribers.get("w") is None
        with pytest.raises(UnknownTaskError):
            await engine.wait_task("nope")
        engine.add_workflow(one_step(Step("other")), replace=True)
        assert engine.workflows["wf"].steps[0].name == "other"
        engine.remove_workflow("wf")
        with pytest.raises(UnknownWorkflowError):
            engine.remove_workflow("wf")


async def test_messages_from_other_subscribers_cannot_answer_for_a_listener() -> None:
    async with engine_with() as engine, engine.open_listener() as anonymous:
        with pytest.raises(
            ListenerError, match=r"^listener '.*' has no subscriber id and cannot answer actions$"
        ):
            anonymous.done(Action("work", "t", "work"))


async def test_observers_see_every_message_first(autojump_clock: trio.abc.Clock) -> None:
    seen: list[str] = []
    async with engine_with(one_step()) as engine:
        remove = engine.add_observer(lambda message: seen.append(message.message_type))
        await engine.run_workflow("wf")
        remove()
        await engine.run_workflow("wf")
    assert seen == ["task_started", "work", "progress", "progress", "task_end"]


async def test_a_step_whose_listeners_stay_silent_is_reported_stalled(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=100)), stall_fraction=0.3) as engine:
        engine.subscribe("talkative", "work", timeout=100)
        engine.subscribe("mute", "work", timeout=100)
        async with (
            engine.open_listener(message_types=["error"]) as errors,
            engine.open_listener(subscriber_id="talkative") as talkative,
        ):
            task_id = engine.start_workflow("wf").task_id
            action = await talkative.receive()
            assert isinstance(action, Action)
            await trio.sleep(20)
            talkative.progress(action, ProgressLeaf("region", 1, 5))
            await trio.sleep(20)  # 40 s in: someone was heard 20 s ago, not stalled
            info = engine.tasks()[0].step
            assert info is not None
            assert not info.stalled
            assert info.last_heard == {"talkative": START + timedelta(seconds=20)}
            assert drain(errors) == []
            await trio.sleep(15)  # 30 s of silence
            info = engine.tasks()[0].step
            assert info is not None
            assert info.stalled
            (error,) = events(drain(errors))
            assert error.data["message"] == (
                "step 'work' stalled: nothing heard from mute, talkative for 30s (deadline in 50s)"
            )
            assert task_id is not None
            engine.stop_task(task_id)


async def test_observers_can_ask_for_some_messages_only(autojump_clock: trio.abc.Clock) -> None:
    seen: list[str] = []
    async with engine_with(one_step()) as engine:
        engine.add_observer(lambda m: seen.append(m.message_type), message_types=["task_end"])
        engine.add_observer(lambda m: seen.append(m.kind.value), kinds=[Kind.ACTION])
        await engine.run_workflow("wf")
    assert seen == ["action", "task_end"]


# ------------------------------------------------------------------ regressions


async def test_a_subscription_timeout_is_bounded() -> None:
    async with engine_with() as engine:
        with pytest.raises(
            PhasebusError,
            match=r"^timeout: must be at most 1000000000 seconds, got 1000000000000\.0$",
        ):
            engine.subscribe("w", "work", timeout=1e12)


async def test_each_command_step_is_killed_at_its_own_deadline(tmp_path: object) -> None:
    import subprocess
    import uuid

    marker = f"phasebus-test-{uuid.uuid4().hex}"
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)", marker)
    workflow = Workflow(
        id="wf",
        steps=[
            Step("one", ExecuteCommand(sleeper), timeout=0.3),
            Step("two", ExecuteCommand(sleeper), timeout=0.3),
        ],
    )
    async with open_engine(workflows=[workflow]) as engine:
        result = await engine.run_workflow("wf")
    assert [s.timed_out for s in result.steps] == [True, True]
    with trio.fail_after(5):
        while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
            await trio.sleep(0.05)


async def test_a_stop_asked_while_the_driver_acts_is_not_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=600)), stall_fraction=None) as engine:
        engine.subscribe("w", "work", timeout=600)

        def stop_at_once(message: Message) -> None:
            engine.stop_task(message.task)  # type: ignore[union-attr]

        engine.add_observer(stop_at_once, kinds=[Kind.ACTION])
        result = await engine.run_workflow("wf")
    assert result.outcome is Outcome.STOPPED
    assert result.duration == 0


async def test_removing_a_workflow_stops_its_queued_run(autojump_clock: trio.abc.Clock) -> None:
    async with engine_with(one_step(Step("work", timeout=10))) as engine:
        engine.subscribe("w", "work", timeout=10)
        engine.start_workflow("wf")
        queued = engine.start_workflow("wf").task_id
        assert queued is not None
        engine.remove_workflow("wf")
        result = await engine.wait_task(queued)
    assert result.outcome is Outcome.STOPPED
    assert result.error == "workflow 'wf' was removed"


async def test_listener_events_start_workflows_like_any_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = one_step(triggers=[EventTrigger(LISTENER_CONNECTED, {"subscriber_id": "w"})])
    async with (
        engine_with(workflow) as engine,
        engine.open_listener(message_types=["task_end"]) as ends,
    ):
        engine.subscribe("w", "other")
        async with engine.open_listener(subscriber_id="w"):
            await trio.sleep(1)
        assert len(drain(ends)) == 1


async def test_only_the_engine_publishes_its_own_events() -> None:
    async with engine_with() as engine:
        for message_type in ("task_end", "progress", LISTENER_DISCONNECTED, "config-updated"):
            with pytest.raises(
                PhasebusError, match=rf"^only the engine publishes '{message_type}' events$"
            ):
                engine.publish(Event(message_type, {}))


async def test_a_step_begun_by_an_answer_keeps_its_own_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The answer to "a" moves the task on at once, while its driver sleeps with a
    # timer set for a's deadline (100 s); b's deadline (5 s) must still hold.
    workflow = Workflow(id="wf", steps=[Step("a", timeout=100), Step("b", timeout=5)])
    async with engine_with(workflow, stall_fraction=None) as engine:
        engine.subscribe("quick", "a", timeout=1)
        engine.subscribe("silent", "b", timeout=1)
        async with engine.open_listener(subscriber_id="quick") as quick:
            task_id = engine.start_workflow("wf").task_id
            await trio.sleep(2)
            action = await quick.receive()
            assert isinstance(action, Action)
            quick.done(action)
            assert engine.tasks()[0].state == "b"  # moved on within the answer
            assert task_id is not None
            result = await engine.wait_task(task_id)
    assert result.steps[1].timed_out
    assert result.steps[1].duration == pytest.approx(5.0)
    assert result.duration == pytest.approx(7.0)


async def next_action(listener: Listener) -> Action:
    while True:
        message = await listener.receive()
        if isinstance(message, Action):
            return message


async def test_each_step_says_how_it_ended(autojump_clock: trio.abc.Clock) -> None:
    workflow = Workflow(
        id="wf",
        steps=[
            Step("clean", timeout=10),
            Step("failing", timeout=10),
            Step("slow", timeout=10),
            Step("left", timeout=10),
            Step("stopped", timeout=100),
        ],
    )
    async with engine_with(workflow) as engine:
        for message_type in ("clean", "failing", "slow", "left", "stopped"):
            engine.subscribe("w", message_type)
        engine.subscribe("gone", "left")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            w.done(await next_action(w))  # clean
            w.error(await next_action(w), "no quota")  # failing
            await next_action(w)  # slow: never answered, times out
            w.done(await next_action(w))  # left
            info = engine.task(task_id)
            assert isinstance(info, TaskInfo)
            assert info.step is not None
            assert info.step.waiting_for == ("gone",)
            engine.remove_subscriber("gone")  # the step is released from waiting for it
            await next_action(w)  # stopped
            engine.stop_task(task_id, reason="enough")
            result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.STOPPED
    assert [(step.name, step.ended) for step in result.steps] == [
        ("clean", StepEnd.DONE),
        ("failing", StepEnd.ERROR),
        ("slow", StepEnd.TIMED_OUT),
        ("left", StepEnd.RELEASED),
        ("stopped", StepEnd.STOPPED),
    ]
    assert result.steps[3].released == ("gone",)
    assert result.steps[3].answered == {"w": "done"}
    assert result.has_errors


async def test_a_clean_run_has_no_errors(autojump_clock: trio.abc.Clock) -> None:
    async with engine_with(one_step()) as engine:
        engine.subscribe("w", "work")
        async with engine.open_listener(subscriber_id="w") as w:
            task_id = engine.start_workflow("wf").task_id
            assert task_id is not None
            w.done(await w.receive())
            result = await engine.wait_task(task_id)
    assert result.steps[0].ended is StepEnd.DONE
    assert not result.has_errors
    assert engine.history(has_errors=True) == []
    assert [r.id for r in engine.history(has_errors=False)] == [task_id]


async def test_a_queued_run_starts_after_its_workflow_was_replaced(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with engine_with(one_step(Step("work", timeout=100))) as engine:
        engine.subscribe("w", "work")
        async with engine.open_listener(subscriber_id="w") as w:
            first = engine.start_workflow("wf")
            queued = engine.start_workflow("wf")
            assert queued.decision is StartDecision.QUEUED
            engine.add_workflow(one_step(Step("work", timeout=50)), replace=True)
            w.done(await next_action(w))  # the first run ends on its old definition
            assert (await engine.wait_task(first.task_id)).outcome is Outcome.DONE  # type: ignore[arg-type]
            w.done(await next_action(w))  # the queued run started, on the new one
            with trio.fail_after(5):
                result = await engine.wait_task(queued.task_id)  # type: ignore[arg-type]
    assert result.outcome is Outcome.DONE
