"""The state machine drawn as SVG by phasebus itself (engine/_svg.py)."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

from engine import Step, Workflow
from engine._svg import state_svg
from machines import COLLECT_AND_CLEANUP

SVG = "{http://www.w3.org/2000/svg}"


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def states(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "state" in g.get("class", "").split()]


def box(group: ET.Element) -> tuple[float, float]:
    rect = group.find(f"{SVG}rect")
    assert rect is not None
    return float(rect.get("y", "0")), float(rect.get("y", "0")) + float(rect.get("height", "0"))


def test_every_state_is_one_element_with_a_stable_id_in_machine_order() -> None:
    root = parse(state_svg(COLLECT_AND_CLEANUP))
    names = [g.get("data-state") for g in states(root)]
    assert names == ["start", *(step.name for step in COLLECT_AND_CLEANUP.steps), "end"]
    ids = [g.get("id") for g in states(root)]
    assert len(set(ids)) == len(ids)
    assert ids[1] == "pb-collect_and_cleanup-state-pre_collect"
    # each state has an empty mark for the console to fill with words
    for group in states(root):
        mark = [t for t in group.iter(f"{SVG}text") if t.get("class") == "mark"]
        assert len(mark) == 1
        assert not (mark[0].text)
        assert not ""
    # boxes go down the page in order, without overlapping
    spans = [box(g) for g in states(root)]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))


def test_phases_are_groups_around_their_steps() -> None:
    root = parse(state_svg(COLLECT_AND_CLEANUP))
    groups = {g.get("data-phase"): g for g in root.iter(f"{SVG}g") if g.get("class") == "phase"}
    assert list(groups) == ["collect", "cleanup_plan", "cleanup", "generate_metrics"]
    by_name = {g.get("data-state"): g for g in states(root)}
    for step in COLLECT_AND_CLEANUP.steps:
        top, bottom = box(groups[step.phase])
        inner_top, inner_bottom = box(by_name[step.name])
        assert top < inner_top < inner_bottom < bottom, step.name
    titles = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "phase-title"]
    assert titles == [
        "collect phase",
        "cleanup_plan phase",
        "cleanup phase",
        "generate_metrics phase",
    ]


def test_edges_follow_the_machine_with_stop_on_error_to_end() -> None:
    workflow = Workflow(
        id="guarded",
        steps=[Step("check", on_error="stop"), Step("act"), Step("last", on_error="stop")],
    )
    root = parse(state_svg(workflow))
    edges = [p for p in root.iter(f"{SVG}path") if "edge" in p.get("class", "").split()]
    labels = [(p.get("class"), p.findtext(f"{SVG}title")) for p in edges]
    assert labels == [
        ("edge", "start"),
        ("edge error-edge", "error: stop"),
        ("edge", "done"),
        ("edge", "done or error: continue"),
        ("edge error-edge", "error: stop"),  # even next to end it is drawn apart from "done"
        ("edge", "done"),
    ]
    footnotes = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "footnote"]
    assert footnotes == [
        "stop (task stopped): from any state to end",
        "replace (task replaced): from any state to end",
    ]
    # steps without a phase sit outside any group
    assert not [g for g in root.iter(f"{SVG}g") if g.get("class") == "phase"]


def test_names_are_escaped_and_ids_kept_apart() -> None:
    workflow = Workflow(id="odd.names:1", steps=[Step("a.b"), Step("a:b"), Step("x-y")])
    text = state_svg(workflow)
    root = parse(text)
    ids = [g.get("id") for g in states(root)]
    assert ids == [
        "pb-odd-names-1-state-start",
        "pb-odd-names-1-state-a-b",
        "pb-odd-names-1-state-a-b-2",
        "pb-odd-names-1-state-x-y",
        "pb-odd-names-1-state-end",
    ]
    assert root.get("data-workflow") == "odd.names:1"
    markers = [m.get("id") for m in root.iter(f"{SVG}marker")]
    assert markers == ["pb-odd-names-1-arrow"]


def test_the_drawing_depends_on_the_workflow_only() -> None:
    assert state_svg(COLLECT_AND_CLEANUP) == state_svg(COLLECT_AND_CLEANUP)
    root = parse(state_svg(COLLECT_AND_CLEANUP))
    assert root.get("role") == "img"
    assert root.findtext(f"{SVG}title") == "state machine of workflow collect_and_cleanup"
