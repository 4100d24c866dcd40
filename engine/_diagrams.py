"""State diagrams of workflows, drawn by the transitions diagrams extension.

The diagram of a workflow is the machine that :func:`~engine._machine.machine_spec`
describes, rebuilt as a ``transitions`` HierarchicalGraphMachine whose parent
states are the phases: each step sits inside the group of its phase (steps
without a phase sit at the top level). ``start`` names the triggers and the
surpass behaviour; every step names its action kind, timeout and error
behaviour; edges name the error paths and, into ``end``, the task's outcome.
``stop``, ``replace`` and ``fail`` leave from a whole phase group when they leave from
every step in it.

Mermaid and DOT are text and need no program; SVG runs Graphviz's ``dot``.
The output depends on nothing but the workflow, so it can be compared with
a file checked in beside the code.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from typing import Any, Literal

from transitions.extensions.diagrams import HierarchicalGraphMachine
from transitions.extensions.nesting import NestedState

from ._definitions import (
    CronTrigger,
    EventTrigger,
    Step,
    Surpass,
    Workflow,
    show_data,
)
from ._errors import DiagramError as DiagramError
from ._errors import GraphvizNotFound as GraphvizNotFound
from ._machine import END, START, TransitionSpec, machine_spec

Format = Literal["mermaid", "dot", "svg"]

#: The diagram formats, each with the suffix of its files.
SUFFIXES: dict[str, str] = {"mermaid": ".mmd", "dot": ".dot", "svg": ".svg"}

_SEPARATOR = "__"

_EDGE_END_LABEL = re.compile(r"\[(?:head|tail)label=")

_SURPASS = {
    Surpass.SKIP: "skip (a trigger during a run is ignored)",
    Surpass.REPLACE: "replace (a trigger stops the run and starts anew)",
    Surpass.PARALLEL: "parallel (runs side by side)",
    Surpass.WAIT: "wait (one more run waits for the active one)",
}

_OUTCOMES = {"stop": "stopped", "replace": "replaced", "fail": "failed"}

#: Triggers whose edges are drawn from a phase group when they leave every step in it.
_GROUPED_TRIGGERS = frozenset(_OUTCOMES)

# Mermaid's lexer reads these at the start of a token as keywords, whatever follows.
_MERMAID_KEYWORD_PREFIXES = ("default", "acc")


class _DiagramState(NestedState):
    """A nested state with a label; children are joined to parents by ``__``."""

    separator = _SEPARATOR

    def __init__(self, *args: Any, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if label is not None:
            self.label = label


def _styles() -> dict[str, Any]:
    # A static diagram has no current state: draw the active one like the others.
    styles: dict[str, Any] = copy.deepcopy(HierarchicalGraphMachine.style_attributes)
    styles["node"]["active"] = dict(styles["node"]["default"])
    styles["graph"]["active"] = dict(styles["graph"]["default"])
    return styles


class _MermaidMachine(HierarchicalGraphMachine):
    state_cls = _DiagramState
    machine_attributes = {"directed": "true", "strict": "false", "rankdir": "TB"}
    style_attributes = _styles()


class _DotMachine(HierarchicalGraphMachine):
    state_cls = _DiagramState
    # compound: edges from a phase group start at the group's border (ltail).
    machine_attributes = {
        "directed": "true",
        "strict": "false",
        "rankdir": "TB",
        "compound": "true",
    }
    style_attributes = _styles()


# ---------------------------------------------------------------- ids and labels


def _identifiers(names: list[str], taken: set[str]) -> dict[str, str]:
    """Give each name an id of letters, digits and single underscores, unique in ``taken``."""
    ids = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "s"
        if base.lower().startswith(_MERMAID_KEYWORD_PREFIXES):
            base = "s_" + base
        ident, count = base, 1
        while ident in taken:
            count += 1
            ident = f"{base}_{count}"
        taken.add(ident)
        ids[name] = ident
    return ids


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _step_lines(step: Step) -> list[str]:
    return [
        step.name,
        step.action.label(step.name),
        f"timeout {_seconds(step.timeout)}, on error {step.on_error.value}",
    ]


def _start_lines(workflow: Workflow) -> list[str]:
    lines = ["start"]
    for trigger in workflow.triggers:
        if isinstance(trigger, CronTrigger):
            lines.append(f"cron {trigger.cron} ({trigger.timezone})")
        elif isinstance(trigger, EventTrigger):
            lines.append(
                f"event {trigger.event}"
                + (f" {show_data(trigger.filter)}" if trigger.filter else "")
            )
    lines.append(f"event {workflow.start_event}")
    lines.append(f"surpass: {_SURPASS[workflow.surpass]}")
    return lines


def _edge_label(spec: TransitionSpec) -> str:
    """Say what takes the transition and, into ``end``, how the task ends."""
    label = spec.label.replace(": ", " → ")
    if spec.outcome is None:
        return label
    return f"{label} (task {spec.outcome.value})"


# ---------------------------------------------------------------- the machine


class _Layout:
    """Where each state of a workflow's machine goes in the diagram, and its label."""

    def __init__(self, workflow: Workflow, *, newline: str, escape: Any) -> None:
        self.workflow = workflow
        phases: list[str] = []
        for step in workflow.steps:
            if step.phase is not None and step.phase not in phases:
                phases.append(step.phase)
        loose = [step.name for step in workflow.steps if step.phase is None]
        taken: set[str] = set()
        top = _identifiers([START, END], taken)
        self.group_ids = _identifiers(phases, taken)
        top.update(_identifiers(loose, taken))
        self.ids: dict[str, str] = {START: top[START], END: top[END]}
        self.members: dict[str, list[str]] = {phase: [] for phase in phases}
        inner: dict[str, set[str]] = {phase: set() for phase in phases}
        for step in workflow.steps:
            if step.phase is None:
                self.ids[step.name] = top[step.name]
            else:
                local = _identifiers([step.name], inner[step.phase])[step.name]
                self.ids[step.name] = self.group_ids[step.phase] + _SEPARATOR + local
                self.members[step.phase].append(step.name)
        self._newline = newline
        self._escape = escape

    def _label(self, lines: list[str]) -> str:
        return self._newline.join(self._escape(line) for line in lines)

    def states(self) -> list[dict[str, Any]]:
        """Return the state tree as transitions' dictionaries, in the workflow's order."""
        states: list[dict[str, Any]] = [
            {"name": self.ids[START], "label": self._label(_start_lines(self.workflow))}
        ]
        groups: dict[str, dict[str, Any]] = {}
        for step in self.workflow.steps:
            leaf = {
                "name": self.ids[step.name].rpartition(_SEPARATOR)[2],
                "label": self._label(_step_lines(step)),
            }
            if step.phase is None:
                states.append(leaf)
                continue
            group = groups.get(step.phase)
            if group is None:
                group = groups[step.phase] = {
                    "name": self.group_ids[step.phase],
                    "label": self._label([f"{step.phase} phase"]),
                    "children": [],
                }
                states.append(group)
            group["children"].append(leaf)
        states.append({"name": self.ids[END], "label": self._label([END]), "final": True})
        return states

    def transitions(self) -> list[dict[str, Any]]:
        """Return the transitions of ``machine_spec`` between diagram states."""
        _, specs = machine_spec(self.workflow)
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for spec in specs:
            if spec.trigger in _GROUPED_TRIGGERS:
                grouped.setdefault((spec.trigger, spec.dest, _edge_label(spec)), []).append(
                    spec.source
                )
        out: list[dict[str, Any]] = []
        for spec in specs:
            if spec.trigger in _GROUPED_TRIGGERS:
                continue
            out.append(self._transition(spec.trigger, spec.source, spec.dest, _edge_label(spec)))
        for (trigger, dest, label), sources in grouped.items():
            covered = set(sources)
            drawn: set[str] = set()
            for source in sources:
                step = self.workflow.step(source) if source not in (START, END) else None
                phase = step.phase if step is not None else None
                if phase is not None and covered.issuperset(self.members[phase]):
                    if phase not in drawn:
                        drawn.add(phase)
                        out.append(
                            self._edge(trigger, self.group_ids[phase], self.ids[dest], label)
                        )
                else:
                    out.append(self._transition(trigger, source, dest, label))
        return out

    def _transition(self, trigger: str, source: str, dest: str, label: str) -> dict[str, Any]:
        return self._edge(trigger, self.ids[source], self.ids[dest], label)

    def _edge(self, trigger: str, source: str, dest: str, label: str) -> dict[str, Any]:
        return {"trigger": trigger, "source": source, "dest": dest, "label": self._escape(label)}


