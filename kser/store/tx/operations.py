"""Operations: stored, read (locked for a transition), updated, listed for the control plane,
purged."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kser.errors import OperationGoneError
from kser.status import FINAL_STATUSES, Status
from kser.store import queries as q
from kser.store import schema
from kser.store.rows import (
    OperationRow,
    OperationState,
)
from kser.store.tx.base import (
    TxBase,
    _expired,
)

logger = logging.getLogger("kser.store.store")  # (the name its lines always had)


class OperationQueries(TxBase):
    """Operations: stored, read (locked for a transition), updated, listed for the control plane,
    purged."""

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
                             .where(q.OP.idempotency_key == key))
        return rows[0] if rows else None

    def get_operation(self, operation_id: str, lock: bool = False) -> OperationRow | None:
        return self._first_as(OperationRow, q.GET_OPERATION_LOCKED if lock else q.GET_OPERATION,
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
            OperationState, q.GET_OPERATION_STATE, dict(b_id=operation_id))
        if state is None:
            raise OperationGoneError(f"operation {operation_id} is not in the store any more "
                                "(purged or deleted meanwhile)")
        return state

    def operation_states(self, operation_ids: Iterable[str]) -> dict[str, OperationState]:
        """:meth:`operation_state` of several operations (those in the store), locked in
        id order; later calls of :meth:`operation_state` in this transaction use them (one
        operation: the hop's prepared statement, not an array)."""
        ids = sorted(set(operation_ids))
        if self._postgresql and len(ids) > 1:
            states = [OperationState.from_row(row)
                      for row in self._raw(q.OPERATION_STATES_PG, dict(b_ids=ids))]
        else:
            states = [state for state in (self._first_as(
                OperationState, q.GET_OPERATION_STATE, dict(b_id=operation_id))
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

    def count_operations(self) -> dict[str, int]:
        """How many operations the store holds, by status."""
        op = schema.operations.c
        return {row["status"]: row["n"] for row in self._read(
            select(op.status, func.count().label("n")).group_by(op.status))}
