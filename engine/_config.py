"""The config service: JSON documents with revisions, announced on the bus.

Every write publishes ``config-updated`` (``id``, ``revision``) and every
delete ``config-deleted`` (``id``). A write or delete may name the revision
it expects (``if_match``); when the stored revision differs it fails with
:class:`ConfigConflict` and changes nothing, so concurrent editors never lose
an update.

The config ``phasebus.core`` is the engine's own: under ``workflows`` it
holds per-workflow schedules, e.g.
``{"workflows": {"collect_and_cleanup": {"schedule": "0 * * * *", "timezone": "UTC"}}}``.
A schedule replaces the workflow's declared cron triggers (``null`` turns
them off); the engine applies every change at once.
"""

from __future__ import annotations

import copy
import itertools
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs

from ._definitions import CronTrigger
from ._errors import ConfigConflict as ConfigConflict
from ._errors import InvalidInputError, Problem
from ._json import value_problems

CONFIG_UPDATED = "config-updated"
CONFIG_DELETED = "config-deleted"

#: The engine's own config.
CORE_CONFIG = "phasebus.core"

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")


@attrs.frozen
class Config:
    """A stored config: its id, its JSON document and its revision."""

    id: str
    data: Mapping[str, Any] = attrs.field(hash=False)
    revision: str


#: Stores a config change only if the store holds the revision it names (see
#: :class:`ConfigService`): id, config (None: deleted), revision, called once stored.
PersistChecked = Callable[[str, Config | None, str, Callable[[], None]], Awaitable[None]]


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386): objects merge, ``null`` removes a key."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def schedule_problems(data: Mapping[str, Any], workflow_ids: frozenset[str]) -> list[Problem]:
    """Check the document of ``phasebus.core``."""
    problems: list[Problem] = []
    workflows = data.get("workflows", {})
    if not isinstance(workflows, Mapping):
        return [Problem("workflows", f"must be an object, got {workflows!r}")]
    for workflow_id, entry in workflows.items():
        path = f"workflows.{workflow_id}"
        if workflow_id not in workflow_ids:
            problems.append(Problem(path, f"unknown workflow {workflow_id!r}"))
            continue
        if not isinstance(entry, Mapping):
            problems.append(Problem(path, f"must be an object, got {entry!r}"))
            continue
        for key in entry:
            if key not in ("schedule", "timezone"):
                problems.append(Problem(f"{path}.{key}", "unknown field"))
        schedule = entry.get("schedule")
        if schedule is None:
            continue
        try:
            CronTrigger(schedule, entry.get("timezone", "UTC"))
        except InvalidInputError as error:
            for problem in error.problems:
                key = "schedule" if problem.path == "cron" else problem.path
                problems.append(Problem(f"{path}.{key}", problem.message))
    return problems


