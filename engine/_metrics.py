"""Prometheus metrics of one engine, in a registry of its own.

The metrics are fed by an engine observer (every message published through
this server passes it) and by reading the engine when scraped: tasks started
and ended by outcome, step durations, answers by kind, connected listeners
and listeners dropped for being too slow. With servers sharing a Redis
store each counts what it does (the tasks it drives, the answers it takes):
add the servers' figures up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ._engine import TASK_END, TASK_STARTED, Engine, TaskResult
from ._errors import StoreError
from ._messages import Event, Kind, Message

#: The content type of :meth:`EngineMetrics.render`.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Step durations span milliseconds (answers at once) to hours (a collect).
STEP_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 10800, float("inf"))

_ANSWER_KINDS = frozenset(
    {Kind.ACTION_DONE, Kind.ACTION_ERROR, Kind.ACTION_INFO, Kind.ACTION_PROGRESS}
)


class _EngineState(Collector):
    """Values read from the engine when scraped."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self._engine
        yield GaugeMetricFamily(
            "phasebus_listeners", "Listeners connected to the bus.", value=len(engine.listeners)
        )
        yield GaugeMetricFamily(
            "phasebus_tasks_running", "Tasks running now.", value=len(engine.tasks())
        )
        yield CounterMetricFamily(
            "phasebus_listeners_dropped",
            "Listeners dropped because their buffer was full (too slow).",
            value=engine.dropped_listeners,
        )


class EngineMetrics:
    """The Prometheus metrics of an engine; :meth:`close` stops observing it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self._started = Counter(
            "phasebus_tasks_started",
            "Tasks started.",
            ["workflow"],
            registry=self.registry,
        )
        self._ended = Counter(
            "phasebus_tasks_ended",
            "Tasks ended, by outcome (done, failed, stopped, replaced).",
            ["workflow", "outcome"],
            registry=self.registry,
        )
        self._steps = Histogram(
            "phasebus_step_duration_seconds",
            "How long the steps of ended tasks took.",
            ["workflow", "step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._answers = Counter(
            "phasebus_answers",
            "Answers to actions received, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_EngineState(engine))
        self._stop_observing = [
            # what this server did: with servers sharing a store, each counts its own
            engine.add_observer(
                self._observe,
                message_types=(TASK_STARTED, TASK_END),
                kinds=(Kind.EVENT,),
                here_only=True,
            ),
            engine.add_observer(self._observe, kinds=_ANSWER_KINDS, here_only=True),
        ]

    def close(self) -> None:
        """Stop observing the engine."""
        for stop in self._stop_observing:
            stop()

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def _observe(self, message: Message) -> None:
        if isinstance(message, Event):
            if message.message_type == TASK_STARTED:
                self._started.labels(str(message.data.get("workflow"))).inc()
            elif message.message_type == TASK_END:
                self._task_ended(message.data)
        elif message.kind in _ANSWER_KINDS:
            self._answers.labels(message.kind.value).inc()

    def _task_ended(self, data: Mapping[str, Any]) -> None:
        workflow = str(data.get("descriptor_id"))
        self._ended.labels(workflow, str(data.get("outcome"))).inc()
        try:
            result = self._engine.task(str(data.get("task_id")))
        except (LookupError, StoreError):  # gone from memory, an asynchronous store
            return
        if isinstance(result, TaskResult):
            for step in result.steps:
                self._steps.labels(workflow, step.name).observe(step.duration)
