"""Dead-lettering: a record that cannot be processed is kept, with why, and never loops.

A dead letter is the record's value and key, unchanged (a null value stays
null), with the record's own headers and kser's: ``kser-error``,
``kser-source-topic``, ``-partition``, ``-offset`` and ``kser-consumer``.

It goes to the dead-letter topic (``<topic>.dlq``, which the worker creates or
checks when it starts). Whatever the record holds, its copy can be sent:

* text going into headers is made valid UTF-8 (:func:`kser.errors.safe_text`),
  header values that are null become empty, keys that are not text are escaped;
* the copy always fits under ``KSER_MAX_MESSAGE_BYTES``: if the record was just
  under the limit, its value (then its own headers, then its key) is cut, the
  header ``kser-value-trimmed`` says from how many bytes, and the whole record
  is written to the store as well.

If the broker does not take the copy after :data:`KAFKA_TRIES` tries, or refuses
it for good, the dead letter goes to the store's ``kser_dead_letters`` table
(``kser dlq list|replay`` read it too). Only when neither the broker nor the
store takes it is the record processed again later, like any record whose
infrastructure failed: it is never dropped, and never loops on its content.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from kser import metrics
from kser.errors import is_transient, safe_text

if TYPE_CHECKING:
    from kser.config import Settings
    from kser.producer import BaseProducer
    from kser.record import Record
    from kser.store import Store

logger = logging.getLogger(__name__)

#: headers kser adds to a dead letter
DLQ_HEADERS = ("kser-error", "kser-source-topic", "kser-source-partition",
               "kser-source-offset", "kser-consumer", "kser-value-trimmed",
               "kser-headers-dropped", "kser-dead-letter-id")
#: tries to produce a dead letter to Kafka before it goes to the store
KAFKA_TRIES = 3
#: seconds between two of those tries
KAFKA_RETRY_DELAY = 1.0
#: bytes kept free under the size limit for the record's framing (batch and record
#: headers, varints), which Kafka counts and the value does not show
RECORD_OVERHEAD = 512
#: longest ``kser-error`` header, characters
ERROR_HEADER_LIMIT = 2000


def safe_headers(headers: Iterable[Any] | None) -> list[tuple[str, bytes]]:
    """A record's headers as a client library accepts them: (text, bytes) pairs."""
    safe: list[tuple[str, bytes]] = []
    for item in headers or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            continue  # not a pair: nothing a client could have delivered
        if not isinstance(name, str) or name != safe_text(name, None):
            name = safe_text(name, 200)
        if value is None:
            value = b""
        elif not isinstance(value, bytes | bytearray):
            value = safe_text(value, None).encode("utf-8")
        safe.append((name, bytes(value)))
    return safe


#: what :func:`fit` and :meth:`DeadLetters.copy` return: value, key, headers, trimmed
Fitted = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None]


def fit(value: bytes | None, key: bytes | None, own: list[tuple[str, bytes]],
        theirs: list[tuple[str, bytes]], limit: int) -> Fitted:
    """Cut ``value``, then drop ``theirs`` (the record's headers), then cut ``key``, until
    the whole fits in ``limit`` bytes; ``own`` (kser's headers) are always kept.

    Returns (value, key, headers, trimmed): ``trimmed`` is the value's original size
    when anything was cut or dropped, else None.
    """
    def size(headers: list[tuple[str, bytes]]) -> int:
        return sum(len(name.encode("utf-8")) + len(data) + 8 for name, data in headers)

    budget = limit - RECORD_OVERHEAD - size(own) - 64  # room for the trimming headers
    value_size = len(value or b"")
    total = value_size + len(key or b"") + size(theirs)
    if total <= budget + 64:
        return value, key, own + theirs, None
    notes = [("kser-value-trimmed", str(value_size).encode())]
    room = budget - len(key or b"") - size(theirs)
    if room >= 0:
        return (value or b"")[:room], key, own + notes + theirs, value_size
    notes.append(("kser-headers-dropped", str(len(theirs)).encode()))
    room = budget - len(key or b"")
    if room >= 0:
        return (value or b"")[:room], key, own + notes, value_size
    return b"", (key or b"")[:max(budget, 0)], own + notes, value_size


