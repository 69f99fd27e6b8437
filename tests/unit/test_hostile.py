"""Hostile records and faults nobody planned, on the in-process transport (issue 9).

Each case: the worker does not raise, the record is processed or dead-lettered
(topic or store), no task body runs twice, and a good record after it runs.
The same cases run on the real broker in tests/acceptance/test_hostile.py.
"""

import json
import os
import threading
import time

import pytest
from cdumay_error.types import ConfigurationError
from cdumay_result import Result

from kser.config import Settings
from kser.errors import WorkerFatalError, is_transient, safe_text
from kser.memory.broker import get_broker
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from kser.store import Store
from kser.worker import WorkerStartError

registry = OperationRegistry()
RUNS: list[str] = []
RELEASE = threading.Event()
HUNG = threading.Event()


@registry.subscribe
class Note(Task):
    """Records that it ran (the side-effect log), then returns what params ask for."""

    def run(self):
        RUNS.append(self.uuid)
        if self.params.get("block"):
            RELEASE.wait(30)
        if self.params.get("hang"):
            HUNG.wait()  # does not return until the test is over, like a stuck network call
        if self.params.get("sleep"):
            time.sleep(self.params["sleep"])
        for _ in range(self.params.get("log_lines", 0)):
            self.log("x" * self.params.get("log_width", 10))
        retval = ({"blob": "x" * self.params["blob_size"]} if "blob_size" in self.params
                  else {"ok": True})
        return Result(uuid=self.uuid, retcode=self.params.get("retcode", 0), retval=retval)


@registry.subscribe
class Strange(Task):
    """Returns a retval JSON cannot hold."""

    def run(self):
        RUNS.append(self.uuid)
        return Result(uuid=self.uuid, retval={"when": object()})


@registry.subscribe
class Undecodable(Task):
    """Returns a file name as os.fsdecode gives it for bytes that are not UTF-8."""

    def run(self):
        RUNS.append(self.uuid)
        return Result(uuid=self.uuid, retval={"path": b"/tmp/\xff".decode("utf-8",
                                                                          "surrogateescape")})


@registry.subscribe
class Steps(Operation):
    def build_tasks(self, steps=3, **params):
        return [Note(params={"index": i, **params.get("task_params", {})})
                for i in range(int(steps))]


@registry.subscribe
class StrangeOp(Operation):
    def build_tasks(self, kind="json", **params):
        return [Undecodable() if kind == "surrogate" else Strange(), Note()]


@pytest.fixture
def env(memory_broker_name, tmp_path, monkeypatch):
    RUNS.clear()
    RELEASE.clear()
    HUNG.clear()
    monkeypatch.setattr("kser.deadletter.KAFKA_RETRY_DELAY", 0)
    store = Store(f"sqlite:///{tmp_path}/store.db")
    monkeypatch.setattr(registry.context, "_store", store)
    monkeypatch.setattr(registry.context, "own", Producer({"broker": memory_broker_name}))
    monkeypatch.setattr(registry.controller, "producer", None)
    monkeypatch.setattr(registry.settings, "topic", "ops")
    monkeypatch.setattr(registry.settings, "redo_backoff", 0.01)
    yield Env(memory_broker_name, store)
    RELEASE.set()
    HUNG.set()  # let the abandoned task threads end, as the process would end them
    store.close()


class Env:
    def __init__(self, broker_name, store):
        self.broker, self.store = get_broker(broker_name), store

    def consumer(self, concurrency=1, **settings):
        c = Consumer({"broker": self.broker.name, "group_id": "g"}, ["ops"],
                     settings=Settings(concurrency=concurrency, redo_backoff=0.01, **settings))
        c.REGISTRY = registry.controller
        return c

    def drain(self, **kwargs):
        c = self.consumer(**kwargs)
        c.run()
        return c

    def produce(self, value, key=None, headers=None):
        if isinstance(value, dict):
            value = json.dumps(value).encode()
        self.broker.produce("ops", value, key, headers)

    def good(self, n=0):
        self.produce({"uuid": f"good-{n}", "entrypoint": Note.path})

    def dead(self):
        return self.broker.records("ops.dlq")

    def error(self, letter):
        return dict(letter.headers)["kser-error"].decode()

    def tasks(self, op_id):
        with self.store.transaction() as tx:
            return tx.get_operation(op_id), tx.get_tasks(op_id)

    def attempts(self, task_id):
        with self.store.transaction() as tx:
            return tx.get_attempts(task_id)


