"""A task's JSON: store records and API views, written and read by the one converter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import trio

from engine import (
    InvalidInputError,
    Outcome,
    ProgressLeaf,
    Step,
    StepEnd,
    StepInfo,
    StepResult,
    TaskInfo,
    TaskResult,
    Workflow,
)
from engine._cli_remote import task_from_json
from engine._clock import Clock
from engine._errors import RestoreError
from engine._machine import Answer, StepRun, Task
from engine._records import finished_record, restore_task, task_record
from engine._web import task_json

FLOW = Workflow(id="flow", steps=(Step("first"), Step("second"), Step("third")))
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def running_task() -> Task:
    """Return a task in its second step, with times on trio's clock from now."""
    now = trio.current_time()
    task = Task("t-1", FLOW, created_at=now)
    first = StepRun(FLOW.steps[0], 0, entered_at=now)
    first.begin(deadline=now + 10, waiting_for=frozenset({"a", "b"}))
    first.record_answer("a", Answer.DONE)
    first.record_answer("b", Answer.ERROR, "disk full")
    first.ended_at = now + 2
    second = StepRun(FLOW.steps[1], 1, entered_at=now + 2)
    second.begin(deadline=now + 12, waiting_for=frozenset({"a", "c"}))
    second.record_answer("a", Answer.DONE)
    task.history += [first, second]
    task.step, task.state = second, "second"
    return task


async def test_a_running_task_is_written_and_read_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = Clock(START)
    record = orjson.loads(task_record(running_task(), clock))
    assert record == {
        "id": "t-1",
        "workflow": "flow",
        "created_at": START.timestamp(),
        "state": "second",
        "steps": [
            {
                "name": "first",
                "index": 0,
                "entered_at": START.timestamp(),
                "answers": {"a": "done", "b": "error"},
                "errors": ["b: disk full"],
                "timed_out": False,
                "released": [],
                "stopped": False,
                "ended_at": START.timestamp() + 2,
            },
            {
                "name": "second",
                "index": 1,
                "entered_at": START.timestamp() + 2,
                "answers": {"a": "done"},
                "errors": [],
                "timed_out": False,
                "released": [],
                "stopped": False,
                "ended_at": None,
                "began": True,
                "deadline": START.timestamp() + 12,
                "waiting_for": ["c"],
                "owed_at_start": ["a", "c"],
                "finished": False,
            },
        ],
    }
    task = restore_task(record, FLOW, clock)
    assert task_record(task, clock) == task_record(running_task(), clock)
    assert task.step is task.history[-1]
    assert task.step.waiting_for == {"c"}


