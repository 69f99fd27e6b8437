"""The consume loop every transport shares: poll, run, dead-letter, commit, pause, stop.

The main thread only polls, hands records to up to ``concurrency`` task
threads, and commits; it keeps polling while tasks run (with the partitions
paused when every thread is busy), so a task may run far longer than Kafka's
``max.poll.interval.ms`` without the consumer leaving its group.

Commit policy (at-least-once): an offset is committed only after its record
was processed and what it produced was acknowledged by the broker; per
partition, only up to the lowest record still in flight. A record whose
processing failed for a reason outside the message (store or broker
unreachable: ``Outcome.redo``) is processed again after ``redo_backoff``
seconds and blocks the commit of its partition until then. A record that
cannot be decoded or routed goes, with its error, to the dead-letter topic
and its offset is committed: one bad record never stops or blocks a
partition.

A transport subclasses :class:`BaseConsumer` and adapts its client's calls:
``_poll``, ``_commit``, ``_pause``, ``_resume``, ``_close``, ``_new_producer``.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kser.config import Settings
from kser.controller import BaseProducer, Controller

logger = logging.getLogger(__name__)

#: headers added to a dead-lettered record
DLQ_HEADERS = ("kser-error", "kser-source-topic", "kser-source-partition",
               "kser-source-offset", "kser-consumer")
#: longest the main thread waits in one poll, or for a task, while tasks run, seconds
BUSY_POLL_INTERVAL = 0.2
#: the client's max.poll.interval.ms when its configuration does not set it (both clients)
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000

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


class OffsetTracker:
    """Which offsets of each partition are in flight and done, and what may be committed."""

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest done offset
        self._committed: dict[TopicPartition, int] = {}

    def started(self, record: Record) -> None:
        self._in_flight.setdefault((record.topic, record.partition), set()).add(record.offset)

    def done(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        self._in_flight.setdefault(tp, set()).discard(record.offset)
        self._next[tp] = max(self._next.get(tp, 0), record.offset + 1)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition: the lowest offset in flight, else one past the highest done,
        where that is beyond what was committed."""
        offsets = {}
        for tp, next_offset in self._next.items():
            in_flight = self._in_flight.get(tp)
            offset = min(in_flight) if in_flight else next_offset
            if offset > self._committed.get(tp, -1):
                offsets[tp] = offset
        return offsets

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, tps) -> None:
        """Partitions this consumer lost: their offsets are another consumer's now."""
        for tp in tps:
            self._in_flight.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)


