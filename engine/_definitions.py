"""Workflow declarations: pure, frozen values, validated on construction.

A declaration never names code to import. An execute-command step runs either
an argument vector as a subprocess or a Python callable that the program
registered with the engine under a name; a data file can only use the name.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from ._errors import DeclarationError, Problem, join_path

#: Names a step may not take: the machine's own start and end states.
RESERVED_STATES = frozenset({"start", "end"})

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")


class OnError(enum.StrEnum):
    """What a step's error does to its task."""

    #: Record the error and move on to the next step.
    CONTINUE = "continue"
    #: End the task as ``failed``.
    STOP = "stop"


class CatchUp(enum.StrEnum):
    """What a schedule does with the times it missed (the engine was down or blocked)."""

    #: Run none of them: each is recorded as missed.
    SKIP = "skip"
    #: Run once, for the latest missed time; the others are recorded as missed.
    LATEST = "latest"
    #: Run once for each missed time, at most ``catch_up_limit`` of them (the latest).
    ALL = "all"


class Surpass(enum.StrEnum):
    """What a trigger does while a run of the same workflow is active."""

    #: Do not start another run.
    SKIP = "skip"
    #: End the active run as ``replaced`` and start a new one.
    REPLACE = "replace"
    #: Start another run beside the active one.
    PARALLEL = "parallel"
    #: Queue one run to start when the active one ends (at most one waits).
    WAIT = "wait"


# ---------------------------------------------------------------- readers


@attrs.define
class _Readers:
    """How declarations are read from data and text: the converter module
    (:mod:`engine._convert`, which builds on these classes) sets them when it
    is imported, which importing ``engine`` always does."""

    structure: Callable[[object, type[Any], str | None], Any]
    toml: Callable[[str, str | None], Any]
    json: Callable[[str, str | None], Any]


def _not_ready(*_: object) -> Any:
    raise RuntimeError("import engine (its converter reads declarations) before reading any")


_readers = _Readers(_not_ready, _not_ready, _not_ready)


def set_readers(
    structure: Callable[[object, type[Any], str | None], Any],
    toml: Callable[[str, str | None], Any],
    json: Callable[[str, str | None], Any],
) -> None:
    """Install the functions that read declarations (called by :mod:`engine._convert`)."""
    _readers.structure, _readers.toml, _readers.json = structure, toml, json


# ---------------------------------------------------------------- checks


def _check_name(problems: list[Problem], path: str, value: object, what: str) -> None:
    if not isinstance(value, str):
        problems.append(Problem(path, f"must be a string, got {value!r}"))
    elif not _NAME.match(value):
        problems.append(
            Problem(
                path,
                f"{what} must be 1-200 characters of letters, digits, '_', '.', ':' or '-'"
                f" and not start with a punctuation mark, got {value!r}",
            )
        )


#: The longest timeout a step may have, in seconds (about 31 years).
MAX_TIMEOUT = 10**9