def start_until(consumer, condition):
    """Run ``consumer`` in a thread (not leaving when idle) until ``condition()`` holds;
    return the thread."""
    consumer._exit_when_idle = False
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread


def note(uuid, **fields):
    return {"uuid": uuid, "entrypoint": Note.path, **fields}


# -- records the decoder refuses, each followed by a good one ----------------------------

@pytest.mark.parametrize("raw, error", [
    (b'{"uuid": "u", "entrypoint": "\\ud800"}', "lone surrogate"),
    (b'{"uuid": "u", "entrypoint": "x", "params": {"a": "\\udfff\\ud800"}}', "lone surrogate"),
    (b'{"uuid": "u", "entrypoint": "x", "params": {"n": 1e400}}', "not finite"),
    (b'{"uuid": "u", "entrypoint": "x", "params": {"n": NaN}}', "not finite"),
    (b'{"uuid": "u", "entrypoint": "x", "params": {"n": -Infinity}}', "not finite"),
    (json.dumps({"uuid": "u" * 65, "entrypoint": "x"}).encode(), "uuid must have 1 to 64"),
    (json.dumps({"uuid": "", "entrypoint": "x"}).encode(), "uuid must have 1 to 64"),
    (json.dumps({"uuid": "a\x00b", "entrypoint": "x"}).encode(), "control"),
    (json.dumps({"uuid": "u", "entrypoint": "x" * 256}).encode(), "entrypoint must have"),
    (json.dumps({"uuid": "u", "entrypoint": "x", "result": {"retcode": 10 ** 30}}).encode(),
     "32-bit"),
    (json.dumps({"uuid": "u", "entrypoint": "x", "result": {"retcode": 3_000_000_000}})
     .encode(), "32-bit"),
    (json.dumps({"uuid": "u", "entrypoint": "x", "metadata": {"kser": "op"}}).encode(),
     "kser's own"),
    (json.dumps({"uuid": "u", "entrypoint": "x",
                 "metadata": {"kser": {"operation_id": "o", "task_id": {"x": 1}}}}).encode(),
     "task_id must be a string"),
    (json.dumps({"uuid": "u", "entrypoint": "x",
                 "metadata": {"kser": {"operation_id": "o" * 65, "task_id": "t"}}}).encode(),
     "operation_id must have"),
    (json.dumps({"uuid": "u", "entrypoint": "x",
                 "metadata": {"kser": {"task_id": "t"}}}).encode(), "without its operation_id"),
    (json.dumps({"uuid": "u", "entrypoint": "x",
                 "metadata": {"kser": {"operation_id": "o", "task_id": "t", "attempt": -1}}})
     .encode(), "attempt"),
    (json.dumps({"uuid": "u", "entrypoint": "x",
                 "metadata": {"kser": {"operation_id": "o", "task_id": "t", "mode": "all"}}})
     .encode(), "mode"),
])
def test_a_record_the_decoder_refuses_is_dead_lettered_and_the_next_runs(env, raw, error):
    env.produce(raw)
    env.good()
    consumer = env.drain()
    [letter] = env.dead()
    assert letter.value == raw
    assert error in env.error(letter)
    env.error(letter).encode("utf-8")  # the header is valid UTF-8, whatever the record held
    assert RUNS == ["good-0"] and consumer.processed == 2
    assert env.broker.lag("g", ["ops"]) == 0


def test_hostile_headers_keys_and_a_null_value_are_dead_lettered_as_they_were(env):
    headers = [("trace", None), ("bin", b"\xff\xfe"), ("\udcff", b"v")]
    env.produce(None, key=b"\xff" * 10, headers=headers)  # a tombstone
    env.good()
    env.drain()
    [letter] = env.dead()
    assert letter.value is None and letter.key == b"\xff" * 10  # unchanged, not b""
    names = dict(letter.headers)
    assert names["trace"] == b"" and names["bin"] == b"\xff\xfe" and names["\\udcff"] == b"v"
    assert "Empty record" in env.error(letter)
    assert RUNS == ["good-0"]


