"""Wire messages: reading Resoto's protocol strictly, writing it back unchanged."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from engine import (
    Action,
    ActionAbort,
    ActionDone,
    ActionError,
    ActionInfo,
    ActionProgress,
    Event,
    Kind,
    MessageError,
    Problem,
    ProgressLeaf,
    ProgressTree,
    message_from_json,
)
from engine._messages import answer_for

KINDS = (
    "'event', 'action', 'action_abort', 'action_done', 'action_error', 'action_info',"
    " 'action_progress'"
)

# The example lines of PROTOCOL.md, "Messages", as a Resoto component sends them.
PROTOCOL_LINES = [
    '{"kind":"event","message_type":"post_collect","data":{"workflow":"collect_and_cleanup","task":"<task id>"}}',  # noqa: E501
    '{"kind":"action","message_type":"collect","data":{"task":"<task id>","step":"collect"}}',
    '{"kind":"action_abort","message_type":"collect","data":{"task":"<task id>","step":"collect"}}',
    '{"kind":"action_done","message_type":"collect","data":{"task":"<task id>","step":"collect"}}',
    '{"kind":"action_error","message_type":"collect","data":{"task":"<task id>","step":"collect","error":"Failed to collect: ..."}}',  # noqa: E501
    '{"kind":"action_info","message_type":"collect","data":{"task":"<task id>","step":"collect","level":"error","message":"[aws:123] Access Denied"}}',  # noqa: E501
    '{"kind":"action_progress","message_type":"collect","data":{"task":"<task id>","step":"collect","progress":{"kind":"progress","name":"eu-west-1","path":["aws","123"],"current":1,"total":2},"at":"2023-11-04T12:33:40Z"}}',  # noqa: E501
]

EXPECTED = [
    Event("post_collect", {"workflow": "collect_and_cleanup", "task": "<task id>"}),
    Action("collect", "<task id>", "collect"),
    ActionAbort("collect", "<task id>", "collect"),
    ActionDone("collect", "<task id>", "collect"),
    ActionError("collect", "<task id>", "collect", error="Failed to collect: ..."),
    ActionInfo("collect", "<task id>", "collect", level="error", message="[aws:123] Access Denied"),
    ActionProgress(
        "collect",
        "<task id>",
        "collect",
        progress=ProgressLeaf("eu-west-1", 1, 2, path=("aws", "123")),
        at="2023-11-04T12:33:40Z",
    ),
]


def exact(message: str) -> str:
    """Return a pattern that matches ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def step_message(kind: str, **data: Any) -> dict[str, Any]:
    """Return the wire form of a message about step ``collect`` of task ``t1``."""
    return {
        "kind": kind,
        "message_type": "collect",
        "data": {"task": "t1", "step": "collect", **data},
    }


def progress_message(progress: Any) -> dict[str, Any]:
    return step_message("action_progress", progress=progress)


# ---------------------------------------------------------------- the protocol's examples


@pytest.mark.parametrize(("line", "expected"), list(zip(PROTOCOL_LINES, EXPECTED, strict=True)))
def test_every_kind_parses_from_the_protocol_example(line: str, expected: Any) -> None:
    message = message_from_json(json.loads(line))

    assert message == expected
    assert message.kind == json.loads(line)["kind"]


@pytest.mark.parametrize("line", PROTOCOL_LINES)
def test_every_protocol_example_is_written_back_unchanged(line: str) -> None:
    wire = json.loads(line)

    assert message_from_json(wire).to_json() == wire


@pytest.mark.parametrize("message", EXPECTED)
def test_to_json_reads_back_equal(message: Any) -> None:
    assert message_from_json(json.loads(json.dumps(message.to_json()))) == message


def test_the_examples_cover_every_kind() -> None:
    assert {json.loads(line)["kind"] for line in PROTOCOL_LINES} == {kind.value for kind in Kind}


# ---------------------------------------------------------------- unknown data is kept


