"""The exceptions phasebus raises."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Problem:
    """One thing wrong with an input, at a path such as ``steps[3].timeout``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def join_path(prefix: str, path: str) -> str:
    """Join two problem paths: ``steps[3]`` and ``timeout`` give ``steps[3].timeout``."""
    if not prefix:
        return path
    if not path:
        return prefix
    if path.startswith("["):
        return prefix + path
    return f"{prefix}.{path}"


class PhasebusError(Exception):
    """The base class of every error phasebus raises on purpose."""


class InvalidInputError(PhasebusError, ValueError):
    """Input that cannot be accepted; :attr:`problems` lists every problem found.

    ``str(error)`` is one line per problem, ``path: message``, prefixed by the
    source (a file name, say) when one is known.
    """

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + str(p) for p in self.problems)

    def with_prefix(self, path: str) -> InvalidInputError:
        """Return a copy of this error whose problem paths start with ``path``."""
        problems = [Problem(join_path(path, p.path), p.message) for p in self.problems]
        return type(self)(problems, source=self.source)


class DeclarationError(InvalidInputError):
    """A workflow, job or step declaration is invalid."""


class MessageError(InvalidInputError):
    """A message does not follow the wire protocol."""


class UnknownWorkflowError(PhasebusError, LookupError):
    """No workflow or job is registered under the given id."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"unknown workflow {workflow_id!r}")


class UnknownTaskError(PhasebusError, LookupError):
    """No task, running or finished, has the given id."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"unknown task {task_id!r}")


class ListenerError(PhasebusError):
    """A listener could not be opened or used."""


class BadInput(PhasebusError):
    """An HTTP request that gets an error answer: status, error and problems."""

    def __init__(
        self,
        status: int,
        error: str,
        problems: Iterable[str] = (),
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.problems = list(problems)
        self.extra = dict(extra or {})
        super().__init__(error)

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the answer."""
        return {"error": self.error, "problems": self.problems, **self.extra}


class ServerError(PhasebusError):
    """The server could not be asked, or refused the question."""


class StoreError(PhasebusError):
    """The store cannot be used: it names the file and what is wrong."""


class JSONInputError(InvalidInputError):
    """JSON input that is malformed, too deep, or holds a value that cannot be written back."""


class ConfigConflict(PhasebusError):
    """A config changed since the revision the writer expected."""

    def __init__(self, config_id: str, expected: str, actual: str | None) -> None:
        self.config_id = config_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"config {config_id!r} is at revision {actual!r}, not {expected!r}"
            if actual is not None
            else f"config {config_id!r} does not exist (expected revision {expected!r})"
        )


class EngineClosed(PhasebusError):
    """The engine closed before the awaited task ended."""


class ListenerDropped(ListenerError):
    """The listener was dropped (too slow, or the engine closed) and receives no more."""


class UsageError(PhasebusError):
    """The command line cannot be carried out: a bad option, an unknown name, a bad file."""


class RestoreError(PhasebusError):
    """A stored task does not fit its workflow's current declaration."""


class AuthError(PhasebusError):
    """A request did not carry a valid token; the message says what was wrong."""


class DiagramError(PhasebusError):
    """A diagram could not be drawn."""


class GraphvizNotFound(DiagramError):
    """Graphviz's ``dot`` program, needed for SVG, is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "SVG needs Graphviz's 'dot' program, which is not on the PATH"
            " (install Graphviz, e.g. 'apt-get install graphviz'), or use --format mermaid or dot"
        )


class DefinitionConflict(PhasebusError):
    """A change of a workflow or job that its origin does not allow (HTTP 409)."""


class TaskLookupError(PhasebusError, LookupError):
    """A task id (or prefix) names no task (``status`` 404), or more than one (400)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class LeaseLost(StoreError):
    """A write under a lease was refused: the lease expired or was taken over; nothing written."""


class TaskTakenOver(LeaseLost):
    """A task's write was refused: another replica took the task over and drives it now."""


class TLSError(PhasebusError):
    """Certificates or keys that cannot be used; the message names the file."""


class WorkFailed(PhasebusError):
    """A task ended without a result: the worker reported an error, or it timed out."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        self.timed_out = timed_out
        super().__init__(message)
