"""Reading declarations from data: TOML, JSON and plain dicts, strictly, with every problem."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import (
    CatchUp,
    CronTrigger,
    DeclarationError,
    Declarations,
    EmitEvent,
    EventTrigger,
    ExecuteCommand,
    InvalidInputError,
    Job,
    OnError,
    PerformAction,
    Problem,
    ProgressLeaf,
    Step,
    Subscription,
    Surpass,
    WaitForEvent,
    Workflow,
    unstructure_declaration,
)
from engine._convert import structure_strict

ACTION_KINDS = "'perform_action', 'emit_event', 'wait_for_event', 'execute_command'"
SURPASS = "'skip', 'replace', 'parallel', 'wait'"


def exact(message: str) -> str:
    """Return a pattern that matches ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def problems_of(data: Any, type_: type[Any] = Declarations) -> list[str]:
    """Return the problems reported for ``data``, one ``path: message`` string each."""
    with pytest.raises(DeclarationError) as caught:
        type_.from_dict(data)
    return [str(problem) for problem in caught.value.problems]


TOML = """\
[[workflows]]
id = "nightly"
name = "Nightly collect"
description = "Collect, announce, wait for the report, archive."
surpass = "replace"

[[workflows.steps]]
name = "pre_collect"
phase = "collect"

[[workflows.steps]]
name = "collect"
phase = "collect"
timeout = 3600
on_error = "stop"

[[workflows.steps]]
name = "announce"
timeout = 2.5
[workflows.steps.action]
kind = "emit_event"
message_type = "collect_finished"
data = { channel = "ops", tags = ["nightly", "aws"] }

[[workflows.steps]]
name = "await_report"
timeout = 600
[workflows.steps.action]
kind = "wait_for_event"
message_type = "report_ready"
filter = { source = { team = "ops" } }

[[workflows.steps]]
name = "archive"
action = { kind = "execute_command", command = ["tar", "-czf", "/tmp/archive.tgz", "/var/data"] }

[[workflows.steps]]
name = "second_collect"
action = { kind = "perform_action", message_type = "collect" }

[[workflows.triggers]]
cron = "30 2 * * *"
timezone = "Europe/Berlin"
catch_up = "all"
catch_up_limit = 3

[[workflows.triggers]]
event = "manual_collect"
filter = { requested_by = "ops" }

[[jobs]]
id = "cleanup_report"
callable = "send_cleanup_report"
timeout = 30
surpass = "parallel"
wait_for = { message_type = "post_cleanup", filter = { ok = true } }
wait_timeout = 120
triggers = [{ event = "post_collect" }]

[[jobs]]
id = "disk_usage"
command = ["du", "-sh", "/var/data"]
triggers = [{ cron = "0 * * * *" }]
"""

JSON = """\
{
  "workflows": [
    {
      "id": "nightly",
      "name": "Nightly collect",
      "description": "Collect, announce, wait for the report, archive.",
      "surpass": "replace",
      "steps": [
        {"name": "pre_collect", "phase": "collect"},
        {"name": "collect", "phase": "collect", "timeout": 3600, "on_error": "stop"},
        {
          "name": "announce",
          "timeout": 2.5,
          "action": {
            "kind": "emit_event",
            "message_type": "collect_finished",
            "data": {"channel": "ops", "tags": ["nightly", "aws"]}
          }
        },
        {
          "name": "await_report",
          "timeout": 600,
          "action": {
            "kind": "wait_for_event",
            "message_type": "report_ready",
            "filter": {"source": {"team": "ops"}}
          }
        },
        {
          "name": "archive",
          "action": {
            "kind": "execute_command",
            "command": ["tar", "-czf", "/tmp/archive.tgz", "/var/data"]
          }
        },
        {
          "name": "second_collect",
          "action": {"kind": "perform_action", "message_type": "collect"}
        }
      ],
      "triggers": [
        {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "catch_up": "all", "catch_up_limit": 3},
        {"event": "manual_collect", "filter": {"requested_by": "ops"}}
      ]
    }
  ],
  "jobs": [
    {
      "id": "cleanup_report",
      "callable": "send_cleanup_report",
      "timeout": 30,
      "surpass": "parallel",
      "wait_for": {"message_type": "post_cleanup", "filter": {"ok": true}},
      "wait_timeout": 120,
      "triggers": [{"event": "post_collect"}]
    },
    {
      "id": "disk_usage",
      "command": ["du", "-sh", "/var/data"],
      "triggers": [{"cron": "0 * * * *"}]
    }
  ]
}
"""