def _machine(
    workflow: Workflow, machine_class: type[Any], *, newline: str, escape: Any, title: str
) -> Any:
    layout = _Layout(workflow, newline=newline, escape=escape)
    return machine_class(
        states=layout.states(),
        transitions=layout.transitions(),
        initial=layout.ids[START],
        auto_transitions=False,
        title=title,
        graph_engine="mermaid" if machine_class is _MermaidMachine else "graphviz",
    )


def _mermaid_escape(text: str) -> str:
    # Mermaid decodes '#name;' entities; a double quote would end a state's label.
    return (
        text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def _dot_escape(text: str) -> str:
    # The graphviz package quotes labels but leaves backslashes to mean DOT escapes.
    return text.replace("\\", "\\\\")


# ---------------------------------------------------------------- public


def mermaid_diagram(workflow: Workflow) -> str:
    """Return the workflow's state diagram as Mermaid text (``stateDiagram-v2``)."""
    # The mermaid backend writes the title as the whole front matter: give it YAML.
    machine = _machine(
        workflow,
        _MermaidMachine,
        newline="<br/>",
        escape=_mermaid_escape,
        title=f"title: {workflow.id}",
    )
    source: str = machine.get_graph().source
    return "\n".join(line.rstrip() for line in source.splitlines()) + "\n"


def dot_diagram(workflow: Workflow) -> str:
    """Return the workflow's state diagram as Graphviz DOT text."""
    machine = _machine(workflow, _DotMachine, newline="\\l", escape=_dot_escape, title=workflow.id)
    graph = machine.get_graph()
    # The backend puts the label of an edge leaving a group at the edge's head, where
    # the labels of all groups' stop edges pile up on ``end``: put them mid-edge.
    graph.body = [_EDGE_END_LABEL.sub("[label=", line) for line in graph.body]
    source: str = graph.source
    return source


def svg_diagram(workflow: Workflow) -> str:
    """Return the workflow's state diagram as SVG, drawn by Graphviz's ``dot``.

    Raises:
        GraphvizNotFound: ``dot`` is not installed.
        DiagramError: ``dot`` failed.
    """
    program = shutil.which("dot")
    if program is None:
        raise GraphvizNotFound()
    try:
        done = subprocess.run(
            [program, "-Tsvg"],
            input=dot_diagram(workflow).encode("utf-8"),
            capture_output=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        raise GraphvizNotFound() from None
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DiagramError(f"could not run {program!r}: {error}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DiagramError(
            f"{program!r} exited with status {done.returncode}"
            + (f": {message[0]}" if message else "")
        )
    return done.stdout.decode("utf-8")


def diagram(workflow: Workflow, format: Format = "mermaid") -> str:
    """Return the workflow's state diagram in ``format`` (``mermaid``, ``dot`` or ``svg``).

    Raises:
        ValueError: an unknown format.
        GraphvizNotFound: ``svg`` without Graphviz's ``dot``.
        DiagramError: ``dot`` failed.
    """
    if format == "mermaid":
        return mermaid_diagram(workflow)
    if format == "dot":
        return dot_diagram(workflow)
    if format == "svg":
        return svg_diagram(workflow)
    raise ValueError(f"format must be one of {', '.join(SUFFIXES)}, got {format!r}")
