"""A message only names, the store decides (issue 26), on the in-process transport: what
kser takes from a record, what it keeps of the broker's refusals, and what its controls
and retries leave behind. The same cases run on the real broker in
tests/acceptance/test_untrusted_wire.py and test_untrusted_runs.py."""

import json
import time

import pytest
from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.controller import UndeliverableError
from kser.memory.producer import Producer
from kser.schemas import (
    MAX_JSON_DEPTH,
    KserKey,
    Message,
    check_depth,
    check_idempotency_key,
    check_ttl_strategy,
    load_json,
)
from kser.sequencing.graph import load_result
from kser.sequencing.operation import Operation, check_exit_notify
from tests.unit.test_hostile import RUNS, Env, Note, Steps, env, launch, registry, task_message

__all__ = ["env"]  # (the fixture, shared with test_hostile)


def refusal(**own):
    with pytest.raises(ValidationError) as refused:
        Message.loads(json.dumps(dict(uuid="u", entrypoint="e", metadata={"kser": own})))
    return refused.value.message


@pytest.mark.parametrize("own, says", [
    ({"on_exit_notify": {"topic": "new", "entrypoint": "x"}}, "on_exit_notify is kser's own"),
    ({"on_exit_notify": "notadict"}, "on_exit_notify is kser's own"),
    ({"attempt": 3}, "attempt is kser's own"),
    ({"mode": "one"}, "mode is kser's own"),
    ({"operation_id": "o", "task_id": "t", "on_exit_notify": {}}, "in a task message"),
    ({"exit_of": "o", "idempotency_key": "k"}, "in an exit notification"),
    ({"ttl_strategy": "x"}, "must be an object"),
    ({"ttl_strategy": {"seconds_after_success": -1}}, "from 0 to"),
    ({"ttl_strategy": {"forever": 1}}, "is not a retention"),
    ({"idempotency_key": "schedule:n:2026-01-01T00:00:00+00:00"}, "kser keeps for its own"),
    ({"idempotency_key": "message:x"}, "kser keeps for its own"),
    ({"idempotency_key": "k" * 201}, "1 to 200 characters"),
    ({"operation_id": "o", "task_id": "t", "queued": [1]}, "queued must be two"),
])
def test_a_message_may_only_request_what_a_producer_may(own, says):
    assert says in refusal(**own)


def test_what_kser_writes_and_a_producer_may_request_is_taken():
    for own in ({"operation_id": "o", "task_id": "t", "queued": [1, 0], "ready_at": 1.5,
                 "mode": "one", "attempt": 2}, {"exit_of": "o"},
                {"idempotency_key": "nightly", "ttl_strategy": {"seconds_after_success": 60}}):
        Message.loads(json.dumps(dict(uuid="u", entrypoint="e", metadata={"kser": own})))


def test_json_nested_deeper_than_the_limit_is_refused_saying_so():
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    for text in (deep, "[" * 5000 + "]" * 5000):
        with pytest.raises(ValidationError, match="nested deeper than 100 levels"):
            load_json(text, "the params")
        with pytest.raises(ValidationError, match="nested deeper than 100 levels"):
            Message.loads('{"uuid": "u", "entrypoint": "e", "params": {"a": ' + text + "}}")
    load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    value: list = []
    for _ in range(5000):  # (a Python value: checked without recursion)
        value = [value]
    with pytest.raises(ValidationError, match="nested deeper"):
        check_depth(value, "params")
    with pytest.raises(ValidationError, match="not finite"):
        load_json('{"x": NaN}')


def test_kser_s_own_keys_and_settings_are_checked_in_code_too():
    with pytest.raises(ValidationError, match="kser keeps"):
        check_idempotency_key("kser:x")
    assert check_idempotency_key(KserKey("schedule:n:t")) == "schedule:n:t"
    assert check_ttl_strategy(None) is None
    with pytest.raises(ValidationError, match="topic"):
        check_exit_notify({"topic": "bad topic!!"})
    with pytest.raises(ValidationError, match="unknown keys"):
        check_exit_notify({"topic": "t", "script": "rm"})
    with pytest.raises(ValidationError, match="must be an object"):
        check_exit_notify("t")
    assert check_exit_notify({"topic": "t", "payload": {"a": 1}}) == {"topic": "t",
                                                                       "payload": {"a": 1}}


@registry.subscribe
class BadlyAnnounced(Operation):
    ON_EXIT_NOTIFY = {"topic": ["t1"]}

    def build_tasks(self, **kwargs):
        return [Note()]


def test_an_operation_whose_exit_notification_cannot_be_sent_is_refused_before_a_write(env):
    result = BadlyAnnounced().launch()
    assert result.retcode == 400 and "exit notification's topic" in result.stderr
    with env.store.transaction() as tx:
        assert tx.get_operation(result.uuid) is None