EXPECTED = Declarations(
    workflows=[
        Workflow(
            id="nightly",
            name="Nightly collect",
            description="Collect, announce, wait for the report, archive.",
            surpass=Surpass.REPLACE,
            steps=[
                Step("pre_collect", phase="collect"),
                Step("collect", phase="collect", timeout=3600, on_error=OnError.STOP),
                Step(
                    "announce",
                    EmitEvent("collect_finished", {"channel": "ops", "tags": ["nightly", "aws"]}),
                    timeout=2.5,
                ),
                Step(
                    "await_report",
                    WaitForEvent("report_ready", {"source": {"team": "ops"}}),
                    timeout=600,
                ),
                Step("archive", ExecuteCommand(["tar", "-czf", "/tmp/archive.tgz", "/var/data"])),
                Step("second_collect", PerformAction("collect")),
            ],
            triggers=[
                CronTrigger("30 2 * * *", "Europe/Berlin", catch_up=CatchUp.ALL, catch_up_limit=3),
                EventTrigger("manual_collect", {"requested_by": "ops"}),
            ],
        )
    ],
    jobs=[
        Job(
            "cleanup_report",
            callable="send_cleanup_report",
            timeout=30,
            surpass=Surpass.PARALLEL,
            wait_for=WaitForEvent("post_cleanup", {"ok": True}),
            wait_timeout=120,
            triggers=[EventTrigger("post_collect")],
        ),
        Job("disk_usage", command=["du", "-sh", "/var/data"], triggers=[CronTrigger("0 * * * *")]),
    ],
)


# ---------------------------------------------------------------- valid files


def test_toml_and_json_declaring_the_same_workflow_give_equal_values() -> None:
    from_toml = Declarations.from_toml(TOML)
    from_json = Declarations.from_json(JSON)

    assert from_toml == EXPECTED
    assert from_json == EXPECTED


def test_from_file_reads_toml_and_json_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "flows.toml").write_text(TOML, encoding="utf-8")
    (tmp_path / "flows.json").write_text(JSON, encoding="utf-8")

    assert Declarations.from_file(tmp_path / "flows.toml") == EXPECTED
    assert Declarations.from_file(tmp_path / "flows.json") == EXPECTED


def test_a_workflow_and_a_job_read_on_their_own() -> None:
    data = json.loads(JSON)

    assert Workflow.from_dict(data["workflows"][0]) == EXPECTED.workflows[0]
    assert Job.from_dict(data["jobs"][1]) == EXPECTED.jobs[1]


def test_a_minimal_workflow_takes_every_default() -> None:
    workflow = Workflow.from_dict({"id": "metrics", "steps": [{"name": "generate_metrics"}]})

    assert workflow == Workflow("metrics", [Step("generate_metrics")])
    assert workflow.steps[0].action == PerformAction("generate_metrics")
    assert workflow.surpass is Surpass.WAIT


def test_an_empty_file_declares_nothing() -> None:
    assert Declarations.from_toml("") == Declarations()
    assert Declarations.from_json("{}") == Declarations()


# ---------------------------------------------------------------- round trip


def test_unstructured_declarations_read_back_equal() -> None:
    workflows_only = Declarations(workflows=EXPECTED.workflows, jobs=EXPECTED.jobs[1:])

    data = unstructure_declaration(workflows_only)

    assert Declarations.from_dict(data) == workflows_only
    assert Declarations.from_json(json.dumps(data)) == workflows_only


def test_an_unstructured_workflow_reads_back_equal() -> None:
    workflow = EXPECTED.workflows[0]

    assert Workflow.from_dict(unstructure_declaration(workflow)) == workflow


def test_an_unstructured_job_that_waits_for_an_event_reads_back_equal() -> None:
    job = EXPECTED.jobs[0]
    assert job.wait_for is not None

    assert Job.from_dict(unstructure_declaration(job)) == job


# ---------------------------------------------------------------- problems


