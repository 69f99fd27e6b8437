"""100 operations shaped ``a >> Parallel(b1, b2, b3) >> c >> Parallel(d1, d2) >> e`` over 2
`kser worker` processes on a real broker and PostgreSQL, one worker killed with SIGKILL
while parallel groups run, then started again.

Every operation must end SUCCESS; every task must succeed exactly once; every join (c,
e) must be queued once and run with a success once (counted in the store's attempts and
in the outbox's messages); every task must have received the right results, merged and
by name (the tasks check it themselves and fail otherwise).
"""

import socket
import time

import pytest
from sqlalchemy import func, select

from kser.store import schema
from tests.acceptance.harness import Run, wait_for
from tests.acceptance.workload import Fanned

pytestmark = pytest.mark.acceptance

OPERATIONS, SLOW_EVERY, SLOW = 100, 20, 1.5
NAMES = ["a", "b1", "b2", "b3", "c", "d1", "d2", "e"]
JOINS = ("c", "e")


def test_joins_run_once_when_a_worker_dies_while_groups_run(kafka, pg_url, processes):
    run = Run(kafka, pg_url, processes)
    ids = run.submit(OPERATIONS, params=lambda i: {"slow": SLOW} if i % SLOW_EVERY == 0
                     else {}, operation=Fanned)
    workers = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}

    def worker_mid_group():
        task = schema.tasks.c
        with run.store.transaction() as tx:
            return tx.connection.execute(
                schema.tasks.select().where(task.status == "RUNNING",
                                            task.worker.in_(list(workers)),
                                            task.name.in_(["b1", "b2", "b3", "d1", "d2"]),
                                            task.started_at > time.time() - SLOW / 2)
                .where(task.params["sleep"].as_float() == SLOW)).mappings().first()

    killed = wait_for(worker_mid_group, "a worker in the middle of a parallel group",
                      timeout=120)
    victim = killed["worker"]
    workers[victim].popen.kill()
    workers[victim].popen.wait(30)
    run.workers.append(run.start_worker("killed-worker-restarted"))

    run.wait_until_final()
    with run.store.transaction() as tx:
        for op_id in ids:
            op, tasks = tx.get_operation(op_id), tx.get_tasks(op_id)
            assert op.status == "SUCCESS", (op_id, op.status, op.result)
            assert [t.name for t in tasks] == NAMES
            assert sorted(op.result["retval"]) == NAMES
            for task in tasks:
                assert task.status == "SUCCESS", (task.name, task.result)
                successes = [a for a in tx.get_attempts(task.id) if a.status == "SUCCESS"]
                assert len(successes) == 1, f"{task.name} of {op_id} succeeded {len(successes)}"
        # each join was queued once: one outbox message (two only for the task the
        # killed worker was running, which a sweep may have re-sent for its takeover)
        for name in JOINS:
            joins = tx.connection.execute(
                select(schema.tasks.c.id).where(schema.tasks.c.name == name,
                                                schema.tasks.c.operation_id.in_(ids))
            ).scalars().all()
            assert len(joins) == OPERATIONS
            for join_id in joins:
                own_message = f'{{"uuid": "{join_id}", "entrypoint"'.encode()
                sent = tx.connection.execute(
                    select(func.count()).select_from(schema.outbox)
                    .where(func.substr(schema.outbox.c.value, 1, len(own_message))
                           == own_message)).scalar()
                assert sent == 1 or (join_id == killed["id"] and sent == 2), (name, sent)
        taken_over = tx.get_attempts(killed["id"])
    assert taken_over[0].worker == victim and taken_over[0].status == "FAILED"
    assert [a.status for a in taken_over[1:]] == ["SUCCESS"]
    for worker in run.workers:
        assert "Traceback" not in worker.output(), worker.output()[-3000:]
    run.close()
