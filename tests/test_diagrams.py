from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from engine import (
    CronTrigger,
    EmitEvent,
    EventTrigger,
    ExecuteCommand,
    OnError,
    Step,
    Surpass,
    WaitForEvent,
    Workflow,
)
from engine._diagrams import (
    GraphvizNotFound,
    diagram,
    dot_diagram,
    mermaid_diagram,
    svg_diagram,
)
from machines import BUILTIN_WORKFLOWS, PHASES

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"

_STATE = re.compile(r'^\s*state "(?P<label>[^"]*)" as (?P<id>\S+)$')
_GROUP_OPEN = re.compile(r"^\s*state (?P<id>\S+) \{$")
_EDGE = re.compile(r"^\s*(?P<src>\S+) --> (?P<dst>\S+)(?:: (?P<label>.*))?$")


def parse(text: str) -> tuple[dict[str, str], dict[str, str | None], list[tuple[str, str, str]]]:
    """Read a Mermaid state diagram: labels by id, each state's group, and the edges."""
    labels: dict[str, str] = {}
    group_of: dict[str, str | None] = {}
    edges: list[tuple[str, str, str]] = []
    stack: list[str] = []
    for line in text.splitlines():
        if match := _GROUP_OPEN.match(line):
            stack.append(match["id"])
        elif line.strip() == "}":
            stack.pop()
        elif match := _STATE.match(line):
            labels[match["id"]] = match["label"]
            group_of[match["id"]] = stack[-1] if stack else None
        elif match := _EDGE.match(line):
            edges.append((match["src"], match["dst"], match["label"] or ""))
    assert not stack, "unbalanced groups"
    return labels, group_of, edges


def test_collect_and_cleanup_draws_every_step_inside_its_phase_group() -> None:
    text = (DIAGRAMS / "collect_and_cleanup.mmd").read_text(encoding="utf-8")
    labels, group_of, _ = parse(text)
    assert text.startswith("---\ntitle: collect_and_cleanup\n---\nstateDiagram-v2\n")
    assert len(PHASES) == 4
    for phase, steps in PHASES.items():
        assert labels[phase] == f"{phase} phase"
        assert group_of[phase] is None
        for step in steps:
            assert group_of[f"{phase}__{step}"] == phase
            assert labels[f"{phase}__{step}"].split("<br/>")[0] == step
    steps = [i for i, group in group_of.items() if group is not None]
    assert len(steps) == 13


@pytest.mark.parametrize("workflow_id", sorted(BUILTIN_WORKFLOWS))
def test_committed_diagrams_are_what_the_machines_draw(workflow_id: str) -> None:
    committed = (DIAGRAMS / f"{workflow_id}.mmd").read_text(encoding="utf-8")
    assert committed == mermaid_diagram(BUILTIN_WORKFLOWS[workflow_id]), (
        "regenerate with: phasebus diagram --out diagrams"
    )


def test_states_show_action_kind_timeout_and_error_behaviour() -> None:
    labels, _, _ = parse(mermaid_diagram(BUILTIN_WORKFLOWS["metrics"]))
    assert labels["generate_metrics__generate_metrics"] == (
        "generate_metrics<br/>perform_action<br/>timeout 10s, on error continue"
    )


def test_start_shows_triggers_and_surpass_behaviour() -> None:
    labels, _, edges = parse(mermaid_diagram(BUILTIN_WORKFLOWS["collect_and_cleanup"]))
    assert labels["start"].split("<br/>") == [
        "start",
        "cron 0 * * * * (UTC)",
        "event start_collect_and_cleanup_workflow",
        "surpass: wait (one more run waits for the active one)",
    ]
    assert ("[*]", "start", "") in edges
    assert ("end", "[*]", "") in edges


def _workflow(**overrides: object) -> Workflow:
    fields: dict[str, object] = {
        "id": "deploy",
        "steps": (
            Step("build", phase="prepare"),
            Step("check", phase="prepare", on_error=OnError.STOP, timeout=2.5),
            Step("ship"),
        ),
        "surpass": Surpass.REPLACE,
    }
    fields.update(overrides)
    return Workflow(**fields)  # type: ignore[arg-type]


def test_error_paths_and_outcomes_are_labelled() -> None:
    _, _, edges = parse(mermaid_diagram(_workflow()))
    assert ("prepare__build", "prepare__check", "done or error → continue") in edges
    assert ("prepare__check", "end", "error → stop (task failed)") in edges
    assert ("prepare__check", "ship", "done") in edges
    # transitions' diagrams join the labels of edges between the same two states
    assert (
        "ship",
        "end",
        "done or error → continue (task done) | stop (task stopped) | replace (task replaced)"
        " | fail (task failed)",
    ) in edges


