"""Producer on kafka-python."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer

from kser.errors import is_transient
from kser.producer import BaseProducer
from kser.python_kafka import explained_bootstrap
from kser.python_kafka.admin import Admin

#: acknowledgement by every in-sync replica: a follow-up is only "sent" once durable
DEFAULT_ACKS = "all"
#: bytes a record's framing adds to its value, allowed above KSER_MAX_MESSAGE_BYTES
REQUEST_OVERHEAD = 4096


class Producer(BaseProducer):
    """Sends through a ``kafka.KafkaProducer``.

    :param config: ``KafkaProducer`` keyword arguments (``bootstrap_servers``,
        security settings...); ``acks`` defaults to ``"all"``, ``enable_idempotence``
        to False (see the note in ``__init__``), ``delivery_timeout_ms`` to kser's
        ``delivery_timeout``. kser's own options (``max_message_bytes``,
        ``connect_timeout``, ``delivery_timeout``, ``partitions``, ``replication_factor``:
        ``Settings.producer_options()``) may be given too.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        super().__init__(**self.take_options(config))
        self._connection = dict(config)
        config.setdefault("acks", DEFAULT_ACKS)
        # what kser's own size check lets through, the client lets through (the broker
        # still has the last word: its refusal is a permanent error)
        config.setdefault("max_request_size", self.max_message_bytes + REQUEST_OVERHEAD)
        config.setdefault("bootstrap_timeout_ms", int(self.connect_timeout * 1000))
        # a record is retried through leader changes and refusals for too few replicas in
        # sync until the delivery timeout, then failed: never sent after kser gave up on
        # it (kafka-python wants it at least linger_ms + request_timeout_ms)
        config.setdefault("delivery_timeout_ms", int(self.delivery_timeout * 1000))
        config.setdefault("request_timeout_ms", max(1000, min(
            30000, config["delivery_timeout_ms"] - config.get("linger_ms", 0))))
        # kafka-python 3.0's idempotent producer turns any record the broker refuses for
        # good (one over a topic's max.message.bytes) into a fatal state: every later
        # record of the process fails with that error, for ever. kser's messages are
        # idempotent in the store (a duplicate changes nothing), so a retry that
        # duplicates a record is harmless; a producer that stops for good is not
        # (tests/acceptance/test_untrusted_wire.py, the refused exit notifications)
        config.setdefault("enable_idempotence", False)
        with explained_bootstrap():
            self.client = KafkaProducer(**config)
        #: (kafka-python's FutureRecordMetadata, whether a delivery callback keeps its failure)
        self._futures: list[tuple[Any, bool]] = []
        self._futures_lock = threading.Lock()

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        future = self.client.send(topic, value=value, key=key, headers=headers or None)
        if on_delivery is not None:
            future.add_callback(lambda _metadata: on_delivery(None))
            future.add_errback(on_delivery)
        with self._futures_lock:
            self._futures.append((future, on_delivery is not None))

    def _drain(self, timeout: float) -> None:
        self.client.flush(timeout=timeout)  # the futures stay for the next _flush

    def _flush(self, timeout: float) -> None:
        with self._futures_lock:
            futures, self._futures = self._futures, []
        self.client.flush(timeout=timeout)
        for future, kept in futures:
            if not future.is_done:
                raise TimeoutError(f"Kafka did not acknowledge a message within {timeout} s")
            # (a refusal for good of a record whose callback keeps it: see send_raw)
            if future.failed() and not (kept and not is_transient(future.exception)):
                raise future.exception

    def _new_admin(self) -> Admin:
        return Admin(self._connection, **self._admin_options())

    def close(self) -> None:
        self.client.close(timeout=10)