def test_an_invalid_declaration_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    data = {
        "workflows": [
            {
                "id": "nightly",
                "steps": [
                    {"name": "pre_collect", "colour": "red"},
                    {"timeout": 5},
                    {"name": "collect", "action": {"kind": "teleport"}},
                    {"name": "post_collect", "timeout": -1},
                    {"name": "notify", "action": {"kind": "execute_command", "command": "echo hi"}},
                    {"name": "post_collect", "on_error": "retry"},
                ],
                "triggers": [
                    {"cron": "61 * * * *"},
                    {"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"},
                ],
                "surpass": "sometimes",
            },
            {"id": "other", "steps": "collect", "description": False},
        ],
        "jobs": [
            {"id": "report", "command": ["report"], "timeout": "10"},
            {"id": "mail", "callable": "mail", "wait_for": {"message_type": "x", "filter": [1]}},
        ],
    }
    path = tmp_path / "flows.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(DeclarationError) as caught:
        Declarations.from_file(path)

    expected = [
        "workflows[0].steps[0].colour: unknown field",
        "workflows[0].steps[1].name: required field missing",
        "workflows[0].steps[2].action.kind: unknown action kind 'teleport',"
        f" expected one of {ACTION_KINDS}",
        "workflows[0].steps[3].timeout: must be > 0, got -1",
        "workflows[0].steps[4].action.command: must be a list, got 'echo hi'",
        "workflows[0].steps[5].on_error: must be one of 'continue', 'stop', got 'retry'",
        "workflows[0].triggers[0].cron: '61 * * * *' is not a valid cron expression",
        "workflows[0].triggers[1].timezone: unknown time zone 'Mars/Olympus_Mons'",
        f"workflows[0].surpass: must be one of {SURPASS}, got 'sometimes'",
        "workflows[1].steps: must be a list, got 'collect'",
        "workflows[1].description: must be a string, got False",
        "jobs[0].timeout: must be a number, got '10'",
        "jobs[1].wait_for.filter: must be a table of values, got [1]",
        "workflows[0].steps[5].name: duplicate name 'post_collect'",
    ]
    assert [str(problem) for problem in caught.value.problems] == expected
    assert str(caught.value) == "\n".join(f"{path}: {line}" for line in expected)
    assert caught.value.source == str(path)


def test_the_readme_example_of_an_invalid_file() -> None:
    toml = """\
[[workflows]]
id = "nightly_report"
triggers = [{ cron = "61 * * * *" }]

[[workflows.steps]]
name = "pre_report"

[[workflows.steps]]
name = "report"
timeout = -1
"""
    with pytest.raises(
        DeclarationError,
        match=exact(
            "flows.toml: workflows[0].steps[1].timeout: must be > 0, got -1\n"
            "flows.toml: workflows[0].triggers[0].cron: '61 * * * *' is not a valid cron expression"
        ),
    ):
        Declarations.from_toml(toml, source="flows.toml")


