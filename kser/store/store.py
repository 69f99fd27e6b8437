"""The Store: one transaction per state change, SQL in one place."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from cdumay_error.types import ValidationError
from sqlalchemy import (
    JSON,
    Connection,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.expression import Executable

from kser.errors import (
    OperationGoneError,
    StoreError,
    WorkerFatalError,
    is_transient,
    safe_text,
)
from kser.schemas import check_ttl_strategy
from kser.status import FINAL_STATUSES, Status
from kser.store import schema
from kser.store.migrations import migrate
from kser.store.rows import (
    AttemptRow,
    DeadLetterRow,
    LogRow,
    OperationRow,
    OperationState,
    OutboxRow,
    Row,
    ScheduleRow,
    TaskRow,
)

logger = logging.getLogger(__name__)

#: first and longest wait before an outbox row whose send failed (the broker away) is
#: sent again, seconds (doubling with each failure)
OUTBOX_MIN_BACKOFF, OUTBOX_MAX_BACKOFF = 1.0, 30.0

#: most log lines stored per task attempt (a note says how many more there were)
MAX_LOG_LINES = 1000
#: longest stored log line, characters
MAX_LOG_LINE = 10_000


_op, _task, _attempt, _box = (schema.operations.c, schema.tasks.c, schema.attempts.c,
                              schema.outbox.c)

# The statements of a task's hop, built once: SQLAlchemy then caches their compiled
# form, where building them per call cost more than running them (benchmarks/).
_GET_OPERATION = select(schema.operations).where(_op.id == bindparam("b_id"))
_GET_OPERATION_LOCKED = _GET_OPERATION.with_for_update()
# (a task's end: its operation's state alone, without the JSON it would decode for nothing)
_GET_OPERATION_STATE = (select(_op.id, _op.status, _op.topic, _op.initial_result)
                        .where(_op.id == bindparam("b_id")).with_for_update())
_GET_TASK = select(schema.tasks).where(_task.id == bindparam("b_id"))
_dep, _up_dep = schema.task_dependencies.alias("dep"), schema.task_dependencies.alias("up_dep")
_up = schema.tasks.alias("up")
_GET_TASK_TO_RUN = (select(schema.tasks, _op.status.label("operation_status"))
                    .join(schema.operations, _op.id == _task.operation_id)
                    .where(_task.id == bindparam("b_id")))


# the tasks that depend on a task (found by id from the dependencies; their status is
# checked by dependents(), as SQLite would otherwise look them up by status: a scan of
# every pending task), one row per upstream task of each, with that task's status
# (counted in Python: one join, where a count per status was a subquery each)
_DEPENDENTS = (select(schema.tasks, _up.c.status.label("upstream_status"))
               .select_from(_dep)
               .join(schema.tasks, _task.id == _dep.c.task_id)
               .join(_up_dep, _up_dep.c.task_id == _dep.c.task_id)
               .join(_up, _up.c.id == _up_dep.c.depends_on)
               .where(_dep.c.depends_on == bindparam("b_id"))
               .order_by(_task.position))
_PENDING_WITH_UPSTREAM = (select(schema.tasks, _up.c.status.label("upstream_status"))
                          .outerjoin(_up_dep, _up_dep.c.task_id == _task.id)
                          .outerjoin(_up, _up.c.id == _up_dep.c.depends_on)
                          .where(and_(_task.operation_id == bindparam("b_id"),
                                      _task.status == Status.PENDING))
                          .order_by(_task.position))
_UPSTREAM = (select(_task.id, _task.name, _task.position, _task.status, _task.result)
             .join(_dep, _dep.c.depends_on == _task.id)
             .where(_dep.c.task_id == bindparam("b_id")).order_by(_task.position))
# what decides an operation's outcome in the common case: its FAILED tasks, and its last
# tasks (those nothing depends on) with their results
# (the upstream tasks of the operation's own tasks: PostgreSQL would otherwise hash
# every dependency of the store, as it may for an OR'd NOT EXISTS)
_same_op = schema.tasks.alias("same_op")
_FAILED_OR_LAST = (select(_task.id, _task.status, _task.result)
                   .where(and_(_task.operation_id == bindparam("b_id"),
                               or_(_task.status == Status.FAILED,
                                   _task.id.not_in(
                                       select(_dep.c.depends_on)
                                       .join(_same_op, _same_op.c.id == _dep.c.task_id)
                                       .where(_same_op.c.operation_id == bindparam("b_id"))))))
                   .order_by(_task.position))
# (final statuses excluded, not unfinished ones matched: the operation's own tasks are
# read from its index, whatever the planner thinks of a status's frequency)
_UNFINISHED = (select(_task.id).where(and_(_task.operation_id == bindparam("b_id"),
                                           *(_task.status != status
                                             for status in sorted(FINAL_STATUSES))))
               .limit(1))
# the join's compare-and-set: of the transitions that find a task ready, one queues it
_QUEUE = (update(schema.tasks)
          .where(and_(_task.id == bindparam("b_id"), _task.status == Status.PENDING,
                      or_(_task.queued_attempt.is_(None),
                          _task.queued_attempt <= _task.attempt)))
          .values(queued_attempt=_task.attempt + 1, message_digest=bindparam("b_digest")))
_GET_TASKS = (select(schema.tasks).where(_task.operation_id == bindparam("b_id"))
              .order_by(_task.position))
_DEPENDENCIES = (select(schema.task_dependencies.c.task_id,
                        schema.task_dependencies.c.depends_on)
                 .join(schema.tasks, _task.id == schema.task_dependencies.c.task_id)
                 .where(_task.operation_id == bindparam("b_id")))
_CLAIM = (update(schema.tasks)
          .where(and_(_task.id == bindparam("b_id"), _task.attempt == bindparam("b_attempt"),
                      or_(_task.status == Status.PENDING,
                          and_(_task.status == Status.RUNNING,
                               or_(_task.lease_expires_at < bindparam("b_now"),
                                   _task.worker == bindparam("b_worker"))))))
          .values(status=Status.RUNNING, attempt=bindparam("b_next"), worker=bindparam("b_worker"),
                  lease_expires_at=bindparam("b_lease"), started_at=bindparam("b_now"),
                  finished_at=None))
_TAKEN_OVER = (update(schema.attempts)
               .where(and_(_attempt.task_id == bindparam("b_id"),
                           _attempt.number == bindparam("b_attempt"),
                           _attempt.status == Status.RUNNING))
               .values(status=Status.FAILED, finished_at=bindparam("b_now"),
                       error=bindparam("b_error")))
_NEW_ATTEMPT = schema.attempts.insert().values(
    task_id=bindparam("b_id"), number=bindparam("b_next"), worker=bindparam("b_worker"),
    status=Status.RUNNING, started_at=bindparam("b_now"))
_RENEW = (update(schema.tasks)
          .where(and_(_task.id == bindparam("b_id"), _task.attempt == bindparam("b_attempt"),
                      _task.status == Status.RUNNING))
          .values(lease_expires_at=bindparam("b_lease")))
_FINISH_TASK = (update(schema.tasks)
                .where(and_(_task.id == bindparam("b_id"),
                            _task.attempt == bindparam("b_attempt"),
                            _task.status == Status.RUNNING))
                .values(status=bindparam("b_status"), result=bindparam("b_result"),
                        finished_at=bindparam("b_finished"), lease_expires_at=None))
_FINISH_ATTEMPT = (update(schema.attempts)
                   .where(and_(_attempt.task_id == bindparam("b_id"),
                               _attempt.number == bindparam("b_attempt")))
                   .values(status=bindparam("b_status"), finished_at=bindparam("b_now"),
                           retcode=bindparam("b_retcode"), error=bindparam("b_error")))
_ADD_OUTBOX = schema.outbox.insert().values(
    operation_id=bindparam("b_operation"), topic=bindparam("b_topic"), key=bindparam("b_key"),
    value=bindparam("b_value"), created_at=bindparam("b_now"), due_at=bindparam("b_due"),
    trace_context=bindparam("b_trace")
).returning(_box.id)
_MARK_SENT = (update(schema.outbox).where(_box.id == bindparam("b_id"))
              .values(sent_at=bindparam("b_now")))


#: queue_with_message on PostgreSQL (psycopg's parameters): the compare-and-set of
#: _QUEUE, and the outbox row of its message only if it queued the task
_QUEUE_WITH_MESSAGE_PG = (
    "WITH queued AS (UPDATE kser_tasks SET queued_attempt = attempt + 1, "
    "message_digest = %(b_digest)s WHERE id = %(b_id)s AND status = 'PENDING' "
    "AND (queued_attempt IS NULL OR queued_attempt <= attempt) RETURNING id) "
    "INSERT INTO kser_outbox (operation_id, topic, key, value, created_at, due_at, "
    "trace_context) SELECT %(b_operation)s, %(b_topic)s, %(b_key)s, %(b_value)s, %(b_now)s, "
    "%(b_due)s, %(b_trace)s FROM queued RETURNING id")

#: claim_task on PostgreSQL: the compare-and-set of _CLAIM, and the new attempt's row
#: only if it claimed the task, in one round trip; {taken_over} is _TAKEN_OVER's CTE
#: when the task may be taken over (a data-modifying CTE runs whether or not used)
_CLAIM_PG = (
    "WITH claimed AS (UPDATE kser_tasks SET status = 'RUNNING', attempt = %(b_next)s, "
    "worker = %(b_worker)s, lease_expires_at = %(b_lease)s, started_at = %(b_now)s, "
    "finished_at = NULL WHERE id = %(b_id)s AND attempt = %(b_attempt)s "
    "AND (status = 'PENDING' OR (status = 'RUNNING' AND (lease_expires_at < %(b_now)s "
    "OR worker = %(b_worker)s))) RETURNING id){taken_over} "
    "INSERT INTO kser_attempts (task_id, number, worker, status, started_at) "
    "SELECT id, %(b_next)s, %(b_worker)s, 'RUNNING', %(b_now)s FROM claimed RETURNING task_id")
_CLAIM_PG_TAKING_OVER = _CLAIM_PG.format(taken_over=(
    ", taken_over AS (UPDATE kser_attempts SET status = 'FAILED', finished_at = %(b_now)s, "
    "error = %(b_error)s WHERE task_id = %(b_id)s AND number = %(b_attempt)s "
    "AND status = 'RUNNING' AND EXISTS (SELECT 1 FROM claimed))"))
_CLAIM_PG = _CLAIM_PG.format(taken_over="")
#: finish_attempt on PostgreSQL: _FINISH_TASK, and _FINISH_ATTEMPT only if it finished
#: the task, in one round trip; the count of tasks finished (0: taken over meanwhile).
#: The attempt is named by its key, not joined to the CTE: a prepared statement's
#: generic plan, made while the table was small, would scan every attempt for the join
_FINISH_PG = (
    "WITH finished AS (UPDATE kser_tasks SET status = %(b_task_status)s, "
    "result = %(b_result)s, finished_at = %(b_finished)s, lease_expires_at = NULL "
    "WHERE id = %(b_id)s AND attempt = %(b_attempt)s AND status = 'RUNNING' RETURNING id), "
    "attempt AS (UPDATE kser_attempts SET status = %(b_status)s, finished_at = %(b_now)s, "
    "retcode = %(b_retcode)s, error = %(b_error)s WHERE task_id = %(b_id)s "
    "AND number = %(b_attempt)s AND EXISTS (SELECT 1 FROM finished)) "
    "SELECT count(*) FROM finished")

# -- several tasks at once (a worker's batch), PostgreSQL: one statement for all of them,
# each row named by its key from arrays (unnest); SQLite runs the one-task statements in
# a loop (in process, a statement costs no round trip). Run by Tx._raw, never prepared.

#: tasks_to_run: tasks with their operation's status
_TASKS_TO_RUN_PG = (
    "SELECT t.*, o.status AS operation_status FROM kser_tasks t "
    "JOIN kser_operations o ON o.id = t.operation_id WHERE t.id = ANY(%(b_ids)s)")
#: dependents_of: _DEPENDENTS of several tasks, each row with the task it depends on
#: (``ended_id``), each task's dependents found from its key (LATERAL)
_DEPENDENTS_OF_PG = (
    "SELECT d.*, ended.id AS ended_id FROM unnest(%(b_ids)s::varchar[]) AS ended(id), "
    "LATERAL (SELECT t.*, u.status AS upstream_status FROM kser_task_dependencies dep "
    "JOIN kser_tasks t ON t.id = dep.task_id "
    "JOIN kser_task_dependencies ud ON ud.task_id = dep.task_id "
    "JOIN kser_tasks u ON u.id = ud.depends_on WHERE dep.depends_on = ended.id) d "
    "ORDER BY d.position")
#: operation_states: locked in id order (two batches never wait for each other in a cycle)
_OPERATION_STATES_PG = (
    "SELECT id, status, topic, initial_result FROM kser_operations "
    "WHERE id = ANY(%(b_ids)s) ORDER BY id FOR UPDATE")
#: claim_pending: _CLAIM_PG for PENDING tasks, several at once
_CLAIM_PENDING_PG = (
    "WITH v AS (SELECT * FROM unnest(%(b_ids)s::varchar[], %(b_attempts)s::int[]) "
    "AS v(id, attempt)), "
    "claimed AS (UPDATE kser_tasks t SET status = 'RUNNING', attempt = v.attempt + 1, "
    "worker = %(b_worker)s, lease_expires_at = %(b_lease)s, started_at = %(b_now)s, "
    "finished_at = NULL FROM v WHERE t.id = v.id AND t.attempt = v.attempt "
    "AND t.status = 'PENDING' RETURNING t.id, t.attempt) "
    "INSERT INTO kser_attempts (task_id, number, worker, status, started_at) "
    "SELECT id, attempt, %(b_worker)s, 'RUNNING', %(b_now)s FROM claimed RETURNING task_id")
#: finish_attempts: _FINISH_PG, several at once
_FINISH_MANY_PG = (
    "WITH v AS (SELECT * FROM unnest(%(b_ids)s::varchar[], %(b_attempts)s::int[], "
    "%(b_task_statuses)s::varchar[], %(b_results)s::text[], %(b_finished)s::float8[], "
    "%(b_statuses)s::varchar[], %(b_retcodes)s::int[], %(b_errors)s::text[]) "
    "AS v(id, attempt, task_status, result, finished_at, status, retcode, error)), "
    "finished AS (UPDATE kser_tasks t SET status = v.task_status, result = v.result::json, "
    "finished_at = v.finished_at, lease_expires_at = NULL FROM v WHERE t.id = v.id "
    "AND t.attempt = v.attempt AND t.status = 'RUNNING' RETURNING t.id), "
    "attempt AS (UPDATE kser_attempts a SET status = v.status, finished_at = %(b_now)s, "
    "retcode = v.retcode, error = v.error FROM v WHERE a.task_id = v.id "
    "AND a.number = v.attempt AND v.id IN (SELECT id FROM finished)) "
    "SELECT id FROM finished")
#: queue_many: _QUEUE_WITH_MESSAGE_PG, several at once (the outbox rows named by key: a
#: task message's key is its task's id)
_QUEUE_MANY_PG = (
    "WITH v AS (SELECT * FROM unnest(%(b_ids)s::varchar[], %(b_operations)s::varchar[], "
    "%(b_topics)s::varchar[], %(b_keys)s::bytea[], %(b_values)s::bytea[], "
    "%(b_dues)s::float8[], %(b_traces)s::text[], %(b_digests)s::varchar[]) "
    "AS v(id, operation_id, topic, key, value, due_at, trace_context, digest)), "
    "queued AS (UPDATE kser_tasks t SET queued_attempt = t.attempt + 1, "
    "message_digest = v.digest FROM v "
    "WHERE t.id = v.id AND t.status = 'PENDING' "
    "AND (t.queued_attempt IS NULL OR t.queued_attempt <= t.attempt) RETURNING t.id) "
    "INSERT INTO kser_outbox (operation_id, topic, key, value, created_at, due_at, "
    "trace_context) SELECT v.operation_id, v.topic, v.key, v.value, %(b_now)s, v.due_at, "
    "v.trace_context FROM v JOIN queued ON queued.id = v.id RETURNING id, key")

#: the statements of a task's hop, which :meth:`Tx._read` and :meth:`Tx._execute` run on
#: the DB-API connection (each compiled once per dialect)
_HOP = frozenset(map(id, (_GET_OPERATION, _GET_OPERATION_LOCKED, _GET_OPERATION_STATE,
                          _GET_TASK_TO_RUN,
                          _DEPENDENTS, _PENDING_WITH_UPSTREAM, _UPSTREAM, _UNFINISHED,
                          _FAILED_OR_LAST,
                          _QUEUE, _CLAIM,
                          _TAKEN_OVER, _NEW_ATTEMPT, _RENEW, _FINISH_TASK, _FINISH_ATTEMPT,
                          _ADD_OUTBOX, _MARK_SENT)))
#: columns the store keeps as JSON (decoded by hand on the hop's raw cursors)
_JSON_COLUMNS = frozenset(column.name for table in schema.metadata.tables.values()
                          for column in table.columns if isinstance(column.type, JSON))
_Compiled = tuple[str, list[str] | None, dict[str, Any], frozenset[str]]
_COMPILED: dict[tuple[int, str], _Compiled] = {}

R = TypeVar("R", bound=Row)
#: a task queued with its message, noted until a deferred queue's end: operation id,
#: topic, key, value, due time, trace context, forwarded result's digest
_Queued = tuple[str, str, bytes | None, bytes, float | None, str | None, str | None]


def _compiled(statement: Any, dialect: Dialect) -> _Compiled:
    """A hop ``statement`` compiled once for ``dialect``: SQL, positional bind order
    (qmark styles; None for named ones), literal bind values, names of the JSON binds."""
    key = (id(statement), dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        assert key[0] in _HOP, "only the hop's module-level statements are cached by id"
        compiled = statement.compile(dialect=dialect)
        json_binds = frozenset(name for name, bind in compiled.binds.items()
                               if isinstance(bind.type, JSON))
        order = list(compiled.positiontup or ()) if compiled.positional else None
        found = _COMPILED[key] = (compiled.string, order, dict(compiled.params), json_binds)
    return found


class Tx:
    """One transaction on the store: reads return typed rows (:mod:`kser.store.rows`)."""

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
    # (benchmarks/), so the hop's prebuilt statements (_HOP) run on the transaction's
    # own DB-API connection, compiled once per dialect. Every other statement goes
    # through SQLAlchemy; both give the same rows, JSON columns decoded.

    def _read(self, statement: Executable, params: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
        """The rows ``statement`` returns, as dicts of their columns."""
        if id(statement) not in _HOP:
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

    # -- operations --------------------------------------------------------------------

    def insert_operation(self, row: dict[str, Any]) -> bool:
        """Insert an operation; False if one with this id, or this ``idempotency_key``,
        exists (a duplicate message, a second send with the same key).

        INSERT ... ON CONFLICT DO NOTHING: two workers submitting the same operation
        at once never collide on its keys (a unique violation would otherwise be an
        error the same message could raise again).
        """
        insert = (sqlite_insert if self.connection.dialect.name == "sqlite"
                  else postgresql_insert)(schema.operations)
        inserted = self.connection.execute(
            insert.values(**row).on_conflict_do_nothing()
            .returning(schema.operations.c.id)).first()
        return inserted is not None

    def operation_by_key(self, key: str) -> OperationRow | None:
        """The operation sent with ``idempotency_key`` ``key``."""
        rows = self._read_as(OperationRow, select(schema.operations)
                             .where(_op.idempotency_key == key))
        return rows[0] if rows else None

    def get_operation(self, operation_id: str, lock: bool = False) -> OperationRow | None:
        return self._first_as(OperationRow, _GET_OPERATION_LOCKED if lock else _GET_OPERATION,
                              dict(b_id=operation_id))

    def operation(self, operation_id: str, lock: bool = False) -> OperationRow:
        """The operation, which must be in the store (a task of it was just read, or its
        insert met it): :class:`~kser.errors.OperationGoneError` if it is not (deleted
        meanwhile)."""
        op = self.get_operation(operation_id, lock=lock)
        if op is None:
            raise OperationGoneError(f"operation {operation_id} is not in the store any more "
                                "(purged or deleted meanwhile)")
        return op

    def operation_state(self, operation_id: str) -> OperationState:
        """The operation's :class:`OperationState`, its row locked (PostgreSQL) until the
        transaction ends: what a task's end reads first, so that the transitions of one
        operation happen one at a time. :class:`~kser.errors.OperationGoneError` if it is not
        in the store."""
        state = self._states.get(operation_id) or self._first_as(
            OperationState, _GET_OPERATION_STATE, dict(b_id=operation_id))
        if state is None:
            raise OperationGoneError(f"operation {operation_id} is not in the store any more "
                                "(purged or deleted meanwhile)")
        return state

    def operation_states(self, operation_ids: Iterable[str]) -> dict[str, OperationState]:
        """:meth:`operation_state` of several operations (those in the store), locked in
        id order; later calls of :meth:`operation_state` in this transaction use them."""
        ids = sorted(set(operation_ids))
        if self._postgresql:
            states = [OperationState.from_row(row)
                      for row in self._raw(_OPERATION_STATES_PG, dict(b_ids=ids))]
        else:
            states = [state for state in (self._first_as(
                OperationState, _GET_OPERATION_STATE, dict(b_id=operation_id))
                for operation_id in ids) if state is not None]
        self._states.update((state.id, state) for state in states)
        return {state.id: state for state in states}

    def update_operation(self, operation_id: str, **values: Any) -> None:
        state = self._states.get(operation_id)
        if state is not None and "status" in values:  # (what operation_state() says next)
            self._states[operation_id] = OperationState(
                state.id, Status(values["status"]), state.topic, state.initial_result)
        values.setdefault("updated_at", time.time())
        self.connection.execute(update(schema.operations)
                                .where(schema.operations.c.id == operation_id).values(**values))

    # -- tasks -------------------------------------------------------------------------

    def insert_tasks(self, rows: list[dict[str, Any]], dependencies: list[tuple[str, str]]) -> None:
        """Insert tasks and their ``(task_id, depends_on)`` dependencies."""
        if rows:
            self.connection.execute(schema.tasks.insert(), rows)
        if dependencies:
            self.connection.execute(schema.task_dependencies.insert(),
                                    [dict(task_id=t, depends_on=d) for t, d in dependencies])

    def get_task(self, task_id: str) -> TaskRow | None:
        return self._first_as(TaskRow, _GET_TASK, dict(b_id=task_id))

    def get_task_to_run(self, task_id: str) -> TaskRow | None:
        """A task with its operation's status (``operation_status``), in one read."""
        return self._first_as(TaskRow, _GET_TASK_TO_RUN, dict(b_id=task_id))

    def tasks_to_run(self, task_ids: list[str]) -> dict[str, TaskRow]:
        """:meth:`get_task_to_run` of several tasks (those in the store), by id."""
        if self._postgresql:
            rows = [TaskRow.from_row(row)
                    for row in self._raw(_TASKS_TO_RUN_PG, dict(b_ids=list(task_ids)))]
        else:
            rows = [row for row in map(self.get_task_to_run, task_ids) if row is not None]
        return {row.id: row for row in rows}

    def dependents_of(self, task_ids: list[str]) -> dict[str, list[TaskRow]]:
        """:meth:`dependents` of several tasks, by the id of the task they depend on."""
        found: dict[str, list[TaskRow]] = {}
        if not self._postgresql:
            for task_id in task_ids:
                found[task_id] = self.dependents(task_id)
            return found
        by_upstream: dict[str, list[dict[str, Any]]] = {}
        for row in self._raw(_DEPENDENTS_OF_PG, dict(b_ids=list(task_ids))):
            by_upstream.setdefault(row.pop("ended_id"), []).append(row)
        for task_id in task_ids:
            found[task_id] = [row for row in _with_counts(by_upstream.get(task_id, []))
                              if row.status == Status.PENDING]
        return found

    def dependents(self, task_id: str) -> list[TaskRow]:
        """The PENDING tasks depending on ``task_id``, each with how many upstream tasks
        it has (``upstream_count``) and how many of them succeeded, failed or were
        skipped (``upstream_succeeded``, ``upstream_failed``, ``upstream_skipped``)."""
        return [row for row in _with_counts(self._read(_DEPENDENTS, dict(b_id=task_id)))
                if row.status == Status.PENDING]

    def pending_tasks(self, operation_id: str) -> list[TaskRow]:
        """The operation's PENDING tasks, with the upstream counts of :meth:`dependents`."""
        return _with_counts(self._read(_PENDING_WITH_UPSTREAM, dict(b_id=operation_id)))

    def upstream(self, task_id: str) -> list[dict[str, Any]]:
        """The tasks ``task_id`` depends on (``id``, ``name``, ``position``, ``status``,
        ``result``), in their operation's order."""
        return self._read(_UPSTREAM, dict(b_id=task_id))

    @contextmanager
    def deferred_queue(self) -> Iterator[None]:
        """Within the block, :meth:`queue_with_message` only notes what to queue (True for
        a task not noted yet, as if it was queued); at its end, every noted task is queued
        by one statement (on PostgreSQL) and its outbox row added to :attr:`queued`. Safe
        where a False would only have meant "another transition queued it": the
        compare-and-set still decides, and only a task it queued gets its message."""
        self._deferred = {}
        try:
            yield
            deferred, self._deferred = self._deferred, None
            self._queue_many(deferred)
        finally:
            self._deferred = None

    def _queue_many(self, deferred: dict[str, _Queued]) -> None:
        if not deferred:
            return
        if not self._postgresql:
            for task_id, (operation_id, topic, key, value, due_at, trace,
                          digest) in deferred.items():
                if not self.queue_with_message(task_id, operation_id, topic, key, value,
                                               due_at, trace, digest):
                    self.not_queued.add(operation_id)
            return
        now = time.time()
        items = list(deferred.items())
        rows = self._raw(_QUEUE_MANY_PG, dict(
            b_ids=[task_id for task_id, _ in items],
            b_operations=[item[0] for _, item in items], b_topics=[item[1] for _, item in items],
            b_keys=[item[2] for _, item in items], b_values=[item[3] for _, item in items],
            b_dues=[item[4] for _, item in items], b_traces=[item[5] for _, item in items],
            b_digests=[item[6] for _, item in items], b_now=now))
        by_key = {bytes(row["key"]): row["id"] for row in rows if row["key"] is not None}
        for _, (operation_id, topic, key, value, due_at, trace, _digest) in items:
            row_id = by_key.get(key or b"")
            if row_id is None:
                self.not_queued.add(operation_id)
                continue
            self.queued.append(OutboxRow(id=row_id, operation_id=operation_id,
                                         topic=topic, key=key, value=value,
                                         due_at=due_at, created_at=now, trace_context=trace))

    def queue_with_message(self, task_id: str, operation_id: str, topic: str,
                           key: bytes | None, value: bytes, due_at: float | None = None,
                           trace_context: str | None = None,
                           digest: str | None = None) -> bool:
        """:meth:`queue_task`, and when it queued the task, :meth:`add_outbox` its message:
        on PostgreSQL one statement (the compare-and-set and the insert in one round
        trip), elsewhere two. (Inside :meth:`deferred_queue`: noted, done at its end.)"""
        if self._deferred is not None and key == task_id.encode():
            if task_id in self._deferred:
                return False  # (noted already: the second of two transitions finding it ready)
            self._deferred[task_id] = (operation_id, topic, key, value, due_at, trace_context,
                                       digest)
            return True
        if self.connection.dialect.name != "postgresql":
            if not self.queue_task(task_id, digest):
                return False
            self.add_outbox(operation_id, topic, key, value, due_at, trace_context)
            return True
        now = time.time()
        cursor = self._dbapi().cursor()
        cursor.execute(_QUEUE_WITH_MESSAGE_PG, dict(b_id=task_id, b_operation=operation_id,
                                                     b_topic=topic, b_key=key, b_value=value,
                                                     b_now=now, b_due=due_at,
                                                     b_trace=trace_context, b_digest=digest))
        inserted = cursor.fetchone()
        cursor.close()
        if inserted is None:
            return False
        self.queued.append(OutboxRow(id=inserted[0], operation_id=operation_id, topic=topic,
                                     key=key, value=value, due_at=due_at, created_at=now,
                                     trace_context=trace_context))
        return True

    def queue_task(self, task_id: str, digest: str | None = None) -> bool:
        """Mark a PENDING task's next attempt queued, with the digest of its message's
        text; False if it was already (another transition found it ready
        first): the compare-and-set of a join."""
        return self._execute(_QUEUE, dict(b_id=task_id, b_digest=digest)) == 1

    def end_pending(self, task_id: str, status: str, now: float,
                    result: dict[str, Any] | None) -> bool:
        """End a PENDING task that never runs (SKIPPED, or FAILED for an upstream
        failure); False if it is not PENDING any more (a compare-and-set)."""
        task = schema.tasks.c
        ended: bool = self.connection.execute(
            update(schema.tasks).where(and_(task.id == task_id, task.status == Status.PENDING))
            .values(status=status, finished_at=now, result=result)).rowcount == 1
        if ended and self._deferred is not None and task_id in self._deferred:
            # noted to be queued: never, now (whoever noted it took the operation for
            # unfinished: deferred_queue()'s caller checks it again)
            self.not_queued.add(self._deferred.pop(task_id)[0])
        return ended

    def downstream_names(self, task_id: str) -> set[str]:
        """The names of the tasks that depend directly on ``task_id``."""
        return {row["name"] for row in self._read(
            select(_task.name).join(_dep, _dep.c.task_id == _task.id)
            .where(_dep.c.depends_on == task_id))}

    def failed_or_last(self, operation_id: str) -> list[dict[str, Any]]:
        """The operation's FAILED tasks and its last tasks (nothing depends on them):
        ``id``, ``status``, ``result``, in its order."""
        return self._read(_FAILED_OR_LAST, dict(b_id=operation_id))

    def unfinished(self, operation_id: str) -> bool:
        """True while a task of the operation is PENDING or RUNNING."""
        return bool(self._read(_UNFINISHED, dict(b_id=operation_id)))

    def get_tasks(self, operation_id: str) -> list[TaskRow]:
        """The tasks of an operation, in the order it built them."""
        return self._read_as(TaskRow, _GET_TASKS, dict(b_id=operation_id))

    def dependencies(self, operation_id: str) -> dict[str, set[str]]:
        """``{task_id: {ids it depends on}}`` for every task of the operation."""
        deps: dict[str, set[str]] = {}
        for row in self._read(_DEPENDENCIES, dict(b_id=operation_id)):
            deps.setdefault(row["task_id"], set()).add(row["depends_on"])
        return deps

    def reset_tasks(self, task_ids: list[str], keep_result: bool = False) -> None:
        """Make tasks PENDING again, to run anew (recover, run_from, run_one, a child run
        again): not queued, no sensor waiting, no result unless ``keep_result``."""
        if not task_ids:
            return
        # an attempt still running (a canceled operation's task, its body not done) ends
        # here: its worker's end, if it comes, is refused (the task's attempt moves on)
        self.connection.execute(
            update(schema.attempts)
            .where(and_(_attempt.task_id.in_(task_ids), _attempt.status == Status.RUNNING))
            .values(status=Status.CANCELED, finished_at=time.time(),
                    error="ended by a control (recover, run_from, run_one) while it ran: "
                          "the task was reset to run anew, and this attempt's end is not kept"))
        values: dict[str, Any] = dict(status=Status.PENDING, finished_at=None,
                                      queued_attempt=None, waiting_since=None, pokes=None,
                                      lease_expires_at=None)
        if not keep_result:
            values["result"] = None
        self.connection.execute(update(schema.tasks)
                                .where(schema.tasks.c.id.in_(task_ids)).values(**values))

    def update_task(self, task_id: str, **values: Any) -> None:
        self.connection.execute(update(schema.tasks).where(schema.tasks.c.id == task_id)
                                .values(**values))

    def claim_task(self, task_id: str, attempt: int, worker: str, lease_until: float,
                   now: float, taking_over: bool = True) -> bool:
        """Start attempt ``attempt + 1`` if the task is PENDING, or RUNNING with an expired
        lease or on this very worker (which is not running it any more: it is here).

        A compare-and-set on (status, attempt): of two workers racing for the
        same task, exactly one gets True. ``taking_over=False`` (the task was
        read PENDING) skips closing a RUNNING attempt that cannot exist.
        """
        params = dict(b_id=task_id, b_attempt=attempt, b_next=attempt + 1, b_worker=worker,
                      b_lease=lease_until, b_now=now)
        # a taken-over attempt ended when its worker stopped renewing
        error = (f"lease expired: its worker stopped; taken over by {worker}"
                 if taking_over else "")
        if self.connection.dialect.name == "postgresql":  # one round trip
            cursor = self._dbapi().cursor()
            cursor.execute(_CLAIM_PG_TAKING_OVER if taking_over else _CLAIM_PG,
                           dict(params, b_error=error) if taking_over else params)
            claimed = cursor.fetchone() is not None
            cursor.close()
            return claimed
        claimed = self._execute(_CLAIM, params) == 1
        if claimed:
            if taking_over:
                self._execute(_TAKEN_OVER, dict(b_id=task_id, b_attempt=attempt, b_now=now,
                                                b_error=error))
            self._execute(_NEW_ATTEMPT, params)
        return claimed

    def claim_pending(self, claims: list[tuple[str, int]], worker: str, lease_until: float,
                      now: float) -> set[str]:
        """:meth:`claim_task` of several PENDING tasks ``(task id, attempt)``, none taken
        over; the ids of those claimed."""
        if not claims:
            return set()
        if not self._postgresql:
            return {task_id for task_id, attempt in claims
                    if self.claim_task(task_id, attempt, worker, lease_until, now,
                                       taking_over=False)}
        claims = sorted(claims)  # (rows locked in one order: batches never deadlock)
        rows = self._raw(_CLAIM_PENDING_PG, dict(
            b_ids=[task_id for task_id, _ in claims], b_attempts=[a for _, a in claims],
            b_worker=worker, b_lease=lease_until, b_now=now))
        return {row["task_id"] for row in rows}

    def finish_attempts(self, ends: list[tuple[str, int, str, dict[str, Any] | None,
                                               str | None, str]], now: float) -> set[str]:
        """:meth:`finish_attempt` of several attempts ``(task id, attempt, status, result,
        error, task status)``; the ids of the tasks finished (the others were taken over
        meanwhile: nothing is written for them)."""
        if not ends:
            return set()
        if not self._postgresql:
            return {task_id for task_id, attempt, status, result, error, task_status in ends
                    if self.finish_attempt(task_id, attempt, status, result, now, error,
                                           task_status=task_status)}
        ends = sorted(ends, key=lambda end: end[0])  # (rows locked in one order)
        retry = [task_status == Status.PENDING for *_, task_status in ends]
        rows = self._raw(_FINISH_MANY_PG, dict(
            b_ids=[end[0] for end in ends], b_attempts=[end[1] for end in ends],
            b_task_statuses=[end[5] for end in ends],
            b_results=[None if again or end[3] is None else json.dumps(end[3])
                       for end, again in zip(ends, retry, strict=True)],
            b_finished=[None if again else now for again in retry],
            b_statuses=[end[2] for end in ends],
            b_retcodes=[None if end[3] is None else end[3].get("retcode") for end in ends],
            b_errors=[None if end[4] is None else safe_text(end[4], None) for end in ends],
            b_now=now))
        return {row["id"] for row in rows}

    def finish_poke(self, task_id: str, attempt: int, since: float) -> bool:
        """End attempt ``attempt`` of a sensor whose condition is not met yet without using
        it up: the task is PENDING again at the attempt before, its attempt row removed,
        ``pokes`` counted and ``waiting_since`` kept from the first poke. False if another
        worker took the task over meanwhile: nothing is written."""
        task = schema.tasks.c
        done = self.connection.execute(
            update(schema.tasks)
            .where(and_(task.id == task_id, task.attempt == attempt,
                        task.status == Status.RUNNING))
            .values(status=Status.PENDING, attempt=attempt - 1, lease_expires_at=None,
                    queued_attempt=None, waiting_since=func.coalesce(task.waiting_since, since),
                    pokes=func.coalesce(task.pokes, 0) + 1)).rowcount == 1
        if done:
            self.connection.execute(delete(schema.attempts).where(
                and_(_attempt.task_id == task_id, _attempt.number == attempt)))
        return done

    def renew_lease(self, task_id: str, attempt: int, lease_until: float) -> bool:
        """Extend the lease of a RUNNING attempt; False if it is no longer ours."""
        return self._execute(_RENEW, dict(b_id=task_id, b_attempt=attempt,
                                          b_lease=lease_until)) == 1

    def finish_attempt(self, task_id: str, attempt: int, status: str,
                       result: dict[str, Any] | None,
                       now: float, error: str | None, task_status: str | None = None) -> bool:
        """Record the end of attempt ``attempt`` (``status``) and the task's new status
        (``task_status``, default the same; PENDING for a retry, whose result is not kept).

        False if another worker took the task over meanwhile: nothing is written.
        """
        task_status = task_status or status
        retry = task_status == Status.PENDING
        retcode = None if result is None else result.get("retcode")
        error = None if error is None else safe_text(error, None)
        if self.connection.dialect.name == "postgresql":  # one round trip
            cursor = self._dbapi().cursor()
            cursor.execute(_FINISH_PG, dict(
                b_id=task_id, b_attempt=attempt, b_task_status=task_status,
                b_result=None if retry or result is None else json.dumps(result),
                b_finished=None if retry else now, b_status=status, b_now=now,
                b_retcode=retcode, b_error=error))
            count: int = cursor.fetchone()[0]
            cursor.close()
            return count == 1
        finished = self._execute(_FINISH_TASK, dict(
            b_id=task_id, b_attempt=attempt, b_status=task_status,
            b_result=None if retry else result, b_finished=None if retry else now)) == 1
        if finished:
            self._execute(_FINISH_ATTEMPT, dict(
                b_id=task_id, b_attempt=attempt, b_status=status, b_now=now,
                b_retcode=retcode, b_error=error))
        return finished

    def add_logs(self, task_id: str, attempt: int, lines: Iterable[tuple[float, int, str]]) -> None:
        """Store an attempt's log lines: at most :data:`MAX_LOG_LINES`, each cut at
        :data:`MAX_LOG_LINE` characters, made safe for a text column."""
        self.add_logs_many([(task_id, attempt, lines)])

    def add_logs_many(self, logs: Iterable[tuple[str, int, Iterable[tuple[float, int, str]]]]
                      ) -> None:
        """:meth:`add_logs` of several attempts ``(task id, attempt, lines)``, in one
        statement."""
        rows: list[dict[str, Any]] = []
        for task_id, attempt, lines in logs:
            rows.extend(_log_rows(task_id, attempt, list(lines)))
        if rows:
            self.connection.execute(schema.task_logs.insert(), rows)

    def get_logs(self, task_id: str) -> list[LogRow]:
        """The log lines of a task, every attempt's, in the order they were written."""
        return self._read_as(LogRow, select(schema.task_logs)
                             .where(schema.task_logs.c.task_id == task_id)
                             .order_by(schema.task_logs.c.id))

    def get_attempts(self, task_id: str) -> list[AttemptRow]:
        """The attempts of a task, first first."""
        return self._read_as(AttemptRow, select(schema.attempts)
                             .where(schema.attempts.c.task_id == task_id)
                             .order_by(schema.attempts.c.number))

    def expired_tasks(self, now: float, lease: float) -> list[TaskRow]:
        """RUNNING tasks of RUNNING operations whose lease is past (their worker stopped)
        and that no sweep re-sent in the last ``lease`` seconds; each is marked re-sent."""
        task, op = schema.tasks.c, schema.operations.c
        expired = self._read_as(TaskRow, select(schema.tasks).join(
            schema.operations, op.id == task.operation_id).where(
            and_(task.status == Status.RUNNING, task.lease_expires_at < now,
                 op.status == Status.RUNNING,
                 or_(task.resent_at.is_(None), task.resent_at < now - lease))))
        if expired:
            self.connection.execute(update(schema.tasks)
                                    .where(task.id.in_([row.id for row in expired]))
                                    .values(resent_at=now))
        return expired

    def ended_children(self, now: float, lease: float) -> list[OperationRow]:
        """Child operations that ended while their parent's task still waits for them
        (its child_ended message lost, or dead-lettered), and that no sweep told again
        in the last ``lease`` seconds; each parent's task is marked told."""
        task, child = schema.tasks.c, schema.operations.c
        ended = self._read_as(OperationRow, select(schema.operations).join(
            schema.tasks, task.id == child.parent_task_id).where(and_(
                child.status.in_(FINAL_STATUSES), task.status == Status.RUNNING,
                task.lease_expires_at.is_(None), child.finished_at < now - lease,
                or_(task.resent_at.is_(None), task.resent_at < now - lease))))
        if ended:
            self.connection.execute(update(schema.tasks)
                                    .where(task.id.in_([row.id for row in ended]))
                                    .values(resent_at=now))
        return ended

    def end_orphaned_tasks(self, now: float) -> int:
        """RUNNING tasks whose lease is past in operations that already ended (canceled,
        failed): their worker stopped and nothing may take them over. Each becomes
        CANCELED, its attempt FAILED; returns how many."""
        task, op = schema.tasks.c, schema.operations.c
        orphans = self._read(
            select(task.id, task.attempt, op.status.label("operation_status"))
            .join(schema.operations, op.id == task.operation_id)
            .where(and_(task.status == Status.RUNNING, task.lease_expires_at < now,
                        op.status != Status.RUNNING)))
        for orphan in orphans:
            task_id, attempt, op_status = (orphan["id"], orphan["attempt"],
                                           orphan["operation_status"])
            self.connection.execute(update(schema.tasks).where(task.id == task_id)
                                    .values(status=Status.CANCELED, finished_at=now,
                                            lease_expires_at=None))
            self.connection.execute(
                update(schema.attempts)
                .where(and_(_attempt.task_id == task_id, _attempt.number == attempt,
                            _attempt.status == Status.RUNNING))
                .values(status=Status.FAILED, finished_at=now,
                        error=f"lease expired: its worker stopped after the operation "
                              f"was {op_status}; not taken over"))
        return len(orphans)

    # -- outbox ------------------------------------------------------------------------

    def operations_with_unsent(self, before: float, now: float,
                               most: int | None = None) -> set[str]:
        """Operations with unsent rows: due ones, and undelayed ones created before
        ``before`` (the ``most`` whose rows waited longest); never rows refused for good."""
        box = schema.outbox.c
        query = (select(box.operation_id)
                 .where(and_(box.sent_at.is_(None), box.failed_at.is_(None),
                             or_(box.due_at <= now,
                                 and_(box.due_at.is_(None), box.created_at < before))))
                 .group_by(box.operation_id))
        if most is not None:
            query = query.order_by(func.min(box.id)).limit(most)
        return {row["operation_id"] for row in self._read(query)}

    def add_outbox(self, operation_id: str | None, topic: str, key: bytes | None,
                   value: bytes, due_at: float | None = None,
                   trace_context: str | None = None) -> None:
        """Queue a message (see :attr:`queued`); with ``due_at`` not sent before that time;
        ``trace_context``: what its record's headers will carry (see kser.tracing)."""
        now = time.time()
        (inserted,) = self._read(_ADD_OUTBOX, dict(
            b_operation=operation_id, b_topic=topic, b_key=key, b_value=value,
            b_now=now, b_due=due_at, b_trace=trace_context))
        self.queued.append(OutboxRow(id=inserted["id"], operation_id=operation_id, topic=topic,
                                     key=key, value=value, due_at=due_at, created_at=now,
                                     trace_context=trace_context))

    def unsent(self, operation_id: str, now: float | None = None) -> list[OutboxRow]:
        """The operation's unsent messages that are due (all of them when ``now`` is None)."""
        box = schema.outbox.c
        query = select(schema.outbox).where(and_(box.operation_id == operation_id,
                                                 box.sent_at.is_(None),
                                                 box.failed_at.is_(None)))
        if now is not None:
            query = query.where(or_(box.due_at.is_(None), box.due_at <= now))
        return self._read_as(OutboxRow, query.order_by(box.id))

    def count_unsent(self, now: float) -> tuple[int, int]:
        """How many messages of the outbox are not produced yet: (due, due later)."""
        box = schema.outbox.c
        due = or_(box.due_at.is_(None), box.due_at <= now)
        rows = self._read(select(func.count().filter(due).label("due"),
                                 func.count().filter(~due).label("later"))
                          .where(and_(box.sent_at.is_(None), box.failed_at.is_(None))))
        return int(rows[0]["due"] or 0), int(rows[0]["later"] or 0)

    def mark_sent(self, ids: list[int]) -> None:
        if ids:
            now = time.time()
            sql, order, _literals, _json = _compiled(_MARK_SENT, self.connection.dialect)
            rows = [dict(b_id=row_id, b_now=now) for row_id in ids]
            cursor = self._dbapi().cursor()
            cursor.executemany(sql, [[row[name] for name in order] for row in rows]
                               if order is not None else rows)
            cursor.close()

    def send_failed(self, refused: Iterable[tuple[OutboxRow, str]],
                    retry: Iterable[tuple[OutboxRow, str]], worker: str, now: float) -> list[
                        tuple[OutboxRow, str]]:
        """Outbox rows whose send failed: those ``refused`` for good are never sent again
        and each is kept once as a dead letter (topic: the row's, partition -1, offset:
        the row's id); those to ``retry`` wait a while longer, doubling with each failure
        (:data:`OUTBOX_MIN_BACKOFF` up to :data:`OUTBOX_MAX_BACKOFF`). Returns the rows
        marked refused here (not sent or refused meanwhile)."""
        box = schema.outbox.c
        marked = []
        for row, error in refused:
            if self.connection.execute(
                    update(schema.outbox)
                    .where(and_(box.id == row.id, box.sent_at.is_(None), box.failed_at.is_(None)))
                    .values(failed_at=now, error=error)).rowcount != 1:
                continue
            marked.append((row, error))
            self.add_dead_letter(dict(
                topic=row.topic, partition=-1, offset=row.id, key=row.key, value=row.value,
                headers=[["kser-operation", base64.b64encode(
                    (row.operation_id or "").encode()).decode()]],
                error=f"kser could not send this message of operation {row.operation_id}: "
                      f"the broker refused it for good ({error})",
                worker=worker, created_at=now))
        for row, error in retry:
            tries = (row.tries or 0) + 1
            delay = min(OUTBOX_MAX_BACKOFF, OUTBOX_MIN_BACKOFF * 2 ** (tries - 1))
            self.connection.execute(
                update(schema.outbox).where(and_(box.id == row.id, box.sent_at.is_(None)))
                .values(tries=tries, error=error,
                        due_at=max(now + delay, row.due_at or 0.0)))
        return marked

    # -- dead letters ------------------------------------------------------------------

    def add_dead_letter(self, row: dict[str, Any]) -> int:
        """Keep a dead letter; the id of its row (the existing one when the same record,
        by topic, partition and offset, was stored before)."""
        letters = schema.dead_letters.c
        where = and_(letters.topic == row["topic"], letters.partition == row["partition"],
                     letters.offset == row["offset"])
        found = self._read(select(letters.id).where(where))
        if found:
            return int(found[0]["id"])
        return int(self.connection.execute(
            schema.dead_letters.insert().values(**row).returning(letters.id)).scalar_one())

    def dead_letters(self, topics: Iterable[str] | None = None,
                     replayed: bool | None = None) -> list[DeadLetterRow]:
        """Dead letters in the store (of ``topics``; only replayed or unreplayed ones)."""
        letters = schema.dead_letters.c
        query = select(schema.dead_letters).order_by(letters.id)
        if topics is not None:
            query = query.where(letters.topic.in_(list(topics)))
        if replayed is not None:
            query = query.where(letters.replayed_at.is_not(None) if replayed
                                else letters.replayed_at.is_(None))
        return self._read_as(DeadLetterRow, query)

    def mark_replayed(self, letter_id: int, now: float) -> None:
        self.connection.execute(update(schema.dead_letters)
                                .where(schema.dead_letters.c.id == letter_id)
                                .values(replayed_at=now))

    # -- retention ---------------------------------------------------------------------

    def purge(self, now: float) -> int:
        """Delete finished operations whose TTL strategy says they expired; return how many."""
        op = schema.operations.c
        parent = schema.operations.alias("parent")
        candidates = self._read(
            select(op.id, op.status, op.finished_at, op.ttl_strategy)
            .where(and_(op.status.in_(FINAL_STATUSES), op.finished_at.is_not(None),
                        op.ttl_strategy.is_not(None),
                        # a child stays while its parent runs (its parent's task reads it)
                        ~select(parent.c.id).where(and_(
                            parent.c.id == op.parent_operation_id,
                            parent.c.status == Status.RUNNING)).exists())))
        expired = [row["id"] for row in candidates
                   if _expired(row["status"], row["finished_at"], row["ttl_strategy"], now)]
        self.delete_operations(expired)
        return len(expired)

    def delete_operations(self, operation_ids: list[str]) -> None:
        """Delete operations with their tasks, dependencies, attempts, logs and outbox rows
        (the caller checked they are finished)."""
        op = schema.operations.c
        for chunk in range(0, len(operation_ids), 500):
            ids = operation_ids[chunk:chunk + 500]
            task_ids = select(schema.tasks.c.id).where(schema.tasks.c.operation_id.in_(ids))
            for table in (schema.task_logs, schema.attempts):
                self.connection.execute(delete(table).where(table.c.task_id.in_(task_ids)))
            self.connection.execute(delete(schema.task_dependencies)
                                    .where(schema.task_dependencies.c.task_id.in_(task_ids)))
            self.connection.execute(delete(schema.outbox)
                                    .where(schema.outbox.c.operation_id.in_(ids)))
            self.connection.execute(delete(schema.tasks)
                                    .where(schema.tasks.c.operation_id.in_(ids)))
            self.connection.execute(delete(schema.operations).where(op.id.in_(ids)))

    # -- what the control plane reads ------------------------------------------------------

    def list_operations(self, *, status: str | None = None, entrypoint: str | None = None,
                        created_after: float | None = None,
                        created_before: float | None = None, search: str | None = None,
                        after: tuple[float, str] | None = None,
                        limit: int = 50) -> list[OperationRow]:
        """Operations, newest first (by creation time, then id), filtered: ``status``,
        ``entrypoint`` (exact), created in ``[created_after, created_before)``,
        ``search`` (a part of the id or entrypoint); ``after``: the ``(created_at, id)``
        of the last one of the previous page."""
        op = schema.operations.c
        query = select(schema.operations)
        if status is not None:
            query = query.where(op.status == status)
        if entrypoint is not None:
            query = query.where(op.entrypoint == entrypoint)
        if created_after is not None:
            query = query.where(op.created_at >= created_after)
        if created_before is not None:
            query = query.where(op.created_at < created_before)
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace(
                "_", "\\_") + "%"
            query = query.where(or_(op.id.like(pattern, escape="\\"),
                                    op.entrypoint.like(pattern, escape="\\")))
        if after is not None:
            query = query.where(or_(op.created_at < after[0],
                                    and_(op.created_at == after[0], op.id < after[1])))
        return self._read_as(OperationRow, query.order_by(op.created_at.desc(), op.id.desc())
                             .limit(limit))

    def descendant_operations(self, operation_id: str) -> list[OperationRow]:
        """The sub-operations of an operation, theirs, and so on (children first)."""
        found: list[OperationRow] = []
        parents = [operation_id]
        while parents:
            children = self._read_as(OperationRow, select(schema.operations).where(
                schema.operations.c.parent_operation_id.in_(parents)))
            found += children
            parents = [child.id for child in children]
        return found

    # -- schedules ----------------------------------------------------------------------

    def schedule_states(self, names: Iterable[str]) -> dict[str, ScheduleRow]:
        """The rows of the schedules named ``names`` that exist, by name."""
        names = list(names)
        if not names:
            return {}
        rows = self._read_as(ScheduleRow, select(schema.schedules)
                             .where(schema.schedules.c.name.in_(names)))
        return {row.name: row for row in rows}

    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule a scheduler wrote, by name."""
        return self._read_as(ScheduleRow, select(schema.schedules)
                             .order_by(schema.schedules.c.name))

    def save_schedule(self, row: dict[str, Any], handled_until: float,
                      launched: tuple[float, str] | None = None, reset: bool = False) -> None:
        """Write a schedule's definition and next fire, what it handled (never moved
        back, two schedulers writing in turn, unless ``reset``: it was ahead of the
        clock), and its last launch (fire, operation id)."""
        c = schema.schedules.c
        values = dict(row)
        if launched is not None:
            values.update(last_fire_at=launched[0], last_operation_id=launched[1])
        moved = dict(values, handled_until=handled_until if reset else case(
            (c.handled_until > handled_until, c.handled_until), else_=handled_until))
        if launched is not None:  # (nor the last launch)
            moved.update(
                last_fire_at=case((c.last_fire_at > launched[0], c.last_fire_at),
                                  else_=launched[0]),
                last_operation_id=case((c.last_fire_at > launched[0], c.last_operation_id),
                                       else_=launched[1]))
        statement = update(schema.schedules).where(c.name == row["name"]).values(**moved)
        if self.connection.execute(statement).rowcount:
            return
        insert = (sqlite_insert if self.connection.dialect.name == "sqlite"
                  else postgresql_insert)(schema.schedules)
        inserted = self.connection.execute(insert.values(
            **values, handled_until=handled_until).on_conflict_do_nothing())
        if not inserted.rowcount:  # (another scheduler's row came first)
            self.connection.execute(statement)

    def count_operations(self) -> dict[str, int]:
        """How many operations the store holds, by status."""
        op = schema.operations.c
        return {row["status"]: row["n"] for row in self._read(
            select(op.status, func.count().label("n")).group_by(op.status))}


def _rows(cursor: Any) -> list[dict[str, Any]]:
    """The rows of an executed DB-API cursor (then closed), as dicts of their columns, the
    JSON columns decoded (SQLite gives their text; psycopg decodes JSON itself)."""
    names = [column[0] for column in cursor.description]
    json_names = [name for name in names if name in _JSON_COLUMNS]
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



class Store:
    """The database of operations, tasks and the outbox.

    A SQLite file is watched: if it is removed or replaced while open, the next
    transaction raises :class:`~kser.errors.WorkerFatalError` (writes would go to
    a file nobody will ever read). After a transient error (a lost connection, a
    locked or read-only database), every pooled connection is renewed, so the store
    recovers as soon as the database does.

    :param url: SQLAlchemy URL, e.g. ``sqlite:///kser.db`` or
        ``postgresql+psycopg://kser:kser@127.0.0.1:5432/kser``
    :raises StoreError: the store cannot be opened, with what to check
    """

    def __init__(self, url: str, connections: int = 5):
        """:param connections: connections kept open (as many as the threads that use
            the store at once: a worker's task threads, its lease renewal, its main
            thread); more are opened when needed, and closed after use"""
        self.url = url
        #: the schema versions before and after the migrations this store applied when
        #: it was opened (see :mod:`kser.store.migrations`)
        self.migrated: tuple[int, int] = (0, 0)
        try:
            self.engine = _create_engine(_checked_url(url), max(1, connections))
            self.migrated = migrate(self.engine)
        except StoreError:
            raise
        except Exception as exc:
            reason = " ".join(safe_text(getattr(exc, "orig", None) or exc).split())
            raise StoreError(f"the store {_hide_password(url)} cannot be used: {reason}; check "
                             f"KSER_STORE_URL ({SUPPORTED_STORES})") from exc
        self._watched = _sqlite_file(self.engine)
        self._identity = _identity(self._watched) if self._watched else None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction, committed when the block ends, rolled back if it raises."""
        if self._watched is not None:
            self.check_file()
        try:
            with self.engine.begin() as connection:
                yield Tx(connection)
        except Exception as exc:
            if is_transient(exc):
                # a connection that saw the database fail may keep failing after it is
                # fine again (SQLite keeps a read-only state): renew every one
                self.engine.dispose()
            raise

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A transaction that only reads (on SQLite it takes no write lock: the workers'
        transactions never wait for it); rolled back when the block ends."""
        if self._watched is not None:
            self.check_file()
        with self.engine.connect() as connection:
            connection.execution_options(kser_read_only=True)
            with connection.begin() as transaction:
                yield Tx(connection)
                transaction.rollback()

    def check_file(self) -> None:
        """Raise :class:`~kser.errors.WorkerFatalError` if the SQLite file this store
        opened was removed or replaced (a no-op for other stores)."""
        if self._watched is None:
            return
        identity = _identity(self._watched)
        if identity == self._identity:
            return
        change = "removed" if identity is None else "replaced by another file"
        raise WorkerFatalError(
            f"the SQLite store {self._watched} was {change} while in use: stopping, as "
            "writes would go to a file nobody reads; put the file back (or point "
            "KSER_STORE_URL at the right one) and restart")

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)})"


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _sqlite_file(engine: Engine) -> str | None:
    """The path of a SQLite file database (None for in-memory ones and other databases)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:"):
        return None
    return os.path.abspath(url.database)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


