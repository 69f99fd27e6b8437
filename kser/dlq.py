"""Dead letters: list them, and send them back to their topic once the cause is fixed.

A dead-lettered record is the original value and key, with headers saying
why (``kser-error``) and where it came from (``kser-source-topic``,
``-partition``, ``-offset``); see :mod:`kser.deadletter`. Most are in the
dead-letter topic; those the topic did not take are rows of the store's
``kser_dead_letters`` table, and both are listed and replayed together.

``replay`` sends every dead letter not yet replayed back to its source topic:
for the topic, it remembers how far it went as the offsets of the consumer
group ``kser-dlq-replay``; for the store, it marks each row replayed. Running
it again sends only newer dead letters. ``list`` reads without changing
anything. A record dead-lettered twice (its worker killed before it committed
the record) is listed and replayed once per run; a topic copy whose value was
cut is replayed whole, from the store. A replayed record carries
``kser-replayed-by``: when a run meets a record it sent back itself (its cause
was not fixed, and a worker dead-lettered it again), it stops there.
"""

from __future__ import annotations

import base64
import importlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kser.config import TRANSPORTS, Settings
from kser.deadletter import DLQ_HEADERS
from kser.errors import safe_text
from kser.producer import BaseProducer
from kser.record import Record, TopicPartition
from kser.worker import BaseConsumer

if TYPE_CHECKING:
    from kser.store import DeadLetterRow, Store

logger = logging.getLogger(__name__)

#: consumer group whose offsets say how far ``replay`` went on a dead-letter topic
REPLAY_GROUP = "kser-dlq-replay"
#: header a replayed record carries: the run of ``replay`` that sent it back
REPLAY_HEADER = "kser-replayed-by"


@dataclass
class DeadLetter:
    """A dead-lettered record and what its headers say."""

    record: Record
    #: the row of ``kser_dead_letters`` holding it (None: it is in the dead-letter topic)
    stored_id: int | None = None

    @classmethod
    def from_row(cls, row: DeadLetterRow) -> DeadLetter:
        """A dead letter kept in the store (its record as it was consumed)."""
        headers: list[tuple[str, bytes | None]] = [
            (name, base64.b64decode(value)) for name, value in row.headers]
        headers += [("kser-error", row.error.encode("utf-8")),
                    ("kser-source-topic", row.topic.encode("utf-8")),
                    ("kser-source-partition", str(row.partition).encode()),
                    ("kser-source-offset", str(row.offset).encode())]
        return cls(Record("store", 0, row.id, row.value, row.key, headers), row.id)

    @property
    def where(self) -> str:
        """Where it is kept: ``topic[partition]@offset``, or ``store #id``."""
        record = self.record
        return (f"store #{self.stored_id}" if self.stored_id is not None
                else f"{record.topic}[{record.partition}]@{record.offset}")

    @property
    def trimmed(self) -> bool:
        """True for a topic copy whose value was cut to fit (the store has it whole)."""
        return "kser-value-trimmed" in self.headers

    @property
    def source(self) -> tuple[str | None, str | None, str | None]:
        """(topic, partition, offset) the record was consumed from."""
        return (self.headers.get("kser-source-topic"),
                self.headers.get("kser-source-partition"),
                self.headers.get("kser-source-offset"))

    @property
    def headers(self) -> dict[str, str]:
        return {name: (value or b"").decode("utf-8", "replace")
                for name, value in self.record.headers if name in DLQ_HEADERS}

    @property
    def error(self) -> str:
        return self.headers.get("kser-error", "")

    @property
    def source_topic(self) -> str | None:
        return self.headers.get("kser-source-topic")

    def preview(self, width: int = 80) -> str:
        text = (self.record.value or b"").decode("utf-8", "replace").replace("\n", " ")
        return text if len(text) <= width else text[:width - 1] + "…"


def clients(settings: Settings) -> tuple[Callable[[str, str], BaseConsumer | None],
                                         Callable[[], BaseProducer]]:
    """Makers of the consumers (``(group, topic)``) and producers of the settings'
    transport that reading and replaying dead letters use. A consumer is made only for
    a topic the cluster has (None otherwise): reading dead letters never creates a topic
    (a broker's ``auto.create.topics.enable`` would, for any name a request gave)."""
    module = TRANSPORTS[settings.transport]
    consumer_module = importlib.import_module(f"{module}.consumer")
    producer_module = importlib.import_module(f"{module}.producer")
    admin_module = importlib.import_module(f"{module}.admin")

    def make_consumer(group: str, topic: str) -> BaseConsumer | None:
        with admin_module.Admin(settings.client_config(),
                                **settings.admin_options()) as admin:
            if not admin.existing([topic]):
                return None
        consumer: BaseConsumer = consumer_module.Consumer(settings.client_config(group),
                                                          [topic], settings=settings)
        return consumer

    def make_producer() -> BaseProducer:
        producer: BaseProducer = producer_module.Producer(settings.producer_config())
        return producer

    return make_consumer, make_producer


