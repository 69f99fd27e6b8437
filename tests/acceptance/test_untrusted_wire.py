"""A message only names, the store decides (issue 26): what a topic writer tried, on a real
broker, PostgreSQL and `kser worker` / `kser scheduler` processes.

A writer of kser's topics may send any registered entrypoint with any params. It may
not choose where kser's own messages go or what they run (an exit notification's topic
or entrypoint), what kser keeps (a retention it cannot apply), or a key kser makes (a
schedule's fire): such a message is refused on decode and dead-lettered, and runs
nothing. What the broker refuses for good is sent once, never again.
"""

import json
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import func, insert, select

from kser.store import schema
from tests.acceptance.harness import Run, wait_for
from tests.acceptance.test_hostile import dead_letters, hostile_run, side_effects
from tests.acceptance.test_untrusted_runs import broker_topics
from tests.acceptance.workload import Announced, Chain, Lone

pytestmark = pytest.mark.acceptance


def status(run, op_id):
    with run.store.transaction() as tx:
        op = tx.get_operation(op_id)
    return None if op is None else op.status


def test_a_message_cannot_name_kser_s_exit_topic_retention_or_keys(kafka, pg_url, processes,
                                                                   tmp_path):
    run, effects = hostile_run(kafka, pg_url, processes, tmp_path, "kafka", workers=1)
    run.workers[0].wait_for("Starting: consumer")
    raw = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    new_topic = f"redirected-{uuid.uuid4().hex[:8]}"

    def send(own, params=None):
        op_id = str(uuid.uuid4())
        value = json.dumps(dict(uuid=op_id, entrypoint=Chain.path,
                                params={"hops": 1, **(params or {})},
                                metadata={"kser": own})).encode()
        meta = raw.send(run.topic, value=value, key=op_id.encode()).get(30)
        return op_id, (meta.partition, meta.offset)

    hostile = {
        "exit notification to a new topic, running Lone": send({"on_exit_notify": {
            "topic": new_topic, "entrypoint": Lone.path, "payload": {"p": 1}}}),
        "exit notification not an object": send({"on_exit_notify": "notadict"}),
        "exit notification's topic a list": send({"on_exit_notify": {"topic": ["t1"]}}),
        "retention not an object": send({"ttl_strategy": "x"}),
        "a schedule's key": send({"idempotency_key": "schedule:nightly:2026-12-07T02:00:00"}),
        "a task id's bookkeeping of another kind": send({"attempt": 7}),
    }
    good, _ = send({"idempotency_key": "nightly", "ttl_strategy": {"seconds_after_success": 60}})
    wait_for(lambda: status(run, good) == "SUCCESS", "the good operation SUCCESS", 60)
    wait_for(lambda: {where for _, where in hostile.values()} <= dead_letters(run),
             "every hostile record dead-lettered", 60)
    for op_id, _ in hostile.values():  # each runs nothing
        assert status(run, op_id) is None
    with run.store.transaction() as tx:
        good_op = tx.get_operation(good)
        errors = [row.error for row in tx.dead_letters([run.topic])]
    # the producer's key is its own namespace: it can never be a schedule's, the API's or
    # a producer script's
    assert good_op.idempotency_key == "message:nightly"
    assert good_op.ttl_strategy == {"seconds_after_success": 60}
    assert new_topic not in broker_topics(kafka)
    assert side_effects(effects)[good] == 0 and len(side_effects(effects)) == 1  # its Hop only
    log = run.workers[0].output()
    assert "metadata.kser.on_exit_notify is kser's own" in log + "".join(errors)
    assert "Traceback" not in log, log[-3000:]
    run.close()


