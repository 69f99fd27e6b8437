"""The outbox (what transitions queued, until Kafka took it) and the dead letters kept
in the store."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from kser.store import queries as q
from kser.store import schema
from kser.store.rows import (
    DeadLetterRow,
    OutboxRow,
)
from kser.store.tx.base import (
    OUTBOX_MAX_BACKOFF,
    OUTBOX_MIN_BACKOFF,
    TxBase,
    _compiled,
)

logger = logging.getLogger("kser.store.store")  # (the name its lines always had)


class OutboxQueries(TxBase):
    """The outbox (what transitions queued, until Kafka took it) and the dead letters kept in the
    store."""

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
        (inserted,) = self._read(q.ADD_OUTBOX, dict(
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
        """Mark outbox rows sent (PostgreSQL: several in one statement)."""
        if len(ids) > 1 and self._postgresql:
            self._raw(q.MARK_SENT_MANY_PG, dict(b_ids=sorted(ids), b_now=time.time()))
        elif ids:
            now = time.time()
            sql, order, _literals, _json = _compiled(q.MARK_SENT, self.connection.dialect)
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
