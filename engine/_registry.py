"""Workflows and jobs defined, changed, paused and deleted while the engine runs.

Every workflow and job of an engine has an origin:

- ``api``: defined at run time (:meth:`Registry.put`); it can be changed,
  deactivated and deleted, and it is kept in the store and restored on start;
- ``built-in``: given to the engine by the program (the built-in workflows
  of ``phasebus serve``, what ``open_engine`` was given); it can be changed
  and deactivated (the change is kept in the store), never deleted;
- a file name: declared in a ``--workflows`` file; it cannot be changed
  over the API at all (:class:`DefinitionConflict` names the file).

Changes take effect at once: schedules, event triggers and the
``start_<id>_workflow`` event follow the new definition, or stop while it is
inactive. A running task finishes on the definition it started with. Each
change is announced on the bus: ``workflow-updated``, ``workflow-deleted``,
``job-updated`` or ``job-deleted``, with ``data.id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import attrs
import orjson

from ._convert import structure_declaration, unstructure_declaration
from ._definitions import Job, Workflow
from ._errors import (
    DeclarationError,
    DefinitionConflict,
    EngineClosed,
    Problem,
    UnknownWorkflowError,
)
from ._persistence import Persistence

logger = logging.getLogger(__name__)

BUILTIN = "built-in"
RUNTIME = "api"

WORKFLOW_UPDATED = "workflow-updated"
WORKFLOW_DELETED = "workflow-deleted"
JOB_UPDATED = "job-updated"
JOB_DELETED = "job-deleted"

#: The events the registry publishes (only the engine may).
DEFINITION_EVENTS = frozenset({WORKFLOW_UPDATED, WORKFLOW_DELETED, JOB_UPDATED, JOB_DELETED})

DefinitionKind = Literal["workflow", "job"]


def _structure(kind: str, data: object, source: str | None) -> Workflow | Job:
    if kind == "job":
        return structure_declaration(data, Job, source=source)
    return structure_declaration(data, Workflow, source=source)


class _Engine(Protocol):
    """What the registry needs of the engine."""

    @property
    def workflows(self) -> dict[str, Workflow]: ...

    @property
    def closing(self) -> bool: ...

    def job(self, workflow_id: str) -> Job | None: ...

    def add_workflow(self, workflow: Workflow, *, replace: bool = False) -> None: ...

    def add_job(self, job: Job, *, replace: bool = False) -> None: ...

    def remove_workflow(self, workflow_id: str) -> None: ...

    def set_paused(self, workflow_id: str, paused: bool) -> None: ...

    def is_paused(self, workflow_id: str) -> bool: ...


@attrs.frozen
class Definition:
    """A workflow or job as the registry describes it."""

    id: str
    kind: DefinitionKind
    origin: str
    active: bool
    declaration: Workflow | Job

    def to_json(self) -> dict[str, Any]:
        """Return the declaration as in a JSON data file, with ``origin`` and ``active``."""
        data = unstructure_declaration(self.declaration)
        data["active"] = self.active
        return {**data, "origin": self.origin}


class Registry:
    """The engine's workflows and jobs, by origin; changes kept in ``store``.

    Args:
        engine: the engine whose registrations change.
        store: where run-time definitions and changes to built-in ones live.
        emit: publishes an engine event (type, data).
    """

    def __init__(
        self,
        engine: _Engine,
        store: Persistence | None,
        emit: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self._engine = engine
        self._store = store
        self._emit = emit
        #: Ids declared in files, with the file.
        self._files: dict[str, str] = {}
        self._runtime: set[str] = set()
        #: Tells the other engines sharing the store of a change (id, record or None when
        #: deleted); they take it with :meth:`apply`.
        self.share: Callable[[str, Mapping[str, Any] | None], None] | None = None

    # ------------------------------------------------------------ reading

    def origin(self, definition_id: str) -> str:
        """Return where a registered workflow or job comes from (``api``, ``built-in``, a file)."""
        if definition_id in self._files:
            return self._files[definition_id]
        return RUNTIME if definition_id in self._runtime else BUILTIN

    def get(self, definition_id: str) -> Definition:
        """Describe a registered workflow or job.

        Raises:
            UnknownWorkflowError: nothing is registered under this id.
        """
        workflow = self._engine.workflows.get(definition_id)
        if workflow is None:
            raise UnknownWorkflowError(definition_id)
        job = self._engine.job(definition_id)
        active = not self._engine.is_paused(definition_id)
        if job is not None:
            return Definition(definition_id, "job", self.origin(definition_id), active, job)
        return Definition(definition_id, "workflow", self.origin(definition_id), active, workflow)

    def all(self, kind: DefinitionKind | None = None) -> list[Definition]:
        """Describe every registered workflow and job (of ``kind``), sorted by id."""
        found = [self.get(ident) for ident in sorted(self._engine.workflows)]
        return [d for d in found if kind is None or d.kind == kind]

    def is_active(self, definition_id: str) -> bool:
        """Tell whether a workflow's triggers start it (it was not deactivated)."""
        return not self._engine.is_paused(definition_id)

    # ------------------------------------------------------------ declared at start

    def declare(self, sources: Mapping[str, str]) -> None:
        """Record where the program's workflows and jobs come from (id to file or ``built-in``).

        Those declared in files cannot be changed over the API.
        """
        for ident, source in sources.items():
            if source != BUILTIN:
                self._files[ident] = source

    def restore(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Apply the definitions the store kept (at start, before tasks resume).

        A stored definition whose id a file now declares is ignored (the file
        wins); one whose id the program now declares counts as a change to a
        built-in one; one the engine refuses (a command no longer registered)
        is logged and left in the store.
        """
        for ident, record in sorted(records.items()):
            try:
                kind = record["kind"]
                declaration = _structure(kind, record["declaration"], ident)
                if ident in self._files:
                    logger.warning(
                        "ignoring the stored %s %r: %s declares it", kind, ident, self._files[ident]
                    )
                    continue
                if record.get("origin") == BUILTIN and ident not in self._engine.workflows:
                    logger.warning("ignoring the stored change of %s %r: not built in", kind, ident)
                    continue
                declared = ident in self._engine.workflows
                self._apply(declaration, active=bool(record.get("active", True)))
            except (DeclarationError, KeyError, TypeError, ValueError) as error:
                logger.error("cannot restore the stored definition %r: %s", ident, error)
                continue
            if not declared:  # the program declares it now: a change to a built-in one
                self._runtime.add(ident)

    # ------------------------------------------------------------ changing

    def parse(self, kind: DefinitionKind, definition_id: str, data: object) -> Workflow | Job:
        """Read one workflow or job from the JSON of a data file, for ``definition_id``.

        The id may be left out (it is taken from ``definition_id``) and must
        match it when given.

        Raises:
            DeclarationError: listing every problem with its path.
        """
        problems: list[Problem] = []
        if isinstance(data, dict):
            given = data.get("id", definition_id)
            if given != definition_id:
                problems.append(
                    Problem("id", f"must be {definition_id!r} as in the path, got {given!r}")
                )
            data = {**data, "id": definition_id}
        try:
            declaration = _structure(kind, data, None)
        except DeclarationError as error:
            raise DeclarationError([*problems, *error.problems]) from None
        if problems:
            raise DeclarationError(problems)
        return declaration

    def put(self, declaration: Workflow | Job) -> tuple[Definition, bool]:
        """Add or replace a workflow or job; return it and whether it is new.

        A replaced workflow keeps its active state; a job takes its ``active``.

        Raises:
            DefinitionConflict: a file declares this id, or it names a
                workflow where a job is given (or the reverse).
            EngineClosed: the engine is stopping (nothing changes then).
            DeclarationError: the engine refuses it (an unregistered command);
                nothing changed then.
        """
        ident = declaration.id
        kind: DefinitionKind = "job" if isinstance(declaration, Job) else "workflow"
        exists = ident in self._engine.workflows
        if exists:
            self._check_change(ident, kind, "changed")
        else:
            self._check_open(ident, kind, "added")
        if isinstance(declaration, Job):
            active = declaration.active
        else:
            active = not exists or self.is_active(ident)
        self._apply(declaration, active=active)
        if not exists:
            self._runtime.add(ident)
        self._save(ident)
        logger.info("%s %s %r", "updated" if exists else "added", kind, ident)
        self._emit(JOB_UPDATED if kind == "job" else WORKFLOW_UPDATED, {"id": ident})
        return self.get(ident), not exists

    def delete(self, kind: DefinitionKind, definition_id: str) -> None:
        """Delete a run-time workflow or job; its running tasks go on to their end.

        Raises:
            UnknownWorkflowError: no such workflow or job.
            DefinitionConflict: it is built in or declared in a file.
        """
        self._check_change(definition_id, kind, "deleted")
        if definition_id not in self._runtime:
            raise DefinitionConflict(
                f"{kind} {definition_id!r} is built in: it can be changed or deactivated,"
                " not deleted"
            )
        self._engine.remove_workflow(definition_id)
        self._runtime.discard(definition_id)
        if self._store is not None:
            self._store.delete_definition(definition_id)
        if self.share is not None:
            self.share(definition_id, None)
        logger.info("deleted %s %r", kind, definition_id)
        self._emit(JOB_DELETED if kind == "job" else WORKFLOW_DELETED, {"id": definition_id})

    def set_active(self, kind: DefinitionKind, definition_id: str, active: bool) -> Definition:
        """Activate or deactivate a workflow's or job's triggers; return it.

        Raises:
            UnknownWorkflowError: no such workflow or job.
            DefinitionConflict: it is declared in a file.
        """
        self._check_change(definition_id, kind, "activated" if active else "deactivated")
        if active == self.is_active(definition_id):
            return self.get(definition_id)
        job = self._engine.job(definition_id)
        if job is not None:  # a job's declaration says whether it is active
            self._engine.add_job(attrs.evolve(job, active=active), replace=True)
        self._engine.set_paused(definition_id, not active)
        self._save(definition_id)
        logger.info("%s %s %r", "activated" if active else "deactivated", kind, definition_id)
        self._emit(JOB_UPDATED if kind == "job" else WORKFLOW_UPDATED, {"id": definition_id})
        return self.get(definition_id)

    def _check_change(self, definition_id: str, kind: DefinitionKind, change: str) -> None:
        self._check_open(definition_id, kind, change)
        if definition_id not in self._engine.workflows:
            raise UnknownWorkflowError(definition_id)
        actual: DefinitionKind = (
            "job" if self._engine.job(definition_id) is not None else "workflow"
        )
        if actual != kind:
            raise DefinitionConflict(
                f"{definition_id!r} is a {actual}, not a {kind}: use the {actual} routes"
            )
        if definition_id in self._files:
            raise DefinitionConflict(
                f"{kind} {definition_id!r} is declared in {self._files[definition_id]}:"
                f" it cannot be {change} here; edit the file and restart"
            )

    def _check_open(self, definition_id: str, kind: DefinitionKind, change: str) -> None:
        if self._engine.closing:  # nothing is stored any more: the change would be lost
            raise EngineClosed(f"the engine is stopping: {kind} {definition_id!r} not {change}")

    def _apply(self, declaration: Workflow | Job, *, active: bool) -> None:
        ident = declaration.id
        replace = ident in self._engine.workflows
        if isinstance(declaration, Job):
            self._engine.add_job(declaration, replace=replace)
        else:
            self._engine.add_workflow(declaration, replace=replace)
        self._engine.set_paused(ident, not active)

    def _save(self, definition_id: str) -> None:
        if self._store is None:
            return
        definition = self.get(definition_id)
        record = {
            "kind": definition.kind,
            "origin": RUNTIME if definition.origin == RUNTIME else BUILTIN,
            "active": definition.active,
            "declaration": unstructure_declaration(definition.declaration),
        }
        self._store.save_definition(definition_id, orjson.dumps(record))
        if self.share is not None:
            self.share(definition_id, record)

    def apply(self, definition_id: str, record: Mapping[str, Any] | None) -> None:
        """Take a change another engine sharing the store made (None: it deleted the
        definition), without storing it again (that engine did)."""
        if record is not None:
            self.restore({definition_id: record})
        elif definition_id in self._runtime and definition_id in self._engine.workflows:
            self._engine.remove_workflow(definition_id)
            self._runtime.discard(definition_id)
