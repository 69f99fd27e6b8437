"""A three-node Kafka cluster under test: whether it is whole, who leads what, and how long
a fault stopped the work (the pause each test reports, for docs/reliability.md)."""

import collections
import itertools
import time

from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient
from kafka.protocol.admin import DescribeClusterRequest
from sqlalchemy import select

from kser.store import schema
from tests.acceptance.harness import wait_for

#: (fault, transport, longest pause in s) of each test run, printed at the end of the session
PAUSES: list[tuple[str, str, float]] = []


def healthy(cluster, timeout=240):
    """Start the nodes that are down and wait until every partition of every topic (the
    groups' offsets included) has a leader and all its replicas in sync."""
    cluster.start()
    wait_for(lambda: in_sync(cluster), "every replica of every partition in sync", timeout)


def in_sync(cluster) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    try:
        if not all(seen == set(cluster.nodes) for seen in brokers_seen(admin, cluster)):
            return False
        topics = admin.describe_topics()
    finally:
        admin.close()
    return all(p["leader_id"] >= 0 and sorted(p["isr_nodes"]) == sorted(p["replica_nodes"])
               for topic in topics for p in topic["partitions"])


def brokers_seen(admin, cluster) -> list[set[int]]:
    """The brokers up (registered, not fenced) as each node's metadata has them. A node
    that just started can lag the others: kser, asking it, would count fewer brokers
    and create its topics with fewer replicas (the CI run of 8971d94 did, once). The
    admin client asks any node it likes, so each is asked through its connection."""
    async def ask(node):
        request = DescribeClusterRequest(include_cluster_authorized_operations=False,
                                         include_fenced_brokers=False)
        return await admin._manager.send(request, node_id=node)

    seen = []
    for node in cluster.nodes:
        try:
            response = admin._manager.run(ask, node)
        except Exception:  # (a node down or not ready yet: not whole)
            return [set()]
        seen.append({broker.broker_id for broker in response.brokers})
    return seen


def leader_of_most(cluster, topic) -> int:
    """The node that leads most partitions of ``topic``."""
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    try:
        partitions = admin.describe_topics([topic])[0]["partitions"]
    finally:
        admin.close()
    counts = collections.Counter(p["leader_id"] for p in partitions)
    return counts.most_common(1)[0][0]


def coordinator(cluster, group) -> int:
    """The node that coordinates consumer group ``group``."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return described.coordinator.id


def members(cluster, group) -> int:
    """Members of ``group`` now (0 while it rebalances without them)."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return len(described.members)


def task_ends(run) -> list[tuple[float, str]]:
    """(when, worker) of every task that ended SUCCESS, in time order."""
    with run.store.transaction() as tx:
        rows = tx.connection.execute(
            select(schema.tasks.c.finished_at, schema.tasks.c.worker)
            .where(schema.tasks.c.status == "SUCCESS")).all()
    return sorted((row[0], row[1]) for row in rows)


def longest_pause(run) -> float:
    """The longest time, in seconds, in which no task of the run ended."""
    ends = [when for when, _ in task_ends(run)]
    return max((b - a for a, b in itertools.pairwise(ends)), default=0.0)


def report(fault: str, transport: str, run, pause: float | None = None) -> float:
    """Keep the run's longest pause (or ``pause``) for the session's summary."""
    pause = longest_pause(run) if pause is None else pause
    PAUSES.append((fault, transport, pause))
    return pause


def first_end_after(run, moment: float) -> float:
    """Seconds from ``moment`` (time.time()) to the first task end after it."""
    return min(when for when, _ in task_ends(run) if when > moment) - moment


def body_runs(path) -> collections.Counter:
    """How many times each task's body ran (the workload's side-effect log)."""
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


def since(started: float) -> float:
    return time.monotonic() - started
