"""The workflow machine on its own: no trio, times passed as numbers."""

from __future__ import annotations

import pytest

from engine import (
    EmitEvent,
    ExecuteCommand,
    OnError,
    Outcome,
    PerformAction,
    ProgressLeaf,
    Step,
    WaitForEvent,
    Workflow,
)
from engine._machine import (
    Answer,
    StepRun,
    Task,
    WorkflowMachine,
    describe_state,
    machine_spec,
)

COLLECT = Workflow(
    "collect",
    [Step("pre_collect"), Step("collect"), Step("post_collect", on_error=OnError.STOP)],
)


def started(machine: WorkflowMachine, task_id: str = "t1", now: float = 0.0) -> Task:
    """Return a new task of ``machine`` that entered its first step at ``now``."""
    task = machine.new_task(task_id, now=now)
    assert machine.advance(task, now=now)
    return task


def step_of(task: Task) -> StepRun:
    """Return the task's current step run."""
    assert task.step is not None
    return task.step


def finish_step(machine: WorkflowMachine, task: Task, now: float) -> None:
    """Begin the current step with nobody to wait for and move on."""
    step_of(task).begin(deadline=now + 10)
    assert machine.advance(task, now=now)


# ---------------------------------------------------------------- starting and moving on


def test_a_new_task_starts_in_start_and_advance_enters_the_first_step() -> None:
    machine = WorkflowMachine(COLLECT)
    task = machine.new_task("t1", now=5.0)

    assert (task.state, task.step, task.created_at) == ("start", None, 5.0)
    assert machine.advance(task, now=6.0)

    step = step_of(task)
    assert task.state == "pre_collect"
    assert (step.step, step.index, step.entered_at, step.began) == (COLLECT.steps[0], 0, 6.0, False)
    assert task.history == [step]


def test_a_step_that_has_not_begun_does_not_move_on() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)

    assert not machine.may_advance(task)
    assert not machine.advance(task, now=1.0)
    assert task.state == "pre_collect"


def test_a_step_with_no_waiters_finishes_as_soon_as_it_begins() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)

    step.begin(deadline=10.0)

    assert step.is_finished()
    assert machine.advance(task, now=1.0)
    assert task.state == "collect"
    assert step.ended_at == 1.0
    assert step.errors == []


def test_an_emit_event_step_finishes_as_soon_as_it_begins() -> None:
    machine = WorkflowMachine(
        Workflow("w", [Step("announce", EmitEvent("collect_done")), Step("b")])
    )
    task = started(machine)

    step_of(task).begin(deadline=10.0, waiting_for=frozenset({"w1"}))

    assert machine.advance(task, now=1.0)
    assert task.state == "b"


def test_a_step_waits_for_every_subscriber_then_moves_on() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))

    assert step.record_answer("worker", Answer.DONE)
    assert step.waiting_for == {"metrics"}
    assert not machine.advance(task, now=1.0)
    assert task.state == "pre_collect"

    assert step.record_answer("metrics", Answer.DONE)
    assert machine.advance(task, now=2.0)
    assert task.state == "collect"
    assert step.answers == {"worker": Answer.DONE, "metrics": Answer.DONE}
    assert (step.deadline, step.ended_at, step.timed_out) == (10.0, 2.0, False)


def test_a_duplicate_answer_changes_nothing() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))
    step.record_answer("worker", Answer.DONE)

    assert not step.record_answer("worker", Answer.DONE)
    assert not step.record_answer("worker", Answer.ERROR, "late failure")
    assert step.answers == {"worker": Answer.DONE}
    assert step.errors == []
    assert step.waiting_for == {"metrics"}
    assert not machine.advance(task, now=1.0)


def test_an_answer_from_a_subscriber_not_waited_for_changes_nothing() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker"}))

    assert not step.record_answer("stranger", Answer.DONE)
    assert not step.record_answer("stranger", Answer.ERROR, "boom")
    assert step.answers == {}
    assert step.errors == []
    assert step.waiting_for == {"worker"}
    assert not machine.advance(task, now=1.0)


def test_an_answer_to_a_step_that_ended_changes_nothing() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    first = step_of(task)
    first.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))
    first.record_answer("worker", Answer.DONE)
    first.record_deadline()
    assert machine.advance(task, now=10.0)

    assert not first.record_answer("metrics", Answer.DONE)
    assert not first.record_progress("metrics", ProgressLeaf("n", 1, 2))
    assert not first.forget_subscriber("metrics")
    assert first.answers == {"worker": Answer.DONE}
    assert task.state == "collect"


