"""Workflows and jobs defined, changed, paused and deleted while the engine runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import (
    CronTrigger,
    DeclarationError,
    Event,
    EventTrigger,
    Job,
    SQLiteStore,
    Step,
    Workflow,
    open_engine,
)
from engine._errors import DefinitionConflict
from engine._registry import BUILTIN, RUNTIME
from engine._tasklog import LogKind
from engine.testing import Done, Silent, scripted_listener
from machines import METRICS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def marker_job(job_id: str, path: Path, **fields: Any) -> Job:
    return Job(
        job_id,
        command=["sh", "-c", f"echo ran >> {path}"],
        triggers=[EventTrigger("task_end", {"workflow": "metrics"})],
        **fields,
    )


async def wait_runs(path: Path, count: int) -> None:
    with trio.fail_after(10):
        while runs(path) < count:
            await trio.sleep(0.01)


def runs(path: Path) -> int:
    return path.read_text().count("ran") if path.exists() else 0


async def test_a_job_added_at_run_time_reacts_at_once_and_deactivated_does_not(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    async with open_engine(workflows=[METRICS], start_time=T0) as engine:
        seen: list[Event] = []
        engine.add_observer(seen.append, message_types=["job-updated", "job-deleted"])
        definition, created = engine.definitions.put(marker_job("after_metrics", marker))
        assert created
        assert definition.origin == RUNTIME
        assert definition.kind == "job"
        result = await engine.run_workflow("metrics")
        assert result.outcome.value == "done"
        with trio.fail_after(10):
            while runs(marker) < 1:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        assert runs(marker) == 1

        engine.definitions.set_active("job", "after_metrics", False)
        assert engine.definitions.get("after_metrics").active is False
        assert engine.job("after_metrics").active is False  # type: ignore[union-attr]
        await engine.run_workflow("metrics")
        await trio.sleep(0.5)
        assert runs(marker) == 1
        # on demand, an inactive job still runs
        await engine.run_workflow("after_metrics")
        assert runs(marker) == 2

        engine.definitions.delete("job", "after_metrics")
        assert "after_metrics" not in engine.workflows
        assert [(e.message_type, e.data["id"]) for e in seen] == [
            ("job-updated", "after_metrics"),
            ("job-updated", "after_metrics"),
            ("job-deleted", "after_metrics"),
        ]


async def test_definitions_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    marker = tmp_path / "marker"
    store = SQLiteStore(path)
    async with open_engine(workflows=[METRICS], store=store) as engine:
        engine.definitions.put(marker_job("after_metrics", marker))
        engine.definitions.put(Workflow("nightly", [Step("export")]))
        engine.definitions.set_active("workflow", "nightly", False)
        changed = Workflow("metrics", [Step("generate_metrics", timeout=5)])
        engine.definitions.put(changed)
        await engine.run_workflow("metrics")
        await wait_runs(marker, 1)
    store.close()

    store = SQLiteStore(path)
    async with open_engine(workflows=[METRICS], store=store) as engine:
        assert engine.definitions.get("after_metrics").origin == RUNTIME
        assert engine.definitions.get("nightly").active is False
        metrics = engine.definitions.get("metrics")
        assert metrics.origin == BUILTIN
        assert metrics.declaration == changed
        actions: list[dict[str, Any]] = []
        engine.add_observer(
            lambda m: actions.append(m.to_json()["data"]), message_types=["generate_metrics"]
        )
        await engine.run_workflow("metrics")
        # the run before the restart is the previous run
        assert set(actions[0]["timing"]) == {"generate_metrics"}
        await wait_runs(marker, 2)
    store.close()


async def test_origins_decide_what_may_change(tmp_path: Path) -> None:
    flows = Workflow("from_file", [Step("a")])
    async with open_engine(
        workflows=[METRICS, flows], sources={"from_file": "flows/nightly.toml"}
    ) as engine:
        with pytest.raises(DefinitionConflict, match=r"declared in flows/nightly\.toml"):
            engine.definitions.put(Workflow("from_file", [Step("b")]))
        with pytest.raises(DefinitionConflict, match=r"declared in flows/nightly\.toml"):
            engine.definitions.set_active("workflow", "from_file", False)
        with pytest.raises(DefinitionConflict, match=r"^workflow 'metrics' is built in"):
            engine.definitions.delete("workflow", "metrics")
        with pytest.raises(DefinitionConflict, match=r"^'metrics' is a workflow, not a job"):
            engine.definitions.delete("job", "metrics")
        # a command nobody registered: refused, nothing applied
        with pytest.raises(DeclarationError, match="no command is registered as 'nope'"):
            engine.definitions.put(Job("j", callable="nope"))
        assert "j" not in engine.workflows


async def test_parse_lists_every_problem_and_checks_the_id() -> None:
    async with open_engine() as engine:
        with pytest.raises(DeclarationError) as raised:
            engine.definitions.parse(
                "job", "j", {"id": "other", "command": "ls", "timeout": -1, "colour": 1}
            )
        assert sorted(str(p) for p in raised.value.problems) == [
            "colour: unknown field",
            "command: must be a list, got 'ls'",
            "id: must be 'j' as in the path, got 'other'",
            "timeout: must be > 0, got -1",
        ]
        job = engine.definitions.parse("job", "j", {"command": ["true"]})
        assert job == Job("j", command=["true"])


async def test_deactivated_schedules_stop_and_resume(autojump_clock: trio.abc.Clock) -> None:
    hourly = Workflow("hourly", [Step("a", timeout=1)], triggers=[CronTrigger("0 * * * *")])
    async with open_engine(workflows=[hourly], start_time=T0) as engine:
        engine.definitions.set_active("workflow", "hourly", False)
        assert engine.next_run("hourly") is None
        await trio.sleep(2 * 3600)
        assert engine.history(workflow="hourly") == []
        engine.definitions.set_active("workflow", "hourly", True)
        await trio.sleep(3600 + 5)
        assert len(engine.history(workflow="hourly")) == 1
        # the start event is a trigger too
        engine.definitions.set_active("workflow", "hourly", False)
        engine.publish(Event("start_hourly_workflow", {}))
        assert engine.tasks() == []


async def test_a_running_task_finishes_on_its_definition(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_engine(workflows=[Workflow("w", [Step("a"), Step("b")])]) as engine:
        await scripted_listener(engine, "l", ["a", "b", "c"], Done(after=5))
        started = engine.start_workflow("w")
        await trio.sleep(1)
        engine.definitions.put(Workflow("w", [Step("c")]))
        result = await engine.wait_task(started.task_id or "")
        assert [s.name for s in result.steps] == ["a", "b"]
        again = await engine.run_workflow("w")
        assert [s.name for s in again.steps] == ["c"]


async def test_actions_carry_the_previous_runs_timing(autojump_clock: trio.abc.Clock) -> None:
    async with open_engine(workflows=[Workflow("w", [Step("a"), Step("b")])], start_time=T0) as e:
        actions: list[dict[str, Any]] = []
        e.add_observer(lambda m: actions.append(m.to_json()["data"]), message_types=["a", "b"])
        await scripted_listener(e, "l", ["a", "b"], Done(after=3))
        first = await e.run_workflow("w")
        await e.run_workflow("w")
    sent = [d for d in actions if "timing" in d and d.get("task") != first.id]
    start = int(first.started_at.timestamp())
    assert sent[0]["timing"] == {
        "a": {"started_at": start, "finished_at": start + 3},
        "b": {"started_at": start + 3, "finished_at": start + 6},
    }
    assert next(d["timing"] for d in actions if d.get("task") == first.id) == {}


async def test_the_task_log_keeps_infos_errors_and_timeouts(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    workflow = Workflow("w", [Step("a", timeout=5), Step("b", timeout=5)])
    async with open_engine(workflows=[workflow], store=store) as engine:
        engine.subscribe("quiet", "b", timeout=1)

        async def talk(message: Any) -> None:
            engine.publish(_info(message, "found 3 volumes"))

        engine.subscribe("talker", "a")
        await engine.start_listener(talk, subscriber_id="talker")
        result = await engine.run_workflow("w")
        entries = engine.log.entries(result.id)
    assert [(e.kind, e.step, e.subscriber, e.message) for e in entries] == [
        (LogKind.INFO, "a", "talker", "found 3 volumes"),
        (
            LogKind.STALLED,
            "b",
            None,
            "step 'b' stalled: nothing heard from quiet for 2.5s (deadline in 2.5s)",
        ),
        (LogKind.TIMEOUT, "b", None, "step 'b' timed out waiting for quiet"),
    ]
    store.close()


def _info(action: Any, text: str) -> Any:
    from engine import ActionInfo

    return ActionInfo(
        action.message_type, action.task, action.step, subscriber_id="talker", message=text
    )


async def test_the_task_log_is_bounded_and_cuts_long_messages() -> None:
    from engine._tasklog import TaskLog

    log = TaskLog(lambda: T0, None, limit=3)
    for number in range(5):
        log.add("t", LogKind.INFO, f"m{number}")
    log.add("t", LogKind.INFO, "x" * 2100)
    assert [e.message for e in log.entries("t")][:2] == ["m3", "m4"]
    assert log.entries("t")[-1].message == "x" * 2000 + " [cut: 100 more characters]"


async def test_the_testing_kit_reads_the_task_log(autojump_clock: trio.abc.Clock) -> None:
    from engine.testing import Fail, Report, open_test_engine, task_log

    workflow = Workflow("w", [Step("a"), Step("b", timeout=5)])
    async with open_test_engine(workflows=[workflow]) as engine:
        await scripted_listener(engine, "talker", ["a"], Report("3 regions", "warn"))
        await scripted_listener(engine, "failer", ["a"], Fail("quota exceeded"))
        leaver = await scripted_listener(engine, "leaver", ["b"], Silent())
        started = engine.start_workflow("w")
        await trio.sleep(1)
        engine.remove_subscriber("leaver")
        leaver.stop()
        result = await engine.wait_task(started.task_id or "")
        assert task_log(engine, result.id) == [
            "info(warn) a talker: 3 regions",
            "error a failer: quota exceeded",
            "released b leaver: leaver went away: the step no longer waits for it",
        ]


async def test_a_failed_command_is_logged_with_the_tail_of_its_output() -> None:
    failing = Job("broken", command=["sh", "-c", "echo partial output; echo oops >&2; exit 3"])
    async with open_engine(jobs=[failing]) as engine:
        job = await engine.run_workflow("broken")
        (entry,) = engine.log.entries(job.id)
    assert entry.kind is LogKind.COMMAND_FAILED
    assert entry.step == "run"
    assert entry.message == (
        "command 'sh' exited with status 3: oops\n--- last output ---\npartial output\noops"
    )


async def test_task_ids_by_prefix_in_memory_and_in_the_store(tmp_path: Path) -> None:
    from engine._errors import TaskLookupError
    from engine._web_definitions import resolve_task_id

    store = SQLiteStore(tmp_path / "s.sqlite3")
    async with open_engine(workflows=[METRICS], store=store) as engine:
        first = await engine.run_workflow("metrics")
        second = await engine.run_workflow("metrics")
        assert await resolve_task_id(engine, first.id[:5]) in (first.id, second.id)
        assert await resolve_task_id(engine, first.id) == first.id
        with pytest.raises(TaskLookupError, match=r"^task id prefix '' is ambiguous: it matches "):
            await resolve_task_id(engine, "")
        with pytest.raises(TaskLookupError, match=r"^unknown task 'zz'$"):
            await resolve_task_id(engine, "zz")
    assert sorted(store.task_ids("", limit=5)) == sorted([first.id, second.id])
    assert store.task_ids(second.id[:6], limit=5)[0] == second.id
    assert store.task_ids("zz", limit=5) == []
    store.close()


async def test_engine_events_about_definitions_cannot_be_forged() -> None:
    from engine import PhasebusError

    async with open_engine() as engine:
        for event_type in ("workflow-updated", "workflow-deleted", "job-updated", "job-deleted"):
            with pytest.raises(PhasebusError, match=f"only the engine publishes '{event_type}'"):
                engine.publish(Event(event_type, {"id": "x"}))


def test_pruning_the_history_removes_the_logs(tmp_path: Path) -> None:
    import orjson

    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.finish_task("old", "w", "done", T0.timestamp(), T0.timestamp(), b'{"errors": []}')
    for number in range(5):
        store.add_log_entry("old", orjson.dumps({"n": number}), keep=3)
    assert [e["n"] for e in store.task_log("old")] == [2, 3, 4]
    assert store.prune(datetime(2026, 2, 1, tzinfo=UTC)) == 1
    assert store.task_log("old") == []
    store.close()


async def test_a_job_declared_inactive_starts_paused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with open_engine(workflows=[METRICS], jobs=[marker_job("j", marker, active=False)]) as e:
        assert e.definitions.get("j").active is False
        assert e.is_paused("j")
        await e.run_workflow("metrics")
        await trio.sleep(0.3)
        assert runs(marker) == 0
        e.definitions.set_active("job", "j", True)
        assert e.job("j") == marker_job("j", marker)
        await e.run_workflow("metrics")
        await wait_runs(marker, 1)


async def test_stored_definitions_yield_to_files_and_count_as_changes_of_built_ins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path)
    async with open_engine(store=store) as engine:
        engine.definitions.put(Workflow("nightly", [Step("export", timeout=7)]))
        engine.definitions.put(Workflow("weekly", [Step("export", timeout=7)]))
    store.close()
    store = SQLiteStore(path)
    program = Workflow("nightly", [Step("export")])
    from_file = Workflow("weekly", [Step("export")])
    async with open_engine(
        workflows=[program, from_file], store=store, sources={"weekly": "weekly.toml"}
    ) as engine:
        nightly = engine.definitions.get("nightly")
        assert (nightly.origin, nightly.declaration.steps[0].timeout) == (BUILTIN, 7)
        weekly = engine.definitions.get("weekly")
        assert (weekly.origin, weekly.declaration) == ("weekly.toml", from_file)
    store.close()


async def test_no_definition_changes_while_the_engine_stops() -> None:
    from engine import EngineClosed

    async with open_engine(workflows=[METRICS]) as engine:
        engine.freeze()
        with pytest.raises(EngineClosed, match=r"^the engine is stopping: workflow 'w' not added$"):
            engine.definitions.put(Workflow("w", [Step("a")]))
        with pytest.raises(EngineClosed, match="workflow 'metrics' not deactivated"):
            engine.definitions.set_active("workflow", "metrics", False)
        assert "w" not in engine.workflows
