"""The one place where messages are serialised, checked and handed to a transport, so
every transport sends the same way: :class:`BaseProducer`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cdumay_result import Result

from kser import tracing
from kser.codec import DEFAULT_MAX_MESSAGE_BYTES, Codec
from kser.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PARTITIONS, Settings
from kser.crypto import Sealer
from kser.errors import is_transient, safe_text
from kser.hooks import BaseController
from kser.results import exception_result
from kser.schemas import Message
from kser.topics import TopicAdmin

logger = logging.getLogger("kser.controller")  # (the name its log lines always had)

#: kser's own options in a transport producer's configuration
PRODUCER_OPTIONS = ("max_message_bytes", "connect_timeout", "partitions", "replication_factor",
                    "min_insync_replicas", "delivery_timeout", "settings")
#: seconds a record may wait for its acknowledgement before the client fails it
#: (KSER_SEND_TIMEOUT's default)
DEFAULT_DELIVERY_TIMEOUT = 60.0
#: seconds before a topic that could not be checked (the cluster did not answer) is
#: checked again
TOPIC_RETRY_INTERVAL = 60.0


class BaseProducer(BaseController):
    """What every transport's producer shares: serialise, check, send, report.

    A transport implements only :meth:`_produce` (queue one record) and
    :meth:`_flush` (wait until every queued record is acknowledged, or raise).

    :param max_message_bytes: largest serialised message accepted; larger ones
        are refused at send time with a clear error instead of by the broker
    :param delivery_timeout: seconds the client tries to have a record acknowledged
        (leader changes, too few replicas in sync) before it fails it
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 partitions: int = DEFAULT_PARTITIONS,
                 replication_factor: int | None = None, min_insync_replicas: int | None = None,
                 delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
                 settings: Settings | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        #: seconds the client waits for the cluster when it starts
        self.connect_timeout = connect_timeout
        self.delivery_timeout = delivery_timeout
        #: partitions and replicas of the topics it creates (see :mod:`kser.topics`)
        self.partitions, self.replication_factor = partitions, replication_factor
        self.min_insync_replicas = min_insync_replicas
        #: the settings its sealer reads (KSER_SECRET_KEYS; default: the environment's,
        #: read when first needed)
        self.settings = settings
        # given settings are checked now (a bad key is an error here, not at a send)
        self._sealer: Sealer | None = Sealer.from_settings(settings) if settings else None
        self._topics_checked: set[str] = set()
        self._topics_retry: dict[str, float] = {}
        self._topics_lock = threading.Lock()
        self._topic_locks: dict[str, threading.Lock] = {}
        self._codec: Codec | None = None

    @property
    def sealer(self) -> Sealer:
        """Seals record values when ``KSER_SECRET_KEYS`` is set (a no-op without keys)."""
        if self._sealer is None:
            self._sealer = Sealer.from_settings(self.settings or Settings())
        return self._sealer

    @sealer.setter
    def sealer(self, sealer: Sealer) -> None:
        self._sealer = sealer
        self._codec = None

    @staticmethod
    def take_options(config: dict[str, Any]) -> dict[str, Any]:
        """Take kser's own options (:meth:`kser.config.Settings.producer_options`) out of
        a transport's producer ``config``; return them as this class's keyword arguments."""
        return {name: config.pop(name) for name in PRODUCER_OPTIONS if name in config}

    # -- transport adapter -------------------------------------------------------------

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        raise NotImplementedError

    def _flush(self, timeout: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the client (flushes what is queued)."""

    def _new_admin(self) -> TopicAdmin:
        """A topic admin of this producer's cluster (not implemented: topics are not
        checked)."""
        raise NotImplementedError

    def _admin_options(self) -> dict[str, Any]:
        return dict(partitions=self.partitions, replication_factor=self.replication_factor,
                    min_insync_replicas=self.min_insync_replicas,
                    timeout=self.connect_timeout)

    def topics_exist(self, topics: Iterable[str]) -> None:
        """Say that ``topics`` exist (a worker checked them at start): not checked again."""
        self._topics_checked.update(topics)

    def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` with :attr:`partitions` partitions if it does not exist, once
        per producer (before its first record to it); a failure is logged, never raised:
        the record is sent anyway (Kafka then creates the topic with its own
        ``num.partitions`` if it may, or refuses the record)."""
        if topic in self._topics_checked:
            return
        with self._topics_lock:  # one check per topic at a time; other topics go on
            lock = self._topic_locks.setdefault(topic, threading.Lock())
        with lock:
            if topic in self._topics_checked or (
                    time.monotonic() < self._topics_retry.get(topic, 0)):
                return
            try:
                with self._new_admin() as admin:
                    if admin.ensure([topic]):
                        logger.info("%s: created topic %s (%d partitions)",
                                    type(self).__name__, topic, self.partitions)
            except NotImplementedError:
                pass
            except Exception as exc:
                logger.warning("%s: topic %s could not be checked or created (%s); sending "
                               "anyway. Create it: kser topics create %s",
                               type(self).__name__, topic, safe_text(exc, 300), topic)
                if is_transient(exc):  # the cluster may answer later: ask again then
                    self._topics_retry[topic] = time.monotonic() + TOPIC_RETRY_INTERVAL
                    return
            self._topics_checked.add(topic)

    # -- shared behaviour --------------------------------------------------------------

    @property
    def codec(self) -> Codec:
        """How this producer encodes messages: its size limit and its sealer (built once;
        again if either changed)."""
        codec = self._codec
        if codec is None or codec.max_message_bytes != self.max_message_bytes \
                or codec.sealer is not self.sealer:
            codec = self._codec = Codec(self.max_message_bytes, self.sealer)
        return codec

    def encode(self, kmsg: Message) -> tuple[bytes, bytes]:
        """Serialise ``kmsg`` (after the :meth:`onmessage` hook) into (key, value) bytes,
        refusing what cannot be sent: see :meth:`kser.codec.Codec.encode`."""
        return self.codec.encode(self._onmessage(kmsg))

    def send(self, topic: str, kmsg: Message, timeout: float = 60) -> Result:
        """Send one message and wait until the broker acknowledged it.

        :param timeout: seconds to wait for the acknowledgement
        :return: retcode 0 on success, else >= 300 with the reason in stderr
        """
        return self.bulk_send(topic, [kmsg], timeout=timeout, uuid=kmsg.uuid)

    def bulk_send(self, topic: str, kmsgs: Iterable[Message], timeout: float = 60,
                  uuid: str | None = None) -> Result:
        """Send messages and wait (up to ``timeout`` seconds) until all are acknowledged.

        Nothing is queued unless every message can be encoded.
        """
        kmsgs = list(kmsgs)
        try:
            records = [self.encode(kmsg) for kmsg in kmsgs]
            self.ensure_topic(topic)
            for key, value in records:
                self._produce(topic, value, key, tracing.produce_headers(topic, current=True)
                              or None)
            self._flush(timeout)
        except Exception as exc:
            result = exception_result(exc, uuid)
            logger.error("%s.Failed: %d message(s) to %s: %s", type(self).__name__, len(kmsgs),
                         topic, result.stderr)
            return result
        if len(kmsgs) == 1:
            stdout = f"Message {kmsgs[0].entrypoint}[{kmsgs[0].uuid}] sent in {topic}"
        else:
            stdout = f"{len(kmsgs)} message(s) sent in {topic}"
        logger.info("%s.Success: %s", type(self).__name__, stdout)
        return Result(uuid=uuid, stdout=stdout)

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        """Queue a raw record (dead letters, replays, follow-ups); :meth:`flush` waits for it.

        :param on_delivery: called with None once the broker acknowledged the record,
            or with the error that lost it (in the client's thread, or during a flush). A
            refusal for good (:func:`kser.errors.is_transient` is False) is then the
            callback's to keep (the outbox's, the dead letters'): :meth:`flush` does not
            raise it, so the record that caused it is not redone for a send that would
            be refused again
        """
        self.ensure_topic(topic)
        self._produce(topic, value, key, headers, on_delivery)

    def flush(self, timeout: float = 60) -> None:
        """Wait until every queued record is acknowledged; raise if one failed."""
        self._flush(timeout)

    def wait_sent(self, timeout: float = 60) -> None:
        """Wait until every queued record was acknowledged or failed, raising nothing: the
        failures stay for :meth:`flush` (the consumer's checkpoint) and the records' own
        delivery callbacks, whichever thread queued them."""
        self._drain(timeout)

    def _drain(self, timeout: float) -> None:
        """Wait for every queued record's outcome without collecting failures."""
        try:
            self._flush(timeout)
        except Exception:  # kept by the transports that can keep them (see _drain there)
            pass
