"""The durable sequencer, state transition by state transition (memory transport + SQLite)."""

import json

import pytest
from cdumay_result import Result
from sqlalchemy.exc import OperationalError

from kser.memory.broker import get_broker
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from kser.store import Store
from tests.unit import tasks

TOPICS = ["ops", "heavy"]


class Harness:
    """A store, a memory broker and the registry of tests.unit.tasks bound to them."""

    def __init__(self, broker_name, store_url, monkeypatch):
        self.broker = get_broker(broker_name)
        self.store = Store(store_url)
        self.registry = tasks.registry
        self.statuses: list[tuple[str, str]] = []
        monkeypatch.setattr(self.registry.context, "_store", self.store)
        monkeypatch.setattr(self.registry.context, "own", Producer({"broker": broker_name}))
        monkeypatch.setattr(self.registry.controller, "producer", None)
        monkeypatch.setattr(self.registry.settings, "topic", "ops")
        statuses = self.statuses

        def set_status(op, status, result=None):
            statuses.append((type(op).__name__, status))
            op.status = status

        from kser.sequencing.operation import Operation

        monkeypatch.setattr(Operation, "set_status", set_status)

    def drain(self, topics=TOPICS):
        consumer = Consumer({"broker": self.broker.name, "group_id": "workers"}, topics)
        consumer.REGISTRY = self.registry.controller
        consumer.run(until_idle=True)
        return consumer

    def operation(self, op_id):
        with self.store.transaction() as tx:
            return tx.get_operation(op_id), tx.get_tasks(op_id)

    def attempts(self, task_id):
        with self.store.transaction() as tx:
            return tx.get_attempts(task_id)

    def messages(self, topic):
        return [json.loads(r.value) for r in self.broker.records(topic)]


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    tasks.CALLS.clear()
    tasks.FLAKY["fail"] = True
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    yield harness
    harness.store.close()


def test_launch_stores_everything_and_sends_only_the_first_task(h):
    op = tasks.ThreeSteps(params={"name": "n"})
    result = op.launch()
    assert result.retcode == 0, result.stderr
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "RUNNING" and row["topic"] == "ops"
    assert [t["status"] for t in task_rows] == ["PENDING"] * 3
    sent = h.messages("ops")
    assert len(sent) == 1
    assert sent[0]["uuid"] == task_rows[0]["id"]
    # which attempt the message is for (and a sensor's pokes): copies of an earlier one
    # are recognised; and since when it may run (its hop latency counts from there)
    ready_at = sent[0]["metadata"]["kser"].pop("ready_at")
    assert sent[0]["metadata"]["kser"] == {"operation_id": op.uuid, "task_id": task_rows[0]["id"],
                                           "queued": [1, 0]}
    assert abs(ready_at - row["created_at"]) < 5
    assert ("ThreeSteps", "RUNNING") in h.statuses
    assert tasks.CALLS == []  # nothing runs in the producer


