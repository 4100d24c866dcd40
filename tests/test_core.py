"""The core's rules, without trio: facts go in with a time, intents come out.

No test here runs an event loop; each builds a :class:`Core`, feeds it facts
as the driver would, and reads the intents it appends.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from engine import (
    Action,
    ActionAbort,
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    EmitEvent,
    Event,
    EventTrigger,
    ExecuteCommand,
    ProgressLeaf,
    Step,
    SubscriberRegistry,
    WaitForEvent,
    Workflow,
)
from engine._admission import ask
from engine._clock import Clock
from engine._core import Core, StartDecision
from engine._errors import StoreError
from engine._intents import Admit as AdmitIntent
from engine._intents import (
    CancelCommand,
    Dequeued,
    Emit,
    Ended,
    Hold,
    Log,
    Publish,
    RunCommand,
    Stage,
    Start,
    Wake,
)
from engine._machine import Outcome
from engine._records import TaskResult
from engine._rules import Admit, admit, progress_event, stall_message, stalled_since
from engine._runs import Run
from engine._schedules import Schedules
from engine._store import FinishTask, SaveTask
from engine._subscribers import SubscriptionChange
from engine._tasklog import LogKind
from engine._workflows import WorkflowTable

pytestmark = pytest.mark.filterwarnings("error")

ENGINE = Path(__file__).resolve().parent.parent / "engine"

TWO_STEPS = Workflow(id="two", steps=[Step("first", timeout=10), Step("second", timeout=10)])


class Harness:
    """A core with its collaborators, and the driver's side played by hand."""

    def __init__(
        self,
        *workflows: Workflow,
        durable: bool = False,
        stall_fraction: float | None = None,
        progress_interval: float = 1.0,
        wanted: frozenset[str] = frozenset(),
    ) -> None:
        clock = Clock(datetime(2026, 1, 1, tzinfo=UTC), trio_now=0.0)
        self.kept: list[TaskResult] = []
        schedules = Schedules(
            clock=clock,
            nursery=cast("Any", None),  # no workflow here has a schedule
            fire=lambda workflow_id, reason: ("started", None),
            announce=lambda firing: None,
            save_mark=lambda key, moment: True,
        )
        self.table = WorkflowTable(
            schedules, has_command=lambda name: True, last_steps=lambda workflow_id: []
        )
        for workflow in workflows:
            self.table.add(workflow, job=None, replace=False)
        self.subscribers = SubscriberRegistry(self._changed)
        self.core = Core(
            workflows=self.table,
            subscribers=self.subscribers,
            clock=clock,
            keep=self.kept.append,
            wanted=wanted.__contains__,
            progress_interval=progress_interval,
            stall_fraction=stall_fraction,
        )
        self.core.durable = durable
        self.now = 0.0
        #: Whether take() tells the core that what a state caused was carried out.
        self.carry_out = True

    def _changed(self, change: SubscriptionChange) -> None:
        if change.removed:
            self.core.released(change.subscriber_id, change.removed, self.now)

    def take(self) -> list[Any]:
        """Return the intents made since the last call, carried out as far as the core hears
        of it: with ``carry_out``, each Hold is answered (the state's effects went out)."""
        taken: list[Any] = []
        while self.core.intents:
            intents, self.core.intents = self.core.intents, []
            taken += intents
            for intent in intents:
                if isinstance(intent, Hold) and self.carry_out:
                    self.core.committed(intent.run, self.now)
        return taken

    def start(self, workflow_id: str) -> tuple[str, list[Any]]:
        """Start a run and give it its first move, as the driver does; return its intents."""
        started = self.core.start(workflow_id, "test", self.now)
        assert started.task_id is not None
        (start,) = self.take()
        assert isinstance(start, Start)
        self.core.kick(start.run, self.now)
        return started.task_id, self.take()

    def run(self, task_id: str) -> Run:
        return self.core.running[task_id]

    def done(self, task_id: str, step: str, subscriber: str) -> list[Any]:
        self.core.answer(ActionDone(step, task_id, step, subscriber_id=subscriber), self.now)
        return self.take()


