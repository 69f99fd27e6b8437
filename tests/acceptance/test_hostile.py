"""What a hostile probe broke (issue 9), on a real broker, PostgreSQL and `kser worker`s.

Every hostile record is followed by good work; at the end the worker is alive,
every record was processed or dead-lettered (to the dead-letter topic or the
store), and no task body ran twice (the side-effect log, tests/acceptance/workload.py).
"""

import json
import os
import signal
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer, KafkaProducer

from kser.schemas import Message
from tests.acceptance.harness import Run, every_record_twice, wait_for
from tests.acceptance.workload import Chain, Hop, Lone

pytestmark = pytest.mark.acceptance


class BadName(str):
    """A header name kafka-python writes as raw bytes that are not UTF-8."""

    def encode(self, *args, **kwargs):
        return b"\xff\xfebad"


def side_effects(path):
    return Counter(path.read_text().split()) if path.exists() else Counter()


#: for the tests that count every body once and kill no worker: a lease no stalled (but
#: living) worker of a loaded machine misses, so no attempt is ever taken over
NO_TAKEOVER = {"KSER_TASK_LEASE": "30"}


def hostile_run(kafka, pg_url, processes, tmp_path, transport, **kwargs):
    effects = tmp_path / "side-effects"
    env = {"KSER_TRANSPORT": transport, "KSER_TEST_SIDE_EFFECTS": str(effects),
           "KSER_LOG_LEVEL": "INFO", **kwargs.pop("env", {})}
    return Run(kafka, pg_url, processes, env=env, partitions=3, **kwargs), effects


def dead_letters(run):
    """(partition, offset) of every record of ``run.topic`` dead-lettered, topic or store."""
    where = set()
    consumer = KafkaConsumer(f"{run.topic}.dlq", bootstrap_servers=run.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        records = list(consumer)
    finally:
        consumer.close()
    for record in records:
        headers = dict(record.headers)
        where.add((int(headers["kser-source-partition"]), int(headers["kser-source-offset"])))
    with run.store.transaction() as tx:
        where |= {(row["partition"], row["offset"]) for row in tx.dead_letters([run.topic])}
    return where


@pytest.mark.parametrize("transport", ["kafka", "confluent"])
def test_hostile_records_neither_crash_block_nor_run_anything_twice(kafka, pg_url, processes,
                                                                    tmp_path, transport):
    # messages over 500 kB are refused when sent: the operation below is read, but its
    # tasks' messages (holding its params) cannot be sent
    # two task threads: the hostile records are handled while the target's first hop waits
    run, effects = hostile_run(kafka, pg_url, processes, tmp_path, transport, workers=1,
                               env={"KSER_MAX_MESSAGE_BYTES": "500000",
                                    "KSER_CONCURRENCY": "2"})
    worker = run.workers[0]
    worker.wait_for("Starting: consumer")
    raw = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, max_request_size=2_000_000)
    from confluent_kafka import Producer as ConfluentProducer

    confluent = ConfluentProducer({"bootstrap.servers": kafka.bootstrap_servers})
    delivered = {}

    def produce_confluent(name, value, key=None, headers=None):
        def report(error, message):
            assert error is None, error
            delivered[name] = (message.partition(), message.offset())
        confluent.produce(run.topic, value=value, key=key, headers=headers, on_delivery=report)
        confluent.flush(30)
        return delivered[name]

    def produce(value, key=b"k", headers=None, partition=None):
        metadata = raw.send(run.topic, value=value, key=key, headers=headers,
                            partition=partition).get(30)
        return metadata.partition, metadata.offset

    def dumps(**message):
        return json.dumps(message).encode()

    # a stored, running operation whose first hop waits for a file: the target of forged
    # messages, which find its upstream hops not done whatever the timing
    hold = tmp_path / "hold"
    [target] = run.submit(1, 3, lambda i: {"hold_until": str(hold)})
    wait_for(lambda: _task_ids(run, target), "the target operation stored", timeout=60)
    t2 = _task_ids(run, target)[2]
    meta = {"kser": {"operation_id": target, "task_id": t2}}

    hostile = {
        "lone surrogate entrypoint": produce(b'{"uuid": "s1", "entrypoint": "\\ud800"}'),
        "null-valued header": produce_confluent(
            "null header", b"not json", b"k", [("trace", None)]),
        "tombstone": produce_confluent("tombstone", None, b"k"),
        "tombstone without key": produce_confluent("bare tombstone", None, None),
        "just under the broker's limit": produce(b"x" * 1_048_000, key=None),
        "operation id of 70 characters": produce(dumps(uuid="o" * 70, entrypoint=Chain.path)),
        "1e400 in params": produce(b'{"uuid": "u-inf", "entrypoint": "%s", "params": '
                                   b'{"hops": 1e400}}' % Chain.path.encode()),
        "retcode 10**30 forwarded": produce(dumps(uuid="u-big", entrypoint=Lone.path,
                                                  result={"retcode": 10 ** 30})),
        "operation whose tasks are too large to send": produce(dumps(
            uuid=str(uuid.uuid4()), entrypoint=Chain.path,
            params={"hops": 2, "blob": "x" * 600_000})),
        "another entrypoint for a stored task": produce(Message(
            t2, Lone.path, metadata=meta).dumps().encode()),
        "a task before its upstream ran": produce(Message(
            t2, Hop.path, params={"index": 2}, metadata=meta).dumps().encode()),
    }
    if transport == "kafka":  # kafka-python cannot read this record at all
        hostile["header name not UTF-8"] = produce(
            dumps(uuid="u-bad-header", entrypoint=Lone.path), headers=[(BadName("x"), b"v")])
    # a task returning a retcode the store cannot hold: its operation fails, once
    [failing] = run.submit(1, 2, lambda i: {"retcode": 3_000_000_000})
    good_lone = str(uuid.uuid4())
    produce(dumps(uuid=good_lone, entrypoint=Lone.path))
    good_ops = run.submit(5, 3)

    wait_for(lambda: set(hostile.values()) <= dead_letters(run),
             f"every hostile record dead-lettered ({hostile})", timeout=120)
    hold.touch()
    wait_for(lambda: all(_status(run, op) == "SUCCESS" for op in [target, *good_ops]),
             "the good operations done", timeout=180)
    wait_for(lambda: _status(run, failing) == "FAILED", "the failing operation FAILED", 60)
    assert worker.popen.poll() is None, worker.output()[-3000:]
    assert "Traceback" not in worker.output(), worker.output()[-5000:]
    ran = side_effects(effects)
    assert ran[good_lone] == 1
    assert all(count == 1 for count in ran.values()), ran.most_common(3)
    with run.store.transaction() as tx:
        row = tx.get_operation(failing)
        assert "does not fit 32 bits" in row["result"]["stderr"]
        tasks = tx.get_tasks(target)
        assert [t["attempt"] for t in tasks] == [1, 1, 1]  # the forged messages ran nothing
        big = [r for r in tx.dead_letters([run.topic]) if r["value"] and len(r["value"]) > 10 ** 6]
        assert {len(r["value"]) for r in big} >= {1_048_000}  # kept whole in the store
    run.close()


