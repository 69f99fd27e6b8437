"""``async def`` task bodies in real `kser worker` processes, on the real broker and
PostgreSQL: thousands awaited at once without a thread each, and a worker SIGKILLed
while a thousand of them wait loses none of them."""

import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kser.store import schema
from tests.acceptance.harness import Run, wait_for
from tests.acceptance.workload import AsyncThenStep

pytestmark = pytest.mark.acceptance


def running(run) -> int:
    with run.store.transaction() as tx:
        return tx.connection.execute(select(func.count()).select_from(schema.tasks).where(
            schema.tasks.c.status == "RUNNING")).scalar()


def threads(pid: int) -> int:
    """The threads of process ``pid`` now (/proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def finished_once(run, bodies_log: Path, taken_over: set[str] = frozenset()) -> Counter:
    """Every operation SUCCESS, every task succeeded once, every body ran (twice only if
    its task is in ``taken_over``); the bodies' run counts."""
    run.wait_until_final(timeout=600)
    tasks, attempts = schema.tasks.c, schema.attempts.c
    with run.store.transaction() as tx:
        statuses = Counter(tx.connection.execute(select(tasks.status)).scalars())
        ids = set(tx.connection.execute(select(tasks.id)).scalars())
        succeeded = Counter(tx.connection.execute(
            select(attempts.task_id).where(attempts.status == "SUCCESS")).scalars())
    assert statuses == {"SUCCESS": 2 * len(run.operations)}, statuses
    assert all(succeeded[task] == 1 for task in ids)
    bodies = Counter(bodies_log.read_text().split())
    assert set(bodies) == ids
    again = {task for task, count in bodies.items() if count > 1}
    assert again <= taken_over, sorted(again - taken_over)[:5]
    for worker in run.workers:
        assert "Traceback" not in worker.output(), worker.output()[-3000:]
    return bodies


@pytest.mark.timeout(900)
def test_one_worker_awaits_10000_bodies_at_once_on_two_task_threads(kafka, pg_url,
                                                                     processes, tmp_path):
    release, bodies = tmp_path / "release", tmp_path / "bodies.log"
    count = 10_000
    run = Run(kafka, pg_url, processes, workers=1, env={
        "KSER_CONCURRENCY": "2", "KSER_ASYNC_CONCURRENCY": str(count),
        "KSER_TEST_SIDE_EFFECTS": str(bodies),
        # (10,000 leases renewed at once: a lease of 3 s would be the load measured)
        "KSER_TASK_LEASE": "60"})
    run.submit(count, params=lambda i: {"release": str(release)}, operation=AsyncThenStep)
    wait_for(lambda: running(run) == count, f"{count} async bodies waiting at once", 600)
    held = threads(run.workers[0].popen.pid)
    assert held < 60, f"the worker holds {held} threads for {count} waiting bodies"
    release.touch()
    finished_once(run, bodies)
    print(f"\n{count} async bodies waited at once in one worker of {held} threads")
    run.close()


def test_a_worker_sigkilled_while_1000_async_bodies_wait_loses_none(kafka, pg_url, processes,
                                                                    tmp_path):
    release, bodies = tmp_path / "release", tmp_path / "bodies.log"
    count = 1000
    run = Run(kafka, pg_url, processes, env={"KSER_TEST_SIDE_EFFECTS": str(bodies)})
    names = {f"{socket.gethostname()}:{w.popen.pid}": w for w in run.workers}
    run.submit(count, params=lambda i: {"release": str(release)}, operation=AsyncThenStep)
    wait_for(lambda: running(run) == count, f"{count} async bodies waiting", 300)
    tasks = schema.tasks.c
    with run.store.transaction() as tx:
        held = dict(tx.connection.execute(select(tasks.worker, func.count()).where(
            tasks.status == "RUNNING").group_by(tasks.worker)).all())
    victim = max(held, key=held.get)
    names[victim].popen.kill()
    names[victim].popen.wait(30)
    with run.store.transaction() as tx:  # (nothing ended while they waited)
        assert tx.connection.execute(select(func.count()).select_from(schema.tasks).where(
            tasks.status == "SUCCESS")).scalar() == 0
    started = time.monotonic()
    run.workers.append(run.start_worker("killed-worker-restarted"))
    release.touch()
    run.wait_until_final(timeout=600)
    attempts = schema.attempts.c
    with run.store.transaction() as tx:
        taken_over = set(tx.connection.execute(select(attempts.task_id).where(
            attempts.worker == victim, attempts.status == "FAILED",
            attempts.error.like("lease expired%"))).scalars())
    finished_once(run, bodies, taken_over)
    assert len(taken_over) == held[victim]  # each body it awaited, taken over once
    print(f"\nkilled {victim} awaiting {held[victim]} bodies of {count}; all done "
          f"{time.monotonic() - started:.1f} s later")
    run.close()