def published(intents: list[Any]) -> list[tuple[str, str]]:
    """Return (kind, message type) of each message the intents publish, in order."""
    out = []
    for intent in intents:
        if isinstance(intent, Publish):
            out.append((intent.message.kind.value, intent.message.message_type))
        elif isinstance(intent, Emit):
            out.append(("event", intent.event.message_type))
    return out


# ---------------------------------------------------------------- the rules as functions


@pytest.mark.parametrize(
    ("surpass", "active", "queued", "expected"),
    [
        ("parallel", 3, None, Admit.START),
        ("skip", 0, None, Admit.START),
        ("skip", 1, None, Admit.SKIP),
        ("wait", 1, None, Admit.QUEUE),
        ("wait", 1, "q", Admit.SKIP),
        ("replace", 1, None, Admit.START),
    ],
)
def test_admit_follows_surpass(
    surpass: str, active: int, queued: str | None, expected: Admit
) -> None:
    from engine import Surpass

    runs = [cast("Run", object()) for _ in range(active)]
    verdict, why = admit(Surpass(surpass), runs, queued)
    assert verdict is expected
    assert (why != "") is (expected is Admit.SKIP)


def test_a_step_stalls_once_its_listeners_are_silent_for_the_window() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("w", "first", timeout=10)
    task_id, _ = h.start("two")
    step = h.run(task_id).task.step
    assert step is not None
    assert stalled_since(step, 0.5, 4.0) == (5.0, 0.0)  # look again at 5 s
    assert stalled_since(step, 0.5, 5.0) == (None, 0.0)
    step.record_heard("w", 4.0)
    assert stalled_since(step, 0.5, 5.0) == (9.0, 4.0)
    assert stall_message(step, 0.0, 5.0) == (
        "step 'first' stalled: nothing heard from w for 5s (deadline in 5s)"
    )


# ---------------------------------------------------------------- starting


def test_a_start_is_a_start_intent_and_the_first_move_publishes_the_action() -> None:
    h = Harness(TWO_STEPS, wanted=frozenset({"task_started", "progress"}))
    h.subscribers.add("w", "first")
    task_id, intents = h.start("two")
    assert published(intents) == [
        ("event", "task_started"),
        ("action", "first"),
        ("event", "progress"),
    ]
    (wake,) = [i for i in intents if isinstance(i, Wake)]
    assert wake.at == 60.0  # the longest of the step's and its subscriber's time-outs
    assert h.run(task_id).task.step.waiting_for == {"w"}  # type: ignore[union-attr]


def test_events_nobody_wants_are_not_built() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("w", "first")
    _, intents = h.start("two")
    assert published(intents) == [("action", "first")]


def test_surpass_wait_queues_one_run_and_skips_the_next() -> None:
    waiting = Workflow(id="w", steps=[Step("a")], surpass="wait")
    h = Harness(waiting, durable=True)
    h.subscribers.add("s", "a")
    first, _ = h.start("w")
    queued = h.core.start("w", "test", 1.0)
    assert queued.decision is StartDecision.QUEUED
    (stage,) = h.take()
    assert isinstance(stage, Stage)
    assert isinstance(stage.write, SaveTask)
    assert b'"state":"queued"' in stage.write.record
    skipped = h.core.start("w", "test", 1.0)
    assert skipped.decision is StartDecision.SKIPPED
    assert "already queued" in skipped.reason
    # the active run ends: the queued one starts
    intents = h.done(first, "a", "s")
    ended = [i for i in intents if isinstance(i, Ended)]
    assert [e.task_id for e in ended] == [first]
    assert [i.task_id for i in intents if isinstance(i, Dequeued)] == [queued.task_id]
    assert any(isinstance(i, Start) and i.task_id == queued.task_id for i in intents)


def test_surpass_replace_stops_the_active_run_with_an_abort() -> None:
    replacing = Workflow(id="r", steps=[Step("a")], surpass="replace")
    h = Harness(replacing)
    h.subscribers.add("s", "a")
    first, _ = h.start("r")
    h.take()
    started = h.core.start("r", "test", 2.0)
    assert started.replaced == (first,)
    intents = h.take()
    (abort,) = [i for i in intents if isinstance(i, Publish)]
    assert isinstance(abort.message, ActionAbort)
    assert abort.subscribers == frozenset({"s"})
    assert h.kept[-1].outcome is Outcome.REPLACED


