"""Durable state: the Store protocol and its embedded SQLite implementation.

The engine writes through a store everything it must not forget: configs,
subscribers, running tasks (state, the current step's waits, answers and
deadline, the steps done so far), schedule marks and the history of finished
tasks. A task's new state is written, and committed, before the side effects
of that state (an action, an event) are published.

The SQLite store uses WAL with ``synchronous=NORMAL``: every commit survives
the process being killed at any point (it may not survive the machine losing
power). Its calls run on the trio thread; each is one short transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, Protocol

import attrs
import trio

from ._config import Config
from ._errors import LeaseLost as LeaseLost
from ._errors import StoreError as StoreError

logger = logging.getLogger(__name__)

#: Marks the file as a phasebus store (SQLite's application_id).
APPLICATION_ID = 0x50484253  # "PHBS"
#: The schema this code writes; older files are migrated forward on open.
SCHEMA_VERSION = 5

#: How long finished tasks are kept, unless told otherwise.
DEFAULT_RETENTION = timedelta(days=60)


@attrs.frozen
class SaveTask:
    """A running task's new state, for a store's ``commit``.

    ``record`` is :func:`engine._records.task_record`'s JSON.
    """

    task_id: str
    workflow: str
    record: bytes


@attrs.frozen
class FinishTask:
    """A finished task moving from the running tasks to the history, for a store's ``commit``.

    ``record`` is :func:`engine._records.finished_record`'s JSON; the times are
    seconds since the epoch; ``has_errors`` tells whether its steps met errors
    or were released.
    """

    task_id: str
    workflow: str
    outcome: str
    started_at: float
    ended_at: float
    record: bytes
    has_errors: bool = False


#: One write of :meth:`AsyncStore.commit`.
TaskWrite = SaveTask | FinishTask


@attrs.frozen
class StoredState:
    """What a store holds when the engine starts."""

    configs: tuple[Config, ...] = ()
    subscribers: Mapping[str, list[dict[str, Any]]] = attrs.field(factory=dict, hash=False)
    tasks: tuple[dict[str, Any], ...] = ()
    schedule_marks: Mapping[tuple[str, str, str], datetime] = attrs.field(factory=dict, hash=False)
    revision_counter: int = 0
    #: Run-time definitions and changes to built-in ones, by id (see engine._registry).
    definitions: Mapping[str, dict[str, Any]] = attrs.field(factory=dict, hash=False)


class Store(Protocol):
    """Where the engine keeps what must survive a restart."""

    #: How long finished tasks are kept.
    retention: timedelta
    #: Whether the engine should gather task writes into group commits (worth it
    #: where a commit costs much, as a network round trip does); otherwise each
    #: write is committed at once.
    group_commits: bool

    def load(self) -> StoredState:
        """Return everything stored."""

    def save_config(self, config: Config) -> None:
        """Store a config (replacing one with the same id)."""

    def delete_config(self, config_id: str) -> None:
        """Forget a config."""

    def save_subscriber(self, subscriber_id: str, subscriptions: list[dict[str, Any]]) -> None:
        """Store all of a subscriber's subscriptions (an empty list keeps the subscriber)."""

    def save_subscription(self, subscriber_id: str, subscription: dict[str, Any]) -> None:
        """Store one subscription (replacing one of the same message type), creating the
        subscriber if needed; the others stay as they are."""

    def delete_subscription(self, subscriber_id: str, message_type: str) -> None:
        """Forget one subscription; the subscriber stays."""

    def delete_subscriber(self, subscriber_id: str) -> None:
        """Forget a subscriber and its subscriptions."""

    def commit(self, writes: Sequence[TaskWrite]) -> None:
        """Apply every task's write in one transaction: all of them, or none (raising)."""

    def save_task(self, task_id: str, workflow: str, record: bytes) -> None:
        """Store a running task's state, as JSON (replacing its previous state)."""

    def finish_task(
        self,
        task_id: str,
        workflow: str,
        outcome: str,
        started_at: float,
        ended_at: float,
        record: bytes,
        *,
        has_errors: bool = False,
    ) -> None:
        """Move a task from the running tasks to the history, in one transaction.

        ``record`` is the result as JSON; the times are seconds since the epoch;
        ``has_errors`` tells whether its steps met errors or were released.
        """

    def save_schedule_mark(self, key: tuple[str, str, str], moment: datetime) -> None:
        """Store the last time a schedule handled (workflow, cron, time zone)."""

    def history(
        self,
        *,
        workflow: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return finished tasks, newest first."""

    def finished_task(self, task_id: str) -> dict[str, Any] | None:
        """Return one finished task, or None."""

    def prune(self, before: datetime) -> int:
        """Delete finished tasks that ended before ``before`` (and their logs); return how many."""

    def save_definition(self, definition_id: str, record: bytes) -> None:
        """Store a run-time definition (or a change to a built-in one), as JSON."""

    def delete_definition(self, definition_id: str) -> None:
        """Forget a run-time definition."""

    def add_log_entry(self, task_id: str, entry: bytes, *, keep: int) -> None:
        """Append an entry (JSON) to a task's log, keeping only its latest ``keep`` entries."""

    def task_log(self, task_id: str) -> list[dict[str, Any]]:
        """Return a task's log entries, oldest first."""

    def task_ids(self, prefix: str, *, limit: int) -> list[str]:
        """Return up to ``limit`` ids of running or finished tasks that start with ``prefix``."""

    def load_config_models(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return the stored config kinds and config validation settings."""

    def save_config_kinds(self, kinds: Iterable[Mapping[str, Any]]) -> None:
        """Store config kinds (replacing those with the same fqn)."""

    def save_config_validation(self, validation: Mapping[str, Any]) -> None:
        """Store a config's validation setting (replacing the one with the same id)."""

    def delete_config_validation(self, config_id: str) -> None:
        """Forget a config's validation setting."""

    def close(self) -> None:
        """Release the store."""


# ---------------------------------------------------------------- SQLite

_SCHEMA_V1 = """
CREATE TABLE configs (id TEXT PRIMARY KEY, revision TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE subscribers (id TEXT PRIMARY KEY, subscriptions TEXT NOT NULL);
CREATE TABLE running_tasks (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE history (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, outcome TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL NOT NULL, data TEXT NOT NULL
);
CREATE INDEX history_ended ON history (ended_at);
"""

# Version 2 remembers when each schedule last fired, so that times missed
# while the engine was down are caught up by the schedule's policy.
_MIGRATIONS: dict[int, str] = {
    2: """
    CREATE TABLE schedule_marks (
        workflow TEXT NOT NULL, cron TEXT NOT NULL, timezone TEXT NOT NULL, moment REAL NOT NULL,
        PRIMARY KEY (workflow, cron, timezone)
    );
    CREATE INDEX history_workflow ON history (workflow, ended_at);
    """,
    # Version 3 marks finished tasks whose steps met errors or were released
    # (phasebus history --has-errors), and keeps one row per subscription, so
    # that changing one costs the same however many a subscriber has.
    3: """
    ALTER TABLE history ADD COLUMN has_errors INTEGER NOT NULL DEFAULT 0;
    UPDATE history SET has_errors = json_array_length(data, '$.errors') > 0;
    CREATE INDEX history_errors ON history (has_errors, ended_at);
    CREATE TABLE subscriptions (
        subscriber TEXT NOT NULL, message_type TEXT NOT NULL,
        wait_for_completion INTEGER NOT NULL, timeout REAL NOT NULL,
        PRIMARY KEY (subscriber, message_type)
    );
    INSERT INTO subscriptions (subscriber, message_type, wait_for_completion, timeout)
        SELECT s.id, json_extract(e.value, '$.message_type'),
               json_extract(e.value, '$.wait_for_completion'), json_extract(e.value, '$.timeout')
        FROM subscribers AS s, json_each(s.subscriptions) AS e;
    ALTER TABLE subscribers DROP COLUMN subscriptions;
    """,
    # Version 4 keeps the config models components register (Resoto's kinds,
    # one row per kind) and the validation setting of each config id.
    4: """
    CREATE TABLE config_kinds (fqn TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE config_validations (id TEXT PRIMARY KEY, data TEXT NOT NULL);
    """,
    # Version 5 keeps the workflows and jobs defined while the engine runs (and
    # changes to built-in ones), and every task's log.
    5: """
    CREATE TABLE definitions (id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE task_log (
        task_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (task_id, seq)
    );
    """,
}


def _describe_problem(path: str, error: Exception) -> StoreError:
    return StoreError(f"cannot use {path} as a phasebus store: {error}")


class SQLiteStore:
    """The embedded store: one SQLite file (or ``:memory:``).

    Opening checks that the file is a phasebus store (or empty), migrates an
    older schema forward, and refuses anything else without touching it.

    Raises:
        StoreError: the file is unreadable, truncated, not SQLite, another
            program's database, or from a newer phasebus.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        retention: timedelta = DEFAULT_RETENTION,
        group_commits: bool = False,
    ) -> None:
        self.path = str(path)
        self.retention = retention
        #: Off by default: a commit in WAL mode costs a few microseconds, less
        #: than the scheduler pass that gathering writes into a group takes.
        self.group_commits = group_commits
        try:
            if self.path != ":memory:":
                self._check_file(Path(self.path))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._prepare()
        except sqlite3.Error as error:
            raise _describe_problem(self.path, error) from None

    @staticmethod
    def _check_file(path: Path) -> None:
        if path.is_dir():
            raise StoreError(f"cannot use {path} as a phasebus store: it is a directory")
        if path.exists():
            try:
                with path.open("rb") as file:
                    header = file.read(16)
            except OSError as error:
                raise StoreError(
                    f"cannot use {path} as a phasebus store: {error.strerror}"
                ) from None
            if header and header != b"SQLite format 3\x00":
                raise StoreError(
                    f"cannot use {path} as a phasebus store: it is not an SQLite database"
                )
        elif not path.parent.exists():
            raise StoreError(f"cannot use {path} as a phasebus store: {path.parent} does not exist")

    def _prepare(self) -> None:
        db = self._db
        # One engine per store: the first access takes a lock held until close,
        # which also spares every commit the shared-memory bookkeeping.
        db.execute("PRAGMA busy_timeout = 1000")
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            db.execute("BEGIN EXCLUSIVE")
            db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if "locked" in str(error):
                raise StoreError(
                    f"cannot use {self.path} as a phasebus store: another process is using it"
                ) from None
            raise
        (application_id,) = db.execute("PRAGMA application_id").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = [
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        if application_id != APPLICATION_ID:
            if tables or application_id:
                raise StoreError(
                    f"cannot use {self.path} as a phasebus store: it is another program's database"
                    f" (tables: {', '.join(sorted(tables)) or 'none'})"
                )
            version = 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot use {self.path} as a phasebus store: its schema version {version} is newer"
                f" than this phasebus supports ({SCHEMA_VERSION})"
            )
        # integrity of what is there (a truncated file fails here)
        (check,) = db.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise StoreError(f"cannot use {self.path} as a phasebus store: damaged ({check})")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        # a checkpoint (the one write that waits for the disk) every 40 MB of log,
        # not every 4 MB: the log is read back only after a crash
        db.execute("PRAGMA wal_autocheckpoint = 10000")
        if version < SCHEMA_VERSION:
            with self._transaction():
                if version == 0:
                    self._run_script(_SCHEMA_V1)
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    version = 1
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    self._run_script(_MIGRATIONS[target])
                    logger.info("migrated store %s to schema version %d", self.path, target)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _run_script(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # ------------------------------------------------------------ reading

    def load(self) -> StoredState:
        db = self._db
        configs = tuple(
            Config(row[0], json.loads(row[2]), row[1])
            for row in db.execute("SELECT id, revision, data FROM configs ORDER BY id")
        )
        subscribers: dict[str, list[dict[str, Any]]] = {
            row[0]: [] for row in db.execute("SELECT id FROM subscribers ORDER BY rowid")
        }
        for row in db.execute(
            "SELECT subscriber, message_type, wait_for_completion, timeout FROM subscriptions"
            " ORDER BY rowid"
        ):
            subscribers.setdefault(row[0], []).append(
                {
                    "message_type": row[1],
                    "wait_for_completion": bool(row[2]),
                    # whole seconds read back as they were given (60, not 60.0)
                    "timeout": int(row[3]) if float(row[3]).is_integer() else row[3],
                }
            )
        tasks = tuple(json.loads(row[0]) for row in db.execute("SELECT data FROM running_tasks"))
        marks = {
            (row[0], row[1], row[2]): datetime.fromtimestamp(row[3], UTC)
            for row in db.execute("SELECT workflow, cron, timezone, moment FROM schedule_marks")
        }
        counter = max(
            (
                int(number)
                for c in configs
                if (number := c.revision[1:].split("-")[0]).isascii() and number.isdigit()
            ),
            default=0,
        )
        definitions = {
            row[0]: json.loads(row[1]) for row in db.execute("SELECT id, data FROM definitions")
        }
        return StoredState(configs, subscribers, tasks, marks, counter, definitions)

    def history(
        self,
        *,
        workflow: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = []
        values: list[object] = []
        if workflow is not None:
            clauses.append("workflow = ?")
            values.append(workflow)
        if outcome is not None:
            clauses.append("outcome = ?")
            values.append(outcome)
        if since is not None:
            clauses.append("ended_at >= ?")
            values.append(since.timestamp())
        if has_errors is not None:
            clauses.append("has_errors = ?")
            values.append(int(has_errors))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT data FROM history {where} ORDER BY ended_at DESC, rowid DESC LIMIT ?",
            (*values, limit),
        )
        return [json.loads(row[0]) for row in rows]

    def finished_task(self, task_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT data FROM history WHERE id = ?", (task_id,)).fetchone()
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------ writing

    def save_config(self, config: Config) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO configs (id, revision, data) VALUES (?, ?, ?)",
                (config.id, config.revision, json.dumps(config.data)),
            )

    def delete_config(self, config_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM configs WHERE id = ?", (config_id,))

    def save_subscriber(self, subscriber_id: str, subscriptions: list[dict[str, Any]]) -> None:
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO subscribers (id) VALUES (?)", (subscriber_id,))
            self._db.execute("DELETE FROM subscriptions WHERE subscriber = ?", (subscriber_id,))
            self._db.executemany(
                _SAVE_SUBSCRIPTION, [_subscription_row(subscriber_id, s) for s in subscriptions]
            )

    def save_subscription(self, subscriber_id: str, subscription: dict[str, Any]) -> None:
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO subscribers (id) VALUES (?)", (subscriber_id,))
            self._db.execute(_SAVE_SUBSCRIPTION, _subscription_row(subscriber_id, subscription))

    def delete_subscription(self, subscriber_id: str, message_type: str) -> None:
        self._db.execute(
            "DELETE FROM subscriptions WHERE subscriber = ? AND message_type = ?",
            (subscriber_id, message_type),
        )

    def delete_subscriber(self, subscriber_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM subscriptions WHERE subscriber = ?", (subscriber_id,))
            self._db.execute("DELETE FROM subscribers WHERE id = ?", (subscriber_id,))

    def commit(self, writes: Sequence[TaskWrite]) -> None:
        (only,) = writes if len(writes) == 1 else (None,)
        if isinstance(only, SaveTask):  # one statement is a transaction of its own
            self.save_task(only.task_id, only.workflow, only.record)
            return
        with self._transaction():
            for write in writes:
                if isinstance(write, SaveTask):
                    self._db.execute(_SAVE_TASK, (write.task_id, write.workflow, write.record))
                else:
                    self._file(write)

    def save_task(self, task_id: str, workflow: str, record: bytes) -> None:
        # one statement, its own transaction
        self._db.execute(_SAVE_TASK, (task_id, workflow, record))

    def finish_task(
        self,
        task_id: str,
        workflow: str,
        outcome: str,
        started_at: float,
        ended_at: float,
        record: bytes,
        *,
        has_errors: bool = False,
    ) -> None:
        write = FinishTask(task_id, workflow, outcome, started_at, ended_at, record, has_errors)
        with self._transaction():
            self._file(write)

    def _file(self, write: FinishTask) -> None:
        self._db.execute("DELETE FROM running_tasks WHERE id = ?", (write.task_id,))
        self._db.execute(
            "INSERT INTO history (id, workflow, outcome, started_at, ended_at, data,"
            " has_errors) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " workflow = excluded.workflow, outcome = excluded.outcome,"
            " started_at = excluded.started_at, ended_at = excluded.ended_at,"
            " data = excluded.data, has_errors = excluded.has_errors",
            (
                write.task_id,
                write.workflow,
                write.outcome,
                write.started_at,
                write.ended_at,
                write.record,
                int(write.has_errors),
            ),
        )

    def save_schedule_mark(self, key: tuple[str, str, str], moment: datetime) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO schedule_marks (workflow, cron, timezone, moment)"
                " VALUES (?, ?, ?, ?)",
                (*key, moment.timestamp()),
            )

    def prune(self, before: datetime) -> int:
        with self._transaction():
            self._db.execute(
                "DELETE FROM task_log WHERE task_id IN (SELECT id FROM history WHERE ended_at < ?)",
                (before.timestamp(),),
            )
            cursor = self._db.execute(
                "DELETE FROM history WHERE ended_at < ?", (before.timestamp(),)
            )
        return cursor.rowcount

    def save_definition(self, definition_id: str, record: bytes) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO definitions (id, data) VALUES (?, ?)",
                (definition_id, record.decode("utf-8")),
            )

    def delete_definition(self, definition_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM definitions WHERE id = ?", (definition_id,))

    def add_log_entry(self, task_id: str, entry: bytes, *, keep: int) -> None:
        with self._transaction():
            (last,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM task_log WHERE task_id = ?", (task_id,)
            ).fetchone()
            self._db.execute(
                "INSERT INTO task_log (task_id, seq, data) VALUES (?, ?, ?)",
                (task_id, last + 1, entry.decode("utf-8")),
            )
            if last + 1 > keep:
                self._db.execute(
                    "DELETE FROM task_log WHERE task_id = ? AND seq <= ?",
                    (task_id, last + 1 - keep),
                )

    def task_log(self, task_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT data FROM task_log WHERE task_id = ? ORDER BY seq", (task_id,)
        )
        return [json.loads(row[0]) for row in rows]

    def task_ids(self, prefix: str, *, limit: int) -> list[str]:
        # a range on the primary key, so that the lookup uses its index
        clause, values = "", ()  # type: str, tuple[str, ...]
        if prefix:
            clause = "WHERE id >= ? AND id < ?"
            values = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        ids: list[str] = []
        for table in ("running_tasks", "history"):
            rows = self._db.execute(
                f"SELECT id FROM {table} {clause} ORDER BY id LIMIT ?", (*values, limit)
            )
            ids.extend(row[0] for row in rows if row[0] not in ids)
        return ids[:limit]

    def load_config_models(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        kinds = [json.loads(row[0]) for row in self._db.execute("SELECT data FROM config_kinds")]
        validations = [
            json.loads(row[0]) for row in self._db.execute("SELECT data FROM config_validations")
        ]
        return kinds, validations

    def save_config_kinds(self, kinds: Iterable[Mapping[str, Any]]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO config_kinds (fqn, data) VALUES (?, ?)",
                [(kind["fqn"], json.dumps(kind)) for kind in kinds],
            )

    def save_config_validation(self, validation: Mapping[str, Any]) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO config_validations (id, data) VALUES (?, ?)",
                (validation["id"], json.dumps(validation)),
            )

    def delete_config_validation(self, config_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM config_validations WHERE id = ?", (config_id,))

    def close(self) -> None:
        self._db.close()


# an upsert updates the row in place (INSERT OR REPLACE deletes and re-inserts
# it, ten times slower here)
_SAVE_TASK = (
    "INSERT INTO running_tasks (id, workflow, data) VALUES (?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET data = excluded.data"
)

_SAVE_SUBSCRIPTION = (
    "INSERT INTO subscriptions (subscriber, message_type, wait_for_completion, timeout)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (subscriber, message_type) DO UPDATE SET"
    " wait_for_completion = excluded.wait_for_completion, timeout = excluded.timeout"
)


def _subscription_row(subscriber_id: str, subscription: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        subscriber_id,
        subscription["message_type"],
        int(subscription["wait_for_completion"]),
        subscription["timeout"],
    )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                # a COMMIT that fails (busy, disk full) may leave the transaction open:
                # end it, or every later write would join it and never be committed
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("cannot roll back a failed store transaction")


def open_store(
    location: str | Path | None, *, retention: timedelta = DEFAULT_RETENTION
) -> SQLiteStore | None:
    """Open the store at ``location``: a file path, ``memory`` (nothing kept), or None."""
    if location is None or str(location) == "memory":
        return None
    return SQLiteStore(location, retention=retention)


# ---------------------------------------------------------------- the asynchronous seam


class AsyncStore(Protocol):
    """Where the engine keeps what must survive a restart, shared by several replicas.

    Every method is a coroutine run by the engine's trio driver, never inside
    the engine's atomic step code. A store that is out of reach (a Redis
    server restarting) retries each call until it can answer: callers bound
    the wait with trio's cancel scopes, and :attr:`ready` says meanwhile that
    the store does not answer.

    Running tasks are written only under a lease (:meth:`acquire_lease`): a
    replica holds one lease, every task it drives is written under it, and a
    write whose lease expired or was taken over is refused whole
    (:class:`~engine._errors.LeaseLost`), so that a replica that was paused and
    wakes up after another took its tasks over writes nothing.
    """

    #: How long finished tasks are kept.
    retention: timedelta

    @property
    def ready(self) -> bool:
        """Tell whether the store answered its last call (False while it is out of reach)."""

    async def check(self) -> bool:
        """Ask the store whether it answers now (once, without retrying); update :attr:`ready`."""

    async def load(self, *, lease: str | None = None) -> StoredState:
        """Return everything stored; with ``lease``, only the running tasks held under it
        (without: all running tasks, whoever holds them)."""

    async def save_config(self, config: Config, *, if_revision: str | None = None) -> None:
        """Store a config (replacing one with the same id); with ``if_revision``, only if
        the stored one is at that revision, checked in the same step (else raise
        :class:`~engine._errors.ConfigConflict`)."""

    async def delete_config(self, config_id: str, *, if_revision: str | None = None) -> None:
        """Forget a config (with ``if_revision``: only if at that revision, as for saving)."""

    async def load_config_models(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return the stored config kinds and config validation settings."""

    async def save_config_kinds(self, kinds: Iterable[Mapping[str, Any]]) -> None:
        """Store config kinds (replacing those with the same fqn)."""

    async def save_config_validation(self, validation: Mapping[str, Any]) -> None:
        """Store a config's validation setting (replacing the one with the same id)."""

    async def delete_config_validation(self, config_id: str) -> None:
        """Forget a config's validation setting."""

    async def save_definition(self, definition_id: str, record: bytes) -> None:
        """Store a run-time definition (or a change to a built-in one), as JSON."""

    async def delete_definition(self, definition_id: str) -> None:
        """Forget a run-time definition."""

    async def add_log_entry(self, task_id: str, entry: bytes, *, keep: int) -> None:
        """Append an entry (JSON) to a task's log, keeping only its latest ``keep`` entries."""

    async def task_log(self, task_id: str) -> list[dict[str, Any]]:
        """Return a task's log entries, oldest first."""

    async def task_ids(self, prefix: str, *, limit: int) -> list[str]:
        """Return up to ``limit`` ids of running or finished tasks that start with ``prefix``."""

    async def save_subscriber(
        self, subscriber_id: str, subscriptions: list[dict[str, Any]]
    ) -> None:
        """Store all of a subscriber's subscriptions (an empty list keeps the subscriber)."""

    async def save_subscription(self, subscriber_id: str, subscription: dict[str, Any]) -> None:
        """Store one subscription (replacing one of the same message type), creating the
        subscriber if needed; the others stay as they are."""

    async def delete_subscription(self, subscriber_id: str, message_type: str) -> None:
        """Forget one subscription; the subscriber stays."""

    async def delete_subscriber(self, subscriber_id: str) -> None:
        """Forget a subscriber and its subscriptions."""

    async def commit(self, writes: Sequence[TaskWrite], *, owner: str, fence: int) -> None:
        """Apply a group of task writes as one unit, in one round trip to the store.

        Each :class:`SaveTask` replaces a running task's state (a new task
        becomes the lease ``owner``'s); each :class:`FinishTask` moves a task
        to the history. Nothing is written unless the lease ``owner`` is still
        held with the token ``fence`` and no write touches a task held under
        another lease.

        Raises:
            LeaseLost: the lease expired, was acquired again (another token),
                or a task was taken over by another lease; nothing was written.
        """

    async def save_schedule_mark(self, key: tuple[str, str, str], moment: datetime) -> None:
        """Store the last time a schedule handled (workflow, cron, time zone)."""

    async def claim_firing(
        self, workflow: str, cron: str, timezone: str, planned: datetime
    ) -> bool:
        """Take the firing of a schedule at ``planned``; True for exactly one caller."""

    async def history(
        self,
        *,
        workflow: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return finished tasks, newest first (ties: the one stored last first)."""

    async def finished_task(self, task_id: str) -> dict[str, Any] | None:
        """Return one finished task, or None."""

    async def prune(self, before: datetime) -> int:
        """Delete finished tasks that ended before ``before`` (and their logs); return how many."""

    async def acquire_lease(self, name: str, ttl: timedelta) -> int | None:
        """Take the lease ``name`` for ``ttl`` if nobody holds it; return its fencing token.

        The token is greater than every token handed out before by this store
        (for any lease). None: someone holds the lease.
        """

    async def renew_lease(self, name: str, token: int, ttl: timedelta) -> bool:
        """Extend a held lease to ``ttl`` from now; False if it is no longer held with ``token``."""

    async def keep_lease(
        self,
        name: str,
        token: int,
        ttl: timedelta,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Renew a held lease every third of ``ttl`` until cancelled (start it in a nursery).

        Raises:
            LeaseLost: a renewal found the lease expired or taken.
        """

    async def release_lease(self, name: str, token: int) -> bool:
        """Give a lease up at once (its tasks can be taken over at once); False if not held."""

    async def expired_leases(self) -> list[str]:
        """Return the leases that expired (or were released) while tasks are held under them."""

    async def lease_of(self, task_id: str) -> str | None:
        """Return the lease a running task is held under, or None."""

    async def running_task(self, task_id: str) -> dict[str, Any] | None:
        """Return a running task's record, whoever drives it, or None."""

    async def adopt(self, expired: str, *, owner: str, fence: int) -> list[bytes]:
        """Move the tasks of an expired lease to the lease ``owner`` and return their records.

        Raises:
            LeaseLost: ``owner`` is not held with ``fence``, or ``expired``
                was taken again meanwhile; nothing moved.
        """

    async def aclose(self) -> None:
        """Release the store."""


def revision_counter(configs: Sequence[Config]) -> int:
    """Return the highest revision number among ``configs`` (revisions read ``r<n>-...``)."""
    return max(
        (
            int(number)
            for c in configs
            if (number := c.revision[1:].split("-")[0]).isascii() and number.isdigit()
        ),
        default=0,
    )
