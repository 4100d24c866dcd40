from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import trio
from rich.console import Console

from engine import (
    Action,
    ActionDone,
    ActionProgress,
    Event,
    Outcome,
    ProgressLeaf,
    Step,
    StepInfo,
    TaskInfo,
    Workflow,
    open_engine,
)
from engine._demo import (
    CLEANUP_PLANNER,
    COLLECTOR,
    CORE,
    HOOKS,
    METRICS_EXPORTER,
    demo_listeners,
    serve_demo,
)
from engine._view import render_task, task_fraction
from machines import BUILTIN_WORKFLOWS, PHASES

MAIN = BUILTIN_WORKFLOWS["collect_and_cleanup"]

EXPECTED_ANSWERS = {
    "collect": COLLECTOR,
    "cleanup": COLLECTOR,
    "cleanup_plan": CLEANUP_PLANNER,
    "generate_metrics": METRICS_EXPORTER,
    "merge_outer_edges": CORE,
}


def test_every_action_of_the_main_workflow_has_one_simulated_listener() -> None:
    listeners = demo_listeners(MAIN)
    owners: dict[str, list[str]] = {}
    for listener in listeners:
        for message_type in listener.work:
            owners.setdefault(message_type, []).append(listener.subscriber_id)
    owners.setdefault("merge_outer_edges", []).append(CORE)
    steps = [step for steps in PHASES.values() for step in steps]
    assert sorted(owners) == sorted(steps)
    for step in steps:
        assert owners[step] == [EXPECTED_ANSWERS.get(step, HOOKS)]


def test_hooks_cover_the_actions_of_user_workflows() -> None:
    workflow = Workflow("deploy", (Step("build"), Step("collect"), Step("ship")))
    hooks = {d.subscriber_id: sorted(d.work) for d in demo_listeners(workflow)}[HOOKS]
    assert hooks == ["build", "ship"]


async def test_a_full_demo_run_takes_a_few_seconds_and_every_step_is_answered(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_engine(workflows=[MAIN]) as engine:
        async with trio.open_nursery() as nursery, engine.open_listener() as monitor:
            await nursery.start(serve_demo, engine, MAIN)
            started = trio.current_time()
            task_id = engine.start_workflow(MAIN.id).task_id
            assert task_id is not None
            answers: dict[str, str] = {}
            progress: list[ActionProgress] = []
            async for message in monitor:
                if isinstance(message, ActionDone):
                    answers[message.step] = message.subscriber_id or ""
                elif isinstance(message, ActionProgress):
                    progress.append(message)
                elif isinstance(message, Event) and message.message_type == "task_end":
                    break
            took = trio.current_time() - started
            result = await engine.wait_task(task_id)
            nursery.cancel_scope.cancel()
    assert result.outcome is Outcome.DONE
    assert result.errors == ()
    steps = [step for steps in PHASES.values() for step in steps]
    assert answers == {step: EXPECTED_ANSWERS.get(step, HOOKS) for step in steps}
    assert 1.5 < took < 6, f"a demo run should take a few seconds, took {took:.2f}"
    collected = [p for p in progress if p.step == "collect"]
    final = collected[-1].progress
    leaves = [leaf for account in final.parts for leaf in account.parts]  # type: ignore[union-attr]
    assert [(leaf.path, leaf.name, leaf.current) for leaf in leaves][:2] == [
        (("aws", "123456789012"), "us-east-1", 1),
        (("aws", "123456789012"), "eu-west-1", 1),
    ]
    assert final.fraction == 1.0
    assert {p.step for p in progress} == {"collect", "cleanup", "generate_metrics"}


async def test_an_abort_stops_the_collectors_work(autojump_clock: trio.abc.Clock) -> None:
    async with open_engine(workflows=[MAIN]) as engine:
        async with trio.open_nursery() as nursery, engine.open_listener() as monitor:
            await nursery.start(serve_demo, engine, MAIN)
            task_id = engine.start_workflow(MAIN.id).task_id
            assert task_id is not None
            async for message in monitor:
                if isinstance(message, Action) and message.step == "collect":
                    break
            await trio.sleep(0.3)
            assert engine.stop_task(task_id, reason="enough")
            result = await engine.wait_task(task_id)
            await trio.sleep(5)  # long enough for the collector to have finished
            late = []
            while True:
                try:
                    message = monitor.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(message, ActionDone | ActionProgress) and message.step == "collect":
                    late.append(message)
            nursery.cancel_scope.cancel()
    assert result.outcome is Outcome.STOPPED
    assert [m for m in late if isinstance(m, ActionDone)] == []


async def test_the_demo_unsubscribes_when_it_stops(autojump_clock: trio.abc.Clock) -> None:
    async with open_engine(workflows=[MAIN]) as engine:
        async with trio.open_nursery() as nursery:
            ids = await nursery.start(serve_demo, engine, MAIN)
            assert ids == [CLEANUP_PLANNER, COLLECTOR, CORE, HOOKS, METRICS_EXPORTER]
            assert engine.subscribers.get(COLLECTOR) is not None
            nursery.cancel_scope.cancel()
        for subscriber_id in ids:
            assert engine.subscribers.get(subscriber_id) is None


# ---------------------------------------------------------------- the live panel


def _info(**step: object) -> TaskInfo:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    fields: dict[str, object] = {
        "name": "collect",
        "action": "perform_action",
        "message_type": "collect",
        "started_at": now,
        "deadline": now + timedelta(seconds=42),
        "waiting_for": ("demo.collector",),
        "answered": {},
        "progress": {},
        "errors": (),
    }
    fields.update(step)
    return TaskInfo("0123456789abcdef", MAIN.id, MAIN.name, "collect", now, StepInfo(**fields))  # type: ignore[arg-type]


def _text(info: TaskInfo) -> str:
    console = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    console.print(render_task(MAIN, info, info.started_at + timedelta(seconds=2)))
    return " ".join(console.export_text().split())  # without the layout's spacing


def test_the_panel_shows_phase_step_waits_deadline_and_progress() -> None:
    progress = {"demo.collector": ProgressLeaf("us-east-1", 1, 2, path=("aws", "123"))}
    text = _text(_info(progress=progress))
    assert "phasebus collect_and_cleanup task 01234567" in text
    assert "│ phase collect (1 of 4) │" in text
    assert "│ step collect (2 of 13, perform_action, deadline in 40s) │" in text
    assert "│ waiting for demo.collector │" in text
    assert "│ answered — │" in text
    assert "│ aws/123/us-east-1 ━━━━━━━━━━━━━━━ 1/2 │" in text
    assert "│ demo.collector ━━━━━━━━━━━━━━━ 50% │" in text


def test_the_panel_shows_answers_and_errors() -> None:
    text = _text(
        _info(
            waiting_for=(),
            answered={"demo.collector": "error", "demo.other": "done"},
            errors=("demo.collector: access denied",),
        )
    )
    assert "│ waiting for nobody │" in text
    assert "│ answered demo.collector error, demo.other done │" in text
    assert "│ error demo.collector: access denied │" in text


def test_task_fraction_counts_finished_steps_and_the_current_steps_progress() -> None:
    half = {"a": ProgressLeaf("x", 1, 2)}
    assert task_fraction(MAIN, _info()) == 1 / 13
    assert task_fraction(MAIN, _info(progress=half)) == 1.5 / 13
