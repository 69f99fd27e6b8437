"""What every part of a store transaction shares: its connection, the one read path
(the hop's statements on the DB-API connection, compiled once per dialect), and the
helpers that turn rows into typed rows."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TypeVar

from cdumay_error.types import ValidationError
from sqlalchemy import JSON, Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Executable

from kser.errors import safe_text
from kser.schemas import check_ttl_strategy
from kser.status import Status
from kser.store import queries as q
from kser.store.rows import OperationState, OutboxRow, Row, TaskRow

logger = logging.getLogger("kser.store.store")  # (the name its lines always had)

#: first and longest wait before an outbox row whose send failed (the broker away) is
#: sent again, seconds (doubling with each failure)
OUTBOX_MIN_BACKOFF, OUTBOX_MAX_BACKOFF = 1.0, 30.0
#: most log lines stored per task attempt (a note says how many more there were)
MAX_LOG_LINES = 1000
#: longest stored log line, characters
MAX_LOG_LINE = 10_000

R = TypeVar("R", bound=Row)
#: a task queued with its message, noted until a deferred queue's end: operation id,
#: topic, key, value, due time, trace context, forwarded result's digest
_Queued = tuple[str, str, bytes | None, bytes, float | None, str | None, str | None]
_Compiled = tuple[str, list[str] | None, dict[str, Any], frozenset[str]]
_COMPILED: dict[tuple[int, str], _Compiled] = {}


class TxBase:
    """One transaction on the store: its connection and its read path. The queries of
    each table group are a class of their own (:mod:`kser.store.tx`); :class:`Tx` is
    all of them."""

    def __init__(self, connection: Connection):
        self.connection = connection
        #: the outbox rows added in this transaction
        self.queued: list[OutboxRow] = []
        #: operation states read (and locked) by operation_states(), kept up to date
        self._states: dict[str, OperationState] = {}
        #: (inside deferred_queue()) the queue_with_message calls to make, by task id
        self._deferred: dict[str, _Queued] | None = None
        #: the operations of tasks deferred_queue() noted but did not queue (their
        #: compare-and-set failed: another transition queued or ended them)
        self.not_queued: set[str] = set()

    # -- the one read path -------------------------------------------------------------
    # Each task hop runs about ten statements in two transactions; through
    # SQLAlchemy's execution path, their Python overhead was half the CPU of a hop
    # (benchmarks/), so the hop's prebuilt statements (queries.HOP) run on the
    # transaction's own DB-API connection, compiled once per dialect. Every other
    # statement goes through SQLAlchemy; both give the same rows, JSON columns decoded.

    def _read(self, statement: Executable, params: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
        """The rows ``statement`` returns, as dicts of their columns."""
        if id(statement) not in q.HOP:
            return [dict(row) for row in
                    self.connection.execute(statement, params or {}).mappings()]
        return _rows(self._cursor(statement, params or {}))

    def _raw(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of a batch statement (PostgreSQL), as :meth:`_read` gives them.

        Never prepared: each run is planned for its own arrays (a prepared statement's
        generic plan, made while the tables were small, may scan every dependency; one
        plan per batch costs little beside what the batch saves)."""
        cursor = self._dbapi().cursor()
        cursor.execute(sql, params, prepare=False)
        return _rows(cursor)

    def lock_timeout(self, seconds: float) -> None:
        """For the rest of this transaction, a row lock waited for longer than ``seconds``
        fails the statement (PostgreSQL; SQLite's single writer waits as it always does)."""
        if self._postgresql:
            self._dbapi().cursor().execute(
                f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'", prepare=False)

    @property
    def _postgresql(self) -> bool:
        return bool(self.connection.dialect.name == "postgresql")

    def _read_as(self, row_type: type[R], statement: Executable,
                 params: dict[str, Any] | None = None) -> list[R]:
        return [row_type.from_row(row) for row in self._read(statement, params)]

    def _first_as(self, row_type: type[R], statement: Executable,
                  params: dict[str, Any]) -> R | None:
        rows = self._read(statement, params)
        return row_type.from_row(rows[0]) if rows else None

    def _execute(self, statement: Executable, params: dict[str, Any]) -> int:
        """Run a hop statement that returns no rows; how many rows it changed."""
        cursor = self._cursor(statement, params)
        count: int = cursor.rowcount
        cursor.close()
        return count

    def _cursor(self, statement: Executable, params: dict[str, Any]) -> Any:
        sql, order, literals, json_binds = _compiled(statement, self.connection.dialect)
        values = {**literals, **params}
        for name in json_binds:
            if values.get(name) is not None:
                values[name] = json.dumps(values[name])
        cursor = self._dbapi().cursor()
        cursor.execute(sql, [values[name] for name in order] if order is not None else values)
        return cursor

    def _dbapi(self) -> Any:
        dbapi = self.connection.connection.dbapi_connection
        assert dbapi is not None  # inside a transaction the connection is open
        return dbapi


def _compiled(statement: Any, dialect: Dialect) -> _Compiled:
    """A hop ``statement`` compiled once for ``dialect``: SQL, positional bind order
    (qmark styles; None for named ones), literal bind values, names of the JSON binds."""
    key = (id(statement), dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        assert key[0] in q.HOP, "only the hop's module-level statements are cached by id"
        compiled = statement.compile(dialect=dialect)
        json_binds = frozenset(name for name, bind in compiled.binds.items()
                               if isinstance(bind.type, JSON))
        order = list(compiled.positiontup or ()) if compiled.positional else None
        found = _COMPILED[key] = (compiled.string, order, dict(compiled.params), json_binds)
    return found


def _rows(cursor: Any) -> list[dict[str, Any]]:
    """The rows of an executed DB-API cursor (then closed), as dicts of their columns, the
    JSON columns decoded (SQLite gives their text; psycopg decodes JSON itself)."""
    names = [column[0] for column in cursor.description]
    json_names = [name for name in names if name in q.JSON_COLUMNS]
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        for name in json_names:
            value = row[name]
            if value.__class__ is str or value.__class__ is bytes:
                row[name] = json.loads(value)
        rows.append(row)
    cursor.close()
    return rows


def _log_rows(task_id: str, attempt: int,
              lines: list[tuple[float, int, str]]) -> list[dict[str, Any]]:
    """The rows of an attempt's log lines: at most :data:`MAX_LOG_LINES` (then a line
    saying how many more), each cut at :data:`MAX_LOG_LINE` characters, made safe."""
    rows = [dict(task_id=task_id, attempt=attempt, created_at=at, level=int(level),
                 message=safe_text(msg, MAX_LOG_LINE))
            for at, level, msg in lines[:MAX_LOG_LINES]]
    if len(lines) > MAX_LOG_LINES:
        rows.append(dict(task_id=task_id, attempt=attempt, created_at=time.time(),
                         level=30, message=f"… {len(lines) - MAX_LOG_LINES} more log "
                         f"line(s) of this attempt not stored (limit {MAX_LOG_LINES})"))
    return rows


def _with_counts(rows: list[dict[str, Any]]) -> list[TaskRow]:
    """Tasks from rows of (task, the status of one of its upstream tasks), in order, each
    with how many upstream tasks it has, and how many succeeded, failed (or were
    canceled: they never succeed) and were skipped."""
    tasks: dict[str, dict[str, Any]] = {}
    for row in rows:
        task = tasks.get(row["id"])
        if task is None:
            task = tasks[row["id"]] = dict(row, upstream_count=0, upstream_succeeded=0,
                                           upstream_failed=0, upstream_skipped=0)
        status = row["upstream_status"]
        if status is None:  # (a task without upstream tasks)
            continue
        task["upstream_count"] += 1
        if status == Status.SUCCESS:
            task["upstream_succeeded"] += 1
        elif status in (Status.FAILED, Status.CANCELED):
            task["upstream_failed"] += 1
        elif status == Status.SKIPPED:
            task["upstream_skipped"] += 1
    return [TaskRow.from_row(task) for task in tasks.values()]


def _expired(status: str, finished_at: float, ttl: Any, now: float) -> bool:
    try:  # (a row an older kser stored from a message may hold anything: it is kept)
        ttl = check_ttl_strategy(ttl)
    except ValidationError as exc:
        logger.warning("An operation's stored %s: it is kept (fix or delete it)",
                       safe_text(exc.message, 300))
        return False
    if not ttl:
        return False
    limits = [ttl.get("seconds_after_completion")]
    if status == Status.SUCCESS:
        limits.append(ttl.get("seconds_after_success"))
    elif status == Status.FAILED:
        limits.append(ttl.get("seconds_after_failure"))
    return any(limit is not None and now - finished_at >= limit for limit in limits)
