"""A consumed Kafka record, whatever the client library: what transports hand the loop."""

from __future__ import annotations

from dataclasses import dataclass, field

#: (topic, partition)
TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record, whatever the client library."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    #: why the client library could not read this record (then value, key and headers
    #: are empty): it is dead-lettered as a placeholder naming where the record is
    unreadable: str | None = None