def test_an_operation_runs_task_by_task_each_seeing_the_previous_result(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "SUCCESS" and row["finished_at"] is not None
    assert row["result"]["retval"]["seen"] == [0, 1, 2]
    assert tasks.CALLS == ["step0", "step1", "step2"]
    for task in task_rows:
        assert task["status"] == "SUCCESS" and task["attempt"] == 1
        assert [a["status"] for a in h.attempts(task["id"])] == ["SUCCESS"]
    # task n received exactly what task n-1 left
    assert [t["result"]["retval"]["seen"] for t in task_rows] == [[0], [0, 1], [0, 1, 2]]
    assert h.statuses == [("ThreeSteps", "RUNNING"), ("ThreeSteps", "SUCCESS")]
    assert len(h.messages("ops")) == 3  # one message per task
    assert h.broker.lag("workers", ["ops"]) == 0


def test_an_operation_message_from_any_producer_is_built_and_run(h):
    Producer({"broker": h.broker.name}).send(
        "ops", Message("op-1", tasks.ThreeSteps.path, params={"name": "x"}))
    h.drain()
    row, task_rows = h.operation("op-1")
    assert row["status"] == "SUCCESS" and len(task_rows) == 3
    assert all(t["params"]["name"] == "x" for t in task_rows)


def test_missing_required_params_store_and_send_nothing(h):
    op = tasks.NeedsTaskParam()
    result = op.launch()
    assert result.retcode == 400 and "Missing parameter: text" in result.stderr
    assert h.operation(op.uuid)[0] is None and h.messages("ops") == []
    from cdumay_error.types import ValidationError

    with pytest.raises(ValidationError, match="Missing parameter: name"):
        tasks.ThreeSteps().send()


def test_send_raises_the_real_error_an_unreachable_store_is_no_validation_error(
        h, monkeypatch):
    from kser.errors import StoreError

    monkeypatch.setattr(h.registry.context, "_store", None)
    monkeypatch.setattr(h.registry.settings, "store_url",
                        "postgresql+psycopg://kser@127.0.0.1:9/kser")
    with pytest.raises(StoreError, match="cannot be used: connection failed"):
        tasks.ThreeSteps(params={"name": "n"}).send()


def test_a_failing_task_fails_the_operation_and_later_tasks_never_run(h):
    op = tasks.FailsInTheMiddle().send()
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "FAILED"
    assert "step refused its input" in row["result"]["stderr"]
    # the task after it never runs: FAILED as "upstream failed" (Airflow's meaning of
    # all_success), without an attempt
    assert [t["status"] for t in task_rows] == ["SUCCESS", "FAILED", "FAILED"]
    assert task_rows[2]["attempt"] == 0 and task_rows[2]["result"]["retcode"] == 424
    assert task_rows[2]["result"]["stderr"].startswith("upstream failed: of its 1 upstream")
    assert tasks.CALLS == ["step0", "failing"]
    assert h.attempts(task_rows[1]["id"])[0]["error"].endswith("step refused its input")
    assert h.statuses[-1] == ("FailsInTheMiddle", "FAILED")


def test_recover_restarts_from_the_failed_task_keeping_earlier_results(h):
    op = tasks.WithFlaky().send()
    h.drain()
    assert h.operation(op.uuid)[0]["status"] == "FAILED"
    tasks.FLAKY["fail"] = False
    assert h.registry.sequencer.recover(op.uuid).retcode == 0
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "SUCCESS"
    assert tasks.CALLS == ["step0", "flaky1", "flaky2", "step2"]  # step0 did not run again
    assert task_rows[1]["attempt"] == 2
    assert [a["status"] for a in h.attempts(task_rows[1]["id"])] == ["FAILED", "SUCCESS"]
    assert row["result"]["retval"] == {"seen": [0, 2], "flaky": 2}
    assert h.registry.sequencer.recover(op.uuid).retcode == 409  # only a FAILED one


@pytest.mark.parametrize("control", ["recover", "run_one", "run_from"])
def test_a_first_task_run_again_receives_the_result_the_operation_was_sent_with(h, control):
    op = tasks.FlakyFirst(result=Result(retval={"seed": 1})).send()
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "FAILED" and row["result"]["retcode"] == 500
    tasks.FLAKY["fail"] = False
    control_args = () if control == "recover" else (task_rows[0]["name"],)
    assert getattr(h.registry.sequencer, control)(op.uuid, *control_args).retcode == 0
    h.drain()
    sent = [m for m in h.messages("ops") if m["uuid"] == task_rows[0]["id"]]
    assert [m["result"]["retcode"] for m in sent] == [0, 0]
    assert [m["result"]["retval"] for m in sent] == [{"seed": 1}, {"seed": 1}]
    # run_one runs that task alone: the step after it stays failed by its upstream
    assert h.operation(op.uuid)[0]["status"] == ("FAILED" if control == "run_one"
                                                 else "SUCCESS")


def test_task_logs_are_stored_per_task_and_attempt(h):
    op = tasks.WithFlaky().send()
    h.drain()
    tasks.FLAKY["fail"] = False
    h.registry.sequencer.recover(op.uuid)
    h.drain()
    flaky = h.operation(op.uuid)[1][1]
    with h.store.transaction() as tx:
        logs = tx.get_logs(flaky["id"])
    assert [(log["attempt"], log["message"].split(": ")[-1]) for log in logs] == [
        (1, "attempt 1"), (2, "attempt 2")]
    prefix = f"FlakyStep.RUNNING: tests.unit.tasks.FlakyStep[{flaky['id']}]: "
    assert logs[0]["message"] == prefix + "attempt 1"


def test_a_task_whose_operation_is_deleted_while_it_runs_ends_quietly(h, caplog):
    """A purge (or DELETE through the API) while a task runs: its end finds nothing to
    update; the record is done, nothing is written back or sent, and the log says why
    (not that the task's result was unstorable)."""
    op = tasks.PurgedWhileRunning().send()
    consumer = h.drain()
    assert tasks.CALLS == ["deleted"]  # the next task was never sent
    assert h.operation(op.uuid) == (None, [])
    assert consumer.processed == 1 and h.broker.lag("workers", ["ops"]) == 0
    assert not h.broker.has_topic("ops.dlq") or not h.broker.records("ops.dlq")
    assert "is not in the store any more (purged or deleted meanwhile)" in caplog.text
    assert "cannot store" not in caplog.text and "cannot be stored" not in caplog.text


def test_a_duplicate_message_of_a_finished_task_runs_nothing(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain()
    first_task_message = h.broker.records("ops")[0]
    h.broker.produce("ops", first_task_message.value, first_task_message.key)
    h.drain()
    assert tasks.CALLS == ["step0", "step1", "step2"]
    assert len(h.messages("ops")) == 4  # the duplicate, and nothing it caused
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_a_duplicate_operation_message_is_not_stored_twice(h):
    producer = Producer({"broker": h.broker.name})
    kmsg = Message("op-dup", tasks.ThreeSteps.path, params={"name": "x"})
    producer.send("ops", kmsg)
    producer.send("ops", kmsg)
    h.drain()
    assert tasks.CALLS == ["step0", "step1", "step2"]
    assert h.operation("op-dup")[0]["status"] == "SUCCESS"


def test_unsent_outbox_rows_are_resent_by_a_duplicate(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.registry.sequencer.flush_sent()  # no mark left pending in memory, then none in store:
    with h.store.transaction() as tx:  # as if the sender died before marking it sent
        tx.connection.exec_driver_sql("UPDATE kser_outbox SET sent_at = NULL")
    h.registry.sequencer.submit(tasks.ThreeSteps(uuid=op.uuid, params={"name": "n"}), "ops")
    assert len(h.messages("ops")) == 2  # the first task's message, sent again
    h.drain()
    assert tasks.CALLS == ["step0", "step1", "step2"]


def claim(h, task_id, worker, lease_until, now, attempt=0):
    with h.store.transaction() as tx:
        return tx.claim_task(task_id, attempt, worker, lease_until, now)


def test_two_workers_racing_for_a_task_one_wins(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    task_id = h.operation(op.uuid)[1][0]["id"]
    assert claim(h, task_id, "a:1", 2e9, 1e9) is True
    assert claim(h, task_id, "b:2", 2e9, 1e9) is False


def test_a_task_running_on_a_live_worker_is_not_started_twice(h, monkeypatch):
    import time

    monkeypatch.setattr(h.registry.settings, "task_lease", 0.4)
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    task_id = h.operation(op.uuid)[1][0]["id"]
    # another worker holds the task with a lease it keeps renewing (far in the future)
    assert claim(h, task_id, "other:1", time.time() + 3600, time.time())
    h.drain()
    assert tasks.CALLS == []
    task = h.operation(op.uuid)[1][0]
    assert task["status"] == "RUNNING" and task["worker"] == "other:1" and task["attempt"] == 1


def test_a_task_whose_worker_died_is_taken_over_after_its_lease(h):
    import time

    op = tasks.ThreeSteps(params={"name": "n"}).send()
    task_id = h.operation(op.uuid)[1][0]["id"]
    # a worker claimed it and died: its lease is past, its message is redelivered
    assert claim(h, task_id, "dead:1", time.time() - 1, time.time() - 31)
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "SUCCESS" and task_rows[0]["attempt"] == 2
    first, second = h.attempts(task_id)
    assert (first["worker"], first["status"]) == ("dead:1", "FAILED")
    assert first["error"].startswith("lease expired: its worker stopped; taken over by ")
    assert second["status"] == "SUCCESS"


def test_the_sweep_re_sends_a_task_whose_worker_died_after_its_message_was_acked(h):
    import time

    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain(topics=["unrelated"])  # nothing consumed yet
    consumer = Consumer({"broker": h.broker.name, "group_id": "workers"}, ["ops"])
    (first_task_message,) = h.broker.records("ops")
    consumer._commit({("ops", first_task_message.partition):  # the message was acknowledged
                      first_task_message.offset + 1})  # by a worker...
    consumer._close()
    task_id = h.operation(op.uuid)[1][0]["id"]
    assert claim(h, task_id, "dead:1", time.time() - 1, time.time() - 31)  # ...that died
    assert h.registry.sequencer.sweep(force=True) == 1
    h.drain()
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"
    assert tasks.CALLS == ["step0", "step1", "step2"]


def test_the_sweep_re_sends_a_dead_worker_s_task_once_per_lease_that_expired(h):
    """Each re-send is a new message that makes the one before it stale: re-sent every
    lease, the messages of hundreds of tasks a dead worker held were all stale by the
    time a worker read them, for good. Once per expired lease: a task taken over by a
    worker that dies too is re-sent again, and runs (its message named the attempt,
    which the takeover had moved on: judged a stale copy, it never ran)."""
    import time

    op = tasks.ThreeSteps(params={"name": "n"}).send()
    task_id = h.operation(op.uuid)[1][0]["id"]
    assert claim(h, task_id, "dead:1", time.time() - 1, time.time() - 31)
    sweep = h.registry.sequencer.sweep
    assert sweep(force=True) == 1
    for _ in range(3):  # (its message was delivered: a worker will read it)
        assert sweep(force=True) == 0
    # taken over by a worker that dies in turn: its lease expires, it is re-sent again
    assert claim(h, task_id, "dead:2", time.time() + 0.05, time.time(), attempt=1)
    time.sleep(0.1)
    assert sweep(force=True) == 1
    assert sweep(force=True) == 0
    h.drain()  # (the last message re-sent runs it: its worker died twice)
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"
    assert [(a["worker"], a["status"]) for a in h.attempts(task_id)][:2] == [
        ("dead:1", "FAILED"), ("dead:2", "FAILED")]
    assert h.attempts(task_id)[2]["status"] == "SUCCESS"


def test_each_re_send_of_one_expired_lease_is_the_same_text(h, monkeypatch):
    """The store keeps one digest per task message: two re-sends of one expired lease
    (two workers' sweeps, or the late fallback) must not make each other stale."""
    import time

    from kser.store.tx import attempts

    monkeypatch.setattr(attempts, "RESEND_AGAIN", 0)  # (re-sent at every sweep)
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    task_id = h.operation(op.uuid)[1][0]["id"]
    assert claim(h, task_id, "dead:1", time.time() - 1, time.time() - 31)
    sweep = h.registry.sequencer.sweep
    assert sweep(force=True) == 1
    time.sleep(0.01)
    assert sweep(force=True) == 1
    first, second = [r.value for r in h.broker.records("ops") if r.key == task_id.encode()][1:]
    assert first == second
    h.drain()
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_a_lease_is_released_for_its_own_attempt_only(h):
    leases = h.registry.sequencer.runner.leases
    leases.hold("t", 2)
    leases.release("t", 1)  # (an earlier attempt's end, after the task was claimed again)
    assert leases._held == {"t": 2}
    leases.release("t", 2)
    assert leases._held == {}


def test_tasks_can_name_their_own_topic(h):
    op = tasks.Routed().send()
    h.drain(topics=["ops"])
    assert h.operation(op.uuid)[0]["status"] == "RUNNING"
    assert [m["entrypoint"] for m in h.messages("heavy")] == [tasks.HeavyStep.path]
    h.drain(topics=["heavy"])
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_cancel_stops_an_operation(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    assert h.registry.sequencer.cancel(op.uuid).retcode == 0
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row["status"] == "CANCELED"
    assert [t["status"] for t in task_rows] == ["CANCELED"] * 3
    assert tasks.CALLS == []
    assert h.statuses[-1] == ("ThreeSteps", "CANCELED")
    assert h.registry.sequencer.cancel(op.uuid).retcode == 409


def test_run_from_resets_a_task_and_what_follows(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain()
    second = h.operation(op.uuid)[1][1]["id"]
    assert h.registry.sequencer.run_from(op.uuid, second).retcode == 0
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert tasks.CALLS == ["step0", "step1", "step2", "step1", "step2"]
    assert row["status"] == "SUCCESS" and row["result"]["retval"]["seen"] == [0, 1, 2]
    assert [t["attempt"] for t in task_rows] == [1, 2, 2]


def test_run_one_runs_one_task_without_continuing(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain()
    second = h.operation(op.uuid)[1][1]["id"]
    assert h.registry.sequencer.run_one(op.uuid, second).retcode == 0
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert tasks.CALLS == ["step0", "step1", "step2", "step1"]
    assert row["status"] == "SUCCESS"
    assert task_rows[1]["attempt"] == 2 and task_rows[1]["result"]["retval"]["seen"] == [0, 1]


def test_exit_notification_and_retention(h):
    op = tasks.Announced().send()
    h.drain()
    [exit_message] = h.messages("exits")
    assert exit_message["params"] == {"operation_id": op.uuid, "operation": tasks.Announced.path,
                                      "status": "SUCCESS", "payload": {"insert": 1}}
    assert exit_message["entrypoint"] == "kser.operation.exit"
    assert h.registry.sequencer.purge() == 1
    assert h.operation(op.uuid) == (None, [])


def test_retention_none_keeps_operations(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain()
    assert h.registry.sequencer.purge() == 0
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_a_task_message_for_an_unknown_operation_is_dead_lettered(h):
    h.broker.produce("ops", Message("t-1", tasks.Step.path, params={"index": 0}, metadata={
        "kser": {"operation_id": "gone", "task_id": "t-1"}}).dumps().encode())
    h.drain()
    [dead] = h.broker.records("ops.dlq")
    assert b"is not in the store" in dict(dead.headers)["kser-error"]
    assert tasks.CALLS == []


def test_an_unreachable_store_means_the_message_is_processed_again(h, monkeypatch):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    real = h.store.transaction
    failures = [1]

    def flaky_transaction():
        if failures:
            failures.pop()
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return real()

    monkeypatch.setattr(h.store, "transaction", flaky_transaction)
    monkeypatch.setattr(h.registry.settings, "redo_backoff", 0)
    consumer = h.drain()
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"
    assert tasks.CALLS == ["step0", "step1", "step2"]
    assert consumer.processed == 3


def test_a_task_this_worker_left_running_is_redone_at_once(h):
    """The store failed after the task ran: the same worker redoes it, no lease wait."""
    import time

    op = tasks.ThreeSteps(params={"name": "n"}).send()
    task_id = h.operation(op.uuid)[1][0]["id"]
    consumer = Consumer({"broker": h.broker.name, "group_id": "workers"}, TOPICS)
    consumer.REGISTRY = h.registry.controller
    assert claim(h, task_id, consumer.name, time.time() + 3600, time.time())
    started = time.monotonic()
    consumer.run(until_idle=True)
    assert time.monotonic() - started < 5
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"
    assert h.operation(op.uuid)[1][0]["attempt"] == 2


def test_a_flask_view_launches_an_operation(h):
    from flask import Flask, jsonify

    app = Flask(__name__)
    h.registry.init_app(app, api=False)  # the host's own view, without kser's REST API

    @app.post("/operations")
    def launch():
        operation = tasks.ThreeSteps(params={"name": "from flask"}).send()
        return jsonify(id=operation.uuid), 202

    response = app.test_client().post("/operations")
    assert response.status_code == 202
    op_id = response.get_json()["id"]
    h.drain()
    row, task_rows = h.operation(op_id)
    assert row["status"] == "SUCCESS" and task_rows[0]["params"]["name"] == "from flask"


def run_until_final(h, op_id, timeout=20):
    """Consume, and sweep for due retries, until the operation is final."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h.drain()
        row = h.operation(op_id)[0]
        if row["status"] != "RUNNING":
            return row
        time.sleep(0.05)
        h.registry.sequencer.sweep(force=True)
    raise AssertionError(f"operation {op_id} still RUNNING after {timeout} s")


@pytest.mark.parametrize("how, fail, status, attempts", [
    ("raise", 2, "SUCCESS", 3),       # an exception retries (RETRY_ON = Exception)
    ("503", 1, "SUCCESS", 2),         # a returned 5xx retries
    ("retry", 2, "SUCCESS", 3),       # the task asked for it
    ("slow", 1, "SUCCESS", 2),        # a time limit retries
    ("raise", 3, "FAILED", 3),        # MAX_RETRIES = 2: three attempts, then FAILED
    ("invalid", 1, "FAILED", 1),      # NEVER_RETRY = ValidationError
    ("409", 1, "FAILED", 1),          # a returned 4xx is not worth another attempt
])
def test_retries(h, how, fail, status, attempts):
    tasks.FAILURES.clear()
    op = tasks.OneUnreliable(params={"how": how, "fail": fail}).send()
    row = run_until_final(h, op.uuid)
    assert row["status"] == status
    task = h.operation(op.uuid)[1][0]
    recorded = h.attempts(task["id"])
    assert task["attempt"] == attempts == len(recorded)
    assert [a["number"] for a in recorded] == list(range(1, attempts + 1))
    failed = [a for a in recorded if a["status"] == "FAILED"]
    assert all(a["error"] for a in failed)
    if status == "SUCCESS":
        assert row["result"]["retval"] == {"attempts": attempts}
    if how == "slow":
        assert failed[0]["error"] == "TimeLimitExceeded: time limit exceeded after 1 s"


def test_a_retry_waits_in_the_store_not_in_a_consumer(h, monkeypatch):
    monkeypatch.setattr(tasks.Unreliable, "RETRY_MIN_BACKOFF", 1.0)
    monkeypatch.setattr(tasks.Unreliable, "RETRY_MAX_BACKOFF", 1.0)
    tasks.FAILURES.clear()
    op = tasks.OneUnreliable(params={"how": "raise", "fail": 1}).send()
    h.drain()
    task = h.operation(op.uuid)[1][0]
    assert task["status"] == "PENDING" and task["attempt"] == 1
    with h.store.transaction() as tx:
        [due] = [r for r in tx.unsent(op.uuid)]
    assert due["due_at"] is not None
    assert len(h.messages("ops")) == 1  # nothing sent before it is due
    # every process restarts: a new store object and a new sequencer find it and send it
    import time

    from kser.sequencing.registry import OperationRegistry

    time.sleep(max(0.0, due["due_at"] - time.time()))
    fresh = OperationRegistry().configure(store=Store(h.store.url),
                                          producer=Producer({"broker": h.broker.name}))

    class Restarted(tasks.OneUnreliable):  # the new process's registry runs operations
        pass

    fresh.subscribe(Restarted)
    assert fresh.sequencer.sweep(force=True) == 1
    assert len(h.messages("ops")) == 2
    h.drain()
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_sent_rows_are_marked_by_the_next_transaction(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    with h.store.transaction() as tx:
        assert [row["sent_at"] for row in tx.unsent(op.uuid)] == [None]  # mark pending
    h.registry.sequencer.flush_sent()
    with h.store.transaction() as tx:
        assert tx.unsent(op.uuid) == []
    h.drain()
    h.registry.sequencer.sweep(force=True)  # a sweep's transaction writes pending marks
    with h.store.transaction() as tx:
        assert tx.connection.exec_driver_sql(
            "SELECT count(*) FROM kser_outbox WHERE sent_at IS NULL").scalar() == 0


@pytest.mark.parametrize("result", [
    Result(uuid="u", retcode=0, stdout="out", retval={"x": [1, {"y": None}]}),
    Result(retcode=500, stderr="boom"),
    Result(uuid=3, retcode="7", stdout=None, stderr=None, retval=None),
])
def test_results_are_stored_as_the_schema_dumps_them(result):
    from cdumay_result import ResultSchema

    from kser.schemas import dump_result

    assert dump_result(result) == ResultSchema().dump(result)


def test_every_control_answers_with_a_result_404_for_unknown_409_for_a_wrong_state(h):
    sequencer = h.registry.sequencer
    for control, args in ((sequencer.cancel, ()), (sequencer.recover, ()),
                          (sequencer.run_from, ("t",)), (sequencer.run_one, ("t",)),
                          (sequencer.emit_ready, ())):
        result = control("no-such-operation", *args)
        assert result.retcode == 404, control
        assert result.stderr == "No operation no-such-operation in the store"
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    h.drain()
    for control in (sequencer.run_from, sequencer.run_one):
        result = control(op.uuid, "no-such-task")
        assert (result.retcode, result.stderr) == (
            404, f"Operation {op.uuid} has no task no-such-task (neither an id nor a name "
            "of its tasks)")
    done = sequencer.cancel(op.uuid)
    assert (done.retcode, done.stderr) == (
        409, f"Operation {op.uuid} is already SUCCESS: nothing to cancel")
    assert sequencer.recover(op.uuid).retcode == 409  # only a FAILED one recovers
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"  # nothing changed


def test_a_control_whose_messages_cannot_be_sent_now_is_done_and_leaves_them_queued(
        h, monkeypatch):
    from kser.controller import RedoError

    op = tasks.ThreeSteps(params={"name": "n"}).send()
    sequencer = h.registry.sequencer

    def broker_down(operation_id):
        raise RedoError("Kafka unreachable")

    monkeypatch.setattr(h.registry.context, "publish", broker_down)
    result = sequencer.cancel(op.uuid)
    assert result.retcode == 0
    assert "done in the store; its messages wait in the outbox" in result.stdout
    assert h.operation(op.uuid)[0]["status"] == "CANCELED"


def test_a_class_subscribed_to_a_second_registry_is_refused():
    from cdumay_error.types import ValidationError

    from kser.sequencing.registry import OperationRegistry

    other = OperationRegistry()
    with pytest.raises(ValidationError, match="is subscribed to another registry already"):
        other.subscribe(tasks.ThreeSteps)
    assert tasks.ThreeSteps.registry is tasks.registry  # it stayed where it was
    assert tasks.registry.subscribe(tasks.ThreeSteps) is tasks.ThreeSteps  # again: no-op

    class Mine(tasks.ThreeSteps):  # a subclass belongs to the registry it is given to
        pass

    assert other.subscribe(Mine).registry is other


def test_the_controls_are_public_on_the_registry(h):
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    assert h.registry.cancel("nothing").retcode == 404
    assert h.registry.cancel(op.uuid).retcode == 0
    h.drain()
    first = h.operation(op.uuid)[1][0]["id"]
    assert h.registry.recover(op.uuid).retcode == 409  # CANCELED, not FAILED
    assert h.registry.run_one(op.uuid, first).retcode == 0
    assert h.registry.run_from(op.uuid, "nothing").retcode == 404
    assert h.registry.purge() == 0  # no TTL: kept


def test_a_process_that_only_controls_operations_encodes_without_a_kafka_client(h):
    """Canceling stores the exit notification's message in the same transaction: the
    codec encodes it from the settings, and no Kafka client is opened for it (here none
    could be: the broker is unreachable)."""
    from kser.config import Settings
    from kser.sequencing.registry import OperationRegistry

    op = tasks.Announced().send()
    control = OperationRegistry(settings=Settings(
        transport="kafka", bootstrap_servers="127.0.0.1:9", connect_timeout=0.5))
    control.configure(store=h.store)
    result = control.cancel(op.uuid)
    assert result.retcode == 0 and "wait in the outbox" in result.stdout
    assert h.operation(op.uuid)[0]["status"] == "CANCELED"
    with h.store.transaction() as tx:  # the exit notification, encoded, waits to be sent
        assert "exits" in [row["topic"] for row in tx.unsent(op.uuid)]
