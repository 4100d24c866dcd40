"""Declarations as Python values: steps, actions, triggers, workflows, jobs."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine import (
    CatchUp,
    CronTrigger,
    DeclarationError,
    Declarations,
    EmitEvent,
    EventTrigger,
    ExecuteCommand,
    Job,
    OnError,
    PerformAction,
    Problem,
    Step,
    Surpass,
    WaitForEvent,
    Workflow,
    action_kind,
)
from engine._definitions import data_matches

BERLIN = ZoneInfo("Europe/Berlin")
NAME_RULE = (
    "must be 1-200 characters of letters, digits, '_', '.', ':' or '-'"
    " and not start with a punctuation mark"
)


def exact(message: str) -> str:
    """Return a pattern that matches ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(trigger: CronTrigger, start: datetime, end: datetime) -> list[datetime]:
    """Return every fire time of ``trigger`` after ``start`` and before ``end``."""
    times: list[datetime] = []
    moment = trigger.next_after(start)
    while moment < end:
        times.append(moment)
        following = trigger.next_after(moment)
        assert following > moment, f"next_after({moment}) gave {following}"
        moment = following
    return times


# ---------------------------------------------------------------- steps


def test_a_step_performs_the_action_of_its_name_by_default() -> None:
    step = Step("collect")

    assert step.action == PerformAction("collect")
    assert step.message_type == "collect"
    assert step.timeout == 10.0
    assert step.on_error is OnError.CONTINUE
    assert step.phase is None


@pytest.mark.parametrize(
    ("step", "message_type"),
    [
        (Step("notify", EmitEvent("collect_done")), "collect_done"),
        (Step("await", WaitForEvent("report_ready")), "report_ready"),
        (Step("ask", PerformAction("collect")), "collect"),
        (Step("archive", ExecuteCommand(["tar", "-c", "/data"])), "archive"),
        (Step("report", ExecuteCommand(callable="send_report")), "report"),
    ],
)
def test_a_step_message_type_is_its_action_message_type_or_its_name_for_commands(
    step: Step, message_type: str
) -> None:
    assert step.message_type == message_type


