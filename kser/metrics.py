"""Prometheus metrics: what the workers ran, how long it took, how late it started, and
what the store holds (``pip install 'kser[prometheus]'``: prometheus-client).

``kser worker --metrics-port P`` serves them at ``http://HOST:P/metrics``. Several
workers on one host given the same port share one directory of samples
(prometheus-client's multiprocess mode; ``KSER_METRICS_DIR``, by default
``<tmp>/kser-metrics-<uid>-P``, private to the user: mode 0700, checked): whichever of
them holds the port serves the sum of all, and another one takes the port over within
:data:`TAKEOVER_INTERVAL` if it exits. The gauges of a process that died (even by
SIGKILL) are dropped at the next scrape, and a process starting with the pid of a dead
one drops its predecessor's; counters stay in the sums, as a counter never goes down.

Counting never fails a task or a worker: a sample that cannot be written (the
directory removed, the disk full) is logged, and the work goes on.

What each worker counts (labels are registered entrypoints and consumed topics
only: a record never makes a label of its own):

``kser_task_runs_total{entrypoint, status}``
    attempts run and stored, by how they ended: SUCCESS, FAILED (retried or not),
    SKIPPED, CANCELED, or WAITING (a sensor's condition was unmet: poked again later).
    An attempt whose end another worker refused (it took the task over) is not counted;
    one redone because the store was unreachable is counted once, when stored
``kser_task_retries_total{entrypoint}``
    failed attempts that will be tried again
``kser_task_duration_seconds{entrypoint}``
    how long the bodies ran (histogram)
``kser_hop_latency_seconds{entrypoint}``
    from the time a task could run (its upstream's end stored, or its retry or poke
    due: the message says when) to its start (its claim), both by the workers' clocks
    (histogram)
``kser_dead_letters_total{topic, to}``
    records of ``topic`` dead-lettered, ``to`` the dead-letter ``topic`` or the ``store``
``kser_consumer_lag{topic, partition}``
    records after the group's committed offset, per partition the worker owns
    (updated every :data:`LAG_INTERVAL`; 0 once the partition went to another worker)

What the serving process reads from the store (one grouped count of operations, by an
index; one count of the outbox; in a read-only transaction, at most once every
:data:`STORE_READ_INTERVAL` whatever the scrapes), and the API server serves too:

``kser_operations{status}``
    operations in the store by status (every status, 0 included)
``kser_outbox_waiting`` / ``kser_outbox_scheduled``
    messages stored and not yet produced: due now / due later (retries, pokes)

Without ``enable`` every function here does nothing, at the cost of one test.
"""

from __future__ import annotations

import errno
import functools
import glob
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from kser.errors import MetricsUnavailableError as MetricsUnavailableError
from kser.status import Status

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from kser.record import TopicPartition
    from kser.store import Store

logger = logging.getLogger(__name__)

__all__ = ["MetricsServer", "MetricsUnavailableError", "StoreCollector", "default_directory",
           "enable", "enabled"]

#: seconds between two tries to take the metrics port over from another worker
TAKEOVER_INTERVAL = 5.0
#: seconds between two updates of a worker's consumer lag
LAG_INTERVAL = 5.0
#: task durations: from 5 ms to 4 hours (tasks are often long jobs)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 900.0, 3600.0, 14400.0)
#: hop latencies: from 1 ms to 5 minutes
HOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0, 60.0, 300.0)
#: how a sensor's attempt whose condition was unmet is counted
WAITING = "WAITING"
#: least seconds between two reads of the store's gauges (scrapes in between get the last)
STORE_READ_INTERVAL = 5.0
#: a task's hop is not measured from a time older than this before its start (a forged
#: message's), seconds
MAX_HOP = 30 * 86400.0

_PID = re.compile(r"_(\d+)\.db$")