@pytest.mark.parametrize(
    ("workflow", "problem"),
    [
        ({"steps": [{"name": "a"}]}, "id: required field missing"),
        ({"id": "w"}, "steps: required field missing"),
        ({"id": "w", "steps": []}, "steps: a workflow needs at least one step"),
        ({"id": "w", "steps": "collect"}, "steps: must be a list, got 'collect'"),
        ({"id": "w", "steps": {"name": "a"}}, "steps: must be a list, got {'name': 'a'}"),
        ({"id": "w", "steps": [{"name": "a"}], "owner": "ops"}, "owner: unknown field"),
        ({"id": "w", "steps": [{"name": "a", "retries": 3}]}, "steps[0].retries: unknown field"),
        (
            {"id": "w", "steps": [{"name": "start"}]},
            "steps[0].name: 'start' is reserved for the machine's own state",
        ),
        (
            {"id": "w", "steps": [{"name": "end"}]},
            "steps[0].name: 'end' is reserved for the machine's own state",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "timeout": "5"}]},
            "steps[0].timeout: must be a number, got '5'",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "timeout": True}]},
            "steps[0].timeout: must be a number, got True",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "timeout": 0}]},
            "steps[0].timeout: must be > 0, got 0",
        ),
        ({"id": "w", "steps": [{"name": 7}]}, "steps[0].name: must be a string, got 7"),
        ({"id": "w", "steps": [{"name": "a"}, {"name": "a"}]}, "steps[1].name: duplicate name 'a'"),
        (
            {"id": "w", "steps": [{"name": "a", "action": {"message_type": "a"}}]},
            "steps[0].action.kind: required field missing",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "action": {"kind": 3}}]},
            f"steps[0].action.kind: unknown action kind 3, expected one of {ACTION_KINDS}",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "action": "perform_action"}]},
            "steps[0].action: must be a table, got 'perform_action'",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "action": {"kind": "perform_action"}}]},
            "steps[0].action.message_type: required field missing",
        ),
        (
            {
                "id": "w",
                "steps": [
                    {"name": "a", "action": {"kind": "emit_event", "message_type": "e", "data": 3}}
                ],
            },
            "steps[0].action.data: must be a table of values, got 3",
        ),
        (
            {"id": "w", "steps": [{"name": "a", "action": {"kind": "execute_command"}}]},
            "steps[0].action: give exactly one of 'command' and 'callable'",
        ),
        (
            {
                "id": "w",
                "steps": [
                    {"name": "a", "action": {"kind": "execute_command", "command": ["ls", 1]}}
                ],
            },
            "steps[0].action.command[1]: must be a string, got 1",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "triggers": {"cron": "0 * * * *"}},
            "triggers: must be a list, got {'cron': '0 * * * *'}",
        ),
        (
            {
                "id": "w",
                "steps": [{"name": "a"}],
                "triggers": [{"cron": "0 * * * *", "event": "e"}],
            },
            "triggers[0]: a trigger needs exactly one of 'cron' and 'event'",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "triggers": [{}]},
            "triggers[0]: a trigger needs exactly one of 'cron' and 'event'",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "triggers": [{"cron": "* * * *"}]},
            "triggers[0].cron: '* * * *' is not a valid cron expression (it needs 5 fields)",
        ),
        (
            {
                "id": "w",
                "steps": [{"name": "a"}],
                "triggers": [{"cron": "0 * * * *", "timezone": "Europe/Atlantis"}],
            },
            "triggers[0].timezone: unknown time zone 'Europe/Atlantis'",
        ),
        (
            {
                "id": "w",
                "steps": [{"name": "a"}],
                "triggers": [{"cron": "0 * * * *", "timezone": 1}],
            },
            "triggers[0].timezone: must be a string, got 1",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "triggers": [{"event": "e", "filter": "x"}]},
            "triggers[0].filter: must be a table of values, got 'x'",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "triggers": [{"event": "e", "hour": 1}]},
            "triggers[0].hour: unknown field",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "surpass": "never"},
            f"surpass: must be one of {SURPASS}, got 'never'",
        ),
        (
            {"id": "w", "steps": [{"name": "a"}], "surpass": False},
            f"surpass: must be one of {SURPASS}, got False",
        ),
        ({"id": "w", "steps": [{"name": "a"}], "name": None}, "name: must be a string, got None"),
    ],
)
def test_each_problem_of_a_workflow_names_its_field(workflow: dict[str, Any], problem: str) -> None:
    assert problems_of(workflow, Workflow) == [problem]


@pytest.mark.parametrize(
    ("job", "problem"),
    [
        ({"id": "j"}, "give exactly one of 'command' and 'callable'"),
        ({"id": "j", "command": "ls -l"}, "command: must be a list, got 'ls -l'"),
        ({"id": "j", "command": ["x"], "retries": 1}, "retries: unknown field"),
        ({"id": "j", "command": ["x"], "wait_timeout": -1}, "wait_timeout: must be > 0, got -1"),
        (
            {"id": "j", "command": ["x"], "wait_for": {"message_type": "e", "timeout": 5}},
            "wait_for.timeout: unknown field",
        ),
        (
            {"id": "j", "command": ["x"], "wait_for": {}},
            "wait_for.message_type: required field missing",
        ),
        ({"command": ["x"]}, "id: required field missing"),
    ],
)
def test_each_problem_of_a_job_names_its_field(job: dict[str, Any], problem: str) -> None:
    assert problems_of(job, Job) == [problem]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"workflow": []}, "workflow: unknown field"),
        ({"workflows": {}}, "workflows: must be a list, got {}"),
        (
            {
                "workflows": [{"id": "a", "steps": [{"name": "s"}]}],
                "jobs": [{"id": "a", "command": ["x"]}],
            },
            "jobs[0].id: duplicate id 'a'",
        ),
    ],
)
def test_each_problem_of_declarations_names_its_field(data: dict[str, Any], problem: str) -> None:
    assert problems_of(data) == [problem]


