"""The ``phasebus`` command line.

Subcommands that work locally: ``run``, ``workflows``, ``validate``,
``diagram``, ``schedule``; ``serve`` runs a server; ``tasks``, ``task``,
``history``, ``jobs``, ``workflows add|delete|activate|deactivate``, ``run
--url``, ``stop``, ``events`` and ``token`` drive a server. The built-in
workflows are handed to :func:`main` by the program that runs it (the
``phasebus`` launcher in :mod:`machines`) and are always known; ``--workflows
PATH`` adds the workflows and jobs declared in a ``.toml`` or ``.json`` file,
or in the files of a directory.

Exit status: 0 on success; 1 when a run does not end ``done``, ``validate``
finds a problem or ``diagram --check`` finds a stale diagram; 2 for a usage
error (a bad option, an unknown workflow, an unreadable or invalid
``--workflows`` file, SVG without Graphviz); 130 when interrupted. Errors are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import trio
from rich.console import Console
from rich.text import Text

from ._bus import Listener
from ._catalog import (
    BUILTIN,
    Catalog,
    UsageError,
    clashes,
    declaration_files,
    load_catalog,
    one_line,
    plural,
)
from ._cli_remote import (
    jobs_command,
    print_token,
    render_log,
    run_remote,
    stop_task,
    tail_events,
    workflows_command,
)
from ._client import (
    DEFAULT_URL,
    PSK_VARIABLE,
    URL_VARIABLE,
    fetch,
    now_utc,
    render_finished,
    render_ledger,
    render_running,
    render_task,
    server_psk,
    server_url,
)
from ._definitions import (
    CronTrigger,
    Declarations,
    EventTrigger,
    Trigger,
    Workflow,
    action_kind,
)
from ._demo import serve_demo
from ._diagrams import SUFFIXES, DiagramError, Format, diagram, mermaid_diagram
from ._engine import TASK_END, Engine, TaskResult, open_engine
from ._errors import DeclarationError, PhasebusError
from ._machine import Outcome
from ._messages import Event
from ._serve import add_serve_arguments, serve_command
from ._view import LiveView

logger = logging.getLogger(__name__)

PROG = "phasebus"

#: Where ``diagram --check`` and ``diagram --out`` look by default.
DEFAULT_DIAGRAMS = Path("diagrams")

#: Messages the event stream of ``run --json`` may hold unread.
STREAM_BUFFER = 1 << 16

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Run, list, check and draw phasebus workflows.",
        epilog="Try: phasebus run collect_and_cleanup --demo",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr (-v: info, -vv: debug, libraries included); also after the"
        " subcommand",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def workflows_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--workflows",
            metavar="PATH",
            type=Path,
            action="append",
            help="also load the workflows and jobs declared in PATH: a .toml or .json file, or"
            " a directory of them (repeat for more)",
        )

    run = commands.add_parser(
        "run",
        help="run one task of a workflow and show it",
        description="Run one task of a workflow in-process; exit 0 when it ends done.",
    )
    run.add_argument("workflow", metavar="WORKFLOW", help="the workflow or job to run")
    run.add_argument(
        "--demo",
        action="store_true",
        help="attach simulated listeners (collector, metrics exporter, ...) that answer every step",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the event stream as JSON lines (the default when output is not a terminal)",
    )
    run.add_argument(
        "--url",
        help="start it on this server instead and follow it there (exit status by its outcome)",
    )
    run.add_argument("--psk", help=f"pre-shared key to sign requests (default ${PSK_VARIABLE})")
    workflows_option(run)

    listing = commands.add_parser(
        "workflows",
        help="list every workflow and job",
        description="List every workflow and job: its steps, triggers and next scheduled time.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    workflows_option(listing)
    changes = listing.add_subparsers(dest="workflows_command", metavar="SUBCOMMAND")

    validate = commands.add_parser(
        "validate",
        help="check workflow declaration files",
        description="Load workflow declarations (.toml, .json, or directories of them) and print "
        "every problem with its path; exit 1 if there is any.",
    )
    validate.add_argument("files", metavar="FILE", nargs="+", type=Path)

    draw = commands.add_parser(
        "diagram",
        help="draw the state diagrams of workflows",
        description="Draw workflows' state diagrams (all built-in ones, and those of --workflows, "
        "unless named). Without --out, print them.",
    )
    draw.add_argument("workflows_named", metavar="WORKFLOW", nargs="*")
    draw.add_argument(
        "--format", choices=list(SUFFIXES), default="mermaid", help="default: mermaid"
    )
    draw.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="write DIR/<workflow>.<suffix> (with --check: compare with them; default ./diagrams)",
    )
    draw.add_argument(
        "--check",
        action="store_true",
        help="fail unless the Mermaid files in --out DIR are what the workflows draw now",
    )
    workflows_option(draw)

    schedule = commands.add_parser(
        "schedule",
        help="look at workflows' schedules",
        description="Look at workflows' schedules.",
    )
    schedule_commands = schedule.add_subparsers(
        dest="schedule_command", metavar="SUBCOMMAND", required=True
    )
    preview = schedule_commands.add_parser(
        "preview",
        help="list the next times a workflow's schedules fire, flagging daylight-saving changes",
        description="List the next times a workflow's cron triggers fire, in UTC and local "
        "time, and say how daylight-saving changes affect them.",
    )
    preview.add_argument("workflow", metavar="WORKFLOW")
    preview.add_argument(
        "--next", type=_count, default=10, metavar="N", help="how many times (1-1000, default 10)"
    )
    preview.add_argument(
        "--from",
        dest="start",
        type=_moment,
        metavar="TIME",
        help="start from this ISO 8601 time with a UTC offset (default: now)",
    )
    preview.add_argument("--json", action="store_true", help="print JSON")
    workflows_option(preview)

    def server_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--url",
            help=f"the server (default ${URL_VARIABLE}, else {DEFAULT_URL})",
        )
        sub.add_argument("--psk", help=f"pre-shared key to sign requests (default ${PSK_VARIABLE})")
        sub.add_argument("--json", action="store_true", help="print the server's JSON")

    tasks = commands.add_parser(
        "tasks",
        help="show a server's running tasks and who they wait for",
        description="Show each running task of a server: its current step, the listeners still "
        "owed an answer, when each was last heard from, the deadline, and whether it stalled.",
    )
    server_options(tasks)
    one = commands.add_parser(
        "task",
        help="show one task of a server",
        description="Show one task, running or finished (TASK: its id or a unique prefix).",
    )
    one.add_argument("task_id", metavar="TASK")
    one.add_argument(
        "--log",
        action="store_true",
        help="show the task's log: listeners' infos and errors, time-outs, failed commands",
    )
    server_options(one)
    stop = commands.add_parser(
        "stop",
        help="stop a running task on a server",
        description="Stop a running or queued task (TASK: its id or a unique prefix); the "
        "listeners still owed an answer get action_abort.",
    )
    stop.add_argument("task_id", metavar="TASK")
    server_options(stop)
    events = commands.add_parser(
        "events",
        help="print a server's bus, one line per message",
        description="Print the messages of a server's bus as they come, one line each.",
    )
    events.add_argument(
        "--show",
        metavar="TYPES",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        help="only these message types, comma-separated (e.g. task_end,error)",
    )
    events.add_argument(
        "--limit", type=_count, metavar="N", help="stop after N messages (default: never)"
    )
    server_options(events)
    token = commands.add_parser(
        "token",
        help="print a bearer token for the pre-shared key (for curl and scripts)",
        description="Print a JWT signed with the pre-shared key, as Resoto's clients send it: "
        'curl -H "Authorization: Bearer $(phasebus token)" ...',
    )
    token.add_argument("--psk", help=f"pre-shared key (default ${PSK_VARIABLE})")
    token.add_argument(
        "--expires",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds until it expires (default 3600)",
    )
    _jobs_parser(commands, server_options)
    for name in ("add", "delete", "activate", "deactivate"):
        change = changes.add_parser(
            name,
            help=f"{name} a workflow on a server"
            + (" (every workflow and job of FILE)" if name == "add" else ""),
            description=f"{name.capitalize()} workflows on a server.",
        )
        if name == "add":
            change.add_argument("file", metavar="FILE", help="a .toml or .json data file")
        else:
            change.add_argument("id", metavar="WORKFLOW")
        server_options(change)
    history = commands.add_parser(
        "history",
        help="list a server's finished tasks",
        description="List finished tasks, newest first.",
    )
    history.add_argument("--workflow", help="only this workflow")
    history.add_argument(
        "--outcome", choices=[o.value for o in Outcome], help="only tasks that ended so"
    )
    history.add_argument(
        "--since", type=_moment, metavar="TIME", help="ended at or after (ISO 8601)"
    )
    errors = history.add_mutually_exclusive_group()
    errors.add_argument(
        "--has-errors",
        dest="has_errors",
        action="store_const",
        const=True,
        help="only tasks whose steps met errors, timed out or were released",
    )
    errors.add_argument(
        "--no-errors",
        dest="has_errors",
        action="store_const",
        const=False,
        help="only tasks that ran clean",
    )
    history.add_argument(
        "--limit", type=_count, default=20, metavar="N", help="at most N tasks (default 20)"
    )
    server_options(history)
    serve_parser = commands.add_parser(
        "serve",
        help="serve the HTTP and WebSocket API (Resoto's protocol)",
        description="Run the engine and serve its API: subscribers, WebSockets, configs, "
        "workflows, tasks, health and metrics. State is kept in --store across restarts.",
    )
    add_serve_arguments(serve_parser)
    listing.add_argument(
        "--url",
        help="ask this server instead: schedules in force, next runs and recent schedule firings",
    )
    listing.add_argument("--psk", help=f"pre-shared key to sign requests (default ${PSK_VARIABLE})")
    _verbose_everywhere(parser)
    return parser


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``-v`` follow any subcommand too (``phasebus serve -v``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument(
                    "-v",
                    "--verbose",
                    dest="sub_verbose",
                    action="count",
                    default=0,
                    help="log more (-v: info, -vv: debug, libraries included) on stderr",
                )
                _verbose_everywhere(sub)


def _jobs_parser(commands: Any, server_options: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="list, define and run jobs on a server",
        description="Define, change and run jobs (custom automations) on a running server.",
    )
    actions = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)
    listing = actions.add_parser("list", help="list the jobs", description="List the jobs.")
    server_options(listing)
    for name, summary in (
        ("add", "define a job: phasebus jobs add ID [options] -- COMMAND [ARG...]"),
        ("update", "change a job: only the options given change"),
    ):
        sub = actions.add_parser(name, help=summary, description=summary)
        sub.add_argument("id", metavar="ID", help="the job's id")
        sub.add_argument(
            "command_line",
            metavar="COMMAND",
            nargs="*",
            help="the command and its arguments, after '--' (no shell)",
        )
        sub.add_argument("--callable", metavar="NAME", help="run this registered callable")
        sub.add_argument(
            "--schedule",
            metavar="CRON",
            help='cron schedule, e.g. "0 5 * * *" (with --event: both; on update they replace'
            " the triggers)",
        )
        sub.add_argument(
            "--timezone", default="UTC", metavar="ZONE", help="the schedule's time zone"
        )
        sub.add_argument("--event", metavar="TYPE", help="start on every event of this type")
        sub.add_argument(
            "--filter",
            type=_json_object,
            metavar="JSON",
            help='only events whose data match, e.g. \'{"workflow": "metrics"}\'',
        )
        sub.add_argument(
            "--wait-for-event",
            metavar="TYPE[:SECONDS]",
            help="once triggered, run when this event arrives within SECONDS (default 60)",
        )
        sub.add_argument(
            "--timeout",
            type=_number,
            metavar="SECONDS",
            help="how long the command may run (default 60)",
        )
        sub.add_argument("--description", metavar="TEXT", help="what the job is for")
        state = sub.add_mutually_exclusive_group()
        state.add_argument(
            "--active",
            dest="active",
            action="store_const",
            const=True,
            help="let its triggers start it (the default)",
        )
        state.add_argument(
            "--inactive",
            dest="active",
            action="store_const",
            const=False,
            help="define it paused (its triggers do nothing until activated)",
        )
        server_options(sub)
    for name, summary in (
        ("show", "show a job"),
        ("delete", "delete a job"),
        ("activate", "let a job's triggers start it again"),
        ("deactivate", "pause a job's triggers (it can still be run)"),
        ("run", "start a job now"),
    ):
        sub = actions.add_parser(name, help=summary, description=summary.capitalize() + ".")
        sub.add_argument("id", metavar="ID")
        server_options(sub)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000, got {value}")
    return value


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset, such as +00:00: {text!r}")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}") from None


def _version() -> str:
    from . import __version__

    return __version__


# ---------------------------------------------------------------- run


async def run_workflow(
    catalog: Catalog,
    workflow_id: str,
    *,
    demo: bool,
    stdout: TextIO,
    console: Console | None,
) -> TaskResult:
    """Run one task of a workflow; stream JSON lines to ``stdout``, or show it on ``console``.

    Raises:
        UsageError: unknown workflow, or one the engine refuses to register.
    """
    workflow = catalog.get(workflow_id)
    async with open_engine() as engine:
        try:
            if workflow_id in catalog.jobs:
                engine.add_job(catalog.jobs[workflow_id])
            else:
                engine.add_workflow(workflow)
        except DeclarationError as error:
            raise UsageError(one_line(error)) from None
        async with (
            trio.open_nursery() as nursery,
            engine.open_listener(buffer=STREAM_BUFFER) as monitor,
        ):
            demo_ids: list[str] = []
            if demo:
                demo_ids = await nursery.start(serve_demo, engine, workflow)
            task_id = _start(engine, workflow.id)
            if console is None:
                await _stream(monitor, task_id, stdout)
                result = await engine.wait_task(task_id)
            else:
                console.print(
                    Text.assemble("Running ", (workflow.id, "bold blue"), f", task {task_id}")
                )
                if demo_ids:
                    console.print(
                        Text(f"Simulated listeners: {', '.join(demo_ids)}"), soft_wrap=True
                    )
                result = await LiveView(console, engine, workflow, task_id).follow(monitor)
            nursery.cancel_scope.cancel()
    return result


def _start(engine: Engine, workflow_id: str) -> str:
    started = engine.start_workflow(workflow_id, reason="phasebus run")
    if started.task_id is None:  # cannot happen in a fresh engine; said clearly if it does
        raise UsageError(f"workflow {workflow_id!r} was not started: {started.reason}")
    return started.task_id


async def _stream(monitor: Listener, task_id: str, stdout: TextIO) -> None:
    async for message in monitor:
        stdout.write(json.dumps(message.to_json(), separators=(",", ":"), default=str) + "\n")
        stdout.flush()  # one event at a time for whoever reads the stream live
        if (
            isinstance(message, Event)
            and message.message_type == TASK_END
            and message.data.get("task_id") == task_id
        ):
            break


# ---------------------------------------------------------------- workflows


def _trigger_text(trigger: Trigger) -> str:
    if isinstance(trigger, CronTrigger):
        return f"cron {trigger.cron} ({trigger.timezone})"
    assert isinstance(trigger, EventTrigger)
    text = f"event {trigger.event}"
    if trigger.filter:
        text += " " + json.dumps(dict(trigger.filter), sort_keys=True)
    return text


def _trigger_json(trigger: Trigger) -> dict[str, Any]:
    if isinstance(trigger, CronTrigger):
        return {"cron": trigger.cron, "timezone": trigger.timezone}
    assert isinstance(trigger, EventTrigger)
    return {"event": trigger.event, "filter": dict(trigger.filter)}


def next_run(workflow: Workflow, now: datetime) -> datetime | None:
    """Return when the workflow's cron triggers next start it, or None."""
    times = [t.next_after(now) for t in workflow.triggers if isinstance(t, CronTrigger)]
    return min(times) if times else None