def test_a_record_just_under_the_size_limit_still_fits_as_a_dead_letter(env, monkeypatch):
    limit = 20_000
    raw = b"x" * (limit - 100)
    env.produce(raw, key=b"k", headers=[("h", b"v" * 50)])
    env.good()
    consumer = env.consumer(max_message_bytes=limit)
    consumer.run()
    [letter] = env.dead()
    size = len(letter.value) + len(letter.key) + sum(
        len(n) + len(v) for n, v in letter.headers)
    assert size <= limit - 512
    headers = dict(letter.headers)
    assert headers["kser-value-trimmed"] == str(len(raw)).encode()
    with env.store.transaction() as tx:  # the whole record is kept in the store
        [stored] = tx.dead_letters(["ops"])
    assert stored["value"] == raw and headers["kser-dead-letter-id"] == str(stored["id"]).encode()
    assert RUNS == ["good-0"]


# -- messages checked against the stored task ---------------------------------------------

def launch(env, **params):
    op = Steps(params=params).send()
    return op, [t["id"] for t in env.tasks(op.uuid)[1]]


def task_message(op_id, task_id, entrypoint=Note.path, **kser):
    return Message(task_id, entrypoint, params={"index": 0},
                   metadata={"kser": {"operation_id": op_id, "task_id": task_id, **kser}}
                   ).dumps().encode()


def test_a_message_naming_another_entrypoint_for_a_stored_task_runs_nothing(env):
    op, ids = launch(env)
    env.produce(task_message(op.uuid, ids[0], entrypoint=Strange.path))
    env.drain()
    assert any("forged or corrupt" in env.error(d) for d in env.dead())
    row, tasks = env.tasks(op.uuid)
    assert row["status"] == "SUCCESS"  # the real messages ran the real steps, once each
    assert RUNS == ids and all(t["attempt"] == 1 for t in tasks)


def test_a_task_message_before_its_upstream_tasks_are_done_runs_nothing(env):
    op, ids = launch(env)
    early = task_message(op.uuid, ids[2])
    for log in env.broker._topics["ops"]:
        log.clear()  # task 1's own message never came
    env.produce(early)
    env.drain()
    [letter] = env.dead()
    assert "kser has not sent this task yet" in env.error(letter)
    assert RUNS == []
    assert [t["status"] for t in env.tasks(op.uuid)[1]] == ["PENDING"] * 3


def test_run_from_then_a_replay_of_every_message_runs_each_step_once_in_order(env):
    op, ids = launch(env)
    env.drain()
    assert RUNS == ids
    registry.sequencer.cancel(op.uuid)  # already SUCCESS: 409, nothing changes
    assert registry.sequencer.run_from(op.uuid, ids[1]).retcode == 0
    old = [r.value for r in env.broker.records("ops")][:3]
    for value in old:  # a replay of the whole topic, early messages first
        env.produce(value)
    env.drain()
    assert env.tasks(op.uuid)[0]["status"] == "SUCCESS"
    assert RUNS == ids + ids[1:]  # steps 2 and 3 ran again once each, in order
    assert [len(env.attempts(i)) for i in ids] == [1, 2, 2]


def test_a_canceled_operations_running_task_is_not_taken_over(env):
    op, ids = launch(env)
    with env.store.transaction() as tx:  # a worker claimed task 1 and died
        assert tx.claim_task(ids[0], 0, "dead:1", time.time() - 1, time.time() - 40)
    assert registry.sequencer.cancel(op.uuid).retcode == 0
    registry.sequencer.sweeper.last = time.monotonic()  # (no sweep while it drains: the
    env.drain()  # message is judged first) task 1's message is redelivered
    assert RUNS == []
    assert "its operation is CANCELED" in env.error(env.dead()[0])
    registry.sequencer.sweep(force=True)  # the orphan is closed, not re-sent
    tasks = env.tasks(op.uuid)[1]
    assert [t["status"] for t in tasks] == ["CANCELED"] * 3
    assert env.attempts(ids[0])[0]["error"].startswith("lease expired: its worker stopped "
                                                        "after the operation was CANCELED")


def test_the_sweep_re_sends_an_expired_task_once_per_lease(env):
    _op, ids = launch(env)
    with env.store.transaction() as tx:
        assert tx.claim_task(ids[0], 0, "dead:1", time.time() - 1, time.time() - 40)
    before = len(env.broker.records("ops"))
    for _ in range(5):
        registry.sequencer.sweep(force=True)
    assert len(env.broker.records("ops")) == before + 1


