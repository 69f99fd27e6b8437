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
seconds (doubling up to :data:`REDO_MAX_BACKOFF`) and blocks the commit of its
partition until then. A record that cannot be decoded, routed or handled goes,
with its error, to the dead-letter topic (or the store: see
:mod:`kser.deadletter`) and its offset is committed: one bad record never
stops or blocks a partition.

Nothing a record holds can end the loop: everything between poll and commit
is guarded, and an error the loop did not foresee is handled as a transient
one. A failing poll (the broker stopped, a rebalance cut short) is retried
with backoff. The loop ends only on :meth:`BaseConsumer.stop` (SIGTERM,
SIGINT), after the tasks in hand finished or ``shutdown_timeout`` passed (or a
second signal came: then the unfinished records are left uncommitted, to be
redone elsewhere, and :attr:`BaseConsumer.exit_code` is 1), or on a
:class:`~kser.errors.WorkerFatalError` (its store file removed).

A transport subclasses :class:`BaseConsumer` and adapts its client's calls:
``_poll``, ``_commit``, ``_pause``, ``_resume``, ``_close``, ``_new_producer``,
``_new_admin``. Its client's group session timeout and heartbeat interval
default to ``settings.session_timeout`` and ``settings.heartbeat_interval``, and
its client id to the worker's name (``kser topics describe`` shows who owns
which partition).
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
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kser import metrics, tracing
from kser.config import Settings
from kser.controller import Controller, Outcome
from kser.deadletter import DLQ_HEADERS, DeadLetters
from kser.errors import UNACKNOWLEDGED_HINT, WorkerFatalError, is_transient, safe_text
from kser.errors import WorkerStartError as WorkerStartError
from kser.producer import BaseProducer
from kser.record import Record, TopicPartition
from kser.results import exception_result
from kser.topics import TopicAdmin

if TYPE_CHECKING:
    from kser.store import Store

logger = logging.getLogger(__name__)

__all__ = ["DLQ_HEADERS", "BaseConsumer", "Record", "TopicPartition", "WorkerStartError"]

#: longest the main thread waits in one poll, or for a task, while tasks run, seconds
BUSY_POLL_INTERVAL = 0.2
#: longest wait before a record whose infrastructure failed is processed again, seconds
REDO_MAX_BACKOFF = 30.0
#: first and longest wait after a failed poll before the next one, seconds
POLL_RETRY_MIN, POLL_RETRY_MAX = 0.5, 10.0
#: longest the main thread goes without polling while tasks run, seconds: a rebalance
#: waits for every member's next poll
REBALANCE_POLL_INTERVAL = 1.0
#: the client's max.poll.interval.ms when its configuration does not set it (both clients)
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000

_consumer_numbers = itertools.count(1)


