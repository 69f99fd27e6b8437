"""Faults of a real three-node Kafka cluster (KRaft, each node controller and broker) while
500 operations of 5 steps run over 2 `kser worker`s on PostgreSQL, on both transports.

kser creates the topic as it creates its topics (3 replicas, min.insync.replicas 2).
Each test ends with the harness's check (every operation SUCCESS, every step saw
every earlier step's result, each task succeeded once, nothing unconsumed, no
traceback) and with each step's body run once, or twice where a worker was
killed while it ran. Each reports its pause: the longest time no task ended.
"""

import time

import pytest

from kser.python_kafka import connection_config
from kser.python_kafka.admin import Admin
from tests.acceptance.cluster import (
    body_runs,
    coordinator,
    healthy,
    leader_of_most,
    members,
    report,
    task_ends,
)
from tests.acceptance.harness import Run, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.cluster]
transports = pytest.mark.parametrize("transport", ["kafka", "confluent"])

OPERATIONS, HOPS = 500, 5
TOTAL = OPERATIONS * HOPS


@pytest.fixture
def cluster(kafka_cluster):
    """The cluster, whole again whatever the previous test left down."""
    healthy(kafka_cluster)
    yield kafka_cluster
    kafka_cluster.start()


def start(cluster, pg_url, processes, transport, tmp_path, **env):
    run = Run(cluster, pg_url, processes, partitions=12,
              env={"KSER_TRANSPORT": transport,
                   "KSER_TEST_SIDE_EFFECTS": str(tmp_path / "ran"), **env})
    run.side_effects = tmp_path / "ran"
    return run


def under_way(run, done=OPERATIONS):
    """Wait until ``done`` tasks ended; the run must not be over yet."""
    wait_for(lambda: run.succeeded_tasks() >= done, f"{done} tasks done")
    assert run.succeeded_tasks() < TOTAL, "the run was over before the fault"


def progressed(run, by=OPERATIONS // 2):
    """Wait until ``by`` more tasks ended (the cluster works on, a node short)."""
    before = run.succeeded_tasks()
    wait_for(lambda: run.succeeded_tasks() >= min(TOTAL, before + by),
             f"{by} more tasks done", timeout=300)


def finish(run, fault, transport, killed=()):
    """The end of every test: all done once; bodies run twice only for tasks whose
    worker was killed while they ran (an attempt ended "lease expired")."""
    run.wait_until_final()
    run.check(HOPS)
    runs = body_runs(run.side_effects)
    assert len(runs) == TOTAL
    twice = {task for task, count in runs.items() if count > 1}
    if twice:
        assert killed, f"bodies ran twice with no worker killed: {sorted(twice)[:5]}"
        with run.store.transaction() as tx:
            for task in twice:
                assert any("lease expired" in (a["error"] or "")
                           for a in tx.get_attempts(task)), f"{task} ran twice"
    pause = report(fault, transport, run)
    run.close()
    return pause


@transports
def test_the_leader_of_most_partitions_sigkilled_then_restarted(cluster, pg_url, processes,
                                                                transport, tmp_path):
    run = start(cluster, pg_url, processes, transport, tmp_path)
    with Admin(connection_config(cluster.bootstrap_servers)) as admin:
        info, = admin.describe([run.topic])
    assert (info.replication_factor, info.min_insync_replicas) == (3, 2)
    run.submit(OPERATIONS, HOPS)
    under_way(run)
    leader = leader_of_most(cluster, run.topic)
    cluster.kill(leader)
    progressed(run)
    cluster.restart(leader)
    finish(run, "the leader of most partitions SIGKILLed", transport)


@transports
def test_a_rolling_restart_of_the_three_brokers_under_load(cluster, pg_url, processes,
                                                           transport, tmp_path):
    run = start(cluster, pg_url, processes, transport, tmp_path)
    run.submit(OPERATIONS, HOPS, params=lambda i: {"sleep": 0.06})
    under_way(run, OPERATIONS // 2)
    for node in sorted(cluster.nodes):
        cluster.stop_node(node)  # SIGTERM: it hands its leaderships over, then stops
        cluster.restart(node)
        healthy(cluster)  # back in every partition's in-sync replicas before the next
        assert run.succeeded_tasks() < TOTAL, f"the run was over before node {node} restarted"
    finish(run, "a rolling restart (SIGTERM, rejoin, next)", transport)


@transports
def test_the_group_coordinator_s_broker_killed(cluster, pg_url, processes, transport,
                                               tmp_path):
    run = start(cluster, pg_url, processes, transport, tmp_path)
    run.submit(OPERATIONS, HOPS)
    under_way(run)
    node = coordinator(cluster, run.group)
    killed_at = time.time()
    cluster.kill(node)
    progressed(run)
    wait_for(lambda: members(cluster, run.group) == 2, "both workers in the group again")
    cluster.restart(node)
    finish(run, "the group coordinator's broker SIGKILLed", transport)
    after = {worker for when, worker in task_ends(run) if when > killed_at}
    assert len(after) == 2, f"only {after} carried on after the coordinator's loss"


@transports
def test_two_brokers_down_below_min_insync_replicas(cluster, pg_url, processes, transport,
                                                    tmp_path):
    run = start(cluster, pg_url, processes, transport, tmp_path, KSER_SEND_TIMEOUT="10")
    run.submit(OPERATIONS, HOPS)
    under_way(run)
    down = sorted(cluster.nodes)[:2]
    for node in down:
        cluster.kill(node)
    time.sleep(25)  # the fault itself lasts this long: nothing to wait for but the clock
    stalled = run.succeeded_tasks()
    time.sleep(5)
    assert run.succeeded_tasks() - stalled < 5, "tasks still ended with one broker of three"
    for worker in run.workers:
        assert worker.popen.poll() is None, worker.output()[-3000:]
    said = "".join(worker.output() for worker in run.workers)
    assert "not committed" in said or "not acknowledged" in said, said[-3000:]
    cluster.restart(down[0])
    finish(run, "two brokers of three SIGKILLed (below min.insync.replicas), one back",
           transport)


@transports
def test_a_worker_sigkilled_in_the_same_second_as_a_broker(cluster, pg_url, processes,
                                                           transport, tmp_path):
    run = start(cluster, pg_url, processes, transport, tmp_path)
    run.submit(OPERATIONS, HOPS)
    under_way(run)
    leader = leader_of_most(cluster, run.topic)
    run.workers[0].popen.kill()
    cluster.kill(leader)
    progressed(run)
    run.workers.append(run.start_worker("worker0-again"))
    cluster.restart(leader)
    finish(run, "a worker and a broker SIGKILLed in the same second", transport,
           killed=("worker0",))