class _Metrics:
    """kser's metric objects (one set per process)."""

    def __init__(self, directory: str | None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self.directory = directory
        # (multiprocess: the samples are in the directory's files, read by whoever serves;
        # else in the default registry, which an application may already serve)
        registry = None if directory else REGISTRY
        self.runs = Counter("kser_task_runs", "Task attempts run, by how they ended",
                            ["entrypoint", "status"], registry=registry)
        self.retries = Counter("kser_task_retries", "Failed task attempts tried again",
                               ["entrypoint"], registry=registry)
        self.duration = Histogram("kser_task_duration_seconds", "Task bodies' durations",
                                  ["entrypoint"], buckets=DURATION_BUCKETS, registry=registry)
        self.hop = Histogram("kser_hop_latency_seconds",
                             "From the time a task could run to its start",
                             ["entrypoint"], buckets=HOP_BUCKETS, registry=registry)
        self.dead_letters = Counter("kser_dead_letters", "Records dead-lettered",
                                    ["topic", "to"], registry=registry)
        self.lag = Gauge("kser_consumer_lag", "Records after the group's committed offset",
                         ["topic", "partition"], multiprocess_mode="livesum",
                         registry=registry)


_metrics: _Metrics | None = None
_enabling = threading.Lock()
_failed: set[str] = set()

F = TypeVar("F", bound=Callable[..., None])


def _never_raises(function: F) -> F:
    """A count that fails is logged (a warning the first time, then at debug level),
    never raised: metrics must not fail the work they count."""
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except Exception as exc:
            level = logging.DEBUG if function.__name__ in _failed else logging.WARNING
            _failed.add(function.__name__)
            logger.log(level, "metrics: %s failed (%s: %s); the work goes on, uncounted",
                       function.__name__, type(exc).__name__, exc)
    return guarded  # type: ignore[return-value]


def default_directory(port: int) -> str:
    """Where this user's workers serving ``port`` on this host share their samples."""
    return os.path.join(tempfile.gettempdir(), f"kser-metrics-{os.getuid()}-{port}")


def _private(directory: str) -> None:
    """Make ``directory`` (mode 0700) or check it is this user's alone: another user's
    files there would be served as kser's samples."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.stat(directory)
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise MetricsUnavailableError(
            f"the metrics directory {directory} is not this user's alone (owner uid "
            f"{info.st_uid}, mode {stat.filemode(info.st_mode)}): another user could write "
            "samples there; give KSER_METRICS_DIR a directory of your own (mode 0700)")


def enable(directory: str | None = None) -> None:
    """Count kser's metrics in this process from now on (once: later calls change
    nothing). With ``directory``, in prometheus-client's multiprocess mode, sharing
    ``directory`` with the other processes of this host.

    :raises MetricsUnavailableError: prometheus-client is not installed
    """
    global _metrics
    with _enabling:
        if _metrics is not None:
            return
        if directory:
            _private(directory)
            # (read when prometheus-client is first imported, and by its collector)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            from prometheus_client import multiprocess, values
        except ImportError:
            raise MetricsUnavailableError(
                "metrics need prometheus-client: pip install 'kser[prometheus]'") from None
        if directory:
            # a dead process's gauges, if it had this pid (a restarted container's pid 1)
            multiprocess.mark_process_dead(os.getpid(), directory)
            if not getattr(values.ValueClass, "_multiprocess", False):
                # (imported before, by the registry's module say: metrics made from now
                # on write to the directory)
                values.ValueClass = values.MultiProcessValue()
        _metrics = _Metrics(directory)


def enabled() -> bool:
    return _metrics is not None


def child_environment() -> dict[str, str]:
    """The environment of a process a task starts: this one's, without the variable
    that would have its own prometheus-client write into the workers' directory."""
    env = dict(os.environ)
    m = _metrics
    if m is not None and m.directory and env.get("PROMETHEUS_MULTIPROC_DIR") == m.directory:
        del env["PROMETHEUS_MULTIPROC_DIR"]
    return env


@_never_raises
def task_ran(entrypoint: str, status: str, seconds: float, retried: bool = False) -> None:
    """A task attempt's body ran for ``seconds`` and ended ``status`` (stored)."""
    m = _metrics
    if m is None:
        return
    m.runs.labels(entrypoint, status).inc()
    m.duration.labels(entrypoint).observe(max(0.0, seconds))
    if retried:
        m.retries.labels(entrypoint).inc()


@_never_raises
def task_started(entrypoint: str, ready_at: Any, started_at: float) -> None:
    """A task started at ``started_at`` that could run from ``ready_at`` (what its
    message says: ignored unless a time less than :data:`MAX_HOP` before)."""
    m = _metrics
    if (m is None or type(ready_at) not in (int, float)
            or not started_at - MAX_HOP < ready_at < started_at + MAX_HOP):
        return
    m.hop.labels(entrypoint).observe(max(0.0, started_at - ready_at))


@_never_raises
def dead_lettered(topic: str, to: str) -> None:
    """A record of ``topic`` went to the dead-letter ``to`` ("topic" or "store")."""
    m = _metrics
    if m is not None:
        m.dead_letters.labels(topic, to).inc()


@_never_raises
def set_lag(lags: dict[TopicPartition, int], gone: Iterable[TopicPartition] = ()) -> None:
    """The consumer lag of the partitions this worker owns; 0 for those ``gone``."""
    m = _metrics
    if m is None:
        return
    for (topic, partition), lag in lags.items():
        m.lag.labels(topic, str(partition)).set(max(0, lag))
    for topic, partition in gone:
        m.lag.labels(topic, str(partition)).set(0)


@_never_raises
def process_ended() -> None:
    """This process stops: its gauges leave the sums (its counters stay)."""
    m = _metrics
    if m is not None and m.directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), m.directory)


