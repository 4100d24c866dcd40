"""HTTP routes for run-time workflows and jobs, and for tasks' logs (PROTOCOL.md).

- ``GET /jobs``; ``GET``, ``PUT``, ``DELETE /job/{id}``; ``POST /job/{id}/run``;
- ``PUT``, ``DELETE /workflow/{id}``;
- ``POST /workflow/{id}/activate`` and ``/deactivate``, the same for jobs;
- ``GET /task/{id}/log``.

A ``PUT`` body is one workflow or job as in a JSON data file (the id may be
left out); an invalid one gets 400 listing every problem with its path, and
nothing changes. Workflows and jobs declared in files cannot be changed (409
naming the file); built-in ones cannot be deleted (409). Task ids may be
given by any unique prefix (:func:`resolve_task_id`).

The routes are mounted by :mod:`engine._web`, whose error handling (of
:class:`~engine._errors.BadInput`) and body limits apply to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._engine import Engine
from ._errors import (
    BadInput,
    DeclarationError,
    DefinitionConflict,
    TaskLookupError,
    UnknownTaskError,
    UnknownWorkflowError,
)
from ._registry import DefinitionKind

#: Reads a request's JSON body (the application's reader: size limits, the JSON rule).
BodyReader = Callable[[Request], Awaitable[Any]]


async def resolve_task_id(engine: Engine, given: str) -> str:
    """Return the id of the one task whose id is ``given`` or starts with it.

    Raises:
        TaskLookupError: no task matches (404), or several do (400).
    """
    try:
        await engine.fetch_task(given)
    except UnknownTaskError:
        pass
    else:
        return given
    found = await engine.fetch_task_ids(given, limit=3)
    if not found:
        raise TaskLookupError(404, f"unknown task {given!r}")
    if len(found) > 1:
        listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
        raise TaskLookupError(
            400, f"task id prefix {given!r} is ambiguous: it matches {listed}; give more of it"
        )
    return found[0]


def not_decided(problem: str) -> Response:
    """Return the 503 of a request the store shared by servers did not answer in time."""
    body = {"error": "the store does not answer", "problems": [problem]}
    return JSONResponse(body, 503, {"Retry-After": "1"})


async def start_answer(engine: Engine, workflow_id: str, wait: float) -> Response:
    """Start a run as its surpass allows (weighing every server's runs) and answer
    ``POST /workflow/{id}/run`` or ``/job/{id}/run``: 202 with the task id when it started
    or is queued, 200 when skipped (saying why), 503 when the store did not decide within
    ``wait`` seconds (it decides once it answers)."""
    with trio.move_on_after(wait):
        try:
            result = await engine.start_run(workflow_id, reason="api")
        except UnknownWorkflowError:
            raise BadInput(404, f"unknown workflow {workflow_id!r}") from None
        return JSONResponse(result.to_json(), 202 if result.task_id is not None else 200)
    return not_decided(
        f"the start of a run of {workflow_id!r} was not decided within {wait:g} s: it is"
        " decided once the store answers (GET /tasks shows the run if it starts)"
    )


class DefinitionRoutes:
    """The handlers of the run-time definition routes of one engine."""

    def __init__(self, engine: Engine, read_json: BodyReader, store_wait: float = 10.0) -> None:
        self.engine = engine
        self._read_json = read_json
        self._store_wait = store_wait

    def routes(self) -> list[BaseRoute]:
        """Return the routes to mount."""
        routes: list[BaseRoute] = [
            Route("/jobs", self.list_jobs, methods=["GET"]),
            Route("/job/{id}", self.get_job, methods=["GET"]),
            Route("/job/{id}/run", self.run_job, methods=["POST"]),
            Route("/task/{id}/log", self.task_log, methods=["GET"]),
        ]
        for kind in ("job", "workflow"):
            routes += [
                Route(f"/{kind}/{{id}}", self._put(kind), methods=["PUT"]),
                Route(f"/{kind}/{{id}}", self._delete(kind), methods=["DELETE"]),
                Route(f"/{kind}/{{id}}/activate", self._activate(kind, True), methods=["POST"]),
                Route(f"/{kind}/{{id}}/deactivate", self._activate(kind, False), methods=["POST"]),
            ]
        return routes

    # ------------------------------------------------------------ jobs

    async def list_jobs(self, request: Request) -> Response:
        return JSONResponse([d.to_json() for d in self.engine.definitions.all("job")])

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        if self.engine.job(job_id) is None:
            raise BadInput(404, f"unknown job {job_id!r}")
        return JSONResponse(self.engine.definitions.get(job_id).to_json())

    async def run_job(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        if self.engine.job(job_id) is None:
            raise BadInput(404, f"unknown job {job_id!r}")
        return await start_answer(self.engine, job_id, self._store_wait)

    # ------------------------------------------------------------ changes

    def _put(self, kind: DefinitionKind) -> Callable[[Request], Awaitable[Response]]:
        async def put(request: Request) -> Response:
            definition_id = request.path_params["id"]
            body = await self._read_json(request)
            registry = self.engine.definitions
            try:
                declaration = registry.parse(kind, definition_id, body)
                definition, created = registry.put(declaration)
            except DeclarationError as error:
                raise BadInput(400, f"invalid {kind}", [str(p) for p in error.problems]) from None
            except DefinitionConflict as error:
                raise BadInput(409, str(error)) from None
            return JSONResponse(definition.to_json(), 201 if created else 200)

        return put

    def _delete(self, kind: DefinitionKind) -> Callable[[Request], Awaitable[Response]]:
        async def delete(request: Request) -> Response:
            definition_id = request.path_params["id"]
            with _refused(kind, definition_id):
                self.engine.definitions.delete(kind, definition_id)
            return Response(status_code=204)

        return delete

    def _activate(
        self, kind: DefinitionKind, active: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def activate(request: Request) -> Response:
            definition_id = request.path_params["id"]
            with _refused(kind, definition_id):
                definition = self.engine.definitions.set_active(kind, definition_id, active)
            return JSONResponse(definition.to_json())

        return activate

    # ------------------------------------------------------------ task logs

    async def task_log(self, request: Request) -> Response:
        try:
            task_id = await resolve_task_id(self.engine, request.path_params["id"])
        except TaskLookupError as error:
            raise BadInput(error.status, str(error)) from None
        entries = await self.engine.log.fetch(task_id)
        return JSONResponse({"task_id": task_id, "entries": [e.to_json() for e in entries]})


@contextlib.contextmanager
def _refused(kind: DefinitionKind, definition_id: str) -> Iterator[None]:
    """Answer an unknown definition with 404 and a declared one (from a file) with 409."""
    try:
        yield
    except UnknownWorkflowError:
        raise BadInput(404, f"unknown {kind} {definition_id!r}") from None
    except DefinitionConflict as error:
        raise BadInput(409, str(error)) from None
