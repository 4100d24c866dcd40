"""The testing kit: scripted listeners, the recorder and the fixtures."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio

from engine import Engine, OnError, Outcome, Step, Workflow
from engine.testing import (
    Disconnect,
    Done,
    Fail,
    ReportProgress,
    Silent,
    Twice,
    open_test_engine,
    record,
    scripted_listener,
)
from machines import COLLECT_AND_CLEANUP

TWO_STEPS = Workflow(id="wf", steps=[Step("collect", timeout=5), Step("cleanup", timeout=5)])


async def test_the_fixture_engine_runs_on_virtual_time(
    phasebus_engine: Engine, autojump_clock: trio.abc.Clock
) -> None:
    phasebus_engine.add_workflow(COLLECT_AND_CLEANUP)
    await scripted_listener(
        phasebus_engine, "collector", ["collect", "cleanup"], Done(after=600), timeout=900
    )
    recorder = record(phasebus_engine)
    result = await phasebus_engine.run_workflow("collect_and_cleanup")
    assert result.outcome is Outcome.DONE
    assert result.duration == 1200
    assert result.started_at.isoformat() == "2026-01-01T00:00:00+00:00"
    recorder.assert_order(
        result.id,
        [
            "task_started",
            "action:collect",
            "action_done:collect",
            "action:cleanup",
            "action_done:cleanup",
            "task_end",
        ],
    )


class TestAnotherStartTime:
    @pytest.fixture
    def phasebus_start_time(self) -> datetime:
        return datetime(2030, 6, 1, tzinfo=UTC)

    async def test_the_start_time_fixture_can_be_overridden(
        self, phasebus_engine: Engine, autojump_clock: trio.abc.Clock
    ) -> None:
        assert phasebus_engine.clock.now().isoformat() == "2030-06-01T00:00:00+00:00"


async def test_scripted_behaviours(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_engine(workflows=[TWO_STEPS]) as engine:
        recorder = record(engine)
        failing = await scripted_listener(
            engine, "failing", ["collect"], Fail("no access", after=1)
        )
        silent = await scripted_listener(engine, "silent", ["cleanup"], Silent(), timeout=3)
        result = await engine.run_workflow("wf")
    assert [s.answered for s in result.steps] == [{"failing": "error"}, {}]
    assert result.errors == ("failing: no access", "step 'cleanup' timed out waiting for silent")
    assert result.duration == 6
    assert [answer for _, answer in failing.answered] == ["error"]
    assert silent.answered == []
    assert [
        describe for describe in recorder.sequence(result.id) if describe.startswith("action")
    ] == [
        "action:collect",
        "action_error:collect",
        "action:cleanup",
        "action_abort:cleanup",  # the deadline passed: the silent listener is told
    ]


async def test_progress_then_done_and_a_double_answer(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_engine(workflows=[TWO_STEPS], progress_interval=0) as engine:
        recorder = record(engine)
        await scripted_listener(
            engine,
            "w",
            ["collect", "cleanup"],
            {"collect": ReportProgress(parts=4, every=0.5), "cleanup": Twice()},
        )
        result = await engine.run_workflow("wf")
    assert result.outcome is Outcome.DONE
    assert result.errors == ()
    sequence = recorder.sequence(result.id)
    assert sequence.count("action_progress:collect") == 4
    assert sequence.count("action_done:cleanup") == 2  # the duplicate changes nothing
    progress = [e.data for e in recorder.events("progress") if e.data["step"] == "collect"]
    assert progress[-1]["message"]["parts"][0]["parts"][0]["current"] == 4


async def test_a_listener_that_disconnects_mid_step_is_sent_the_action_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    workflow = Workflow(id="wf", steps=[Step("collect", timeout=100, on_error=OnError.STOP)])
    async with open_test_engine(workflows=[workflow]) as engine:
        flaky = await scripted_listener(engine, "w", ["collect"], Disconnect(after=2))
        task_id = engine.start_workflow("wf").task_id
        assert task_id is not None
        await trio.sleep(5)
        assert flaky.disconnected
        assert engine.tasks()[0].step.waiting_for == ("w",)  # type: ignore[union-attr]
        again = await scripted_listener(engine, "w", ["collect"], Done(after=1))
        result = await engine.wait_task(task_id)
    assert result.outcome is Outcome.DONE
    assert result.duration == 6
    assert [a.step for a, _ in again.answered] == ["collect"]


async def test_assert_order_names_what_is_missing(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_engine(workflows=[TWO_STEPS]) as engine:
        recorder = record(engine)
        result = await engine.run_workflow("wf")
        recorder.close()
        await engine.run_workflow("wf")
    recorder.assert_order(result.id, ["task_started", "action:collect", "task_end"])
    with pytest.raises(
        AssertionError,
        match=r"^expected 'action:collect' after position 4 of the task's messages, which were: "
        r"\['task_started', 'action:collect', 'progress', 'action:cleanup'",
    ):
        recorder.assert_order(result.id, ["action:cleanup", "action:collect"])
    assert len(recorder.events("task_end")) == 1
