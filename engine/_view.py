"""The terminal view of a run: a live panel while it runs, a summary table after.

The panel is drawn from :meth:`Engine.task` a few times a second: the phase,
the step, whom the step still waits for, who answered, the deadline, and a
progress bar for the task and for each listener's reported progress. Above
it, a log line for each step that ends and for each message a listener
reports. Nothing here starts a thread: the panel is refreshed by a trio task.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator
from datetime import datetime
from typing import Protocol

import attrs
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._bus import Listener
from ._definitions import Workflow
from ._engine import ERROR, PROGRESS, TASK_END, Engine, StepInfo, TaskInfo, TaskResult
from ._machine import END, Outcome
from ._messages import (
    Action,
    ActionDone,
    ActionError,
    ActionInfo,
    Event,
    Message,
    Progress,
    ProgressLeaf,
)

#: Seconds between two redraws of the live panel.
REFRESH_INTERVAL = 0.1

#: Progress bars shown per listener, at most.
MAX_BARS = 8

_OUTCOME_STYLES = {
    Outcome.DONE: "bold green",
    Outcome.FAILED: "bold red",
    Outcome.STOPPED: "bold yellow",
    Outcome.REPLACED: "bold yellow",
}


def _seconds(value: float) -> str:
    return f"{value:.2f}s"


def _leaves(progress: Progress) -> Iterator[ProgressLeaf]:
    if isinstance(progress, ProgressLeaf):
        yield progress
    else:
        for part in progress.parts:
            yield from _leaves(part)


def _leaf_label(leaf: ProgressLeaf) -> str:
    return "/".join((*leaf.path, leaf.name))


def _bar(fraction: float, width: int = 30) -> ProgressBar:
    return ProgressBar(total=1000, completed=round(fraction * 1000), width=width)


def _phases(workflow: Workflow) -> list[str]:
    phases: list[str] = []
    for step in workflow.steps:
        if step.phase is not None and step.phase not in phases:
            phases.append(step.phase)
    return phases


def task_fraction(workflow: Workflow, info: TaskInfo) -> float:
    """Return how much of the task is done: finished steps plus the current step's progress."""
    step = info.step
    names = [s.name for s in workflow.steps]
    if step is None or step.name not in names:
        return 0.0
    done = float(names.index(step.name))
    if step.progress:
        done += sum(p.fraction for p in step.progress.values()) / len(step.progress)
    return done / len(names)


def render_task(workflow: Workflow, info: TaskInfo, now: datetime) -> RenderableType:
    """Return the live panel of a running task."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    step = info.step
    phases = _phases(workflow)
    names = [s.name for s in workflow.steps]
    elapsed = (now - info.started_at).total_seconds()
    if step is None or step.name not in names:
        grid.add_row("state", Text(info.state))
    else:
        declared = workflow.step(step.name)
        if declared.phase is not None:
            grid.add_row(
                "phase",
                Text(f"{declared.phase}  ({phases.index(declared.phase) + 1} of {len(phases)})"),
            )
        line = Text(step.name, style="bold")
        line.append(f"  ({names.index(step.name) + 1} of {len(names)}, {step.action}")
        if step.deadline is not None:
            line.append(f", deadline in {max(0.0, (step.deadline - now).total_seconds()):.0f}s")
        line.append(")")
        grid.add_row("step", line)
        grid.add_row("waiting for", _names(step.waiting_for, "nobody", "yellow"))
        grid.add_row("answered", _answers(step))
        for error in step.errors:
            grid.add_row("error", Text(error, style="red"))
    grid.add_row("task", _progress_row(task_fraction(workflow, info)))
    if step is not None:
        for subscriber_id, progress in sorted(step.progress.items()):
            grid.add_row(Text(subscriber_id, style="magenta"), _progress_row(progress.fraction))
            leaves = list(_leaves(progress))
            for leaf in leaves[:MAX_BARS]:
                grid.add_row(
                    Text(f"  {_leaf_label(leaf)}", style="dim"),
                    _progress_row(leaf.fraction, f"{leaf.current}/{leaf.total}"),
                )
            if len(leaves) > MAX_BARS:
                grid.add_row(Text(f"  … {len(leaves) - MAX_BARS} more", style="dim"), Text(""))
    title = Text.assemble(
        ("phasebus ", "bold"), (info.workflow, "bold blue"), f"  task {info.id[:8]}"
    )
    return Panel(grid, title=title, subtitle=f"{elapsed:.1f}s", title_align="left")


def _names(names: tuple[str, ...] | list[str], empty: str, style: str) -> Text:
    if not names:
        return Text(empty, style="dim")
    return Text(", ".join(names), style=style)


def _answers(step: StepInfo) -> Text:
    if not step.answered:
        return Text("—", style="dim")
    text = Text()
    for index, (subscriber_id, answer) in enumerate(sorted(step.answered.items())):
        if index:
            text.append(", ")
        text.append(f"{subscriber_id} {answer}", style="green" if answer == "done" else "red")
    return text


def _progress_row(fraction: float, suffix: str | None = None) -> Table:
    row = Table.grid(padding=(0, 1))
    row.add_row(_bar(fraction), Text(suffix or f"{fraction:4.0%}"))
    return row


def summary_table(workflow: Workflow, result: TaskResult) -> Table:
    """Return the summary of a finished task: each step's duration, answers and outcome."""
    style = _OUTCOME_STYLES.get(result.outcome, "bold")
    title = Text.assemble(
        (workflow.id, "bold blue"),
        "  ",
        (result.outcome.value, style),
        f" in {_seconds(result.duration)}",
    )
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("phase", style="cyan")
    table.add_column("step", style="bold")
    table.add_column("duration", justify="right")
    table.add_column("answered by")
    table.add_column("outcome")
    for index, step in enumerate(result.steps, 1):
        try:
            phase = workflow.step(step.name).phase or ""
        except KeyError:
            phase = ""
        if step.answered:
            answered = Text(
                ", ".join(f"{sid} ({answer})" for sid, answer in sorted(step.answered.items()))
            )
        else:
            answered = Text("nobody subscribed", style="dim")
        if step.timed_out:
            outcome = Text("timed out", style="red")
        elif step.errors:
            outcome = Text("error", style="red")
        else:
            outcome = Text("done", style="green")
        table.add_row(str(index), phase, step.name, _seconds(step.duration), answered, outcome)
    return table


