"""The wire messages of the event bus and the progress values they carry.

Every message is ``{"kind", "message_type", "data"}`` on the wire. The routing
fields (``task``, ``step``, ``subscriber_id``, ...) live inside ``data``; here
they are attributes, and every other data field is kept in ``extra`` so that an
answer echoes what it was sent and nothing a client adds is lost.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

import attrs

from ._errors import MessageError, Problem


class Kind(enum.StrEnum):
    """The ``kind`` of a message."""

    EVENT = "event"
    ACTION = "action"
    ACTION_ABORT = "action_abort"
    ACTION_DONE = "action_done"
    ACTION_ERROR = "action_error"
    ACTION_INFO = "action_info"
    ACTION_PROGRESS = "action_progress"


# ---------------------------------------------------------------- progress


def _path(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class ProgressLeaf:
    """Progress of one piece of work: ``current`` of ``total`` done."""

    name: str
    current: int
    total: int
    path: tuple[str, ...] = attrs.field(default=(), converter=_path)

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.total <= 0:
            problems.append(Problem("total", f"must be > 0, got {self.total}"))
        if not 0 <= self.current <= self.total:
            problems.append(
                Problem(
                    "current", f"must be between 0 and total ({self.total}), got {self.current}"
                )
            )
        if problems:
            raise MessageError(problems)

    @property
    def fraction(self) -> float:
        """The share of the work done, from 0 to 1."""
        return self.current / self.total

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        out: dict[str, Any] = {
            "kind": "progress",
            "name": self.name,
            "current": self.current,
            "total": self.total,
        }
        if self.path:
            out["path"] = list(self.path)
        return out


@attrs.frozen
class ProgressTree:
    """Progress made of parts; its fraction is the mean of its parts' fractions."""

    name: str
    parts: tuple[Progress, ...] = attrs.field(default=(), converter=_path)
    path: tuple[str, ...] = attrs.field(default=(), converter=_path)

    @property
    def fraction(self) -> float:
        """The share of the work done, from 0 to 1 (0 for a tree without parts)."""
        if not self.parts:
            return 0.0
        return sum(part.fraction for part in self.parts) / len(self.parts)

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        out: dict[str, Any] = {
            "kind": "tree",
            "name": self.name,
            "parts": [part.to_json() for part in self.parts],
        }
        if self.path:
            out["path"] = list(self.path)
        return out


Progress: TypeAlias = ProgressLeaf | ProgressTree


# ---------------------------------------------------------------- messages


#: The ``extra`` of a message that has none: one shared, read-only empty mapping.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _mapping(value: Any) -> Any:
    """Copy a mapping into the message, unless it is already read-only (or empty)."""
    if type(value) is MappingProxyType:
        return value
    if isinstance(value, Mapping):
        return dict(value) if value else _NO_EXTRA
    return value


_EXTRA: Any = attrs.field(default=_NO_EXTRA, converter=_mapping, kw_only=True, hash=False)


@attrs.frozen
class Event:
    """An event: a fact published on the bus for every listener of its type."""

    kind: ClassVar[Kind] = Kind.EVENT
    message_type: str
    data: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping, hash=False)

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        return {"kind": "event", "message_type": self.message_type, "data": dict(self.data)}


@attrs.frozen
class _StepMessage:
    message_type: str
    task: str
    step: str
    extra: Mapping[str, Any] = _EXTRA

    def _data(self) -> dict[str, Any]:
        return {**self.extra, "task": self.task, "step": self.step}

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        return {"kind": self.kind.value, "message_type": self.message_type, "data": self._data()}

    kind: ClassVar[Kind]


@attrs.frozen
class Action(_StepMessage):
    """Ask the subscribers of ``message_type`` to do the work of a task's step."""

    kind: ClassVar[Kind] = Kind.ACTION


@attrs.frozen
class ActionAbort(_StepMessage):
    """Tell subscribers that a step's work is no longer wanted."""

    kind: ClassVar[Kind] = Kind.ACTION_ABORT


@attrs.frozen
class _Answer(_StepMessage):
    subscriber_id: str | None = attrs.field(default=None, kw_only=True)

    def _data(self) -> dict[str, Any]:
        data = super()._data()
        if self.subscriber_id is not None:
            data["subscriber_id"] = self.subscriber_id
        return data


@attrs.frozen
class ActionDone(_Answer):
    """A subscriber finished a step's work."""

    kind: ClassVar[Kind] = Kind.ACTION_DONE


@attrs.frozen
class ActionError(_Answer):
    """A subscriber failed a step's work; ``error`` says why."""

    kind: ClassVar[Kind] = Kind.ACTION_ERROR
    error: str = attrs.field(default="n/a", kw_only=True)

    def _data(self) -> dict[str, Any]:
        return {**super()._data(), "error": self.error}


@attrs.frozen
class ActionInfo(_Answer):
    """A subscriber reports something (``level`` is e.g. ``info``, ``warn``, ``error``)."""

    kind: ClassVar[Kind] = Kind.ACTION_INFO
    level: str = attrs.field(default="info", kw_only=True)
    message: str = attrs.field(default="", kw_only=True)

    #: Longer messages are cut to this many characters.
    MAX_LENGTH: ClassVar[int] = 500

    def __attrs_post_init__(self) -> None:
        if len(self.message) > self.MAX_LENGTH:
            object.__setattr__(self, "message", self.message[: self.MAX_LENGTH - 3] + "...")

    def _data(self) -> dict[str, Any]:
        return {**super()._data(), "level": self.level, "message": self.message}


@attrs.frozen
class ActionProgress(_Answer):
    """A subscriber reports how far it got with a step's work."""

    kind: ClassVar[Kind] = Kind.ACTION_PROGRESS
    progress: Progress = attrs.field(kw_only=True)
    at: str | None = attrs.field(default=None, kw_only=True)

    def _data(self) -> dict[str, Any]:
        data = {**super()._data(), "progress": self.progress.to_json()}
        if self.at is not None:
            data["at"] = self.at
        return data


Answer: TypeAlias = ActionDone | ActionError | ActionInfo | ActionProgress
Message: TypeAlias = (
    Event | Action | ActionAbort | ActionDone | ActionError | ActionInfo | ActionProgress
)

#: Message classes by their ``kind``.
MESSAGE_CLASSES: dict[Kind, type[Message]] = {
    Kind.EVENT: Event,
    Kind.ACTION: Action,
    Kind.ACTION_ABORT: ActionAbort,
    Kind.ACTION_DONE: ActionDone,
    Kind.ACTION_ERROR: ActionError,
    Kind.ACTION_INFO: ActionInfo,
    Kind.ACTION_PROGRESS: ActionProgress,
}


def answer_for(action: Action, kind: type[Answer], subscriber_id: str, **fields: Any) -> Answer:
    """Build an answer to ``action`` from ``subscriber_id``, echoing the action's data."""
    return kind(
        action.message_type,
        action.task,
        action.step,
        extra=action.extra,
        subscriber_id=subscriber_id,
        **fields,
    )