def test_unknown_data_fields_are_kept_in_extra_and_echoed() -> None:
    timing = {"collect": {"started": "2023-11-04T12:00:00Z", "duration": 31.5}}
    wire = step_message("action", timing=timing, workflow="collect_and_cleanup")

    action = message_from_json(wire)

    assert isinstance(action, Action)
    assert action.extra == {"timing": timing, "workflow": "collect_and_cleanup"}
    assert action.to_json() == wire


def test_an_answer_echoes_the_data_of_its_action() -> None:
    action = message_from_json(step_message("action", timing={"last": 12}))
    assert isinstance(action, Action)

    answer = answer_for(action, ActionDone, "resoto.worker")

    assert answer.to_json() == {
        "kind": "action_done",
        "message_type": "collect",
        "data": {
            "task": "t1",
            "step": "collect",
            "timing": {"last": 12},
            "subscriber_id": "resoto.worker",
        },
    }


def test_the_server_added_fields_of_an_answer_are_read() -> None:
    wire = step_message(
        "action_done", subscriber_id="resoto.worker", received_at="2023-11-04T12:33:40Z"
    )

    answer = message_from_json(wire)

    assert isinstance(answer, ActionDone)
    assert answer.subscriber_id == "resoto.worker"
    assert answer.extra == {"received_at": "2023-11-04T12:33:40Z"}
    assert answer.to_json() == wire


def test_routing_fields_are_not_taken_from_extra() -> None:
    done = ActionDone("collect", "t1", "collect", extra={"task": "other", "step": "other"})

    assert done.to_json()["data"] == {"task": "t1", "step": "collect"}


def test_an_event_keeps_all_its_data() -> None:
    wire = {
        "kind": "event",
        "message_type": "task_end",
        "data": {"task_id": "t1", "nested": {"a": [1]}},
    }

    event = message_from_json(wire)

    assert event == Event("task_end", {"task_id": "t1", "nested": {"a": [1]}})
    assert event.to_json() == wire


def test_an_event_without_data_has_empty_data() -> None:
    event = message_from_json({"kind": "event", "message_type": "start_collect_workflow"})

    assert event == Event("start_collect_workflow")
    assert event.to_json() == {
        "kind": "event",
        "message_type": "start_collect_workflow",
        "data": {},
    }


# ---------------------------------------------------------------- action_error, action_info


@pytest.mark.parametrize("data", [{}, {"error": None}])
def test_an_action_error_without_error_means_n_a(data: dict[str, Any]) -> None:
    answer = message_from_json(step_message("action_error", **data))

    assert isinstance(answer, ActionError)
    assert answer.error == "n/a"
    assert answer.to_json()["data"]["error"] == "n/a"


def test_an_action_error_built_in_python_defaults_to_n_a() -> None:
    assert ActionError("collect", "t1", "collect").error == "n/a"


def test_an_action_info_longer_than_500_characters_is_cut() -> None:
    text = "".join(f"{i:04d}" for i in range(200))  # 800 characters, all different

    info = message_from_json(step_message("action_info", level="warn", message=text))

    assert isinstance(info, ActionInfo)
    assert len(info.message) == 500
    assert info.message == text[:497] + "..."
    assert info.to_json()["data"]["message"] == info.message


@pytest.mark.parametrize("length", [0, 1, 499, 500])
def test_an_action_info_of_at_most_500_characters_is_kept_whole(length: int) -> None:
    text = "x" * length

    assert ActionInfo("collect", "t1", "collect", message=text).message == text


def test_an_action_info_defaults_to_level_info() -> None:
    info = message_from_json(step_message("action_info", message="started"))

    assert isinstance(info, ActionInfo)
    assert info.level == "info"


