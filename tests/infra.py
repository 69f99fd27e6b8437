"""Real infrastructure for integration and acceptance tests, and helpers to watch it.

A real Apache Kafka broker (scripts/kafka-local) and a real PostgreSQL
(scripts/pg-local), each started once per session and stopped at its end; a
real three-node Kafka cluster for the tests of one module that asks for it.
When one cannot start, the tests that need it are skipped, unless
``KSER_REQUIRE_KAFKA=1`` (set by .ci/run): then it is a failure.
The fixtures are made available to every test folder by tests/conftest.py.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from kafka_local import KafkaBroker, KafkaCluster  # noqa: E402
from pg_local import PostgresServer  # noqa: E402

#: seconds any wait on a worker or a topic may take before the test fails
WAIT = 60


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """A running broker; ``.bootstrap_servers`` is its address."""
    broker = _serve(KafkaBroker(tmp_path_factory.mktemp("kafka")), "the Kafka broker")
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory):
    """Three Kafka nodes (each controller and broker, node ids 1 to 3); ``.bootstrap_servers``
    lists them. Started for the module that uses it (three JVMs are heavy on 2 cores)."""
    cluster = _serve(KafkaCluster(tmp_path_factory.mktemp("cluster"), 3),
                     "the three-node Kafka cluster")
    yield cluster
    cluster.stop()


def _serve(server, what: str):
    """``server`` started; if it cannot start, a skip, or a failure under KSER_REQUIRE_KAFKA=1."""
    try:
        return server.start()
    except Exception as exc:  # reported as skip or failure
        server.stop()
        if os.environ.get("KSER_REQUIRE_KAFKA") == "1":
            pytest.fail(f"KSER_REQUIRE_KAFKA=1 and {what} did not start: {exc}")
        pytest.skip(f"no {what}: {exc}")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A running PostgreSQL server (Debian's packages) started by scripts/pg-local."""
    # not under pytest's tmp folder: as root, the server runs as `postgres`, which
    # cannot enter root's private folders
    workdir = Path(tempfile.mkdtemp(prefix="kser-pg-"))
    workdir.chmod(0o755)
    server = _serve(PostgresServer(workdir), "PostgreSQL")
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pg_url(postgres):
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"kser_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=kser dbname=kser",
                         autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A new store shared by every process of the test: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/kser.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def topic(kafka):
    """A new topic name with 3 partitions."""
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    return name


def read_topic(kafka, topic, expected, timeout=WAIT):
    """Every record of ``topic`` (from the beginning) once ``expected`` are there."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer)
    finally:
        consumer.close()
    return records


def group_lag(kafka, group, topic):
    """Records of ``topic`` not committed by ``group``."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    # a consumer that never subscribes reads the group's offsets without joining it
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=group,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
    finally:
        consumer.close()


class Process:
    """A child process whose output is kept in a file, always killed at the end."""

    def __init__(self, args, log: Path, env=None):
        self.log = log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                      cwd=ROOT, env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text, timeout=WAIT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited ({self.popen.returncode}) before "
                                     f"logging {text!r}:\n{out}")
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.output()}")

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(WAIT)
        self._out.close()


@pytest.fixture
def processes(tmp_path):
    """Start child processes with ``processes.start(args)``; all are killed after the test."""
    started = []

    class Starter:
        def start(self, args, env=None, name=None):
            proc = Process(args, tmp_path / f"{name or len(started)}.log", env)
            started.append(proc)
            return proc

    yield Starter()
    for proc in started:
        proc.kill()


#: users of the SASL_PLAINTEXT listener of the ``kafka_sasl`` broker
SASL_USERS = {"kser": "kser-secret"}


@pytest.fixture(scope="session")
def kafka_sasl(tmp_path_factory):
    """A second broker that also listens with SASL_PLAINTEXT (PLAIN) for SASL_USERS."""
    broker = _serve(KafkaBroker(tmp_path_factory.mktemp("kafka-sasl"), sasl_users=SASL_USERS),
                    "the SASL Kafka broker")
    yield broker
    broker.stop()
