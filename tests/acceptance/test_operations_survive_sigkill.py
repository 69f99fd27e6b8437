"""200 operations of 5 tasks over 2 `kser worker` processes on a real broker and PostgreSQL.

One worker is killed with SIGKILL while it runs a task, and started again.
Every operation must end SUCCESS (or FAILED where a task fails on purpose,
then SUCCESS after ``recover``), every task must have succeeded exactly once,
every task n must have seen task n-1's ``retval``, and no message may be left
unconsumed.
"""

import socket

import pytest

from kser.python_kafka.producer import Producer
from kser.store import schema
from tests.acceptance.harness import Run, wait_for
from tests.acceptance.workload import registry

pytestmark = pytest.mark.acceptance

OPERATIONS, HOPS, FAILING_EVERY, SLOW_EVERY = 200, 5, 20, 50
#: seconds each hop of a slow operation takes: long enough to be killed in the middle of
SLOW_HOP = 1.5


def test_operations_survive_a_worker_killed_mid_task(kafka, pg_url, processes, tmp_path):
    run = Run(kafka, pg_url, processes)
    fixed = tmp_path / "fixed"
    release = tmp_path / "release"  # the slow hops wait for it: the kill lands mid-task

    def params(i):
        extra = {}
        if i % FAILING_EVERY == 7:
            extra.update(fail_at=2, fixed=str(fixed))
        if i % SLOW_EVERY == 0:
            extra.update(sleep=SLOW_HOP, release=str(release))
        return extra

    ids = run.submit(OPERATIONS, HOPS, params)
    failing = {op_id for i, op_id in enumerate(ids) if "fail_at" in params(i)}

    # kill with SIGKILL whichever worker is in the middle of a slow task (the slow
    # operations' partitions may all belong to one of them)
    workers = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}

    def worker_mid_task():
        task = schema.tasks.c
        with run.store.transaction() as tx:
            return tx.connection.execute(
                schema.tasks.select().where(task.status == "RUNNING",
                                            task.worker.in_(list(workers)))
                .where(task.params["sleep"].as_float() == SLOW_HOP)).mappings().first()

    killed_task = wait_for(worker_mid_task, "a worker in the middle of a slow task", timeout=120)
    victim = killed_task["worker"]
    workers[victim].popen.kill()
    workers[victim].popen.wait(30)
    release.touch()
    run.workers.append(run.start_worker("killed-worker-restarted"))

    done = OPERATIONS - len(failing)
    run.wait_until_final({"SUCCESS": done, "FAILED": len(failing)})
    run.check(HOPS, skip=failing)
    with run.store.transaction() as tx:
        for op_id in failing:
            op, tasks = tx.get_operation(op_id), tx.get_tasks(op_id)
            assert op["status"] == "FAILED" and "fails on purpose" in op["result"]["stderr"]
            # the tasks after the failed one never ran: FAILED, "upstream failed"
            assert [t["status"] for t in tasks] == ["SUCCESS", "SUCCESS", "FAILED",
                                                    "FAILED", "FAILED"]
            assert [t["attempt"] for t in tasks[3:]] == [0, 0]
            assert all(t["result"]["retcode"] == 424 for t in tasks[3:])
        attempts = tx.get_attempts(killed_task["id"])
        victims = tx.connection.execute(schema.attempts.select().where(
            schema.attempts.c.worker == victim)).all()
    assert victims, "the killed worker ran tasks before it died"
    # the task it was running was taken over once its lease expired, and succeeded once
    assert attempts[0]["worker"] == victim and attempts[0]["status"] == "FAILED"
    assert attempts[0]["error"].startswith("lease expired")
    assert [a["status"] for a in attempts[1:]] == ["SUCCESS"]

    # fix the cause, recover the failed operations: they complete from hop 2
    fixed.touch()
    producer = Producer({"bootstrap_servers": kafka.bootstrap_servers})
    registry.configure(store=run.store, producer=producer, topic=run.topic)
    for op_id in failing:
        assert registry.sequencer.recover(op_id).retcode == 0
    run.wait_until_final(timeout=120)
    run.check(HOPS)
    with run.store.transaction() as tx:
        for op_id in failing:
            # each task ran once, but hop 3 (failed on purpose, then recovered) and any
            # attempt the killed worker held (a batch claims ahead): taken over once its
            # lease expired, never run twice by live workers
            for position, task in enumerate(tx.get_tasks(op_id)):
                lost = [a for a in tx.get_attempts(task["id"]) if a["worker"] == victim
                        and a["status"] == "FAILED" and a["error"].startswith("lease expired")]
                assert task["attempt"] == 1 + len(lost) + (position == 2), (op_id, position)
    producer.close()
    run.close()