class DeadLetters:
    """Sends undeliverable records to the dead-letter topic, or to the store.

    :param producer: returns the producer to use (the consumer's)
    :param settings: kser settings (dead-letter topic names, size limit, send timeout)
    :param store: returns the store to fall back on (opened on first use)
    :param worker_name: the consumer's name, written in ``kser-consumer``
    """

    def __init__(self, producer: Callable[[], BaseProducer], settings: Settings,
                 store: Callable[[], Store], worker_name: str):
        self._producer = producer
        self.settings = settings
        self._store = store
        self.worker_name = worker_name

    def copy(self, record: Record, error: str) -> Fitted:
        """The dead letter of ``record``: (value, key, headers, trimmed) as :func:`fit`."""
        own = [(name, safe_text(value, limit).encode("utf-8")) for name, value, limit in (
            ("kser-error", error, ERROR_HEADER_LIMIT), ("kser-source-topic", record.topic, 300),
            ("kser-source-partition", record.partition, None),
            ("kser-source-offset", record.offset, None),
            ("kser-consumer", self.worker_name, 300))]
        # (the record's own headers bearing the names of kser's are a writer's forgery:
        # a kser-source-topic of its choosing would have a replay send it there; its
        # kser-replayed-by stays: a replay stops when what it sent comes back)
        theirs = [(name, value) for name, value in safe_headers(record.headers)
                  if name not in DLQ_HEADERS]
        return fit(record.value, record.key, own, theirs, self.settings.max_message_bytes)

    def send(self, record: Record, error: str) -> bool:
        """Dead-letter ``record``; False when neither the broker nor the store took it
        (the record is then processed again later)."""
        topic = self.settings.dlq_for(record.topic)
        value, key, headers, trimmed = self.copy(record, error)
        stored = None
        if trimmed is not None:  # the whole record is kept in the store
            stored = self._to_store(record, error)
            if stored is None:
                return False
            headers.append(("kser-dead-letter-id", str(stored).encode()))
        failure = self._to_kafka(topic, value, key, headers)
        if failure is None:
            where = topic if stored is None else (
                f"{topic} (value cut from {trimmed} bytes) and the store (#{stored})")
            metrics.dead_lettered(record.topic, "topic")
        else:
            stored = stored if stored is not None else self._to_store(record, error)
            if stored is None:
                return False
            where = f"the store (#{stored}; {topic} refused it: {failure})"
            metrics.dead_lettered(record.topic, "store")
        logger.warning("%s dead-lettered %s[%d]@%d to %s: %s", self.worker_name,
                       safe_text(record.topic), record.partition, record.offset, where,
                       safe_text(error))
        return True

    def _to_kafka(self, topic: str, value: bytes | None, key: bytes | None,
                  headers: list[tuple[str, bytes]]) -> str | None:
        """Produce one dead letter and wait for its own acknowledgement (other records
        flushed meanwhile are none of its business); None when it was, else why not."""
        failure = "not tried"
        for attempt in range(1, KAFKA_TRIES + 1):
            done, errors = threading.Event(), cast(list[BaseException], [])

            def delivered(exc: Exception | None, done: threading.Event = done,
                          errors: list[BaseException] = errors) -> None:
                if exc is not None:
                    errors.append(exc)
                done.set()

            try:
                self._producer().send_raw(topic, value, key, headers, on_delivery=delivered)
                # not flush(): other threads' failures are theirs to see
                self._producer().wait_sent(timeout=self.settings.send_timeout)
                if done.wait(0 if done.is_set() else 1.0) and not errors:
                    return None
                exc = errors[0] if errors else TimeoutError(
                    f"not acknowledged within {self.settings.send_timeout} s")
            except Exception as raised:
                exc = raised
            failure = safe_text(f"{type(exc).__name__}: {exc}", 300)
            logger.error("%s could not dead-letter to %s (try %d of %d): %s", self.worker_name,
                         topic, attempt, KAFKA_TRIES, failure)
            if not is_transient(exc):
                break  # the same copy would be refused again
            if attempt < KAFKA_TRIES:
                time.sleep(KAFKA_RETRY_DELAY)
        return failure

    def _to_store(self, record: Record, error: str) -> int | None:
        """Write the whole record to ``kser_dead_letters``; its row id, or None when the
        store failed too."""
        try:
            with self._store().transaction() as tx:
                return tx.add_dead_letter(dict(
                    topic=safe_text(record.topic, 255), partition=record.partition,
                    offset=record.offset, key=record.key, value=record.value,
                    headers=[[name, base64.b64encode(value).decode()]
                             for name, value in safe_headers(record.headers)],
                    error=safe_text(error, None), worker=safe_text(self.worker_name, 255),
                    created_at=time.time()))
        except Exception as exc:
            logger.error("%s could not dead-letter %s[%d]@%d to the store either (%s): it "
                         "will be processed again", self.worker_name, safe_text(record.topic),
                         record.partition, record.offset, safe_text(exc, 300))
            return None
