"""The workflows and jobs an engine runs, and what starts them.

:class:`WorkflowTable` holds each registered workflow with its machine, its
state (paused or not), its active runs and its queued run, and the triggers
in force: start events, event triggers and (through :class:`Schedules`)
cron schedules. It decides nothing about runs: the core asks it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ._config import CORE_CONFIG, schedule_problems
from ._definitions import CronTrigger, EventTrigger, ExecuteCommand, Job, WaitForEvent, Workflow
from ._errors import DeclarationError, Problem, UnknownWorkflowError
from ._machine import WorkflowMachine
from ._runs import Registered
from ._schedules import Schedules


def routing(workflow_id: str, steps: Iterable[tuple[str, float, float]]) -> Mapping[str, Any]:
    """Return the data sent with each action of a workflow: its id and ``timing``.

    ``timing`` maps each step of the workflow's previous run to its
    ``started_at`` and ``finished_at`` in whole seconds since the epoch (``steps``
    gives name, start and end), as Resoto sends it, so that listeners can
    estimate how long they will take.
    """
    timing = {
        name: {"started_at": int(started), "finished_at": int(ended)}
        for name, started, ended in steps
    }
    return MappingProxyType({"workflow": workflow_id, "timing": timing})


class WorkflowTable:
    """The registered workflows and jobs, by id, with their triggers in force."""

    def __init__(
        self,
        schedules: Schedules,
        *,
        has_command: Callable[[str], bool],
        last_steps: Callable[[str], Iterable[tuple[str, float, float]]],
    ) -> None:
        self.schedules = schedules
        self._has_command = has_command
        self._last_steps = last_steps
        self.by_id: dict[str, Registered] = {}
        #: Start event (``start_<id>_workflow``) -> workflow id, for unpaused workflows.
        self.start_events: dict[str, str] = {}
        #: Event type -> the event triggers of unpaused workflows, with their workflow ids.
        self.event_triggers: dict[str, list[tuple[EventTrigger, str]]] = {}
        #: Queued run id -> the registration it waits under.
        self.queued: dict[str, Registered] = {}
        #: The event types a step of a registered workflow waits for (paused ones too).
        self.awaited: frozenset[str] = frozenset()

    def get(self, workflow_id: str) -> Registered:
        """Return a registration, or raise :class:`UnknownWorkflowError`."""
        try:
            return self.by_id[workflow_id]
        except KeyError:
            raise UnknownWorkflowError(workflow_id) from None

    def add(self, workflow: Workflow, *, job: Job | None, replace: bool) -> Registered:
        """Register a workflow (see :meth:`Engine.add_workflow`); return what it replaced."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"expected a Workflow, got {workflow!r}")
        problems = []
        if workflow.id in self.by_id and not replace:
            problems.append(
                Problem("id", f"a workflow or job {workflow.id!r} is already registered")
            )
        for index, step in enumerate(workflow.steps):
            action = step.action
            if (
                isinstance(action, ExecuteCommand)
                and action.callable is not None
                and not self._has_command(action.callable)
            ):
                problems.append(
                    Problem(
                        f"steps[{index}].action.callable",
                        f"no command is registered as {action.callable!r}",
                    )
                )
        if problems:
            raise DeclarationError(problems, source=workflow.id)
        registered = Registered(workflow, WorkflowMachine(workflow), job)
        previous = self.by_id.pop(workflow.id, None)
        # a job's declaration says whether it is active; a workflow keeps its state
        registered.paused = (
            not job.active if job is not None else previous is not None and previous.paused
        )
        if previous is not None:  # replaced: a queued run now waits for the new definition
            registered.queued, previous.queued = previous.queued, None
            if registered.queued is not None:
                self.queued[registered.queued] = registered
            self._disarm(previous)
        self.by_id[workflow.id] = registered
        registered.routing = routing(workflow.id, self._last_steps(workflow.id))
        self._arm(registered)
        self._count_awaited()
        return registered

    def remove(self, workflow_id: str) -> Registered:
        """Unregister a workflow; return its registration (its runs go on)."""
        registered = self.by_id.pop(workflow_id, None)
        if registered is None:
            raise UnknownWorkflowError(workflow_id)
        self._disarm(registered)
        self._count_awaited()
        return registered

    def _count_awaited(self) -> None:
        self.awaited = frozenset(
            step.action.message_type
            for registered in self.by_id.values()
            for step in registered.workflow.steps
            if isinstance(step.action, WaitForEvent)
        )

    def set_paused(self, workflow_id: str, paused: bool) -> None:
        """Turn a workflow's triggers off or on again."""
        registered = self.get(workflow_id)
        if registered.paused != paused:
            registered.paused = paused
            if not paused:  # times passed while paused are not missed: nothing catches up
                self.schedules.forgive(workflow_id)
            self._disarm(registered)
            self._arm(registered)

    def next_run(self, workflow_id: str) -> datetime | None:
        """Return when a schedule next starts the workflow (None while it is paused)."""
        registered = self.get(workflow_id)
        return None if registered.paused else self.schedules.next_run(registered.workflow)

    def check_config(self, config_id: str, data: Mapping[str, Any]) -> list[Problem]:
        """Return what is wrong with a config the table depends on (``phasebus.core``)."""
        if config_id != CORE_CONFIG:
            return []
        return schedule_problems(data, frozenset(self.by_id))

    def config_changed(self, config_id: str, data: Mapping[str, Any] | None) -> None:
        """Follow a change of ``phasebus.core``: the schedules it sets are in force now."""
        if config_id != CORE_CONFIG:
            return
        overrides: dict[str, CronTrigger | None] = {}
        for workflow_id, entry in ((data or {}).get("workflows") or {}).items():
            schedule = entry.get("schedule")
            overrides[workflow_id] = (
                None if schedule is None else CronTrigger(schedule, entry.get("timezone", "UTC"))
            )
        self.schedules.set_overrides(overrides)
        for registered in self.by_id.values():
            if not registered.paused:
                self.schedules.start(registered.workflow)

    def _arm(self, registered: Registered) -> None:
        """Register a workflow's start event and event triggers and start its schedules."""
        workflow = registered.workflow
        if not registered.paused:
            self.start_events[workflow.start_event] = workflow.id
            for trigger in workflow.triggers:
                if isinstance(trigger, EventTrigger):
                    self.event_triggers.setdefault(trigger.event, []).append((trigger, workflow.id))
            self.schedules.start(workflow)

    def _disarm(self, registered: Registered) -> None:
        """Stop a workflow's schedules and forget its start event and event triggers."""
        workflow_id = registered.workflow.id
        self.schedules.stop(workflow_id)
        if self.start_events.get(registered.workflow.start_event) == workflow_id:
            del self.start_events[registered.workflow.start_event]
        for event_type in list(self.event_triggers):
            kept = [(t, w) for t, w in self.event_triggers[event_type] if w != workflow_id]
            if kept:
                self.event_triggers[event_type] = kept
            else:
                del self.event_triggers[event_type]