def read(consumer: BaseConsumer, wait: float, commit: bool = False) -> Iterator[Record]:
    """Every record ``consumer`` can read now; stops once nothing came for ``wait`` seconds
    (after the first record: for a quarter of it). With ``commit``, commits as it goes."""
    deadline = time.monotonic() + wait
    seen = False
    while time.monotonic() < deadline:
        records = consumer.fetch(0.5, 500)
        if not records:
            continue
        seen = True
        yield from records
        if commit:
            offsets: dict[TopicPartition, int] = {}
            for record in records:
                offsets[(record.topic, record.partition)] = record.offset + 1
            consumer.commit(offsets)
        deadline = time.monotonic() + (wait / 4 if seen else wait)


def _once(letters: list[DeadLetter]) -> list[DeadLetter]:
    """Each dead-lettered record once (by where it was consumed from), whole: the store's
    copy rather than a topic copy whose value was cut to fit."""
    whole = [letter for letter in letters if not letter.trimmed]
    seen, unique = set(), []
    for letter in whole + [letter for letter in letters if letter.trimmed]:
        source = letter.source
        if None in source or source not in seen:
            seen.add(source)
            unique.append(letter)
    return unique


def list_dead_letters(make_consumer: Callable[[str, str], BaseConsumer | None], dlq_topic: str,
                      wait: float = 10, store: Store | None = None,
                      source_topic: str | None = None) -> list[DeadLetter]:
    """All dead letters of ``dlq_topic``, then those of ``source_topic`` in ``store``
    (nothing is committed or marked)."""
    consumer = make_consumer(f"kser-dlq-list-{uuid.uuid4().hex[:8]}", dlq_topic)
    letters = []
    if consumer is not None:  # (None: no such topic)
        try:
            letters = [DeadLetter(record) for record in read(consumer, wait)]
        finally:
            consumer.close()
    if store is not None and source_topic is not None:
        with store.transaction() as tx:
            letters += [DeadLetter.from_row(row) for row in tx.dead_letters([source_topic])]
    return _once(letters)


def replay(make_consumer: Callable[[str, str], BaseConsumer | None], producer: BaseProducer,
           dlq_topic: str, default_topic: str, wait: float = 10,
           store: Store | None = None) -> list[DeadLetter]:
    """Send the dead letters of ``default_topic`` not replayed yet back to it; return them.

    A record's offset is committed (a stored one marked replayed) only after the
    broker acknowledged its copy. Letters go back only to the topic the operator named
    (``default_topic``): one whose headers name another source (another topic's, in a
    dead-letter topic shared by several; or a forgery written to the dead-letter topic)
    is left for a replay of that topic, and never sent anywhere else. A shared dead-letter
    topic keeps one replay position per source topic.
    """
    shared = dlq_topic != f"{default_topic}.dlq"
    consumer = make_consumer(f"{REPLAY_GROUP}-{default_topic}" if shared else REPLAY_GROUP,
                             dlq_topic)
    replayed, seen = [], set()
    run = uuid.uuid4().hex.encode()
    try:
        for record in read(consumer, wait) if consumer is not None else ():
            assert consumer is not None  # (records come from it)
            letter = DeadLetter(record)
            if (REPLAY_HEADER, run) in record.headers:
                # dead-lettered again after this very run sent it back (its cause is not
                # fixed, and a worker is consuming): stop here, or the two would loop
                break
            if letter.source_topic not in (None, default_topic):
                logger.warning("Dead letter %s names the source topic %s, not %s: not "
                               "replayed here", letter.where,
                               safe_text(letter.source_topic, 200), default_topic)
            elif letter.trimmed:
                pass  # a cut copy: the whole record is replayed from the store below
            elif None in letter.source or letter.source not in seen:
                _send_back(producer, letter, default_topic, run)
                replayed.append(letter)
                seen.add(letter.source)
            consumer.commit({(record.topic, record.partition): record.offset + 1})
    finally:
        if consumer is not None:
            consumer.close()
    if store is not None:
        with store.transaction() as tx:
            rows = tx.dead_letters([default_topic], replayed=False)
        for row in rows:
            letter = DeadLetter.from_row(row)
            if letter.source not in seen:
                _send_back(producer, letter, default_topic, run)
                replayed.append(letter)
            with store.transaction() as tx:
                tx.mark_replayed(row.id, time.time())
    return replayed


def _send_back(producer: BaseProducer, letter: DeadLetter, default_topic: str,
               run: bytes) -> None:
    record = letter.record
    headers = [(n, v) for n, v in record.headers if n not in DLQ_HEADERS and n != REPLAY_HEADER]
    headers.append((REPLAY_HEADER, run))
    producer.send_raw(default_topic, record.value, record.key, headers)
    producer.flush(timeout=60)
