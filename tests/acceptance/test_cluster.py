"""Faults of a real three-node Kafka cluster (KRaft, each node controller and broker) while
500 operations of 5 steps run over 2 `kser worker`s on PostgreSQL, on both transports.

kser creates the topic as it creates its topics (3 replicas, min.insync.replicas 2).
Each test ends with the harness's check (every operation SUCCESS, every step saw
every earlier step's result, each task succeeded once, nothing unconsumed, no
traceback) and with each step's body run once, or twice where a worker was
killed while it ran. Each reports its pause: the longest time no task ended.
"""

import subprocess
import sys
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
from tests.infra import ROOT

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
    # what the workers had fetched runs on; then no task ends: nothing can be sent
    wait_for(lambda: time.time() - task_ends(run)[-1][0] > 8, "the work stalled", 300)
    assert run.succeeded_tasks() < TOTAL
    said = wait_for(lambda: [w.output() for w in run.workers
                             if "offsets not committed" in w.output()
                             and "min.insync.replicas" in w.output()],
                    "a worker saying why it commits nothing", 120)
    assert "Traceback" not in said[0], said[0][-3000:]
    for worker in run.workers:
        assert worker.popen.poll() is None, worker.output()[-3000:]
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


def test_kafka_local_kills_and_restarts_a_node_of_the_cluster_by_its_id(cluster):
    script = [sys.executable, str(ROOT / "scripts" / "kafka_local.py")]

    def kafka_local(*args):
        done = subprocess.run([*script, *args, "--dir", str(cluster.workdir)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    exported = f"export KSER_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}"
    assert kafka_local("env").strip() == exported
    assert [line.split(",")[0] for line in kafka_local("status").splitlines()] == [
        "node 1: running", "node 2: running", "node 3: running"]
    kafka_local("kill", "--node", "3")
    assert kafka_local("status").splitlines()[2] == (
        f"node 3: stopped, {cluster.nodes[3].bootstrap_servers}")
    kafka_local("restart", "--node", "3")
    assert kafka_local("status").splitlines()[2].startswith("node 3: running, pid ")
    wrong = subprocess.run([*script, "kill", "--node", "4", "--dir", str(cluster.workdir)],
                           capture_output=True, text=True, timeout=60)
    assert (wrong.returncode, wrong.stderr.strip()) == (
        1, f"kafka-local: no node 4: the nodes of {cluster.workdir} are 1, 2, 3")
    healthy(cluster)