class StoreCollector:
    """The store's gauges: operations by status, messages of the outbox not yet
    produced; read in a read-only transaction, at most once every
    :data:`STORE_READ_INTERVAL` (one read at a time: scrapes in between, or waiting for
    it, get its figures). A store that cannot be read is logged, and its gauges left out
    of that scrape (the others are served), or with ``raise_errors`` its error raised."""

    def __init__(self, store: Callable[[], Store], raise_errors: bool = False) -> None:
        self._store, self._raise = store, raise_errors
        self._lock = threading.Lock()
        self._read_at = -STORE_READ_INTERVAL
        self._figures: tuple[dict[str, int], int, int] = ({}, 0, 0)

    def describe(self) -> list[Any]:
        return []  # (nothing read when registered)

    def _read(self) -> tuple[dict[str, int], int, int]:
        with self._lock:
            if time.monotonic() - self._read_at >= STORE_READ_INTERVAL:
                with self._store().reading() as tx:
                    counts = tx.count_operations()
                    waiting, scheduled = tx.count_unsent(time.time())
                self._figures, self._read_at = (counts, waiting, scheduled), time.monotonic()
            return self._figures

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            counts, waiting, scheduled = self._read()
        except Exception as exc:
            if self._raise:
                raise
            logger.warning("metrics: the store could not be read (%s): its gauges are left "
                           "out of this scrape", exc)
            return
        operations = GaugeMetricFamily("kser_operations", "Operations in the store, by status",
                                       labels=["status"])
        for status in Status:
            operations.add_metric([status.value], counts.get(status.value, 0))
        yield operations
        yield GaugeMetricFamily("kser_outbox_waiting",
                                "Messages stored, due and not yet produced", value=waiting)
        yield GaugeMetricFamily("kser_outbox_scheduled",
                                "Messages stored to be produced later (retries, pokes)",
                                value=scheduled)


class _Processes:
    """The samples of every process sharing ``directory``; first, the gauges of those
    that died are dropped (a SIGKILLed worker never said it ended)."""

    def __init__(self, directory: str) -> None:
        from prometheus_client import multiprocess

        self._directory = directory
        self._collector = multiprocess.MultiProcessCollector(None, path=directory)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client import multiprocess

        for path in glob.glob(os.path.join(self._directory, "gauge_live*_*.db")):
            match = _PID.search(path)
            if match and not _alive(int(match.group(1))):
                multiprocess.mark_process_dead(int(match.group(1)), self._directory)
        collected: Iterable[Any] = self._collector.collect()
        return collected


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def registry(store: Callable[[], Store] | None = None) -> CollectorRegistry:
    """What a metrics endpoint of this process serves: kser's metrics (every process's
    in multiprocess mode), and the store's gauges if ``store`` is given."""
    from prometheus_client import REGISTRY, CollectorRegistry

    served = CollectorRegistry(auto_describe=False)
    m = _metrics
    if m is not None and m.directory:
        served.register(_Processes(m.directory))
    elif m is not None:
        served.register(_Registered(REGISTRY))
    if store is not None:
        served.register(StoreCollector(store))
    return served


class _Registered:
    """The default registry's metrics, served from another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        return self._source.collect()


class MetricsServer:
    """Serves this process's :func:`registry` at ``http://host:port/metrics`` in a
    thread. If the port is held (another worker of this host serves the shared
    samples), tries to take it over every :data:`TAKEOVER_INTERVAL` until closed."""

    def __init__(self, port: int, host: str = "127.0.0.1",
                 store: Callable[[], Store] | None = None) -> None:
        self.port, self.host = port, host
        self._registry: CollectorRegistry = registry(store)
        self._server: Any = None
        self._closed = threading.Event()
        self._lock = threading.Lock()  # (binding, closing)
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Serve now, or (the port held) keep trying in a thread.

        :raises OSError: the port cannot be bound for another reason than being held
        """
        if self._bind(first=True):
            return
        self._thread = threading.Thread(target=self._take_over, name="kser-metrics",
                                        daemon=True)
        self._thread.start()

    def _bind(self, first: bool = False) -> bool:
        from prometheus_client import start_http_server

        try:
            with self._lock:
                if self._closed.is_set():
                    return True
                self._server, _ = start_http_server(self.port, self.host,
                                                    registry=self._registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if first:
                logger.info("metrics: port %d is held (another worker of this host serves "
                            "the samples they share): taken over if it is let go", self.port)
            return False
        logger.info("metrics: serving http://%s:%d/metrics", self.host, self.port)
        return True

    def _take_over(self) -> None:
        while not self._closed.wait(TAKEOVER_INTERVAL):
            try:
                if self._bind():
                    return
            except OSError as exc:
                logger.warning("metrics: port %d cannot be bound: %s", self.port, exc)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
