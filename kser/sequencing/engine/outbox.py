"""The outbox's publisher: every message a state change causes is written, in the same
transaction, to the store's outbox; this produces it and marks it sent once Kafka
acknowledged it (by the process's next transaction, so a hop pays no extra one)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from kser import tracing
from kser.config import Settings
from kser.errors import UNACKNOWLEDGED_HINT, RedoError, is_transient, safe_text
from kser.producer import BaseProducer
from kser.store import OutboxRow, Store, Tx

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What the outbox reads from the engine's context."""

    @property
    def store(self) -> Store: ...

    @property
    def producer(self) -> BaseProducer: ...

    @property
    def settings(self) -> Settings: ...

    worker_name: str


class Outbox:
    """Publishes outbox rows and keeps the marks of the acknowledged and refused ones.

    A row the broker refuses for good (a topic it will not take, a record over its
    limit, a refused authorization) is sent once: it is kept as a dead letter and never
    sent again, and ``on_refused`` is called in the transaction that marks it (the
    sequencer fails the task it was for: the operation says why). A row the broker did
    not take for a while (it is away, a leader moves) waits before its next send,
    doubling each time (see :meth:`kser.store.Tx.send_failed`).

    :param engine: the engine's context (its store, producer, settings and worker name,
        each read when used: the store is opened, and the producer made, on first use)
    :param on_refused: called with the transaction, the row and why, for each row
        refused for good, as it is marked (set by the engine's transitions)
    """

    def __init__(self, engine: Engine,
                 on_refused: Callable[[Tx, OutboxRow, str], None] | None = None) -> None:
        self._engine = engine
        self.on_refused = on_refused
        #: outbox rows Kafka acknowledged, marked sent by the next transaction
        self._sent: list[int] = []
        #: rows whose send failed (for good, or for now), marked by the next transaction
        self._refused: list[tuple[OutboxRow, str]] = []
        self._retry: list[tuple[OutboxRow, str]] = []
        self._sent_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A store transaction that also marks the rows acknowledged (sent), refused or
        failed since the last one."""
        with self._sent_lock:
            sent, self._sent = self._sent, []
            refused, self._refused = self._refused, []
            retry, self._retry = self._retry, []
        try:
            if refused or retry:  # (in a transaction of their own: see _mark_failed)
                self._mark_failed(refused, retry)
                refused, retry = [], []
            with self._engine.store.transaction() as tx:
                tx.mark_sent(sent)
                yield tx
        except BaseException:
            with self._sent_lock:
                self._sent.extend(sent)
                self._refused.extend(refused)
                self._retry.extend(retry)
            raise

    def _mark_failed(self, refused: list[tuple[OutboxRow, str]],
                     retry: list[tuple[OutboxRow, str]]) -> None:
        """Mark the rows whose send failed, calling ``on_refused`` for those refused for
        good; should ``on_refused`` fail, they are marked without it (a failing callback
        must not fail every transaction that follows)."""
        for call in (self.on_refused, None):
            try:
                with self._engine.store.transaction() as tx:
                    for row, error in tx.send_failed(refused, retry, self._engine.worker_name,
                                                     time.time()):
                        logger.error("Outbox message %d of operation %s refused for good by "
                                     "the broker (%s): kept as a dead letter, never sent "
                                     "again", row.id, row.operation_id, error)
                        if call is not None:
                            call(tx, row, error)
                return
            except Exception as exc:
                if call is None or is_transient(exc):
                    raise
                logger.error("Outbox messages refused for good: what follows them could not "
                             "be decided (%s); they are marked refused alone",
                             safe_text(exc, 500))

    def flush_sent(self) -> None:
        """Mark, now, the outbox rows acknowledged or refused since the last transaction."""
        if self._sent or self._refused or self._retry:
            with self.transaction():
                pass

    def publish(self, operation_id: str, rows: Sequence[OutboxRow] | None = None,
                wait: bool = True) -> int:
        """Produce the operation's unsent outbox messages and mark them sent once acknowledged.

        :param rows: the rows to send, as the transaction that queued them returned them
            (default: read the operation's unsent ones). Rows with a due time are left
            to the sweep.
        :param wait: wait for the acknowledgements (False: a consumer's hop, whose
            checkpoint flushes the producer before it commits its offsets)

        Acknowledged rows are marked sent by this process's next transaction (or
        sweep, within ``sweep_interval``, or the worker's stop). A row never marked
        (a crash, a send that failed) is sent again by a sweep once due; its duplicate
        message changes nothing. A row refused for good is marked so, never sent again.

        :raises RedoError: the broker did not take them (those left stay unsent)
        """
        if rows is None:
            with self.transaction() as tx:
                rows = tx.unsent(operation_id, now=time.time())
        else:
            now = time.time()
            rows = [row for row in rows if row.due_at is None or row.due_at <= now]
        if not rows:
            return 0
        sent = 0
        try:
            producer = self._producer()  # (made on first use: the broker may be away)
            for row in rows:
                try:
                    producer.send_raw(row.topic, row.value, row.key,
                                      tracing.produce_headers(row.topic, row.trace_context),
                                      on_delivery=self._delivery_of(row))
                except Exception as exc:
                    if is_transient(exc):
                        raise  # (the broker is away: the other rows wait too)
                    self._failed(row, exc)  # (sending it again would be refused again)
                    continue
                sent += 1
            if wait and sent:
                producer.flush(timeout=self._engine.settings.send_timeout)
        except Exception as exc:
            raise RedoError(f"follow-up messages of operation {operation_id} were not "
                            f"acknowledged: {safe_text(exc, 500)} ({UNACKNOWLEDGED_HINT})"
                            ) from exc
        return sent

    def _producer(self) -> BaseProducer:
        return self._engine.producer

    def _failed(self, row: OutboxRow, error: Exception) -> None:
        """Note a send that failed, to be marked by the next transaction."""
        why = safe_text(f"{type(error).__name__}: {error}", 500)
        with self._sent_lock:
            (self._retry if is_transient(error) else self._refused).append((row, why))

    def _delivery_of(self, row: OutboxRow) -> Callable[[Exception | None], None]:
        def delivered(error: Exception | None) -> None:
            if error is None:
                with self._sent_lock:
                    self._sent.append(row.id)
            else:
                self._failed(row, error)
        return delivered
