"""The one cattrs converter: declarations, wire messages and tasks' JSON in and out.

Structuring is strict: ``"false"`` is not a bool, ``1.9`` is not an int, a
string is not a list, and unknown fields are errors (except inside a message's
``data``, where unknown fields are kept). Every failure becomes one
:class:`~engine.InvalidInputError` listing each problem with its path.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.errors import (
    AttributeValidationNote,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from ._definitions import (
    ACTION_KINDS,
    CatchUp,
    CronTrigger,
    Declarations,
    EventTrigger,
    Job,
    OnError,
    Step,
    StepAction,
    Surpass,
    Trigger,
    Workflow,
    action_kind,
    duplicate_problems,
    set_readers,
)
from ._errors import DeclarationError, InvalidInputError, MessageError, Problem, join_path
from ._json import JSONInputError, check_value, parse_json
from ._machine import Outcome, StepEnd
from ._messages import (
    MESSAGE_CLASSES,
    Event,
    Kind,
    Message,
    Progress,
    ProgressLeaf,
    ProgressTree,
)
from ._shapes import (
    SHAPES,
    CurrentStepRecord,
    FinishedRecord,
    StepRecord,
    StoredStep,
    TaskRecord,
)

T = TypeVar("T")

_converter = cattrs.Converter(
    forbid_extra_keys=True,
    detailed_validation=True,
    # plain JSON data out: lists, not tuples
    unstruct_collection_overrides={tuple: list},
)


# ---------------------------------------------------------------- strict scalars


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {_describe(value)}")
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"must be an integer, got {_describe(value)}")
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be a number, got {_describe(value)}")
    return value  # an int stays an int, so errors quote the number as written


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {_describe(value)}")
    return value


def _structure_any_mapping(value: object, _: type) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a table of values, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, got {_describe(key)}")
    return dict(value)


_converter.register_structure_hook(str, _structure_str)
_converter.register_structure_hook(int, _structure_int)
_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook(bool, _structure_bool)
_converter.register_structure_hook_func(lambda t: t == Mapping[str, Any], _structure_any_mapping)


def _enum_hook(enum_type: type[enum.Enum]) -> Callable[[object, type], Any]:
    choices = ", ".join(repr(member.value) for member in enum_type)

    def structure(value: object, _: type) -> Any:
        try:
            return enum_type(value)
        except ValueError:
            raise ValueError(f"must be one of {choices}, got {_describe(value)}") from None

    return structure


for _enum_type in (OnError, Surpass, CatchUp):
    _converter.register_unstructure_hook(_enum_type, lambda member: member.value)
_converter.register_structure_hook(OnError, _enum_hook(OnError))
_converter.register_structure_hook(CatchUp, _enum_hook(CatchUp))
_converter.register_structure_hook(Surpass, _enum_hook(Surpass))


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook_factory(type_: Any) -> Callable[[object, type], tuple[Any, ...]]:
    element_type = get_args(type_)[0]
    element_hook = _converter.get_structure_hook(element_type)

    def structure(value: object, _: type) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"must be a list, got {_describe(value)}")
        items = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(element_hook(item, element_type))
            except Exception as error:  # collected and reported with their paths
                error.add_note(IterableValidationNote(f"@ index {index}", index, element_type))
                errors.append(error)
        if errors:
            raise IterableValidationError(f"while structuring {type_}", errors, type_)
        return tuple(items)

    return structure


_converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook_factory)


# ---------------------------------------------------------------- problems from exceptions


def problems_from(error: BaseException, path: str = "") -> list[Problem]:
    """Turn a structuring failure (possibly a cattrs exception group) into problems."""
    if isinstance(error, InvalidInputError):
        return [Problem(join_path(path, p.path), p.message) for p in error.problems]
    if isinstance(error, BaseExceptionGroup):
        problems = []
        for sub in error.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = join_path(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = f"{path}[{note.index}]"
            problems.extend(problems_from(sub, sub_path))
        return problems
    if isinstance(error, ForbiddenExtraKeysError):
        return [
            Problem(join_path(path, key), "unknown field") for key in sorted(error.extra_fields)
        ]
    if isinstance(error, KeyError):
        return [Problem(path, "required field missing")]
    return [Problem(path, str(error))]


#: What structuring can raise: cattrs' groups, our checks, and the bare errors of
#: hooks (an unknown tag is a bare KeyError).
_STRUCTURING_ERRORS = (
    cattrs.BaseValidationError,
    InvalidInputError,
    KeyError,
    TypeError,
    ValueError,
)


def _structure_checked(data: object, type_: type[T], error_type: type[InvalidInputError]) -> T:
    try:
        return _converter.structure(data, type_)
    except _STRUCTURING_ERRORS as error:
        raise error_type(problems_from(error)) from None


# ---------------------------------------------------------------- declarations


def _tagged(value: object, tag: str, choices: Mapping[str, type[T]], what: str) -> T:
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a table, got {_describe(value)}")
    if tag not in value:
        raise DeclarationError([Problem(tag, "required field missing")])
    name = value[tag]
    cls = choices.get(name) if isinstance(name, str) else None
    if cls is None:
        expected = ", ".join(repr(c) for c in choices)
        raise DeclarationError(
            [Problem(tag, f"unknown {what} {_describe(name)}, expected one of {expected}")]
        )
    rest = {key: item for key, item in value.items() if key != tag}
    return _converter.structure(rest, cls)


def _structure_action(value: object, _: type) -> StepAction:
    return _tagged(value, "kind", ACTION_KINDS, "action kind")


def _structure_trigger(value: object, _: type) -> Trigger:
    if isinstance(value, Mapping):
        if "cron" in value and "event" not in value:
            return _converter.structure(value, CronTrigger)
        if "event" in value and "cron" not in value:
            return _converter.structure(value, EventTrigger)
    raise DeclarationError([Problem("", "a trigger needs exactly one of 'cron' and 'event'")])


def _unstructure_action(action: StepAction) -> dict[str, Any]:
    fields = _converter.unstructure(action, unstructure_as=type(action))
    return {"kind": action_kind(action), **fields}


_converter.register_structure_hook(StepAction, _structure_action)
_converter.register_structure_hook(Trigger, _structure_trigger)
_converter.register_unstructure_hook(StepAction, _unstructure_action)
_converter.register_unstructure_hook(
    Trigger, lambda trigger: _converter.unstructure(trigger, unstructure_as=type(trigger))
)


# When a table fails to structure, its class is never built, so its own checks
# (a negative timeout beside an unknown field, say) would go unreported. The
# hook below then builds the object without __init__, from the fields that
# did structure, and runs the checks; problems about fields that failed (or
# about the whole table) are left to the structuring errors.

_DECLARATION_CLASSES = frozenset(
    {*ACTION_KINDS.values(), Step, CronTrigger, EventTrigger, Workflow, Job, Declarations}
)


class _Failed:
    def __repr__(self) -> str:
        return "<failed>"


_FAILED = _Failed()


def _failed_fields(error: BaseException) -> set[str]:
    names = set()
    for sub in getattr(error, "exceptions", ()):
        for note in getattr(sub, "__notes__", ()):
            if isinstance(note, AttributeValidationNote):
                names.add(note.name)
    return names


def _hidden_problems(cls: type, value: Mapping[str, Any], error: BaseException) -> list[Problem]:
    failed = _failed_fields(error)
    instance: Any = object.__new__(cls)
    for field in attrs.fields(cls):
        if field.name in failed:
            item: Any = _FAILED
        elif field.name in value:
            try:
                item = _converter.structure(value[field.name], field.type)
            except Exception:  # reported by the structuring errors
                item = _FAILED
                failed.add(field.name)
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            factory = field.default.factory
            item = factory(instance) if field.default.takes_self else factory()
            if item is _FAILED:  # derived from a field that failed
                failed.add(field.name)
        elif field.default is not attrs.NOTHING:
            item = field.default
        else:
            item = _FAILED
            failed.add(field.name)
        if field.converter is not None and item is not _FAILED:
            item = field.converter(item)
        object.__setattr__(instance, field.name, item)
    try:
        instance.__attrs_post_init__()
    except DeclarationError as checks:
        return [
            p
            for p in checks.problems
            if p.path and p.path.split(".")[0].split("[")[0] not in failed
        ]
    except Exception:  # a check tripped over a failed field: nothing more to say
        return []
    return []


def _declaration_hook_factory(cls: type) -> Callable[[object, type], Any]:
    base: Any = cattrs.gen.make_dict_structure_fn(cls, _converter)

    def structure(value: object, _: type) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"must be a table, got {_describe(value)}")
        try:
            return base(value, cls)
        except cattrs.ClassValidationError as error:
            problems = problems_from(error)
            known = set(problems)
            problems.extend(p for p in _hidden_problems(cls, value, error) if p not in known)
            raise DeclarationError(problems) from None

    return structure


_converter.register_structure_hook_factory(
    lambda type_: type_ in _DECLARATION_CLASSES, _declaration_hook_factory
)


def _raw_names(value: object, field: str) -> list[object]:
    if not isinstance(value, list):
        return []
    return [item.get(field) if isinstance(item, Mapping) else None for item in value]


def _cross_checks(data: Mapping[str, Any], type_: type) -> list[Problem]:
    """Repeat the checks across elements on raw data, for when elements fail on their own."""
    if type_ is Workflow:
        return duplicate_problems(_raw_names(data.get("steps"), "name"), "steps", "name")
    if type_ is Declarations:
        ids = [
            (f"{key}[{index}].id", item.get("id"))
            for key in ("workflows", "jobs")
            if isinstance(data.get(key), list)
            for index, item in enumerate(data[key])
            if isinstance(item, Mapping)
        ]
        seen: set[object] = set()
        problems: list[Problem] = []
        for path, ident in ids:
            if isinstance(ident, str) and ident in seen:
                problems.append(Problem(path, f"duplicate id {ident!r}"))
            seen.add(ident)
        for key in ("workflows", "jobs"):
            for index, workflow in enumerate(data.get(key) or ()):
                if isinstance(workflow, Mapping):
                    problems.extend(
                        p.__class__(join_path(f"{key}[{index}]", p.path), p.message)
                        for p in _cross_checks(workflow, Workflow)
                    )
        return problems
    return []


def structure_declaration(data: object, type_: type[T], *, source: str | None = None) -> T:
    """Structure a workflow, job or declarations from plain data.

    Raises:
        DeclarationError: listing every problem with its path.
    """
    if not isinstance(data, Mapping):
        raise DeclarationError(
            [Problem("", f"must be a table, got {_describe(data)}")], source=source
        )
    try:
        return _converter.structure(data, type_)
    except _STRUCTURING_ERRORS as error:
        problems = problems_from(error)
        seen = set(problems)
        problems.extend(p for p in _cross_checks(data, type_) if p not in seen)
        raise DeclarationError(problems, source=source) from None


def unstructure_declaration(value: Any) -> Any:
    """Return the plain data (as in a JSON data file) of a workflow, job or declarations."""
    return _converter.unstructure(value)


def load_toml(text: str, *, source: str | None = None) -> dict[str, Any]:
    """Parse TOML text, turning a syntax error into a :class:`DeclarationError`.

    Values that JSON cannot carry (TOML's ``inf`` and ``nan``) are refused, as
    everywhere data enters.
    """
    try:
        data = tomllib.loads(text)
        check_value(data)
    except tomllib.TOMLDecodeError as error:
        raise DeclarationError([Problem("", f"invalid TOML: {error}")], source=source) from None
    except JSONInputError as error:
        raise DeclarationError(error.problems, source=source) from None
    return data


def load_json(text: str, *, source: str | None = None) -> Any:
    """Parse JSON text (by the rule of :mod:`engine._json`) into plain data.

    Raises:
        DeclarationError: the text is not JSON, or holds what JSON cannot carry.
    """
    try:
        return parse_json(text)
    except JSONInputError as error:
        raise DeclarationError(error.problems, source=source) from None


# ---------------------------------------------------------------- messages


_PROGRESS_KINDS: dict[str, type[Progress]] = {"progress": ProgressLeaf, "tree": ProgressTree}


def _structure_progress(value: object, _: type) -> Progress:
    return _tagged(value, "kind", _PROGRESS_KINDS, "progress kind")


_converter.register_structure_hook(Progress, _structure_progress)

_KINDS = ", ".join(repr(kind.value) for kind in Kind)
_ROUTING_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(a.name for a in attrs.fields(cls)) - {"message_type", "extra"}
    for cls in MESSAGE_CLASSES.values()
    if cls is not Event
}


def structure_message(value: object) -> Message:
    """Read a message from its wire form (a parsed JSON object).

    Raises:
        MessageError: naming each field that is missing, unknown or of the wrong type.
    """
    if not isinstance(value, Mapping):
        raise MessageError(
            [Problem("", f"a message must be a JSON object, got {_describe(value)}")]
        )
    problems = [
        Problem(key, "unknown field")
        for key in value
        if key not in ("kind", "message_type", "data")
    ]
    kind = value.get("kind")
    if kind is None:
        problems.append(Problem("kind", "required field missing"))
    elif kind not in Kind.__members__.values():
        problems.append(
            Problem("kind", f"unknown kind {_describe(kind)}, expected one of {_KINDS}")
        )
    message_type = value.get("message_type")
    if message_type is None:
        problems.append(Problem("message_type", "required field missing"))
    elif not isinstance(message_type, str) or not message_type:
        problems.append(
            Problem("message_type", f"must be a non-empty string, got {_describe(message_type)}")
        )
    data = value.get("data", {})
    if not isinstance(data, Mapping):
        problems.append(Problem("data", f"must be a JSON object, got {_describe(data)}"))
    if problems:
        raise MessageError(problems)
    assert isinstance(kind, str)
    assert isinstance(message_type, str)
    cls = MESSAGE_CLASSES[Kind(kind)]
    if cls is Event:
        return Event(message_type, data)
    routing = _ROUTING_FIELDS[cls]
    fields: dict[str, Any] = {"message_type": message_type, "extra": {}}
    for key, item in data.items():
        if key in routing:
            fields[key] = item
        else:
            fields["extra"][key] = item
    if cls is MESSAGE_CLASSES[Kind.ACTION_ERROR] and fields.get("error") is None:
        fields["error"] = "n/a"
    try:
        return _converter.structure(fields, cls)
    except _STRUCTURING_ERRORS as error:
        raise MessageError(
            [Problem(join_path("data", p.path), p.message) for p in problems_from(error)]
        ) from None


def structure_strict(data: object, type_: type[T]) -> T:
    """Structure any attrs value strictly, raising :class:`InvalidInputError` with paths."""
    if attrs.has(type_) and not isinstance(data, Mapping):
        raise InvalidInputError([Problem("", f"must be a JSON object, got {_describe(data)}")])
    return _structure_checked(data, type_, InvalidInputError)


def message_from_json(data: object) -> Message:
    """Read a message from its wire form (a parsed JSON object).

    Raises:
        MessageError: naming each field that is missing, unknown or of the wrong type.
    """
    return structure_message(data)


set_readers(
    lambda data, type_, source: structure_declaration(data, type_, source=source),
    lambda text, source: load_toml(text, source=source),
    lambda text, source: load_json(text, source=source),
)


# ---------------------------------------------------------------- tasks' JSON


def _unstructure_progress(progress: Progress) -> dict[str, Any]:
    return progress.to_json()


def _structure_datetime(value: object, _: type) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"must be an ISO 8601 time, got {_describe(value)}")
    return datetime.fromisoformat(value)


_converter.register_unstructure_hook(Progress, _unstructure_progress)
# str enums: the strict str hook would otherwise take them (it matches subclasses of str)
for _result_enum in (Outcome, StepEnd):
    _converter.register_unstructure_hook(_result_enum, lambda member: member.value)
    _converter.register_structure_hook(_result_enum, _enum_hook(_result_enum))
_converter.register_unstructure_hook(datetime, datetime.isoformat)
_converter.register_structure_hook(datetime, _structure_datetime)

#: Field types written as they are: orjson and json write any list, tuple or
#: dict of strings, and a number or None, so converting them first (a record is
#: written at every step) would buy nothing.
_PLAIN = (Sequence[str], Mapping[str, str], int | None, float | None, str | None)


def _shape_unstructure_fn(cls: type, **overrides: Any) -> Callable[[Any], dict[str, Any]]:
    same = {
        field.name: cattrs.gen.override(unstruct_hook=cattrs.fns.identity)
        for field in attrs.fields(attrs.resolve_types(cls))
        if field.type in _PLAIN
    }
    return cattrs.gen.make_dict_unstructure_fn(cls, _converter, **{**same, **overrides})


for _shape in SHAPES:
    _converter.register_unstructure_hook(_shape, _shape_unstructure_fn(_shape))

_unstructure_step: Callable[[Any], dict[str, Any]] = _converter.get_unstructure_hook(
    CurrentStepRecord
)
_unstructure_ended_step = _converter.get_unstructure_hook(StepRecord)
#: What a step in a record's list may already be: encoded, or converted.
_DONE = (orjson.Fragment, dict)


def unstructure_step(step: CurrentStepRecord) -> dict[str, Any]:
    """Return the plain data of the step a task is in (for :func:`engine._records.task_record`)."""
    return _unstructure_step(step)


def _unstructure_steps(steps: Sequence[StoredStep]) -> Sequence[Any]:
    # Ended steps may come encoded already (they never change again), and then
    # first, and the step a task is in converted already (see unstructure_step):
    # then there is nothing to do. Otherwise only the steps after the encoded
    # ones are converted.
    if not steps or type(steps[-1]) in _DONE:
        return steps
    out: list[Any] = list(steps)
    for index in range(len(out) - 1, -1, -1):
        step = out[index]
        if type(step) is orjson.Fragment:
            break
        out[index] = (
            _unstructure_step(step)
            if type(step) is CurrentStepRecord
            else _unstructure_ended_step(step)
        )
    return out


for _shape in SHAPES:
    if _shape not in (TaskRecord, FinishedRecord):
        _converter.register_structure_hook(
            _shape,
            cattrs.gen.make_dict_structure_fn(_shape, _converter, _cattrs_forbid_extra_keys=False),
        )
_structure_step_records = _converter.get_structure_hook(tuple[CurrentStepRecord, ...])


def _structure_steps(value: object, type_: type) -> tuple[CurrentStepRecord, ...]:
    if isinstance(value, list | tuple):  # results' records of older versions have no index
        value = [
            {"index": None, **step} if isinstance(step, Mapping) and "index" not in step else step
            for step in value
        ]
    return _structure_step_records(value, type_)  # type: ignore[no-any-return]


for _record_type in (TaskRecord, FinishedRecord):
    _converter.register_unstructure_hook(
        _record_type,
        _shape_unstructure_fn(
            _record_type, steps=cattrs.gen.override(unstruct_hook=_unstructure_steps)
        ),
    )
    _converter.register_structure_hook(
        _record_type,
        cattrs.gen.make_dict_structure_fn(
            _record_type,
            _converter,
            _cattrs_forbid_extra_keys=False,
            steps=cattrs.gen.override(struct_hook=_structure_steps),
        ),
    )


def unstructure_shape(value: Any) -> Any:
    """Return the plain JSON data of a task's store record or view (:mod:`engine._shapes`)."""
    return _converter.unstructure(value)


_SHAPE_HOOKS = {shape: _converter.get_unstructure_hook(shape) for shape in SHAPES}


def encode_shape(value: Any) -> bytes:
    """Return a task's store record or view as compact JSON."""
    return orjson.dumps(_SHAPE_HOOKS[type(value)](value))


def structure_shape(data: object, type_: type[T]) -> T:
    """Read a task's store record or view; keys it does not know are ignored.

    Raises:
        InvalidInputError: naming each field that is missing or of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise InvalidInputError([Problem("", f"must be a JSON object, got {_describe(data)}")])
    return _structure_checked(data, type_, InvalidInputError)
