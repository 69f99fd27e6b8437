"""A named in-process broker with Kafka's semantics that kser relies on.

Topics have partitions; a record's partition is chosen by its key. Consumers
of a group share a topic's partitions; each group has committed offsets, and
a consumer that leaves without committing hands its records to the next one,
exactly as a Kafka consumer group does.
"""

from __future__ import annotations

import threading
import zlib
from collections import defaultdict
from collections.abc import Sequence

from kser.record import Record, TopicPartition

#: partitions of a topic created on first use
DEFAULT_PARTITIONS = 1

_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def get_broker(name: str = "default", partitions: int = DEFAULT_PARTITIONS) -> MemoryBroker:
    """The broker called ``name`` in this process, created on first use."""
    with _brokers_lock:
        if name not in _brokers:
            _brokers[name] = MemoryBroker(name, partitions)
        return _brokers[name]


def drop_broker(name: str) -> None:
    """Forget the broker called ``name`` (tests start from a clean one)."""
    with _brokers_lock:
        _brokers.pop(name, None)


class MemoryBroker:
    """Topics, partitions, consumer groups and committed offsets, in memory."""

    def __init__(self, name: str, partitions: int = DEFAULT_PARTITIONS):
        self.name = name
        self.default_partitions = partitions
        self._lock = threading.RLock()
        self._topics: dict[str, list[list[Record]]] = {}
        self._committed: dict[tuple[str, TopicPartition], int] = {}
        self._members: dict[str, list[object]] = defaultdict(list)
        self._generation: dict[str, int] = defaultdict(int)
        #: records produced so far: consumers waiting for records watch it (a long poll)
        self.produced = 0
        self._arrived = threading.Condition(self._lock)

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create ``topic`` (no-op if it exists)."""
        with self._lock:
            if topic not in self._topics:
                self._topics[topic] = [[] for _ in range(partitions or self.default_partitions)]

    def has_topic(self, topic: str) -> bool:
        with self._lock:
            return topic in self._topics

    def partition_ends(self, topic: str) -> list[int]:
        """The offset after the last record of each partition of ``topic``."""
        with self._lock:
            return [len(log) for log in self._topics.get(topic, [])]

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Sequence[tuple[str, bytes | None]] | None = None) -> Record:
        """Append a record; the key (or the record count) picks the partition."""
        with self._lock:
            self.create_topic(topic)
            partitions = self._topics[topic]
            index = (zlib.crc32(key) if key is not None else sum(map(len, partitions)))
            log = partitions[index % len(partitions)]
            record = Record(topic, index % len(partitions), len(log), value, key,
                            list(headers or []))
            log.append(record)
            self.produced += 1
            self._arrived.notify_all()
            return record

    def wait_for_records(self, seen: int, timeout: float,
                         stop: threading.Event | None = None) -> None:
        """Wait up to ``timeout`` seconds for a record produced after the ``seen``-th (as
        a Kafka consumer's long poll returns when records arrive), or for ``stop``."""
        with self._arrived:
            self._arrived.wait_for(lambda: self.produced != seen or bool(stop and stop.is_set()),
                                   timeout)

    def wake(self) -> None:
        """Wake every consumer waiting for records (one of them is stopping)."""
        with self._arrived:
            self._arrived.notify_all()

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition (for tests and ``dlq list``)."""
        with self._lock:
            return [record for log in self._topics.get(topic, []) for record in log]

    def lag(self, group: str, topics: list[str]) -> int:
        """Records of ``topics`` not yet committed by ``group``."""
        with self._lock:
            return sum(len(log) - self._committed.get((group, (topic, p)), 0)
                       for topic in topics for p, log in enumerate(self._topics.get(topic, [])))

    # -- groups ------------------------------------------------------------------------

    def join(self, group: str, member: object, topics: list[str]) -> None:
        with self._lock:
            for topic in topics:
                self.create_topic(topic)
            self._members[group].append(member)
            self._generation[group] += 1

    def leave(self, group: str, member: object) -> None:
        with self._lock:
            if member in self._members[group]:
                self._members[group].remove(member)
                self._generation[group] += 1

    def generation(self, group: str) -> int:
        """Changes each time a member joins or leaves: positions must be reset."""
        with self._lock:
            return self._generation[group]

    def assignment(self, group: str, member: object, topics: list[str]) -> list[TopicPartition]:
        """The partitions ``member`` owns: round-robin over the group's members."""
        with self._lock:
            members = self._members[group]
            if member not in members:
                return []
            tps = sorted((t, p) for t in topics for p in range(len(self._topics.get(t, []))))
            index, count = members.index(member), len(members)
            return [tp for i, tp in enumerate(tps) if i % count == index]

    def committed(self, group: str, tp: TopicPartition) -> int:
        with self._lock:
            return self._committed.get((group, tp), 0)

    def commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                self._committed[(group, tp)] = offset

    def fetch(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        with self._lock:
            topic, partition = tp
            return self._topics[topic][partition][offset:offset + max_records]
