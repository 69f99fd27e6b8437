"""Producer on confluent-kafka."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from kser.errors import is_transient
from kser.producer import BaseProducer
from kser.topics import TopicAdmin

#: bytes a record's framing adds to its value, allowed above KSER_MAX_MESSAGE_BYTES
REQUEST_OVERHEAD = 4096


class Producer(BaseProducer):
    """Sends through a ``confluent_kafka.Producer``.

    :param config: librdkafka configuration (``bootstrap.servers``, security
        settings...); ``acks`` defaults to ``all``, idempotence is enabled,
        ``delivery.timeout.ms`` is kser's ``delivery_timeout``;
        ``linger.ms`` defaults to 0 (librdkafka's 5 ms would be added to every hop
        of an operation: a follow-up is sent without waiting for a flush, and
        messages still batch while a request is in flight); librdkafka's logs go
        to the ``confluent_kafka`` Python logger.
        kser's own options (``max_message_bytes``, ``connect_timeout``, ``partitions``,
        ``replication_factor``: ``Settings.producer_options()``) may be given too.
    :raises confluent_kafka.KafkaException: the cluster did not answer within
        ``connect_timeout`` seconds
    """

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        super().__init__(**self.take_options(config))
        self._connection = dict(config)
        config.setdefault("acks", "all")
        # what kser's own size check lets through, the client lets through (librdkafka's
        # default is 1,000,000 bytes, below kser's 1 MiB)
        config.setdefault("message.max.bytes", self.max_message_bytes + REQUEST_OVERHEAD)
        config.setdefault("enable.idempotence", True)
        # retried through leader changes and too few replicas in sync until then, then
        # failed: never sent after kser gave up on it (librdkafka's default is 300 s)
        if "message.timeout.ms" not in config:  # (the same setting, by its other name)
            config.setdefault("delivery.timeout.ms", int(self.delivery_timeout * 1000))
        config.setdefault("linger.ms", 0)
        config.setdefault("logger", logging.getLogger("confluent_kafka"))
        self._client_errors: list[KafkaError] = []
        config.setdefault("error_cb", self._client_errors.append)
        self.client = confluent_kafka.Producer(config)
        self._errors: list[str] = []
        # librdkafka retries an unreachable broker forever: ask for metadata once so
        # a wrong address or a refused login is an error now, not a send that times out
        try:
            self.client.list_topics(timeout=self.connect_timeout)
        except KafkaException:
            self.client.poll(0)  # serves error_cb: the reason, when librdkafka knows it
            refused = [e for e in self._client_errors if e.code() == KafkaError._AUTHENTICATION]
            if refused:
                raise KafkaException(KafkaError(
                    KafkaError._AUTHENTICATION,
                    f"authentication failed ({refused[-1].str()}); check KSER_SASL_USERNAME, "
                    "KSER_SASL_PASSWORD and KSER_SASL_MECHANISM")) from None
            raise

    def _on_delivery(self, error: KafkaError | None, message: confluent_kafka.Message) -> None:
        if error is not None:
            self._errors.append(f"{message.topic()}: {error.str()}")

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        report = self._on_delivery
        if on_delivery is not None:
            def report(error: KafkaError | None, message: confluent_kafka.Message) -> None:
                failure = None if error is None else KafkaException(error)
                if failure is None or is_transient(failure):  # (one for good is the
                    self._on_delivery(error, message)  # callback's: see send_raw)
                on_delivery(failure)
        while True:
            try:
                self.client.produce(topic, value=value, key=key, headers=cast(Any, headers) or None,
                                    on_delivery=report)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.client.poll(0.1)

    def _drain(self, timeout: float) -> None:
        self.client.flush(timeout)  # failures stay in _errors for the next _flush

    def _flush(self, timeout: float) -> None:
        remaining = self.client.flush(timeout)
        errors, self._errors = self._errors, []
        if errors:  # each error once, with how many messages had it
            raise RuntimeError("Kafka refused message(s): " + "; ".join(
                error + (f" ({count} messages)" if count > 1 else "")
                for error, count in Counter(errors).items()))
        if remaining:
            raise TimeoutError(f"Kafka did not acknowledge {remaining} message(s) within "
                               f"{timeout} s")

    def _new_admin(self) -> TopicAdmin:
        from kser.confluent.admin import Admin

        return Admin(self._connection, **self._admin_options())

    def close(self) -> None:
        self.client.flush(10)
