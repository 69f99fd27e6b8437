"""Consumer on confluent-kafka."""

from __future__ import annotations

import logging
from typing import Any, cast

import confluent_kafka
from confluent_kafka import KafkaError

from kser.confluent import CONSUMER_ONLY_KEYS
from kser.confluent.producer import Producer
from kser.errors import WorkerFatalError, safe_text
from kser.record import Record, TopicPartition
from kser.topics import TopicAdmin
from kser.worker import BaseConsumer


class Consumer(BaseConsumer):
    """Consumes through a ``confluent_kafka.Consumer``.

    :param config: librdkafka configuration (``bootstrap.servers``, ``group.id``...).
        ``enable.auto.commit`` is always turned off.
    :param topics: topics to subscribe to
    """

    MAX_POLL_INTERVAL_KEY = "max.poll.interval.ms"

    def __init__(self, config: dict[str, Any], topics: list[str] | str,
                 **kwargs: Any) -> None:
        super().__init__(config, topics, **kwargs)
        client_config = self._force_manual_commit(dict(self.config), "enable.auto.commit")
        client_config.setdefault("logger", logging.getLogger("confluent_kafka"))
        client_config.setdefault("session.timeout.ms", int(self.settings.session_timeout * 1000))
        client_config.setdefault("heartbeat.interval.ms",
                                 int(self.settings.heartbeat_interval * 1000))
        client_config.setdefault("client.id", self.name)
        self.client = confluent_kafka.Consumer(client_config)
        # both callbacks give the partitions added or taken (all of them with the eager
        # protocols, the changed ones with cooperative-sticky)
        self.client.subscribe(
            self.topics,
            on_assign=lambda _client, tps: self._assigned([(t.topic, t.partition) for t in tps]),
            on_revoke=lambda _client, tps: self._revoked([(t.topic, t.partition) for t in tps]),
            on_lost=lambda _client, tps: self._revoked([(t.topic, t.partition) for t in tps]))

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        # consume() waits for max_records or the timeout: wait for the first message
        # only, then take what is already fetched
        first = self.client.poll(timeout)
        if first is None:
            return []
        messages = [first]
        if max_records > 1:
            messages += self.client.consume(num_messages=max_records - 1, timeout=0)
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():  # the client is unusable: polling it again does nothing
                    raise WorkerFatalError(f"the Kafka client failed for good: {error.str()}")
                continue  # librdkafka retries transient errors itself
            try:
                headers = cast(list[tuple[str, bytes | None]], list(message.headers() or []))
            except Exception as exc:  # a header name that is not UTF-8: asking twice
                # returns a NULL name, so the headers are given up and said so
                headers = [("kser-unreadable-headers", safe_text(exc, 300).encode())]
            # (a message without error has its topic, partition and offset)
            records.append(Record(cast(str, message.topic()), cast(int, message.partition()),
                                  cast(int, message.offset()), message.value(), message.key(),
                                  headers))
        return records

    def _group_offsets(self, partitions: list[TopicPartition]
                       ) -> dict[TopicPartition, int | None]:
        answer = self.client.committed([confluent_kafka.TopicPartition(t, p)
                                        for t, p in partitions],
                                       timeout=self.settings.connect_timeout)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
                for tp in answer}

    def _log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends = {}
        for topic, partition in partitions:
            # (cached: the high watermark of the last fetch of that partition)
            marks = self.client.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, partition), cached=True)
            if marks is not None and marks[1] >= 0:
                ends[(topic, partition)] = marks[1]
        return ends

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.client.commit(offsets=[confluent_kafka.TopicPartition(t, p, o)
                                    for (t, p), o in offsets.items()], asynchronous=False)

    def _pause(self) -> None:
        self.client.pause(self.client.assignment())

    def _resume(self) -> None:
        self.client.resume(self.client.assignment())

    def _close(self) -> None:
        self.client.close()

    def _new_admin(self) -> TopicAdmin:
        # a client of its own: the consumer's list_topics() left its later fetches slower
        # (unloaded hop p50 about 3.5 ms against 2.5 ms, benchmarks/sequencing.py)
        from kser.confluent.admin import Admin

        return Admin(self.config, **self._admin_options())

    def _new_producer(self) -> Producer:
        return Producer({**{key: value for key, value in self.config.items()
                            if key not in CONSUMER_ONLY_KEYS},
                         **self._producer_options()})
