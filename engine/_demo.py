"""Simulated listeners that answer a workflow's actions the way Resoto's components do.

They exist so that a newcomer can watch a whole run with nothing else
installed (``phasebus run collect_and_cleanup --demo``). Each one is an
ordinary client of the engine's public listener API: it subscribes, opens a
listener, reports progress and answers with ``done``. Delays are
``trio.sleep`` calls, so under a virtual clock a run takes no real time.

- ``demo.collector``, like Resoto's worker: collects two clouds region by
  region on ``collect``, deletes what the plan marked on ``cleanup``;
- ``demo.cleanup-planner``, like Resoto's bundled cleanup plugins, on ``cleanup_plan``;
- ``demo.metrics``, like Resoto's metrics exporter, on ``generate_metrics``;
- ``demo.core``, an in-process handler of ``merge_outer_edges``, like Resoto's
  core merging the edges between the clouds' graphs;
- ``demo.hooks``, a custom automation answering every other action of the
  workflow (the ``pre_*`` and ``post_*`` events) after a short pause.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from ._bus import Listener
from ._definitions import Ends, Workflow
from ._engine import Engine
from ._messages import Action, ActionAbort, Message, ProgressLeaf, ProgressTree

logger = logging.getLogger(__name__)

#: The simulated clouds: cloud, account, regions and resources per region.
CLOUDS: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = (
    ("aws", "123456789012", (("us-east-1", 1834), ("eu-west-1", 962), ("eu-central-1", 415))),
    ("gcp", "demo-project", (("us-central1", 512), ("europe-west1", 230))),
)

#: The metric queries the simulated exporter runs.
METRICS = ("instances_total", "volumes_bytes", "buckets_total", "cleanup_candidates")

#: Resources the simulated cleanup plan marks and the cleanup deletes.
CLEANUP = (
    "aws/123456789012/us-east-1/vol-0a1b",
    "aws/123456789012/eu-west-1/i-77c2",
    "gcp/demo-project/us-central1/disk-tmp-3",
)

COLLECTOR = "demo.collector"
CLEANUP_PLANNER = "demo.cleanup-planner"
METRICS_EXPORTER = "demo.metrics"
CORE = "demo.core"
HOOKS = "demo.hooks"

#: Every subscriber the simulated listeners use.
DEMO_SUBSCRIBERS = (COLLECTOR, CLEANUP_PLANNER, METRICS_EXPORTER, CORE, HOOKS)

Work = Callable[[Listener, Action], Awaitable[None]]


@attrs.frozen
class DemoListener:
    """One simulated component: its subscriber id and the work it does per message type."""

    subscriber_id: str
    work: Mapping[str, Work]
    timeout: float = 60.0


# ---------------------------------------------------------------- the work


async def _collect(listener: Listener, action: Action) -> None:
    done: dict[tuple[str, str], list[ProgressLeaf]] = {
        (cloud, account): [
            ProgressLeaf(region, 0, 1, path=(cloud, account)) for region, _ in regions
        ]
        for cloud, account, regions in CLOUDS
    }

    def report() -> None:
        parts = tuple(
            ProgressTree(account, tuple(leaves), path=(cloud,))
            for (cloud, account), leaves in done.items()
        )
        listener.progress(action, ProgressTree("collect", parts))

    report()
    for cloud, account, regions in CLOUDS:
        total = 0
        for index, (region, resources) in enumerate(regions):
            await trio.sleep(0.15 + resources / 10_000)
            total += resources
            done[cloud, account][index] = ProgressLeaf(region, 1, 1, path=(cloud, account))
            report()
        listener.info(action, f"[{cloud}:{account}] collected {total:,} resources")


async def _plan_cleanup(listener: Listener, action: Action) -> None:
    await trio.sleep(0.3)
    listener.info(action, f"marked {len(CLEANUP)} resources for cleanup (expired or untagged)")


async def _cleanup(listener: Listener, action: Action) -> None:
    for index, resource in enumerate(CLEANUP):
        listener.progress(action, ProgressLeaf("cleanup", index, len(CLEANUP)))
        await trio.sleep(0.15)
        listener.info(action, f"deleted {resource}")
    listener.progress(action, ProgressLeaf("cleanup", len(CLEANUP), len(CLEANUP)))


async def _generate_metrics(listener: Listener, action: Action) -> None:
    for index, _ in enumerate(METRICS):
        listener.progress(action, ProgressLeaf("metrics", index, len(METRICS)))
        await trio.sleep(0.1)
    listener.progress(action, ProgressLeaf("metrics", len(METRICS), len(METRICS)))


async def _merge_outer_edges(message: Message) -> None:
    if isinstance(message, Action):
        await trio.sleep(0.25)


async def _hook(listener: Listener, action: Action) -> None:
    await trio.sleep(0.05)


def demo_listeners(*workflows: Workflow) -> list[DemoListener]:
    """Return the simulated listeners runs of ``workflows`` would meet.

    ``demo.hooks`` answers every action of the workflows that no other
    simulated component takes; ``demo.core`` is served separately (see
    :func:`serve_demo`).
    """
    listeners = [
        DemoListener(COLLECTOR, {"collect": _collect, "cleanup": _cleanup}, timeout=120.0),
        DemoListener(CLEANUP_PLANNER, {"cleanup_plan": _plan_cleanup}),
        DemoListener(METRICS_EXPORTER, {"generate_metrics": _generate_metrics}),
    ]
    taken = {message_type for listener in listeners for message_type in listener.work}
    taken.add("merge_outer_edges")
    hooked = {
        step.message_type: _hook
        for workflow in workflows
        for step in workflow.steps
        if step.action.ends is Ends.ANSWERS and step.message_type not in taken
    }
    if hooked:
        listeners.append(DemoListener(HOOKS, dict(sorted(hooked.items())), timeout=10.0))
    return listeners


# ---------------------------------------------------------------- serving


async def _serve(engine: Engine, demo: DemoListener, *, task_status: trio.TaskStatus[None]) -> None:
    """Answer each action in its own trio task, until cancelled; stop a step's work on abort."""
    working: dict[tuple[str, str], trio.CancelScope] = {}

    async def answer(listener: Listener, action: Action, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await demo.work[action.message_type](listener, action)
            except Exception as error:
                listener.error(action, f"{type(error).__name__}: {error}")
            else:
                listener.done(action)
        working.pop((action.task, action.step), None)

    async with (
        engine.open_listener(subscriber_id=demo.subscriber_id) as listener,
        trio.open_nursery() as nursery,
    ):
        task_status.started()
        async for message in listener:
            if isinstance(message, Action) and message.message_type in demo.work:
                working[message.task, message.step] = scope = trio.CancelScope()
                nursery.start_soon(answer, listener, message, scope)
            elif isinstance(message, ActionAbort) and (message.task, message.step) in working:
                working.pop((message.task, message.step)).cancel()


async def serve_demo(
    engine: Engine,
    *workflows: Workflow,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe and serve the simulated listeners for ``workflows`` until cancelled.

    Start it with ``await nursery.start(serve_demo, engine, workflow)``, which
    returns the subscriber ids once every listener is connected; start the
    workflow after that.
    """
    listeners = demo_listeners(*workflows)
    for demo in listeners:
        for message_type in demo.work:
            engine.subscribe(demo.subscriber_id, message_type, timeout=demo.timeout)
    engine.subscribe(CORE, "merge_outer_edges", timeout=30.0)
    try:
        async with trio.open_nursery() as nursery:
            for demo in listeners:
                await nursery.start(_serve, engine, demo)
            await nursery.start(
                functools.partial(engine.serve_listener, _merge_outer_edges, subscriber_id=CORE)
            )
            task_status.started(sorted([*(d.subscriber_id for d in listeners), CORE]))
    finally:
        # When the program stops, the engine is frozen by now: the removal is
        # neither stored nor releases a step, and a restart resumes the tasks.
        for subscriber_id in (*(demo.subscriber_id for demo in listeners), CORE):
            engine.remove_subscriber(subscriber_id)