def test_a_message_s_key_is_a_namespace_of_its_own(env):
    op = Steps(params={"steps": 1}).send(key="nightly")  # a producer script's key
    env.produce({"uuid": "from-topic", "entrypoint": Steps.path, "params": {"steps": 1},
                 "metadata": {"kser": {"idempotency_key": "nightly"}}})
    env.produce({"uuid": "again", "entrypoint": Steps.path, "params": {"steps": 1},
                 "metadata": {"kser": {"idempotency_key": "nightly"}}})
    env.drain()
    with env.store.transaction() as tx:
        assert tx.operation_by_key("nightly").id == op.uuid
        assert tx.operation_by_key("message:nightly").id == "from-topic"
        assert tx.get_operation("again") is None  # the same message key: started once


def test_a_stored_exit_notification_or_retention_that_is_not_one_changes_nothing(env):
    op, _ids = launch(env, steps=1)
    with env.store.transaction() as tx:  # as an older kser stored them from a message
        tx.update_operation(op.uuid, exit_notify="notadict", ttl_strategy="x")
    env.drain()
    operation, tasks = env.tasks(op.uuid)
    assert operation["status"] == "SUCCESS" and tasks[0]["status"] == "SUCCESS"
    assert registry.sequencer.purge() == 0


def test_a_run_one_message_kser_did_not_queue_runs_nothing(env):
    op, ids = launch(env, steps=1)
    with env.store.transaction() as tx:  # a worker claimed it and died
        assert tx.claim_task(ids[0], 0, "dead:1", time.time() - 1, time.time() - 40)
    assert registry.sequencer.cancel(op.uuid).retcode == 0
    registry.sequencer.sweeper.last = time.monotonic()  # (no sweep while it drains)
    env.produce(task_message(op.uuid, ids[0], mode="one"))
    env.drain()
    assert RUNS == []  # (the other dead letter: the task's own message, now stale)
    assert any("run_one did not send it" in env.error(letter) for letter in env.dead())


def test_a_control_resetting_a_running_task_ends_its_attempt(env):
    op, ids = launch(env, steps=2)
    now = time.time()
    with env.store.transaction() as tx:  # its worker runs it (a live lease)
        assert tx.claim_task(ids[0], 0, "busy:1", now + 60, now)
    assert registry.sequencer.cancel(op.uuid).retcode == 0
    assert registry.sequencer.run_from(op.uuid, ids[0]).retcode == 0
    [attempt] = env.attempts(ids[0])
    assert attempt["status"] == "CANCELED" and attempt["finished_at"] is not None
    assert "ended by a control" in attempt["error"]
    env.drain()
    assert env.tasks(op.uuid)[0]["status"] == "SUCCESS"
    assert [a["status"] for a in env.attempts(ids[0])] == ["CANCELED", "SUCCESS"]


def test_a_loaded_result_is_a_copy_of_what_was_stored():
    stored = {"retcode": 0, "stdout": "up", "retval": {"a": 1}}
    loaded = load_result(stored)
    loaded += Result(retcode=500, retval={"error": "boom"})
    assert stored == {"retcode": 0, "stdout": "up", "retval": {"a": 1}}


def test_a_row_the_broker_does_not_take_for_now_waits_longer_each_time(env):
    from kafka.errors import KafkaTimeoutError

    op, _ids = launch(env, steps=1)
    outbox = registry.sequencer.outbox
    def ours(rows):
        return [row for row in rows if row.key == b"x"]

    with env.store.transaction() as tx:
        tx.add_outbox(op.uuid, "t", b"x", b"v")
        [waiting] = ours(tx.unsent(op.uuid))
    for tries in (1, 2):
        outbox._failed(waiting, KafkaTimeoutError("broker away"))
        outbox.flush_sent()
        with env.store.transaction() as tx:
            [waiting] = ours(tx.unsent(op.uuid))
            assert ours(tx.unsent(op.uuid, now=time.time())) == []  # not due: backing off
        assert waiting.tries == tries and waiting.due_at > time.time() + 0.5 * tries


def test_a_sweep_stops_at_the_first_sign_the_broker_is_away(env, monkeypatch):
    ops = [launch(env, steps=1)[0] for _ in range(5)]
    with env.store.transaction() as tx:  # a message of each waits, unsent
        for op in ops:
            tx.add_outbox(op.uuid, "t", b"k", b"v")
    calls = []

    def away(operation_id, rows=None, wait=True):
        calls.append(operation_id)
        from kser.controller import RedoError
        raise RedoError("broker away")

    monkeypatch.setattr(registry.context, "publish", away)
    monkeypatch.setattr("kser.sequencing.engine.sweep.UNSENT_GRACE", -1.0)
    registry.sequencer.sweep(force=True)
    assert len(calls) == 1 and len(ops) == 5