def _check_timeout(problems: list[Problem], path: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(Problem(path, f"must be a number of seconds, got {value!r}"))
    elif value != value or value <= 0:  # NaN compares unequal to itself
        problems.append(Problem(path, f"must be > 0, got {value!r}"))
    elif value > MAX_TIMEOUT:
        problems.append(Problem(path, f"must be at most {MAX_TIMEOUT} seconds, got {value!r}"))


def _check_mapping(problems: list[Problem], path: str, value: object) -> None:
    if not isinstance(value, Mapping):
        problems.append(Problem(path, f"must be a table of values, got {value!r}"))
    elif not all(isinstance(k, str) for k in value):
        problems.append(Problem(path, "keys must be strings"))


def _check_enum(
    problems: list[Problem], path: str, value: object, enum_type: type[enum.Enum]
) -> None:
    if not isinstance(value, enum_type):
        choices = ", ".join(repr(m.value) for m in enum_type)
        problems.append(Problem(path, f"must be one of {choices}, got {value!r}"))


def _raise_if(problems: list[Problem]) -> None:
    if problems:
        raise DeclarationError(problems)


def duplicate_problems(names: Iterable[object], path: str, what: str) -> list[Problem]:
    """List a problem for every name that repeats an earlier one in ``names``."""
    seen: set[str] = set()
    problems = []
    for index, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(Problem(f"{path}[{index}].{what}", f"duplicate {what} {name!r}"))
        seen.add(name)
    return problems


def _frozen_mapping(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def _to_on_error(value: Any) -> Any:
    try:
        return OnError(value)
    except ValueError:
        return value  # reported by the check in __attrs_post_init__


def _to_catch_up(value: Any) -> Any:
    try:
        return CatchUp(value)
    except ValueError:
        return value  # reported by the check in __attrs_post_init__


def _to_surpass(value: Any) -> Any:
    try:
        return Surpass(value)
    except ValueError:
        return value  # reported by the check in __attrs_post_init__


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


# ---------------------------------------------------------------- actions
#
# Each kind of step is one class: what it is called in data files, what ends
# a step of its kind, and how it is described. Views and the machine ask the
# action; none of them switches on its type.


class Ends(enum.Enum):
    """What ends a step, by the kind of its action (its deadline ends any step)."""

    #: Every subscriber the step waits for answering.
    ANSWERS = "answers"
    #: Nothing to wait for: the step is over once its message went out.
    AT_ONCE = "at once"
    #: One fact: the awaited event arrived, the command ended.
    FACT = "fact"


def show_data(data: Mapping[str, Any]) -> str:
    """Show a table of values briefly, keys sorted: ``{cloud='aws', n=1}``."""
    return "{" + ", ".join(f"{key}={value!r}" for key, value in sorted(data.items())) + "}"


@attrs.frozen
class PerformAction:
    """Send an ``action`` and wait for every listener that must acknowledge it.

    The step waits for each subscriber registered for ``message_type`` with
    ``wait_for_completion`` when the step starts, until each has answered
    ``action_done`` or ``action_error``, or the step's deadline passes.
    """

    kind: ClassVar[str] = "perform_action"
    ends: ClassVar[Ends] = Ends.ANSWERS

    message_type: str

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "message_type", self.message_type, "a message type")
        _raise_if(problems)

    def message_type_for(self, step_name: str) -> str:
        """Return the message type a step with this action sends."""
        return self.message_type

    def describe(self) -> str:
        """Describe the action in words, e.g. ``perform action collect``."""
        return f"perform action {self.message_type}"

    def label(self, step_name: str) -> str:
        """Return the action's line in a diagram of a step called ``step_name``."""
        return self.kind if self.message_type == step_name else f"{self.kind} {self.message_type}"

    def fields(self) -> dict[str, Any]:
        """Return what views show of the action besides its kind and message type."""
        return {}

    def timeout_error(self, step_name: str, owed: Iterable[str]) -> str:
        """Return the error of a step whose deadline passed while it still waited for ``owed``."""
        return f"step {step_name!r} timed out waiting for {', '.join(sorted(owed))}"


@attrs.frozen
class EmitEvent:
    """Publish an ``event`` with ``data`` and move on at once."""

    kind: ClassVar[str] = "emit_event"
    ends: ClassVar[Ends] = Ends.AT_ONCE

    message_type: str
    data: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "message_type", self.message_type, "a message type")
        _check_mapping(problems, "data", self.data)
        _raise_if(problems)

    def message_type_for(self, step_name: str) -> str:
        """Return the message type a step with this action sends."""
        return self.message_type

    def describe(self) -> str:
        """Describe the action in words, e.g. ``emit event report_ready``."""
        return f"emit event {self.message_type}"

    def label(self, step_name: str) -> str:
        """Return the action's line in a diagram of a step called ``step_name``."""
        line = self.kind if self.message_type == step_name else f"{self.kind} {self.message_type}"
        return f"{self.kind} {self.message_type} {show_data(self.data)}" if self.data else line

    def fields(self) -> dict[str, Any]:
        """Return what views show of the action besides its kind and message type."""
        return {}

    def timeout_error(self, step_name: str, owed: Iterable[str]) -> str:
        """Return the error of a step whose deadline passed (it never waits: unused)."""
        return f"step {step_name!r} timed out"