def _task_ids(run, op_id):
    with run.store.transaction() as tx:
        return [t["id"] for t in tx.get_tasks(op_id)]


def _status(run, op_id):
    with run.store.transaction() as tx:
        op = tx.get_operation(op_id)
    return op and op["status"]


def test_a_worker_with_an_unusable_store_or_dead_letter_topic_refuses_to_start(
        kafka, pg_url, processes, tmp_path):
    run, _ = hostile_run(kafka, pg_url, processes, tmp_path, "kafka", workers=0)
    bad_store = processes.start(run.worker_args(), env={**run.env, "KSER_STORE_URL": "foo://bar"})
    bad_store.popen.wait(60)
    assert bad_store.popen.returncode == 1
    assert ("kser: worker not started: the store URL foo://bar names foo, which kser does "
            "not store in" in bad_store.output()), bad_store.output()
    bad_dlq = processes.start([*run.worker_args(), "--dlq-topic", "no spaces allowed!"],
                              env=run.env)
    bad_dlq.popen.wait(60)
    assert bad_dlq.popen.returncode == 1
    assert "cannot be checked or created" in bad_dlq.output(), bad_dlq.output()
    assert "Traceback" not in bad_store.output() + bad_dlq.output()
    run.close()


def test_a_worker_creates_its_missing_topics_and_dead_letter_topic(kafka, pg_url, processes,
                                                                   tmp_path):
    from kafka.admin import KafkaAdminClient

    run, _ = hostile_run(kafka, pg_url, processes, tmp_path, "confluent", workers=0,
                         env={"KSER_PARTITIONS": "6"})
    topic = f"new-{uuid.uuid4().hex[:8]}"
    worker = processes.start([*run.worker_args()[:-4], "--topic", topic,
                              "--bootstrap-servers", kafka.bootstrap_servers], env=run.env)
    worker.wait_for("Starting: consumer")
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        described = {t["name"]: len(t["partitions"])
                     for t in admin.describe_topics([topic, f"{topic}.dlq"])}
    finally:
        admin.close()
    assert described == {topic: 6, f"{topic}.dlq": 6}
    run.close()


