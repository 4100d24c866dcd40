"""The built-in workflows, declared as data.

Every step performs an action, waits 10 s, and continues on error; every
workflow waits for an active run before starting another (surpass ``wait``).
``collect_and_cleanup`` runs every hour by default.
"""

from __future__ import annotations

from engine import CronTrigger, Step, Surpass, Workflow

#: The default schedule of ``collect_and_cleanup``.
DEFAULT_SCHEDULE = "0 * * * *"

#: The phases, each with its steps in order.
PHASES: dict[str, tuple[str, ...]] = {
    "collect": ("pre_collect", "collect", "merge_outer_edges", "post_collect"),
    "cleanup_plan": ("pre_cleanup_plan", "cleanup_plan", "post_cleanup_plan"),
    "cleanup": ("pre_cleanup", "cleanup", "post_cleanup"),
    "generate_metrics": ("pre_generate_metrics", "generate_metrics", "post_generate_metrics"),
}


def _steps(*phases: str) -> tuple[Step, ...]:
    return tuple(Step(name, phase=phase) for phase in phases for name in PHASES[phase])


COLLECT = Workflow(
    id="collect",
    steps=_steps("collect", "generate_metrics"),
    surpass=Surpass.WAIT,
    description="Collect resources, then generate metrics.",
)

CLEANUP = Workflow(
    id="cleanup",
    steps=_steps("cleanup_plan", "cleanup", "generate_metrics"),
    surpass=Surpass.WAIT,
    description="Plan and perform the cleanup, then generate metrics.",
)

METRICS = Workflow(
    id="metrics",
    steps=_steps("generate_metrics"),
    surpass=Surpass.WAIT,
    description="Generate metrics.",
)

COLLECT_AND_CLEANUP = Workflow(
    id="collect_and_cleanup",
    steps=_steps("collect", "cleanup_plan", "cleanup", "generate_metrics"),
    triggers=(CronTrigger(DEFAULT_SCHEDULE),),
    surpass=Surpass.WAIT,
    description="Collect resources, plan and perform the cleanup, generate metrics.",
)

#: The built-in workflows by id.
BUILTIN_WORKFLOWS: dict[str, Workflow] = {
    w.id: w for w in (COLLECT_AND_CLEANUP, COLLECT, CLEANUP, METRICS)
}

__all__ = [
    "BUILTIN_WORKFLOWS",
    "CLEANUP",
    "COLLECT",
    "COLLECT_AND_CLEANUP",
    "DEFAULT_SCHEDULE",
    "METRICS",
    "PHASES",
]
