"""Consumer on confluent-kafka."""

from __future__ import annotations

import logging

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from kser.confluent.producer import Producer
from kser.errors import WorkerFatalError, safe_text
from kser.worker import BaseConsumer, Record, TopicPartition

#: librdkafka settings that only make sense for a consumer (not copied to the producer)
CONSUMER_ONLY_KEYS = frozenset({
    "group.id", "group.instance.id", "auto.offset.reset", "enable.auto.commit",
    "enable.auto.offset.store", "auto.commit.interval.ms", "session.timeout.ms",
    "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.strategy",
    "enable.partition.eof", "isolation.level", "fetch.min.bytes", "fetch.max.bytes",
    "fetch.wait.max.ms", "max.partition.fetch.bytes", "group.protocol", "check.crcs",
    "logger", "error_cb"})


#: seconds to wait for the cluster when the worker checks or creates its topics
TOPICS_TIMEOUT = 15


class Consumer(BaseConsumer):
    """Consumes through a ``confluent_kafka.Consumer``.

    :param config: librdkafka configuration (``bootstrap.servers``, ``group.id``...).
        ``enable.auto.commit`` is always turned off.
    :param topics: topics to subscribe to
    """

    MAX_POLL_INTERVAL_KEY = "max.poll.interval.ms"

    def __init__(self, config: dict, topics: list[str] | str, **kwargs):
        super().__init__(config, topics, **kwargs)
        client_config = self._force_manual_commit(dict(self.config), "enable.auto.commit")
        client_config.setdefault("logger", logging.getLogger("confluent_kafka"))
        self.client = confluent_kafka.Consumer(client_config)
        self.client.subscribe(self.topics)

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
                headers = list(message.headers() or [])
            except Exception as exc:  # a header name that is not UTF-8: asking twice
                # returns a NULL name, so the headers are given up and said so
                headers = [("kser-unreadable-headers", safe_text(exc, 300).encode())]
            records.append(Record(message.topic(), message.partition(), message.offset(),
                                  message.value(), message.key(), headers))
        return records

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.client.commit(offsets=[confluent_kafka.TopicPartition(t, p, o)
                                    for (t, p), o in offsets.items()], asynchronous=False)

    def _pause(self) -> None:
        self.client.pause(self.client.assignment())

    def _resume(self) -> None:
        self.client.resume(self.client.assignment())

    def _close(self) -> None:
        self.client.close()

    def _ensure_topics(self, topics: list[str]) -> list[str]:
        # a client of its own: the consumer's list_topics() left its later fetches slower
        # (unloaded hop p50 about 3.5 ms against 2.5 ms, benchmarks/sequencing.py)
        admin = AdminClient({key: value for key, value in self.config.items()
                             if key not in CONSUMER_ONLY_KEYS})
        existing = admin.list_topics(timeout=TOPICS_TIMEOUT).topics
        missing = [topic for topic in topics if topic not in existing]
        if not missing:
            return []
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=self.settings.partitions,
                      replication_factor=self.settings.replication_factor)
             for topic in missing], request_timeout=TOPICS_TIMEOUT)
        for future in futures.values():
            try:
                future.result(timeout=TOPICS_TIMEOUT)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        return missing

    def _new_producer(self) -> Producer:
        return Producer({**{key: value for key, value in self.config.items()
                            if key not in CONSUMER_ONLY_KEYS},
                         "max_message_bytes": self.settings.max_message_bytes})
