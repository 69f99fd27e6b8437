"""200 operations of 5 tasks over 2 `kser worker` processes on a real broker and PostgreSQL.

One worker is killed with SIGKILL while it runs a task, and started again.
Every operation must end SUCCESS (or FAILED where a task fails on purpose,
then SUCCESS after ``recover``), every task must have succeeded exactly once,
every task n must have seen task n-1's ``retval``, and no message may be left
unconsumed.
"""

import socket
import sys
import time
import uuid

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from kser.python_kafka.producer import Producer
from kser.schemas import Message
from kser.store import Store, schema
from tests.acceptance.workload import Chain, registry
from tests.infra import group_lag

pytestmark = pytest.mark.acceptance

OPERATIONS, HOPS, FAILING_EVERY, SLOW_EVERY = 200, 5, 20, 50
#: seconds each hop of a slow operation takes: long enough to be killed in the middle of
SLOW_HOP = 1.5
#: seconds the whole run may take
DEADLINE = 600


def counts(store):
    from sqlalchemy import func, select

    with store.transaction() as tx:
        rows = tx.connection.execute(select(schema.operations.c.status, func.count())
                                     .group_by(schema.operations.c.status)).all()
    return dict(rows)


def wait_for(condition, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_operations_survive_a_worker_killed_mid_task(kafka, pg_url, processes, tmp_path):
    topic, group = f"ops-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()
    store = Store(pg_url)
    fixed = tmp_path / "fixed"
    env = {"KSER_STORE_URL": pg_url, "KSER_TASK_LEASE": "3", "KSER_SWEEP_INTERVAL": "1",
           "KSER_LOG_LEVEL": "WARNING"}
    args = [sys.executable, "-m", "kser.cli", "worker", "tests.acceptance.workload:registry",
            "--topic", topic, "--group", group, "--bootstrap-servers", kafka.bootstrap_servers]
    workers = [processes.start(args, env=env, name=f"worker{i}") for i in range(2)]

    producer = Producer({"bootstrap_servers": kafka.bootstrap_servers})
    kmsgs, failing = [], set()
    for i in range(OPERATIONS):
        params = {"hops": HOPS}
        if i % FAILING_EVERY == 7:
            params.update(fail_at=2, fixed=str(fixed))
        if i % SLOW_EVERY == 0:
            params.update(sleep=SLOW_HOP)
        kmsg = Message(str(uuid.uuid4()), Chain.path, params=params)
        if "fail_at" in params:
            failing.add(kmsg.uuid)
        kmsgs.append(kmsg)
    assert producer.bulk_send(topic, kmsgs).retcode == 0

    # kill worker 0 with SIGKILL while it is in the middle of a slow task
    victim = f"{socket.gethostname()}:{workers[0].popen.pid}"

    def victim_mid_task():
        task = schema.tasks.c
        with store.transaction() as tx:
            return tx.connection.execute(
                schema.tasks.select().where(task.status == "RUNNING", task.worker == victim,
                                            task.started_at > time.time() - SLOW_HOP / 2)
                .where(task.params["sleep"].as_float() == SLOW_HOP)).mappings().first()

    killed_task = wait_for(victim_mid_task, "worker 0 in the middle of a slow task", timeout=120)
    workers[0].popen.kill()
    workers[0].popen.wait(30)
    workers.append(processes.start(args, env=env, name="worker0-restarted"))

    done = OPERATIONS - len(failing)
    wait_for(lambda: counts(store).get("SUCCESS", 0) == done
             and counts(store).get("FAILED", 0) == len(failing), "every operation final")
    assert counts(store) == {"SUCCESS": done, "FAILED": len(failing)}

    with store.transaction() as tx:
        for kmsg in kmsgs:
            op, tasks = tx.get_operation(kmsg.uuid), tx.get_tasks(kmsg.uuid)
            if kmsg.uuid in failing:
                assert op["status"] == "FAILED" and "fails on purpose" in op["result"]["stderr"]
                assert [t["status"] for t in tasks] == ["SUCCESS", "SUCCESS", "FAILED",
                                                        "PENDING", "PENDING"]
                assert [t["attempt"] for t in tasks[3:]] == [0, 0]  # never ran
                continue
            assert op["status"] == "SUCCESS"
            for n, task in enumerate(tasks):
                assert task["status"] == "SUCCESS"
                # task n saw exactly what tasks 0..n-1 left
                assert task["result"]["retval"]["hops"] == list(range(n + 1))
                successes = [a for a in tx.get_attempts(task["id"]) if a["status"] == "SUCCESS"]
                assert len(successes) == 1, f"task {task['id']} succeeded {len(successes)} times"
        victims = tx.connection.execute(schema.attempts.select().where(
            schema.attempts.c.worker == victim)).all()
    assert victims, "the killed worker ran tasks before it died"
    with store.transaction() as tx:
        attempts = tx.get_attempts(killed_task["id"])
    # the task it was running was taken over once its lease expired, and succeeded once
    assert attempts[0]["worker"] == victim and attempts[0]["status"] == "FAILED"
    assert attempts[0]["error"].startswith("lease expired")
    assert [a["status"] for a in attempts[1:]] == ["SUCCESS"]

    # fix the cause, recover the failed operations: they complete from hop 2
    fixed.touch()
    registry.configure(store=store, producer=producer, topic=topic)
    for op_id in failing:
        assert registry.sequencer.recover(op_id).retcode == 0
    wait_for(lambda: counts(store) == {"SUCCESS": OPERATIONS}, "recovered operations done",
             timeout=120)
    with store.transaction() as tx:
        for op_id in failing:
            tasks = tx.get_tasks(op_id)
            assert [t["attempt"] for t in tasks] == [1, 1, 2, 1, 1]
            assert tasks[-1]["result"]["retval"]["hops"] == list(range(HOPS))

    wait_for(lambda: group_lag(kafka, group, topic) == 0, "every message consumed", timeout=60)
    for worker in workers[1:]:
        assert "Traceback" not in worker.output()
    producer.close()
    store.close()
