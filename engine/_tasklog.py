"""Every task's log: what its listeners reported and what went wrong, step by step.

An entry is recorded for every ``action_info`` and ``action_error`` a task's
current step counts, every missed deadline, stall and failed command (with
the tail of its output), and every subscriber released from a step because
it went away. Each entry names the task, the time, the step and the
subscriber. A task keeps its latest :data:`LOG_LIMIT` entries; a message
longer than :data:`MAX_MESSAGE` characters is cut, with a note saying how much.

With a store, entries are written as they happen and kept with the task's
history (pruned with it); without one, the logs of the latest tasks are kept
in memory.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs
import orjson

from ._store import Store

logger = logging.getLogger(__name__)

#: Entries kept per task (the latest ones).
LOG_LIMIT = 1000
#: Characters kept of one entry's message.
MAX_MESSAGE = 2000


class LogKind(enum.StrEnum):
    """What an entry of a task's log records."""

    #: An ``action_info`` of a listener (its ``level`` is kept).
    INFO = "info"
    #: An ``action_error`` of a listener.
    ERROR = "error"
    #: A step's deadline passed.
    TIMEOUT = "timeout"
    #: No listener the step waits for was heard from for a while.
    STALLED = "stalled"
    #: A step's command failed (the message ends with the tail of its output).
    COMMAND_FAILED = "command_failed"
    #: A subscriber the step waited for went away (removed or unsubscribed).
    RELEASED = "released"


def _text(value: str) -> str:
    """Return ``value`` as JSON can carry it (a lone surrogate becomes U+FFFD)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def cut(message: str, limit: int = MAX_MESSAGE) -> str:
    """Return ``message``, cut to ``limit`` characters with a note when it is longer."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]} [cut: {len(message) - limit} more characters]"


@attrs.frozen
class LogEntry:
    """One entry of a task's log."""

    at: datetime
    task: str
    kind: LogKind
    message: str
    step: str | None = None
    subscriber: str | None = None
    level: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the entry as JSON data (the API's and the store's form)."""
        data: dict[str, Any] = {
            "at": self.at.isoformat(),
            "task": self.task,
            "kind": self.kind.value,
            "step": self.step,
            "subscriber": self.subscriber,
            "message": self.message,
        }
        if self.level is not None:
            data["level"] = self.level
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogEntry:
        """Read an entry written by :meth:`to_json`."""
        return cls(
            datetime.fromisoformat(data["at"]),
            data["task"],
            LogKind(data["kind"]),
            data["message"],
            data.get("step"),
            data.get("subscriber"),
            data.get("level"),
        )


class TaskLog:
    """The logs of tasks, kept in the store when there is one.

    Args:
        now: returns the current wall-clock time.
        store: where entries are written; None keeps the logs of the latest
            ``keep_tasks`` tasks in memory.
        limit: entries kept per task.
        before_read: called before a log is read (the engine carries out what it
            decided, so that the log read holds every entry decided before).
    """

    def __init__(
        self,
        now: Callable[[], datetime],
        store: Store | None,
        *,
        keep_tasks: int = 10_000,
        limit: int = LOG_LIMIT,
        before_read: Callable[[], None] | None = None,
    ) -> None:
        self._now = now
        self._before_read = before_read
        self._store = store
        self._keep_tasks = keep_tasks
        self._limit = limit
        self._memory: OrderedDict[str, deque[LogEntry]] = OrderedDict()

    def add(
        self,
        task_id: str,
        kind: LogKind,
        message: str,
        *,
        step: str | None = None,
        subscriber: str | None = None,
        level: str | None = None,
    ) -> LogEntry:
        """Record an entry in a task's log and return it."""
        entry = LogEntry(
            self._now(),
            task_id,
            kind,
            _text(cut(message)),
            None if step is None else _text(step),
            None if subscriber is None else _text(subscriber),
            None if level is None else _text(level),
        )
        if self._store is not None:
            try:
                self._store.add_log_entry(task_id, orjson.dumps(entry.to_json()), keep=self._limit)
            except Exception:  # the log never stops a task: the entry is lost, and said so
                logger.exception("task %s: cannot store a log entry (%s)", task_id, kind.value)
            return entry
        entries = self._memory.get(task_id)
        if entries is None:
            entries = self._memory[task_id] = deque(maxlen=self._limit)
            while len(self._memory) > self._keep_tasks:
                self._memory.popitem(last=False)
        entries.append(entry)
        return entry

    def entries(self, task_id: str) -> list[LogEntry]:
        """Return a task's log, oldest entry first (empty for a task that logged nothing)."""
        if self._before_read is not None:
            self._before_read()
        if self._store is not None:
            return [LogEntry.from_json(data) for data in self._store.task_log(task_id)]
        return list(self._memory.get(task_id, ()))
