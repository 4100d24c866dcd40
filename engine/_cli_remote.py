"""The commands that drive a running server: jobs, workflows, run --url, stop, events, token.

Requests go through :mod:`engine._client`; the event stream is the server's
``/events`` WebSocket. ``run WORKFLOW --url`` starts the workflow on the server
and follows it with the same live view as an in-process run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio
import trio_websocket
from rich.console import Console
from rich.text import Text

from ._auth import make_token
from ._catalog import UsageError, one_line
from ._client import PSK_VARIABLE, ServerError, call, fetch, quoted
from ._convert import (
    message_from_json,
    structure_declaration,
    structure_shape,
    unstructure_declaration,
)
from ._definitions import Declarations, Job, Workflow
from ._engine import TASK_END, StepInfo, TaskInfo
from ._errors import DeclarationError, MessageError
from ._machine import Outcome
from ._messages import Message
from ._records import TaskResult, steps_from_view
from ._shapes import TaskInfoView, TaskResultView
from ._view import LiveView

EXIT_OK = 0
EXIT_FAILED = 1

#: Seconds between two reads of a remote task for the live panel.
REMOTE_REFRESH = 0.25


# ---------------------------------------------------------------- tasks from their JSON


def task_from_json(data: Mapping[str, Any]) -> TaskInfo | TaskResult:
    """Read a task as ``GET /task/{id}`` shows it: a running task's info or a result.

    Raises:
        InvalidInputError: the JSON is not a task's view (naming the field).
    """
    if not data.get("running"):
        result = structure_shape(data, TaskResultView)
        return TaskResult(
            result.id,
            result.workflow,
            result.outcome,
            result.error,
            tuple(result.errors),
            result.started_at,
            result.ended_at,
            steps_from_view(result.steps),
        )
    task = structure_shape(data, TaskInfoView)
    step = task.step
    info = None
    if step is not None:
        info = StepInfo(
            name=step.name,
            action=step.action,
            message_type=step.message_type,
            started_at=step.started_at,
            deadline=step.deadline,
            waiting_for=tuple(step.waiting_for),
            answered=dict(step.answered),
            progress=dict(step.progress),
            errors=tuple(step.errors),
            last_heard=dict(step.last_heard),
            stalled=step.stalled,
            released=tuple(step.released),
        )
    return TaskInfo(
        task.id,
        task.workflow,
        task.workflow_name if task.workflow_name is not None else task.workflow,
        task.state,
        task.started_at,
        info,
        steps_from_view(task.steps),
    )


@attrs.frozen
class RemoteSource:
    """A server's task, as the live view's :class:`~engine._view.TaskSource`."""

    url: str
    psk: str | None

    async def task(self, task_id: str) -> TaskInfo | TaskResult:
        return task_from_json(await fetch(self.url, f"/task/{quoted(task_id)}", self.psk))

    async def wait_task(self, task_id: str) -> TaskResult:
        while True:
            task = await self.task(task_id)
            if isinstance(task, TaskResult):
                return task
            await trio.sleep(REMOTE_REFRESH)

    def now(self) -> datetime:
        return datetime.now(UTC)


# ---------------------------------------------------------------- the event stream


class EventStream:
    """The messages of a server's ``/events`` WebSocket, as parsed JSON objects."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, url: str) -> None:
        self._ws = ws
        self._url = url

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            try:
                value = json.loads(await self._ws.get_message())
            except trio_websocket.ConnectionClosed as closed:
                reason = closed.reason
                raise ServerError(
                    f"{self._url} closed the event stream"
                    + (f": {reason.reason}" if reason and reason.reason else "")
                ) from None
            if isinstance(value, dict):
                return value


class _Messages:
    """An event stream's messages as :class:`Message` values (unreadable ones skipped)."""

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Message:
        while True:
            value = await self._stream.__anext__()
            try:
                return message_from_json(value)
            except MessageError:
                continue  # a newer server's message this client cannot read


def _refused(url: str, psk: str | None, status: int) -> ServerError:
    if status != 401:
        return ServerError(f"{url} refused the event stream: HTTP {status}")
    if psk is None:
        return ServerError(f"{url} wants a token: give --psk or set {PSK_VARIABLE}")
    return ServerError(
        f"{url} refused the pre-shared key: tokens signed with it are not accepted"
        f" (check --psk or {PSK_VARIABLE})"
    )