def test_a_wrong_type_does_not_hide_the_other_problems_of_the_same_table() -> None:
    # DESIGN.md: invalid declarations fail "with every problem listed".
    assert set(
        problems_of({"id": "w", "steps": [{"name": "a", "timeout": -1, "retries": 3}]}, Workflow)
    ) == {
        "steps[0].retries: unknown field",
        "steps[0].timeout: must be > 0, got -1",
    }
    assert set(problems_of({"id": "-w", "steps": [{"name": "a", "timeout": "5"}]}, Workflow)) == {
        "id: an id must be 1-200 characters of letters, digits, '_', '.', ':' or '-'"
        " and not start with a punctuation mark, got '-w'",
        "steps[0].timeout: must be a number, got '5'",
    }
    assert set(problems_of({"id": "w", "steps": [], "surpass": "never"}, Workflow)) == {
        "steps: a workflow needs at least one step",
        f"surpass: must be one of {SURPASS}, got 'never'",
    }


def test_duplicate_ids_are_reported_beside_other_problems() -> None:
    data = {
        "workflows": [{"id": "a", "steps": [{"name": "s", "timeout": 0}]}],
        "jobs": [{"id": "a", "command": ["x"]}],
    }

    assert set(problems_of(data)) == {
        "workflows[0].steps[0].timeout: must be > 0, got 0",
        "jobs[0].id: duplicate id 'a'",
    }


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"id": "w", "steps": [1]}, "steps[0]: must be a table, got 1"),
        ({"id": "w", "steps": ["collect"]}, "steps[0]: must be a table, got 'collect'"),
    ],
)
def test_a_step_that_is_not_a_table_is_named_as_such(data: dict[str, Any], problem: str) -> None:
    assert problems_of(data, Workflow) == [problem]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "flows.json: must be a table, got [1]"),
        (None, "flows.json: must be a table, got None"),
        ("workflows", "flows.json: must be a table, got 'workflows'"),
    ],
)
def test_the_top_level_must_be_a_table(data: object, message: str) -> None:
    with pytest.raises(DeclarationError, match=exact(message)):
        Declarations.from_json(json.dumps(data), source="flows.json")


def test_a_huge_integer_timeout_is_reported_at_its_field() -> None:
    text = '{"id": "w", "steps": [{"name": "a", "timeout": 1%s}]}' % ("0" * 400)

    problems = problems_of(json.loads(text), Workflow)

    assert len(problems) == 1
    assert problems[0].startswith("steps[0].timeout: ")


# ---------------------------------------------------------------- strict scalars


def test_false_as_a_string_is_not_a_bool() -> None:
    with pytest.raises(
        InvalidInputError,
        match=exact("wait_for_completion: must be true or false, got 'false'"),
    ):
        structure_strict({"message_type": "collect", "wait_for_completion": "false"}, Subscription)


def test_a_fraction_is_not_an_int() -> None:
    data = {
        "id": "w",
        "steps": [{"name": "a"}],
        "triggers": [{"cron": "0 * * * *", "catch_up_limit": 1.9}],
    }

    assert problems_of(data, Workflow) == [
        "triggers[0].catch_up_limit: must be an integer, got 1.9"
    ]
    with pytest.raises(InvalidInputError, match=exact("current: must be an integer, got 1.9")):
        structure_strict({"name": "eu-west-1", "current": 1.9, "total": 2}, ProgressLeaf)


def test_an_int_is_a_number_of_seconds() -> None:
    workflow = Workflow.from_dict({"id": "w", "steps": [{"name": "a", "timeout": 5}]})

    assert workflow.steps[0].timeout == 5


# ---------------------------------------------------------------- syntax, files


def test_invalid_toml_syntax_names_the_source_and_line() -> None:
    text = '[[workflows]]\nid = "a"\nsteps = [{ name = "x" name = "y" }]\n'

    with pytest.raises(
        DeclarationError, match=r"^flows\.toml: invalid TOML: .*line 3.*$"
    ) as caught:
        Declarations.from_toml(text, source="flows.toml")
    assert len(caught.value.problems) == 1


def test_invalid_json_syntax_names_the_source_and_position() -> None:
    with pytest.raises(
        DeclarationError,
        match=exact("flows.json: invalid JSON: Expecting value: line 1 column 16 (char 15)"),
    ):
        Declarations.from_json('{"workflows": [}', source="flows.json")


def test_without_a_source_errors_have_no_prefix() -> None:
    with pytest.raises(
        DeclarationError, match=exact("invalid JSON: Expecting value: line 1 column 1 (char 0)")
    ):
        Declarations.from_json("")


