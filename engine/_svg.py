"""A workflow's state machine drawn as SVG by phasebus itself, for the web console.

The drawing is the machine that :func:`~engine._machine.machine_spec` describes,
the same one ``phasebus diagram`` draws: ``start``, the steps in order with each
phase as a titled group around its steps, and ``end``. Each ``advance``
transition to the next state is an arrow; a step whose ``on_error`` is ``stop``
has an arrow to ``end`` along the right margin; ``stop`` and ``replace``, which
leave from every state, are named once under ``end``.

Every state is a ``<g class="state">`` with ``data-state`` (the state's name),
a stable ``id`` (``pb-<workflow>-state-<state>``, sanitised, so that several
drawings can share a page) and an empty
``<text class="mark">`` that the console fills with a word and a symbol
(``▶ now``, ``✓ done``, ...), so that colour is never the only signal. The
console lights a state by adding a class (``current``, ``done``, ``error``,
``timed_out``, ``released``, ``stopped``) to its group. Phase groups carry
``data-phase``.

The layout is one column, so it reads on a narrow screen; text widths are
estimated from the number of characters (no fonts are measured). The output
depends on nothing but the workflow.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

import attrs

from ._definitions import Step, Workflow, action_kind
from ._machine import END, START, Outcome, machine_spec

# Geometry, in SVG user units (pixels at scale 1).
_MARGIN = 12
_CHAR = 7.2  # estimated width of a character of the 13 px sans-serif labels
_SMALL_CHAR = 6.0  # the same for the 11 px detail lines
_STEP_HEIGHT = 44
_END_HEIGHT = 30
_GAP = 18  # between consecutive boxes: room for an arrow
_PHASE_HEAD = 24  # a phase group's title band
_PHASE_PAD = 10
_MARK_WIDTH = 88  # room on the right of each box for its mark
_RIGHT_LANE = 44  # room for the arrows of on-error-stop steps to ``end``
_MIN_BOX = 200


# Plain defaults, so that the file reads on its own; ``:where`` keeps their specificity
# at zero, so the console's style sheet wins.
_STYLE = (
    ":where(svg.machine){font-family:sans-serif;font-size:13px}"
    ":where(svg.machine) rect{fill:#fff;stroke:#555}"
    ":where(svg.machine .phase) rect{fill:#f4f6fa;stroke:#99a}"
    ":where(svg.machine) .edge{fill:none;stroke:#555}"
    ":where(svg.machine) .arrowhead{fill:#555}"
    ":where(svg.machine) .detail,:where(svg.machine) .edge-label,"
    ":where(svg.machine) .footnote{font-size:11px;fill:#444}"
    ":where(svg.machine) .phase-title{font-weight:bold}"
)


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "s"


def _ident(prefix: str, name: str, taken: set[str]) -> str:
    base = f"{prefix}-state-{_clean(name)}"
    ident, count = base, 1
    while ident in taken:
        count += 1
        ident = f"{base}-{count}"
    taken.add(ident)
    return ident


def _detail(step: Step) -> str:
    action = action_kind(step.action)
    if step.message_type != step.name:
        action = f"{action} {step.message_type}"
    return f"{action} · {step.timeout:g}s · on error {step.on_error.value}"


@attrs.frozen
class _Box:
    name: str
    ident: str
    y: float
    height: float
    lines: tuple[str, ...]
    kind: str  # "start", "step" or "end"


@attrs.frozen
class _Group:
    phase: str
    y: float
    height: float


def state_svg(workflow: Workflow) -> str:
    """Return the workflow's state machine as a standalone SVG document (UTF-8 text)."""
    _, transitions = machine_spec(workflow)
    prefix = f"pb-{_clean(workflow.id)}"
    taken: set[str] = set()
    detail_width = max((len(_detail(step)) for step in workflow.steps), default=0) * _SMALL_CHAR
    name_width = max((len(step.name) for step in workflow.steps), default=0) * _CHAR
    box_width = max(_MIN_BOX, detail_width + 16, name_width + 16) + _MARK_WIDTH
    left = _MARGIN + _PHASE_PAD
    width = left + box_width + _PHASE_PAD + _RIGHT_LANE + _MARGIN

    boxes: list[_Box] = []
    groups: list[_Group] = []
    y = float(_MARGIN)
    boxes.append(_Box(START, _ident(prefix, START, taken), y, _END_HEIGHT, (START,), "start"))
    y += _END_HEIGHT + _GAP
    group_start: float | None = None
    for index, step in enumerate(workflow.steps):
        previous = workflow.steps[index - 1].phase if index else None
        following = workflow.steps[index + 1].phase if index + 1 < len(workflow.steps) else None
        if step.phase is not None and step.phase != previous:
            group_start = y
            y += _PHASE_HEAD
        box = _Box(
            step.name,
            _ident(prefix, step.name, taken),
            y,
            _STEP_HEIGHT,
            (step.name, _detail(step)),
            "step",
        )
        boxes.append(box)
        y += _STEP_HEIGHT
        if step.phase is not None and step.phase != following:
            assert group_start is not None
            y += _PHASE_PAD
            groups.append(_Group(step.phase, group_start, y - group_start))
            group_start = None
        y += _GAP
    boxes.append(_Box(END, _ident(prefix, END, taken), y, _END_HEIGHT, (END,), "end"))
    y += _END_HEIGHT
    footer = [
        f"{trigger} (task {outcome}): from any state to end"
        for trigger, outcome in (("stop", "stopped"), ("replace", "replaced"))
        if any(t.trigger == trigger for t in transitions)
    ]
    height = y + 8 + 16 * len(footer) + _MARGIN

    by_name = {box.name: box for box in boxes}
    order = [box.name for box in boxes]
    out: list[str] = []
    title = f"state machine of workflow {workflow.id}"
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="machine" role="img"'
        f' viewBox="0 0 {width:g} {height:g}" width="{width:g}" height="{height:g}"'
        f" data-workflow={quoteattr(workflow.id)} aria-label={quoteattr(title)}>"
    )
    out.append(f"<title>{escape(title)}</title>")
    out.append(f"<style>{_STYLE}</style>")
    out.append(
        f'<defs><marker id="{prefix}-arrow" viewBox="0 0 10 10" refX="9" refY="5"'
        ' markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>'
    )
    for group in groups:
        out.append(
            f'<g class="phase" data-phase={quoteattr(group.phase)}>'
            f'<rect x="{_MARGIN}" y="{group.y:g}" width="{box_width + 2 * _PHASE_PAD:g}"'
            f' height="{group.height:g}" rx="8"/>'
            f'<text x="{_MARGIN + 8}" y="{group.y + 16:g}" class="phase-title">'
            f"{escape(group.phase)} phase</text></g>"
        )
    center = left + box_width / 2
    lane = left + box_width + _PHASE_PAD + _RIGHT_LANE / 2
    for spec in transitions:
        if spec.trigger != "advance":
            continue
        source, dest = by_name[spec.source], by_name[spec.dest]
        label = escape(spec.label)
        adjacent = order.index(spec.dest) == order.index(spec.source) + 1
        if adjacent and spec.outcome is not Outcome.FAILED:
            top, bottom = source.y + source.height, dest.y
            out.append(
                f'<path class="edge" d="M{center:g},{top:g} V{bottom - 1:g}"'
                f' marker-end="url(#{prefix}-arrow)"><title>{label}</title></path>'
            )
        else:
            start_y = source.y + source.height / 2
            end_y = dest.y + dest.height / 2
            right = left + box_width
            out.append(
                f'<path class="edge error-edge" d="M{right:g},{start_y:g} H{lane:g}'
                f' V{end_y:g} H{right + 1:g}" marker-end="url(#{prefix}-arrow)"><title>{label}'
                f"</title></path>"
                f'<text class="edge-label" x="{lane + 3:g}" y="{start_y - 4:g}">error</text>'
            )
    for box in boxes:
        classes = "state" if box.kind == "step" else f"state {box.kind}"
        rx = box.height / 2 if box.kind != "step" else 6
        out.append(
            f'<g class="{classes}" id="{box.ident}" data-state={quoteattr(box.name)}>'
            f"<title>{escape(' — '.join(box.lines))}</title>"
            f'<rect x="{left:g}" y="{box.y:g}" width="{box_width:g}" height="{box.height:g}"'
            f' rx="{rx:g}"/>'
        )
        if len(box.lines) == 1:
            out.append(
                f'<text class="name" x="{left + 10:g}" y="{box.y + box.height / 2 + 4.5:g}">'
                f"{escape(box.lines[0])}</text>"
            )
        else:
            out.append(
                f'<text class="name" x="{left + 10:g}" y="{box.y + 18:g}">'
                f"{escape(box.lines[0])}</text>"
                f'<text class="detail" x="{left + 10:g}" y="{box.y + 34:g}">'
                f"{escape(box.lines[1])}</text>"
            )
        out.append(
            f'<text class="mark" x="{left + box_width - 8:g}"'
            f' y="{box.y + box.height / 2 + 4.5:g}" text-anchor="end"></text></g>'
        )
    for index, line in enumerate(footer):
        out.append(
            f'<text class="footnote" x="{_MARGIN:g}" y="{y + 20 + 16 * index:g}">'
            f"{escape(line)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