def _step_json(workflow: Workflow) -> list[dict[str, Any]]:
    steps = []
    for step in workflow.steps:
        action = step.action
        entry: dict[str, Any] = {
            "name": step.name,
            "phase": step.phase,
            "action": action_kind(action),
            "message_type": step.message_type,
            "timeout": step.timeout,
            "on_error": step.on_error.value,
        }
        entry.update(action.fields())
        steps.append(entry)
    return steps


def _entries(catalog: Catalog) -> list[tuple[str, Workflow]]:
    return [("workflow", w) for w in catalog.workflows.values()] + [
        ("job", j.as_workflow()) for j in catalog.jobs.values()
    ]


def list_workflows(catalog: Catalog, *, as_json: bool, stdout: TextIO, console: Console) -> None:
    """Print every workflow and job, its steps, triggers and next scheduled time."""
    now = datetime.now(UTC)
    entries = _entries(catalog)
    if as_json:
        out = []
        for kind, workflow in entries:
            upcoming = next_run(workflow, now)
            out.append(
                {
                    "id": workflow.id,
                    "kind": kind,
                    "name": workflow.name,
                    "source": catalog.sources[workflow.id],
                    "description": workflow.description,
                    "surpass": workflow.surpass.value,
                    "triggers": [_trigger_json(t) for t in workflow.triggers],
                    "start_event": workflow.start_event,
                    "next_run": upcoming.isoformat() if upcoming else None,
                    "steps": _step_json(workflow),
                }
            )
        stdout.write(json.dumps(out, indent=2) + "\n")
        return
    for index, (kind, workflow) in enumerate(entries):
        if index:
            console.print()
        console.print(_workflow_block(kind, workflow, catalog.sources[workflow.id], now))