@asynccontextmanager
async def open_events(
    url: str, psk: str | None, show: Sequence[str] | None = None
) -> AsyncIterator[EventStream]:
    """Open the server's ``/events`` stream; yield its messages (parsed JSON).

    Raises:
        ServerError: the server cannot be reached or refuses the stream
            (naming a missing or refused pre-shared key).
    """
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    resource = parts.path.rstrip("/") + "/events"
    if show:
        resource += "?" + urllib.parse.urlencode({"show": ",".join(show)})
    headers = [] if psk is None else [(b"authorization", f"Bearer {make_token(psk)}".encode())]
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as error:
        raise ServerError(
            f"cannot reach phasebus at {url}: {error.strerror or error}"
            " (is 'phasebus serve' running?)"
        ) from None
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    if secure:
        stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, host, resource, extra_headers=headers
            )
            try:
                yield EventStream(ws, url)
            finally:
                with trio.move_on_after(2) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except* trio_websocket.ConnectionRejected as group:
        rejected = group.exceptions[0]
        assert isinstance(rejected, trio_websocket.ConnectionRejected)
        raise _refused(url, psk, rejected.status_code) from None
    except* (trio_websocket.HandshakeError, trio.BrokenResourceError) as group:
        raise ServerError(f"cannot open {url}/events: {group.exceptions[0]}") from None
    finally:
        await trio.aclose_forcefully(stream)


def _ends(value: Mapping[str, Any], task_id: str) -> bool:
    return (
        value.get("kind") == "event"
        and value.get("message_type") == TASK_END
        and value.get("data", {}).get("task_id") == task_id
    )


# ---------------------------------------------------------------- run --url, stop, events


async def run_remote(
    url: str,
    psk: str | None,
    workflow_id: str,
    *,
    stdout: TextIO,
    console: Console | None,
) -> int:
    """Start a workflow on a server and follow it; return 0 when it ends ``done``.

    On ``console``, the live view of an in-process run; otherwise the event
    stream as JSON lines (``stdout``).
    """
    try:
        declared = await fetch(url, f"/workflow/{quoted(workflow_id)}", psk)
    except ServerError as error:
        if str(error).startswith("unknown workflow"):
            raise UsageError(f"{error} on {url}") from None
        raise
    workflow = structure_declaration(declared, Workflow)
    async with open_events(url, psk) as stream:
        started = await call(url, "POST", f"/workflow/{quoted(workflow_id)}/run", psk)
        task_id = started.get("task_id")
        if task_id is None:
            raise ServerError(f"workflow {workflow_id!r} was not started: {started['reason']}")
        source = RemoteSource(url, psk)
        if console is None:
            async for value in stream:
                stdout.write(json.dumps(value, separators=(",", ":")) + "\n")
                stdout.flush()
                if _ends(value, task_id):
                    break
            result = await source.wait_task(task_id)
        else:
            console.print(
                Text.assemble("Running ", (workflow.id, "bold blue"), f" on {url}, task {task_id}")
            )
            view = LiveView(console, source, workflow, task_id, refresh=REMOTE_REFRESH)
            result = await view.follow(_Messages(stream))
    return EXIT_OK if result.outcome is Outcome.DONE else EXIT_FAILED


async def stop_task(url: str, psk: str | None, task: str, *, stdout: TextIO) -> int:
    """Stop a running or queued task (by id or unique prefix); 1 if it had already ended."""
    answer = await call(url, "DELETE", f"/task/{quoted(task)}", psk)
    if answer["stopped"]:
        stdout.write(f"stopping task {answer['task_id']}\n")
        return EXIT_OK
    stdout.write(f"task {answer['task_id']} had already ended\n")
    return EXIT_FAILED


def event_line(value: Mapping[str, Any]) -> str:
    """Return one line for a message of the bus: time, kind, type and its data."""
    data = value.get("data") or {}
    fields = " ".join(
        f"{key}={json.dumps(item, separators=(',', ':'), default=str)}"
        for key, item in data.items()
        if key != "message"
    )
    now = datetime.now(UTC).strftime("%H:%M:%S")
    kind = value.get("kind", "?")
    line = f"{now} {kind:<15} {value.get('message_type', '?'):<24} {fields}"
    if "message" in data and not isinstance(data["message"], dict):
        line += f" message={json.dumps(data['message'])}"
    return line.rstrip()