def test_enum_fields_accept_their_string_values() -> None:
    step = Step("collect", on_error="stop")  # type: ignore[arg-type]
    workflow = Workflow("w", [step], surpass="skip")  # type: ignore[arg-type]
    job = Job("j", command=["true"], surpass="replace")  # type: ignore[arg-type]

    trigger = CronTrigger("0 * * * *", catch_up="all")  # type: ignore[arg-type]

    assert step.on_error is OnError.STOP
    assert workflow.surpass is Surpass.SKIP
    assert trigger.catch_up is CatchUp.ALL
    assert job.surpass is Surpass.REPLACE
    assert workflow == Workflow(
        "w", (Step("collect", on_error=OnError.STOP),), surpass=Surpass.SKIP
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Step("start"), "name: 'start' is reserved for the machine's own state"),
        (lambda: Step("end"), "name: 'end' is reserved for the machine's own state"),
        (lambda: Step(""), f"name: a step name {NAME_RULE}, got ''"),
        (lambda: Step("-collect"), f"name: a step name {NAME_RULE}, got '-collect'"),
        (lambda: Step("pre collect"), f"name: a step name {NAME_RULE}, got 'pre collect'"),
        (lambda: Step("x" * 201), f"name: a step name {NAME_RULE}, got '{'x' * 201}'"),
        (lambda: Step(1), "name: must be a string, got 1"),
        (lambda: Step("a", timeout=0), "timeout: must be > 0, got 0"),
        (lambda: Step("a", timeout=-1), "timeout: must be > 0, got -1"),
        (
            lambda: Step("a", timeout=float("inf")),
            "timeout: must be at most 1000000000 seconds, got inf",
        ),
        (lambda: Step("a", timeout=float("nan")), "timeout: must be > 0, got nan"),
        (lambda: Step("a", timeout="10"), "timeout: must be a number of seconds, got '10'"),
        (lambda: Step("a", timeout=True), "timeout: must be a number of seconds, got True"),
        (
            lambda: Step("a", on_error="skip"),
            "on_error: must be one of 'continue', 'stop', got 'skip'",
        ),
        (lambda: Step("a", action="collect"), "action: must be a step action, got 'collect'"),
        (lambda: Step("a", phase="-x"), f"phase: a phase name {NAME_RULE}, got '-x'"),
    ],
)
def test_an_invalid_step_is_rejected_naming_the_field(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        make()


def test_a_timeout_too_large_for_a_float_is_a_declaration_error() -> None:
    # A deadline is "now + timeout" in float seconds: 10**400 cannot be one.
    with pytest.raises(DeclarationError, match=r"^timeout: must be .*$"):
        Step("a", timeout=10**400)


def test_a_step_name_of_200_characters_with_punctuation_inside_is_accepted() -> None:
    for name in ("_private", "aws:collect", "phase.step-2", "x" * 200):
        assert Step(name).name == name


def test_every_problem_of_a_step_is_listed() -> None:
    with pytest.raises(DeclarationError) as caught:
        Step("pre collect", timeout=-1, on_error="sometimes")  # type: ignore[arg-type]

    assert isinstance(caught.value, ValueError)
    assert caught.value.problems == (
        Problem("name", f"a step name {NAME_RULE}, got 'pre collect'"),
        Problem("timeout", "must be > 0, got -1"),
        Problem("on_error", "must be one of 'continue', 'stop', got 'sometimes'"),
    )


# ---------------------------------------------------------------- actions


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PerformAction(""), f"message_type: a message type {NAME_RULE}, got ''"),
        (lambda: PerformAction(3), "message_type: must be a string, got 3"),
        (lambda: EmitEvent("e", data=[1]), "data: must be a table of values, got [1]"),
        (lambda: EmitEvent("e", data={1: "x"}), "data: keys must be strings"),
        (lambda: WaitForEvent("e", filter="x"), "filter: must be a table of values, got 'x'"),
        (lambda: WaitForEvent("a b"), f"message_type: a message type {NAME_RULE}, got 'a b'"),
        (lambda: ExecuteCommand(), "give exactly one of 'command' and 'callable'"),
        (lambda: ExecuteCommand(["ls"], "cb"), "give exactly one of 'command' and 'callable'"),
        (lambda: ExecuteCommand("ls -l"), "command: must be a list of strings, got 'ls -l'"),
        (lambda: ExecuteCommand(["ls", 1]), "command: must be a list of strings, got ('ls', 1)"),
        (
            lambda: ExecuteCommand(callable="os system"),
            f"callable: a callable name {NAME_RULE}, got 'os system'",
        ),
    ],
)
def test_an_invalid_action_is_rejected_naming_the_field(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        make()


def test_a_command_is_an_argument_vector() -> None:
    action = ExecuteCommand(["tar", "-czf", "out.tgz", "my files"])

    assert action.command == ("tar", "-czf", "out.tgz", "my files")
    assert action.callable is None
    assert action == ExecuteCommand(("tar", "-czf", "out.tgz", "my files"))


def test_a_callable_is_only_a_name() -> None:
    action = ExecuteCommand(callable="os.system")

    assert action.callable == "os.system"
    assert action.command == ()


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (PerformAction("collect"), "perform_action"),
        (EmitEvent("collect_done"), "emit_event"),
        (WaitForEvent("report_ready"), "wait_for_event"),
        (ExecuteCommand(["true"]), "execute_command"),
    ],
)
def test_action_kind_gives_the_data_file_name(action: Any, kind: str) -> None:
    assert action_kind(action) == kind


def test_action_kind_rejects_what_is_not_an_action() -> None:
    with pytest.raises(TypeError, match=exact("not a step action: 'collect'")):
        action_kind("collect")  # type: ignore[arg-type]


