"""The commands that ask a running server: ``tasks``, ``task``, ``history``, ``workflows --url``.

They speak the HTTP API with the standard library (one request each, run in a
worker thread so the trio loop stays free) and sign requests the way Resoto's
clients do when a pre-shared key is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import trio

from ._auth import make_token
from ._errors import ServerError as ServerError

#: Where the commands look for a server unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8900"
URL_VARIABLE = "PHASEBUS_URL"
PSK_VARIABLE = "PHASEBUS_PSK"


def server_url(url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Return ``url``, else ``$PHASEBUS_URL``, else the default address.

    A URL without a scheme (``127.0.0.1:8900``) means ``http://``.
    """
    environ = os.environ if environ is None else environ
    chosen = (url or environ.get(URL_VARIABLE) or DEFAULT_URL).strip().rstrip("/")
    if "://" not in chosen:
        chosen = "http://" + chosen
    return chosen


def server_psk(psk: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return ``psk``, else ``$PHASEBUS_PSK``, else None."""
    environ = os.environ if environ is None else environ
    return psk if psk is not None else environ.get(PSK_VARIABLE) or None


def _refusal(url: str, psk: str | None, detail: str) -> ServerError:
    if psk is None:
        return ServerError(
            f"{url} wants a token: give --psk or set {PSK_VARIABLE}"
            + (f" ({detail})" if detail else "")
        )
    return ServerError(
        f"{url} refused the pre-shared key: tokens signed with it are not accepted"
        f" (check --psk or {PSK_VARIABLE})" + (f": {detail}" if detail else "")
    )


def _request(
    url: str,
    method: str,
    path: str,
    psk: str | None,
    query: Mapping[str, str] | None = None,
    body: Any = None,
) -> Any:
    target = url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode("utf-8")
    try:
        request = urllib.request.Request(
            target, data=data, method=method, headers={"Accept": "application/json"}
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if psk is not None:
            request.add_header("Authorization", f"Bearer {make_token(psk)}")
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return json.loads(raw) if raw.strip() else None
    except urllib.error.HTTPError as error:
        detail, problems = "", []  # type: str, list[Any]
        with contextlib.suppress(ValueError, AttributeError):
            answer = json.loads(error.read())
            detail, problems = answer.get("error", ""), answer.get("problems") or []
        if error.code == 401:
            raise _refusal(url, psk, "; ".join(problems)) from None
        message = detail or f"{method} {target}: HTTP {error.code}"
        if problems:
            message += ": " + "; ".join(str(p) for p in problems)
        raise ServerError(message) from None
    except ValueError as error:  # not a URL urllib can use
        raise ServerError(f"--url: {error}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(
            f"cannot reach phasebus at {url}: {reason} (is 'phasebus serve' running?)"
        ) from None


async def fetch(
    url: str, path: str, psk: str | None, query: Mapping[str, str] | None = None
) -> Any:
    """GET a JSON document from the server."""
    return await trio.to_thread.run_sync(_request, url, "GET", path, psk, query)


async def call(url: str, method: str, path: str, psk: str | None, body: Any = None) -> Any:
    """Send a request with an optional JSON body; return the answer's JSON (None if empty)."""
    return await trio.to_thread.run_sync(_request, url, method, path, psk, None, body)


def quoted(segment: str) -> str:
    """Quote one path segment (an id) for a URL."""
    return urllib.parse.quote(segment, safe="")


# ---------------------------------------------------------------- rendering


def _ago(moment: str | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - datetime.fromisoformat(moment)).total_seconds()
    return f"{seconds:.0f}s ago" if seconds >= 0 else f"in {-seconds:.0f}s"


def render_running(tasks: Sequence[Mapping[str, Any]], now: datetime, out: TextIO) -> None:
    """Print running tasks: the current step, who is still owed an answer, deadlines, stalls."""
    running = [t for t in tasks if t.get("running")]
    if not running:
        out.write("no running tasks\n")
        return
    for task in running:
        out.write(f"{task['id']}  {task['workflow']}  started {task['started_at']}\n")
        step = task.get("step")
        if step is None:
            queued = task.get("state") == "queued"
            out.write("  queued: starts when the active run ends\n" if queued else "  starting\n")
            continue
        stalled = "  STALLED" if step.get("stalled") else ""
        out.write(
            f"  step         {step['name']} ({step['action']}), deadline {step['deadline']}"
            f" ({_ago(step['deadline'], now)}){stalled}\n"
        )
        heard = step.get("last_heard", {})
        owed = step["waiting_for"]
        if owed:
            for index, subscriber in enumerate(owed):
                label = "waiting for" if index == 0 else ""
                progress = step.get("progress", {}).get(subscriber)
                share = f", progress {_fraction(progress):.0%}" if progress else ""
                out.write(
                    f"  {label:<12} {subscriber} (last heard {_ago(heard.get(subscriber), now)}"
                    f"{share})\n"
                )
        else:
            out.write("  waiting for  nobody\n")
        answered = ", ".join(
            f"{sid} ({answer})" for sid, answer in sorted(step["answered"].items())
        )
        if answered:
            out.write(f"  answered     {answered}\n")
        for error in step.get("errors", []):
            out.write(f"  error        {error}\n")


def _fraction(progress: Mapping[str, Any]) -> float:
    if progress.get("kind") == "progress":
        return float(progress["current"]) / float(progress["total"])
    parts = progress.get("parts") or []
    return sum(_fraction(part) for part in parts) / len(parts) if parts else 0.0


def render_finished(tasks: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """Print finished tasks, one line each."""
    finished = [t for t in tasks if not t.get("running")]
    if not finished:
        out.write("no finished tasks\n")
        return
    for task in finished:
        error = f"  {task['error']}" if task.get("error") else ""
        out.write(
            f"{task['ended_at']}  {outcome_text(task):<8} {task['workflow']:<24} {task['id']}"
            f"  {task['duration']:.1f}s{error}{_step_problems(task)}\n"
        )


def outcome_text(task: Mapping[str, Any]) -> str:
    """Return a finished task's outcome, marking a ``done`` whose steps met errors apart."""
    outcome = str(task["outcome"])
    if outcome == "done" and task.get("has_errors"):
        return "done (errors)"
    return outcome


def _step_problems(task: Mapping[str, Any]) -> str:
    marks = [
        f"{step['name']} {step['ended'].replace('_', ' ')}"
        for step in task.get("steps", ())
        if step.get("ended", "done") not in ("done", "stopped")
    ]
    return f"  [{', '.join(marks)}]" if marks else ""


def render_task(task: Mapping[str, Any], now: datetime, out: TextIO) -> None:
    """Print one task, running or finished."""
    if task.get("running"):
        render_running([task], now, out)
        return
    out.write(
        f"{task['id']}  {task['workflow']}  {outcome_text(task)} in {task['duration']:.1f}s"
        f"  ({task['started_at']} to {task['ended_at']})\n"
    )
    if task.get("error"):
        out.write(f"  error: {task['error']}\n")
    for step in task["steps"]:
        answered = ", ".join(
            f"{sid} ({answer})" for sid, answer in sorted(step["answered"].items())
        )
        ended = step.get("ended", "timed_out" if step["timed_out"] else "done")
        mark = "" if ended == "done" else f"  {ended.replace('_', ' ')}".upper()
        released = step.get("released") or []
        if released:
            mark += f" ({', '.join(released)} went away)"
        out.write(f"  {step['name']:<24} {step['duration']:7.2f}s  {answered or '-'}{mark}\n")
        for error in step["errors"]:
            out.write(f"  {'':<24} error: {error}\n")


def render_ledger(workflows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """Print each workflow's schedules in force, next run and recent schedule firings."""
    for index, workflow in enumerate(workflows):
        if index:
            out.write("\n")
        origin = workflow.get("origin")
        state = "" if workflow.get("active", True) else ", inactive"
        out.write(f"{workflow['id']}  {workflow['kind']}{f', {origin}' if origin else ''}{state}\n")
        schedules = ", ".join(f"{s['cron']} ({s['timezone']})" for s in workflow["schedules"])
        out.write(f"  schedules  {schedules or 'none'}\n")
        out.write(f"  next run   {workflow['next_run'] or 'not scheduled'}\n")
        for firing in workflow.get("ledger", []):
            task = f"  task {firing['task_id']}" if firing.get("task_id") else ""
            when = f"{firing['planned']} (at {firing['actual']})"
            out.write(f"  fired      {when}: {firing['outcome']}{task}\n")


def now_utc() -> datetime:
    """Return the current time (for rendering relative times)."""
    return datetime.now(UTC)
