"""The exceptions phasebus raises."""

from __future__ import annotations

from collections.abc import Iterable

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
