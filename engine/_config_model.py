"""Config models in Resoto's kind format, and the check of a config against them.

A component registers the model of its config (``PATCH /configs/model``): a
list of kinds. A kind is simple (``{"fqn", "runtime_kind"}`` with optional
``enum``, ``pattern``, ``min_length``, ``max_length``, ``minimum``,
``maximum``) or complex (``{"fqn", "properties": [{"name", "kind",
"required"}], "bases", "allow_unknown_props", "aggregate_root"}``). A
property's kind names a kind, ``<kind>[]`` for a list of it, or
``dictionary[<key kind>, <value kind>]``. The kinds ``string``, ``int32``,
``int64``, ``float``, ``double``, ``boolean``, ``date``, ``datetime``,
``duration`` and ``any`` always exist.

A config's top-level section whose key is the fqn of a complex kind that is
an aggregate root is checked against that kind; other sections are kept as
they are. Values are coerced as Resoto's core coerces them (``"true"`` to a
boolean, ``"10"`` to a number, a single value to a list of one, a non-string
to its JSON text for a string) and every problem is listed with its path. A
string that names an environment variable (``$(NAME)``) is not checked: it is
resolved when the config is read.

Validation settings (``{"id", "external_validation"}``) are kept per config
id; ``external_validation`` asks a worker on the ``/work`` queue (task
``validate_config``) to approve each change before it is stored.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, Protocol

import attrs

from ._errors import InvalidInputError, Problem

#: ``$(NAME)`` in a config string: the value of the server's environment variable NAME.
ENV_VAR = re.compile(r"\$\((\w+)\)")

_SIMPLE_RUNTIME = frozenset(
    {"string", "int32", "int64", "float", "double", "boolean", "date", "datetime", "duration"}
)
PREDEFINED = frozenset(_SIMPLE_RUNTIME | {"any"})

_DURATION = re.compile(
    r"^\s*(?:[+-]?\d+(?:\.\d+)?\s*"
    r"(?:yr|years?|mo|months?|w|weeks?|d|days?|h|hours?|min|minutes?|s|secs?|seconds?)"
    r"\s*(?:,|and)?\s*)+$"
)
_TRUE = ("true", "yes", "on")
_FALSE = ("false", "no", "off")


#: The changes :class:`ConfigModels` shares with the other engines sharing its store.
CONFIG_KIND = "config-kind"
CONFIG_VALIDATION = "config-validation"


class ModelStore(Protocol):
    """Where config models and validation settings are kept (the engine's persistence)."""

    def load_config_models(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return the stored kinds and validation settings."""

    def save_config_kinds(self, kinds: Sequence[Mapping[str, Any]]) -> None:
        """Store kinds (replacing those with the same fqn)."""

    def save_config_validation(self, validation: Mapping[str, Any]) -> None:
        """Store a validation setting (replacing the one with the same id)."""

    def delete_config_validation(self, config_id: str) -> None:
        """Forget a validation setting."""


# ---------------------------------------------------------------- reading kinds


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_problems(index: int, kind: object) -> list[Problem]:
    """Return the problems of one kind's JSON (its position is ``index``)."""
    path = f"[{index}]"
    if not isinstance(kind, Mapping):
        return [Problem(path, f"a kind must be an object, got {_describe(kind)}")]
    problems: list[Problem] = []
    fqn = kind.get("fqn")
    if not isinstance(fqn, str) or not fqn or fqn != fqn.strip():
        problems.append(Problem(f"{path}.fqn", f"must be a non-empty name, got {_describe(fqn)}"))
    elif fqn in PREDEFINED:
        problems.append(Problem(f"{path}.fqn", f"{fqn!r} is a predefined kind"))
    runtime = kind.get("runtime_kind")
    if runtime is not None:
        if runtime not in _SIMPLE_RUNTIME:
            problems.append(
                Problem(
                    f"{path}.runtime_kind",
                    f"must be one of {', '.join(sorted(_SIMPLE_RUNTIME))},"
                    f" got {_describe(runtime)}",
                )
            )
        enum = kind.get("enum")
        if enum is not None and not isinstance(enum, list):
            problems.append(Problem(f"{path}.enum", f"must be a list, got {_describe(enum)}"))
        pattern = kind.get("pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                problems.append(Problem(f"{path}.pattern", f"not a regular expression: {error}"))
        for key in ("min_length", "max_length", "minimum", "maximum"):
            value = kind.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                problems.append(
                    Problem(f"{path}.{key}", f"must be a number, got {_describe(value)}")
                )
        return problems
    properties = kind.get("properties", [])
    if not isinstance(properties, list):
        return [
            *problems,
            Problem(f"{path}.properties", f"must be a list, got {_describe(properties)}"),
        ]
    for number, prop in enumerate(properties):
        where = f"{path}.properties[{number}]"
        if not isinstance(prop, Mapping):
            problems.append(Problem(where, f"must be an object, got {_describe(prop)}"))
            continue
        for key in ("name", "kind"):
            if not isinstance(prop.get(key), str) or not prop.get(key):
                problems.append(
                    Problem(
                        f"{where}.{key}",
                        f"must be a non-empty string, got {_describe(prop.get(key))}",
                    )
                )
        if not isinstance(prop.get("required", False), bool):
            problems.append(
                Problem(
                    f"{where}.required",
                    f"must be true or false, got {_describe(prop.get('required'))}",
                )
            )
    bases = kind.get("bases", [])
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        problems.append(
            Problem(f"{path}.bases", f"must be a list of names, got {_describe(bases)}")
        )
    for key in ("allow_unknown_props", "aggregate_root"):
        if not isinstance(kind.get(key, False), bool):
            problems.append(
                Problem(f"{path}.{key}", f"must be true or false, got {_describe(kind.get(key))}")
            )
    return problems


def _split_dictionary(name: str) -> tuple[str, str] | None:
    inner = name[len("dictionary[") : -1]
    depth = 0
    for position, char in enumerate(inner):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            return inner[:position].strip(), inner[position + 1 :].strip()
    return None


def referenced_kinds(name: str) -> Iterable[str]:
    """Yield the plain kind names a property kind expression refers to."""
    if name.endswith("[]"):
        yield from referenced_kinds(name[:-2])
    elif name.startswith("dictionary[") and name.endswith("]"):
        parts = _split_dictionary(name)
        if parts is None:
            yield name
        else:
            yield from referenced_kinds(parts[0])
            yield from referenced_kinds(parts[1])
    else:
        yield name


# ---------------------------------------------------------------- the model


@attrs.define
class _Check:
    """One config check: the model, the problems found, and the env-var rule."""

    kinds: Mapping[str, Mapping[str, Any]]
    problems: list[Problem] = attrs.field(factory=list)

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def value(self, kind: str, value: Any, path: str) -> Any:
        """Return ``value`` coerced to ``kind``, recording its problems."""
        if kind.endswith("[]"):
            return self._array(kind[:-2], value, path)
        if kind.startswith("dictionary[") and kind.endswith("]"):
            parts = _split_dictionary(kind)
            assert parts is not None  # checked when the model was registered
            return self._dictionary(parts[0], parts[1], value, path)
        if kind == "any" or value is None:
            return value
        if isinstance(value, str) and ENV_VAR.search(value) and kind in _SIMPLE_RUNTIME:
            return value
        if kind in _SIMPLE_RUNTIME:
            return self._simple({"fqn": kind, "runtime_kind": kind}, value, path)
        definition = self.kinds.get(kind)
        if definition is None:
            self.fail(path, f"unknown kind {kind!r}")
            return value
        if "runtime_kind" in definition:
            if isinstance(value, str) and ENV_VAR.search(value):
                return value
            return self._simple(definition, value, path)
        return self._complex(definition, value, path)

    def _array(self, inner: str, value: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            self.fail(path, f"expected a list of {inner}, got an object")
            return value
        items = value if isinstance(value, list) else [value]
        return [self.value(inner, item, f"{path}[{i}]") for i, item in enumerate(items)]

    def _dictionary(self, key_kind: str, value_kind: str, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            self.fail(
                path, f"expected an object ({key_kind} to {value_kind}), got {_describe(value)}"
            )
            return value
        result = {}
        for key, item in value.items():
            checked_key = self.value(key_kind, key, f"{path}.{key}")
            result[str(checked_key)] = self.value(value_kind, item, f"{path}.{key}")
        return result

    def _complex(self, definition: Mapping[str, Any], value: Any, path: str) -> Any:
        fqn = definition["fqn"]
        if not isinstance(value, Mapping):
            self.fail(path, f"expected an object of kind {fqn}, got {_describe(value)}")
            return value
        props = self.properties(fqn)
        result: dict[str, Any] = {}
        for name, item in value.items():
            where = f"{path}.{name}" if path else str(name)
            prop = props.get(name)
            if prop is None:
                if name != "kind" and not definition.get("allow_unknown_props", False):
                    self.fail(where, f"not a property of {fqn}")
                result[name] = item
            elif item is None:
                if prop.get("required", False):
                    self.fail(where, "required, got null")
                result[name] = None
            else:
                result[name] = self.value(prop["kind"], item, where)
        for name, prop in props.items():
            if prop.get("required", False) and name not in value:
                self.fail(f"{path}.{name}" if path else name, "required property missing")
        # the model's order first, unknown properties after
        order = {name: position for position, name in enumerate(props)}
        return dict(sorted(result.items(), key=lambda item: order.get(item[0], len(order))))

    def properties(
        self, fqn: str, seen: frozenset[str] = frozenset()
    ) -> dict[str, Mapping[str, Any]]:
        """Return a complex kind's properties, those of its bases first."""
        definition = self.kinds.get(fqn)
        if definition is None or fqn in seen:
            return {}
        result: dict[str, Mapping[str, Any]] = {}
        for base in definition.get("bases", []) or []:
            if base != fqn:
                result.update(self.properties(base, seen | {fqn}))
        for prop in definition.get("properties", []) or []:
            result[prop["name"]] = prop
        return result

    def _simple(self, definition: Mapping[str, Any], value: Any, path: str) -> Any:
        runtime = definition["runtime_kind"]
        fqn = definition["fqn"]
        checker = _COERCE[runtime]
        coerced, problem = checker(value)
        if problem is not None:
            self.fail(path, f"{fqn}: {problem}")
            return value
        enum = definition.get("enum")
        if enum and coerced not in enum:
            self.fail(
                path, f"{fqn}: must be one of {', '.join(map(str, enum))}, got {_describe(coerced)}"
            )
        if isinstance(coerced, str):
            pattern = definition.get("pattern")
            if pattern and re.fullmatch(pattern, coerced) is None:
                self.fail(path, f"{fqn}: does not match {pattern!r}: {_describe(coerced)}")
            low, high = definition.get("min_length"), definition.get("max_length")
            if low is not None and len(coerced) < low:
                self.fail(path, f"{fqn}: shorter than {low} characters")
            if high is not None and len(coerced) > high:
                self.fail(path, f"{fqn}: longer than {high} characters")
        elif isinstance(coerced, int | float) and not isinstance(coerced, bool):
            low, high = definition.get("minimum"), definition.get("maximum")
            if low is not None and coerced < low:
                self.fail(path, f"{fqn}: must be >= {low}, got {coerced}")
            if high is not None and coerced > high:
                self.fail(path, f"{fqn}: must be <= {high}, got {coerced}")
        return coerced


def _string(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str):
        return value, None
    return json.dumps(value), None


def _integer(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, f"expected a whole number, got {value!r}"
    if isinstance(value, int):
        return value, None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value), None
    if isinstance(value, str):
        try:
            return int(value.strip()), None
        except ValueError:
            pass
    return value, f"expected a whole number, got {_describe(value)}"


def _number(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, f"expected a number, got {value!r}"
    if isinstance(value, int | float):
        return value, None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number, None
    return value, f"expected a number, got {_describe(value)}"


def _boolean(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True, None
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False, None
    return value, f"expected true or false, got {_describe(value)}"


def _duration(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and _DURATION.match(value):
        return value, None
    return value, f"expected a duration such as '3d4h' or '90s', got {_describe(value)}"


def _datetime(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return value, None
    return value, f"expected an ISO 8601 date and time, got {_describe(value)}"


def _date(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str):
        try:
            date.fromisoformat(value)
        except ValueError:
            pass
        else:
            return value, None
    return value, f"expected an ISO 8601 date, got {_describe(value)}"


_COERCE: dict[str, Callable[[Any], tuple[Any, str | None]]] = {
    "string": _string,
    "int32": _integer,
    "int64": _integer,
    "float": _number,
    "double": _number,
    "boolean": _boolean,
    "duration": _duration,
    "datetime": _datetime,
    "date": _date,
}


class ConfigModels:
    """The registered config kinds and validation settings, kept in a store if given.

    Args:
        store: where they survive a restart (None: in memory only).
        share: tells the other engines sharing the store of each change, with
            what changed and its id: ``config-kind`` (fqn, the kind) or
            ``config-validation`` (config id, the setting or None when
            forgotten); they take it with :meth:`apply`.
    """

    def __init__(
        self,
        store: ModelStore | None = None,
        *,
        share: Callable[[str, str, Any], None] | None = None,
    ) -> None:
        self._store = store
        self._share = share
        self._kinds: dict[str, dict[str, Any]] = {}
        self._validations: dict[str, dict[str, Any]] = {}
        if store is not None:
            kinds, validations = store.load_config_models()
            self._kinds = {kind["fqn"]: kind for kind in kinds}
            self._validations = {entry["id"]: entry for entry in validations}

    def kinds(self) -> list[dict[str, Any]]:
        """Return every registered kind, by fqn."""
        return [copy.deepcopy(self._kinds[fqn]) for fqn in sorted(self._kinds)]

    def update(self, kinds: object) -> list[dict[str, Any]]:
        """Add or replace kinds (by fqn); return the whole model.

        Raises:
            InvalidInputError: a kind is malformed, refers to a kind that does
                not exist, or changes a simple kind into a complex one (or back).
        """
        if not isinstance(kinds, list):
            raise InvalidInputError(
                [Problem("", f"must be a list of kinds, got {_describe(kinds)}")]
            )
        problems: list[Problem] = []
        for index, kind in enumerate(kinds):
            problems.extend(kind_problems(index, kind))
        if problems:
            raise InvalidInputError(problems)
        merged = dict(self._kinds)
        for index, kind in enumerate(kinds):
            existing = merged.get(kind["fqn"])
            if existing is not None and ("runtime_kind" in existing) != ("runtime_kind" in kind):
                problems.append(
                    Problem(
                        f"[{index}]", f"changes {kind['fqn']!r} between a simple and a complex kind"
                    )
                )
            merged[kind["fqn"]] = copy.deepcopy(dict(kind))
        for index, kind in enumerate(kinds):
            references = list(kind.get("bases", []) or [])
            for number, prop in enumerate(kind.get("properties", []) or []):
                for name in referenced_kinds(prop["kind"]):
                    if name not in merged and name not in PREDEFINED:
                        problems.append(
                            Problem(
                                f"[{index}].properties[{number}].kind", f"unknown kind {name!r}"
                            )
                        )
            for base in references:
                if base not in merged and base != kind["fqn"]:
                    problems.append(Problem(f"[{index}].bases", f"unknown kind {base!r}"))
        if problems:
            raise InvalidInputError(problems)
        changed = [merged[k["fqn"]] for k in kinds if self._kinds.get(k["fqn"]) != merged[k["fqn"]]]
        if changed and self._store is not None:
            self._store.save_config_kinds(changed)
        self._kinds = merged
        if self._share is not None:
            for kind in changed:
                self._share(CONFIG_KIND, kind["fqn"], kind)
        return self.kinds()

    def apply(self, what: str, ident: str, value: Any) -> None:
        """Take a change another engine sharing the store made (see ``share``): kept
        here without storing or sharing it again (that engine did).

        Raises:
            ValueError: ``what`` is neither ``config-kind`` nor ``config-validation``.
        """
        if what == CONFIG_KIND:
            self._kinds[ident] = copy.deepcopy(dict(value))
        elif what == CONFIG_VALIDATION:
            if value is None:
                self._validations.pop(ident, None)
            else:
                self._validations[ident] = dict(value)
        else:
            raise ValueError(f"unknown config model change {what!r}")

    def check(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``config`` with its model's sections coerced.

        Raises:
            InvalidInputError: every problem, with its path.
        """
        check = _Check(self._kinds)
        result: dict[str, Any] = {}
        for key, value in config.items():
            kind = self._kinds.get(key)
            if kind is not None and "runtime_kind" not in kind and kind.get("aggregate_root", True):
                result[key] = check.value(key, value, key)
            else:
                result[key] = copy.deepcopy(value)
        if check.problems:
            raise InvalidInputError(check.problems)
        return result

    def coerce(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``config`` coerced where that works; values that do not fit stay as they are."""
        try:
            return self.check(config)
        except InvalidInputError:
            return copy.deepcopy(dict(config))

    # ------------------------------------------------------------ validation settings

    def validation_ids(self) -> list[str]:
        """Return the config ids that have a validation setting."""
        return sorted(self._validations)

    def validation(self, config_id: str) -> dict[str, Any] | None:
        """Return a config's validation setting, or None."""
        entry = self._validations.get(config_id)
        return None if entry is None else dict(entry)

    def set_validation(self, config_id: str, body: object) -> dict[str, Any]:
        """Store a config's validation setting (``{"external_validation": bool}``).

        Raises:
            InvalidInputError: the body is not an object or has a bad field.
        """
        if not isinstance(body, Mapping):
            raise InvalidInputError([Problem("", f"must be an object, got {_describe(body)}")])
        problems = [
            Problem(key, "unknown field")
            for key in body
            if key not in ("id", "external_validation")
        ]
        external = body.get("external_validation", False)
        if not isinstance(external, bool):
            problems.append(
                Problem("external_validation", f"must be true or false, got {_describe(external)}")
            )
        if problems:
            raise InvalidInputError(problems)
        entry = {"id": config_id, "external_validation": external}
        if self._store is not None:
            self._store.save_config_validation(entry)
        self._validations[config_id] = entry
        if self._share is not None:
            self._share(CONFIG_VALIDATION, config_id, dict(entry))
        return dict(entry)

    def delete_validation(self, config_id: str) -> None:
        """Forget a config's validation setting (when the config is deleted)."""
        if self._validations.pop(config_id, None) is None:
            return
        if self._store is not None:
            self._store.delete_config_validation(config_id)
        if self._share is not None:
            self._share(CONFIG_VALIDATION, config_id, None)

    def validator_for(self, config_id: str) -> str | None:
        """Return the validation id that asks for external approval of ``config_id``, if any.

        ``a.b.c`` is validated by the most specific of ``a.b.c``, ``a.b`` and ``a``
        that has a setting; it asks for approval when that setting says so.
        """
        parts = config_id.split(".")
        for end in range(len(parts), 0, -1):
            entry = self._validations.get(".".join(parts[:end]))
            if entry is not None:
                return entry["id"] if entry.get("external_validation") else None
        return None


def resolve_env_vars(value: Any, environ: Mapping[str, str]) -> Any:
    """Replace ``$(NAME)`` in every string of ``value``; unknown names stay as they are."""
    if isinstance(value, Mapping):
        return {key: resolve_env_vars(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_env_vars(item, environ) for item in value]
    if isinstance(value, str):
        return ENV_VAR.sub(lambda match: environ.get(match.group(1)) or match.group(0), value)
    return value