def test_forgetting_a_subscriber_that_went_away_unblocks_the_step() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))
    step.record_answer("worker", Answer.DONE)

    assert step.forget_subscriber("metrics")
    assert not step.forget_subscriber("metrics")
    assert not step.forget_subscriber("worker")
    assert machine.advance(task, now=1.0)
    assert task.state == "collect"
    assert step.answers == {"worker": Answer.DONE}
    assert step.errors == []


def test_progress_counts_only_from_subscribers_the_step_waited_for() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))
    half = ProgressLeaf("eu-west-1", 1, 2)
    whole = ProgressLeaf("eu-west-1", 2, 2)

    assert step.record_progress("worker", half)
    assert step.record_answer("worker", Answer.DONE)
    assert step.record_progress("worker", whole)
    assert not step.record_progress("stranger", half)
    assert step.progress == {"worker": whole}


# ---------------------------------------------------------------- errors and deadlines


def test_a_deadline_under_continue_moves_on_with_an_error() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))

    step.record_deadline()

    assert step.timed_out
    assert step.errors == ["step 'pre_collect' timed out waiting for metrics, worker"]
    assert machine.advance(task, now=10.0)
    assert task.state == "collect"
    assert task.errors == ["step 'pre_collect' timed out waiting for metrics, worker"]
    assert task.outcome is None


def test_a_deadline_under_stop_ends_the_task_as_failed_with_the_error() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    finish_step(machine, task, 1.0)
    finish_step(machine, task, 2.0)
    step = step_of(task)
    step.begin(deadline=12.0, waiting_for=frozenset({"worker"}))

    step.record_deadline()

    assert machine.advance(task, now=12.0)
    assert task.state == "end"
    assert task.is_ended
    assert task.outcome is Outcome.FAILED
    assert task.error == "step 'post_collect' timed out waiting for worker"
    assert task.ended_at == 12.0
    assert step.ended_at == 12.0


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (WaitForEvent("report_ready"), "step 'a' timed out waiting for event 'report_ready'"),
        (ExecuteCommand(["sleep", "100"]), "step 'a' timed out: the command was cancelled"),
        (ExecuteCommand(callable="slow"), "step 'a' timed out: the command was cancelled"),
    ],
)
def test_a_deadline_says_what_the_step_waited_for(action: object, error: str) -> None:
    machine = WorkflowMachine(Workflow("w", [Step("a", action), Step("b")]))  # type: ignore[arg-type]
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0)

    step.record_deadline()

    assert step.errors == [error]
    assert machine.advance(task, now=10.0)
    assert task.state == "b"


def test_a_deadline_after_the_step_finished_changes_nothing() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker"}))
    step.record_answer("worker", Answer.DONE)

    step.record_deadline()

    assert not step.timed_out
    assert step.errors == []


def test_an_action_error_under_stop_ends_the_task_at_once() -> None:
    machine = WorkflowMachine(Workflow("w", [Step("collect", on_error=OnError.STOP), Step("b")]))
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))

    assert step.record_answer("worker", Answer.ERROR, "disk full")

    assert machine.may_advance(task)
    assert machine.advance(task, now=3.0)
    assert task.state == "end"
    assert task.outcome is Outcome.FAILED
    assert task.error == "worker: disk full"
    assert step.waiting_for == {"metrics"}  # still owed: the engine aborts it
    assert step.ended_at == 3.0


def test_an_action_error_under_continue_waits_for_the_others_then_moves_on() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=10.0, waiting_for=frozenset({"worker", "metrics"}))

    step.record_answer("worker", Answer.ERROR)

    assert not machine.may_advance(task)  # under continue an error alone does not move it
    assert not machine.advance(task, now=1.0)
    assert task.state == "pre_collect"
    step.record_answer("metrics", Answer.DONE)
    assert machine.advance(task, now=2.0)
    assert task.state == "collect"
    assert step.answers == {"worker": Answer.ERROR, "metrics": Answer.DONE}
    assert task.errors == ["worker: n/a"]


