"""The workflows a command can name: the built-in ones and those of files and directories.

The built-in workflows are handed over by the program that runs the command
line (the ``phasebus`` launcher in :mod:`machines`); the engine knows none itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from ._definitions import Declarations, Job, Workflow
from ._errors import DeclarationError, Problem
from ._errors import UsageError as UsageError

# ---------------------------------------------------------------- the catalog


BUILTIN = "built-in"


@attrs.frozen
class Catalog:
    """The workflows and jobs a command can name: the built-in ones and those of ``--workflows``."""

    workflows: dict[str, Workflow]
    jobs: dict[str, Job]
    #: Where each id was declared: ``built-in`` or a file name.
    sources: dict[str, str]

    def get(self, workflow_id: str) -> Workflow:
        """Return the workflow (a job as its workflow) called ``workflow_id``.

        Raises:
            UsageError: nothing has that id.
        """
        if workflow_id in self.workflows:
            return self.workflows[workflow_id]
        if workflow_id in self.jobs:
            return self.jobs[workflow_id].as_workflow()
        known = ", ".join(sorted([*self.workflows, *self.jobs]))
        raise UsageError(f"unknown workflow {workflow_id!r} (known: {known})")


def declaration_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the ``.toml`` and ``.json`` files in them, sorted by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.suffix in (".toml", ".json") and p.is_file())
            )
        else:
            files.append(path)
    return files


def one_line(error: DeclarationError) -> str:
    first = error.problems[0] if error.problems else Problem("", "invalid")
    line = f"{error.source}: {first}" if error.source else str(first)
    more = len(error.problems) - 1
    if more:
        line += f" (and {plural(more, 'more problem')}; see 'phasebus validate {error.source}')"
    return line


def load_catalog(
    paths: Path | Sequence[Path] | None, *, builtins: Iterable[Workflow] = ()
) -> Catalog:
    """Return the ``builtins`` and the workflows declared in ``paths`` (files or directories).

    A directory adds its ``*.toml`` and ``*.json`` files. The built-in
    workflows are marked ``built-in`` in :attr:`Catalog.sources`; a file
    cannot declare an id again.

    Raises:
        UsageError: a path does not exist or is not a declaration file, a
            file is invalid, or an id is declared twice; the message is one line.
    """
    workflows = {workflow.id: workflow for workflow in builtins}
    jobs: dict[str, Job] = {}
    sources = dict.fromkeys(workflows, BUILTIN)
    if paths is None:
        return Catalog(workflows, jobs, sources)
    given = [paths] if isinstance(paths, Path) else list(paths)
    for path in given:
        if not path.exists():
            raise UsageError(f"--workflows: {str(path)!r} does not exist")
        if path.is_file() and path.suffix not in (".toml", ".json"):
            raise UsageError(f"--workflows: {str(path)!r} is not a .toml or .json file")
    for path in declaration_files(given):
        try:
            declarations = Declarations.from_file(path)
        except DeclarationError as error:
            raise UsageError(one_line(error)) from None
        for problem in clashes(declarations, sources):
            raise UsageError(f"{path}: {problem}")
        for workflow in declarations.workflows:
            workflows[workflow.id] = workflow
            sources[workflow.id] = str(path)
        for job in declarations.jobs:
            jobs[job.id] = job
            sources[job.id] = str(path)
    return Catalog(workflows, jobs, sources)


def clashes(declarations: Declarations, sources: dict[str, str]) -> list[Problem]:
    problems = []
    ids = (
        ("workflows", [w.id for w in declarations.workflows]),
        ("jobs", [j.id for j in declarations.jobs]),
    )
    for key, items in ids:
        for index, ident in enumerate(items):
            if ident in sources:
                problems.append(
                    Problem(
                        f"{key}[{index}].id",
                        f"duplicate id {ident!r} (also declared in {sources[ident]})",
                    )
                )
    return problems


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
