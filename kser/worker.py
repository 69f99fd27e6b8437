"""The consume loop every transport shares: poll, process, dead-letter, commit, stop.

Commit policy (at-least-once): an offset is committed only after its record
was processed *and* every message produced meanwhile (follow-ups, dead
letters) was acknowledged by the broker. If that acknowledgement fails, the
consumer rewinds to the last committed offsets and the records are processed
again. A record that cannot be decoded or routed is sent, with its error, to
the dead-letter topic and its offset committed: one bad record never stops or
blocks a partition.

A transport subclasses :class:`BaseConsumer` and adapts five calls of its
client: ``_poll``, ``_commit``, ``_seek``, ``_close`` and ``_new_producer``.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from kser.config import Settings
from kser.controller import BaseProducer, Controller

logger = logging.getLogger(__name__)

#: headers added to a dead-lettered record
DLQ_HEADERS = ("kser-error", "kser-source-topic", "kser-source-partition",
               "kser-source-offset", "kser-consumer")

TopicPartition = tuple[str, int]

_consumer_numbers = itertools.count(1)


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record, whatever the client library."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class BaseConsumer:
    """Consume ``topics`` and run each record through :attr:`REGISTRY`.

    :param config: the client library's own consumer configuration
    :param topics: topics to subscribe to
    :param producer: producer for follow-up messages and dead letters (default:
        one of the same transport, built from the connection settings in ``config``)
    :param settings: kser settings (default: read from ``KSER_*`` variables)
    """

    #: the controller (or a Controller subclass, instantiated on first use) that runs records
    REGISTRY: Controller | type[Controller] = Controller

    def __init__(self, config: dict, topics: list[str] | str, *,
                 producer: BaseProducer | None = None, settings: Settings | None = None):
        self.config = dict(config)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.settings = settings or Settings()
        # host:pid, and a suffix for the 2nd, 3rd... consumer of one process: the store
        # tells workers apart by it
        number = next(_consumer_numbers)
        self.name = f"{socket.gethostname()}:{os.getpid()}" + (f"-{number}" if number > 1 else "")
        self._producer = producer
        self._stopping = threading.Event()
        self._exit_when_idle = False
        self.processed = 0

    # -- what a transport adapts -------------------------------------------------------

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        raise NotImplementedError

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``: for each partition, the offset of the next record to read."""
        raise NotImplementedError

    def _seek(self, offsets: dict[TopicPartition, int]) -> None:
        """Read each partition again from the given offset."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _new_producer(self) -> BaseProducer:
        raise NotImplementedError

    @staticmethod
    def _force_manual_commit(config: dict, key: str) -> dict:
        """Turn the client's auto-commit off: it would commit before processing."""
        if str(config.get(key, "")).lower() in ("true", "1"):
            logger.warning("%s=True ignored: kser commits an offset only after its message "
                           "is processed and its follow-ups are acknowledged", key)
        config[key] = False
        return config

    # -- the loop ----------------------------------------------------------------------

    @property
    def producer(self) -> BaseProducer:
        """The producer of follow-up messages and dead letters."""
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    @property
    def controller(self) -> Controller:
        """The controller records are routed through (``REGISTRY``, instantiated if a class)."""
        if isinstance(self.REGISTRY, type):
            self.REGISTRY = self.REGISTRY()
        return self.REGISTRY

    def stop(self) -> None:
        """Ask the loop to stop after the record in hand; safe from any thread or signal."""
        self._stopping.set()

    def run(self) -> None:
        """Consume until :meth:`stop`, SIGTERM or SIGINT; then commit, close and return."""
        restore = self._install_signal_handlers()
        self.controller.bind(self.producer, self.name)
        logger.info("%s.Starting: consumer %s on %s", type(self).__name__, self.name,
                    ", ".join(self.topics))
        try:
            while not self._stopping.is_set():
                records = self._poll(self.settings.poll_timeout, self.settings.max_poll_records)
                if records:
                    self._process_batch(records)
                self._sweep()
                if not records and self._exit_when_idle:
                    break
        finally:
            restore()
            self._shutdown()

    def _process_batch(self, records: list[Record]) -> None:
        uncommitted: dict[TopicPartition, int] = {}  # first offset not committed yet
        done: dict[TopicPartition, int] = {}  # next offset to commit
        deadline = time.monotonic() + self.settings.commit_interval
        for index, record in enumerate(records):
            tp = (record.topic, record.partition)
            uncommitted.setdefault(tp, record.offset)
            if not self._process(record):
                # not this record's fault: commit what is done, read this one again later
                committed = self._checkpoint(done) if done else True
                self._rewind({} if committed else uncommitted, records[index:])
                self._stopping.wait(self.settings.redo_backoff)
                return
            done[tp] = record.offset + 1
            last = index == len(records) - 1
            if last or self._stopping.is_set() or time.monotonic() >= deadline:
                if not self._checkpoint(done):
                    self._rewind(uncommitted, records[index + 1:])
                    return
                if self._stopping.is_set():
                    return  # the rest was never committed: the next owner reads it
                uncommitted, done = {}, {}
                deadline = time.monotonic() + self.settings.commit_interval

    def _process(self, record: Record) -> bool:
        """Handle one record; False when it must be processed again (nothing to commit)."""
        outcome = self.controller.handle(record.value, record.topic)
        if outcome.redo:
            logger.warning("%s will process %s[%d]@%d again: %s", self.name, record.topic,
                           record.partition, record.offset, outcome.result.stderr)
            return False
        self.processed += 1
        if outcome.kmsg is not None:
            logger.info("%s processed %s[%s] from %s[%d]@%d: retcode %d", self.name,
                        outcome.kmsg.entrypoint, outcome.kmsg.uuid, record.topic,
                        record.partition, record.offset, outcome.result.retcode)
        if outcome.undeliverable:
            self._dead_letter(record, outcome.result.stderr)
        return True

    def _sweep(self) -> None:
        """Let the sequencer re-send what a dead worker left (it rate-limits itself)."""
        sweep = getattr(self.controller.sequencer, "sweep", None)
        if sweep is None:
            return
        try:
            sweep()
        except Exception as exc:  # the store may be briefly unreachable; try next time
            logger.warning("%s: sweep failed: %s", self.name, exc)

    def _dead_letter(self, record: Record, error: str) -> None:
        topic = self.settings.dlq_for(record.topic)
        values = (error, record.topic, str(record.partition), str(record.offset), self.name)
        headers = list(record.headers or []) + [
            (name, value.encode("utf-8")) for name, value in zip(DLQ_HEADERS, values, strict=True)]
        self.producer.send_raw(topic, record.value or b"", record.key, headers)
        logger.warning("%s dead-lettered %s[%d]@%d to %s: %s", self.name, record.topic,
                       record.partition, record.offset, topic, error)

    def _checkpoint(self, done: dict[TopicPartition, int]) -> bool:
        """Wait until every produced message is acknowledged, then commit ``done``.

        Returns False when the acknowledgement failed: nothing was committed.
        """
        try:
            self.producer.flush(timeout=self.settings.commit_interval + 60)
        except Exception as exc:
            logger.error("%s: follow-up messages were not acknowledged (%s); offsets not "
                         "committed, the records will be processed again", self.name, exc)
            return False
        try:
            self._commit(done)
        except Exception as exc:
            logger.warning("%s: commit of %s failed (%s); the records will be delivered again",
                           self.name, done, exc)
        return True

    def _rewind(self, uncommitted: dict[TopicPartition, int], remaining: list[Record]) -> None:
        """Seek back to the first uncommitted record of every partition of the batch."""
        offsets = dict(uncommitted)
        for record in remaining:
            offsets.setdefault((record.topic, record.partition), record.offset)
        self._seek(offsets)

    def _shutdown(self) -> None:
        try:
            self._close()
        finally:
            if self._producer is not None:
                self._producer.close()
        logger.info("%s.Stopped: consumer %s after %d record(s)", type(self).__name__,
                    self.name, self.processed)

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def on_signal(signum, _frame):
            logger.info("%s: %s received, finishing the current record", self.name,
                        signal.Signals(signum).name)
            self.stop()

        for sig in previous:
            signal.signal(sig, on_signal)
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]