def test_a_wait_for_event_step_waits_until_the_event_arrives() -> None:
    machine = WorkflowMachine(
        Workflow("w", [Step("await", WaitForEvent("report_ready")), Step("b")])
    )
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=60.0)

    assert not step.is_finished()
    assert not machine.advance(task, now=1.0)
    step.record_finished()
    assert machine.advance(task, now=2.0)
    assert task.state == "b"
    assert step.errors == []


def test_a_failed_command_under_continue_moves_on_with_its_error() -> None:
    machine = WorkflowMachine(Workflow("w", [Step("archive", ExecuteCommand(["tar"])), Step("b")]))
    task = started(machine)
    step = step_of(task)
    step.begin(deadline=60.0)

    step.record_finished("command 'tar' exited with status 2")
    step.record_finished("reported twice")

    assert machine.advance(task, now=2.0)
    assert task.state == "b"
    assert task.errors == ["command 'tar' exited with status 2"]


def test_a_failed_command_under_stop_fails_the_task_with_its_error() -> None:
    step = Step("archive", ExecuteCommand(callable="archive"), on_error=OnError.STOP)
    machine = WorkflowMachine(Workflow("w", [step, Step("b")]))
    task = started(machine)
    step_of(task).begin(deadline=60.0)

    step_of(task).record_finished("OSError: no space left on device")

    assert machine.advance(task, now=2.0)
    assert task.outcome is Outcome.FAILED
    assert task.error == "OSError: no space left on device"


def test_a_task_whose_last_step_finishes_is_done() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    for now in (1.0, 2.0, 3.0):
        finish_step(machine, task, now)

    assert task.state == "end"
    assert task.outcome is Outcome.DONE
    assert task.error is None
    assert task.ended_at == 3.0
    assert [run.step.name for run in task.history] == ["pre_collect", "collect", "post_collect"]
    assert not machine.advance(task, now=4.0)


def test_errors_under_continue_do_not_fail_the_task() -> None:
    machine = WorkflowMachine(Workflow("w", [Step("a"), Step("b")]))
    task = started(machine)
    for now in (1.0, 2.0):
        step_of(task).begin(deadline=now, waiting_for=frozenset({"worker"}))
        step_of(task).record_answer("worker", Answer.ERROR, f"failed at {now:g}")
        assert machine.advance(task, now=now)

    assert task.outcome is Outcome.DONE
    assert task.error is None
    assert task.errors == ["worker: failed at 1", "worker: failed at 2"]


# ---------------------------------------------------------------- stopping


@pytest.mark.parametrize("steps_done", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("replaced", "outcome"), [(False, Outcome.STOPPED), (True, Outcome.REPLACED)]
)
def test_stop_ends_the_task_from_any_state(
    steps_done: int, replaced: bool, outcome: Outcome
) -> None:
    machine = WorkflowMachine(COLLECT)
    task = machine.new_task("t1", now=0.0)
    if steps_done:
        assert machine.advance(task, now=0.0)
        for now in range(1, steps_done):
            finish_step(machine, task, float(now))
        step_of(task).begin(deadline=100.0, waiting_for=frozenset({"worker"}))
    state = task.state
    current = task.step

    assert machine.stop(task, now=50.0, replaced=replaced)

    assert state == ["start", "pre_collect", "collect", "post_collect"][steps_done]
    assert task.state == "end"
    assert task.outcome is outcome
    assert task.error == outcome.value
    assert task.ended_at == 50.0
    if current is not None:
        assert current.ended_at == 50.0


def test_stop_gives_its_reason_as_the_error() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)

    assert machine.stop(task, now=1.0, reason="stopped by admin")
    assert (task.outcome, task.error) == (Outcome.STOPPED, "stopped by admin")


def test_a_task_that_ended_cannot_be_stopped_or_moved() -> None:
    machine = WorkflowMachine(COLLECT)
    task = started(machine)
    step_of(task).begin(deadline=10.0, waiting_for=frozenset({"worker"}))
    assert machine.stop(task, now=1.0)

    assert not machine.stop(task, now=2.0, replaced=True)
    assert not machine.advance(task, now=2.0)
    assert (task.outcome, task.error, task.ended_at) == (Outcome.STOPPED, "stopped", 1.0)


# ---------------------------------------------------------------- states