async def test_the_cache_of_ended_steps_writes_the_same_bytes(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = Clock(START)
    cache: list[orjson.Fragment] = []
    task = running_task()
    assert task_record(task, clock, cache) == task_record(task, clock)
    assert len(cache) == 1
    assert task_record(task, clock, cache) == task_record(task, clock)


async def test_a_record_of_an_older_version_and_extra_keys_load(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = Clock(START)
    record = {
        "id": "t-1",
        "workflow": "flow",
        "created_at": START.timestamp(),
        "state": "first",
        "written_by": "a later version",
        "steps": [
            {
                "name": "first",
                "index": 0,
                "entered_at": START.timestamp(),
                "answers": {},
                "errors": [],
                "timed_out": False,
                "ended_at": None,
                "deadline": START.timestamp() + 5,
                "waiting_for": ["a"],
                "owed_at_start": ["a"],
                "finished": False,
            }
        ],
    }
    task = restore_task(record, FLOW, clock)
    run = task.history[0]
    assert (run.released, run.stopped, run.began, run.waiting_for) == ((), False, True, {"a"})
    assert run.deadline == pytest.approx(trio.current_time() + 5, abs=1e-3)


async def test_an_unreadable_record_is_a_restore_error_naming_the_field(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = Clock(START)
    record = orjson.loads(task_record(running_task(), clock))
    record["steps"][1]["timed_out"] = "no"
    with pytest.raises(
        RestoreError, match=r"^unreadable task record: steps\[1\]\.timed_out: must be true or false"
    ):
        restore_task(record, FLOW, clock)
    del record["created_at"]
    with pytest.raises(RestoreError, match=r"created_at: required field missing"):
        restore_task(record, FLOW, clock)


async def test_a_finished_record_and_a_results_record_read_back_alike(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = Clock(START)
    task = running_task()
    now = trio.current_time()
    task.history[-1].ended_at = now + 3
    task.history[-1].stopped = True
    task.ended_at, task.outcome, task.state = now + 3, Outcome.STOPPED, "end"
    written = orjson.loads(finished_record(task, clock))
    assert written["outcome"] == "stopped"
    assert written["has_errors"] is True
    result = TaskResult.from_record(written)
    assert result.outcome is Outcome.STOPPED
    assert [step.ended for step in result.steps] == [StepEnd.ERROR, StepEnd.STOPPED]
    assert TaskResult.from_record(result.to_record()) == result
    # a result record as older versions wrote it: steps without index, released or stopped
    old = {
        "id": "t-2",
        "workflow": "flow",
        "outcome": "done",
        "error": None,
        "errors": [],
        "started_at": START.timestamp(),
        "ended_at": START.timestamp() + 1,
        "steps": [
            {
                "name": "first",
                "entered_at": START.timestamp(),
                "ended_at": START.timestamp() + 1,
                "answers": {"a": "done"},
                "errors": [],
                "timed_out": False,
            }
        ],
    }
    loaded = TaskResult.from_record(old)
    assert loaded.steps[0].answered == {"a": "done"}
    assert loaded.steps[0].ended is StepEnd.DONE
    assert loaded.duration == 1.0
    with pytest.raises(RestoreError, match=r"outcome: must be one of 'done'"):
        TaskResult.from_record({**old, "outcome": "fine"})


# ---------------------------------------------------------------- views


def _finished_step() -> StepResult:
    return StepResult(
        "first",
        START,
        START + timedelta(seconds=1.5),
        {"a": "done", "b": "error"},
        ("b: disk full",),
        False,
        ("c",),
        False,
    )


def test_a_finished_task_s_view_is_exact_and_reads_back() -> None:
    result = TaskResult(
        "t-1",
        "flow",
        Outcome.DONE,
        None,
        ("b: disk full",),
        START,
        START + timedelta(seconds=2),
        (_finished_step(),),
    )
    view = task_json(result)
    assert json.dumps(view, separators=(",", ":")) == (
        '{"id":"t-1","workflow":"flow","running":false,"state":"end","outcome":"done",'
        '"has_errors":true,"error":null,"errors":["b: disk full"],'
        '"started_at":"2026-03-01T12:00:00+00:00","ended_at":"2026-03-01T12:00:02+00:00",'
        '"duration":2.0,"steps":[{"name":"first","started_at":"2026-03-01T12:00:00+00:00",'
        '"ended_at":"2026-03-01T12:00:01.500000+00:00","duration":1.5,'
        '"answered":{"a":"done","b":"error"},"errors":["b: disk full"],"timed_out":false,'
        '"released":["c"],"ended":"error"}]}'
    )
    assert task_from_json(view) == result


def test_a_running_task_s_view_is_exact_and_reads_back() -> None:
    step = StepInfo(
        name="second",
        action="perform_action",
        message_type="second",
        started_at=START,
        deadline=None,
        waiting_for=("a",),
        answered={"b": "done"},
        progress={"a": ProgressLeaf("region", 1, 2)},
        errors=(),
        last_heard={"a": START},
        stalled=True,
    )
    info = TaskInfo("t-1", "flow", "Flow", "second", START, step, (_finished_step(),))
    view = task_json(info)
    assert json.dumps(view, separators=(",", ":")) == (
        '{"id":"t-1","workflow":"flow","workflow_name":"Flow","running":true,"state":"second",'
        '"started_at":"2026-03-01T12:00:00+00:00","step":{"name":"second",'
        '"action":"perform_action","message_type":"second",'
        '"started_at":"2026-03-01T12:00:00+00:00","deadline":null,"waiting_for":["a"],'
        '"answered":{"b":"done"},"progress":{"a":'
        + json.dumps(ProgressLeaf("region", 1, 2).to_json(), separators=(",", ":"))
        + '},"errors":[],"last_heard":{"a":"2026-03-01T12:00:00+00:00"},"stalled":true,'
        '"released":[]},"steps":[{"name":"first","started_at":"2026-03-01T12:00:00+00:00",'
        '"ended_at":"2026-03-01T12:00:01.500000+00:00","duration":1.5,'
        '"answered":{"a":"done","b":"error"},"errors":["b: disk full"],"timed_out":false,'
        '"released":["c"],"ended":"error"}]}'
    )
    assert task_from_json(view) == info


def test_a_view_that_is_not_a_task_is_refused_by_field() -> None:
    with pytest.raises(InvalidInputError, match=r"^outcome: must be one of 'done'"):
        task_from_json({"id": "t", "workflow": "w", "outcome": "great", "steps": []})