def test_with_a_shared_store_the_core_asks_and_takes_the_verdict_as_a_fact() -> None:
    waiting = Workflow(id="w", steps=[Step("a")], surpass="wait")
    h = Harness(waiting, durable=True)
    h.core.shared = True
    h.subscribers.add("s", "a")
    with pytest.raises(StoreError, match=r"^workflow 'w' \(surpass wait\) starts as the store"):
        h.core.start("w", "test", 0.0)
    first = ask(h.core, "w", "test", 0.0)
    (asked,) = h.take()
    assert isinstance(asked, AdmitIntent)
    assert (asked.task_id, asked.workflow, asked.surpass) == (first, "w", "wait")
    assert [orjson.loads(r)["state"] for r in asked.records] == ["admitted", "queued"]
    assert h.core.running == {}  # nowhere until the store says so
    started = h.core.admitted(first, "start", (), 0.0)
    assert (started.decision, started.task_id) == (StartDecision.STARTED, first)
    (start,) = h.take()
    assert isinstance(start, Start)
    h.core.kick(start.run, 0.0)
    h.take()
    second = ask(h.core, "w", "test", 1.0)
    h.take()
    queued = h.core.admitted(second, "queue", (), 1.0)
    assert (queued.decision, queued.task_id) == (StartDecision.QUEUED, second)
    assert h.take() == []  # the store holds its record already
    third = ask(h.core, "w", "test", 1.0)
    h.take()
    skipped = h.core.admitted(third, "skip", (second,), 1.0)
    assert (skipped.decision, skipped.task_id) == (StartDecision.SKIPPED, None)
    assert skipped.reason == (
        f"a run is active and another is already queued (surpass wait): task {second}"
    )
    # the active run ends: the queued one waits for the store to say it starts
    intents = h.done(first, "a", "s")
    assert not any(isinstance(i, Start) for i in intents)
    h.core.start_queued(second, 2.0)
    assert [type(i) for i in h.take()] == [Start, Dequeued]


def test_a_queued_run_the_store_started_before_its_verdict_came_starts_at_the_verdict() -> None:
    waiting = Workflow(id="w", steps=[Step("a")], surpass="wait")
    h = Harness(waiting)
    h.core.shared = True
    task_id = ask(h.core, "w", "test", 0.0)
    h.take()
    h.core.start_queued(task_id, 0.0)  # the start entry came first
    assert h.take() == []
    h.core.admitted(task_id, "queue", (), 0.0)
    assert [type(i) for i in h.take()] == [Start, Dequeued]
    assert h.core.promoted == set()


def test_a_run_the_store_could_not_decide_is_skipped_saying_why() -> None:
    h = Harness(Workflow(id="w", steps=[Step("a")], surpass="skip"))
    h.core.shared = True
    task_id = ask(h.core, "w", "test", 0.0)
    h.take()
    result = h.core.admitted(task_id, "error", ("ResponseError: no script",), 0.0)
    assert (result.decision, result.task_id, result.reason) == (
        StartDecision.SKIPPED,
        None,
        "the run could not be decided, so it did not start: ResponseError: no script",
    )
    assert h.take() == []
    assert h.core.running == {}


def test_a_replacing_run_the_store_admitted_stops_the_runs_here_it_replaces() -> None:
    replacing = Workflow(id="r", steps=[Step("a")], surpass="replace")
    h = Harness(replacing)
    h.core.shared = True
    h.subscribers.add("s", "a")
    old = ask(h.core, "r", "test", 0.0)
    h.take()
    h.core.admitted(old, "start", (), 0.0)
    (start,) = h.take()
    h.core.kick(start.run, 0.0)
    h.take()
    new = ask(h.core, "r", "test", 1.0)
    h.take()
    started = h.core.admitted(new, "start", (old, "elsewhere"), 1.0)
    assert started.replaced == (old, "elsewhere")
    assert h.kept[-1].outcome is Outcome.REPLACED
    assert h.kept[-1].error == f"replaced by task {new}"
    # a stop asked through the store of a run it does not know changes nothing
    assert h.core.stop("elsewhere", "why", 1.0, replaced=True) is None


# ---------------------------------------------------------------- answers


