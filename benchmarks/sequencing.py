#!/usr/bin/env python3
"""Sequencing: operations of no-op tasks through kser workers, side by side with Celery
chains and Temporal workflows.

    python benchmarks/sequencing.py [--operations 1000] [--hops 10] [--unloaded 50]
                                    [--workers 1 --workers 2 --workers 4]
                                    [--store sqlite --store postgresql] [--io 8x0.01]
                                    [--no-celery] [--no-temporal] [--scaling 100,1000,10000]

In one run, on this machine: a local Kafka broker (scripts/kafka-local, unless
KSER_BOOTSTRAP_SERVERS is set), a local PostgreSQL (scripts/pg-local), a local
Redis (Debian's redis-server, append-only file fsynced every second) and
Temporal's dev server (its CLI built once with Go into benchmarks/.temporal).

- **kser**: ``--operations`` operations of ``--hops`` timed no-op tasks
  (benchmarks.tasks.TimedChain) are submitted at once (``Operation.send()``:
  stored, and their first task sent, by 16 threads of this process) to a 4-partition topic
  read by 1, 2 or 4 `kser worker` processes (concurrency 1), on a SQLite or a
  PostgreSQL store.
- **Celery**: the same number of ``chain``s of the same number of no-op tasks
  (benchmarks/celery_chain.py, Celery 5 in its own venv
  benchmarks/.venv-celery, not committed) sent at once to Redis, with as many
  solo-pool worker processes, acks_late.
- **I/O-bound** (``--io THREADSxSECONDS``): the same, tasks sleeping SECONDS; kser
  with ``--concurrency THREADS``, Celery with ``--pool threads --concurrency THREADS``;
  and (``--async-io SECONDS``) kser's tasks written ``async def``, awaiting SECONDS on
  the worker's event loop with one task thread.
- **Temporal**: as many workflows (benchmarks/temporal_chain.py, temporalio in its own
  venv benchmarks/.venv-temporal) of as many no-op activities one after the other, 1
  or 2 worker processes, on the dev server with its durable SQLite file: stock, then
  tuned (WAL, synchronous=normal, the 20 polls/s dispatch limit lifted). Skipped, with
  the reason, when Go is missing.

Figures: task runs/s (all task runs / first body start to last body end);
hop latency (task n's body ended → task n+1's body started), p50/p99, loaded
(that bulk run) and unloaded (``--unloaded`` operations one after the other);
the worker processes' CPU time per task run in the bulk run (user + system, from
/proc: how many cores a load needs; Temporal's server is counted apart), and the
whole machine's (every process: broker, store, sender included).
Scaling: with 1 worker on SQLite, hops/s of 100 operations after the store was
filled with 100, 1,000 and 10,000 finished operations.

Writes benchmarks/results/sequencing.json and prints a summary. A benchmark,
not a test: nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import sqlalchemy  # noqa: E402
from kafka.admin import KafkaAdminClient  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402
from sqlalchemy import select  # noqa: E402

from benchmarks import scratch  # noqa: E402
from benchmarks.memory import kafka_bootstrap  # noqa: E402
from benchmarks.tasks import Fanout, TimedChain, registry  # noqa: E402
from kser.python_kafka import connection_config  # noqa: E402
from kser.python_kafka.admin import Admin  # noqa: E402
from kser.python_kafka.producer import Producer  # noqa: E402
from kser.schemas import Message  # noqa: E402
from kser.store import Store, schema  # noqa: E402

CELERY_VENV = ROOT / "benchmarks" / ".venv-celery"
CELERY_VERSION = "5.7.0"
#: the Temporal CLI (with its dev server), built once from the Go module proxy into
#: benchmarks/.temporal (not committed; newer versions do not build from the proxy)
TEMPORAL_CLI = "github.com/temporalio/cli/cmd/temporal"
TEMPORAL_CLI_VERSION = "v1.5.1"
TEMPORAL_DIR = ROOT / "benchmarks" / ".temporal"
TEMPORAL_VENV = ROOT / "benchmarks" / ".venv-temporal"
TEMPORALIO_VERSION = "1.35.0"
PARTITIONS = 4
#: threads sending kser's operations in a bulk run
SENDERS = 16
#: operations run in each scaling run (100 took half a second: within the noise)
SCALING_OPERATIONS = 500
#: seconds any one phase may take before the benchmark gives up
PHASE_TIMEOUT = 900


# -- infrastructure --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres():
    """A local PostgreSQL (scripts/pg-local) for the block; yields a fresh-database maker."""
    from pg_local import PostgresServer

    workdir = Path(scratch("kser-bench-pg-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    # pg_stat_statements: the statements kser sends per task run, and their server time
    server = PostgresServer(workdir / "pg", settings={
        "shared_preload_libraries": "pg_stat_statements"}).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


#: the role the benchmark reads the store and pg_stat_statements as, so that its own
#: polling is not counted among kser's statements
READER = "bench_reader"


def new_database(server) -> str:
    """A new empty database on ``server``: every configuration starts from an empty store."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
        if not connection.exec_driver_sql(
                f"SELECT 1 FROM pg_roles WHERE rolname = '{READER}'").first():
            connection.exec_driver_sql(f"CREATE ROLE {READER} LOGIN SUPERUSER")
    engine.dispose()
    url = server.url.rsplit("/", 1)[0] + "/" + name
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE EXTENSION pg_stat_statements")
    engine.dispose()
    return url


