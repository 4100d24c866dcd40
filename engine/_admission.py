"""Starting runs: whether a new run starts, waits or is skipped (surpass), and its answer.

The core (:mod:`engine._core`) decides with these functions, without I/O.
One server alone decides from its own runs (:func:`start`). Servers sharing
a Redis store let the store decide, over the runs of every server, in one
atomic step: the core asks (:func:`ask`, an :class:`~engine._intents.Admit`
intent), the driver carries the question to the store, and the verdict
comes back as a fact (:func:`admitted`). Either way what the caller is told
is true: a task id only for a run that exists or is queued, and a skip says
why.
"""

from __future__ import annotations

import enum
import logging
import uuid
from typing import Any, Protocol

import attrs

from ._clock import Clock
from ._definitions import Surpass
from ._errors import EngineClosed, StoreError
from ._intents import Admit, Intent, Stage
from ._rules import Admit as Verdict
from ._rules import admission_records, admit, queued_write, skip_reason
from ._runs import Registered
from ._workflows import WorkflowTable

logger = logging.getLogger("engine._engine")


class Core(Protocol):
    """What these rules read and call of the core (:class:`engine._core.Core`)."""

    workflows: WorkflowTable
    clock: Clock
    intents: list[Intent]
    frozen: bool
    durable: bool
    shared: bool
    asking: dict[str, tuple[Registered, str]]
    promoted: set[str]

    def queue(self, registered: Registered, task_id: str) -> None: ...

    def begin(self, registered: Registered, task_id: str, reason: str, now: float) -> None: ...

    def start_queued(self, task_id: str, now: float) -> None: ...

    def stop(
        self, task_id: str, reason: str | None, now: float, *, replaced: bool = False
    ) -> bool | None: ...


class StartDecision(enum.StrEnum):
    """What a start request did."""

    STARTED = "started"
    QUEUED = "queued"
    SKIPPED = "skipped"


@attrs.frozen
class StartResult:
    """The answer to a start request.

    ``task_id`` is set when a task was started or queued; ``replaced`` lists
    the tasks that the new one replaces (surpass ``replace``).
    """

    workflow: str
    decision: StartDecision
    task_id: str | None = None
    replaced: tuple[str, ...] = ()
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON of the answer to ``POST /workflow/{id}/run``."""
        return {
            "workflow": self.workflow,
            "decision": self.decision.value,
            "task_id": self.task_id,
            "replaced": list(self.replaced),
            "reason": self.reason,
        }


#: How the reason of a run skipped because the shared store could not decide on it begins.
UNDECIDED = "the run could not be decided, so it did not start"


def new_id() -> str:
    """Return a new task id."""
    return str(uuid.uuid4())


def startable(core: Core, workflow_id: str) -> Registered:
    """Return the registered workflow a run is asked of.

    Raises:
        UnknownWorkflowError: nothing is registered under ``workflow_id``.
        EngineClosed: the engine is stopping.
    """
    registered = core.workflows.get(workflow_id)
    if core.frozen:
        raise EngineClosed(f"the engine is stopping: workflow {workflow_id!r} not started")
    return registered


def asks_store(core: Core, workflow_id: str) -> bool:
    """Tell whether a run of the workflow starts as the shared store decides (servers
    sharing it, and a surpass that weighs the other runs)."""
    return core.shared and core.workflows.get(workflow_id).workflow.surpass is not Surpass.PARALLEL


def start(core: Core, workflow_id: str, reason: str, now: float) -> StartResult:
    """Start, queue or skip a run as its surpass says, weighing this server's runs.

    Raises:
        StoreError: the shared store decides for this workflow (use :func:`ask`).
    """
    registered = startable(core, workflow_id)
    surpass = registered.workflow.surpass
    if asks_store(core, workflow_id):
        raise StoreError(
            f"workflow {workflow_id!r} (surpass {surpass.value}) starts as the store shared"
            " by every server decides: use await engine.start_run()"
        )
    active = (
        []  # whatever runs, a parallel workflow starts (and its active runs are not walked)
        if surpass is Surpass.PARALLEL
        else [run for run in registered.active if run.stop_request is None]
    )
    verdict, why = admit(surpass, active, registered.queued)
    if verdict is Verdict.SKIP:
        return StartResult(workflow_id, StartDecision.SKIPPED, reason=why)
    task_id = new_id()
    if verdict is Verdict.QUEUE:
        core.queue(registered, task_id)
        registered.queued_since = core.clock.to_wall(now)
        if core.durable:  # a queued run survives a restart too
            write = queued_write(task_id, workflow_id, core.clock.to_epoch(now))
            core.intents.append(Stage(task_id, write))
        logger.info("queued a run of %s (%s)", workflow_id, reason)
        return StartResult(workflow_id, StartDecision.QUEUED, task_id)
    replaced = tuple(r.task.id for r in active) if surpass is Surpass.REPLACE else ()
    for other in replaced:
        core.stop(other, f"replaced by task {task_id}", now, replaced=True)
    core.begin(registered, task_id, reason, now)
    return StartResult(workflow_id, StartDecision.STARTED, task_id, replaced=replaced)


def ask(core: Core, workflow_id: str, reason: str, now: float) -> str:
    """Ask the shared store for a run; return the run's id (it is nowhere until
    :func:`admitted` says so)."""
    registered = startable(core, workflow_id)
    task_id = new_id()
    core.asking[task_id] = (registered, reason)
    records = admission_records(task_id, workflow_id, core.clock.to_epoch(now))
    core.intents.append(Admit(task_id, workflow_id, registered.workflow.surpass, records))
    return task_id


def admitted(
    core: Core, task_id: str, verdict: str, names: tuple[str, ...], now: float
) -> StartResult:
    """Take the shared store's verdict on a run asked for: ``start`` (``names``: the runs
    it replaces, each told to stop through the store; those here stop at once), ``queue``,
    ``skip`` (``names``: the run that made it skip) or ``error`` (``names``: why the store
    could not decide; the run is skipped)."""
    registered, reason = core.asking.pop(task_id)
    workflow_id = registered.workflow.id
    promoted = task_id in core.promoted
    core.promoted.discard(task_id)
    if verdict not in ("start", "queue"):  # skipped, or the store could not decide
        blocking = names[0] if names else None
        why = (
            skip_reason(registered.workflow.surpass, blocking)
            if verdict == "skip"
            else f"{UNDECIDED}: {blocking}"
        )
        return StartResult(workflow_id, StartDecision.SKIPPED, reason=why)
    queued = verdict == "queue"
    if core.frozen:
        pass  # held in the store: a restart, or another server, takes it up
    elif queued:
        core.queue(registered, task_id)
        logger.info("queued a run of %s (%s)", workflow_id, reason)
        if promoted:  # the run it waited for ended before the verdict came here
            core.start_queued(task_id, now)
    else:
        for other in names:
            core.stop(other, f"replaced by task {task_id}", now, replaced=True)
        core.begin(registered, task_id, reason, now)
    decision = StartDecision.QUEUED if queued else StartDecision.STARTED
    return StartResult(workflow_id, decision, task_id, replaced=() if queued else names)
