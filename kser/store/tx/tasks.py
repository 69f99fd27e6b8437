"""Tasks and their dependencies: stored, read with their upstream counts, queued (the compare-and-
set of a join) with their message, reset."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, select, update

from kser.status import Status
from kser.store import queries as q
from kser.store import schema
from kser.store.rows import (
    OutboxRow,
    TaskRow,
)
from kser.store.tx.base import (
    _Queued,
    _with_counts,
)
from kser.store.tx.outbox import OutboxQueries

logger = logging.getLogger("kser.store.store")  # (the name its lines always had)


class TaskQueries(OutboxQueries):  # (a task is queued with its message, in the outbox)
    """Tasks and their dependencies: stored, read with their upstream counts, queued (the
    compare-and-set of a join) with their message, reset."""

    def insert_tasks(self, rows: list[dict[str, Any]], dependencies: list[tuple[str, str]]) -> None:
        """Insert tasks and their ``(task_id, depends_on)`` dependencies (PostgreSQL: each
        table's rows in one statement from arrays; SQLite, in process, row by row)."""
        if self._postgresql and len(rows) > 1 and all(
                set(row) == set(q.TASK_COLUMNS) for row in rows):
            values = {f"b_{name}": [row[name] for row in rows] for name in q.TASK_COLUMNS}
            for name in ("params", "metadata"):  # (None as JSON null, as SQLAlchemy does)
                values[f"b_{name}"] = [json.dumps(value) for value in values[f"b_{name}"]]
            self._dbapi().cursor().execute(q.INSERT_TASKS_PG, values, prepare=False)
        elif rows:
            self.connection.execute(schema.tasks.insert(), rows)
        if self._postgresql and len(dependencies) > 1:
            self._dbapi().cursor().execute(q.INSERT_DEPENDENCIES_PG, dict(
                b_ids=[task for task, _ in dependencies],
                b_depends=[upstream for _, upstream in dependencies]), prepare=False)
        elif dependencies:
            self.connection.execute(schema.task_dependencies.insert(),
                                    [dict(task_id=t, depends_on=d) for t, d in dependencies])

    def get_task(self, task_id: str) -> TaskRow | None:
        return self._first_as(TaskRow, q.GET_TASK, dict(b_id=task_id))

    def get_task_to_run(self, task_id: str) -> TaskRow | None:
        """A task with its operation's status (``operation_status``), in one read."""
        return self._first_as(TaskRow, q.GET_TASK_TO_RUN, dict(b_id=task_id))

    def tasks_to_run(self, task_ids: list[str]) -> dict[str, TaskRow]:
        """:meth:`get_task_to_run` of several tasks (those in the store), by id (one task:
        the hop's prepared statement, not an array)."""
        if self._postgresql and len(task_ids) > 1:
            rows = [TaskRow.from_row(row)
                    for row in self._raw(q.TASKS_TO_RUN_PG, dict(b_ids=list(task_ids)))]
        else:
            rows = [row for row in map(self.get_task_to_run, task_ids) if row is not None]
        return {row.id: row for row in rows}

    def dependents_of(self, task_ids: list[str]) -> dict[str, list[TaskRow]]:
        """:meth:`dependents` of several tasks, by the id of the task they depend on (one
        task: the hop's prepared statement, not an array)."""
        found: dict[str, list[TaskRow]] = {}
        if not self._postgresql or len(task_ids) == 1:
            for task_id in task_ids:
                found[task_id] = self.dependents(task_id)
            return found
        by_upstream: dict[str, list[dict[str, Any]]] = {}
        for row in self._raw(q.DEPENDENTS_OF_PG, dict(b_ids=list(task_ids))):
            by_upstream.setdefault(row.pop("ended_id"), []).append(row)
        for task_id in task_ids:
            found[task_id] = [row for row in _with_counts(by_upstream.get(task_id, []))
                              if row.status == Status.PENDING]
        return found

    def dependents(self, task_id: str) -> list[TaskRow]:
        """The PENDING tasks depending on ``task_id``, each with how many upstream tasks
        it has (``upstream_count``) and how many of them succeeded, failed or were
        skipped (``upstream_succeeded``, ``upstream_failed``, ``upstream_skipped``)."""
        return [row for row in _with_counts(self._read(q.DEPENDENTS, dict(b_id=task_id)))
                if row.status == Status.PENDING]

    def pending_tasks(self, operation_id: str) -> list[TaskRow]:
        """The operation's PENDING tasks, with the upstream counts of :meth:`dependents`."""
        return _with_counts(self._read(q.PENDING_WITH_UPSTREAM, dict(b_id=operation_id)))

    def upstream(self, task_id: str) -> list[dict[str, Any]]:
        """The tasks ``task_id`` depends on (``id``, ``name``, ``position``, ``status``,
        ``result``), in their operation's order."""
        return self._read(q.UPSTREAM, dict(b_id=task_id))

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
        if not self._postgresql or len(deferred) == 1:  # (one: the hop's statement)
            for task_id, (operation_id, topic, key, value, due_at, trace,
                          digest) in deferred.items():
                if not self.queue_with_message(task_id, operation_id, topic, key, value,
                                               due_at, trace, digest):
                    self.not_queued.add(operation_id)
            return
        now = time.time()
        items = list(deferred.items())
        rows = self._raw(q.QUEUE_MANY_PG, dict(
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
        cursor.execute(q.QUEUE_WITH_MESSAGE_PG, dict(b_id=task_id, b_operation=operation_id,
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
        return self._execute(q.QUEUE, dict(b_id=task_id, b_digest=digest)) == 1

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
            select(q.TASK.name).join(q.DEP, q.DEP.c.task_id == q.TASK.id)
            .where(q.DEP.c.depends_on == task_id))}

    def failed_or_last(self, operation_id: str) -> list[dict[str, Any]]:
        """The operation's FAILED tasks and its last tasks (nothing depends on them):
        ``id``, ``status``, ``result``, in its order."""
        return self._read(q.FAILED_OR_LAST, dict(b_id=operation_id))

    def unfinished(self, operation_id: str) -> bool:
        """True while a task of the operation is PENDING or RUNNING."""
        return bool(self._read(q.UNFINISHED, dict(b_id=operation_id)))

    def get_tasks(self, operation_id: str) -> list[TaskRow]:
        """The tasks of an operation, in the order it built them."""
        return self._read_as(TaskRow, q.GET_TASKS, dict(b_id=operation_id))

    def dependencies(self, operation_id: str) -> dict[str, set[str]]:
        """``{task_id: {ids it depends on}}`` for every task of the operation."""
        deps: dict[str, set[str]] = {}
        for row in self._read(q.DEPENDENCIES, dict(b_id=operation_id)):
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
            .where(and_(q.ATTEMPT.task_id.in_(task_ids), q.ATTEMPT.status == Status.RUNNING))
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