def reader_url(store_url: str) -> str:
    """``store_url`` as the benchmark's reader (PostgreSQL), or itself (SQLite)."""
    if not store_url.startswith("postgresql"):
        return store_url
    scheme, rest = store_url.split("://", 1)
    return f"{scheme}://{READER}@{rest.split('@', 1)[1]}"


class Statements:
    """What kser's processes (the role of ``store_url``) asked PostgreSQL between
    :meth:`reset` and :meth:`read`, from pg_stat_statements; the reader's own polling
    (another role) is left out."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def reset(self) -> None:
        with self.reader.connect() as connection:
            connection.exec_driver_sql("SELECT pg_stat_statements_reset()")
            connection.commit()

    def read(self, task_runs: int) -> dict:
        with self.reader.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT s.query, s.calls, s.total_exec_time FROM pg_stat_statements s "
                "JOIN pg_roles r ON r.oid = s.userid "
                "WHERE r.rolname <> %(reader)s AND s.dbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())",
                {"reader": READER}).all()
        control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
        statements = [row for row in rows if not row.query.lstrip().upper()
                      .startswith(control)]
        top = sorted(statements, key=lambda row: -row.calls)[:8]
        return dict(
            pg_calls_per_task_run=round(sum(r.calls for r in rows) / task_runs, 2),
            pg_statements_per_task_run=round(sum(r.calls for r in statements) / task_runs, 2),
            pg_exec_ms_per_task_run=round(sum(r.total_exec_time for r in rows) / task_runs,
                                          3),
            pg_top_statements=[dict(calls_per_task_run=round(r.calls / task_runs, 2),
                                    query=" ".join(r.query.split())[:160]) for r in top])


@contextmanager
def redis_server():
    """Debian's redis-server on 127.0.0.1 for the block (append-only, fsync every second)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server "
                           "(scripts/install-system-deps does it)")
    workdir, port = str(scratch("kser-bench-redis-")), free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir,
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def venv_python(venv: Path, requirement: str) -> str:
    """The python of a throwaway venv holding ``requirement`` from PyPI (made on first use)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    return str(python)


def celery_python() -> str:
    """The venv with Celery and redis-py."""
    return venv_python(CELERY_VENV, f"celery[redis]=={CELERY_VERSION}")


def temporal_binary() -> Path | None:
    """The Temporal CLI, built with Go on first use (about 6 minutes); None, with the
    reason printed, when Go is missing or the build fails."""
    binary = TEMPORAL_DIR / "bin" / "temporal"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        print("Temporal skipped: Go is not installed (the Temporal CLI is built with "
              f"'go install {TEMPORAL_CLI}@{TEMPORAL_CLI_VERSION}')", flush=True)
        return None
    print(f"building the Temporal CLI {TEMPORAL_CLI_VERSION} into {binary} (once; about "
          "6 minutes)", flush=True)
    env = {**os.environ, "GOBIN": str(binary.parent), "GOPATH": str(TEMPORAL_DIR / "go"),
           "GOCACHE": str(TEMPORAL_DIR / "cache"), "GOFLAGS": "-modcacherw"}
    built = subprocess.run([go, "install", f"{TEMPORAL_CLI}@{TEMPORAL_CLI_VERSION}"], env=env,
                           capture_output=True, text=True, timeout=3600)
    if built.returncode != 0 or not binary.exists():
        print(f"Temporal skipped: building its CLI failed:\n{built.stderr[-2000:]}",
              flush=True)
        return None
    return binary


def temporal_python() -> str:
    """The venv with the Temporal Python SDK."""
    return venv_python(TEMPORAL_VENV, f"temporalio=={TEMPORALIO_VERSION}")


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def wait_for(condition, what: str, timeout: float = PHASE_TIMEOUT, every: float = 0.05,
             processes: list[subprocess.Popen] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: a worker exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done within {timeout} s")
        time.sleep(every)


# -- figures ---------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` used so far, from the OS's
    accounting (/proc/PID/stat): how many cores a load needs."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def machine_cpu_seconds() -> float:
    """CPU time the whole machine was busy so far, every core and process (/proc/stat):
    the workers, and the broker, the store, the sender... they share the cores with."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def figures(chains: list[list[tuple[float, float]]], cpu: float | None = None,
            machine: float | None = None) -> dict:
    """Task runs/s and hop latencies (ms) from each chain's (start, end) body times;
    ``cpu``: the workers' CPU seconds meanwhile, ``machine`` the whole machine's (per task
    run in the figures)."""
    runs = [span for chain in chains for span in chain]
    hops = [(chain[i][0] - chain[i - 1][1]) * 1000 for chain in chains
            for i in range(1, len(chain))]
    elapsed = max(end for _, end in runs) - min(start for start, _ in runs)
    return dict(task_runs=len(runs), seconds=round(elapsed, 2),
                task_runs_per_second=round(len(runs) / elapsed, 1),
                **({} if cpu is None else
                   dict(worker_cpu_ms_per_task_run=round(1000 * cpu / len(runs), 3))),
                **({} if machine is None else
                   dict(machine_cpu_ms_per_task_run=round(1000 * machine / len(runs), 3))),
                hop_p50_ms=round(percentile(hops, 0.5), 2),
                hop_p99_ms=round(percentile(hops, 0.99), 2),
                # the distribution the plots draw, in 201 points (p0, p0.5 ... p100); the
                # raw samples go to results/raw/ (not in git: 57k lines)
                hops_ms_quantiles=quantiles(hops),
                hops_ms=[round(h, 3) for h in hops])