class BaseConsumer:
    """Consume ``topics`` and run each record through :attr:`REGISTRY`.

    :param config: the client library's own consumer configuration
    :param topics: topics to subscribe to
    :param producer: producer for follow-up messages and dead letters (default:
        one of the same transport, built from the connection settings in ``config``)
    :param settings: kser settings (default: read from ``KSER_*`` variables);
        ``settings.concurrency`` tasks run at once
    """

    #: the controller (or a Controller subclass, instantiated on first use) that runs records
    REGISTRY: Controller | type[Controller] = Controller
    #: the client's name for max.poll.interval.ms (None: the transport has no such limit)
    MAX_POLL_INTERVAL_KEY: str | None = None

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
        self._paused = threading.Event()
        self._task_done = threading.Event()
        self._exit_when_idle = False
        self.processed = 0
        #: longest the main thread goes without polling while it has work in hand: a
        #: third of max.poll.interval.ms, the most a group member may go without a poll.
        #: Such a poll pauses the partitions first if the backlog is full (a pause drops
        #: what the client prefetched: it is for long tasks, not for every batch)
        limit = self.config.get(self.MAX_POLL_INTERVAL_KEY, DEFAULT_MAX_POLL_INTERVAL_MS)
        self.keepalive_interval = (int(limit) / 3000 if self.MAX_POLL_INTERVAL_KEY
                                   else BUSY_POLL_INTERVAL)

    # -- what a transport adapts -------------------------------------------------------

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        raise NotImplementedError

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``: for each partition, the offset of the next record to read."""
        raise NotImplementedError

    def _pause(self) -> None:
        """Stop fetching from every assigned partition (polling keeps the membership)."""
        raise NotImplementedError

    def _resume(self) -> None:
        """Fetch again from every assigned partition."""
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

    # -- public controls ---------------------------------------------------------------

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
        """Stop: tasks in hand finish and are committed, nothing new starts.

        Safe from any thread or signal handler.
        """
        self._stopping.set()

    def pause(self) -> None:
        """Take no new record (tasks in hand finish); the consumer stays in its group,
        keeping its partitions and their place. Also on SIGUSR1."""
        if not self._paused.is_set():
            logger.info("%s paused", self.name)
        self._paused.set()

    def resume(self) -> None:
        """Take records again after :meth:`pause`. Also on SIGUSR2."""
        if self._paused.is_set():
            logger.info("%s resumed", self.name)
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Consume until :meth:`stop`, SIGTERM or SIGINT; then finish, commit, close, return."""
        restore = self._install_signal_handlers()
        self.controller.bind(self.producer, self.name)
        concurrency = max(1, self.settings.concurrency)
        logger.info("%s.Starting: consumer %s on %s (concurrency %d)", type(self).__name__,
                    self.name, ", ".join(self.topics), concurrency)
        tracker = OffsetTracker()
        backlog: deque[Record] = deque()
        running: dict[Future, Record] = {}
        fetching = fetched_nothing = True
        last_commit = last_poll = time.monotonic()
        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="kser-task") as executor:
                while True:
                    self._task_done.clear()  # before harvesting: no completion is missed
                    self._harvest(running, tracker)
                    if self._stopping.is_set():
                        if not running:
                            break
                        self._task_done.wait(BUSY_POLL_INTERVAL)
                        continue
                    while backlog and len(running) < concurrency and not self.paused:
                        record = backlog.popleft()
                        tracker.started(record)
                        running[executor.submit(self._process, record)] = record
                    idle = not running and not backlog
                    # commit when nothing more came (a checkpoint waits for the broker
                    # twice: it would delay the record an operation's last hop just
                    # sent), or every commit_interval under load
                    if ((idle and fetched_nothing)
                            or time.monotonic() - last_commit >= self.settings.commit_interval):
                        self._checkpoint(tracker)
                        last_commit = time.monotonic()
                    if not backlog and not self.paused:
                        # fetch only when everything fetched has been handed out
                        if not fetching:
                            self._resume()
                            fetching = True
                        records = self._poll(
                            BUSY_POLL_INTERVAL if running else self.settings.poll_timeout,
                            self.settings.max_poll_records)
                        last_poll = time.monotonic()
                        backlog.extend(records)
                        fetched_nothing = not records
                        if idle and not records and self._exit_when_idle:
                            self._sweep()
                            break
                        if not records and running:
                            self._task_done.wait(BUSY_POLL_INTERVAL)
                    else:
                        self._task_done.wait(BUSY_POLL_INTERVAL)
                        if time.monotonic() - last_poll >= self.keepalive_interval:
                            # a long wait: poll to keep the membership; with a full
                            # backlog, pause the partitions first so nothing more comes
                            if fetching and len(backlog) >= self.settings.max_poll_records:
                                self._pause()
                                fetching = False
                            backlog.extend(self._poll(0, self.settings.max_poll_records))
                            last_poll = time.monotonic()
                    self._sweep()
            self._harvest(running, tracker)
            self._checkpoint(tracker)
            self._flush_sent()
        finally:
            restore()
            self._shutdown()

    def _harvest(self, running: dict[Future, Record], tracker: OffsetTracker) -> None:
        for future in [f for f in running if f.done()]:
            record = running.pop(future)
            if future.result():
                tracker.done(record)
            # else: stopped while it had to be redone: left in flight, never committed

    def _process(self, record: Record) -> bool:
        """Handle one record in a task thread; redo it while its infrastructure fails.

        Returns True when it is done (to be committed), False when the consumer
        stopped before it could be.
        """
        try:
            while True:
                outcome = self.controller.handle(record.value, record.topic)
                if outcome.undeliverable and not self._dead_letter(record, outcome.result.stderr):
                    outcome.redo = True
                if not outcome.redo:
                    break
                logger.warning("%s will process %s[%d]@%d again in %.1f s: %s", self.name,
                               record.topic, record.partition, record.offset,
                               self.settings.redo_backoff, outcome.result.stderr)
                if self._stopping.wait(self.settings.redo_backoff):
                    return False
            self.processed += 1
            if outcome.kmsg is not None:
                logger.info("%s processed %s[%s] from %s[%d]@%d: retcode %d", self.name,
                            outcome.kmsg.entrypoint, outcome.kmsg.uuid, record.topic,
                            record.partition, record.offset, outcome.result.retcode)
            return True
        finally:
            self._task_done.set()

    def _dead_letter(self, record: Record, error: str) -> bool:
        """Send ``record`` to the dead-letter topic; False if the broker did not take it."""
        topic = self.settings.dlq_for(record.topic)
        values = (error, record.topic, str(record.partition), str(record.offset), self.name)
        headers = list(record.headers or []) + [
            (name, value.encode("utf-8")) for name, value in zip(DLQ_HEADERS, values, strict=True)]
        try:
            self.producer.send_raw(topic, record.value or b"", record.key, headers)
            self.producer.flush(timeout=self.settings.send_timeout)
        except Exception as exc:  # the broker is unreachable: try again later
            logger.error("%s could not dead-letter %s[%d]@%d: %s", self.name, record.topic,
                         record.partition, record.offset, exc)
            return False
        logger.warning("%s dead-lettered %s[%d]@%d to %s: %s", self.name, record.topic,
                       record.partition, record.offset, topic, error)
        return True

    def _sweep(self) -> None:
        """Let the sequencer send due retries and what a dead worker left (rate-limited)."""
        self._call_sequencer("sweep", "sweep")

    def _flush_sent(self) -> None:
        """Let the sequencer write the sent marks it holds (else a sweep re-sends those rows)."""
        self._call_sequencer("flush_sent", "writing the sent marks")

    def _call_sequencer(self, method: str, what: str) -> None:
        """Call the sequencer's ``method``, if there is one; a failure is logged, never
        raised: the store may be briefly unreachable, and the next call tries again
        (unwritten sent marks only mean rows sent again, which change nothing)."""
        call = getattr(self.controller.sequencer, method, None)
        if call is None:
            return
        try:
            call()
        except Exception as exc:
            logger.warning("%s: %s failed: %s", self.name, what, exc)

    def _checkpoint(self, tracker: OffsetTracker) -> None:
        """Commit what may be committed, once everything produced is acknowledged."""
        offsets = tracker.committable()
        if not offsets:
            return
        try:
            self.producer.flush(timeout=self.settings.send_timeout)
        except Exception as exc:  # not committing is always safe
            logger.error("%s: messages not acknowledged (%s); offsets not committed",
                         self.name, exc)
            return
        try:
            self._commit(offsets)
            tracker.committed(offsets)
        except Exception as exc:  # e.g. partitions revoked by a rebalance
            logger.warning("%s: commit of %s failed (%s); the records will be delivered again",
                           self.name, offsets, exc)
            tracker.forget(offsets)

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
        actions = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
                   signal.SIGUSR1: self.pause, signal.SIGUSR2: self.resume}
        previous = {sig: signal.getsignal(sig) for sig in actions}

        def on_signal(signum, _frame):
            logger.info("%s: %s received", self.name, signal.Signals(signum).name)
            actions[signum]()

        for sig in actions:
            signal.signal(sig, on_signal)
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]
