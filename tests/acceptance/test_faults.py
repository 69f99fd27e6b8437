"""Faults injected for real while 120 operations of 5 tasks run over 2 `kser worker`s.

Each test ends with the same check (tests/acceptance/harness.py): every
operation SUCCESS, every task SUCCESS exactly once in the store, task n saw
task n-1's retval, nothing RUNNING, nothing left unconsumed.
"""

import time

import pytest

from tests.acceptance.harness import Run, every_record_twice, wait_for

pytestmark = pytest.mark.acceptance

OPERATIONS, HOPS = 120, 5


def test_the_kafka_broker_stopped_for_10_s_mid_run(kafka, pg_url, processes):
    run = Run(kafka, pg_url, processes)
    run.submit(OPERATIONS, HOPS)
    wait_for(lambda: run.succeeded_tasks() >= OPERATIONS, "a fifth of the tasks done")
    kafka.stop()
    assert run.succeeded_tasks() < OPERATIONS * HOPS, "the run was over before the fault"
    time.sleep(10)
    kafka.start()
    run.wait_until_final()
    run.check(HOPS)
    run.close()


def test_postgresql_restarted_mid_run(kafka, postgres, pg_url, processes):
    run = Run(kafka, pg_url, processes)
    run.submit(OPERATIONS, HOPS)
    wait_for(lambda: run.succeeded_tasks() >= OPERATIONS, "a fifth of the tasks done")
    assert run.succeeded_tasks() < OPERATIONS * HOPS, "the run was over before the fault"
    postgres.stop()
    time.sleep(3)
    postgres.start()
    run.wait_until_final()
    run.check(HOPS)
    logs = "".join(worker.output() for worker in run.workers)
    # a record redone, or a finished task's result written again once the store is back
    assert "store unreachable" in logs or "the store is unreachable" in logs, \
        "the restart hit no worker"
    run.close()


def test_producers_failing_to_send_redo_the_work(kafka, pg_url, processes):
    """The broker stops answering (SIGSTOP) for longer than the workers' send timeout:
    their checkpoints see the sends unacknowledged and commit nothing; what was not
    acknowledged is redone (records redelivered, outbox rows re-sent by a sweep)."""
    run = Run(kafka, pg_url, processes, env={"KSER_SEND_TIMEOUT": "3"})
    run.submit(OPERATIONS, HOPS)
    wait_for(lambda: run.succeeded_tasks() >= OPERATIONS, "a fifth of the tasks done")
    kafka.pause()
    time.sleep(8)
    kafka.resume()
    run.wait_until_final()
    run.check(HOPS)
    logs = "".join(worker.output() for worker in run.workers)
    assert "offsets not committed" in logs  # the checkpoints saw the sends fail
    run.close()


def test_two_workers_racing_on_the_same_redelivered_messages(kafka, pg_url, processes):
    """Every record of the topic is copied to another partition as it arrives, so two
    workers receive the same operation and task messages at the same time."""
    run = Run(kafka, pg_url, processes, partitions=2)
    with every_record_twice(run, other_partition=True) as copied:
        run.submit(OPERATIONS, HOPS)
        run.wait_until_final()
    assert len(copied) >= OPERATIONS * HOPS  # every operation and task message twice
    run.check(HOPS)
    run.close()