@pytest.mark.parametrize("suffix", [".yaml", ".txt", ""])
def test_an_unknown_file_suffix_is_rejected(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"flows{suffix}"
    path.write_text(JSON, encoding="utf-8")

    with pytest.raises(
        DeclarationError,
        match=exact(f"{path}: unknown file type {suffix!r}: use .toml or .json"),
    ):
        Declarations.from_file(path)


def test_a_missing_file_is_a_declaration_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"

    with pytest.raises(
        DeclarationError,
        match=exact(
            f"{path}: cannot read the file: [Errno 2] No such file or directory: {str(path)!r}"
        ),
    ):
        Declarations.from_file(path)


def test_a_file_that_is_not_utf8_is_a_declaration_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[workflows]]\nid = "caf\xe9"\n')

    with pytest.raises(
        DeclarationError, match=rf"^{re.escape(str(path))}: cannot read the file: .*utf-8.*$"
    ):
        Declarations.from_file(path)


def test_the_file_name_prefixes_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "flows.toml"
    path.write_text('[[workflows]]\nid = "w"\nname = ""\nsteps = []\n', encoding="utf-8")

    with pytest.raises(
        DeclarationError,
        match=exact(
            f"{path}: workflows[0].name: must be a non-empty string, got ''\n"
            f"{path}: workflows[0].steps: a workflow needs at least one step"
        ),
    ):
        Declarations.from_file(path)


# ---------------------------------------------------------------- no code from data files


def test_a_callable_in_a_data_file_is_only_a_name_and_nothing_is_imported() -> None:
    module = "phasebus_tests_never_imported"
    workflow = Workflow.from_dict(
        {
            "id": "w",
            "steps": [
                {"name": "a", "action": {"kind": "execute_command", "callable": "os.system"}},
                {"name": "b", "action": {"kind": "execute_command", "callable": f"{module}.run"}},
            ],
        }
    )

    assert workflow.steps[0].action == ExecuteCommand(callable="os.system")
    assert workflow.steps[1].action == ExecuteCommand(callable=f"{module}.run")
    assert module not in sys.modules


@pytest.mark.parametrize(
    "key", ["module", "import", "function", "callback", "on_enter", "before", "conditions"]
)
def test_no_field_of_an_action_takes_code(key: str) -> None:
    action = {"kind": "execute_command", "callable": "report", key: "os.system"}

    assert problems_of({"id": "w", "steps": [{"name": "a", "action": action}]}, Workflow) == [
        f"steps[0].action.{key}: unknown field"
    ]


@pytest.mark.parametrize(
    "key", ["on_enter", "on_exit", "before", "after", "prepare", "conditions", "unless", "callback"]
)
def test_no_field_of_a_step_or_workflow_takes_a_callback(key: str) -> None:
    assert problems_of({"id": "w", "steps": [{"name": "a", key: "os.system"}]}, Workflow) == [
        f"steps[0].{key}: unknown field"
    ]
    assert problems_of({"id": "w", "steps": [{"name": "a"}], key: "os.system"}, Workflow) == [
        f"{key}: unknown field"
    ]


def test_problems_are_values_with_a_path_and_a_message() -> None:
    with pytest.raises(DeclarationError) as caught:
        Workflow.from_dict({"id": "w", "steps": [{"name": "a", "timeout": -1}]})

    assert caught.value.problems == (Problem("steps[0].timeout", "must be > 0, got -1"),)
    assert caught.value.source is None


def test_unstructured_declarations_are_plain_json_data() -> None:
    from engine import CronTrigger, EmitEvent, Step, Workflow, unstructure_declaration

    workflow = Workflow("w", [Step("a", EmitEvent("x"))], triggers=[CronTrigger("0 * * * *")])
    data = unstructure_declaration(workflow)
    assert data == {
        "id": "w",
        "steps": [
            {
                "name": "a",
                "action": {"kind": "emit_event", "message_type": "x", "data": {}},
                "timeout": 10.0,
                "on_error": "continue",
                "phase": None,
            }
        ],
        "name": "w",
        "triggers": [
            {"cron": "0 * * * *", "timezone": "UTC", "catch_up": "latest", "catch_up_limit": 10}
        ],
        "surpass": "wait",
        "description": "",
    }
    assert type(data["surpass"]) is str
    assert Workflow.from_dict(data) == workflow