def _workflow_block(kind: str, workflow: Workflow, source: str, now: datetime) -> Text:
    text = Text.assemble((workflow.id, "bold blue"), f"  {kind}, {source}\n")
    if workflow.description:
        text.append(f"  {workflow.description}\n", style="italic")
    upcoming = next_run(workflow, now)
    rows = [
        (
            "triggers",
            [_trigger_text(t) for t in workflow.triggers] + [f"event {workflow.start_event}"],
        ),
        ("next run", [upcoming.isoformat() if upcoming else "not scheduled"]),
        ("surpass", [workflow.surpass.value]),
        (
            "steps",
            [
                f"{number:>2}. {f'[{step.phase}] ' if step.phase else ''}{step.name}"
                f"  ({action_kind(step.action)}, {step.timeout:g}s, on error {step.on_error.value})"
                for number, step in enumerate(workflow.steps, 1)
            ],
        ),
    ]
    for label, values in rows:
        for index, value in enumerate(values):
            text.append(f"  {label if index == 0 else '':<10}", style="cyan")
            text.append(value + "\n")
    text.rstrip()
    return text


# ---------------------------------------------------------------- validate


def validate(paths: Sequence[Path], *, stdout: TextIO, builtins: Iterable[Workflow] = ()) -> int:
    """Check declaration files, printing each problem as ``file: path: message``.

    An id of ``builtins`` declared again in a file is a problem.

    Returns:
        The exit status: 1 if there was any problem.
    """
    files = declaration_files(paths)
    sources = dict.fromkeys((workflow.id for workflow in builtins), BUILTIN)
    count = 0
    for path in files:
        try:
            declarations = Declarations.from_file(path)
        except DeclarationError as error:
            for problem in error.problems:
                stdout.write(f"{path}: {problem}\n")
            count += len(error.problems)
            continue
        found = clashes(declarations, sources)
        for problem in found:
            stdout.write(f"{path}: {problem}\n")
        count += len(found)
        for ident in [w.id for w in declarations.workflows] + [j.id for j in declarations.jobs]:
            sources.setdefault(ident, str(path))
        if not found:
            stdout.write(
                f"{path}: ok ({plural(len(declarations.workflows), 'workflow')}, "
                f"{plural(len(declarations.jobs), 'job')})\n"
            )
    if not files:
        raise UsageError("no .toml or .json files to validate")
    if count:
        stdout.write(f"{plural(count, 'problem')} in {plural(len(files), 'file')}\n")
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------- diagram


