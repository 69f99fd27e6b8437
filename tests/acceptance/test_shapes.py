"""Shapes on real `kser worker` processes, a real broker and PostgreSQL.

100 operations shaped ``a >> Parallel(b1, b2, b3) >> c >> Parallel(d1, d2) >> e`` over 2
`kser worker` processes on a real broker and PostgreSQL, one worker killed with SIGKILL
while parallel groups run, then started again.

Every operation must end SUCCESS; every task must succeed exactly once; every join (c,
e) must be queued once and run with a success once (counted in the store's attempts and
in the outbox's messages); every task must have received the right results, merged and
by name (the tasks check it themselves and fail otherwise).
"""

import socket

import pytest
from sqlalchemy import func, select

from kser.store import schema
from tests.acceptance.harness import Run, wait_for
from tests.acceptance.workload import (
    Branchy,
    CleanUpAfterFailure,
    Diamond,
    Fanned,
    WaitThenStep,
    WithChild,
)

pytestmark = pytest.mark.acceptance

OPERATIONS, SLOW_EVERY, SLOW = 100, 20, 1.5
NAMES = ["a", "b1", "b2", "b3", "c", "d1", "d2", "e"]
JOINS = ("c", "e")


def test_joins_run_once_when_a_worker_dies_while_groups_run(kafka, pg_url, processes,
                                                           tmp_path):
    run = Run(kafka, pg_url, processes)
    release = tmp_path / "release"  # the slow groups' tasks wait for it: killed mid-run
    ids = run.submit(OPERATIONS, params=lambda i: {"slow": SLOW, "hold": str(release)}
                     if i % SLOW_EVERY == 0 else {}, operation=Fanned)
    workers = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}

    def worker_mid_group():
        task = schema.tasks.c
        with run.store.transaction() as tx:
            return tx.connection.execute(
                schema.tasks.select().where(task.status == "RUNNING",
                                            task.worker.in_(list(workers)),
                                            task.name.in_(["b1", "b2", "b3", "d1", "d2"]))
                .where(task.params["sleep"].as_float() == SLOW)).mappings().first()

    killed = wait_for(worker_mid_group, "a worker in the middle of a parallel group",
                      timeout=120)
    victim = killed["worker"]
    workers[victim].popen.kill()
    workers[victim].popen.wait(30)
    release.touch()
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


def test_a_diamond_a_branch_and_all_done_after_a_failure_on_real_workers(
        kafka, pg_url, processes):
    run = Run(kafka, pg_url, processes)
    diamonds = run.submit(5, operation=Diamond)
    lefts = run.submit(3, operation=Branchy, params=lambda i: {"pick": "left"})
    rights = run.submit(3, operation=Branchy, params=lambda i: {"pick": "right"})
    cleanups = run.submit(3, operation=CleanUpAfterFailure)
    run.wait_until_final({"SUCCESS": 14})
    with run.store.transaction() as tx:
        def by_name(op_id):
            return {t.name: (t.status, t.attempt) for t in tx.get_tasks(op_id)}

        for op_id in diamonds:
            assert by_name(op_id) == {n: ("SUCCESS", 1) for n in "abcd"}
            spans = tx.operation(op_id).result["retval"]
            assert spans["a"][1] <= min(spans["b"][0], spans["c"][0])
            assert max(spans["b"][1], spans["c"][1]) <= spans["d"][0]
        for op_id in lefts:
            assert by_name(op_id) == {"choose": ("SUCCESS", 1), "left": ("SUCCESS", 1),
                                      "right": ("SKIPPED", 0), "join": ("SUCCESS", 1)}
        for op_id in rights:
            assert by_name(op_id)["left"] == ("SKIPPED", 0)
            assert by_name(op_id)["right"] == by_name(op_id)["join"] == ("SUCCESS", 1)
        for op_id in cleanups:
            assert by_name(op_id) == {"x": ("FAILED", 1), "after": ("FAILED", 0),
                                      "cleanup": ("SUCCESS", 1)}
    run.close()


def test_a_waiting_sensor_holds_nothing_while_the_same_single_worker_runs_50_tasks(
        kafka, pg_url, processes, tmp_path):
    run = Run(kafka, pg_url, processes, workers=1)  # one worker, one task at a time
    ready = tmp_path / "ready"  # the sensor's condition: met once the test creates it
    (waiting,) = run.submit(1, operation=WaitThenStep,
                            params=lambda i: {"ready_file": str(ready)})
    wait_for(lambda: _pokes(run, waiting) >= 1, "the sensor's first poke", timeout=60)
    others = run.submit(10, hops=5)  # 50 tasks
    # they all end while the sensor waits (its condition is not met before the test
    # creates the file below): a sensor holding the worker's only task thread would let
    # none of them run
    run.wait_until_final({"SUCCESS": 10, "RUNNING": 1}, timeout=120)
    wait_for(lambda: _pokes(run, waiting) >= 3, "the sensor poking on", timeout=60)
    ready.touch()
    run.wait_until_final({"SUCCESS": 11})
    with run.store.transaction() as tx:
        sensor, _ = tx.get_tasks(waiting)
        assert sensor.status == "SUCCESS" and sensor.attempt == 1 and sensor.pokes >= 3
        finished = [t for op_id in others for t in tx.get_tasks(op_id)]
    assert len(finished) == 50 and {t.status for t in finished} == {"SUCCESS"}
    run.close()


def test_a_sub_operation_whose_child_task_is_killed_mid_run_completes(
        kafka, pg_url, processes, tmp_path):
    run = Run(kafka, pg_url, processes)
    release = tmp_path / "release"  # the child's slow task waits for it: killed mid-run
    (op_id,) = run.submit(1, operation=WithChild,
                          params=lambda i: {"slow": SLOW * 2, "hold": str(release)})
    workers = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}

    def child_task_running():
        task = schema.tasks.c
        with run.store.transaction() as tx:
            return tx.connection.execute(
                schema.tasks.select().where(task.status == "RUNNING", task.name == "x",
                                            task.worker.in_(list(workers)))
            ).mappings().first()

    killed = wait_for(child_task_running, "the child's slow task running", timeout=120)
    workers[killed["worker"]].popen.kill()
    workers[killed["worker"]].popen.wait(30)
    release.touch()
    run.workers.append(run.start_worker("killed-worker-restarted"))
    run.wait_until_final({"SUCCESS": 2}, timeout=180)  # the parent and its child
    with run.store.transaction() as tx:
        tasks = {t.name: t for t in tx.get_tasks(op_id)}
        assert [t.status for t in tasks.values()] == ["SUCCESS"] * 3
        assert tasks["child"].attempt == 1  # the parent's task waited, held nothing
        child, child_tasks = tx.operation(tasks["child"].id), tx.get_tasks(tasks["child"].id)
        assert child.status == "SUCCESS" and child.parent_operation_id == op_id
        attempts = [a.status for a in tx.get_attempts(killed["id"])]
        assert attempts == ["FAILED", "SUCCESS"]  # taken over once its lease expired
        assert [t.status for t in child_tasks] == ["SUCCESS", "SUCCESS"]
        assert sorted(tx.operation(op_id).result["retval"]) == ["a", "b", "x", "y"]
    for worker in run.workers:
        assert "Traceback" not in worker.output(), worker.output()[-3000:]
    run.close()


def _pokes(run, op_id):
    with run.store.transaction() as tx:
        return tx.get_tasks(op_id)[0].pokes or 0