async def tail_events(
    url: str,
    psk: str | None,
    *,
    show: Sequence[str] | None,
    as_json: bool,
    limit: int | None,
    stdout: TextIO,
) -> int:
    """Print the messages of the bus, one line each, until interrupted (or ``limit``)."""
    count = 0
    async with open_events(url, psk, show) as stream:
        async for value in stream:
            if as_json:
                stdout.write(json.dumps(value, separators=(",", ":")) + "\n")
            else:
                stdout.write(event_line(value) + "\n")
            stdout.flush()
            count += 1
            if limit is not None and count >= limit:
                break
    return EXIT_OK


def print_token(psk: str | None, *, expires_in: float, stdout: TextIO) -> int:
    """Print a bearer token for the PSK."""
    if psk is None:
        raise UsageError(f"token: give --psk or set {PSK_VARIABLE}")
    stdout.write(make_token(psk, expires_in=expires_in) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------- jobs


def _triggers(args: argparse.Namespace) -> list[dict[str, Any]]:
    triggers: list[dict[str, Any]] = []
    if args.schedule is not None:
        triggers.append({"cron": args.schedule, "timezone": args.timezone})
    if args.event is not None:
        trigger: dict[str, Any] = {"event": args.event}
        if args.filter is not None:
            trigger["filter"] = args.filter
        triggers.append(trigger)
    return triggers


def job_body(args: argparse.Namespace, current: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the JSON of a job from ``jobs add`` / ``jobs update`` options.

    For ``update``, options not given keep the job's ``current`` values.
    """
    body: dict[str, Any] = {}
    if current is not None:
        body = {k: v for k, v in current.items() if k not in ("origin",)}
    if args.command_line:
        body["command"] = list(args.command_line)
        body.pop("callable", None)
    if args.callable is not None:
        body["callable"] = args.callable
        body.pop("command", None)
    if args.schedule is not None or args.event is not None:
        body["triggers"] = _triggers(args)
    if args.wait_for_event is not None:
        event, _, timeout = args.wait_for_event.partition(":")
        body["wait_for"] = {"message_type": event}
        if timeout:
            try:
                body["wait_timeout"] = float(timeout)
            except ValueError:
                raise UsageError(
                    f"--wait-for-event: the timeout after ':' must be seconds, got {timeout!r}"
                ) from None
    if args.timeout is not None:
        body["timeout"] = args.timeout
    if args.active is not None:
        body["active"] = args.active
    if args.description is not None:
        body["description"] = args.description
    return body


def render_job(job: Mapping[str, Any]) -> str:
    """Return the lines describing one job."""
    what = " ".join(job["command"]) if job.get("command") else f"callable {job.get('callable')}"
    lines = [f"{job['id']}  {'active' if job.get('active', True) else 'inactive'}  {job['origin']}"]
    lines.append(f"  run        {what}  (timeout {job.get('timeout', 60):g}s)")
    for trigger in job.get("triggers", []):
        if "cron" in trigger:
            lines.append(f"  schedule   {trigger['cron']} ({trigger.get('timezone', 'UTC')})")
        else:
            text = f"  event      {trigger['event']}"
            if trigger.get("filter"):
                text += " " + json.dumps(trigger["filter"], sort_keys=True)
            lines.append(text)
    if job.get("wait_for"):
        lines.append(
            f"  wait for   {job['wait_for']['message_type']}"
            f" (within {job.get('wait_timeout', 60):g}s)"
        )
    if job.get("description"):
        lines.append(f"  about      {job['description']}")
    return "\n".join(lines)


async def jobs_command(
    args: argparse.Namespace, url: str, psk: str | None, *, stdout: TextIO
) -> int:
    """Carry out ``phasebus jobs SUBCOMMAND``."""
    action = args.jobs_command
    if action == "list":
        jobs = await fetch(url, "/jobs", psk)
        if args.json:
            stdout.write(json.dumps(jobs, indent=2) + "\n")
        elif not jobs:
            stdout.write("no jobs\n")
        else:
            stdout.write("\n\n".join(render_job(job) for job in jobs) + "\n")
        return EXIT_OK
    path = f"/job/{quoted(args.id)}"
    if action in ("add", "update"):
        current = await fetch(url, path, psk) if action == "update" else None
        if action == "add" and not args.command_line and args.callable is None:
            raise UsageError("jobs add: give the command after the id (or --callable NAME)")
        job = await call(url, "PUT", path, psk, job_body(args, current))
        stdout.write(("added " if action == "add" else "updated ") + render_job(job) + "\n")
        return EXIT_OK
    if action == "show":
        job = await fetch(url, path, psk)
        stdout.write((json.dumps(job, indent=2) if args.json else render_job(job)) + "\n")
        return EXIT_OK
    if action == "delete":
        await call(url, "DELETE", path, psk)
        stdout.write(f"deleted job {args.id}\n")
        return EXIT_OK
    if action in ("activate", "deactivate"):
        job = await call(url, "POST", f"{path}/{action}", psk)
        stdout.write(f"job {job['id']} is {'active' if job['active'] else 'inactive'}\n")
        return EXIT_OK
    assert action == "run"
    started = await call(url, "POST", f"{path}/run", psk)
    if started.get("task_id") is None:
        stdout.write(f"job {args.id} not started: {started['reason']}\n")
        return EXIT_FAILED
    stdout.write(f"{started['decision']} task {started['task_id']} of job {args.id}\n")
    return EXIT_OK


# ---------------------------------------------------------------- workflows


async def workflows_command(
    args: argparse.Namespace, url: str, psk: str | None, *, stdout: TextIO
) -> int:
    """Carry out ``phasebus workflows add|delete|activate|deactivate``."""
    action = args.workflows_command
    if action == "add":
        try:
            declarations = Declarations.from_file(Path(args.file))
        except DeclarationError as error:
            raise UsageError(one_line(error)) from None
        items: list[tuple[str, Workflow | Job]] = [
            *(("workflow", w) for w in declarations.workflows),
            *(("job", j) for j in declarations.jobs),
        ]
        if not items:
            raise UsageError(f"{args.file}: declares no workflow or job")
        await _define_all(url, psk, items)
        for kind, item in items:
            stdout.write(f"{kind} {item.id} defined on {url}\n")
        return EXIT_OK
    path = f"/workflow/{quoted(args.id)}"
    if action == "delete":
        await call(url, "DELETE", path, psk)
        stdout.write(f"deleted workflow {args.id}\n")
        return EXIT_OK
    answer = await call(url, "POST", f"{path}/{action}", psk)
    stdout.write(f"workflow {answer['id']} is {'active' if answer['active'] else 'inactive'}\n")
    return EXIT_OK


async def _define_all(url: str, psk: str | None, items: Sequence[tuple[str, Any]]) -> None:
    """PUT every definition; if the server refuses one, put back what was there before.

    Raises:
        ServerError: the refusal, naming the definition (nothing changed then).
    """
    existing = {entry["id"] for entry in await fetch(url, "/workflows", psk)}
    done: list[tuple[str, Any]] = []  # (path, what it held before, or None)
    for kind, item in items:
        path = f"/{kind}/{quoted(item.id)}"
        before = None
        if item.id in existing:
            with contextlib.suppress(ServerError):  # of the other kind: the PUT is refused
                before = await fetch(url, path, psk)
        try:
            await call(url, "PUT", path, psk, unstructure_declaration(item))
        except ServerError as error:
            for undo, previous in reversed(done):
                if previous is None:
                    await call(url, "DELETE", undo, psk)
                else:
                    kept = {key: value for key, value in previous.items() if key != "origin"}
                    await call(url, "PUT", undo, psk, kept)
            raise ServerError(f"{kind} {item.id}: {error} (nothing was changed)") from None
        done.append((path, before))


# ---------------------------------------------------------------- task logs


def render_log(log: Mapping[str, Any], out: TextIO) -> None:
    """Print a task's log, one entry per line (continuation lines indented)."""
    entries = log.get("entries", [])
    if not entries:
        out.write(f"task {log['task_id']}: nothing logged\n")
        return
    for entry in entries:
        where = "/".join(part for part in (entry.get("step"), entry.get("subscriber")) if part)
        kind = entry["kind"] + (f" ({entry['level']})" if entry.get("level") else "")
        first, *rest = str(entry["message"]).splitlines() or [""]
        out.write(f"{entry['at']}  {kind:<16} {where:<32} {first}\n")
        for line in rest:
            out.write(f"    {line}\n")
