"""Dead letters: list them, and send them back to their topic once the cause is fixed.

A dead-lettered record is the original value and key, with headers saying
why (``kser-error``) and where it came from (``kser-source-topic``,
``-partition``, ``-offset``). ``replay`` sends every dead letter not yet
replayed back to its source topic and remembers how far it went as the
offsets of the consumer group ``kser-dlq-replay``, so running it again sends
only newer dead letters. ``list`` reads without committing anything.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kser.controller import BaseProducer
from kser.worker import DLQ_HEADERS, BaseConsumer, Record

#: consumer group whose offsets say how far ``replay`` went on a dead-letter topic
REPLAY_GROUP = "kser-dlq-replay"


@dataclass
class DeadLetter:
    """A dead-lettered record and what its headers say."""

    record: Record

    @property
    def headers(self) -> dict[str, str]:
        return {name: value.decode("utf-8", "replace") for name, value in self.record.headers
                if name in DLQ_HEADERS}

    @property
    def error(self) -> str:
        return self.headers.get("kser-error", "")

    @property
    def source_topic(self) -> str | None:
        return self.headers.get("kser-source-topic")

    def preview(self, width: int = 80) -> str:
        text = (self.record.value or b"").decode("utf-8", "replace").replace("\n", " ")
        return text if len(text) <= width else text[:width - 1] + "…"


def read(consumer: BaseConsumer, wait: float, commit: bool = False) -> Iterator[Record]:
    """Every record ``consumer`` can read now; stops once nothing came for ``wait`` seconds
    (after the first record: for a quarter of it). With ``commit``, commits as it goes."""
    deadline = time.monotonic() + wait
    seen = False
    while time.monotonic() < deadline:
        records = consumer._poll(0.5, 500)
        if not records:
            continue
        seen = True
        yield from records
        if commit:
            offsets: dict = {}
            for record in records:
                offsets[(record.topic, record.partition)] = record.offset + 1
            consumer._commit(offsets)
        deadline = time.monotonic() + (wait / 4 if seen else wait)


def list_dead_letters(make_consumer: Callable[[str, str], BaseConsumer], dlq_topic: str,
                      wait: float = 10) -> list[DeadLetter]:
    """All dead letters of ``dlq_topic`` (nothing is committed)."""
    consumer = make_consumer(f"kser-dlq-list-{uuid.uuid4().hex[:8]}", dlq_topic)
    try:
        return [DeadLetter(record) for record in read(consumer, wait)]
    finally:
        consumer._close()


def replay(make_consumer: Callable[[str, str], BaseConsumer], producer: BaseProducer,
           dlq_topic: str, default_topic: str, wait: float = 10) -> list[DeadLetter]:
    """Send the dead letters not replayed yet back to their source topic; return them.

    A record's offset is committed only after the broker acknowledged its copy.
    """
    consumer = make_consumer(REPLAY_GROUP, dlq_topic)
    replayed = []
    try:
        for record in read(consumer, wait):
            letter = DeadLetter(record)
            headers = [(n, v) for n, v in record.headers if n not in DLQ_HEADERS]
            producer.send_raw(letter.source_topic or default_topic, record.value or b"",
                              record.key, headers)
            producer.flush(timeout=60)
            consumer._commit({(record.topic, record.partition): record.offset + 1})
            replayed.append(letter)
    finally:
        consumer._close()
    return replayed