def test_event_data_is_copied_so_the_caller_cannot_change_a_declaration() -> None:
    data = {"format": "pdf"}
    action = EmitEvent("report_ready", data)
    data["format"] = "html"

    assert action.data == {"format": "pdf"}


# ---------------------------------------------------------------- matching events


@pytest.mark.parametrize(
    ("pattern", "data", "expected"),
    [
        ({}, {}, True),
        ({}, {"anything": 1}, True),
        ({"cloud": "aws"}, {"cloud": "aws", "account": "123"}, True),
        ({"cloud": "aws"}, {"cloud": "gcp"}, False),
        ({"cloud": "aws"}, {}, False),
        ({"cloud": None}, {}, False),
        ({"cloud": None}, {"cloud": None}, True),
        ({"tags": ["a", "b"]}, {"tags": ["a", "b"]}, True),
        ({"tags": ["a"]}, {"tags": ["a", "b"]}, False),
        ({"src": {"cloud": "aws"}}, {"src": {"cloud": "aws", "region": "eu"}}, True),
        ({"src": {"cloud": "aws"}}, {"src": {"cloud": "gcp"}}, False),
        ({"src": {"cloud": "aws"}}, {"src": "aws"}, False),
        ({"src": {"cloud": "aws"}}, {"cloud": "aws"}, False),
        ({"a": {"b": {"c": 1}}}, {"a": {"b": {"c": 1, "d": 2}, "e": 3}}, True),
        ({"a": {"b": {"c": 1}}}, {"a": {"b": {"c": 2}}}, False),
        ({"a": {}}, {"a": {"x": 1}}, True),
        ({"a": {}}, {"a": 1}, False),
    ],
)
def test_data_matches_when_every_filter_key_is_present_with_an_equal_value(
    pattern: dict[str, Any], data: dict[str, Any], expected: bool
) -> None:
    assert data_matches(pattern, data) is expected


def test_an_event_trigger_matches_its_event_type_and_nested_filter() -> None:
    trigger = EventTrigger("post_collect", {"source": {"cloud": "aws"}})

    assert trigger.matches("post_collect", {"source": {"cloud": "aws", "account": "1"}})
    assert not trigger.matches("post_collect", {"source": {"cloud": "gcp"}})
    assert not trigger.matches("pre_collect", {"source": {"cloud": "aws"}})


def test_an_event_trigger_without_filter_matches_every_event_of_its_type() -> None:
    trigger = EventTrigger("post_collect")

    assert trigger.matches("post_collect", {})
    assert trigger.matches("post_collect", {"task": "t1"})
    assert not trigger.matches("post_cleanup", {})