def test_the_last_answer_moves_the_task_to_the_next_step() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("a", "first")
    h.subscribers.add("b", "first")
    task_id, _ = h.start("two")
    assert h.done(task_id, "first", "a") == []  # still waiting for b
    assert published(h.done(task_id, "first", "b")) == [("action", "second")]
    assert h.done(task_id, "first", "b") == []  # late and repeated answers change nothing


def test_an_error_is_logged_announced_and_ends_a_stop_on_error_step() -> None:
    strict = Workflow(id="s", steps=[Step("a", on_error="stop"), Step("b")])
    h = Harness(strict, wanted=frozenset({"error", "task_end"}))
    h.subscribers.add("x", "a")
    h.subscribers.add("y", "a")
    task_id, _ = h.start("s")
    h.core.answer(ActionError("a", task_id, "a", subscriber_id="x", error="disk full"), 1.0)
    intents = h.take()
    (log,) = [i for i in intents if isinstance(i, Log)]
    assert (log.kind, log.text, log.fields) == (
        LogKind.ERROR,
        "disk full",
        {"step": "a", "subscriber": "x"},
    )
    assert published(intents) == [("event", "error"), ("action_abort", "a"), ("event", "task_end")]
    (abort,) = [i for i in intents if isinstance(i, Publish)]
    assert abort.subscribers == frozenset({"y"})  # only who still owed
    assert h.kept[-1].outcome is Outcome.FAILED


def test_info_is_logged_and_progress_is_throttled() -> None:
    h = Harness(TWO_STEPS, wanted=frozenset({"progress"}), progress_interval=5.0)
    h.subscribers.add("w", "first")
    task_id, _ = h.start("two")
    h.core.answer(
        ActionInfo("first", task_id, "first", subscriber_id="w", level="warning", message="slow"),
        1.0,
    )
    (log,) = h.take()
    assert isinstance(log, Log)
    assert log.fields["level"] == "warning"
    h.now = 1.0
    h.core.answer(
        ActionProgress(
            "first", task_id, "first", subscriber_id="w", progress=ProgressLeaf("w", 1, 4)
        ),
        1.0,
    )
    (wake,) = h.take()  # published at 0 with the step: the next one is due at 5
    assert isinstance(wake, Wake)
    assert wake.at == 5.0
    h.core.tick(h.run(task_id), 5.0)
    assert published(h.take()) == [("event", "progress")]
    event = progress_event(h.run(task_id).task)
    assert event.data["waiting_for"] == ["w"]


def test_an_answer_for_another_step_or_task_is_ignored() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("w", "first")
    task_id, _ = h.start("two")
    assert h.done(task_id, "second", "w") == []
    assert h.done("no-such-task", "first", "w") == []
    assert h.run(task_id).task.state == "first"


# ---------------------------------------------------------------- time


def test_a_deadline_times_the_step_out_and_the_task_goes_on() -> None:
    h = Harness(TWO_STEPS, wanted=frozenset({"error"}))
    h.subscribers.add("slow", "first", timeout=10)
    task_id, _ = h.start("two")
    run = h.run(task_id)
    h.core.tick(run, 9.0)  # too early: only the wake-up is asked for again
    assert [(type(i), i.at) for i in h.take()] == [(Wake, 10.0)]
    h.core.tick(run, 10.0)
    intents = h.take()
    (log,) = [i for i in intents if isinstance(i, Log)]
    assert log.kind is LogKind.TIMEOUT
    expected = [("event", "error"), ("action_abort", "first"), ("action", "second")]
    assert published(intents) == expected
    assert run.task.history[0].timed_out


def test_a_silent_listener_is_reported_stalled_once() -> None:
    h = Harness(TWO_STEPS, stall_fraction=0.5, wanted=frozenset({"error"}))
    h.subscribers.add("quiet", "first", timeout=10)
    task_id, intents = h.start("two")
    (wake,) = [i for i in intents if isinstance(i, Wake)]
    assert wake.at == 5.0
    run = h.run(task_id)
    h.core.tick(run, 5.0)
    intents = h.take()
    assert [i.kind for i in intents if isinstance(i, Log)] == [LogKind.STALLED]
    assert published(intents) == [("event", "error")]
    assert run.task.step is not None
    assert run.task.step.stalled
    h.core.tick(run, 6.0)
    assert published(h.take()) == []  # said once


# ---------------------------------------------------------------- other facts