def test_purge_keeps_a_stored_retention_it_cannot_apply_and_purges_the_others(pg_url):
    from kser.store import Store

    store = Store(pg_url)
    old = time.time() - 3600
    rows = [dict(id=op_id, entrypoint=Chain.path, status="SUCCESS", params={}, metadata={},
                 topic="t", created_at=old, updated_at=old, finished_at=old, ttl_strategy=ttl)
            for op_id, ttl in [("bad", "x"), ("worse", {"seconds_after_success": "soon"}),
                               ("expired", {"seconds_after_success": 60})]]
    with store.transaction() as tx:  # as an older kser stored them from messages
        tx.connection.execute(insert(schema.operations), rows)
    done = subprocess.run([sys.executable, "-m", "kser.cli", "purge", "--store-url", pg_url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "purged 1 operation(s)" in done.stdout
    assert "Traceback" not in done.stderr
    with store.transaction() as tx:
        assert {row.id for row in tx.list_operations(limit=10)} == {"bad", "worse"}
    store.close()


def test_a_squatted_schedule_key_runs_the_schedule_not_the_squatter(kafka, pg_url, processes,
                                                                    tmp_path):
    run = Run(kafka, pg_url, processes, workers=1)
    schedules = tmp_path / "schedules.toml"
    schedules.write_text('[[schedule]]\nname = "every-2s"\ncron = "*/2 * * * * *"\n'
                         'entrypoint = "tests.acceptance.workload.Chain"\n'
                         'params = {hops = 1}\n')
    raw = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    now = int(time.time())
    squatted = [fire_key(now + 6 + 2 * n - (now % 2)) for n in range(5)]  # the next fires
    for key in squatted:
        raw.send(run.topic, json.dumps(dict(
            uuid=str(uuid.uuid4()), entrypoint=Chain.path, params={"hops": 1, "squatter": 1},
            metadata={"kser": {"idempotency_key": key}})).encode()).get(30)
    raw.flush()
    env = {**run.env, "KSER_TOPIC": run.topic, "KSER_LOG_LEVEL": "INFO",
           "KSER_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    scheduler = processes.start([sys.executable, "-m", "kser.cli", "scheduler",
                                 "tests.acceptance.workload:registry", "--schedules",
                                 str(schedules)], env=env, name="scheduler")
    ops = schema.operations.c

    def launched():
        with run.store.transaction() as tx:
            return tx.connection.execute(select(ops.idempotency_key, ops.params, ops.status)
                                         .where(ops.idempotency_key.like("%every-2s%"))).all()

    wait_for(lambda: [key for key, _, _ in launched() if key > squatted[-1]],
             "the scheduler past every squatted fire", 60)
    assert set(squatted) <= {key for key, _, _ in launched()}
    for key, params, _ in launched():  # each fire is the schedule's own operation
        assert key.startswith("schedule:") and "squatter" not in params, (key, params)
    with run.store.transaction() as tx:
        squatters = tx.connection.execute(select(func.count()).select_from(schema.operations)
                                          .where(ops.params["squatter"].isnot(None))).scalar()
    assert squatters == 0
    assert "launched already" not in scheduler.output()
    assert "Traceback" not in scheduler.output() + run.workers[0].output()
    run.close()


def fire_key(fire):
    """The key a scheduler gives its launch of ``fire`` (seconds since the epoch)."""
    return f"schedule:every-2s:{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(fire))}+00:00"


@pytest.mark.parametrize("transport", ["kafka", "confluent"])
def test_a_message_the_broker_refuses_for_good_is_dead_lettered_once_not_retried(
        kafka, pg_url, processes, tmp_path, transport):
    notify = f"announced-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    admin.create_topics([NewTopic(notify, num_partitions=1, replication_factor=1,
                                  topic_configs={"max.message.bytes": "1000"})])
    admin.close()
    run, _ = hostile_run(kafka, pg_url, processes, tmp_path, transport, workers=2,
                         env={"KSER_TEST_NOTIFY_TOPIC": notify, "KSER_LOG_LEVEL": "WARNING"})
    refused = run.submit(200, operation=Announced)
    wait_for(lambda: all(status(run, op) == "SUCCESS" for op in refused[-5:]),
             "the announced operations ended", 120)
    ordinary = run.submit(30, hops=2)
    # what follows a refused row is not held up by it
    wait_for(lambda: all(status(run, op) == "SUCCESS" for op in ordinary),
             "the ordinary operations SUCCESS", 120)
    box = schema.outbox.c
    wait_for(lambda: run.counts() == {"SUCCESS": 230}, "every operation SUCCESS", 60)
    wait_for(lambda: _refused_rows(run, notify) == 200, "every announcement marked refused", 60)
    # every other row is marked sent (by the next transaction, or a sweep), none waits
    wait_for(lambda: _unsent(run) == (0, 0), "no outbox row left to send", 60)
    with run.store.transaction() as tx:
        letters = [row for row in tx.dead_letters([notify])]
        tries = tx.connection.execute(select(func.max(box.tries))
                                      .where(box.topic == notify)).scalar()
    assert len(letters) == 200 and {row.partition for row in letters} == {-1}
    assert all("refused it for good" in row.error for row in letters)
    assert tries is None  # a refusal for good is not tried again
    logs = "".join(worker.output() for worker in run.workers)
    assert logs.count("refused for good by the broker") == 200, logs[-3000:]
    assert "Traceback" not in logs
    run.close()


def _refused_rows(run, topic):
    box = schema.outbox.c
    with run.store.transaction() as tx:
        return tx.connection.execute(select(func.count()).select_from(schema.outbox).where(
            box.topic == topic, box.failed_at.is_not(None))).scalar()


def _unsent(run):
    with run.store.transaction() as tx:
        return tx.count_unsent(time.time() + 3600)