def test_a_wait_for_event_matches_its_event_type_and_filter() -> None:
    wait = WaitForEvent("report_ready", {"format": "pdf"})

    assert wait.matches("report_ready", {"format": "pdf", "pages": 3})
    assert not wait.matches("report_ready", {"format": "html"})
    assert not wait.matches("report_failed", {"format": "pdf"})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EventTrigger(""), f"event: an event type {NAME_RULE}, got ''"),
        (lambda: EventTrigger("e", filter="x"), "filter: must be a table of values, got 'x'"),
    ],
)
def test_an_invalid_event_trigger_is_rejected(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        make()


# ---------------------------------------------------------------- cron triggers


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CronTrigger("61 * * * *"), "cron: '61 * * * *' is not a valid cron expression"),
        (lambda: CronTrigger("0 25 * * *"), "cron: '0 25 * * *' is not a valid cron expression"),
        (lambda: CronTrigger("x * * * *"), "cron: 'x * * * *' is not a valid cron expression"),
        (
            lambda: CronTrigger("* * * *"),
            "cron: '* * * *' is not a valid cron expression (it needs 5 fields)",
        ),
        (
            lambda: CronTrigger("0 * * * * *"),
            "cron: '0 * * * * *' is not a valid cron expression (it needs 5 fields)",
        ),
        (
            lambda: CronTrigger("@hourly"),
            "cron: '@hourly' is not a valid cron expression (it needs 5 fields)",
        ),
        (lambda: CronTrigger(5), "cron: must be a string, got 5"),
        (
            lambda: CronTrigger("0 * * * *", "Mars/Olympus"),
            "timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            lambda: CronTrigger("0 * * * *", "../etc/passwd"),
            "timezone: unknown time zone '../etc/passwd'",
        ),
        (lambda: CronTrigger("0 * * * *", ""), "timezone: unknown time zone ''"),
        (lambda: CronTrigger("0 * * * *", 1), "timezone: must be a string, got 1"),
        (
            lambda: CronTrigger("0 * * * *", catch_up="sometimes"),
            "catch_up: must be one of 'skip', 'latest', 'all', got 'sometimes'",
        ),
        (
            lambda: CronTrigger("0 * * * *", catch_up_limit=0),
            "catch_up_limit: must be an integer from 1 to 1000, got 0",
        ),
        (
            lambda: CronTrigger("0 * * * *", catch_up_limit=1001),
            "catch_up_limit: must be an integer from 1 to 1000, got 1001",
        ),
        (
            lambda: CronTrigger("0 * * * *", catch_up_limit=2.0),
            "catch_up_limit: must be an integer from 1 to 1000, got 2.0",
        ),
        (
            lambda: CronTrigger("0 * * * *", catch_up_limit=True),
            "catch_up_limit: must be an integer from 1 to 1000, got True",
        ),
        (
            lambda: CronTrigger("61 * * * *", "Mars/Olympus"),
            "cron: '61 * * * *' is not a valid cron expression\n"
            "timezone: unknown time zone 'Mars/Olympus'",
        ),
    ],
)
def test_an_invalid_cron_trigger_is_rejected(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        make()


def test_a_cron_trigger_runs_in_utc_by_default_and_answers_in_utc() -> None:
    trigger = CronTrigger("0 * * * *")
    new_york_noon = datetime(2024, 6, 1, 12, 30, tzinfo=ZoneInfo("America/New_York"))

    moment = trigger.next_after(new_york_noon)

    assert trigger.timezone == "UTC"
    assert moment == utc(2024, 6, 1, 17, 0)
    assert moment.tzinfo is UTC


def test_next_after_is_strictly_after_a_fire_time() -> None:
    trigger = CronTrigger("0 * * * *")

    assert trigger.next_after(utc(2024, 6, 1, 12, 0)) == utc(2024, 6, 1, 13, 0)
    assert trigger.next_after(utc(2024, 6, 1, 11, 59, 59)) == utc(2024, 6, 1, 12, 0)


def test_a_cron_trigger_follows_its_time_zone() -> None:
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")

    assert trigger.next_after(utc(2024, 1, 10, 12)) == utc(2024, 1, 11, 1, 30)  # CET, +1
    assert trigger.next_after(utc(2024, 7, 10, 12)) == utc(2024, 7, 11, 0, 30)  # CEST, +2


def test_a_daily_job_at_a_time_skipped_by_spring_forward_runs_once_at_the_next_valid_instant() -> (
    None
):
    # Berlin, 2024-03-31: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")

    times = fires(trigger, utc(2024, 3, 29, 12), utc(2024, 4, 1, 12))

    assert times == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30)]
    assert [t.astimezone(BERLIN).strftime("%d %H:%M") for t in times] == [
        "30 02:30",
        "31 03:00",
        "01 02:30",
    ]