def test_a_subscriber_that_goes_away_releases_the_step() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("a", "first")
    h.subscribers.add("b", "first")
    task_id, _ = h.start("two")
    h.done(task_id, "first", "a")
    h.subscribers.remove_subscriber("b")
    intents = h.take()
    assert [i.kind for i in intents if isinstance(i, Log)] == [LogKind.RELEASED]
    assert published(intents) == [("action", "second")]  # no abort: nobody owes it now
    assert h.run(task_id).task.history[0].released == ("b",)


def test_a_stop_aborts_what_is_owed_and_ends_the_task() -> None:
    h = Harness(TWO_STEPS, wanted=frozenset({"task_end"}))
    h.subscribers.add("w", "first")
    task_id, _ = h.start("two")
    assert h.core.stop(task_id, "enough", 3.0) is True
    intents = h.take()
    assert published(intents) == [("action_abort", "first"), ("event", "task_end")]
    assert [type(i) for i in intents][-1] is Ended
    assert h.core.stop(task_id, None, 4.0) is False  # ended already
    assert h.core.stop("unknown", None, 4.0) is None
    assert h.kept[-1].error == "enough"


def test_events_finish_waiting_steps_and_start_triggered_workflows() -> None:
    waits = Workflow(id="waits", steps=[Step("ready", action=WaitForEvent("go", {"n": 1}))])
    triggered = Workflow(id="t", steps=[Step("x")], triggers=[EventTrigger("go")])
    h = Harness(waits, triggered)
    task_id, _ = h.start("waits")
    h.core.event(Event("go", {"n": 2}), 1.0)  # does not match the step's filter
    intents = h.take()
    assert [type(i) for i in intents] == [Start]  # but the trigger fires
    assert task_id in h.core.running
    h.core.event(Event("go", {"n": 1}), 2.0)
    intents = h.take()
    assert task_id in [i.task_id for i in intents if isinstance(i, Ended)]


def test_an_event_from_elsewhere_finishes_waiting_steps_but_starts_no_workflow() -> None:
    waits = Workflow(id="waits", steps=[Step("ready", action=WaitForEvent("go", {"n": 1}))])
    triggered = Workflow(id="t", steps=[Step("x")], triggers=[EventTrigger("go")])
    h = Harness(waits, triggered)
    task_id, _ = h.start("waits")
    h.core.event_elsewhere(Event("go", {"n": 2}), 1.0)  # does not match the step's filter
    assert h.take() == []  # and the trigger fired where the event was published
    assert task_id in h.core.running
    h.core.event_elsewhere(Event("go", {"n": 1}), 2.0)
    intents = h.take()
    assert task_id in [i.task_id for i in intents if isinstance(i, Ended)]
    assert not [i for i in intents if isinstance(i, Start)]
    assert h.kept[-1].outcome is Outcome.DONE
    again, _ = h.start("waits")
    h.core.frozen = True  # stopping: an event changes nothing any more
    h.core.event_elsewhere(Event("go", {"n": 1}), 3.0)
    assert h.take() == []
    assert again in h.core.running


def test_a_resumed_step_whose_answers_came_meanwhile_is_not_sent_again() -> None:
    h = Harness(TWO_STEPS)
    for subscriber_id in ("w", "v"):
        for step in ("first", "second"):
            h.subscribers.add(subscriber_id, step)
    task_id, intents = h.start("two")
    assert published(intents) == [("action", "first")]
    for owed in (("w",), ("w", "v")):
        # another replica takes the task over where it was, and the answers left for it
        run = h.core.running.pop(task_id)
        run.registered.active.pop(run)
        h.core.adopt(run.task, run.registered)
        (start,) = h.take()
        for subscriber_id in owed:
            h.core.answer(ActionDone("first", task_id, "first", subscriber_id=subscriber_id), 1.0)
        assert h.take() == []  # not kicked yet: nothing moves
        h.core.kick(start.run, 1.0)
        intents = h.take()
        if owed == ("w",):  # v still owes it: the action goes out again
            assert published(intents) == [("action", "first")]
    assert published(intents) == [("action", "second")]  # both answered: first is not sent
    step = h.run(task_id).task.step
    assert step is not None
    assert step.step.name == "second"