#: points of a latency distribution kept in the results (p0 to p100 by 0.5)
QUANTILES = 201


def quantiles(values: list[float]) -> list[float]:
    return [round(percentile(values, i / (QUANTILES - 1)), 3) for i in range(QUANTILES)]


# -- kser ------------------------------------------------------------------------------


class KserRun:
    """kser workers on one topic and one store; operations sent in bulk or one by one."""

    def __init__(self, bootstrap: str, store_url: str, workers: int, transport: str,
                 submit: str = "client", concurrency: int = 1, sleep: float = 0,
                 asynchronous: bool = False):
        self.bootstrap, self.store_url, self.workers = bootstrap, store_url, workers
        self.concurrency, self.sleep, self.asynchronous = concurrency, sleep, asynchronous
        self.transport, self.submit = transport, submit
        self.topic = f"bench-seq-{uuid.uuid4().hex[:8]}"
        self.group = f"bench-{uuid.uuid4().hex[:6]}"
        self.store = Store(store_url)  # created and migrated before the workers start
        # read without taking the store's write lock (kser's SQLite transactions do)
        self.reader = sqlalchemy.create_engine(reader_url(store_url))
        self.statements = (Statements(self.reader) if store_url.startswith("postgresql")
                           else None)
        self.processes: list[subprocess.Popen] = []
        self.producer = Producer({"bootstrap_servers": bootstrap, "linger_ms": 5})
        registry.configure(store=self.store, producer=self.producer, topic=self.topic)
        self.logs = scratch("kser-bench-logs-")

    def __enter__(self) -> KserRun:
        # created as kser creates its topics (on a cluster: 3 replicas, 2 in sync)
        with Admin(connection_config(self.bootstrap), partitions=PARTITIONS) as topics:
            topics.ensure([self.topic])
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KSER_LOG_LEVEL": "WARNING",
               "KSER_STORE_URL": self.store_url}
        for number in range(self.workers):
            log = open(self.logs / f"worker-{number}.log", "wb")
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "kser.cli", "worker", "benchmarks.tasks:registry",
                 "--topic", self.topic, "--group", self.group, "--transport", self.transport,
                 "--concurrency", str(self.concurrency),
                 "--bootstrap-servers", self.bootstrap], env=env, cwd=self.logs,
                stdout=log, stderr=subprocess.STDOUT))

        def joined() -> bool:
            try:
                group = admin.describe_groups([self.group]).get(self.group) or {}
            except KafkaError:  # the coordinator is still being elected
                return False
            return (group.get("group_state") == "Stable"
                    and len(group.get("members") or ()) == self.workers)

        try:
            wait_for(joined, "kser workers joining their group", 120, 0.2, self.processes)
        finally:
            admin.close()
        return self

    def __exit__(self, *exc_info) -> None:
        stop_all(self.processes)
        self.producer.close()
        self.reader.dispose()
        self.store.close()
        for log in self.logs.iterdir():
            text = log.read_text(errors="replace")
            if "Traceback" in text or "ERROR" in text:
                print(f"--- {log} ---\n{text[-3000:]}", file=sys.stderr)

    def _send(self, ids: list[str], hops: int) -> None:
        params = dict(hops=hops, **({"sleep": self.sleep} if self.sleep else {}),
                      **({"asynchronous": True} if self.asynchronous else {}))
        if self.submit == "client":  # stored and started here, as Celery's apply_async does
            if len(ids) == 1:
                TimedChain(uuid=ids[0], params=params).send(self.topic)
                return
            # by SENDERS threads: a send is a store transaction and a flush to Kafka, and
            # one thread sending would bound the run (Celery's apply_async only pushes to
            # Redis); the workers, not the sender, are what is measured
            with ThreadPoolExecutor(SENDERS) as senders:
                list(senders.map(lambda op_id: TimedChain(uuid=op_id, params=params)
                                 .send(self.topic), ids))
            return
        kmsgs = [Message(op_id, "benchmarks.tasks.TimedChain", params=params) for op_id in ids]
        result = self.producer.bulk_send(self.topic, kmsgs, timeout=120)
        assert result.retcode == 0, result.stderr

    def _finished(self, ids: list[str]) -> int:
        op = schema.operations.c
        with self.reader.connect() as connection:
            rows = connection.execute(
                schema.operations.select().with_only_columns(op.id, op.status)
                .where(op.id.in_(ids))).all()
        failed = [row.id for row in rows if row.status not in ("RUNNING", "SUCCESS")]
        if failed:
            raise RuntimeError(f"operations ended {failed[:3]}...: see {self.logs} (run with "
                               "KSER_BENCH_KEEP=1 to keep it)")
        return sum(row.status == "SUCCESS" for row in rows)

    def bulk(self, operations: int, hops: int) -> dict:
        ids = [str(uuid.uuid4()) for _ in range(operations)]
        if self.statements:
            self.statements.reset()
        cpu, machine = cpu_seconds([process.pid for process in self.processes]), \
            machine_cpu_seconds()
        self._send(ids, hops)
        wait_for(lambda: self._finished(ids) == len(ids), "kser bulk run", every=0.2,
                 processes=self.processes)
        cpu = cpu_seconds([process.pid for process in self.processes]) - cpu
        data = figures(self._chains(ids), cpu, machine_cpu_seconds() - machine)
        if self.statements:
            data.update(self.statements.read(data["task_runs"]))
        return data

    def unloaded(self, operations: int, hops: int) -> dict:
        if self.statements:
            self.statements.reset()
        ids = []
        for _ in range(operations):
            ids.append(str(uuid.uuid4()))
            self._send(ids[-1:], hops)
            wait_for(lambda: self._finished(ids[-1:]) == 1, "kser unloaded operation", 60,
                     0.005, self.processes)
        data = figures(self._chains(ids))
        if self.statements:
            data.update(self.statements.read(data["task_runs"]))
        return data

    def fanout(self, operations: int, width: int, seconds: float, chain: bool) -> dict:
        """Wall time of ``operations`` Fanout operations run one after the other: from the
        first sleeping task's start to the last one's end, per operation."""
        walls = []
        for _ in range(operations):
            op_id = Fanout(params=dict(width=width, seconds=seconds, chain=chain)
                           ).send(self.topic).uuid
            wait_for(lambda: self._finished([op_id]) == 1,  # noqa: B023 (called at once)
                     "kser fanout operation", 120, 0.01, self.processes)
            with self.reader.connect() as connection:
                result = connection.execute(
                    select(schema.operations.c.result)
                    .where(schema.operations.c.id == op_id)).scalar_one()
            spans = result["retval"].values()
            walls.append(max(end for _, end in spans) - min(start for start, _ in spans))
        return dict(operations=operations, width=width, task_seconds=seconds,
                    wall_p50_s=round(percentile(walls, 0.5), 3),
                    wall_max_s=round(max(walls), 3))

    def _chains(self, ids: list[str]) -> list[list[tuple[float, float]]]:
        task = schema.tasks.c
        chains: dict[str, list] = {}
        with self.reader.connect() as connection:
            for row in connection.execute(
                    schema.tasks.select().with_only_columns(task.operation_id, task.result)
                    .where(task.operation_id.in_(ids)).order_by(task.position)):
                retval = row.result["retval"]
                chains.setdefault(row.operation_id, []).append((retval["s"], retval["f"]))
        return list(chains.values())


