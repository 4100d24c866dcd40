"""The one rule for JSON that enters phasebus: HTTP bodies, WebSocket frames, data files.

JSON may spell things that cannot be written back as JSON or stored as
UTF-8: a lone surrogate (``"\\ud800"``: valid JSON, not valid Unicode text),
and numbers that are not finite (``NaN``, ``Infinity``, or ``1e999``, which
overflows a float). Such a value is refused where it enters, with the path of
the field that holds it, before anything is stored or forwarded; so whatever
phasebus keeps it can also read back and send on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import orjson

from ._errors import JSONInputError as JSONInputError
from ._errors import Problem, join_path

#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 64


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _describe_string(text: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return shown.encode("unicode_escape").decode("ascii")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _child_path(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else join_path(path, str(key))


def value_problems(value: object, path: str = "", *, max_depth: int = MAX_DEPTH) -> list[Problem]:
    """Return what keeps ``value`` from being JSON that phasebus can store and send on.

    A problem names the path of each lone surrogate (in a key or a string),
    each number that is not finite, and the first place nested deeper than
    ``max_depth``. An empty list means the value is fine.
    """
    return list(_problems(value, path, 1, max_depth))


def _problems(value: object, path: str, depth: int, max_depth: int) -> Iterator[Problem]:
    if isinstance(value, str):
        if _has_surrogate(value):
            yield Problem(path, f"lone surrogate in a string: '{_describe_string(value)}'")
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield Problem(path, f"number is not finite ({value!r}): JSON cannot carry it")
    elif isinstance(value, Mapping | list | tuple):
        if depth > max_depth:
            yield Problem(path, f"nested deeper than {max_depth} levels")
            return
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and _has_surrogate(key):
                yield Problem(
                    path or "(top level)",
                    f"lone surrogate in a key: '{_describe_string(key)}'",
                )
                continue
            yield from _problems(item, _child_path(path, key), depth + 1, max_depth)


def _too_deep(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(text: str | bytes, *, path: str = "") -> Any:
    """Parse JSON input by the rule of this module.

    ``path`` prefixes the paths in problems (``body``, say).

    Raises:
        JSONInputError: naming what is wrong and where: not UTF-8, not JSON,
            nested deeper than :data:`MAX_DEPTH`, a lone surrogate, or a
            number that is not finite.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # the slower parser below says what and where
    else:
        if _too_deep(value, MAX_DEPTH):
            raise JSONInputError([Problem(path, f"nested deeper than {MAX_DEPTH} levels")])
        return value
    # orjson refuses lone surrogates and numbers that overflow without saying
    # where they are; the standard parser accepts both, so the value can be
    # searched for them, and it reports syntax errors with their position.
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise JSONInputError([Problem(path, f"nested deeper than {MAX_DEPTH} levels")]) from None
    except UnicodeDecodeError:
        raise JSONInputError([Problem(path, "not valid UTF-8")]) from None
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise JSONInputError([Problem(path, f"invalid JSON: {error}")]) from None
    problems = value_problems(value, path)
    if not problems:  # orjson and the standard parser disagree on something else
        problems = [Problem(path, "invalid JSON")]
    raise JSONInputError(problems)


def check_value(value: object, *, path: str = "") -> None:
    """Check a value built in Python or read by another parser (TOML) by the same rule.

    Raises:
        JSONInputError: listing every lone surrogate and non-finite number, with paths.
    """
    problems = value_problems(value, path)
    if problems:
        raise JSONInputError(problems)
