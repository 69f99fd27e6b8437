"""Both Kafka transports against a real broker: round trip, dead letters, commit policy."""

import signal
import sys
import threading
import time
import uuid

import pytest
from cdumay_result import Result

from kser.schemas import Message
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from tests.infra import WAIT, group_lag, read_topic
from tests.integration.workload import Slow, markers

pytestmark = pytest.mark.integration

TRANSPORTS = ["kafka", "confluent"]

registry = OperationRegistry()
SEEN: list[dict] = []


@registry.subscribe
class Collect(Task):
    def run(self):
        SEEN.append(self.params)
        return Result(uuid=self.uuid, stdout="collected")


def transport(name):
    if name == "kafka":
        from kser.python_kafka import connection_config
        from kser.python_kafka.consumer import Consumer
        from kser.python_kafka.producer import Producer
    else:
        from kser.confluent import connection_config
        from kser.confluent.consumer import Consumer
        from kser.confluent.producer import Producer
    return connection_config, Producer, Consumer


def run_until(consumer, condition, timeout=WAIT):
    """Run ``consumer`` in a thread until ``condition()`` holds; fail after ``timeout``."""
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.stop()
    thread.join(WAIT)
    assert not thread.is_alive(), "consumer did not stop"
    assert condition(), f"condition not met within {timeout} s"


@pytest.fixture(autouse=True)
def _clear():
    SEEN.clear()


@pytest.mark.parametrize("name", TRANSPORTS)
def test_round_trip_and_commit(kafka, topic, name):
    connection_config, Producer, Consumer = transport(name)
    producer = Producer(connection_config(kafka.bootstrap_servers))
    kmsgs = [Message(str(uuid.uuid4()), Collect.path, params={"i": i, "word": "café"})
             for i in range(20)]
    assert producer.bulk_send(topic, kmsgs).retcode == 0
    assert producer.send(topic, Message("single", Collect.path, params={"i": 20})).retcode == 0
    producer.close()

    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(connection_config(kafka.bootstrap_servers, group), [topic])
    consumer.REGISTRY = registry.controller
    run_until(consumer, lambda: len(SEEN) == 21)
    assert sorted(p["i"] for p in SEEN) == list(range(21))
    assert all(p.get("word", "café") == "café" for p in SEEN)
    assert group_lag(kafka, group, topic) == 0


@pytest.mark.parametrize("name", TRANSPORTS)
def test_garbage_from_a_raw_client_is_dead_lettered_and_the_next_record_runs(kafka, topic, name):
    # written by the *other* client library, as any foreign producer would
    if name == "kafka":
        import confluent_kafka

        raw = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap_servers})
        raw.produce(topic, value=b"\xff\xfe not json", key=b"k1", partition=0)
        raw.produce(topic, value=b'{"uuid": "x", "entrypoint": "os.system"}', partition=0)
        raw.produce(topic, value=Message("ok", Collect.path, params={"i": 1}).dumps().encode(),
                    partition=0)
        assert raw.flush(WAIT) == 0
    else:
        from kafka import KafkaProducer

        raw = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        raw.send(topic, value=b"\xff\xfe not json", key=b"k1", partition=0)
        raw.send(topic, value=b'{"uuid": "x", "entrypoint": "os.system"}', partition=0)
        raw.send(topic, value=Message("ok", Collect.path, params={"i": 1}).dumps().encode(),
                 partition=0)
        raw.flush(WAIT)
        raw.close()

    connection_config, _, Consumer = transport(name)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(connection_config(kafka.bootstrap_servers, group), [topic])
    consumer.REGISTRY = registry.controller
    run_until(consumer, lambda: len(SEEN) == 1)
    assert group_lag(kafka, group, topic) == 0

    dead = read_topic(kafka, f"{topic}.dlq", expected=2)
    # the worker created the dead-letter topic with KSER_PARTITIONS partitions: read in
    # the order of the source
    dead.sort(key=lambda d: int(dict(d.headers)["kser-source-offset"]))
    assert [d.value for d in dead] == [b"\xff\xfe not json",
                                       b'{"uuid": "x", "entrypoint": "os.system"}']
    assert dead[0].key == b"k1"
    errors = [dict(d.headers)["kser-error"].decode() for d in dead]
    assert "not valid UTF-8" in errors[0]
    assert "Entrypoint 'os.system' is not registered" in errors[1]
    assert dict(dead[1].headers)["kser-source-offset"] == b"1"


def worker_args(kafka, topic, group, name):
    return [sys.executable, "-m", "kser.cli", "worker", "tests.integration.workload:registry",
            "--topic", topic, "--group", group, "--transport", name,
            "--bootstrap-servers", kafka.bootstrap_servers]


def send_slow(kafka, topic, markers_dir, name, seconds, release=None):
    from kser.python_kafka.producer import Producer

    producer = Producer({"bootstrap_servers": kafka.bootstrap_servers})
    params = {"markers": str(markers_dir), "name": name, "seconds": seconds}
    if release:
        params["release"] = str(release)
    kmsg = Message(str(uuid.uuid4()), Slow.path, params=params)
    assert producer.send(topic, kmsg).retcode == 0
    producer.close()


def wait_until(condition, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.mark.parametrize("name", TRANSPORTS)
def test_sigkill_mid_message_means_the_next_consumer_runs_it_again(kafka, topic, name,
                                                                    processes, tmp_path):
    group = f"g-{uuid.uuid4().hex[:6]}"
    release = tmp_path / "release"  # the task runs until this file exists (at most 60 s)
    send_slow(kafka, topic, tmp_path, "job", seconds=60, release=release)
    first = processes.start(worker_args(kafka, topic, group, name), name="first")
    wait_until(lambda: markers(tmp_path, "job", "started"), "first worker started the task")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(WAIT)
    assert not markers(tmp_path, "job", "done")
    release.touch()

    second = processes.start(worker_args(kafka, topic, group, name), name="second")
    wait_until(lambda: markers(tmp_path, "job", "done"), "second worker finished the task")
    started = markers(tmp_path, "job", "started")
    assert len(started) == 2  # the killed worker's message was processed again
    assert markers(tmp_path, "job", "done")[0].name == f"job.done.{second.popen.pid}"
    wait_until(lambda: group_lag(kafka, group, topic) == 0, "offset committed after processing")


@pytest.mark.parametrize("name", TRANSPORTS)
def test_sigterm_finishes_the_message_commits_and_exits_0(kafka, topic, name, processes,
                                                          tmp_path):
    group = f"g-{uuid.uuid4().hex[:6]}"
    worker = processes.start(worker_args(kafka, topic, group, name))
    send_slow(kafka, topic, tmp_path, "job", seconds=2)
    wait_until(lambda: markers(tmp_path, "job", "started"), "worker started the task")
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(WAIT) == 0, worker.output()
    assert markers(tmp_path, "job", "done"), "the task in hand was finished before exiting"
    assert "SIGTERM received" in worker.output()
    assert group_lag(kafka, group, topic) == 0


@pytest.mark.parametrize("name", TRANSPORTS)
def test_unreachable_broker_is_one_clear_line(name, processes, tmp_path):
    proc = processes.start([sys.executable, "-m", "kser.cli", "send", "a.B", "--topic", "t",
                            "--transport", name, "--bootstrap-servers", "127.0.0.1:9"])
    assert proc.popen.wait(WAIT + 30) == 1
    lines = proc.output().strip().splitlines()
    assert lines[-1].startswith("kser: cannot reach Kafka at 127.0.0.1:9")
    assert "Traceback" not in proc.output()