#: the databases kser stores in, as said to a user whose URL names another
SUPPORTED_STORES = ("SQLite, sqlite:///path/to/kser.db (one machine), or PostgreSQL, "
                    "postgresql+psycopg://user:password@host/db (pip install "
                    "'kser[postgres]'; many machines)")


def _checked_url(url: str) -> str:
    """``url``, its driver made psycopg 3 for a bare ``postgresql://``; refuse, saying what
    is supported, a URL naming a database kser does not store in; create the folder of
    a SQLite file (its state directory) when it is missing."""
    try:
        parsed = make_url(url)
    except Exception:
        raise StoreError(f"the store URL {_hide_password(url)!r} is not a database URL: "
                         f"kser stores in {SUPPORTED_STORES}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):  # (postgres://: libpq's and Heroku's spelling)
        if driver not in ("", "psycopg"):
            raise StoreError(f"the store URL {_hide_password(url)} names the driver {driver}: "
                             "kser uses psycopg 3, postgresql+psycopg://user:password@host/db")
        return parsed.set(drivername="postgresql+psycopg").render_as_string(
            hide_password=False)
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"the store URL {_hide_password(url)} names {backend}, which kser "
                         f"does not store in: use {SUPPORTED_STORES}")
    database = parsed.database or ""
    if backend == "sqlite" and (database in ("", ":memory:") or "mode=memory" in url):
        raise StoreError(f"the store URL {url} is an in-memory SQLite database, which each "
                         "connection of the pool would see empty: use a file, "
                         "sqlite:///path/to/kser.db")
    if backend == "sqlite" and not database.startswith("file:"):
        folder = os.path.dirname(database)
        if folder and not os.path.isdir(folder):
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"the folder of the SQLite store {database} cannot be "
                                 f"created ({exc.strerror}): check KSER_STORE_URL") from None
    return url