def physical_floor(bootstrap: str, store_url: str, hops: int = 200) -> dict:
    """The least a hop can cost on this machine: one durable commit of the store (a row
    inserted, committed: fsynced on PostgreSQL, the WAL on SQLite) and one Kafka round
    trip (confluent-kafka, produced with ``acks=all`` and ``linger.ms`` 0, as kser
    produces, consumed by a consumer already assigned its partition), one after the
    other, ``hops`` times; the p50 and p99 of each and of both, in ms."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka import Producer as RawProducer

    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    with Admin(connection_config(bootstrap), partitions=1) as topics:
        topics.ensure([topic])
    producer = RawProducer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                            "enable.idempotence": True})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{topic}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    consumer.assign([TopicPartition(topic, 0, 0)])
    engine = sqlalchemy.create_engine(store_url)
    table = f"bench_floor_{uuid.uuid4().hex[:6]}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, "
                                   "at FLOAT)")
    insert = sqlalchemy.text(f"INSERT INTO {table} VALUES (:id, :at)")
    commits, trips, both = [], [], []
    try:
        for number in range(hops + 10):  # (the first 10 warm the connections up)
            key = f"{number}-{uuid.uuid4().hex}"
            start = time.perf_counter()
            with engine.begin() as connection:
                connection.execute(insert, {"id": key, "at": time.time()})
            committed = time.perf_counter()
            producer.produce(topic, key.encode(), key.encode())
            producer.flush(30)
            deadline = time.monotonic() + 30
            while True:
                record = consumer.poll(1.0)
                if record is not None and record.error() is None and record.key() == key.encode():
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the floor's record did not come back within 30 s")
            end = time.perf_counter()
            if number >= 10:
                commits.append((committed - start) * 1000)
                trips.append((end - committed) * 1000)
                both.append((end - start) * 1000)
    finally:
        consumer.close()
        producer.flush(10)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE {table}")
        engine.dispose()
    return dict(hops=hops, commit_p50_ms=round(percentile(commits, 0.5), 2),
                kafka_round_trip_p50_ms=round(percentile(trips, 0.5), 2),
                floor_p50_ms=round(percentile(both, 0.5), 2),
                floor_p99_ms=round(percentile(both, 0.99), 2))


def fill_store(store_url: str, operations: int, hops: int) -> None:
    """Store ``operations`` finished operations (as a long-running deployment keeps them)."""
    store, now = Store(store_url), time.time()
    for start in range(0, operations, 500):
        ops, tasks, deps, attempts = [], [], [], []
        for _ in range(min(500, operations - start)):
            op_id = str(uuid.uuid4())
            ops.append(dict(id=op_id, entrypoint="benchmarks.tasks.TimedChain",
                            status="SUCCESS", params=dict(hops=hops), metadata={},
                            result=None, topic="filled", exit_notify=None, ttl_strategy=None,
                            created_at=now, updated_at=now, finished_at=now))
            ids = [str(uuid.uuid4()) for _ in range(hops)]
            for position, task_id in enumerate(ids):
                tasks.append(dict(id=task_id, operation_id=op_id, position=position,
                                  entrypoint="benchmarks.tasks.Timed", topic=None,
                                  status="SUCCESS", params={}, metadata={},
                                  result=dict(retcode=0, retval=dict(s=now, f=now)),
                                  attempt=1, worker="filled", started_at=now,
                                  finished_at=now))
                attempts.append(dict(task_id=task_id, number=1, worker="filled",
                                     status="SUCCESS", started_at=now, finished_at=now,
                                     retcode=0))
                if position:
                    deps.append(dict(task_id=task_id, depends_on=ids[position - 1]))
        with store.transaction() as tx:
            for table, rows in ((schema.operations, ops), (schema.tasks, tasks),
                                (schema.task_dependencies, deps), (schema.attempts, attempts)):
                tx.connection.execute(table.insert(), rows)
    store.close()


# -- Celery ----------------------------------------------------------------------------


def chains_from(times_dir: Path, ids: set[str]) -> list[list[tuple[float, float]]]:
    """The (start, end) body times of each chain in ``ids``, from the ``<pid>.tsv`` lines
    (chain, position, start, end) the Celery and Temporal workers write."""
    chains: dict[str, dict[int, tuple[float, float]]] = {}
    for times in times_dir.glob("*.tsv"):
        for line in times.read_text().splitlines():
            chain_id, position, start, end = line.split("\t")
            if chain_id in ids:
                chains.setdefault(chain_id, {})[int(position)] = (float(start), float(end))
    return [[spans[i] for i in sorted(spans)] for spans in chains.values()]


class CeleryRun:
    """Celery solo-pool workers on one Redis; chains sent in bulk or one by one."""

    def __init__(self, redis_url: str, workers: int, threads: int = 0, sleep: float = 0):
        self.python = celery_python()
        self.times = scratch("kser-bench-celery-")
        self.env = {**os.environ, "BENCH_REDIS_URL": redis_url,
                    "BENCH_TIMES_DIR": str(self.times), "BENCH_SLEEP": str(sleep),
                    "PYTHONPATH": str(ROOT / "benchmarks")}
        self.env.pop("VIRTUAL_ENV", None)
        self.workers = workers
        # the solo pool (one task at a time, as kser's concurrency 1), or threads
        self.pool = (["--pool", "threads", "--concurrency", str(threads)] if threads
                     else ["--pool", "solo"])
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def __enter__(self) -> CeleryRun:
        subprocess.run([self.python, "-m", "celery", "-A", "celery_chain", "purge", "-f"],
                       env=self.env, check=True, capture_output=True, timeout=60)
        for number in range(self.workers):
            log = self.times / f"worker-{number}.log"
            self.logs.append(log)
            self.processes.append(subprocess.Popen(
                [self.python, "-m", "celery", "-A", "celery_chain", "worker", *self.pool,
                 "-n", f"bench{number}@%h", "-Q", "bench", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-l", "INFO"],
                env=self.env, cwd=self.times.parent, stdout=open(log, "wb"),
                stderr=subprocess.STDOUT))
        wait_for(lambda: all(" ready." in log.read_text(errors="replace") for log in self.logs),
                 "Celery workers starting", 120, 0.2, self.processes)
        return self

    def __exit__(self, *exc_info) -> None:
        stop_all(self.processes)

    def _chains(self, ids: set[str]) -> list[list[tuple[float, float]]]:
        return chains_from(self.times, ids)

    def _run(self, mode: str, operations: int, hops: int) -> dict:
        cpu = cpu_seconds([process.pid for process in self.processes])
        machine = machine_cpu_seconds()
        sent = subprocess.run([self.python, str(ROOT / "benchmarks" / "celery_chain.py"),
                               "send", mode, str(operations), str(hops)], env=self.env,
                              check=True, timeout=PHASE_TIMEOUT, capture_output=True, text=True)
        ids = set(sent.stdout.split())
        total = operations * hops
        wait_for(lambda: sum(len(c) for c in self._chains(ids)) >= total, "Celery chains",
                 every=0.2, processes=self.processes)
        cpu = cpu_seconds([process.pid for process in self.processes]) - cpu
        return figures(self._chains(ids), cpu, machine_cpu_seconds() - machine)

    def bulk(self, operations: int, hops: int) -> dict:
        return self._run("BULK", operations, hops)

    def unloaded(self, operations: int, hops: int) -> dict:
        return self._run("ONE", operations, hops)


# -- Temporal --------------------------------------------------------------------------


@contextmanager
def temporal_server(binary: Path, tuned: bool):
    """Temporal's single-binary dev server on 127.0.0.1 for the block, on a durable SQLite
    file; yields its address. Stock: its defaults (SQLite's default journal, dispatch
    limited to 20 polls/s); ``tuned``: WAL with synchronous=normal, and that limit lifted."""
    workdir, port = scratch("kser-bench-temporal-"), free_port()
    command = [str(binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
               "--port", str(port), "--http-port", str(free_port()),
               "--metrics-port", str(free_port()), "--db-filename",
               str(workdir / "temporal.db"), "--log-level", "error"]
    if tuned:
        command += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma",
                    "synchronous=normal", "--dynamic-config-value",
                    "history.transferProcessorMaxPollRPS=10000"]
    log = open(workdir / "server.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the Temporal dev server did not start: "
                                       + (workdir / "server.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", process
    finally:
        stop_all([process])
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


class TemporalRun:
    """Temporal worker processes (benchmarks/temporal_chain.py) on one dev server;
    workflows of no-op activities started in bulk or one by one."""

    def __init__(self, address: str, server: subprocess.Popen, workers: int):
        self.python = temporal_python()
        self.times = scratch("kser-bench-temporal-times-")
        self.env = {**os.environ, "BENCH_TEMPORAL": address, "BENCH_TIMES_DIR": str(self.times)}
        self.env.pop("VIRTUAL_ENV", None)
        self.workers, self.server = workers, server
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def __enter__(self) -> TemporalRun:
        for number in range(self.workers):
            log = self.times / f"worker-{number}.log"
            self.logs.append(log)
            self.processes.append(subprocess.Popen(
                [self.python, str(ROOT / "benchmarks" / "temporal_chain.py"), "worker"],
                env=self.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT))
        wait_for(lambda: all("worker ready" in log.read_text(errors="replace")
                             for log in self.logs),
                 "Temporal workers starting", 120, 0.2, self.processes)
        return self

    def __exit__(self, *exc_info) -> None:
        stop_all(self.processes)
        for log in self.logs:
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log} ---\n{text[-3000:]}", file=sys.stderr)

    def _chains(self, ids: set[str]) -> list[list[tuple[float, float]]]:
        return chains_from(self.times, ids)

    def _run(self, mode: str, operations: int, hops: int) -> dict:
        pids = [process.pid for process in self.processes]
        cpu, server_cpu = cpu_seconds(pids), cpu_seconds([self.server.pid])
        machine = machine_cpu_seconds()
        sent = subprocess.run([self.python, str(ROOT / "benchmarks" / "temporal_chain.py"),
                               "send", mode, str(operations), str(hops)], env=self.env,
                              check=True, timeout=PHASE_TIMEOUT, capture_output=True, text=True)
        ids = set(sent.stdout.split())
        total = operations * hops
        wait_for(lambda: sum(len(c) for c in self._chains(ids)) >= total, "Temporal workflows",
                 every=0.2, processes=self.processes)
        cpu = cpu_seconds(pids) - cpu
        data = figures(self._chains(ids), cpu, machine_cpu_seconds() - machine)
        data["server_cpu_ms_per_task_run"] = round(
            1000 * (cpu_seconds([self.server.pid]) - server_cpu) / data["task_runs"], 3)
        return data

    def bulk(self, operations: int, hops: int) -> dict:
        return self._run("BULK", operations, hops)

    def unloaded(self, operations: int, hops: int) -> dict:
        return self._run("ONE", operations, hops)


# -- the run ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--hops", type=int, default=10)
    parser.add_argument("--unloaded", type=int, default=50)
    parser.add_argument("--workers", type=int, action="append", choices=[1, 2, 4],
                        help="worker processes (repeat; default 1, 2 and 4)")
    parser.add_argument("--store", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--transport", choices=["kafka", "confluent"], default="confluent",
                        help="kser's Kafka client (default: confluent, the faster one)")
    parser.add_argument("--submit", choices=["client", "worker"], default="client",
                        help="client: Operation.send() here stores each operation and sends "
                        "its first task (as Celery's apply_async sends a chain's first); "
                        "worker: an operation message, stored by the worker that gets it")
    parser.add_argument("--io", default="8x0.01",
                        help="THREADSxSECONDS: the same runs with tasks sleeping SECONDS (an "
                        "I/O-bound load), kser with --concurrency THREADS and Celery with "
                        "--pool threads --concurrency THREADS ('' to skip)")
    parser.add_argument("--floor-hops", type=int, default=200,
                        help="hops of the physical floor measured on each store (0: none)")
    parser.add_argument("--async-io", default="0.01",
                        help="SECONDS: kser again with tasks written async def awaiting "
                        "SECONDS (one task thread, the event loop) ('' to skip)")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--no-temporal", action="store_true")
    parser.add_argument("--temporal-workers", type=int, action="append", choices=[1, 2],
                        help="Temporal worker processes (repeat; default 1 and 2)")
    parser.add_argument("--scaling", default="100,1000,10000",
                        help="stored operations before each scaling run ('' to skip)")
    parser.add_argument("--parallel", default="3x1.0",
                        help="WIDTHxSECONDS: a parallel group of WIDTH tasks sleeping SECONDS, "
                        "against the same tasks in a chain, 1 worker with --concurrency "
                        "WIDTH, per store ('' to skip)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    workers, stores = args.workers or [1, 2, 4], args.store or ["sqlite", "postgresql"]
    threads, sleep = ((int(args.io.split("x")[0]), float(args.io.split("x")[1]))
                      if args.io else (0, 0.0))
    loads = [(1, 0.0)] + ([(threads, sleep)] if threads else [])
    results: dict[str, dict] = {}
    meta: dict[str, dict] = {}

    def describe(count: int, concurrency: int, seconds: float) -> str:
        text = f"{count} worker{'s' * (count > 1)}"
        if seconds:
            text += f", {concurrency} threads each, {seconds * 1000:g} ms tasks"
        return text

    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)

    def save() -> None:
        """Write what was measured so far (a later configuration failing keeps it)."""
        raw = {name: {kind: runs[kind]["hops_ms"] for kind in runs
                      if isinstance(runs[kind], dict) and "hops_ms" in runs[kind]}
               for name, runs in results.items()}
        (out / "raw" / "sequencing-hops.json").write_text(json.dumps(raw))
        kept = {name: {kind: ({k: v for k, v in data.items() if k != "hops_ms"}
                              if isinstance(data, dict) else data)
                       for kind, data in runs.items()} for name, runs in results.items()}
        (out / "sequencing.json").write_text(json.dumps(dict(
            operations=args.operations, hops=args.hops, unloaded=args.unloaded,
            partitions=PARTITIONS, results=kept, meta=meta), indent=1))

    def report(name: str, kind: str, data: dict, **about) -> None:
        results.setdefault(name, {})[kind] = data
        meta[name] = about
        save()
        cpu = data.get("worker_cpu_ms_per_task_run")
        print(f"{name:<60} {kind:<9} {data['task_runs_per_second']:>8.1f} task runs/s  "
              f"hop p50 {data['hop_p50_ms']:.2f} ms  p99 {data['hop_p99_ms']:.2f} ms"
              + (f"  worker CPU {cpu:.3f} ms/run" if cpu is not None else "")
              + (f"  PostgreSQL {data['pg_statements_per_task_run']:.2f} statements "
                 f"({data['pg_calls_per_task_run']:.2f} with BEGIN/COMMIT), "
                 f"{data['pg_exec_ms_per_task_run']:.3f} ms/run"
                 if "pg_statements_per_task_run" in data else ""), flush=True)

    with ExitStack() as stack:
        bootstrap = stack.enter_context(kafka_bootstrap())
        pg = stack.enter_context(postgres()) if "postgresql" in stores else None
        for store in stores if args.floor_hops else ():
            url = (new_database(pg) if store == "postgresql"
                   else f"sqlite:///{scratch('kser-bench-')}/kser.db")
            floor = physical_floor(bootstrap, url, args.floor_hops)
            results[f"physical floor ({store})"] = {"hop": floor}
            save()
            print(f"physical floor ({store}): a durable commit then a Kafka round trip: "
                  f"p50 {floor['floor_p50_ms']:.2f} ms (commit {floor['commit_p50_ms']:.2f}, "
                  f"round trip {floor['kafka_round_trip_p50_ms']:.2f}), "
                  f"p99 {floor['floor_p99_ms']:.2f} ms", flush=True)
        for concurrency, seconds in loads:
            for store in stores:
                for count in workers:
                    url = (new_database(pg) if store == "postgresql"
                           else f"sqlite:///{scratch('kser-bench-')}/kser.db")
                    name = (f"kser ({args.transport}), {store}, "
                            f"{describe(count, concurrency, seconds)}")
                    about = dict(system="kser", store=store, workers=count,
                                 concurrency=concurrency, sleep=seconds)
                    with KserRun(bootstrap, url, count, args.transport, args.submit,
                                 concurrency=concurrency, sleep=seconds) as run:
                        report(name, "unloaded", run.unloaded(args.unloaded, args.hops), **about)
                        report(name, "bulk", run.bulk(args.operations, args.hops), **about)
        for store in stores if args.async_io else ():
            seconds = float(args.async_io)
            for count in workers:
                url = (new_database(pg) if store == "postgresql"
                       else f"sqlite:///{scratch('kser-bench-')}/kser.db")
                name = (f"kser ({args.transport}), {store}, {count} worker"
                        f"{'s' * (count > 1)}, async def tasks awaiting {seconds * 1000:g} ms")
                about = dict(system="kser", store=store, workers=count, concurrency="async",
                             sleep=seconds)
                with KserRun(bootstrap, url, count, args.transport, args.submit,
                             sleep=seconds, asynchronous=True) as run:
                    report(name, "unloaded", run.unloaded(args.unloaded, args.hops), **about)
                    report(name, "bulk", run.bulk(args.operations, args.hops), **about)
        if not args.no_celery:
            redis_url = stack.enter_context(redis_server())
            for concurrency, seconds in loads:
                for count in workers:
                    name = (f"Celery {CELERY_VERSION} chain, Redis, "
                            f"{describe(count, concurrency, seconds)}")
                    about = dict(system="celery", store="redis", workers=count,
                                 concurrency=concurrency, sleep=seconds)
                    with CeleryRun(redis_url, count, concurrency if seconds else 0,
                                   seconds) as run:
                        report(name, "unloaded", run.unloaded(args.unloaded, args.hops), **about)
                        report(name, "bulk", run.bulk(args.operations, args.hops), **about)
        binary = None if args.no_temporal else temporal_binary()
        if binary is not None:
            for tuned in (False, True):
                for count in args.temporal_workers or [1, 2]:
                    name = (f"Temporal {TEMPORAL_CLI_VERSION} dev server "
                            f"({'tuned' if tuned else 'stock'}), {describe(count, 1, 0)}")
                    about = dict(system="temporal", store="sqlite", workers=count,
                                 concurrency=1, sleep=0.0, tuned=tuned)
                    for attempt in (1, 2):  # (its client aborted once in a run: tried again)
                        try:  # (a fresh server each: nothing left from the run before)
                            with temporal_server(binary, tuned) as (address, server), \
                                    TemporalRun(address, server, count) as run:
                                report(name, "unloaded",
                                       run.unloaded(args.unloaded, args.hops), **about)
                                report(name, "bulk", run.bulk(args.operations, args.hops),
                                       **about)
                            break
                        except Exception as exc:  # a peer failing is reported, not the end
                            print(f"{name}: failed (try {attempt} of 2): {exc}",
                                  file=sys.stderr, flush=True)
                            results.pop(name, None)
                            meta[name] = dict(about, failed=str(exc)[-500:], tries=attempt)
                            save()
        if args.parallel:
            width, seconds = args.parallel.split("x")
            for store in stores:
                url = (new_database(pg) if store == "postgresql"
                       else f"sqlite:///{scratch('kser-bench-')}/kser.db")
                with KserRun(bootstrap, url, 1, args.transport, args.submit,
                             concurrency=int(width)) as run:
                    for chain in (False, True):
                        data = run.fanout(10, int(width), float(seconds), chain)
                        shape = f"{width} tasks in a chain" if chain else f"{width}-wide group"
                        name = f"fanout ({store}, 1 worker, concurrency {width})"
                        results.setdefault(name, {})[shape] = data
                        print(f"{name}: {shape} of {seconds} s tasks: wall p50 "
                              f"{data['wall_p50_s']:.3f} s, max {data['wall_max_s']:.3f} s",
                              flush=True)
        scaling = [int(n) for n in args.scaling.split(",") if n]
        for stored in scaling:
            url = f"sqlite:///{scratch('kser-bench-')}/kser.db"
            fill_store(url, stored, args.hops)
            with KserRun(bootstrap, url, 1, args.transport, args.submit) as run:
                # (long enough that the sender's start and the stragglers do not decide)
                data = run.bulk(min(SCALING_OPERATIONS, args.operations), args.hops)
            data.pop("hops_ms")
            results.setdefault("scaling (kser, sqlite, 1 worker)", {})[str(stored)] = data
            print(f"scaling: {stored:>6} stored operations: "
                  f"{data['task_runs_per_second']:.1f} hops/s", flush=True)

    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