# ---------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (step_message("action_done", task=1), "data.task: must be a string, got 1"),
        (step_message("action_done", step=None), "data.step: must be a string, got None"),
        (
            step_message("action_done", subscriber_id=5),
            "data.subscriber_id: must be a string, got 5",
        ),
        (step_message("action_error", error=5), "data.error: must be a string, got 5"),
        (step_message("action_info", message=["x"]), "data.message: must be a string, got ['x']"),
        (step_message("action_info", level=3), "data.level: must be a string, got 3"),
        (
            {"kind": "action", "message_type": "collect", "data": {"task": "t1"}},
            "data.step: required field missing",
        ),
        (
            {"kind": "action_done", "message_type": "collect"},
            "data.task: required field missing\ndata.step: required field missing",
        ),
        (
            {"kind": "teleport", "message_type": "collect", "data": {}},
            f"kind: unknown kind 'teleport', expected one of {KINDS}",
        ),
        (
            {"kind": ["event"], "message_type": "collect", "data": {}},
            f"kind: unknown kind ['event'], expected one of {KINDS}",
        ),
        ({"message_type": "collect", "data": {}}, "kind: required field missing"),
        ({"kind": "event", "data": {}}, "message_type: required field missing"),
        ({"kind": "event", "message_type": ""}, "message_type: must be a non-empty string, got ''"),
        ({"kind": "event", "message_type": 3}, "message_type: must be a non-empty string, got 3"),
        ({}, "kind: required field missing\nmessage_type: required field missing"),
        (
            {"kind": "event", "message_type": "x", "data": [1]},
            "data: must be a JSON object, got [1]",
        ),
        (
            {"kind": "event", "message_type": "x", "data": "{}"},
            "data: must be a JSON object, got '{}'",
        ),
        (
            {"kind": "event", "message_type": "x", "data": None},
            "data: must be a JSON object, got None",
        ),
        ({"kind": "event", "message_type": "x", "data": {}, "task": "t1"}, "task: unknown field"),
        ([1], "a message must be a JSON object, got [1]"),
        ("event", "a message must be a JSON object, got 'event'"),
        (None, "a message must be a JSON object, got None"),
    ],
)
def test_a_message_that_breaks_the_protocol_is_rejected_naming_the_field(
    wire: Any, message: str
) -> None:
    with pytest.raises(MessageError, match=exact(message)):
        message_from_json(wire)


def test_every_problem_at_the_top_level_is_listed() -> None:
    with pytest.raises(MessageError) as caught:
        message_from_json({"kind": "teleport", "message_type": "", "data": [], "extra": 1})

    assert caught.value.problems == (
        Problem("extra", "unknown field"),
        Problem("kind", f"unknown kind 'teleport', expected one of {KINDS}"),
        Problem("message_type", "must be a non-empty string, got ''"),
        Problem("data", "must be a JSON object, got []"),
    )
    assert isinstance(caught.value, ValueError)


