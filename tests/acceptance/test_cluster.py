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
    first_end_after,
    healthy,
    leader_of_most,
    members,
    report,
    task_ends,
)
from tests.acceptance.harness import Run, wait_for
from tests.infra import ROOT

# (a rolling restart of three brokers under load takes minutes on 2 cores)
pytestmark = [pytest.mark.acceptance, pytest.mark.cluster, pytest.mark.timeout(900)]
transports = pytest.mark.parametrize("transport", ["kafka", "confluent"])

OPERATIONS, HOPS = 500, 5
TOTAL = OPERATIONS * HOPS


@pytest.fixture
def cluster(kafka_cluster):
    """The cluster, whole again whatever the previous test left down."""
    healthy(kafka_cluster)
    yield kafka_cluster
    kafka_cluster.start()


def start(cluster, pg_url, processes, transport, tmp_path, least=None, **env):
    run = Run(cluster, pg_url, processes, partitions=12, min_insync_replicas=least,
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


def finish(run, fault, transport, killed=(), pause=None):
    """The end of every test: all done once; bodies run twice only for tasks whose
    worker was killed while they ran (an attempt ended "lease expired"). Reports the
    run's longest pause, or ``pause`` (a function of the run)."""
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
    pause = report(fault, transport, run, pause(run) if pause else None)
    run.close()
    return pause


@transports
def test_the_leader_of_most_partitions_sigkilled_then_restarted(cluster, pg_url, processes,
                                                                transport, tmp_path):
    run = start(cluster, pg_url, processes, transport, tmp_path)
    dlq = f"{run.topic}.dlq"  # created by the workers, with their transport's admin
    with Admin(connection_config(cluster.bootstrap_servers)) as admin:
        wait_for(lambda: admin.existing([dlq]), "the workers' dead-letter topic", 120)
        for info in admin.describe([run.topic, dlq], created=[dlq]):
            assert (info.replication_factor, info.min_insync_replicas) == (3, 2), info.name
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
    cluster.kill(node)
    wait_for(lambda: coordinator(cluster, run.group) != node, "a new group coordinator")
    progressed(run)
    wait_for(lambda: members(cluster, run.group) == 2, "both workers in the group again")
    rejoined = time.time()
    assert run.succeeded_tasks() < TOTAL, "the run was over before the workers rejoined"
    cluster.restart(node)
    finish(run, "the group coordinator's broker SIGKILLed", transport)
    after = {worker for when, worker in task_ends(run) if when > rejoined}
    assert len(after) == 2, f"only {after} carried on under the new coordinator"


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
    back = time.time()
    cluster.restart(down[0])
    # (the pause is the outage the test made: what counts is how soon the work resumes)
    finish(run, "two brokers of three SIGKILLed: from one back to the first task end",
           transport, pause=lambda run: first_end_after(run, back))


@transports
def test_a_broker_refusing_records_for_too_few_replicas_in_sync(cluster, pg_url, processes,
                                                                transport, tmp_path):
    """min.insync.replicas 3 and one broker SIGKILLed: the controllers remain, the
    partitions' in-sync replicas shrink to 2 and the leaders refuse every record with
    NotEnoughReplicas; nothing is lost or done twice, and the work resumes once the
    broker is back in sync."""
    run = start(cluster, pg_url, processes, transport, tmp_path, least=3,
                KSER_SEND_TIMEOUT="10")
    run.submit(OPERATIONS, HOPS)
    under_way(run)
    node = leader_of_most(cluster, run.topic)
    cluster.kill(node)
    # the leaders refuse once the controller fenced the node (its session, 9 s, expired)
    # and took it out of the in-sync replicas; till then the records wait for it
    wait_for(lambda: [n for n, broker in cluster.nodes.items() if n != node and
                      "NotEnoughReplicasException" in (broker.workdir / "server.log").read_text()],
             "a broker refusing a record for too few replicas in sync", 120)
    wait_for(lambda: time.time() - task_ends(run)[-1][0] > 8, "the work stalled", 300)
    assert run.succeeded_tasks() < TOTAL
    wait_for(lambda: all("offsets not committed" in w.output() for w in run.workers),
             "both workers saying why they commit nothing", 120)
    back = time.time()
    cluster.restart(node)
    finish(run, "min.insync.replicas 3, a broker SIGKILLed: from it back to the first "
           "task end", transport, pause=lambda run: first_end_after(run, back))


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


def test_kafka_local_kills_and_restarts_a_node_of_the_cluster_by_its_id(cluster, tmp_path):
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
    # without --dir, the cluster of .kafka/cluster when it runs and no single broker does
    (tmp_path / ".kafka").mkdir()
    (tmp_path / ".kafka" / "cluster").symlink_to(cluster.workdir)
    found = subprocess.run([*script, "status"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert [line.split(",")[0] for line in found.stdout.splitlines()] == [
        "node 1: running", "node 2: running", "node 3: running"], found.stderr
    wrong = subprocess.run([*script, "kill", "--node", "4", "--dir", str(cluster.workdir)],
                           capture_output=True, text=True, timeout=60)
    assert (wrong.returncode, wrong.stderr.strip()) == (
        1, f"kafka-local: no node 4: the nodes of {cluster.workdir} are 1, 2, 3")
    healthy(cluster)


def test_a_worker_names_an_existing_topic_less_durable_than_kser_would_create_it(
        cluster, processes):
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"old-{time.monotonic_ns()}"
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    try:  # as Kafka's defaults, or an older kser, made it
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    worker = processes.start([sys.executable, "-m", "kser.cli", "worker",
                              "tests.acceptance.workload:registry", "--topic", topic,
                              "--bootstrap-servers", cluster.bootstrap_servers])
    said = worker.wait_for("kafka-reassign-partitions.sh")
    assert (f"topic {topic} has 1 replica(s) and min.insync.replicas 1, below the 3 and 2 "
            "kser creates topics with on this cluster") in said
    assert f"topic {topic}.dlq has" not in said  # created by the worker: 3 and 2