def test_stop_and_replace_leave_from_whole_groups_and_from_loose_steps() -> None:
    _, _, edges = parse(mermaid_diagram(_workflow()))
    stops = sorted(src for src, dst, label in edges if "stop (task stopped)" in label)
    assert stops == ["prepare", "ship", "start"]
    assert (
        "prepare",
        "end",
        "stop (task stopped) | replace (task replaced) | fail (task failed)",
    ) in edges


def test_surpass_and_triggers_of_a_user_workflow() -> None:
    workflow = _workflow(
        triggers=(
            CronTrigger("30 2 * * 1", "Europe/Berlin"),
            EventTrigger("post_collect", {"cloud": "aws"}),
        )
    )
    labels, _, _ = parse(mermaid_diagram(workflow))
    assert labels["start"].split("<br/>")[1:] == [
        "cron 30 2 * * 1 (Europe/Berlin)",
        "event post_collect {cloud='aws'}",
        "event start_deploy_workflow",
        "surpass: replace (a trigger stops the run and starts anew)",
    ]


def test_every_action_kind_is_described() -> None:
    workflow = Workflow(
        "kinds",
        (
            Step("announce", EmitEvent("deployed", {"env": "prod"})),
            Step("await", WaitForEvent("approved", {"by": "ops"}), timeout=600),
            Step("run", ExecuteCommand(("echo", 'say "hi"'))),
            Step("call", ExecuteCommand(callable="notify")),
            Step("ask", action=WaitForEvent("other")),
            Step("act", action=EmitEvent("act")),
        ),
    )
    labels, _, _ = parse(mermaid_diagram(workflow))
    assert labels["announce"].split("<br/>")[1] == "emit_event deployed {env='prod'}"
    assert labels["await"].split("<br/>")[1:] == [
        "wait_for_event approved {by='ops'}",
        "timeout 600s, on error continue",
    ]
    assert labels["run"].split("<br/>")[1] == "execute_command echo say #quot;hi#quot;"
    assert labels["call"].split("<br/>")[1] == "execute_command notify()"
    assert labels["ask"].split("<br/>")[1] == "wait_for_event other"
    assert labels["act"].split("<br/>")[1] == "emit_event"


def test_ids_are_mermaid_safe_unique_and_keep_the_names_in_labels() -> None:
    workflow = Workflow(
        "odd",
        (
            Step("a-b", phase="end"),
            Step("a:b", phase="end"),
            Step("default.step"),
            Step("start_", phase="x.y"),
            Step("end_"),
        ),
    )
    labels, group_of, edges = parse(mermaid_diagram(workflow))
    for ident in labels:
        assert re.fullmatch(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*(__[A-Za-z0-9]+(_[A-Za-z0-9]+)*)?", ident)
        assert not ident.lower().startswith(("default", "acc"))
    assert labels["end"] == "end"
    assert labels["end_2"] == "end phase"
    assert {labels[i].split("<br/>")[0] for i, g in group_of.items() if g == "end_2"} == {
        "a-b",
        "a:b",
    }
    assert labels["s_default_step"].startswith("default.step<br/>")
    assert group_of["x_y__start"] == "x_y"
    assert any(
        (src, dst) == ("end_3", "end") and label.startswith("done or error → continue (task done)")
        for src, dst, label in edges
    )


def test_output_is_deterministic() -> None:
    workflow = BUILTIN_WORKFLOWS["collect_and_cleanup"]
    assert mermaid_diagram(workflow) == mermaid_diagram(workflow)
    assert dot_diagram(workflow) == dot_diagram(workflow)


def test_dot_draws_phases_as_clusters_with_labels_mid_edge() -> None:
    text = dot_diagram(BUILTIN_WORKFLOWS["collect_and_cleanup"])
    assert text.startswith("digraph collect_and_cleanup {")
    for phase in PHASES:
        assert f"subgraph cluster_{phase} {{" in text
    assert "compound=true" in text
    assert "headlabel" not in text
    stop = (
        '[label="stop (task stopped) | replace (task replaced) | fail (task failed)"'
        " ltail=cluster_collect]"
    )
    assert f"collect -> end {stop}" in text
    assert 'label="pre_collect\\lperform_action\\ltimeout 10s, on error continue\\l"' in text


def test_diagram_dispatches_on_format() -> None:
    workflow = BUILTIN_WORKFLOWS["metrics"]
    assert diagram(workflow) == mermaid_diagram(workflow)
    assert diagram(workflow, "dot") == dot_diagram(workflow)
    with pytest.raises(ValueError, match=r"^format must be one of mermaid, dot, svg, got 'png'$"):
        diagram(workflow, "png")  # type: ignore[arg-type]


def test_svg_says_clearly_when_dot_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        GraphvizNotFound, match=r"^SVG needs Graphviz's 'dot' program, which is not on the PATH"
    ):
        svg_diagram(BUILTIN_WORKFLOWS["metrics"])


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_svg_is_drawn_by_dot() -> None:
    svg = svg_diagram(BUILTIN_WORKFLOWS["metrics"])
    assert "<svg" in svg
    assert "generate_metrics phase" in svg