def test_a_long_value_is_shortened_in_the_error() -> None:
    with pytest.raises(
        MessageError, match=exact(f"data.task: must be a string, got [{'0, ' * 18}0,...")
    ):
        message_from_json(step_message("action_done", task=[0] * 100))


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize(
    ("progress", "message"),
    [
        (
            {"kind": "progress", "name": "n", "current": 1.9, "total": 2},
            "data.progress.current: must be an integer, got 1.9",
        ),
        (
            {"kind": "progress", "name": "n", "current": True, "total": 2},
            "data.progress.current: must be an integer, got True",
        ),
        (
            {"kind": "progress", "name": "n", "current": 1, "total": "2"},
            "data.progress.total: must be an integer, got '2'",
        ),
        (
            {"kind": "progress", "name": "n", "current": 0, "total": 0},
            "data.progress.total: must be > 0, got 0",
        ),
        (
            {"kind": "progress", "name": "n", "current": 3, "total": 2},
            "data.progress.current: must be between 0 and total (2), got 3",
        ),
        (
            {"kind": "progress", "name": "n", "current": -1, "total": 2},
            "data.progress.current: must be between 0 and total (2), got -1",
        ),
        (
            {"kind": "progress", "name": "n", "current": 1},
            "data.progress.total: required field missing",
        ),
        (
            {"kind": "progress", "name": "n", "current": 1, "total": 2, "eta": 5},
            "data.progress.eta: unknown field",
        ),
        (
            {"kind": "progress", "name": "n", "current": 1, "total": 2, "path": "aws"},
            "data.progress.path: must be a list, got 'aws'",
        ),
        (
            {"kind": "progress", "name": "n", "current": 1, "total": 2, "path": ["aws", 123]},
            "data.progress.path[1]: must be a string, got 123",
        ),
        (
            {"kind": "bar", "name": "n"},
            "data.progress.kind: unknown progress kind 'bar', expected one of 'progress', 'tree'",
        ),
        ({"name": "n", "current": 1, "total": 2}, "data.progress.kind: required field missing"),
        ([1, 2], "data.progress: must be a table, got [1, 2]"),
        (
            {
                "kind": "tree",
                "name": "n",
                "parts": [{"kind": "progress", "name": "a", "current": 1.5, "total": 2}],
            },
            "data.progress.parts[0].current: must be an integer, got 1.5",
        ),
    ],
)
def test_invalid_progress_is_rejected_naming_the_field(progress: Any, message: str) -> None:
    with pytest.raises(MessageError, match=exact(message)):
        message_from_json(progress_message(progress))


def test_action_progress_needs_a_progress() -> None:
    with pytest.raises(MessageError, match=exact("data.progress: required field missing")):
        message_from_json(step_message("action_progress"))


def test_a_progress_tree_reads_and_writes_back() -> None:
    tree = {
        "kind": "tree",
        "name": "collect",
        "path": ["aws"],
        "parts": [
            {"kind": "progress", "name": "eu-west-1", "current": 1, "total": 4},
            {
                "kind": "tree",
                "name": "us",
                "parts": [{"kind": "progress", "name": "us-east-1", "current": 2, "total": 2}],
            },
        ],
    }

    message = message_from_json(progress_message(tree))

    assert isinstance(message, ActionProgress)
    assert message.progress == ProgressTree(
        "collect",
        parts=(
            ProgressLeaf("eu-west-1", 1, 4),
            ProgressTree("us", parts=(ProgressLeaf("us-east-1", 2, 2),)),
        ),
        path=("aws",),
    )
    assert message.to_json()["data"]["progress"] == tree


def test_a_leaf_fraction_is_current_over_total() -> None:
    assert ProgressLeaf("n", 0, 4).fraction == 0.0
    assert ProgressLeaf("n", 1, 4).fraction == 0.25
    assert ProgressLeaf("n", 4, 4).fraction == 1.0


def test_a_tree_fraction_is_the_mean_of_its_parts() -> None:
    tree = ProgressTree(
        "collect",
        parts=(
            ProgressLeaf("aws", 1, 2),  # 0.5
            ProgressLeaf("gcp", 10, 10),  # 1.0
            ProgressTree("azure", parts=(ProgressLeaf("a", 0, 3), ProgressLeaf("b", 1, 1))),  # 0.5
            ProgressTree("k8s"),  # 0.0
        ),
    )

    assert tree.fraction == pytest.approx((0.5 + 1.0 + 0.5 + 0.0) / 4)


def test_a_tree_without_parts_has_done_nothing() -> None:
    assert ProgressTree("empty").fraction == 0.0


@pytest.mark.parametrize(
    ("current", "total", "message"),
    [
        (1, 0, "total: must be > 0, got 0\ncurrent: must be between 0 and total (0), got 1"),
        (5, 4, "current: must be between 0 and total (4), got 5"),
        (-1, 4, "current: must be between 0 and total (4), got -1"),
    ],
)
def test_a_leaf_built_in_python_is_checked(current: int, total: int, message: str) -> None:
    with pytest.raises(MessageError, match=exact(message)):
        ProgressLeaf("n", current, total)