def test_an_emit_step_emits_and_a_command_step_runs_and_is_cancelled() -> None:
    workflow = Workflow(
        id="c",
        steps=[
            Step("say", action=EmitEvent("said", {"k": "v"})),
            Step("work", action=ExecuteCommand(command=["true"]), timeout=5),
        ],
    )
    h = Harness(workflow, wanted=frozenset({"error"}))
    task_id, intents = h.start("c")
    (emit,) = [i for i in intents if isinstance(i, Emit)]
    assert emit.event.data == {"k": "v", "workflow": "c", "task": task_id}
    (command,) = [i for i in intents if isinstance(i, RunCommand)]
    run = h.run(task_id)
    h.core.command_ended(run, command.step, "command 'true' exited with status 1", "oops", 1.0)
    intents = h.take()
    (log,) = [i for i in intents if isinstance(i, Log)]
    assert log.kind is LogKind.COMMAND_FAILED
    assert log.text.endswith("--- last output ---\noops")
    assert any(isinstance(i, CancelCommand) for i in intents)
    assert h.kept[-1].outcome is Outcome.DONE  # continue on error: the task ends done


def test_a_task_waits_until_what_its_state_caused_is_carried_out() -> None:
    h = Harness(TWO_STEPS, durable=True)
    h.carry_out = False  # the driver has not carried out (or committed) it yet
    h.subscribers.add("w", "first")
    task_id, intents = h.start("two")
    assert [type(i) for i in intents] == [Stage, Publish, Hold]
    run = h.run(task_id)
    assert run.committing
    h.core.committed(run, 0.0)
    assert [type(i) for i in h.take()] == [Wake]
    intents = h.done(task_id, "first", "w")
    assert [type(i) for i in intents] == [Stage, Publish, Hold]


def test_a_failed_write_fails_that_task_and_files_it() -> None:
    h = Harness(TWO_STEPS, durable=True, wanted=frozenset({"error", "task_end"}))
    h.subscribers.add("w", "first")
    task_id, _ = h.start("two")
    h.core.failed(task_id, OSError("disk gone"), 1.0)
    intents = h.take()
    expected = [("event", "error"), ("action_abort", "first"), ("event", "task_end")]
    assert published(intents) == expected
    (stage,) = [i for i in intents if isinstance(i, Stage)]
    assert isinstance(stage.write, FinishTask)
    assert h.kept[-1].outcome is Outcome.FAILED
    assert h.kept[-1].error == "internal error: OSError: disk gone"


def test_a_stopped_queued_run_is_filed_without_running() -> None:
    waiting = Workflow(id="w", steps=[Step("a")], surpass="wait")
    h = Harness(waiting, durable=True)
    h.subscribers.add("s", "a")
    h.start("w")
    queued = h.core.start("w", "test", 1.0).task_id
    assert queued is not None
    h.take()
    assert h.core.stop(queued, None, 2.0) is True
    stage, dequeued = h.take()
    assert isinstance(stage, Stage)
    assert isinstance(stage.write, FinishTask)
    assert stage.write.outcome == "stopped"
    assert isinstance(dequeued, Dequeued)


def test_once_frozen_no_fact_changes_anything() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("w", "first")
    task_id, _ = h.start("two")
    h.core.frozen = True
    h.done(task_id, "first", "w")
    h.core.tick(h.run(task_id), 100.0)
    h.subscribers.remove_subscriber("w")
    assert h.take() == []
    assert h.run(task_id).task.state == "first"


def test_the_core_imports_neither_trio_nor_a_store() -> None:
    for name in ("_core", "_admission", "_rules", "_steps", "_intents", "_runs", "_workflows"):
        tree = ast.parse((ENGINE / f"{name}.py").read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        relative = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        assert not imported & {"trio", "sqlite3", "coredis", "anyio"}, (name, imported)
        assert not relative & {"_driver", "_persistence", "_bus", "_store_sqlite", "_redis"}, (
            name,
            relative,
        )


def test_action_routing_comes_with_every_action() -> None:
    h = Harness(TWO_STEPS)
    h.subscribers.add("w", "first")
    _, intents = h.start("two")
    (publish,) = [i for i in intents if isinstance(i, Publish)]
    assert isinstance(publish.message, Action)
    assert publish.message.extra["workflow"] == "two"
