"""Restoring what the store kept, at start: definitions, configs, subscribers, schedule
marks, and the tasks that were running, which resume where they were."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._bus import Subscription
from ._config import CORE_CONFIG
from ._core import QUEUED, Core
from ._errors import InvalidInputError
from ._intents import Log
from ._machine import Outcome
from ._records import RestoreError, TaskResult, restore_task
from ._rules import ADMITTED
from ._steps import step_kind
from ._tasklog import LogKind

if TYPE_CHECKING:
    from ._config import ConfigService
    from ._persistence import Persistence
    from ._registry import Registry
    from ._store import StoredState
    from ._subscribers import SubscriberRegistry

logger = logging.getLogger("engine._engine")


def restore_state(
    state: StoredState,
    *,
    core: Core,
    definitions: Registry,
    configs: ConfigService,
    subscribers: SubscriberRegistry,
    store: Persistence,
    now: float,
) -> None:
    """Load what the store kept and resume the interrupted tasks."""
    definitions.restore(state.definitions)
    for config_id in configs.restore(state.configs, state.revision_counter):
        logger.error(
            "the stored config %r cannot be served: %s (stored by an older version;"
            " replace it with PUT /config/%s or delete it)",
            config_id,
            "; ".join(map(str, configs.unreadable[config_id])),
            config_id,
        )
    for subscriber_id, subscriptions in state.subscribers.items():
        try:
            subscribers.replace(subscriber_id, [Subscription(**entry) for entry in subscriptions])
        except (InvalidInputError, TypeError) as error:
            # kept by an older version that took any id: it cannot be served (nor
            # named in a URL) now, so it is dropped, loudly
            logger.error(
                "removing the stored subscriber %r: it cannot be used (%s)",
                subscriber_id,
                "; ".join(str(error).splitlines()),
            )
            store.delete_subscriber(subscriber_id)
    table = core.workflows
    table.schedules.restore(state.schedule_marks)
    stored = configs.get(CORE_CONFIG)
    if stored is not None:
        problems = table.check_config(CORE_CONFIG, stored.data)
        if problems:
            logger.error("ignoring the stored %s: %s", CORE_CONFIG, "; ".join(map(str, problems)))
        else:
            table.config_changed(CORE_CONFIG, stored.data)
    for record in state.tasks:
        take_up(core, record, now)
    for registered in () if core.shared else table.by_id.values():
        if registered.queued is not None and not registered.active:
            core.start_queued(registered.queued, now)


def take_up(core: Core, record: Mapping[str, Any], now: float) -> None:
    """Take up a stored task: a queued run is queued again (with a shared store, it starts
    when the store says so), a run the shared store admitted begins, any other resumes."""
    registered = core.workflows.by_id.get(record.get("workflow"))  # type: ignore[arg-type]
    state = record.get("state")
    if registered is not None and state == QUEUED:
        core.queue(registered, record["id"])
        with contextlib.suppress(KeyError, TypeError, ValueError, OverflowError):
            registered.queued_since = datetime.fromtimestamp(float(record["created_at"]), UTC)
    elif registered is not None and state == ADMITTED:
        core.begin(registered, record["id"], "admitted run taken up", now)
    else:
        resume(core, record, now)


def resume(core: Core, record: Mapping[str, Any], now: float) -> None:
    """Resume a task from its stored record, or file it as failed if it cannot resume."""
    registered = core.workflows.by_id.get(record["workflow"])
    try:
        if registered is None:
            raise RestoreError(f"workflow {record['workflow']!r} is no longer registered")
        task = restore_task(record, registered.workflow, core.clock)
    except (RestoreError, KeyError, TypeError, ValueError, OverflowError) as error:
        logger.error("task %s cannot resume: %s", record["id"], error)
        wall = core.clock.to_wall(now)
        try:
            started = datetime.fromtimestamp(record["created_at"], wall.tzinfo)
        except (KeyError, TypeError, ValueError, OverflowError):
            started = wall
        core.record(
            TaskResult(
                record["id"],
                record["workflow"],
                Outcome.FAILED,
                f"cannot resume after a restart: {error}",
                (str(error),),
                started,
                wall,
                (),
            )
        )
        return
    step = task.step
    if step is not None and step.began and step_kind(step.step.action).owes_answers:
        subscribed = core.subscribers.waiting_for(step.step.message_type)
        for subscriber_id in sorted(step.waiting_for):
            if subscriber_id not in subscribed and step.forget_subscriber(subscriber_id):
                text = f"{subscriber_id} is gone since the restart: the step no longer waits for it"
                fields = {"step": step.step.name, "subscriber": subscriber_id}
                core.intents.append(Log(task.id, LogKind.RELEASED, text, fields))
    core.adopt(task, registered)