def test_a_daily_job_at_a_time_repeated_by_fall_back_runs_once() -> None:
    # Berlin, 2024-10-27: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")

    times = fires(trigger, utc(2024, 10, 25, 12), utc(2024, 10, 28, 12))

    assert times == [utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_next_after_never_answers_a_moment_in_the_past_during_the_repeated_hour() -> None:
    # Between 01:00 and 02:00 UTC on 2024-10-27 Berlin shows 02:00-02:59 for the
    # second time; the day's 02:30 run (00:30 UTC) is already over. An engine that
    # (re)starts its schedule then must not get 00:30 UTC back: it would sleep
    # until a moment already past and start the workflow again at once.
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")
    start = utc(2024, 10, 26, 22)
    moments = [start + timedelta(minutes=m) for m in range(6 * 60)]

    assert trigger.next_after(utc(2024, 10, 27, 1, 15)) == utc(2024, 10, 28, 1, 30)
    assert [m for m in moments if trigger.next_after(m) <= m] == []


def test_fire_times_lists_the_times_in_a_span_keeping_the_last_ones() -> None:
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")
    after, until = utc(2024, 3, 29, 12), utc(2024, 4, 1, 0, 30)

    assert trigger.fire_times(after, until, limit=10) == [
        utc(2024, 3, 30, 1, 30),
        utc(2024, 3, 31, 1, 0),
        utc(2024, 4, 1, 0, 30),
    ]
    assert trigger.fire_times(after, until, limit=2) == [
        utc(2024, 3, 31, 1, 0),
        utc(2024, 4, 1, 0, 30),
    ]
    assert trigger.fire_times(utc(2024, 4, 1, 0, 30), utc(2024, 4, 1, 12), limit=10) == []


def test_fire_times_never_lists_a_time_before_the_span_during_the_repeated_hour() -> None:
    # 02:30 Berlin ran at 00:30 UTC on 2024-10-27; 01:15-01:20 UTC is 02:15-02:20 CET.
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")

    assert trigger.fire_times(utc(2024, 10, 27, 1, 15), utc(2024, 10, 27, 1, 20), limit=10) == []


def test_an_hourly_job_in_berlin_runs_24_times_an_hour_apart_on_a_normal_day() -> None:
    trigger = CronTrigger("0 * * * *", "Europe/Berlin")
    midnight = datetime(2024, 6, 1, tzinfo=BERLIN).astimezone(UTC)

    times = fires(trigger, midnight - timedelta(seconds=1), midnight + timedelta(days=1))

    assert len(set(times)) == 24
    assert times[0] == utc(2024, 5, 31, 22, 0)
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(times))


@pytest.mark.parametrize(
    ("day", "runs"),
    [(datetime(2024, 3, 31), 23), (datetime(2024, 10, 27), 25)],
)
def test_an_hourly_job_runs_in_absolute_time_across_dst_changes(day: datetime, runs: int) -> None:
    trigger = CronTrigger("0 * * * *", "Europe/Berlin")
    start = day.replace(tzinfo=BERLIN).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=BERLIN).astimezone(UTC)

    times = fires(trigger, start - timedelta(seconds=1), end)

    assert len(set(times)) == runs
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(times))


# ---------------------------------------------------------------- workflows


def test_a_workflow_has_defaults_and_its_start_event() -> None:
    workflow = Workflow("nightly", [Step("pre_collect"), Step("collect")])

    assert workflow.steps == (Step("pre_collect"), Step("collect"))
    assert workflow.name == "nightly"
    assert workflow.triggers == ()
    assert workflow.surpass is Surpass.WAIT
    assert workflow.description == ""
    assert workflow.start_event == "start_nightly_workflow"