def test_duplicates_under_concurrency_never_run_a_task_twice(env):
    """Every record twice, four task threads: the copy of a running task finds it
    running in this very worker and leaves it alone."""
    ops = [launch(env, task_params={"sleep": 0.05})[0] for _ in range(10)]
    original = env.broker.produce

    def duplicating(topic, value, key=None, headers=None):
        record = original(topic, value, key, headers)
        if topic == "ops":
            original(topic, value, key, headers)
        return record

    env.broker.produce = duplicating
    for value in [r.value for r in env.broker.records("ops")]:
        original("ops", value)
    env.drain(concurrency=4)
    assert all(env.tasks(op.uuid)[0]["status"] == "SUCCESS" for op in ops)
    assert len(RUNS) == len(set(RUNS)) == 30


# -- results the store cannot hold --------------------------------------------------------

@pytest.mark.parametrize("retcode", [10 ** 30, 3_000_000_000])
def test_a_task_returning_a_retcode_the_store_cannot_hold_fails_once(env, retcode):
    op, ids = launch(env, task_params={"retcode": retcode})
    env.drain()
    registry.sequencer.sweep(force=True)
    env.drain()
    row, tasks = env.tasks(op.uuid)
    assert row["status"] == "FAILED" and tasks[0]["status"] == "FAILED"
    assert "does not fit 32 bits" in row["result"]["stderr"]
    assert RUNS == ids[:1]  # ran once, never re-sent


def test_a_task_returning_what_json_cannot_hold_fails_once(env):
    op = StrangeOp().send()
    env.drain()
    row, _tasks = env.tasks(op.uuid)
    assert row["status"] == "FAILED" and "cannot store or forward" in row["result"]["stderr"]
    assert len(RUNS) == 1


def test_a_result_holding_a_lone_surrogate_fails_the_task_instead_of_its_follow_up(env):
    """kser's decoder refuses lone surrogates: its encoder does too, so the task fails
    with why, rather than its next task's message being dead-lettered on arrival."""
    op = StrangeOp(params={"kind": "surrogate"}).send()
    env.drain()
    row, _tasks = env.tasks(op.uuid)
    assert row["status"] == "FAILED" and "cannot store or forward" in row["result"]["stderr"]
    assert len(RUNS) == 1 and env.dead() == []


def test_a_result_too_large_to_forward_fails_the_task_once(env):
    op, ids = launch(env, task_params={"blob_size": 2_000_000})
    env.drain()
    row, tasks = env.tasks(op.uuid)
    assert row["status"] == "FAILED" and tasks[0]["status"] == "FAILED"
    assert "over the" in row["result"]["stderr"] and RUNS == ids[:1]


def test_an_operation_too_large_to_send_its_tasks_is_dead_lettered_not_lost(env):
    env.produce({"uuid": "big-op", "entrypoint": Steps.path,
                 "params": {"task_params": {"blob": "x" * 600_000}}})
    env.good()
    consumer = env.consumer(max_message_bytes=500_000)  # the worker's sends are refused
    consumer.run()
    [letter] = env.dead()
    assert "cannot be handled" in env.error(letter) and "over the" in env.error(letter)
    assert env.tasks("big-op")[0] is None and RUNS == ["good-0"]


def test_task_logs_are_capped_per_attempt(env):
    _op, ids = launch(env, steps=1, task_params={"log_lines": 1500, "log_width": 20_000})
    env.drain()
    with env.store.transaction() as tx:
        logs = tx.get_logs(ids[0])
    assert len(logs) == 1000
    assert max(len(line["message"]) for line in logs) <= 10_000 + 200
    assert "501 more log line(s) not kept" in logs[-1]["message"]


# -- the store -------------------------------------------------------------------------------

def test_a_removed_sqlite_store_stops_the_worker(env, tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path}/gone.db")
    monkeypatch.setattr(registry.context, "_store", store)
    launch(env, steps=1, task_params={"block": True})
    consumer = env.consumer()
    thread = start_until(consumer, lambda: RUNS)
    os.remove(f"{tmp_path}/gone.db")  # while the task runs
    RELEASE.set()
    thread.join(10)
    assert not thread.is_alive()
    assert consumer.exit_code == 1 and isinstance(consumer.fatal, WorkerFatalError)
    assert "was removed while in use" in str(consumer.fatal)
    assert env.broker.lag("g", ["ops"]) == 1  # not committed: another worker redoes it
    with pytest.raises(WorkerStartError, match="was removed while in use"):
        env.drain()  # and no worker starts on it