class OffsetTracker:
    """Which offsets of each partition are in flight and done, and what may be committed."""

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest done offset
        self._committed: dict[TopicPartition, int] = {}
        #: the partitions the group gives this consumer now (None: not told, e.g. the
        #: in-process transport): only theirs are committed
        self._owned: set[TopicPartition] | None = None

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
            if self._owned is not None and tp not in self._owned:
                continue  # another member's now: its commit would be refused
            in_flight = self._in_flight.get(tp)
            offset = min(in_flight) if in_flight else next_offset
            if offset > self._committed.get(tp, -1):
                offsets[tp] = offset
        return offsets

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The group's committed offset of each partition this consumer owns, as far as it
        knows (what it committed, or found committed when given the partition)."""
        return {tp: offset for tp, offset in self._committed.items()
                if self._owned is None or tp in self._owned}

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """A commit of these partitions failed (a rebalance, a blip): it is tried again at
        the next checkpoint if they are still this consumer's. What was done stays done
        (a client keeps the position of a partition it keeps through a rebalance, so those
        records are never delivered again: forgetting them left the group's offset behind
        for good), and a record still running bounds the commit until it ends."""
        for tp in tps:
            self._committed.pop(tp, None)

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        """The group gave these partitions to this consumer (added to what it has)."""
        self._owned = (self._owned or set()) | set(tps)

    def floor(self, offsets: dict[TopicPartition, int | None]) -> None:
        """The group's committed offsets of partitions just assigned: never commit at or
        below them (what was done here before another member had them is older than what
        it committed: committing it would move the group back)."""
        for tp, offset in offsets.items():
            if offset is not None:
                self._committed[tp] = max(offset, self._committed.get(tp, -1))

    def revoked(self, tps: Iterable[TopicPartition]) -> None:
        """The group took these partitions away: not committed until given back (then
        committed again, from what was done here)."""
        self._owned = (self._owned or set()) - set(tps)
        for tp in tps:
            self._committed.pop(tp, None)


@dataclass
class _LoopState:
    """What the consume loop carries from one step to the next."""

    tracker: OffsetTracker
    executor: ThreadPoolExecutor
    concurrency: int
    backlog: deque[Record] = field(default_factory=deque)
    #: the records each task thread has in hand (one, or a batch)
    running: dict[Future[list[bool]], list[Record]] = field(default_factory=dict)
    #: False while the partitions are paused (a full backlog, a stop)
    fetching: bool = True
    fetched_nothing: bool = True
    last_commit: float = field(default_factory=time.monotonic)
    last_poll: float = field(default_factory=time.monotonic)
    last_lag: float = 0.0
    stop_deadline: float | None = None

    @property
    def idle(self) -> bool:
        return not self.running and not self.backlog


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

    def __init__(self, config: dict[str, Any], topics: list[str] | str, *,
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
        self._aborting = threading.Event()
        self._paused = threading.Event()
        self._task_done = threading.Event()
        #: return once every topic is drained (``run(until_idle=True)``), instead of
        #: consuming until stopped
        self.until_idle = False
        self._counter_lock = threading.Lock()
        self._poll_failures = 0
        self._own_store: Store | None = None
        self.processed = 0
        self._tracker: OffsetTracker | None = None
        #: partitions assigned whose committed offsets the tracker has not been told yet
        self._unfloored: set[TopicPartition] = set()
        #: 0 after a clean stop; 1 when tasks were abandoned or a fatal error stopped it
        self.exit_code = 0
        #: tasks still running when the worker gave up waiting for them at its stop
        self.abandoned = 0
        #: the WorkerFatalError that stopped the worker, if one did
        self.fatal: WorkerFatalError | None = None
        self.dead_letters = DeadLetters(lambda: self.producer, self.settings,
                                        self._dead_letter_store, self.name)
        #: longest the main thread goes without polling while it has work in hand:
        #: :data:`REBALANCE_POLL_INTERVAL`, so that a rebalance (a worker joined, or died)
        #: is joined at once instead of holding up the whole group (and at most a third
        #: of max.poll.interval.ms). Such a poll takes only what fits in the backlog, and
        #: pauses the partitions first when it is full (a pause drops what the client
        #: prefetched: it happens once per backlog, not per batch)
        limit = self.config.get(self.MAX_POLL_INTERVAL_KEY or "", DEFAULT_MAX_POLL_INTERVAL_MS)
        self.keepalive_interval = (min(int(limit) / 3000, REBALANCE_POLL_INTERVAL)
                                   if self.MAX_POLL_INTERVAL_KEY else BUSY_POLL_INTERVAL)


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

    def _new_admin(self) -> TopicAdmin:
        """A topic admin of this consumer's cluster (see :mod:`kser.topics`)."""
        raise NotImplementedError

    def _log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition, as the client last saw it
        (no request to the broker; those it does not know are left out)."""
        return {}

    def _group_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``partitions`` (None: none committed). Called
        on the main thread outside the client's callbacks."""
        return {}

    def _ensure_topics(self, topics: list[str]) -> list[str]:
        """Create those of ``topics`` that do not exist (``settings.partitions``
        partitions, ``settings.replication_factor`` replicas, see :mod:`kser.topics`); return
        the created ones. Those that existed and are less durable than kser would create
        them are named in a warning."""
        with self._new_admin() as admin:
            created = admin.ensure(topics)
            try:
                for line in admin.short_of([t for t in topics if t not in created]):
                    logger.warning("%s: %s", self.name, line)
            except Exception as exc:  # (a check: it never stops a start)
                logger.info("%s: replicas of %s not checked: %s", self.name, topics, exc)
            return created

    def _producer_options(self) -> dict[str, Any]:
        """kser's own producer options, from this consumer's settings."""
        return self.settings.producer_options()

    def _admin_options(self) -> dict[str, Any]:
        return self.settings.admin_options()

    def _revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """The group took ``partitions`` from this worker (called by the transport's client
        in a poll of the main thread). Their records fetched and not started stay in the
        backlog and run (duplicates are harmless; dropping them would skip them when the
        partition comes back, as the client keeps its position)."""
        if self._tracker is not None:
            self._tracker.revoked(partitions)
        metrics.set_lag({}, gone=partitions)

    def _assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Log the partitions the group gave this worker (called by the transport's
        client at each rebalance, in a poll of the main thread): which worker works on
        what, and since when; only those are committed, never below the group's committed
        offsets (read after the poll: see :meth:`_group_offsets`)."""
        if self._tracker is not None:
            self._tracker.assigned(partitions)
            self._unfloored.update(partitions)
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append(partition)
        logger.info("%s: assigned %d partition(s): %s", self.name, len(partitions),
                    "; ".join(f"{topic}[{','.join(map(str, sorted(parts)))}]"
                              for topic, parts in sorted(by_topic.items())) or "none")

    @staticmethod
    def _force_manual_commit(config: dict[str, Any], key: str) -> dict[str, Any]:
        """Turn the client's auto-commit off: it would commit before processing."""
        if str(config.get(key, "")).lower() in ("true", "1"):
            logger.warning("%s=True ignored: kser commits an offset only after its message "
                           "is processed and its follow-ups are acknowledged", key)
        config[key] = False
        return config

    # -- the client, for tools that read a topic without the loop (kser dlq) -------------

    def fetch(self, timeout: float, max_records: int) -> list[Record]:
        """Poll the client once (no processing, no commit)."""
        return self._poll(timeout, max_records)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (per partition, the offset of the next record to read)."""
        self._commit(offsets)

    def close(self) -> None:
        """Close the client (:meth:`run` does it itself when it returns)."""
        self._close()

    # -- public controls ---------------------------------------------------------------

    @property
    def producer(self) -> BaseProducer:
        """The producer of follow-up messages and dead letters."""
        if self._producer is None:
            # built with KSER_MAX_MESSAGE_BYTES: the same limit for follow-ups as for sends
            self._producer = self._new_producer()
        return self._producer

    @property
    def controller(self) -> Controller:
        """The controller records are routed through. ``REGISTRY`` is kser 0.8's name for
        it (``cons.REGISTRY = registry.controller``), kept working; a class is instantiated
        on first use."""
        if isinstance(self.REGISTRY, type):
            self.REGISTRY = self.REGISTRY()
        return self.REGISTRY

    @controller.setter
    def controller(self, controller: Controller) -> None:
        self.REGISTRY = controller

    def stop(self) -> None:
        """Stop: tasks in hand finish (for up to ``settings.shutdown_timeout`` seconds)
        and are committed, nothing new starts; a second call gives up on the tasks at once.

        Safe from any thread or signal handler.
        """
        if self._stopping.is_set():
            self._aborting.set()
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

    def run(self, until_idle: bool = False) -> None:
        """Consume until :meth:`stop`, SIGTERM or SIGINT (or, with ``until_idle``, until a
        poll brings nothing and nothing runs); then finish, commit, close, return.

        :raises WorkerStartError: what the worker needs is missing (its store, its
            topics): nothing was consumed
        """
        self.until_idle = until_idle
        restore = self._install_signal_handlers()
        executor = None
        clean = False
        try:
            self._prepare()
            concurrency = max(1, self.settings.concurrency)
            logger.info("%s.Starting: consumer %s on %s (concurrency %d)", type(self).__name__,
                        self.name, ", ".join(self.topics), concurrency)
            executor = ThreadPoolExecutor(concurrency, thread_name_prefix="kser-task")
            self._loop(executor, concurrency)
            clean = True
        finally:
            if executor is not None:
                # abandoned tasks are never waited for: their records stay uncommitted
                executor.shutdown(wait=clean and not self.abandoned, cancel_futures=True)
            restore()
            self._shutdown()

    def _prepare(self) -> None:
        """Check what the worker needs before it takes a record; refuse to start without it."""
        self.controller.bind(self.producer, self.name)
        try:
            self.controller.sealer  # noqa: B018 - KSER_SECRET_KEYS checked before any record
        except Exception as exc:
            raise WorkerStartError(safe_text(getattr(exc, "message", exc), 500)) from None
        entrypoints = sorted(self.controller.ENTRYPOINTS)
        logger.info("%s: %d entrypoint(s) registered: %s", self.name, len(entrypoints),
                    ", ".join(entrypoints) or "none")
        sequencer = self.controller.sequencer
        if sequencer is not None and sequencer.runs_operations:
            from kser.store import StoreError

            try:
                sequencer.store.check_file()
            except (StoreError, WorkerFatalError) as exc:
                raise WorkerStartError(str(exc)) from None
        topics = list(dict.fromkeys([*self.topics,
                                     *(self.settings.dlq_for(t) for t in self.topics)]))
        # a blip is tried again; a cluster that stays silent for connect_timeout is an error
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            try:
                created = self._ensure_topics(topics)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise WorkerStartError(
                        f"the topics {', '.join(topics)} cannot be checked or created "
                        f"({safe_text(exc, 500)}): a worker needs its topics and their "
                        "dead-letter topics; create them (kser topics create), or give kser "
                        "the right to, and check the names") from None
                if time.monotonic() >= deadline:
                    raise WorkerStartError(
                        f"the Kafka cluster did not answer within "
                        f"{self.settings.connect_timeout:g} s ({safe_text(exc, 300)}): is "
                        "the broker running and reachable?") from None
                logger.warning("%s: checking the topics failed (%s); trying again",
                               self.name, safe_text(exc, 300))
                if self._stopping.wait(POLL_RETRY_MIN * 2):
                    raise WorkerStartError("stopped while it checked its topics") from None
        self.producer.topics_exist(topics)
        if created:
            logger.info("%s: created topic(s) %s", self.name, ", ".join(created))

    def _loop(self, executor: ThreadPoolExecutor, concurrency: int) -> None:
        """Harvest, then (unless stopping) dispatch, checkpoint, fetch, sweep; once stopped,
        commit what finished and write the sent marks."""
        loop = _LoopState(self._tracker_for_run(), executor, concurrency)
        while True:
            self._task_done.clear()  # before harvesting: no completion is missed
            self._harvest(loop.running, loop.tracker)
            if self._stopping.is_set():
                if self._stop_step(loop):
                    break
                continue
            self._dispatch(loop)
            self._maybe_checkpoint(loop)
            self._maybe_report_lag(loop)
            if self._fetch(loop):
                break
            self._sweep()
        self._harvest(loop.running, loop.tracker)
        self._checkpoint(loop.tracker)
        self._flush_sent()

    def _tracker_for_run(self) -> OffsetTracker:
        self._tracker = OffsetTracker()
        return self._tracker

    def _stop_step(self, loop: _LoopState) -> bool:
        """One step of a stop: True once the loop may end (no task left, or they are
        abandoned after ``shutdown_timeout`` or a second signal)."""
        if not loop.running:
            return True
        if loop.stop_deadline is None:
            loop.stop_deadline = time.monotonic() + self.settings.shutdown_timeout
            logger.info("%s: stopping; waiting up to %g s for %d task(s)", self.name,
                        self.settings.shutdown_timeout, len(loop.running))
        if self._aborting.is_set() or time.monotonic() >= loop.stop_deadline:
            self.abandoned = sum(len(records) for records in loop.running.values())
            self.exit_code = 1
            logger.error("%s: %d task(s) still running %s: their records are not "
                         "committed and will be processed again by another worker",
                         self.name, self.abandoned,
                         "at a second stop signal" if self._aborting.is_set() else
                         f"after {self.settings.shutdown_timeout:g} s")
            return True
        self._task_done.wait(BUSY_POLL_INTERVAL)
        if time.monotonic() - loop.last_poll >= self.keepalive_interval:
            # go on taking part in the group's rebalances while the tasks finish; paused,
            # nothing comes (anything that does is left, not started)
            loop.fetching = not self._call_client(self._pause, "pause") and loop.fetching
            self._poll_guarded(0, 1)
            loop.last_poll = time.monotonic()
        return False

    def _dispatch(self, loop: _LoopState) -> None:
        """Hand backlog records to free task threads (none while paused): one each, or
        under load a batch each (the backlog shared among the free threads, at most
        what the controller takes at once: see ``Controller.batch_limit``)."""
        while loop.backlog and len(loop.running) < loop.concurrency and not self.paused:
            free = loop.concurrency - len(loop.running)
            # (rounded down: a free thread is never left idle while another holds two)
            size = min(len(loop.backlog) // free,
                       self.controller.batch_limit(self.settings.batch_size))
            records = [loop.backlog.popleft() for _ in range(max(1, size))]
            for record in records:
                loop.tracker.started(record)
            future = loop.executor.submit(self._process_all, records)
            # (woken once the future is done: set at the end of the task thread's work,
            # the loop could wake, find it not done yet and sleep a poll interval)
            future.add_done_callback(self._wake)
            loop.running[future] = records

    def _maybe_checkpoint(self, loop: _LoopState) -> None:
        """Commit when nothing more came (a checkpoint waits for the broker twice: it would
        delay the record an operation's last hop just sent), or every commit_interval
        under load."""
        if ((loop.idle and loop.fetched_nothing)
                or time.monotonic() - loop.last_commit >= self.settings.commit_interval):
            self._checkpoint(loop.tracker)
            loop.last_commit = time.monotonic()

    def _maybe_report_lag(self, loop: _LoopState) -> None:
        """Every :data:`~kser.metrics.LAG_INTERVAL` (metrics on): the consumer lag of each
        partition, from what the client last saw of its end (no request)."""
        now = time.monotonic()
        if not metrics.enabled() or now - loop.last_lag < metrics.LAG_INTERVAL:
            return
        loop.last_lag = now
        committed = loop.tracker.committed_offsets()
        try:
            ends = self._log_ends(list(committed))
        except Exception as exc:  # (a gauge is not worth a failing loop)
            logger.debug("%s: partition ends unknown: %s", self.name, safe_text(exc))
            return
        metrics.set_lag({tp: end - committed[tp] for tp, end in ends.items()
                         if tp in committed})

    def _fetch(self, loop: _LoopState) -> bool:
        """Poll for records once everything fetched was handed out; else wait for a task,
        polling at least every ``keepalive_interval`` to keep the membership and join
        rebalances. True when the loop may end (``until_idle`` and nothing left)."""
        backlog = loop.backlog
        if not backlog and not self.paused:
            idle = loop.idle
            if not loop.fetching:
                loop.fetching = self._call_client(self._resume, "resume")
            records = self._poll_guarded(
                BUSY_POLL_INTERVAL if loop.running else self.settings.poll_timeout,
                self.settings.max_poll_records)
            loop.last_poll = time.monotonic()
            backlog.extend(records)
            loop.fetched_nothing = not records
            if idle and not records and self.until_idle:
                self._sweep()
                return True
            if not records and loop.running:
                self._task_done.wait(BUSY_POLL_INTERVAL)
            return False
        self._task_done.wait(BUSY_POLL_INTERVAL)
        if time.monotonic() - loop.last_poll >= self.keepalive_interval:
            # with a full backlog, pause the partitions first so nothing more comes
            room = self.settings.max_poll_records - len(backlog)
            if room <= 0:  # every time: a rebalance may have added partitions
                loop.fetching = not self._call_client(self._pause, "pause") and loop.fetching
            backlog.extend(self._poll_guarded(0, max(1, room)))
            loop.last_poll = time.monotonic()
        return False

    def _poll_guarded(self, timeout: float, max_records: int) -> list[Record]:
        """Poll; a failing poll (broker gone, a rebalance cut short) is logged and tried
        again after a backoff, never the end of the worker."""
        try:
            records = self._poll(timeout, max_records)
        except WorkerFatalError as exc:
            self._fatal(exc)
            return []
        except Exception as exc:
            self._poll_failures += 1
            delay = min(POLL_RETRY_MIN * 2 ** (self._poll_failures - 1), POLL_RETRY_MAX)
            logger.warning("%s: poll failed (%s: %s); polling again in %.1f s (failure %d in "
                           "a row)", self.name, type(exc).__name__, safe_text(exc, 500), delay,
                           self._poll_failures)
            self._stopping.wait(delay)
            return []
        if self._poll_failures:
            logger.info("%s: polling again after %d failure(s)", self.name,
                        self._poll_failures)
            self._poll_failures = 0
        if self._unfloored and self._tracker is not None:
            try:
                self._tracker.floor(self._group_offsets(sorted(self._unfloored)))
                self._unfloored.clear()
            except Exception as exc:  # tried again after the next poll, before a commit
                logger.warning("%s: reading the group's committed offsets failed: %s",
                               self.name, safe_text(exc, 300))
        return records

    def _call_client(self, action: Callable[[], object], what: str) -> bool:
        """Pause or resume the client's fetching; True if done (a failure is logged: the
        next poll tells whether the client is usable)."""
        try:
            action()
            return True
        except Exception as exc:
            logger.warning("%s: %s failed: %s", self.name, what, safe_text(exc, 500))
            return False

    def _fatal(self, exc: WorkerFatalError) -> None:
        if self.fatal is None:
            logger.error("%s: %s", self.name, safe_text(exc, None))
            self.fatal, self.exit_code = exc, 1
        self._stopping.set()  # not stop(): a second fatal error is no second signal

    def _harvest(self, running: dict[Future[list[bool]], list[Record]],
                 tracker: OffsetTracker) -> None:
        for future in [f for f in running if f.done()]:
            records = running.pop(future)
            for record, done in zip(records, future.result(), strict=True):
                if done:
                    tracker.done(record)
                # else: stopped while it had to be redone: left in flight, never committed

    def _process_all(self, records: list[Record]) -> list[bool]:
        """Handle records in a task thread (one, or a batch the controller handles
        together: see ``Controller.handle_many``); redo those whose infrastructure failed,
        together, after a doubling backoff.

        Returns, per record, True when it is done (to be committed), False when the
        consumer stopped before it could be. Never raises, whatever the records hold.
        """
        done: set[int] = set()
        try:
            todo, redo = list(records), 0
            while todo:
                again = []
                # (a batch that must be redone is redone record by record: one record
                # failing every time never holds the others)
                for record, outcome in zip(todo, self._outcomes(todo, alone=redo > 0),
                                           strict=True):
                    if outcome.undeliverable and not self.dead_letters.send(
                            record, outcome.result.stderr or "undeliverable"):
                        outcome.redo = True
                    if outcome.redo:
                        again.append(record)
                        delay = min(self.settings.redo_backoff * 2 ** redo, REDO_MAX_BACKOFF)
                        logger.warning("%s will process %s[%d]@%d again in %.1f s: %s",
                                       self.name, record.topic, record.partition,
                                       record.offset, delay,
                                       safe_text(outcome.result.stderr, 1000))
                        continue
                    done.add(id(record))
                    with self._counter_lock:  # task threads finish together
                        self.processed += 1
                    if outcome.kmsg is not None:
                        logger.info("%s processed %s[%s] from %s[%d]@%d: retcode %d",
                                    self.name, outcome.kmsg.entrypoint, outcome.kmsg.uuid,
                                    record.topic, record.partition, record.offset,
                                    outcome.result.retcode)
                if again and self._stopping.wait(
                        min(self.settings.redo_backoff * 2 ** redo, REDO_MAX_BACKOFF)):
                    break
                todo, redo = again, redo + 1
        except WorkerFatalError as exc:
            self._fatal(exc)
        return [id(record) in done for record in records]

    def _wake(self, _future: Future[list[bool]]) -> None:
        """Wake the consume loop: a task thread's records are done (their future too)."""
        self._task_done.set()

    def _outcomes(self, records: list[Record], alone: bool = False) -> list[Outcome]:
        """How each record was handled: together (unless ``alone``), or one at a time; a
        record the client could not read is a placeholder dead letter saying where it is."""
        readable = [record for record in records if record.unreadable is None]
        group = self.config.get("group_id") or self.config.get("group.id")
        with tracing.consuming(readable, group, self.name) as traces:
            handled = (self._handle_many(readable, traces) if len(readable) > 1 and not alone
                       else [self._handle(record, trace)
                             for record, trace in zip(readable, traces, strict=True)])
        outcomes = dict(zip(map(id, readable), handled, strict=True))
        return [outcomes.get(id(record)) or Outcome(None, exception_result(ValueError(
            f"The Kafka client could not read this record ({record.unreadable}); this dead "
            "letter only says where it is: read it with another client before the topic's "
            "retention removes it")), undeliverable=True) for record in records]

    def _handle(self, record: Record, trace: Any = None) -> Outcome:
        """The controller's outcome for ``record``; an error it did not foresee (a bug, a
        failing user hook) is redone later, like a failure of the infrastructure."""
        try:
            return self.controller.handle(record.value, record.topic, trace)
        except WorkerFatalError:
            raise
        except Exception as exc:
            logger.error("%s: %s[%d]@%d raised %s: %s", self.name, record.topic,
                         record.partition, record.offset, type(exc).__name__,
                         safe_text(exc, 1000))
            return Outcome(None, exception_result(exc), redo=True)

    def _handle_many(self, records: list[Record], traces: list[Any]) -> list[Outcome]:
        """:meth:`_handle` for several records at once; if the controller fails on the
        batch unforeseen, each record is redone alone."""
        try:
            return self.controller.handle_many([(r.value, r.topic) for r in records], traces)
        except WorkerFatalError:
            raise
        except Exception as exc:
            logger.error("%s: %d records handled together raised %s: %s; each is handled "
                         "again alone", self.name, len(records), type(exc).__name__,
                         safe_text(exc, 1000))
            return [Outcome(None, exception_result(exc), redo=True) for _ in records]

    def _dead_letter_store(self) -> Store:
        """The store dead letters fall back on: the sequencer's, else one of this consumer."""
        sequencer = self.controller.sequencer
        if sequencer is not None:
            return sequencer.store
        if self._own_store is None:
            from kser.store import Store

            self._own_store = Store(self.settings.store_url)
        return self._own_store

    def _sweep(self) -> None:
        """Let the sequencer send due retries and what a dead worker left (rate-limited)."""
        sequencer = self.controller.sequencer
        if sequencer is not None:
            self._guarded(sequencer.sweep, "sweep")

    def _flush_sent(self) -> None:
        """Let the sequencer write the sent marks it holds (else a sweep re-sends those rows)."""
        sequencer = self.controller.sequencer
        if sequencer is not None:
            self._guarded(sequencer.flush_sent, "writing the sent marks")

    def _guarded(self, call: Callable[[], object], what: str) -> None:
        """Call ``call``; a failure is logged, never raised: the store may be briefly
        unreachable, and the next call tries again (unwritten sent marks only mean rows
        sent again, which change nothing)."""
        try:
            call()
        except WorkerFatalError as exc:
            self._fatal(exc)
        except Exception as exc:
            logger.warning("%s: %s failed: %s", self.name, what, safe_text(exc, 1000))

    def _checkpoint(self, tracker: OffsetTracker) -> None:
        """Commit what may be committed, once everything produced is acknowledged."""
        offsets = tracker.committable()
        if not offsets:
            return
        try:
            self.producer.flush(timeout=self.settings.send_timeout)
        except Exception as exc:  # not committing is always safe
            logger.error("%s: messages not acknowledged within %g s (%s); offsets not "
                         "committed: the records will be done again (%s)", self.name,
                         self.settings.send_timeout, exc, UNACKNOWLEDGED_HINT)
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
        except Exception as exc:  # the broker may be gone: nothing left to tell it
            logger.warning("%s: closing the consumer failed: %s", self.name, safe_text(exc))
        finally:
            if self._producer is not None:
                try:
                    self._producer.close()
                except Exception as exc:
                    logger.warning("%s: closing the producer failed: %s", self.name,
                                   safe_text(exc))
        logger.info("%s.Stopped: consumer %s after %d record(s)", type(self).__name__,
                    self.name, self.processed)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        actions: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
            signal.SIGUSR1: self.pause, signal.SIGUSR2: self.resume}
        previous = {sig: signal.getsignal(sig) for sig in actions}

        def on_signal(signum: int, _frame: object) -> None:
            again = signum in (signal.SIGTERM, signal.SIGINT) and self._stopping.is_set()
            logger.info("%s: %s received%s", self.name, signal.Signals(signum).name,
                        ": not waiting for the tasks in hand" if again else "")
            actions[signum]()

        for sig in actions:
            signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore
