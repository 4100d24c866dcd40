"""The live records of the engine: a registered workflow and a running task."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import attrs

from ._definitions import Job, Workflow
from ._machine import StepRun, Task, WorkflowMachine


@attrs.define(eq=False)
class Registered:
    """A registered workflow (or job) and its runs."""

    workflow: Workflow
    machine: WorkflowMachine
    #: The job this workflow runs, if it is one.
    job: Job | None
    #: Whether its triggers (schedules, events, ``start_<id>_workflow``) are off.
    paused: bool = False
    active: dict[Run, None] = attrs.Factory(dict)  # insertion-ordered set
    #: The id of the run waiting for the active ones to end (surpass ``wait``).
    queued: str | None = None
    #: When that run was asked for (wall clock), to show it (None: not known).
    queued_since: datetime | None = None
    #: Data sent with every action of the workflow, shared (messages never change it).
    routing: Mapping[str, Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.routing = MappingProxyType({"workflow": self.workflow.id})


@attrs.define(eq=False)
class Run:
    """A running task and what the core keeps beside it."""

    task: Task
    registered: Registered
    #: Data sent with each action of the task: the workflow and the previous run's timing.
    routing: Mapping[str, Any] = attrs.field(default=MappingProxyType({}))
    #: Whether the task had its first move (see Core.kick): it moves only from then on.
    started: bool = False
    #: Whether what the task's state causes is still being carried out (committed first,
    #: with a store): it moves no further until the driver says it is done (Core.committed).
    committing: bool = False
    #: The step whose action was sent (or is on its way: a step that ended before owes no
    #: abort, and the driver resets it when what the step caused was dropped).
    announced: StepRun | None = None
    stop_request: tuple[bool, str | None] | None = None
    last_progress: float = float("-inf")
    progress_due: float | None = None
    #: When to look whether the current step stalled.
    stall_due: float | None = None
    #: The earliest time the core asked to hear of the task again (a Wake intent).
    wake_at: float | None = None
    #: Restored after a restart: the current step's side effects are done again.
    replay: bool = False
    #: Facts recorded since the task was last saved (saved before anything acts on them).
    dirty: bool = False
    #: The stored form of the task's ended steps (see task_record).
    encoded_steps: list[Any] | None = None
    #: Set by the driver once the task's end has been carried out (its Ended intent).
    gone: bool = False
    #: The driver's: the task's timer entry and its command's cancel scope.
    timer: Any = None
    command: Any = None