def test_a_store_error_renews_every_pooled_connection(tmp_path):
    from sqlalchemy.exc import OperationalError

    store = Store(f"sqlite:///{tmp_path}/s.db")
    with store.transaction():
        pass
    pool = store.engine.pool
    with pytest.raises(OperationalError), store.transaction() as tx:
        tx.connection.exec_driver_sql("SELECT * FROM nowhere")
    assert store.engine.pool is not pool  # a new pool: new connections
    with store.transaction() as tx:
        assert tx.get_operation("x") is None


def test_a_worker_with_an_unusable_store_refuses_to_start(env, monkeypatch):
    monkeypatch.setattr(registry.context, "_store", None)
    monkeypatch.setattr(registry.sequencer.settings, "store_url", "foo://bar")
    env.good()
    with pytest.raises(WorkerStartError, match="the store URL foo://bar names foo"):
        env.drain()
    assert env.broker.lag("g", ["ops"]) == 1 and RUNS == []


@pytest.mark.parametrize("exc, transient", [
    ("sqlalchemy.exc.OperationalError('x', {}, Exception('gone'))", True),
    ("sqlalchemy.exc.DataError('x', {}, Exception('value too long'))", False),
    ("sqlalchemy.exc.IntegrityError('x', {}, Exception('dup'))", False),
    ("sqlite3.OperationalError('attempt to write a readonly database')", True),
    ("OverflowError('Python int too large to convert to SQLite INTEGER')", False),
    ("kafka.errors.KafkaTimeoutError()", True),
    ("kafka.errors.KafkaConnectionError()", True),
    ("kafka.errors.MessageSizeTooLargeError()", False),
    # a cluster losing brokers (whatever retriable flag librdkafka's report carries)
    ("kafka.errors.NotEnoughReplicasError()", True),
    ("kafka.errors.NotEnoughReplicasAfterAppendError()", True),
    ("KafkaException(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))", True),
    ("KafkaException(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND))", True),
    ("KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))", True),
    ("KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))", True),
    ("KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))", False),
    ("ConnectionRefusedError()", True),
    ("ValueError('x')", False),
    ("WorkerFatalError('x')", False),
])
def test_transient_and_permanent_errors_are_told_apart(exc, transient):
    import sqlite3  # noqa: F401 - named by the parameters

    import kafka.errors  # noqa: F401
    import sqlalchemy.exc  # noqa: F401
    from confluent_kafka import KafkaError, KafkaException  # noqa: F401

    assert is_transient(eval(exc)) is transient


def test_safe_text_escapes_what_utf8_and_databases_refuse():
    assert safe_text("a\ud800b\x00") == "a\\ud800b\\x00"
    assert safe_text(b"\xffok") == "\\xffok"
    assert safe_text("x" * 10, limit=4) == "xxxx… (6 more characters)"
    safe_text("\udcff" * 3).encode("utf-8")


# -- stopping ---------------------------------------------------------------------------

def test_a_task_that_never_returns_does_not_stop_a_worker_from_stopping(env):
    env.produce(note("hung", params={"hang": True}))
    consumer = env.consumer(shutdown_timeout=0.5)
    thread = start_until(consumer, lambda: "hung" in RUNS)
    consumer.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert consumer.exit_code == 1 and consumer.abandoned == 1
    assert env.broker.lag("g", ["ops"]) == 1  # not committed: redone elsewhere


def test_a_second_stop_gives_up_on_the_tasks_at_once(env):
    env.produce(note("hung", params={"hang": True}))
    consumer = env.consumer(shutdown_timeout=3600)
    thread = start_until(consumer, lambda: "hung" in RUNS)
    consumer.stop()
    time.sleep(0.3)
    assert thread.is_alive()
    consumer.stop()
    thread.join(5)
    assert not thread.is_alive() and consumer.exit_code == 1


def test_settings_that_are_not_numbers_are_one_clear_error(monkeypatch):
    monkeypatch.setenv("KSER_CONCURRENCY", "abc")
    with pytest.raises(ConfigurationError, match="KSER_CONCURRENCY='abc' is not an integer"):
        Settings()


@registry.subscribe
class Exits(Task):
    def run(self):
        RUNS.append(self.uuid)
        raise SystemExit(0)


def test_a_task_calling_sys_exit_fails_that_task_not_the_worker(env):
    env.produce({"uuid": "exits", "entrypoint": Exits.path})
    env.good()
    consumer = env.drain()
    assert RUNS == ["exits", "good-0"] and consumer.processed == 2
    assert env.broker.lag("g", ["ops"]) == 0