def render_summary(workflow: Workflow, result: TaskResult) -> RenderableType:
    """Return the summary table followed by the task's errors, if any."""
    parts: list[RenderableType] = [summary_table(workflow, result)]
    for error in result.errors:
        parts.append(Text(f"error: {error}", style="red"))
    if result.error is not None and result.error not in result.errors:
        parts.append(Text(f"{result.outcome.value}: {result.error}", style="red"))
    return Group(*parts)


@attrs.define
class _StepLog:
    name: str
    started: float
    answers: list[str] = attrs.Factory(list)
    failed: bool = False


class TaskSource(Protocol):
    """Where a live view reads a task: an engine in process, or a server."""

    async def task(self, task_id: str) -> TaskInfo | TaskResult:
        """Return the task's info while it runs, its result once it ended."""

    async def wait_task(self, task_id: str) -> TaskResult:
        """Return the task's result once it ended."""

    def now(self) -> datetime:
        """Return the current wall-clock time (the source's)."""


@attrs.frozen
class EngineSource:
    """An engine in this process, as a :class:`TaskSource`."""

    engine: Engine

    async def task(self, task_id: str) -> TaskInfo | TaskResult:
        return self.engine.task(task_id)

    async def wait_task(self, task_id: str) -> TaskResult:
        return await self.engine.wait_task(task_id)

    def now(self) -> datetime:
        return self.engine.clock.now()


class LiveView:
    """Follow one task on a terminal: log lines above a live panel, then the summary."""

    def __init__(
        self,
        console: Console,
        engine: Engine | TaskSource,
        workflow: Workflow,
        task_id: str,
        *,
        refresh: float = REFRESH_INTERVAL,
    ) -> None:
        self.console = console
        self.source: TaskSource = EngineSource(engine) if isinstance(engine, Engine) else engine
        self._refresh_interval = refresh
        self.workflow = workflow
        self.task_id = task_id
        self._current: _StepLog | None = None
        self._live: Live | None = None

    async def follow(self, listener: Listener | AsyncIterable[Message]) -> TaskResult:
        """Show the task until it ends; return its result.

        ``listener`` must see every message (opened without a subscriber or
        types, or a server's ``/events`` without ``show``).
        """
        with Live(
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            self._live = live
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refresh, live)
                async for message in listener:
                    self._log(message)
                    if (
                        isinstance(message, Event)
                        and message.message_type == TASK_END
                        and message.data.get("task_id") == self.task_id
                    ):
                        break
                nursery.cancel_scope.cancel()
            self._live = None
        result = await self.source.wait_task(self.task_id)
        self.console.print(render_summary(self.workflow, result))
        return result

    async def _refresh(self, live: Live) -> None:
        while True:
            info = await self.source.task(self.task_id)
            if isinstance(info, TaskInfo):
                live.update(render_task(self.workflow, info, self.source.now()), refresh=True)
            await trio.sleep(self._refresh_interval)

    def _print(self, renderable: RenderableType) -> None:
        (self._live.console if self._live is not None else self.console).print(renderable)

    def _log(self, message: Message) -> None:
        if isinstance(message, Event):
            data = message.data
            if message.message_type == TASK_END and data.get("task_id") == self.task_id:
                self._end_step()
            elif message.message_type == ERROR and data.get("task") == self.task_id:
                if self._current is not None:
                    self._current.failed = True
                self._print(Text(f"    error: {data.get('message')}", style="red"))
            elif message.message_type == PROGRESS and data.get("task") == self.task_id:
                step = data.get("step")
                if self._current is None or step != self._current.name:
                    self._end_step()
                    if isinstance(step, str) and step != END:
                        self._current = _StepLog(step, trio.current_time())
            return
        if isinstance(message, Action) or getattr(message, "task", None) != self.task_id:
            return
        if (
            isinstance(message, ActionDone | ActionError)
            and self._current is not None
            and message.step == self._current.name
        ):
            answer = "done" if isinstance(message, ActionDone) else "error"
            self._current.answers.append(f"{message.subscriber_id} {answer}")
        elif isinstance(message, ActionInfo):
            style = "red" if message.level == "error" else "dim"
            self._print(Text(f"    {message.subscriber_id}: {message.message}", style=style))

    def _end_step(self) -> None:
        step, self._current = self._current, None
        if step is None:
            return
        took = trio.current_time() - step.started
        line = Text("  ✗ " if step.failed else "  ✓ ", style="red" if step.failed else "green")
        line.append(f"{step.name:<24}", style="bold")
        line.append(f"{_seconds(took):>8}  ")
        line.append(", ".join(step.answers) if step.answers else "nobody subscribed", style="dim")
        self._print(line)
