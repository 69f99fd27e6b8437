"""Consumer on kafka-python."""

from __future__ import annotations

import time
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CorruptRecordError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from kser.python_kafka import explained_bootstrap
from kser.python_kafka.admin import Admin
from kser.python_kafka.producer import Producer
from kser.record import Record, TopicPartition
from kser.worker import BaseConsumer

#: longest a poll that joins a rebalance may take, seconds
REJOIN_POLL_TIMEOUT = 0.5


class Consumer(BaseConsumer):
    """Consumes through a ``kafka.KafkaConsumer``.

    :param config: ``KafkaConsumer`` keyword arguments (``bootstrap_servers``,
        ``group_id``...). ``enable_auto_commit`` is always turned off.
    :param topics: topics to subscribe to
    """

    MAX_POLL_INTERVAL_KEY = "max_poll_interval_ms"

    def __init__(self, config: dict[str, Any], topics: list[str] | str,
                 **kwargs: Any) -> None:
        super().__init__(config, topics, **kwargs)
        client_config = self._force_manual_commit(dict(self.config), "enable_auto_commit")
        client_config.setdefault("bootstrap_timeout_ms", int(self.settings.connect_timeout * 1000))
        client_config.setdefault("session_timeout_ms", int(self.settings.session_timeout * 1000))
        client_config.setdefault("heartbeat_interval_ms",
                                 int(self.settings.heartbeat_interval * 1000))
        client_config.setdefault("client_id", self.name)
        with explained_bootstrap():
            self.client = KafkaConsumer(**client_config)
        self.client.subscribe(self.topics, listener=_Rebalance(self))

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        if timeout == 0 and self._rejoining():
            # kafka-python joins a group one step per poll(0): a busy worker polling once a
            # second took seconds to join a rebalance the whole group waits for
            timeout = REJOIN_POLL_TIMEOUT
        try:
            batches = self.client.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except CorruptRecordError as exc:
            return self._skip_unreadable(exc)
        return [Record(r.topic, r.partition, r.offset, r.value, r.key, list(r.headers or []))
                for records in batches.values() for r in records]

    def _group_offsets(self, partitions: list[TopicPartition]
                       ) -> dict[TopicPartition, int | None]:
        offsets: dict[TopicPartition, int | None] = {}
        for topic, partition in partitions:
            offsets[(topic, partition)] = self.client.committed(
                KafkaTopicPartition(topic, partition))
        return offsets

    def _log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends = {}
        for topic, partition in partitions:
            end = self.client.highwater(KafkaTopicPartition(topic, partition))
            if end is not None:
                ends[(topic, partition)] = end
        return ends

    def _rejoining(self) -> bool:
        """True while the group rebalances and this member has not joined again (read from
        kafka-python's coordinator; False when that cannot be read)."""
        try:
            return bool(self.client._coordinator.need_rejoin())
        except Exception:
            return False

    def _skip_unreadable(self, exc: CorruptRecordError) -> list[Record]:
        """A record kafka-python cannot parse (a header name that is not UTF-8, a failed
        CRC): its poll raises once, and every later poll spins forever on the dead record
        iterator (kafka-python 3.0). Drop that iterator, move past the record, and hand
        the worker a placeholder to dead-letter in its place.
        """
        fetcher = self.client._fetcher
        part = fetcher._next_partition_records
        if part is None:
            raise exc
        tp = part.topic_partition
        offset = self.client.position(tp)
        part.drain()
        fetcher._next_partition_records = None
        self.client.seek(tp, offset + 1)
        return [Record(tp.topic, tp.partition, offset, None,
                       unreadable=f"{type(exc).__name__}: {exc}")]

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.client.commit({KafkaTopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                            for (t, p), o in offsets.items()})

    def _pause(self) -> None:
        self.client.pause(*self.client.assignment())

    def _resume(self) -> None:
        self.client.resume(*self.client.paused())

    def _close(self) -> None:
        self.client.close(autocommit=False)

    def _new_admin(self) -> Admin:
        return Admin(self.config, **self._admin_options())

    def _ensure_topics(self, topics: list[str]) -> list[str]:
        missing = [topic for topic in topics if topic not in self.client.topics()]
        created = super()._ensure_topics(topics)  # (which also checks those that exist)
        # the subscription learns of a topic created after it at the next metadata
        # refresh (metadata_max_age_ms, 5 minutes): fetch the metadata now
        deadline = time.monotonic() + self.settings.connect_timeout
        while not set(missing) <= self.client.topics() and time.monotonic() < deadline:
            time.sleep(0.2)
        return created

    def _new_producer(self) -> Producer:
        return Producer({**{key: value for key, value in self.config.items()
                            if key in KafkaProducer.DEFAULT_CONFIG and key != "client_id"},
                         **self._producer_options()})


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: list[KafkaTopicPartition]) -> None:
        self.consumer._revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: list[KafkaTopicPartition]) -> None:
        self.consumer._assigned([(tp.topic, tp.partition) for tp in assigned])
