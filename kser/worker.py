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
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kser import metrics, signals
from kser.config import Settings
from kser.consumer_client import POLL_RETRY_MAX, POLL_RETRY_MIN, ConsumerClient
from kser.controller import Controller
from kser.deadletter import DLQ_HEADERS, DeadLetters
from kser.errors import WorkerFatalError, safe_text
from kser.errors import WorkerStartError as WorkerStartError
from kser.handling import REDO_MAX_BACKOFF as REDO_MAX_BACKOFF
from kser.handling import RecordHandler
from kser.offsets import OffsetTracker as OffsetTracker
from kser.producer import BaseProducer
from kser.record import Record, TopicPartition

if TYPE_CHECKING:
    from kser.store import Store

logger = logging.getLogger(__name__)

__all__ = ["DLQ_HEADERS", "BaseConsumer", "Record", "TopicPartition", "WorkerStartError"]

#: longest the main thread waits in one poll, or for a task, while tasks run, seconds
BUSY_POLL_INTERVAL = 0.2
#: longest the main thread goes without polling while tasks run, seconds: a rebalance
#: waits for every member's next poll
REBALANCE_POLL_INTERVAL = 1.0
#: the client's max.poll.interval.ms when its configuration does not set it (both clients)
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000

_consumer_numbers = itertools.count(1)




@dataclass
class _LoopState:
    """What the consume loop carries from one step to the next."""

    tracker: OffsetTracker
    executor: ThreadPoolExecutor
    concurrency: int
    backlog: deque[Record] = field(default_factory=deque)
    #: the records each task thread has in hand (one, or a batch)
    running: dict[Future[list[bool | Future[bool]]], list[Record]] = field(
        default_factory=dict)
    #: the records whose ``async def`` bodies the event loop awaits (no thread held)
    waiting: dict[Future[bool], Record] = field(default_factory=dict)
    #: False while the partitions are paused (a full backlog, a stop)
    fetching: bool = True
    fetched_nothing: bool = True
    last_commit: float = field(default_factory=time.monotonic)
    last_poll: float = field(default_factory=time.monotonic)
    last_lag: float = 0.0
    stop_deadline: float | None = None

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting and not self.backlog

    @property
    def busy(self) -> bool:
        """Records in hand: in task threads, or awaited on the event loop."""
        return bool(self.running or self.waiting)

    def harvest(self, wake: Callable[[Future[Any]], None]) -> None:
        """Mark done the records the task threads and the event loop finished; those a
        thread left to the event loop are kept in hand (``wake`` called when they end)."""
        for future in [f for f in self.running if f.done()]:
            records = self.running.pop(future)
            for record, done in zip(records, future.result(), strict=True):
                if isinstance(done, Future):  # (its body is awaited on the event loop)
                    self.waiting[done] = record
                    done.add_done_callback(wake)
                elif done:
                    self.tracker.done(record)
                # else: stopped while it had to be redone: left in flight, never committed
        for awaited in [f for f in self.waiting if f.done()]:
            record = self.waiting.pop(awaited)
            if awaited.result():
                self.tracker.done(record)


class BaseConsumer(ConsumerClient):
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
        # host:pid, and a suffix for the 2nd, 3rd... consumer of one process: the store
        # tells workers apart by it
        number = next(_consumer_numbers)
        super().__init__(dict(config), [topics] if isinstance(topics, str) else list(topics),
                         settings or Settings(),
                         f"{socket.gethostname()}:{os.getpid()}"
                         + (f"-{number}" if number > 1 else ""))
        self._producer = producer
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._paused = threading.Event()
        self._task_done = threading.Event()
        #: return once every topic is drained (``run(until_idle=True)``), instead of
        #: consuming until stopped
        self.until_idle = False
        self._poll_failures = 0
        self._own_store: Store | None = None
        #: handles the records of the task threads (made when the run starts)
        self._handler: RecordHandler | None = None
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
















    # -- the client, for tools that read a topic without the loop (kser dlq) -------------




    # -- public controls ---------------------------------------------------------------


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
        restore = signals.install(self.name, self._stopping, self.stop, self.pause,
                                  self.resume)
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
            logger.info("%s.Stopped: consumer %s after %d record(s)", type(self).__name__,
                        self.name, self.processed)

    @property
    def processed(self) -> int:
        """Records done (committed, or to be) since the worker started."""
        return 0 if self._handler is None else self._handler.processed

    def _prepare(self) -> None:
        """Check what the worker needs before it takes a record; refuse to start without it."""
        self.controller.bind(self.producer, self.name)
        self._handler = RecordHandler(
            self.controller, self.dead_letters, self.settings, self.name,
            self.config.get("group_id") or self.config.get("group.id"), self._stopping,
            self._fatal)
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
        self._ensure_topics_at_start(self._stopping)

    def _loop(self, executor: ThreadPoolExecutor, concurrency: int) -> None:
        """Harvest, then (unless stopping) dispatch, checkpoint, fetch, sweep; once stopped,
        commit what finished and write the sent marks."""
        loop = _LoopState(self._tracker_for_run(), executor, concurrency)
        while True:
            self._task_done.clear()  # before harvesting: no completion is missed
            self._harvest(loop)
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
        self._harvest(loop)
        self._checkpoint(loop.tracker)
        self._flush_sent()

    def _tracker_for_run(self) -> OffsetTracker:
        self._tracker = OffsetTracker()
        return self._tracker

    def _stop_step(self, loop: _LoopState) -> bool:
        """One step of a stop: True once the loop may end (no task left, or they are
        abandoned after ``shutdown_timeout`` or a second signal)."""
        if not loop.busy:
            return True
        if loop.stop_deadline is None:
            loop.stop_deadline = time.monotonic() + self.settings.shutdown_timeout
            logger.info("%s: stopping; waiting up to %g s for %d task(s)", self.name,
                        self.settings.shutdown_timeout,
                        len(loop.running) + len(loop.waiting))
        if self._aborting.is_set() or time.monotonic() >= loop.stop_deadline:
            self.abandoned = (sum(len(records) for records in loop.running.values())
                              + len(loop.waiting))
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
        while (loop.backlog and len(loop.running) < loop.concurrency and not self.paused
               and len(loop.waiting) < self.settings.async_concurrency):
            free = loop.concurrency - len(loop.running)
            # (rounded down: a free thread is never left idle while another holds two)
            size = min(len(loop.backlog) // free,
                       self.controller.batch_limit(self.settings.batch_size))
            records = [loop.backlog.popleft() for _ in range(max(1, size))]
            for record in records:
                loop.tracker.started(record)
            assert self._handler is not None  # (made by _prepare, before the loop)
            future = loop.executor.submit(self._handler.process_all, records)
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
                BUSY_POLL_INTERVAL if loop.busy else self.settings.poll_timeout,
                self.settings.max_poll_records)
            loop.last_poll = time.monotonic()
            backlog.extend(records)
            loop.fetched_nothing = not records
            if idle and not records and self.until_idle:
                self._sweep()
                return True
            if not records and loop.busy:
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


    def _fatal(self, exc: WorkerFatalError) -> None:
        if self.fatal is None:
            logger.error("%s: %s", self.name, safe_text(exc, None))
            self.fatal, self.exit_code = exc, 1
        self._stopping.set()  # not stop(): a second fatal error is no second signal

    def _harvest(self, loop: _LoopState) -> None:
        loop.harvest(self._wake)

    def _wake(self, _future: Future[Any]) -> None:
        """Wake the consume loop: a task thread's records are done (their future too)."""
        self._task_done.set()

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



