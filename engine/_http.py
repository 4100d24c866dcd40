"""What every HTTP handler of the API shares: the error answer and reading a JSON body."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.requests import Request

from ._errors import BadInput as BadInput
from ._json import JSONInputError, parse_json


def describe(value: object) -> str:
    """Return a short ``repr`` of a value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


async def read_body(request: Request, max_body_size: int) -> bytes:
    """Return a request's body.

    Raises:
        BadInput: 413 when it is larger than ``max_body_size``.
    """
    size = 0
    chunks = []
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > max_body_size:
                raise BadInput(
                    413,
                    "request body too large",
                    [f"body: more than {max_body_size} bytes"],
                )
            chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_body_size: int, *, yaml_allowed: bool = False) -> Any:
    """Return a request's JSON body (YAML too, with ``Content-Type: application/yaml``,
    when ``yaml_allowed``), held to the JSON rule of :mod:`engine._json`.

    Raises:
        BadInput: 400 for an empty or unreadable body, 413 for a too large one.
    """
    body = await read_body(request, max_body_size)
    if not body.strip():
        raise BadInput(400, "invalid JSON body", ["body: empty, expected JSON"])
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if yaml_allowed and content_type in ("application/yaml", "application/x-yaml", "text/yaml"):
        import yaml

        try:
            value = yaml.safe_load(body)
        except yaml.YAMLError as error:
            raise BadInput(400, "invalid YAML body", [f"body: {error}"]) from None
        # through JSON text: dates become strings, and the JSON rule applies as to JSON
        try:
            return parse_json(json.dumps(value, default=str), path="body")
        except (JSONInputError, RecursionError, ValueError) as error:
            problems = error.problems if isinstance(error, JSONInputError) else ["body: too deep"]
            raise BadInput(400, "invalid YAML body", [str(p) for p in problems]) from None
    try:
        return parse_json(body, path="body")
    except JSONInputError as error:
        raise BadInput(400, "invalid JSON body", [str(p) for p in error.problems]) from None