def draw(
    catalog: Catalog,
    names: Sequence[str],
    *,
    format: Format,
    out: Path | None,
    check: bool,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Print, write or check diagrams; return the exit status."""
    selected = (
        [catalog.get(name) for name in names]
        if names
        else [*catalog.workflows.values(), *(job.as_workflow() for job in catalog.jobs.values())]
    )
    if check:
        if format != "mermaid":
            raise UsageError("--check compares Mermaid files only (use --format mermaid)")
        return _check(
            selected, out or DEFAULT_DIAGRAMS, every=not names, stdout=stdout, stderr=stderr
        )
    texts = [(workflow, diagram(workflow, format)) for workflow in selected]
    if out is None:
        stdout.write("\n".join(text for _, text in texts))
        return EXIT_OK
    try:
        out.mkdir(parents=True, exist_ok=True)
        for workflow, text in texts:
            path = out / f"{workflow.id}{SUFFIXES[format]}"
            path.write_text(text, encoding="utf-8")
            stdout.write(f"wrote {path}\n")
    except OSError as error:
        raise UsageError(
            f"cannot write diagrams to {str(out)!r}: {error.strerror or error}"
        ) from None
    return EXIT_OK


def _check(
    workflows: Sequence[Workflow], directory: Path, *, every: bool, stdout: TextIO, stderr: TextIO
) -> int:
    if not directory.is_dir():
        raise UsageError(f"--check: {str(directory)!r} is not a directory (use --out DIR)")
    stale = []
    for workflow in workflows:
        path = directory / f"{workflow.id}.mmd"
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            stale.append(f"{path}: missing")
            continue
        except (OSError, UnicodeDecodeError) as error:
            stale.append(f"{path}: cannot read it: {error}")
            continue
        if current != mermaid_diagram(workflow):
            stale.append(f"{path}: out of date")
    if every:
        known = {w.id for w in workflows}
        for path in sorted(directory.glob("*.mmd")):
            if path.stem not in known:
                stale.append(f"{path}: no workflow {path.stem!r} any more")
    for line in stale:
        stdout.write(line + "\n")
    if stale:
        stderr.write(
            f"{PROG}: {plural(len(stale), 'diagram')} to regenerate:"
            f" run 'phasebus diagram --out {directory}'\n"
        )
        return EXIT_FAILED
    stdout.write(f"{plural(len(workflows), 'diagram')} up to date in {directory}\n")
    return EXIT_OK


# ---------------------------------------------------------------- asking a server


async def ask_server(args: argparse.Namespace, *, stdout: TextIO) -> int:
    """Carry out ``tasks``, ``task``, ``history`` or ``workflows --url``."""
    url, psk = server_url(args.url), server_psk(args.psk)
    if args.command == "workflows":
        workflows = await fetch(url, "/workflows", psk)
        if args.json:
            stdout.write(json.dumps(workflows, indent=2) + "\n")
        else:
            render_ledger(workflows, stdout)
        return EXIT_OK
    if args.command == "task":
        path = f"/task/{urllib.parse.quote(args.task_id, safe='')}"
        if args.log:
            log = await fetch(url, path + "/log", psk)
            if args.json:
                stdout.write(json.dumps(log, indent=2) + "\n")
            else:
                render_log(log, stdout)
            return EXIT_OK
        task = await fetch(url, path, psk)
        if args.json:
            stdout.write(json.dumps(task, indent=2) + "\n")
        else:
            render_task(task, now_utc(), stdout)
        return EXIT_OK
    if args.command == "tasks":
        tasks = await fetch(url, "/tasks", psk, {"limit": "0"})
        running = [t for t in tasks if t.get("running")]
        if args.json:
            stdout.write(json.dumps(running, indent=2) + "\n")
        else:
            render_running(running, now_utc(), stdout)
        return EXIT_OK
    query = {"limit": str(args.limit)}
    for key in ("workflow", "outcome"):
        if getattr(args, key) is not None:
            query[key] = getattr(args, key)
    if args.since is not None:
        query["since"] = args.since.isoformat()
    if args.has_errors is not None:
        query["has_errors"] = "true" if args.has_errors else "false"
    finished = [t for t in await fetch(url, "/tasks", psk, query) if not t.get("running")]
    if args.json:
        stdout.write(json.dumps(finished, indent=2) + "\n")
    else:
        render_finished(finished, stdout)
    return EXIT_OK


# ---------------------------------------------------------------- schedule preview


def schedule_preview(
    workflow: Workflow, *, count: int, start: datetime
) -> list[tuple[datetime, CronTrigger, str | None]]:
    """Return the next ``count`` fire times of a workflow's cron triggers after ``start``.

    Each comes with its trigger and a note when a daylight-saving change affects it.
    """
    times: list[tuple[datetime, CronTrigger, str | None]] = []
    for trigger in workflow.triggers:
        if isinstance(trigger, CronTrigger):
            moment = start
            for _ in range(count):
                try:
                    moment = trigger.next_after(moment)
                except (OverflowError, StopIteration):  # past the end of the calendar
                    break
                times.append((moment, trigger, trigger.dst_note(moment)))
    times.sort(key=lambda item: item[0])
    return times[:count]


def preview_schedule(
    workflow: Workflow, *, count: int, start: datetime, as_json: bool, stdout: TextIO
) -> int:
    """Print the next fire times of a workflow (see :func:`schedule_preview`)."""
    times = schedule_preview(workflow, count=count, start=start)
    if as_json:
        rows = [
            {
                "at": moment.isoformat(),
                "local": moment.astimezone(trigger.zone).isoformat(),
                "cron": trigger.cron,
                "timezone": trigger.timezone,
                "dst": note,
            }
            for moment, trigger, note in times
        ]
        stdout.write(json.dumps({"workflow": workflow.id, "times": rows}, indent=2) + "\n")
        return EXIT_OK
    if not times:
        stdout.write(f"{workflow.id} has no schedule\n")
        return EXIT_OK
    for moment, trigger, note in times:
        local = moment.astimezone(trigger.zone)
        line = (
            f"{moment:%Y-%m-%d %H:%M} UTC  {local:%Y-%m-%d %H:%M %Z}  "
            f"cron {trigger.cron} ({trigger.timezone})"
        )
        stdout.write(line + (f"  DST: {note}" if note else "") + "\n")
    return EXIT_OK


# ---------------------------------------------------------------- main


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; what follows ``--`` is a job's command (``jobs add ID -- ...``)."""
    tail: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, tail = argv[:index], argv[index + 1 :]
    args = _parser().parse_args(argv)
    if tail:
        if not hasattr(args, "command_line"):
            raise UsageError(f"unexpected arguments after '--': {' '.join(tail)}")
        args.command_line = [*args.command_line, *tail]
    return args


def _configure_logging(verbose: int) -> None:
    """Log on stderr: warnings; with -v phasebus's own info too; with -vv everything's debug.

    Libraries' internals (transitions' callbacks, the HTTP server's) stay at
    warning unless -vv. Logging already set up (by a program that runs the
    command in-process, or by pytest) is left as it is.
    """
    if logging.getLogger().handlers:
        return
    root = logging.WARNING if verbose < 2 else logging.DEBUG
    logging.basicConfig(
        level=root,
        format=f"{PROG} %(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("engine").setLevel(
        logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    )


async def main_async(
    argv: Sequence[str] | None = None,
    *,
    builtins: Iterable[Workflow] = (),
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    console: Console | None = None,
) -> int:
    """Run the command line inside trio; return the exit status.

    ``builtins`` are the built-in workflows: every local command knows them,
    and ``serve`` runs them. ``console`` is where ``run`` draws its live view;
    without it, ``run`` draws on ``stdout`` when that is a terminal and streams
    JSON lines otherwise.
    """
    builtins = tuple(builtins)
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        try:
            args = _parse(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as done:  # --help and --version print and exit
            return done.code if isinstance(done.code, int) else EXIT_OK
        _configure_logging(args.verbose + getattr(args, "sub_verbose", 0))
        return await _dispatch(
            args, builtins=builtins, stdout=stdout, stderr=stderr, console=console
        )
    except Exception as raised:
        error = _expected(raised)
        if error is None:
            raise
    if isinstance(error, BrokenPipeError):
        return EXIT_FAILED
    stderr.write(f"{PROG}: error: {str(error).splitlines()[0]}\n")
    return EXIT_USAGE if isinstance(error, UsageError | DiagramError) else EXIT_FAILED


def _expected(error: BaseException) -> PhasebusError | BrokenPipeError | None:
    """Return the error to report, out of the groups of trio's nurseries; None for a bug."""
    if isinstance(error, BaseExceptionGroup):
        leaves = [_expected(sub) for sub in error.exceptions]
        return leaves[0] if leaves and all(leaf is not None for leaf in leaves) else None
    return error if isinstance(error, PhasebusError | BrokenPipeError) else None


async def _dispatch(
    args: argparse.Namespace,
    *,
    builtins: tuple[Workflow, ...],
    stdout: TextIO,
    stderr: TextIO,
    console: Console | None,
) -> int:
    if args.command == "validate":
        return validate(args.files, stdout=stdout, builtins=builtins)
    if args.command == "serve":
        return await serve_command(args, builtins=builtins)
    if args.command in ("jobs", "stop", "events", "token") or (
        args.command == "workflows" and args.workflows_command is not None
    ):
        return await _drive_server(args, stdout=stdout)
    if args.command == "run" and args.url is not None:
        if args.demo:
            raise UsageError("run: --demo runs in-process; a server has its own listeners")
        if console is None and not args.json and stdout.isatty():
            console = Console(file=stdout)
        return await run_remote(
            server_url(args.url),
            server_psk(args.psk),
            args.workflow,
            stdout=stdout,
            console=None if args.json else console,
        )
    if args.command in ("tasks", "task", "history") or (
        args.command == "workflows" and args.url is not None
    ):
        return await ask_server(args, stdout=stdout)
    catalog = load_catalog(args.workflows, builtins=builtins)
    if args.command == "workflows":
        text_console = Console(file=stdout, highlight=False, soft_wrap=True)
        list_workflows(catalog, as_json=args.json, stdout=stdout, console=text_console)
        return EXIT_OK
    if args.command == "diagram":
        return draw(
            catalog,
            args.workflows_named,
            format=args.format,
            out=args.out,
            check=args.check,
            stdout=stdout,
            stderr=stderr,
        )
    if args.command == "schedule":
        return preview_schedule(
            catalog.get(args.workflow),
            count=args.next,
            start=args.start or datetime.now(UTC),
            as_json=args.json,
            stdout=stdout,
        )
    assert args.command == "run"
    if console is None and not args.json and stdout.isatty():
        console = Console(file=stdout)
    result = await run_workflow(
        catalog,
        args.workflow,
        demo=args.demo,
        stdout=stdout,
        console=None if args.json else console,
    )
    return EXIT_OK if result.outcome is Outcome.DONE else EXIT_FAILED


async def _drive_server(args: argparse.Namespace, *, stdout: TextIO) -> int:
    psk = server_psk(args.psk)
    if args.command == "token":
        return print_token(psk, expires_in=args.expires, stdout=stdout)
    url = server_url(args.url)
    if args.command == "jobs":
        return await jobs_command(args, url, psk, stdout=stdout)
    if args.command == "workflows":
        return await workflows_command(args, url, psk, stdout=stdout)
    if args.command == "stop":
        return await stop_task(url, psk, args.task_id, stdout=stdout)
    assert args.command == "events"
    return await tail_events(
        url, psk, show=args.show, as_json=args.json, limit=args.limit, stdout=stdout
    )


def main(argv: list[str] | None = None, *, builtins: Iterable[Workflow] = ()) -> int:
    """Run the ``phasebus`` command line with the built-in workflows ``builtins``.

    Returns:
        The exit status.
    """
    try:
        return trio.run(functools.partial(main_async, argv, builtins=builtins))
    except (KeyboardInterrupt, BaseExceptionGroup) as error:
        if isinstance(error, BaseExceptionGroup) and error.split(KeyboardInterrupt)[1] is not None:
            raise
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
