"""The outbox's publisher: every message a state change causes is written, in the same
transaction, to the store's outbox; this produces it and marks it sent once Kafka
acknowledged it (by the process's next transaction, so a hop pays no extra one)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from kser import tracing
from kser.controller import BaseProducer, RedoError, UndeliverableError
from kser.errors import is_transient, safe_text
from kser.store import OutboxRow, Store, Tx

logger = logging.getLogger(__name__)


class Outbox:
    """Publishes outbox rows and keeps the marks of the acknowledged ones.

    :param store: returns the store (opened on first use)
    :param producer: returns the producer (made on first use: the broker may be away)
    :param send_timeout: returns the seconds a publish waits for its acknowledgements
    """

    def __init__(self, store: Callable[[], Store], producer: Callable[[], BaseProducer],
                 send_timeout: Callable[[], float]) -> None:
        self._store, self._producer, self._send_timeout = store, producer, send_timeout
        #: outbox rows Kafka acknowledged, marked sent by the next transaction
        self._sent: list[int] = []
        self._sent_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A store transaction that also marks sent the rows acknowledged since the last one."""
        with self._sent_lock:
            sent, self._sent = self._sent, []
        try:
            with self._store().transaction() as tx:
                tx.mark_sent(sent)
                yield tx
        except BaseException:
            with self._sent_lock:
                self._sent.extend(sent)
            raise

    def flush_sent(self) -> None:
        """Mark sent, now, the outbox rows acknowledged since the last transaction."""
        if self._sent:
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
        (a crash, a refused send) is sent again by a sweep after ``UNSENT_GRACE``;
        its duplicate message changes nothing.

        :raises RedoError: the broker did not take them (they stay unsent)
        """
        if rows is None:
            with self.transaction() as tx:
                rows = tx.unsent(operation_id, now=time.time())
        else:
            now = time.time()
            rows = [row for row in rows if row.due_at is None or row.due_at <= now]
        if not rows:
            return 0
        try:
            producer = self._producer()  # (made on first use: the broker may be away)
            for row in rows:
                producer.send_raw(row.topic, row.value, row.key,
                                  tracing.produce_headers(row.topic, row.trace_context),
                                  on_delivery=self._delivery_of(row.id))
            if wait:
                producer.flush(timeout=self._send_timeout())
        except Exception as exc:
            if not is_transient(exc):  # sending it again would be refused again
                raise UndeliverableError(
                    f"follow-up messages of operation {operation_id} are refused by the "
                    f"broker ({safe_text(exc, 500)}); they stay unsent in the outbox",
                    extra=dict(uuid=operation_id)) from exc
            raise RedoError(f"follow-up messages of operation {operation_id} were not "
                            f"acknowledged: {safe_text(exc, 500)}") from exc
        return len(rows)

    def _delivery_of(self, row_id: int) -> Callable[[Exception | None], None]:
        def delivered(error: Exception | None) -> None:
            if error is None:
                with self._sent_lock:
                    self._sent.append(row_id)
            else:
                logger.warning("Outbox message %d not acknowledged (%s): a sweep sends it "
                               "again", row_id, error)
        return delivered