@attrs.frozen
class WaitForEvent:
    """Wait until an event of ``message_type`` whose data matches ``filter`` arrives.

    Only events published while the step is current count. ``filter`` matches
    when every key it names is present in the event's data with an equal value;
    nested tables match recursively.
    """

    kind: ClassVar[str] = "wait_for_event"
    ends: ClassVar[Ends] = Ends.FACT

    message_type: str
    filter: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "message_type", self.message_type, "a message type")
        _check_mapping(problems, "filter", self.filter)
        _raise_if(problems)

    def matches(self, message_type: str, data: Mapping[str, Any]) -> bool:
        """Tell whether an event of ``message_type`` with ``data`` satisfies this wait."""
        return message_type == self.message_type and data_matches(self.filter, data)

    def message_type_for(self, step_name: str) -> str:
        """Return the message type a step with this action waits for."""
        return self.message_type

    def describe(self) -> str:
        """Describe the action in words, e.g. ``wait for event post_collect``."""
        return f"wait for event {self.message_type}"

    def label(self, step_name: str) -> str:
        """Return the action's line in a diagram of a step called ``step_name``."""
        if self.filter:
            return f"{self.kind} {self.message_type} {show_data(self.filter)}"
        return self.kind if self.message_type == step_name else f"{self.kind} {self.message_type}"

    def fields(self) -> dict[str, Any]:
        """Return what views show of the action besides its kind and message type."""
        return {"filter": dict(self.filter)} if self.filter else {}

    def timeout_error(self, step_name: str, owed: Iterable[str]) -> str:
        """Return the error of a step whose deadline passed before the event came."""
        return f"step {step_name!r} timed out waiting for event {self.message_type!r}"


@attrs.frozen
class ExecuteCommand:
    """Run a command and wait for it to finish.

    Exactly one of ``command`` (an argument vector run as a subprocess, no shell)
    and ``callable`` (the name of an async callable registered with the engine)
    is given. A non-zero exit status or an exception is the step's error; the
    step's timeout cancels the command (a subprocess is killed).
    """

    kind: ClassVar[str] = "execute_command"
    ends: ClassVar[Ends] = Ends.FACT

    command: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    callable: str | None = None

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not isinstance(self.command, tuple) or not all(
            isinstance(arg, str) for arg in self.command
        ):
            problems.append(Problem("command", f"must be a list of strings, got {self.command!r}"))
        if self.callable is not None:
            _check_name(problems, "callable", self.callable, "a callable name")
        if bool(self.command) == (self.callable is not None):
            problems.append(Problem("", "give exactly one of 'command' and 'callable'"))
        _raise_if(problems)

    def message_type_for(self, step_name: str) -> str:
        """Return the step's name: a command has no message type of its own."""
        return step_name

    def describe(self) -> str:
        """Describe the action in words, e.g. ``execute backup()``."""
        if self.callable is not None:
            return f"execute {self.callable}()"
        return "execute " + " ".join(self.command)

    def label(self, step_name: str) -> str:
        """Return the action's line in a diagram of a step called ``step_name``."""
        if self.callable is not None:
            return f"{self.kind} {self.callable}()"
        return f"{self.kind} {' '.join(self.command)}"

    def fields(self) -> dict[str, Any]:
        """Return what views show of the action besides its kind and message type."""
        return {"command": list(self.command) or None, "callable": self.callable}

    def timeout_error(self, step_name: str, owed: Iterable[str]) -> str:
        """Return the error of a step whose command outlived the deadline."""
        return f"step {step_name!r} timed out: the command was cancelled"