def test_two_steps_with_the_same_message_type_are_separate_states() -> None:
    workflow = Workflow(
        "w",
        [
            Step("first_collect", PerformAction("collect")),
            Step("second_collect", PerformAction("collect")),
        ],
    )
    machine = WorkflowMachine(workflow)
    task = started(machine)
    first = step_of(task)
    first.begin(deadline=10.0, waiting_for=frozenset({"worker"}))
    first.record_answer("worker", Answer.DONE)
    assert machine.advance(task, now=1.0)

    second = step_of(task)
    second.begin(deadline=20.0, waiting_for=frozenset({"worker"}))

    assert task.state == "second_collect"
    assert second is not first
    assert second.waiting_for == {"worker"}
    assert not first.record_answer("worker", Answer.DONE)
    assert not machine.advance(task, now=2.0)
    assert second.record_answer("worker", Answer.DONE)
    assert machine.advance(task, now=3.0)
    assert task.outcome is Outcome.DONE


def test_one_machine_drives_a_thousand_tasks_independently() -> None:
    machine = WorkflowMachine(COLLECT)
    tasks = [started(machine, f"t{i}", now=float(i)) for i in range(1000)]
    late, early = tasks[:500], tasks[500:]
    names = ["pre_collect", "collect", "post_collect", "end"]
    for index in range(3):
        for task in tasks:
            step_of(task).begin(deadline=1e6, waiting_for=frozenset({f"worker-{task.id}"}))
        for task in early:
            assert step_of(task).record_answer(f"worker-{task.id}", Answer.DONE)
            assert machine.advance(task, now=1000.0 + index)

        assert {task.state for task in early} == {names[index + 1]}
        assert {task.state for task in late} == {names[index]}
        assert not any(machine.advance(task, now=1000.0 + index) for task in late)

        for task in late:
            assert step_of(task).record_answer(f"worker-{task.id}", Answer.DONE)
            assert machine.advance(task, now=1000.0 + index)

    assert all(task.outcome is Outcome.DONE for task in tasks)
    assert all([run.step.name for run in task.history] == names[:3] for task in tasks)
    assert len({id(run) for task in tasks for run in task.history}) == 3000
    assert [task.history[0].entered_at for task in tasks[:3]] == [0.0, 1.0, 2.0]


def test_machine_spec_lists_states_and_transitions_for_diagrams() -> None:
    states, transitions = machine_spec(COLLECT)

    assert [state.name for state in states] == [
        "start",
        "pre_collect",
        "collect",
        "post_collect",
        "end",
    ]
    assert [(t.trigger, t.source, t.dest, t.label) for t in transitions] == [
        ("advance", "start", "pre_collect", "start"),
        ("advance", "pre_collect", "collect", "done or error: continue"),
        ("advance", "collect", "post_collect", "done or error: continue"),
        ("advance", "post_collect", "end", "error: stop"),
        ("advance", "post_collect", "end", "done"),
        ("stop", "start", "end", "stop"),
        ("stop", "pre_collect", "end", "stop"),
        ("stop", "collect", "end", "stop"),
        ("stop", "post_collect", "end", "stop"),
        ("replace", "start", "end", "replace"),
        ("replace", "pre_collect", "end", "replace"),
        ("replace", "collect", "end", "replace"),
        ("replace", "post_collect", "end", "replace"),
        ("fail", "start", "end", "fail"),
        ("fail", "pre_collect", "end", "fail"),
        ("fail", "collect", "end", "fail"),
        ("fail", "post_collect", "end", "fail"),
    ]


@pytest.mark.parametrize(
    ("step", "text"),
    [
        (Step("collect"), "perform action collect, timeout 10s, on error continue"),
        (
            Step("announce", EmitEvent("collect_done"), timeout=2.5),
            "emit event collect_done, timeout 2.5s, on error continue",
        ),
        (
            Step("await", WaitForEvent("report_ready"), timeout=600, on_error=OnError.STOP),
            "wait for event report_ready, timeout 600s, on error stop",
        ),
        (
            Step("archive", ExecuteCommand(["tar", "-c", "/data"])),
            "execute tar -c /data, timeout 10s, on error continue",
        ),
        (
            Step("mail", ExecuteCommand(callable="send_mail")),
            "execute send_mail(), timeout 10s, on error continue",
        ),
    ],
)
def test_describe_state_says_what_a_step_does(step: Step, text: str) -> None:
    assert describe_state(step) == text
