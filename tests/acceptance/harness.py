"""Runs many multi-task operations over real `kser worker` processes, a fault in the middle,
and checks what every fault test must end with."""

import sys
import threading
import time
import uuid
from contextlib import contextmanager

from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import func, select

from kser.python_kafka import connection_config
from kser.python_kafka.admin import Admin
from kser.python_kafka.producer import Producer
from kser.schemas import Message
from kser.store import Store, schema
from tests.acceptance.workload import Chain
from tests.infra import group_lag

#: seconds a whole run may take
DEADLINE = 600
#: settings of every worker: short leases and sweeps, so takeovers are quick
WORKER_ENV = {"KSER_TASK_LEASE": "3", "KSER_SWEEP_INTERVAL": "1", "KSER_LOG_LEVEL": "WARNING",
              "KSER_REDO_BACKOFF": "1"}


def wait_for(condition, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the fault may make the store or broker fail for a while
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


@contextmanager
def every_record_twice(run, other_partition=False):
    """Copy every record of ``run.topic`` once more as it arrives (to the other of two
    partitions, or by its key), so workers get each operation and task message twice;
    yields the list of the offsets copied."""
    stop, copied = threading.Event(), []

    def duplicate():
        consumer = KafkaConsumer(run.topic, bootstrap_servers=run.kafka.bootstrap_servers,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 consumer_timeout_ms=300)
        producer = KafkaProducer(bootstrap_servers=run.kafka.bootstrap_servers)
        while not stop.is_set():
            for record in consumer:
                if record.headers and ("copy", b"1") in record.headers:
                    continue
                where = (dict(partition=1 - record.partition) if other_partition
                         else dict(key=record.key))
                producer.send(run.topic, record.value, headers=[("copy", b"1")], **where)
                copied.append(record.offset)
            producer.flush()
        consumer.close()
        producer.close()

    copier = threading.Thread(target=duplicate, daemon=True)
    copier.start()
    try:
        yield copied
    finally:
        stop.set()
        copier.join(30)


class Run:
    """Topic, group, store, workers and operations of one acceptance run."""

    def __init__(self, kafka, store_url, processes, workers=2, env=None, partitions=4,
                 min_insync_replicas=None):
        self.kafka, self.store_url, self.processes = kafka, store_url, processes
        self.topic = f"ops-{uuid.uuid4().hex[:8]}"
        self.group = f"g-{uuid.uuid4().hex[:6]}"
        # created as kser creates its topics: on a cluster, 3 replicas, 2 in sync
        with Admin(connection_config(kafka.bootstrap_servers), partitions=partitions,
                   min_insync_replicas=min_insync_replicas) as admin:
            admin.ensure([self.topic])
        self.store = Store(store_url)
        self.env = {**WORKER_ENV, "KSER_STORE_URL": store_url, **(env or {})}
        self.workers = [self.start_worker(f"worker{i}") for i in range(workers)]
        self.operations: list[str] = []

    def worker_args(self):
        return [sys.executable, "-m", "kser.cli", "worker", "tests.acceptance.workload:registry",
                "--topic", self.topic, "--group", self.group,
                "--bootstrap-servers", self.kafka.bootstrap_servers]

    def start_worker(self, name):
        return self.processes.start(self.worker_args(), env=self.env, name=name)

    def submit(self, count, hops=5, params=None, operation=Chain):
        """Send ``count`` operations (Chain ones of ``hops`` tasks by default) as messages;
        return their ids."""
        producer = Producer({"bootstrap_servers": self.kafka.bootstrap_servers})
        base = {"hops": hops} if operation is Chain else {}
        kmsgs = [Message(str(uuid.uuid4()), operation.path,
                         params={**base, **(params(i) if params else {})})
                 for i in range(count)]
        assert producer.bulk_send(self.topic, kmsgs).retcode == 0
        producer.close()
        self.operations += [k.uuid for k in kmsgs]
        return [k.uuid for k in kmsgs]

    def counts(self):
        with self.store.transaction() as tx:
            return dict(tx.connection.execute(
                select(schema.operations.c.status, func.count())
                .group_by(schema.operations.c.status)).all())

    def succeeded_tasks(self):
        with self.store.transaction() as tx:
            return tx.connection.execute(select(func.count()).select_from(schema.tasks)
                                         .where(schema.tasks.c.status == "SUCCESS")).scalar()

    def wait_until_final(self, expected=None, timeout=DEADLINE):
        expected = expected or {"SUCCESS": len(self.operations)}
        wait_for(lambda: self.counts() == expected, f"operations {expected}", timeout)

    def check(self, hops=5, skip=()):
        """Every operation SUCCESS, every task SUCCESS exactly once, task n saw n-1's
        retval, nothing RUNNING, nothing left unconsumed."""
        with self.store.transaction() as tx:
            for op_id in self.operations:
                if op_id in skip:
                    continue
                op, tasks = tx.get_operation(op_id), tx.get_tasks(op_id)
                assert op["status"] == "SUCCESS", (op_id, op["status"])
                assert len(tasks) == hops
                for n, task in enumerate(tasks):
                    assert task["status"] == "SUCCESS"
                    assert task["result"]["retval"]["hops"] == list(range(n + 1))
                    successes = [a for a in tx.get_attempts(task["id"])
                                 if a["status"] == "SUCCESS"]
                    assert len(successes) == 1, f"{task['id']} succeeded {len(successes)} times"
            running = tx.connection.execute(select(func.count()).select_from(schema.tasks)
                                            .where(schema.tasks.c.status == "RUNNING")).scalar()
        assert running == 0
        wait_for(lambda: group_lag(self.kafka, self.group, self.topic) == 0,
                 "every message consumed", timeout=120)
        for worker in self.workers:
            assert "Traceback" not in worker.output(), worker.output()[-3000:]

    def close(self):
        self.store.close()