def test_a_producer_kept_by_its_callback_does_not_raise_a_refusal_for_good():
    from kafka.errors import MessageSizeTooLargeError

    class Refusing(Producer):
        def _produce(self, topic, value, key, headers=None, on_delivery=None):
            if on_delivery is not None:
                on_delivery(MessageSizeTooLargeError("too large"))

    assert isinstance(Env, type) and RUNS is not None
    seen = []
    producer = Refusing({"broker": "untrusted"})
    producer.send_raw("t", b"v", on_delivery=seen.append)
    producer.flush(1)
    assert len(seen) == 1


# -- what an attacker review found next ---------------------------------------------------

def test_a_dead_letter_keeps_kser_s_headers_never_the_record_s_own(env):
    env.produce({"uuid": "u", "entrypoint": "not.Registered"}, key=b"k",
                headers=[("kser-source-topic", b"payments"), ("kser-error", b"replay me"),
                         ("kser-value-trimmed", b"1"), ("trace", b"abc")])
    env.drain()
    [letter] = env.dead()
    headers = dict(letter.headers)
    assert headers["kser-source-topic"] == b"ops" and b"not registered" in headers["kser-error"]
    assert "kser-value-trimmed" not in headers and headers["trace"] == b"abc"
    assert [name for name, _ in letter.headers].count("kser-source-topic") == 1


def test_a_replay_sends_letters_only_to_the_topic_it_was_asked_for(runner_env):
    from click.testing import CliRunner

    from kser.cli import main
    from kser.memory.broker import get_broker

    broker = get_broker("default")
    # a writer of the dead-letter topic names another topic as the source
    broker.produce("shop.dlq", b'{"uuid": "u", "entrypoint": "app.Pay"}', key=b"k",
                   headers=[("kser-error", b"fixed, replay it"),
                            ("kser-source-topic", b"payments")])
    before = len(broker.records("payments"))
    replayed = CliRunner().invoke(main, ["dlq", "replay", "shop", "--transport", "memory",
                                         "--wait", "0.5"])
    assert replayed.exit_code == 0 and "replayed 0 dead letter(s)" in replayed.output
    assert len(broker.records("payments")) == before and broker.records("shop") == []


@pytest.fixture
def runner_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KSER_STORE_URL", f"sqlite:///{tmp_path}/dlq.db")


def test_an_idempotency_key_on_a_lone_task_is_refused_not_ignored(env):
    env.produce({"uuid": "lone", "entrypoint": Note.path,
                 "metadata": {"kser": {"idempotency_key": "once"}}})
    env.drain()
    assert RUNS == []
    assert "is for operations" in env.error(env.dead()[0])


def test_a_copy_of_a_task_message_changed_in_any_way_runs_nothing(env):
    op, ids = launch(env, steps=2)
    [first] = [r for r in env.broker.records("ops") if r.key == ids[0].encode()]
    forged = json.loads(first.value)
    forged["result"] = {"retcode": 0, "stdout": "", "retval": {"owned": True}}
    with pytest.raises(UndeliverableError, match="not the message kser queued"):
        registry.sequencer.execute(Note, Message.loads(json.dumps(forged)), "ops")
    assert RUNS == []
    env.drain()  # (the real one then runs)
    operation, tasks = env.tasks(op.uuid)
    assert operation["status"] == "SUCCESS"
    assert all("owned" not in (task["result"]["retval"] or {}) for task in tasks)


def test_a_worker_without_operations_opens_no_store_for_a_task_message(memory_broker_name,
                                                                       tmp_path, monkeypatch):
    from kser.memory.consumer import Consumer
    from kser.sequencing.registry import OperationRegistry
    from kser.sequencing.task import Task

    lone = OperationRegistry()

    @lone.subscribe
    class Echo(Task):
        def run(self):
            return Result(uuid=self.uuid, stdout="echo")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lone.settings, "store_url", f"sqlite:///{tmp_path}/never.db")
    producer = Producer({"broker": memory_broker_name})
    producer.send("solo", Message("t1", Echo.path, metadata={"kser": {
        "operation_id": "o1", "task_id": "t1", "queued": [1, 0]}}))
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["solo"])
    consumer.REGISTRY = lone.controller
    consumer.run()
    [letter] = producer.broker.records("solo.dlq")
    assert b"no operation is registered on this worker" in dict(letter.headers)["kser-error"]
    assert not (tmp_path / "never.db").exists()