def test_a_failed_commit_never_lets_a_later_offset_pass_a_record_still_running():
    from kser.worker import OffsetTracker, Record

    tracker = OffsetTracker()
    running, later = Record("t", 0, 10, b""), Record("t", 0, 12, b"")
    tracker.started(running)
    tracker.started(later)
    tracker.done(later)
    tracker.forget(tracker.committable())  # the commit of offset 10 failed
    assert tracker.committable() == {("t", 0): 10}  # tried again, nothing past 10 while it runs
    tracker.done(running)
    assert tracker.committable() == {("t", 0): 13}


def test_a_commit_that_failed_in_a_rebalance_is_made_once_the_partition_is_back():
    """kafka-python keeps the position of a partition it keeps through a rebalance: the
    records done before it are never delivered again, so their commit must be retried
    (forgetting them left the group's offset behind for good: found by test_failover)."""
    from kser.worker import OffsetTracker, Record

    tracker = OffsetTracker()
    tracker.assigned([("t", 0), ("t", 1)])
    for offset in range(3):
        tracker.started(Record("t", 0, offset, b""))
        tracker.done(Record("t", 0, offset, b""))
    tracker.forget(tracker.committable())  # RebalanceInProgressError
    tracker.revoked([("t", 0), ("t", 1)])  # the eager protocol takes everything back...
    assert tracker.committable() == {}  # (nothing committed for partitions not ours)
    tracker.assigned([("t", 0)])  # ...and gives partition 0 back
    assert tracker.committable() == {("t", 0): 3}
    tracker.committed({("t", 0): 3})
    assert tracker.committable() == {}


def test_a_partition_given_to_another_worker_is_not_committed_from_here():
    from kser.worker import OffsetTracker, Record

    tracker = OffsetTracker()
    tracker.assigned([("t", 0)])
    tracker.started(Record("t", 0, 5, b""))
    tracker.revoked([("t", 0)])
    tracker.done(Record("t", 0, 5, b""))  # a task that finishes after its partition left
    assert tracker.committable() == {}  # its commit would be refused: not tried


def test_a_follow_up_the_broker_refuses_for_good_is_dead_lettered_once_and_fails_its_task(env):
    from kafka.errors import MessageSizeTooLargeError

    sends = []

    class RefusesFollowUps(Producer):
        def _produce(self, topic, value, key, headers=None, on_delivery=None):
            if topic == "ops":
                sends.append(key)
                raise MessageSizeTooLargeError("too large for the broker")
            super()._produce(topic, value, key, headers, on_delivery)

    op, ids = launch(env, steps=2)
    consumer = Consumer({"broker": env.broker.name, "group_id": "g"}, ["ops"],
                        producer=RefusesFollowUps({"broker": env.broker.name}),
                        settings=Settings(redo_backoff=0.01))
    consumer.REGISTRY = registry.controller
    consumer.run()  # returns: the record is not redone forever
    registry.sequencer.sweep(force=True)  # a sweep never sends it again
    assert RUNS == ids[:1] and env.broker.lag("g", ["ops"]) == 0
    assert env.dead() == [] and sends == [ids[1].encode()]  # the record ran; its follow-up
    operation, tasks = env.tasks(op.uuid)  # is the dead letter, and the operation says why
    assert [t["status"] for t in tasks] == ["SUCCESS", "FAILED"]
    assert "refused it for good" in tasks[1]["result"]["stderr"]
    assert operation["status"] == "FAILED"
    with env.store.transaction() as tx:
        assert tx.unsent(op.uuid) == []
        [letter] = tx.dead_letters(["ops"])
    assert (letter.partition, letter.key) == (-1, ids[1].encode())
    assert "refused it for good" in letter.error and op.uuid in letter.error


def test_a_partition_back_from_another_worker_never_moves_the_group_offset_back():
    from kser.worker import OffsetTracker, Record

    tracker = OffsetTracker()
    tracker.assigned([("t", 0)])
    for offset in range(100):
        tracker.started(Record("t", 0, offset, b""))
        tracker.done(Record("t", 0, offset, b""))
    tracker.committed(tracker.committable())  # 100
    tracker.revoked([("t", 0)])  # another worker reads on, and commits 500
    tracker.assigned([("t", 0)])
    tracker.floor({("t", 0): 500})  # read from the group once the partition is back
    assert tracker.committable() == {}  # 100 would move the group back to 100
    tracker.started(Record("t", 0, 500, b""))
    tracker.done(Record("t", 0, 500, b""))
    assert tracker.committable() == {("t", 0): 501}
