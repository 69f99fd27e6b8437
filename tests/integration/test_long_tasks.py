"""The worker's threading model on a real broker: long tasks, concurrency, pause and resume."""

import signal
import threading
import time
import uuid

import pytest
from cdumay_result import Result

from kser.schemas import Message
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from tests.infra import WAIT, group_lag
from tests.integration.test_transports import send_slow, transport, wait_until, worker_args
from tests.integration.workload import markers

pytestmark = pytest.mark.integration

registry = OperationRegistry()
RUNS: list[str] = []


@registry.subscribe
class Long(Task):
    def run(self):
        RUNS.append(self.uuid)
        time.sleep(self.params["seconds"])
        return Result(uuid=self.uuid, stdout="long done")


#: a group member that does not poll within this many ms is removed from the group
MAX_POLL_INTERVAL_MS = 6000
LONG_TASK = 20  # seconds: more than three times the limit


def group_members(kafka, group: str) -> int:
    """Members of a Stable consumer group (0 while it is (re)balancing)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        described = admin.describe_groups([group]).get(group) or {}
    except KafkaError:  # the coordinator is still being elected
        return 0
    finally:
        admin.close()
    stable = described.get("group_state") == "Stable"
    return len(described.get("members") or ()) if stable else 0


@pytest.mark.parametrize("name", ["kafka", "confluent"])
def test_a_task_longer_than_max_poll_interval_runs_once_without_rebalance(kafka, topic, name):
    connection_config, Producer, Consumer = transport(name)
    kmsg = Message(str(uuid.uuid4()), Long.path, params={"seconds": LONG_TASK})
    group = f"g-{uuid.uuid4().hex[:6]}"
    config = connection_config(kafka.bootstrap_servers, group)
    if name == "kafka":
        config.update(max_poll_interval_ms=MAX_POLL_INTERVAL_MS, session_timeout_ms=6000,
                      heartbeat_interval_ms=2000)
    else:
        config.update({"max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                       "session.timeout.ms": 6000, "heartbeat.interval.ms": 2000})
    # a second member of the group would receive the record if the first one left it
    consumers = [Consumer(dict(config), [topic]) for _ in range(2)]
    threads = []
    RUNS.clear()
    for consumer in consumers:
        consumer.REGISTRY = registry.controller
        threads.append(threading.Thread(target=consumer.run, daemon=True))
        threads[-1].start()
    try:
        # both members joined before the record exists: only leaving the group (no poll
        # within max.poll.interval.ms) can then move the partition to the other one
        wait_until(lambda: group_members(kafka, group) == 2, "both consumers in the group")
        producer = Producer(connection_config(kafka.bootstrap_servers))
        assert producer.send(topic, kmsg).retcode == 0
        producer.close()
        wait_until(lambda: RUNS, "the long task started")
        deadline = time.monotonic() + LONG_TASK + WAIT
        while group_lag(kafka, group, topic) and time.monotonic() < deadline:
            time.sleep(1)
        assert group_lag(kafka, group, topic) == 0
        time.sleep(MAX_POLL_INTERVAL_MS / 1000)  # a rebalance would redeliver it now
        assert RUNS == [kmsg.uuid], "the task ran more than once"
    finally:
        for consumer in consumers:
            consumer.stop()
        for thread in threads:
            thread.join(WAIT)


def test_concurrency_runs_tasks_at_once_on_a_real_broker(kafka, topic, processes, tmp_path):
    group = f"g-{uuid.uuid4().hex[:6]}"
    for i in range(4):
        send_slow(kafka, topic, tmp_path, f"job{i}", seconds=3)
    worker = processes.start([*worker_args(kafka, topic, group, "kafka"), "--concurrency", "4"])
    wait_until(lambda: len(list(tmp_path.glob("*.done.*"))) == 4, "four tasks done")
    starts = sorted(p.stat().st_mtime for p in tmp_path.glob("*.started.*"))
    dones = sorted(p.stat().st_mtime for p in tmp_path.glob("*.done.*"))
    assert starts[-1] < dones[0], "all four ran at the same time"
    wait_until(lambda: group_lag(kafka, group, topic) == 0, "offsets committed")
    assert "(concurrency 4)" in worker.output()


def test_sigusr1_pauses_and_sigusr2_resumes_keeping_the_partitions(kafka, topic, processes,
                                                                   tmp_path):
    group = f"g-{uuid.uuid4().hex[:6]}"
    worker = processes.start(worker_args(kafka, topic, group, "kafka"))
    worker.wait_for("Consumer.Starting")
    send_slow(kafka, topic, tmp_path, "warmup", seconds=0)
    wait_until(lambda: markers(tmp_path, "warmup", "done"), "the worker took its partitions")
    worker.popen.send_signal(signal.SIGUSR1)
    worker.wait_for("paused")
    send_slow(kafka, topic, tmp_path, "job", seconds=0)
    time.sleep(5)
    assert not markers(tmp_path, "job", "started"), "a paused worker took a new task"
    worker.popen.send_signal(signal.SIGUSR2)
    wait_until(lambda: markers(tmp_path, "job", "done"), "the resumed worker ran it")
    assert markers(tmp_path, "job", "done")[0].name == f"job.done.{worker.popen.pid}"
    wait_until(lambda: group_lag(kafka, group, topic) == 0, "offsets committed")
    assert worker.popen.poll() is None


