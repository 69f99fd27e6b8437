"""A worker killed with SIGKILL while it holds a batch of claimed tasks, on PostgreSQL.

150 operations of 5 quick tasks over 2 `kser worker` processes: under load each task
thread claims up to KSER_BATCH_SIZE tasks in one transaction, runs their bodies, and
stores their ends together. One worker is killed the moment the store shows it holding
many claimed tasks at once, then started again. Nothing may be lost (every operation
SUCCESS), no task may succeed twice, and a body may run again only where the killed
worker had claimed its task (its attempt then ended "lease expired"). The second test
adds copies of every record and sub-operations to the kill.
"""

import socket
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from kser.store import schema
from tests.acceptance.harness import Run, every_record_twice
from tests.acceptance.workload import WithChild

pytestmark = pytest.mark.acceptance

OPERATIONS, HOPS = 150, 5
#: claimed tasks a worker must hold at once for the kill (a batch, not a lone task)
HELD = 4  # one task thread (concurrency 1): any count above 1 is a batch


def test_a_worker_killed_while_it_holds_a_batch_loses_nothing(kafka, pg_url, processes,
                                                              tmp_path):
    side_effects = tmp_path / "bodies.log"
    run = Run(kafka, pg_url, processes, env={"KSER_TEST_SIDE_EFFECTS": str(side_effects)})
    names = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}
    tasks = schema.tasks.c
    run.submit(OPERATIONS, HOPS, lambda i: {"sleep": 0.001})

    def holding_a_batch():
        with run.store.transaction() as tx:
            rows = tx.connection.execute(
                select(tasks.worker, func.count()).where(tasks.status == "RUNNING")
                .group_by(tasks.worker)).all()
        return next(((worker, count) for worker, count in rows
                     if worker in names and count >= HELD), None)

    deadline = time.monotonic() + 120
    found = None
    while found is None and time.monotonic() < deadline:  # polled fast: a batch is brief
        found = holding_a_batch()
        time.sleep(0.005)
    assert found, f"no worker held {HELD} claimed tasks at once within 120 s"
    victim, held = found
    names[victim].popen.kill()
    names[victim].popen.wait(30)
    with run.store.transaction() as tx:  # what it held when it died
        claimed = {row.id for row in tx.connection.execute(
            select(tasks.id).where(tasks.status == "RUNNING", tasks.worker == victim))}
    run.workers.append(run.start_worker("killed-worker-restarted"))

    run.wait_until_final()
    run.check(HOPS)  # every operation SUCCESS, every task succeeded exactly once
    bodies = Counter(side_effects.read_text().split())
    with run.store.transaction() as tx:
        all_tasks = {row.id for row in tx.connection.execute(select(tasks.id))}
        taken_over = {row.task_id for row in tx.connection.execute(
            select(schema.attempts.c.task_id).where(
                schema.attempts.c.worker == victim, schema.attempts.c.status == "FAILED",
                schema.attempts.c.error.like("lease expired%")))}
    assert set(bodies) == all_tasks  # every body ran
    again = {task_id for task_id, count in bodies.items() if count > 1}
    # a body ran twice only where the dead worker had claimed its task and its end was
    # not stored: that attempt was taken over
    assert again <= taken_over <= claimed | again, (again, taken_over, claimed)
    print(f"\nkilled {victim} holding {held} claimed tasks; {len(taken_over)} taken over, "
          f"{len(again)} bodies ran again")
    run.close()


@pytest.mark.parametrize("other_partition", [False, True], ids=["same-worker", "other-worker"])
def test_copies_sub_operations_and_a_kill_mid_batch_together(kafka, pg_url, processes,
                                                             tmp_path, other_partition):
    """The runner's one path at its worst moments at once, on PostgreSQL. Every record is
    copied as it arrives: to its own partition (the copy reaches the same worker, often
    in the same batch, and waits in hand for the thread that runs its task), or to the
    other of two partitions (both workers get each operation and task message: the copy
    finds its task running on the other worker and is read again after its batch's
    bodies, or finds it done). Half the operations hold a sub-operation, whose start and
    end are claimed after a batch's bodies. One worker is SIGKILLed while it holds a
    batch, then started again. Every operation, sub-operations included, ends SUCCESS;
    every task succeeds once; a body runs twice only where the killed worker's attempt
    was taken over ("lease expired")."""
    side_effects = tmp_path / "bodies.log"
    run = Run(kafka, pg_url, processes, partitions=2,
              env={"KSER_TEST_SIDE_EFFECTS": str(side_effects)})
    names = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}
    tasks, attempts, operations = schema.tasks.c, schema.attempts.c, schema.operations.c
    with every_record_twice(run, other_partition=other_partition) as copied:
        chains = run.submit(OPERATIONS // 2, HOPS, lambda i: {"sleep": 0.001})
        parents = run.submit(OPERATIONS // 2, operation=WithChild,
                             params=lambda i: {"slow": 0.001})
        found = None
        deadline = time.monotonic() + 120
        while found is None and time.monotonic() < deadline:
            with run.store.transaction() as tx:
                rows = tx.connection.execute(
                    select(tasks.worker, func.count()).where(tasks.status == "RUNNING")
                    .group_by(tasks.worker)).all()
            found = next(((worker, count) for worker, count in rows
                          if worker in names and count >= HELD), None)
            time.sleep(0.005)
        assert found, f"no worker held {HELD} claimed tasks at once within 120 s"
        victim, held = found
        names[victim].popen.kill()
        names[victim].popen.wait(30)
        run.workers.append(run.start_worker("killed-worker-restarted"))
        # the operations sent, and a sub-operation for each parent
        run.wait_until_final({"SUCCESS": len(chains) + 2 * len(parents)})
    assert len(copied) >= len(chains) * HOPS  # the copies did reach the workers

    run.check(HOPS, skip=parents)  # the chains: each hop saw every earlier hop, once
    bodies = Counter(side_effects.read_text().split())
    with run.store.transaction() as tx:
        all_tasks = dict(tx.connection.execute(select(tasks.id, tasks.entrypoint)).all())
        statuses = Counter(tx.connection.execute(select(tasks.status)).scalars())
        succeeded = Counter(tx.connection.execute(
            select(attempts.task_id).where(attempts.status == "SUCCESS")).scalars())
        taken_over = set(tx.connection.execute(
            select(attempts.task_id).where(attempts.worker == victim,
                                           attempts.status == "FAILED",
                                           attempts.error.like("lease expired%"))).scalars())
        children = tx.connection.execute(
            select(func.count()).select_from(schema.operations)
            .where(operations.parent_task_id.is_not(None))).scalar()
    assert statuses == {"SUCCESS": len(all_tasks)}, statuses
    assert children == len(parents)
    assert all(succeeded[task] == 1 for task in all_tasks), \
        [task for task in all_tasks if succeeded[task] != 1][:5]
    bodies_run = {task for task in all_tasks if not all_tasks[task].endswith("SlowChild")}
    assert set(bodies) == bodies_run  # every body ran (a sub-operation's task has none)
    again = {task for task, count in bodies.items() if count > 1}
    assert again <= taken_over, (again, taken_over)
    print(f"\nkilled {victim} holding {held} claimed tasks; {len(copied)} records copied; "
          f"{len(taken_over)} attempts taken over, {len(again)} bodies ran again")
    run.close()