class ConfigService:
    """Configs in memory, with revisions and change events.

    Args:
        emit: publishes an event (message type, data) on the bus.
        check: returns the problems of a document about to be stored under an
            id (empty when it is fine).
        changed: called with the id and the new document (None when deleted)
            after every change.
        persist: called with the id and the new config (None when deleted)
            before the change is announced; if it raises, nothing changes.
        persist_checked: for a store several engines share: awaited by
            :meth:`write` and :meth:`remove` with the id, the new config (None
            when deleted), the revision the change was checked against and a
            callback to call once the store keeps the change (in the order of
            the store's writes). It stores the change only if the store still
            holds that revision, checked in the same step as the write, and
            raises :class:`ConfigConflict` (with the stored revision) otherwise.
        stamp: returns what marks the revisions this engine mints as its own
            (its lease's fencing token with a shared store: two engines never
            hold the same one), so that no two engines mint the same revision.
    """

    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        *,
        check: Callable[[str, Mapping[str, Any]], list[Problem]] | None = None,
        changed: Callable[[str, Mapping[str, Any] | None], None] | None = None,
        persist: Callable[[str, Config | None], None] | None = None,
        persist_checked: PersistChecked | None = None,
        stamp: Callable[[], str] | None = None,
    ) -> None:
        self._configs: dict[str, Config] = {}
        #: Stored configs that cannot be read back (kept by an older version), with why.
        self.unreadable: dict[str, list[Problem]] = {}
        self._emit = emit
        self._check = check
        self._changed = changed
        self._persist = persist
        self._persist_checked = persist_checked
        self._stamp = stamp
        self._revisions = itertools.count(1)

    def restore(self, configs: Iterable[Config], last_revision: int) -> list[str]:
        """Load stored configs without announcing them; new revisions follow ``last_revision``.

        A stored document that JSON cannot carry (a lone surrogate, a number
        that is not finite: older versions took them) is not served: it is
        listed in :attr:`unreadable` until it is replaced or deleted. Returns
        the ids of those.
        """
        for config in configs:
            problems = value_problems(config.data, "data")
            if problems:
                self.unreadable[config.id] = problems
            else:
                self._configs[config.id] = config
        self._revisions = itertools.count(last_revision + 1)
        return sorted(self.unreadable)

    def apply(self, config_id: str, config: Config | None) -> None:
        """Take a change another engine sharing the store made (None: it deleted the
        config): kept here without storing or announcing it again (that engine did)."""
        if config is None:
            self._configs.pop(config_id, None)
        elif not value_problems(config.data, "data"):
            self._configs[config_id] = config
            number = config.revision[1:].split("-")[0]
            if number.isascii() and number.isdigit():  # new revisions come after it
                self._revisions = itertools.count(max(int(number) + 1, next(self._revisions)))
        self.unreadable.pop(config_id, None)
        if config is not None and self._changed is not None:
            self._changed(config_id, config.data)

    def ids(self) -> list[str]:
        """Return the ids of all configs, sorted (the unreadable ones too)."""
        return sorted([*self._configs, *self.unreadable])

    def get(self, config_id: str) -> Config | None:
        """Return a config, or None."""
        return self._configs.get(config_id)

    def put(
        self, config_id: str, data: Mapping[str, Any], *, if_match: str | None = None
    ) -> Config:
        """Create or replace a config.

        ``if_match`` is checked against the revision this engine holds; with a
        store several engines share, use :meth:`write` to have the store check
        it too.

        Raises:
            InvalidInputError: a bad id, a document that is not an object, or
                a document the engine rejects (``phasebus.core``).
            ConfigConflict: ``if_match`` differs from the stored revision.
        """
        config = self._prepare(config_id, data, if_match)
        if self._persist is not None:
            self._persist(config_id, config)
        self._take(config_id, config)
        return config

    async def write(
        self, config_id: str, data: Mapping[str, Any], *, if_match: str | None = None
    ) -> Config:
        """Create or replace a config, as :meth:`put`; ``if_match`` holds across engines.

        With a store several engines share and an ``if_match``, the store
        checks the revision in the same step as the write: of two engines
        writing with the same ``if_match`` at the same moment, one succeeds
        and the other raises :class:`ConfigConflict`, changing nothing. The
        config changes here once the store keeps it (even if the caller
        stopped waiting by then).

        Raises:
            InvalidInputError: as for :meth:`put`.
            ConfigConflict: the revision here or in the store is not ``if_match``.
        """
        if if_match is None or self._persist_checked is None:
            return self.put(config_id, data, if_match=if_match)
        config = self._prepare(config_id, data, if_match)
        await self._persist_checked(
            config_id, config, if_match, lambda: self._stored(config_id, config, if_match)
        )
        return config

    async def remove(self, config_id: str, *, if_match: str | None = None) -> bool:
        """Delete a config, as :meth:`delete`; ``if_match`` holds across engines (see
        :meth:`write`)."""
        if if_match is None or self._persist_checked is None:
            return self.delete(config_id, if_match=if_match)
        self._check_revision(config_id, if_match)
        await self._persist_checked(
            config_id, None, if_match, lambda: self._stored(config_id, None, if_match)
        )
        return True

    def _prepare(self, config_id: str, data: Mapping[str, Any], if_match: str | None) -> Config:
        """Check a new document and return it as a config with a new revision."""
        self.check_id(config_id)
        if not isinstance(data, Mapping):
            raise InvalidInputError([Problem("", f"a config must be a JSON object, got {data!r}")])
        self._check_revision(config_id, if_match)
        document = copy.deepcopy(dict(data))
        if problems := value_problems(document):
            raise InvalidInputError(problems)
        if self._check is not None and (problems := self._check(config_id, document)):
            raise InvalidInputError(problems)
        # a counter for order; the writer's stamp and a random part so that a
        # revision is never handed out twice, by two engines sharing a store
        # or after a restart that lost the counter
        stamp = f"{self._stamp()}-" if self._stamp is not None else ""
        return Config(
            config_id, document, f"r{next(self._revisions)}-{stamp}{secrets.token_hex(4)}"
        )

    def _take(self, config_id: str, config: Config) -> None:
        """Hold a stored config here and announce it."""
        self._configs[config_id] = config
        self.unreadable.pop(config_id, None)
        self._emit(CONFIG_UPDATED, {"id": config_id, "revision": config.revision})
        if self._changed is not None:
            self._changed(config_id, config.data)

    def _stored(self, config_id: str, config: Config | None, checked: str) -> None:
        """Take a change the store kept after checking it was at the revision ``checked``.

        A change made here meanwhile without the store's check (:meth:`put`)
        is written after this one: it stays.
        """
        current = self._configs.get(config_id)
        if current is not None and current.revision != checked:
            return
        if config is not None:
            self._take(config_id, config)
        elif current is not None:
            del self._configs[config_id]
            self._emit(CONFIG_DELETED, {"id": config_id})
            if self._changed is not None:
                self._changed(config_id, None)

    def patch(
        self, config_id: str, patch: Mapping[str, Any], *, if_match: str | None = None
    ) -> Config:
        """Merge ``patch`` into a config (RFC 7386), creating it if needed."""
        if not isinstance(patch, Mapping):
            raise InvalidInputError([Problem("", f"a patch must be a JSON object, got {patch!r}")])
        current = self._configs.get(config_id)
        merged = merge_patch(current.data if current else {}, patch)
        return self.put(config_id, merged, if_match=if_match)

    def delete(self, config_id: str, *, if_match: str | None = None) -> bool:
        """Delete a config; return whether it existed."""
        self._check_revision(config_id, if_match)
        if config_id in self.unreadable:
            if self._persist is not None:
                self._persist(config_id, None)
            del self.unreadable[config_id]
            return True
        if config_id not in self._configs:
            return False
        if self._persist is not None:
            self._persist(config_id, None)
        del self._configs[config_id]
        self._emit(CONFIG_DELETED, {"id": config_id})
        if self._changed is not None:
            self._changed(config_id, None)
        return True

    def check_id(self, config_id: object) -> None:
        """Check that ``config_id`` is a valid config id.

        Raises:
            InvalidInputError: it is not.
        """
        if not isinstance(config_id, str) or not _ID.match(config_id):
            raise InvalidInputError(
                [
                    Problem(
                        "id",
                        f"must be 1-200 letters, digits, '_', '.', ':' or '-', got {config_id!r}",
                    )
                ]
            )

    def _check_revision(self, config_id: str, if_match: str | None) -> None:
        if if_match is None:
            return
        current = self._configs.get(config_id)
        actual = current.revision if current else None
        if actual != if_match:
            raise ConfigConflict(config_id, if_match, actual)