def test_a_workflow_finds_its_steps_by_name() -> None:
    workflow = Workflow("w", [Step("pre_collect"), Step("collect", timeout=60)])

    assert workflow.step("collect") == Step("collect", timeout=60)
    with pytest.raises(KeyError):
        workflow.step("cleanup")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Workflow("w", []), "steps: a workflow needs at least one step"),
        (
            lambda: Workflow("w", [Step("a"), Step("b"), Step("a"), Step("b")]),
            "steps[2].name: duplicate name 'a'\nsteps[3].name: duplicate name 'b'",
        ),
        (lambda: Workflow("w", [Step("a"), "b"]), "steps[1]: must be a Step, got 'b'"),
        (
            lambda: Workflow("", [Step("a")]),
            f"id: an id {NAME_RULE}, got ''\nname: must be a non-empty string, got ''",
        ),
        (lambda: Workflow("w", [Step("a")], name=""), "name: must be a non-empty string, got ''"),
        (
            lambda: Workflow("w", [Step("a")], surpass="never"),
            "surpass: must be one of 'skip', 'replace', 'parallel', 'wait', got 'never'",
        ),
        (
            lambda: Workflow("w", [Step("a")], triggers="x"),
            "triggers: must be a list of triggers, got 'x'",
        ),
        (
            lambda: Workflow("w", [Step("a")], triggers=["x"]),
            "triggers[0]: must be a trigger, got 'x'",
        ),
        (lambda: Workflow("w", [Step("a")], description=3), "description: must be a string, got 3"),
    ],
)
def test_an_invalid_workflow_is_rejected_naming_the_field(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        make()


# ---------------------------------------------------------------- jobs


def test_a_job_is_a_workflow_of_one_command_step() -> None:
    trigger = EventTrigger("post_collect")
    job = Job("report", command=["report", "--all"], triggers=[trigger], timeout=30, surpass="skip")  # type: ignore[arg-type]

    assert job.as_workflow() == Workflow(
        id="report",
        steps=[Step("run", ExecuteCommand(["report", "--all"]), timeout=30, on_error=OnError.STOP)],
        triggers=[trigger],
        surpass=Surpass.SKIP,
    )
    assert job.as_workflow().start_event == "start_report_workflow"


def test_a_job_that_waits_for_an_event_first_gets_a_wait_step() -> None:
    wait = WaitForEvent("post_cleanup", {"ok": True})
    job = Job("notify", callable="send_mail", wait_for=wait, wait_timeout=120, description="mail")

    assert job.as_workflow() == Workflow(
        id="notify",
        steps=[
            Step("wait", wait, timeout=120, on_error=OnError.STOP),
            Step("run", ExecuteCommand(callable="send_mail"), timeout=60, on_error=OnError.STOP),
        ],
        description="mail",
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Job("j"), "give exactly one of 'command' and 'callable'"),
        (
            lambda: Job("j", command=["x"], callable="y"),
            "give exactly one of 'command' and 'callable'",
        ),
        (lambda: Job("j", command="ls"), "command: must be a list of strings, got 'ls'"),
        (lambda: Job("-j", command=["x"]), f"id: an id {NAME_RULE}, got '-j'"),
        (lambda: Job("j", command=["x"], triggers=[1]), "triggers[0]: must be a trigger, got 1"),
        (
            lambda: Job("j", command=["x"], wait_for="post_collect"),
            "wait_for: must be a WaitForEvent, got 'post_collect'",
        ),
        (
            lambda: Job("j", command=["x"], wait_timeout=0, timeout=-5, surpass="x"),
            "wait_timeout: must be > 0, got 0\ntimeout: must be > 0, got -5\n"
            "surpass: must be one of 'skip', 'replace', 'parallel', 'wait', got 'x'",
        ),
    ],
)
def test_an_invalid_job_is_rejected_naming_the_field(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        make()


# ---------------------------------------------------------------- declarations


def test_declarations_give_workflows_then_jobs_as_workflows() -> None:
    collect = Workflow("collect", [Step("collect")])
    job = Job("report", command=["report"])

    declarations = Declarations([collect], [job])

    assert declarations.all_workflows() == (collect, job.as_workflow())
    assert Declarations().all_workflows() == ()


def test_ids_are_unique_across_workflows_and_jobs() -> None:
    def flow(ident: str) -> Workflow:
        return Workflow(ident, [Step("s")])

    def job(ident: str) -> Job:
        return Job(ident, command=["true"])

    with pytest.raises(
        DeclarationError,
        match=exact(
            "workflows[2].id: duplicate id 'a'\n"
            "jobs[0].id: duplicate id 'b'\n"
            "jobs[2].id: duplicate id 'c'"
        ),
    ):
        Declarations([flow("a"), flow("b"), flow("a")], [job("b"), job("c"), job("c")])
