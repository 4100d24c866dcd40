"""The routes of Resoto's core that its components call, other than the event bus.

- Configs as Resoto serves them: ``GET /config/{id}`` with
  ``separate_overrides``, ``apply_overrides``, ``resolve_env_vars`` and
  ``include_raw_config``, or as YAML (``Accept: application/yaml``);
  ``PUT``/``PATCH /config/{id}`` with ``validate`` and ``dry_run``.
- Config models and validation settings: ``GET``/``PATCH /configs/model``,
  ``GET /configs/validation``, ``GET``/``PUT /config/{id}/validation`` (and
  ``/config_validation/{id}``).
- ``/graph/*``: Resoto's inventory graph database, which phasebus is not:
  501 with a body that says so.

phasebus has no config overrides: ``overrides`` is always ``null`` and
``apply_overrides`` changes nothing. ``$(NAME)`` in a string is the server's
environment variable NAME when ``resolve_env_vars`` is on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import trio
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._config import Config, ConfigConflict, merge_patch
from ._config_model import ConfigModels, resolve_env_vars
from ._engine import Engine
from ._errors import InvalidInputError
from ._http import BadInput, describe, read_json

#: The response header carrying a config's revision.
REVISION_HEADER = "Resoto-Config-Revision"

_GET_QUERY = ("separate_overrides", "apply_overrides", "resolve_env_vars", "include_raw_config")
_WRITE_QUERY = ("validate", "dry_run")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: Asks a worker to approve a config change: (validator id, config id, config) -> None,
#: raising BadInput when the change is refused or nobody answers.
Approver = Callable[[str, str, Mapping[str, Any]], Awaitable[None]]


def _flags(
    request: Request, allowed: tuple[str, ...], defaults: Mapping[str, bool]
) -> dict[str, bool]:
    problems = []
    flags = dict(defaults)
    for key, value in request.query_params.items():
        if key not in allowed:
            problems.append(f"{key}: unknown query parameter")
        elif value.lower() in ("true", "false"):
            flags[key] = value.lower() == "true"
        else:
            problems.append(f"{key}: must be true or false, got {value!r}")
    if problems:
        raise BadInput(400, "bad query", problems)
    return flags


def config_yaml(data: Mapping[str, Any]) -> str:
    """Return a config document as YAML, keys in their stored order."""
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


class ResotoRoutes:
    """Resoto's config routes and the graph refusal, over an engine's config service.

    Args:
        engine: the engine whose configs are served.
        models: the registered config models and validation settings.
        max_body_size: largest request body, in bytes.
        environ: where ``$(NAME)`` is looked up (the process environment by default).
    """

    def __init__(
        self,
        engine: Engine,
        models: ConfigModels,
        *,
        max_body_size: int,
        environ: Mapping[str, str] | None = None,
        store_wait: float = 10.0,
    ) -> None:
        self.engine = engine
        #: Seconds a change naming a revision waits for a shared store's check before
        #: it answers 503 (the change is made, and taken here, once the store answers).
        self.store_wait = store_wait
        self.models = models
        self.max_body_size = max_body_size
        self.environ = os.environ if environ is None else environ
        #: Set by whoever runs the work queue: asks a worker to approve a change.
        self.approver: Approver | None = None

    def routes(self) -> list[BaseRoute]:
        """Return the routes, to be mounted before any catch-all."""
        config = "/config/{id}"
        return [
            Route("/configs", self.list_configs, methods=["GET"]),
            Route("/configs/model", self.get_model, methods=["GET"]),
            Route("/configs/model", self.patch_model, methods=["PATCH"]),
            Route("/configs/validation", self.list_validations, methods=["GET"]),
            Route(config + "/validation", self.get_validation, methods=["GET"]),
            Route(config + "/validation", self.put_validation, methods=["PUT"]),
            Route("/config_validation/{id}", self.get_validation, methods=["GET"]),
            Route("/config_validation/{id}", self.put_validation, methods=["PUT"]),
            Route(config, self.get_config, methods=["GET"]),
            Route(config, self.put_config, methods=["PUT"]),
            Route(config, self.patch_config, methods=["PATCH"]),
            Route(config, self.delete_config, methods=["DELETE"]),
            Route("/graph", self.no_graph, methods=_ALL_METHODS),
            Route("/graph/{rest:path}", self.no_graph, methods=_ALL_METHODS),
        ]

    # ------------------------------------------------------------ configs

    async def list_configs(self, request: Request) -> Response:
        return JSONResponse(self.engine.configs.ids())

    def _config(self, request: Request) -> Config:
        config_id = request.path_params["id"]
        config = self.engine.configs.get(config_id)
        if config is None:
            unreadable = self.engine.configs.unreadable.get(config_id)
            if unreadable is not None:
                raise BadInput(
                    409,
                    f"the stored config {config_id!r} cannot be read back: replace it (PUT)"
                    " or delete it",
                    [str(p) for p in unreadable],
                )
            raise BadInput(404, f"unknown config {config_id!r}")
        return config

    async def get_config(self, request: Request) -> Response:
        """Answer a config in the shape the query asks for (Resoto's rules)."""
        accept = request.headers.get("accept", "")
        wants_yaml = accept.split(";")[0].strip().lower() == "application/yaml"
        separate = _flags(request, _GET_QUERY, {"separate_overrides": False})["separate_overrides"]
        # a single document has env vars resolved unless told otherwise; the
        # separate form shows what was stored unless told otherwise
        defaults = {
            "apply_overrides": not separate,
            "resolve_env_vars": not separate,
            "include_raw_config": False,
        }
        flags = _flags(request, _GET_QUERY, defaults)
        config = self._config(request)
        headers = {REVISION_HEADER: config.revision}
        if wants_yaml:
            return Response(
                config_yaml(config.data), media_type="application/yaml", headers=headers
            )
        document: dict[str, Any] = dict(config.data)
        if flags["resolve_env_vars"]:
            document = self.models.coerce(resolve_env_vars(document, self.environ))
        if not separate:
            return JSONResponse(document, headers=headers)
        body: dict[str, Any] = {"config": document, "overrides": None}
        if flags["include_raw_config"]:
            body["raw_config"] = dict(config.data)
        return JSONResponse(body, headers=headers)

    def _if_match(self, request: Request) -> str | None:
        value = request.headers.get("if-match")
        if value is None:
            return None
        value = value.strip()
        if value.startswith("W/"):
            value = value[2:]
        value = value.strip('"')
        if value == "*":
            current = self.engine.configs.get(request.path_params["id"])
            return current.revision if current is not None else "*"
        return value

    async def _write(self, request: Request, *, patch: bool) -> Response:
        config_id = request.path_params["id"]
        flags = _flags(request, _WRITE_QUERY, {"validate": True, "dry_run": False})
        body = await read_json(request, self.max_body_size, yaml_allowed=True)
        if not isinstance(body, dict):
            raise BadInput(
                400, "invalid config", [f"body: must be a JSON object, got {describe(body)}"]
            )
        configs = self.engine.configs
        current = configs.get(config_id)
        document = merge_patch(current.data if current else {}, body) if patch else body
        if flags["validate"]:
            try:
                document = self.models.check(document)
            except InvalidInputError as error:
                raise BadInput(400, "invalid config", [str(p) for p in error.problems]) from None
            validator = self.models.validator_for(config_id)
            if validator is not None:
                if self.approver is None:
                    raise BadInput(
                        503, f"config {config_id!r} needs approval and nobody can give it"
                    )
                await self.approver(validator, config_id, document)
        if_match = self._if_match(request)
        unchanged = current is not None and dict(current.data) == document
        if flags["dry_run"] or unchanged:
            # nothing is written: an unchanged document keeps its revision and
            # announces nothing, as Resoto's core does
            if if_match is not None and (current is None or current.revision != if_match):
                actual = None if current is None else current.revision
                raise BadInput(
                    409,
                    str(ConfigConflict(config_id, if_match, actual)),
                    extra={"revision": actual},
                )
            headers = {} if current is None else {REVISION_HEADER: current.revision}
            return JSONResponse(document, headers=headers)
        try:
            with self._store_bound():
                config = await configs.write(config_id, document, if_match=if_match)
        except ConfigConflict as error:
            raise BadInput(409, str(error), extra={"revision": error.actual}) from None
        except InvalidInputError as error:
            raise BadInput(400, "invalid config", [str(p) for p in error.problems]) from None
        return JSONResponse(dict(config.data), headers={REVISION_HEADER: config.revision})

    @contextlib.contextmanager
    def _store_bound(self) -> Iterator[None]:
        """Answer 503 when the store has not checked and kept a change in time."""
        try:
            with trio.fail_after(self.store_wait):
                yield
        except trio.TooSlowError:
            raise BadInput(
                503,
                "the store does not answer",
                [
                    f"the change was not stored within {self.store_wait:g} s: it is written,"
                    " if the store still holds the revision it names, once the store answers"
                ],
            ) from None

    async def put_config(self, request: Request) -> Response:
        return await self._write(request, patch=False)

    async def patch_config(self, request: Request) -> Response:
        return await self._write(request, patch=True)

    async def delete_config(self, request: Request) -> Response:
        config_id = request.path_params["id"]
        if_match = self._if_match(request)
        if if_match is None and config_id not in self.engine.configs.ids():
            raise BadInput(404, f"unknown config {config_id!r}")
        try:
            with self._store_bound():
                await self.engine.configs.remove(config_id, if_match=if_match)
        except ConfigConflict as error:
            raise BadInput(409, str(error), extra={"revision": error.actual}) from None
        self.models.delete_validation(config_id)
        return Response(status_code=204)

    # ------------------------------------------------------------ models and validation

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(self.models.kinds())

    async def patch_model(self, request: Request) -> Response:
        body = await read_json(request, self.max_body_size)
        try:
            return JSONResponse(self.models.update(body))
        except InvalidInputError as error:
            raise BadInput(400, "invalid config model", [str(p) for p in error.problems]) from None

    async def list_validations(self, request: Request) -> Response:
        return JSONResponse(self.models.validation_ids())

    async def get_validation(self, request: Request) -> Response:
        config_id = request.path_params["id"]
        validation = self.models.validation(config_id)
        if validation is None:
            raise BadInput(404, f"no validation setting for config {config_id!r}")
        return JSONResponse(validation)

    async def put_validation(self, request: Request) -> Response:
        config_id = request.path_params["id"]
        body = await read_json(request, self.max_body_size)
        try:
            self.engine.configs.check_id(config_id)
            return JSONResponse(self.models.set_validation(config_id, body))
        except InvalidInputError as error:
            raise BadInput(400, "invalid validation", [str(p) for p in error.problems]) from None

    # ------------------------------------------------------------ graph

    async def no_graph(self, request: Request) -> Response:
        return JSONResponse(
            {
                "error": "the inventory graph API is not part of phasebus",
                "problems": [
                    f"{request.method} {request.url.path}: phasebus runs workflows and carries"
                    " Resoto's event bus; it keeps no inventory graph (Resoto's core does)"
                ],
            },
            501,
        )