@pytest.mark.parametrize("transport", ["kafka", "confluent"])
def test_a_task_that_never_returns_does_not_hold_a_stopping_worker(kafka, pg_url, processes,
                                                                   tmp_path, transport):
    run, effects = hostile_run(kafka, pg_url, processes, tmp_path, transport, workers=0)
    first = processes.start([*run.worker_args(), "--shutdown-timeout", "2"], env=run.env)
    first.wait_for("Starting: consumer")
    marker = tmp_path / "let-it-return"
    task_id = str(uuid.uuid4())
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    producer.send(run.topic, json.dumps({"uuid": task_id, "entrypoint": Lone.path,
                                         "params": {"hang_unless": str(marker)}}).encode())
    producer.close()
    wait_for(lambda: side_effects(effects)[task_id] == 1, "the task started", timeout=60)
    first.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    first.popen.wait(30)
    assert first.popen.returncode == 1 and time.monotonic() - started < 20
    assert "still running after 2 s" in first.output()
    marker.touch()  # the next worker's run of it returns
    second = processes.start(run.worker_args(), env=run.env)
    wait_for(lambda: side_effects(effects)[task_id] == 2, "the record redone", timeout=90)
    second.popen.send_signal(signal.SIGTERM)
    second.popen.wait(30)
    assert second.popen.returncode == 0, second.output()[-3000:]
    run.close()


def test_concurrency_4_with_every_record_duplicated_runs_each_step_once(kafka, pg_url,
                                                                        processes, tmp_path):
    run, effects = hostile_run(kafka, pg_url, processes, tmp_path, "kafka", workers=0,
                               env={"KSER_LOG_LEVEL": "WARNING", **NO_TAKEOVER})
    run.workers = [processes.start([*run.worker_args(), "--concurrency", "4"], env=run.env)]
    with every_record_twice(run) as copied:
        run.submit(50, 5, lambda i: {"sleep": 0.05})
        run.wait_until_final()
    assert len(copied) >= 50 * 6  # every operation and task message twice
    run.check(5)
    ran = side_effects(effects)
    assert len(ran) == 250 and set(ran.values()) == {1}, ran.most_common(3)
    run.close()


def test_the_broker_stopped_for_15_s_during_a_rebalance(kafka, pg_url, processes, tmp_path):
    run, effects = hostile_run(kafka, pg_url, processes, tmp_path, "kafka", workers=2,
                               env=NO_TAKEOVER)
    run.submit(100, 5, lambda i: {"sleep": 0.05})
    wait_for(lambda: run.succeeded_tasks() >= 50, "the run under way")
    run.workers.append(run.start_worker("joiner"))  # the group rebalances...
    run.workers[-1].wait_for("Starting: consumer")
    time.sleep(0.3)
    kafka.stop()  # ...and the broker goes away in the middle of it
    time.sleep(15)
    kafka.start()
    run.wait_until_final()
    run.check(5)
    assert all(w.popen.poll() is None for w in run.workers)
    ran = side_effects(effects)
    assert len(ran) == 500 and set(ran.values()) == {1}, ran.most_common(3)
    run.close()


def test_a_removed_sqlite_store_stops_the_worker(kafka, processes, tmp_path):
    db = tmp_path / "store.db"
    run = Run(kafka, f"sqlite:///{db}", processes, workers=1,
              env={"KSER_LOG_LEVEL": "WARNING"})
    run.submit(3, 5, lambda i: {"sleep": 1})
    wait_for(lambda: run.succeeded_tasks() >= 1, "the run under way")
    os.remove(db)
    worker = run.workers[0]
    worker.popen.wait(60)
    assert worker.popen.returncode == 1
    assert "was removed while in use" in worker.output()
    assert "Traceback" not in worker.output()
    run.close()


def test_dead_letters_replay_from_the_topic_and_the_store(kafka, pg_url, processes, tmp_path):
    from click.testing import CliRunner

    from kser.cli import main

    run, _ = hostile_run(kafka, pg_url, processes, tmp_path, "kafka", workers=1)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    producer.send(run.topic, b"x" * 1_048_000).get(30)  # to the topic cut, whole to the store
    producer.send(run.topic, b"not json").get(30)
    producer.close()
    wait_for(lambda: len(dead_letters(run)) == 2, "both dead-lettered", timeout=60)
    # (--wait left at its default: the end is 10 s without a record, time enough for a
    # loaded machine's group join and first fetch)
    args = [run.topic, "--bootstrap-servers", kafka.bootstrap_servers,
            "--store-url", run.store_url]
    listed = CliRunner().invoke(main, ["dlq", "list", *args])
    assert listed.exit_code == 0, listed.output
    assert "2 dead letter(s)" in listed.output
    assert "store #" in listed.output  # the big one, whole, rather than its cut topic copy
    replayed = CliRunner().invoke(main, ["dlq", "replay", *args])
    assert "replayed 2 dead letter(s)" in replayed.output, replayed.output
    consumer = KafkaConsumer(run.topic, bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_partition_fetch_bytes=4 << 20)
    lengths, deadline = [], time.monotonic() + 60
    while len(lengths) < 4 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            lengths += [len(record.value) for record in records]
    time.sleep(2)  # and nothing more: a replay sent twice would show here
    for records in consumer.poll(timeout_ms=1000).values():
        lengths += [len(record.value) for record in records]
    consumer.close()
    values = sorted(lengths)
    assert values == [8, 8, 1_048_000, 1_048_000]  # each sent back once, whole
    run.close()