#: longest wait for another process switching a new SQLite file to WAL mode, seconds
WAL_SWITCH_TIMEOUT = 30.0


def _use_wal(cursor: Any) -> None:
    """Put the SQLite file in WAL mode (it stays so). Two processes opening a new file
    at once (two workers started together) may both try to switch it, and SQLite then
    answers "database is locked" at once, without waiting its busy timeout: wait for the
    other one instead (found by the dice example's two consumers)."""
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


#: seconds a pooled PostgreSQL connection may sit idle before it is pinged on its next use
PING_AFTER_IDLE = 2.0


def _create_engine(url: str, connections: int = 5) -> Engine:
    if url.startswith("sqlite"):
        # a pool of open connections: opening one costs its PRAGMAs, and closing the last
        # one checkpoints the WAL (an fsync) -- both per transaction with no pool
        # (no rollback on check-in: every checkout is a transaction() that ended with
        # COMMIT or ROLLBACK, and a rollback per transaction costs a call into SQLite)
        # (last in, first out: a thread's next transaction gets the connection it just
        # returned, whose page cache is still valid; first in, first out rotated through
        # them all, each reading again what another had written since its last use)
        engine = create_engine(url, poolclass=QueuePool, pool_size=connections, max_overflow=5,
                               pool_reset_on_return=None, pool_use_lifo=True,
                               connect_args={"timeout": 60, "isolation_level": None,
                                             "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_settings(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # take the write lock at BEGIN: two writers never deadlock on a lock upgrade
            # (on the DB-API connection: SQLAlchemy's execution path cost more than it)
            sqlite: Any = connection.connection.dbapi_connection  # a sqlite3.Connection
            read_only = connection.get_execution_options().get("kser_read_only")
            sqlite.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    # (last in, first out, as SQLite's: its statements prepared, its backend's caches warm)
    engine = create_engine(url, pool_size=connections, max_overflow=5, pool_use_lifo=True)

    # A connection is pinged before use only after it sat idle (the server may have
    # restarted meanwhile): a ping at every checkout was a round trip per transaction,
    # a tenth of a hop's time. One that fails the ping is replaced at once; one that
    # breaks mid-transaction fails it with a transient error, and the pool is renewed.
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["kser_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("kser_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection lost: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection lost")

    return engine