StepAction: TypeAlias = PerformAction | EmitEvent | WaitForEvent | ExecuteCommand

#: The step actions by their ``kind`` in data files.
ACTION_KINDS: dict[str, type[StepAction]] = {
    cls.kind: cls for cls in (PerformAction, EmitEvent, WaitForEvent, ExecuteCommand)
}


def action_kind(action: StepAction) -> str:
    """Return the data-file name of an action's kind, e.g. ``perform_action``."""
    if type(action) not in ACTION_KINDS.values():
        raise TypeError(f"not a step action: {action!r}")
    return action.kind


def data_matches(pattern: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Tell whether ``data`` holds every key of ``pattern`` with an equal value.

    Nested mappings in ``pattern`` match recursively; other values compare equal.
    """
    for key, expected in pattern.items():
        if key not in data:
            return False
        actual = data[key]
        if isinstance(expected, Mapping):
            if not isinstance(actual, Mapping) or not data_matches(expected, actual):
                return False
        elif actual != expected or isinstance(actual, bool) != isinstance(expected, bool):
            return False  # JSON's true is not 1
    return True


# ---------------------------------------------------------------- steps


def _default_action(step: Step) -> StepAction:
    if isinstance(step.name, str) and _NAME.match(step.name):
        return PerformAction(step.name)
    # The name check in Step.__attrs_post_init__ rejects this step; any action does.
    return PerformAction("_")


@attrs.frozen
class Step:
    """One state of a workflow.

    Args:
        name: the state's name, unique in its workflow; by default also the
            message type of its action.
        action: what the step does; a :class:`PerformAction` of ``name`` by default.
        timeout: seconds before the step's deadline.
        on_error: what an error (an ``action_error``, a missed deadline, a failed
            command) does to the task.
        phase: the phase the step belongs to, for grouping in diagrams and views.
    """

    name: str
    action: StepAction = attrs.field(default=attrs.Factory(_default_action, takes_self=True))
    timeout: float = 10.0
    on_error: OnError = attrs.field(default=OnError.CONTINUE, converter=_to_on_error)
    phase: str | None = None
    #: The message type this step sends or waits for (a command step: its name).
    message_type: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "name", self.name, "a step name")
        if self.name in RESERVED_STATES:
            problems.append(
                Problem("name", f"{self.name!r} is reserved for the machine's own state")
            )
        if not isinstance(self.action, StepAction):
            problems.append(Problem("action", f"must be a step action, got {self.action!r}"))
        _check_timeout(problems, "timeout", self.timeout)
        _check_enum(problems, "on_error", self.on_error, OnError)
        if self.phase is not None:
            _check_name(problems, "phase", self.phase, "a phase name")
        _raise_if(problems)
        # worked out once: every step of every task asks for it, several times
        object.__setattr__(self, "message_type", self.action.message_type_for(self.name))


# ---------------------------------------------------------------- triggers


def _check_cron(problems: list[Problem], path: str, expression: object) -> None:
    if not isinstance(expression, str):
        problems.append(Problem(path, f"must be a string, got {expression!r}"))
        return
    bad = Problem(path, f"{expression!r} is not a valid cron expression")
    if len(expression.split()) != 5:
        problems.append(
            Problem(path, f"{expression!r} is not a valid cron expression (it needs 5 fields)")
        )
        return
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except (CronSimError, ValueError, IndexError):
        problems.append(bad)


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta()).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@attrs.frozen
class CronTrigger:
    """Start on a cron schedule (five fields), evaluated in ``timezone``.

    At daylight-saving changes the schedule follows Debian cron: a fixed time
    of day that does not exist runs once at the next valid instant, a time that
    occurs twice runs once; hourly and finer schedules run in absolute time.

    Times missed while the engine was down or blocked are handled by
    ``catch_up`` (see :class:`CatchUp`); ``catch_up_limit`` bounds ``all``.
    """

    cron: str
    timezone: str = "UTC"
    catch_up: CatchUp = attrs.field(default=CatchUp.LATEST, converter=_to_catch_up)
    catch_up_limit: int = 10

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_cron(problems, "cron", self.cron)
        if not isinstance(self.timezone, str):
            problems.append(Problem("timezone", f"must be a string, got {self.timezone!r}"))
        elif _zone(self.timezone) is None:
            problems.append(Problem("timezone", f"unknown time zone {self.timezone!r}"))
        _check_enum(problems, "catch_up", self.catch_up, CatchUp)
        if (
            isinstance(self.catch_up_limit, bool)
            or not isinstance(self.catch_up_limit, int)
            or not 1 <= self.catch_up_limit <= 1000
        ):
            problems.append(
                Problem(
                    "catch_up_limit",
                    f"must be an integer from 1 to 1000, got {self.catch_up_limit!r}",
                )
            )
        _raise_if(problems)

    def _times_after(self, moment: datetime) -> Iterator[datetime]:
        # cronsim reads local wall time and ignores ``fold``: in the repeated
        # hour of a fall-back day it starts from the first occurrence, so it can
        # yield times before ``moment``. Those are skipped here.
        for fire in CronSim(self.cron, moment.astimezone(self.zone)):
            fire_utc = fire.astimezone(UTC)
            if fire_utc > moment:
                yield fire_utc

    def next_fire_times(self, after: datetime, count: int) -> list[datetime]:
        """Return the first ``count`` fire times after ``after``, in UTC."""
        return list(itertools.islice(self._times_after(after), max(count, 0)))

    def fire_times(self, after: datetime, until: datetime, *, limit: int) -> list[datetime]:
        """Return the fire times in (``after``, ``until``], in UTC, the last ``limit`` of them."""
        times: list[datetime] = []
        for moment in self._times_after(after):
            if moment > until:
                break
            times.append(moment)
            if len(times) > limit:
                del times[0]
        return times

    def dst_note(self, fire: datetime) -> str | None:
        """Explain how a daylight-saving change on its local day affects a fire time, or None."""
        zone = self.zone
        local = fire.astimezone(zone)
        midnight = datetime.combine(local.date(), time(0), zone)
        next_midnight = datetime.combine(local.date() + timedelta(days=1), time(0), zone)
        before, after = midnight.utcoffset(), next_midnight.utcoffset()
        if before == after:
            return None
        change = f"UTC{_offset(before)} to UTC{_offset(after)}"
        wall = local.replace(tzinfo=None)
        if self.fixed_time_of_day:
            if local.replace(fold=1).utcoffset() != local.replace(fold=0).utcoffset():
                return f"runs once although {wall:%H:%M} occurs twice this day ({change})"
            if next(CronSim(self.cron, wall - timedelta(seconds=1))) != wall:
                return (
                    f"its time does not exist this day ({change}): runs at the next valid"
                    f" instant, {wall:%H:%M}"
                )
            return None
        # absolute time: flag the first run after the clocks changed
        low, high = midnight.astimezone(UTC), next_midnight.astimezone(UTC)
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(zone).utcoffset() == before:
                low = middle
            else:
                high = middle
        previous = self.fire_times(fire - timedelta(days=1), fire - timedelta(seconds=1), limit=1)
        if fire > low and (not previous or previous[-1] <= low):
            return f"first run after the clocks changed ({change})"
        return None

    @property
    def fixed_time_of_day(self) -> bool:
        """Whether the schedule names its minutes and hours (runs at wall-clock times).

        Such schedules follow Debian cron at daylight-saving changes; the others
        (``*`` or ``*/n`` hours or minutes) run in absolute time.
        """
        minute, hour = self.cron.split()[:2]
        return not minute.startswith("*") and not hour.startswith("*")

    @property
    def zone(self) -> ZoneInfo:
        """The trigger's time zone."""
        zone = _zone(self.timezone)
        assert zone is not None
        return zone

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after ``moment``, in UTC."""
        return next(self._times_after(moment))


@attrs.frozen
class EventTrigger:
    """Start when an event of type ``event`` whose data matches ``filter`` is published."""

    event: str
    filter: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "event", self.event, "an event type")
        _check_mapping(problems, "filter", self.filter)
        _raise_if(problems)

    def matches(self, message_type: str, data: Mapping[str, Any]) -> bool:
        """Tell whether an event of ``message_type`` with ``data`` fires this trigger."""
        return message_type == self.event and data_matches(self.filter, data)


Trigger: TypeAlias = CronTrigger | EventTrigger


def _check_triggers(problems: list[Problem], triggers: object) -> None:
    if not isinstance(triggers, tuple):
        problems.append(Problem("triggers", f"must be a list of triggers, got {triggers!r}"))
        return
    for index, trigger in enumerate(triggers):
        if not isinstance(trigger, CronTrigger | EventTrigger):
            problems.append(Problem(f"triggers[{index}]", f"must be a trigger, got {trigger!r}"))


# ---------------------------------------------------------------- workflows


@attrs.frozen
class Workflow:
    """A workflow: an ordered list of steps, its triggers and its surpass behaviour.

    Every workflow also starts on the event ``start_<id>_workflow``.
    """

    id: str
    steps: tuple[Step, ...] = attrs.field(converter=_tuple)
    name: str = attrs.field(default=attrs.Factory(lambda self: self.id, takes_self=True))
    triggers: tuple[Trigger, ...] = attrs.field(default=(), converter=_tuple)
    surpass: Surpass = attrs.field(default=Surpass.WAIT, converter=_to_surpass)
    description: str = ""

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "id", self.id, "an id")
        if not isinstance(self.name, str) or not self.name:
            problems.append(Problem("name", f"must be a non-empty string, got {self.name!r}"))
        if not isinstance(self.steps, tuple):
            problems.append(Problem("steps", f"must be a list of steps, got {self.steps!r}"))
        elif not self.steps:
            problems.append(Problem("steps", "a workflow needs at least one step"))
        else:
            for index, step in enumerate(self.steps):
                if not isinstance(step, Step):
                    problems.append(Problem(f"steps[{index}]", f"must be a Step, got {step!r}"))
            problems.extend(
                duplicate_problems((getattr(s, "name", None) for s in self.steps), "steps", "name")
            )
        _check_triggers(problems, self.triggers)
        _check_enum(problems, "surpass", self.surpass, Surpass)
        if not isinstance(self.description, str):
            problems.append(Problem("description", f"must be a string, got {self.description!r}"))
        _raise_if(problems)

    @property
    def start_event(self) -> str:
        """The event type that starts this workflow: ``start_<id>_workflow``."""
        return f"start_{self.id}_workflow"

    def step(self, name: str) -> Step:
        """Return the step called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workflow:
        """Read a workflow from plain data (as parsed from JSON or TOML)."""
        workflow: Workflow = _readers.structure(data, cls, None)
        return workflow


@attrs.frozen
class Job:
    """A custom automation: run one command when a trigger fires.

    A job is a workflow of one execute-command step, optionally preceded by a
    step that waits for an event (``wait_for``, within ``wait_timeout``): the
    command then runs when that event arrives within the timeout after the
    trigger fired. An inactive job (``active = false``) is not started by its
    triggers until it is activated; it can still be run on demand.
    """

    id: str
    command: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    callable: str | None = None
    triggers: tuple[Trigger, ...] = attrs.field(default=(), converter=_tuple)
    wait_for: WaitForEvent | None = None
    wait_timeout: float = 60.0
    timeout: float = 60.0
    surpass: Surpass = attrs.field(default=Surpass.WAIT, converter=_to_surpass)
    description: str = ""
    active: bool = True

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        _check_name(problems, "id", self.id, "an id")
        if not isinstance(self.active, bool):
            problems.append(Problem("active", f"must be true or false, got {self.active!r}"))
        try:
            ExecuteCommand(self.command, self.callable)
        except DeclarationError as error:
            problems.extend(error.problems)
        _check_triggers(problems, self.triggers)
        if self.wait_for is not None and not isinstance(self.wait_for, WaitForEvent):
            problems.append(Problem("wait_for", f"must be a WaitForEvent, got {self.wait_for!r}"))
        _check_timeout(problems, "wait_timeout", self.wait_timeout)
        _check_timeout(problems, "timeout", self.timeout)
        _check_enum(problems, "surpass", self.surpass, Surpass)
        _raise_if(problems)

    def as_workflow(self) -> Workflow:
        """Return the workflow that runs this job."""
        steps = []
        if self.wait_for is not None:
            steps.append(
                Step("wait", self.wait_for, timeout=self.wait_timeout, on_error=OnError.STOP)
            )
        steps.append(
            Step(
                "run",
                ExecuteCommand(self.command, self.callable),
                timeout=self.timeout,
                on_error=OnError.STOP,
            )
        )
        return Workflow(
            id=self.id,
            steps=tuple(steps),
            triggers=self.triggers,
            surpass=self.surpass,
            description=self.description,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        """Read a job from plain data (as parsed from JSON or TOML)."""
        job: Job = _readers.structure(data, cls, None)
        return job


@attrs.frozen
class Declarations:
    """The workflows and jobs of one data file.

    A TOML file has ``[[workflows]]`` and ``[[jobs]]`` tables; a JSON file an
    object with ``workflows`` and ``jobs`` lists. Ids are unique across both.
    """

    workflows: tuple[Workflow, ...] = attrs.field(default=(), converter=_tuple)
    jobs: tuple[Job, ...] = attrs.field(default=(), converter=_tuple)

    def __attrs_post_init__(self) -> None:
        problems = []
        for field, cls in (("workflows", Workflow), ("jobs", Job)):
            items = getattr(self, field)
            if not isinstance(items, tuple):
                problems.append(Problem(field, f"must be a list, got {items!r}"))
            else:
                problems.extend(
                    Problem(f"{field}[{index}]", f"must be a {cls.__name__}, got {item!r}")
                    for index, item in enumerate(items)
                    if not isinstance(item, cls)
                )
        _raise_if(problems)
        ids = [w.id for w in self.workflows] + [j.id for j in self.jobs]
        seen: set[str] = set()
        for index, ident in enumerate(ids):
            if ident in seen:
                where = (
                    f"workflows[{index}]"
                    if index < len(self.workflows)
                    else f"jobs[{index - len(self.workflows)}]"
                )
                problems.append(Problem(join_path(where, "id"), f"duplicate id {ident!r}"))
            seen.add(ident)
        _raise_if(problems)

    def all_workflows(self) -> tuple[Workflow, ...]:
        """Return the workflows and the jobs (as workflows)."""
        return self.workflows + tuple(job.as_workflow() for job in self.jobs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Declarations:
        """Read declarations from plain data; ``source`` names them in errors."""
        declarations: Declarations = _readers.structure(data, cls, source)
        return declarations

    @classmethod
    def from_toml(cls, text: str, *, source: str | None = None) -> Declarations:
        """Read declarations from TOML text."""
        return cls.from_dict(_readers.toml(text, source), source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None) -> Declarations:
        """Read declarations from JSON text."""
        return cls.from_dict(_readers.json(text, source), source=source)

    @classmethod
    def from_file(cls, path: Path | str) -> Declarations:
        """Read declarations from a ``.toml`` or ``.json`` file."""
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DeclarationError(
                [Problem("", f"cannot read the file: {error}")], source=source
            ) from None
        if path.suffix == ".toml":
            return cls.from_toml(text, source=source)
        if path.suffix == ".json":
            return cls.from_json(text, source=source)
        raise DeclarationError(
            [Problem("", f"unknown file type {path.suffix!r}: use .toml or .json")], source=source
        )
