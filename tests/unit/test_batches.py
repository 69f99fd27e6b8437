"""Task messages in hand handled together (Sequencer.run_tasks, Controller.handle_many):
claimed in one transaction, their ends stored in one, each message still with its own
outcome; anything unusual, or a shared transaction that fails, goes one at a time."""

import threading
import time

import pytest
from cdumay_result import Result
from sqlalchemy.exc import OperationalError

from kser.controller import UndeliverableError
from kser.schemas import Message
from kser.sequencing import Operation
from kser.sequencing.engine import runner as runner_module
from kser.sequencing.engine.decisions import End as _End
from kser.status import Status
from tests.unit import tasks
from tests.unit.tasks import registry
from tests.unit.test_sequencing import Harness
from tests.unit.test_shapes import Fanned, Pick, Work


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    tasks.CALLS.clear()
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    yield harness
    harness.store.close()


@pytest.fixture
def batches(h, monkeypatch):
    """The sizes of the batches run_tasks was given."""
    sizes: list[int] = []
    run_tasks = h.registry.sequencer.run_tasks

    def spy(items):
        sizes.append(len(items))
        return run_tasks(items)

    monkeypatch.setattr(h.registry.sequencer, "run_tasks", spy)
    return sizes


def routed(h, records):
    """(entrypoint, message) of each record, as the controller routes them."""
    found = [h.registry.controller._route(record.value) for record in records]
    return [(entrypoint, kmsg) for kmsg, entrypoint in found]


def first_messages(h, count, operation=tasks.ThreeSteps, **params):
    ops = [operation(params=params).send() for _ in range(count)]
    return ops, routed(h, h.broker.records("ops"))


def test_operations_in_hand_run_in_batches_and_every_join_fires_once(h, batches):
    fanned = [Fanned().send() for _ in range(20)]
    chains = [tasks.ThreeSteps(params={"name": "n"}).send() for _ in range(20)]
    h.drain()
    assert batches and max(batches) > 1  # records in hand were handled together
    for op in fanned + chains:
        row, task_rows = h.operation(op.uuid)
        assert row["status"] == "SUCCESS"
        for task in task_rows:  # each task ran once: joins (c, e) included
            assert task["status"] == "SUCCESS" and task["attempt"] == 1
            assert [a["status"] for a in h.attempts(task["id"])] == ["SUCCESS"]
    for op in chains:  # each task received what the one before it left
        seen = [t["result"]["retval"]["seen"] for t in h.operation(op.uuid)[1]]
        assert seen == [[0], [0, 1], [0, 1, 2]]
    assert h.broker.lag("workers", ["ops"]) == 0


def test_each_message_of_a_batch_gets_its_own_outcome(h, monkeypatch):
    monkeypatch.setattr(h.registry.settings, "task_lease", 0.2)
    _, items = first_messages(h, 5, name="n")
    good, forged, done, elsewhere, abandoned = items
    # forged: a real task's message naming another entrypoint
    forged[1].entrypoint = "tests.unit.tasks.Echo"
    # done: its task ran already (this message is a duplicate)
    assert h.registry.sequencer.run_tasks([done])[0].retcode == 0
    # elsewhere: another worker runs it and keeps renewing its lease
    with h.store.transaction() as tx:
        tx.claim_task(elsewhere[1].kser_metadata["task_id"], 0, "other:1",
                      time.time() + 3600, time.time())
    # abandoned: a worker claimed it and died (its lease is past): taken over in the batch
    abandoned_id = abandoned[1].kser_metadata["task_id"]
    with h.store.transaction() as tx:
        tx.claim_task(abandoned_id, 0, "dead:1", time.time() - 1, time.time() - 31)
    outcomes = h.registry.sequencer.run_tasks([good, forged, done, elsewhere, good,
                                               abandoned])
    assert outcomes[0].retcode == 0 and "step 0" in outcomes[0].stdout
    assert isinstance(outcomes[1], UndeliverableError)
    assert "refused" in str(outcomes[1])
    assert "nothing to do" in outcomes[2].stdout
    assert "is running on other:1: left to it" in outcomes[3].stdout
    # the same message twice in one batch: the second is a duplicate, run alone after
    assert "nothing to do" in outcomes[4].stdout
    assert outcomes[5].retcode == 0 and "step 0" in outcomes[5].stdout
    first, second = h.attempts(abandoned_id)
    assert (first["worker"], first["status"]) == ("dead:1", "FAILED")
    assert first["error"].startswith("lease expired") and second["status"] == "SUCCESS"
    assert tasks.CALLS == ["step0"] * 3  # good, done and abandoned ran once each
    good_task = h.operation(good[1].kser_metadata["operation_id"])[1][0]
    assert good_task["status"] == "SUCCESS" and good_task["attempt"] == 1


def test_ends_that_cannot_be_stored_together_are_stored_one_at_a_time(h, monkeypatch,
                                                                      caplog):
    ops, items = first_messages(h, 3, name="n")
    follow = h.registry.sequencer.transitions.follow
    calls = {"n": 0}

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second end of the shared transaction
            raise ValueError("a bug in one end")
        return follow(*args, **kwargs)

    monkeypatch.setattr(h.registry.sequencer.transitions, "follow", fails_once)
    outcomes = h.registry.sequencer.run_tasks(items)
    assert [o.retcode for o in outcomes] == [0, 0, 0]
    assert "3 task ends could not be stored together (a bug in one end): one at a time" \
        in caplog.text
    h.drain()
    for op in ops:
        assert h.operation(op.uuid)[0]["status"] == "SUCCESS"
    # nothing of the rolled-back shared transaction was kept twice
    for op in ops:
        for task in h.operation(op.uuid)[1]:
            assert len(h.attempts(task["id"])) == 1


def test_a_store_failure_while_claiming_a_batch_leaves_each_message_to_itself(
        h, monkeypatch, caplog):
    _, items = first_messages(h, 3, name="n")
    judge = h.registry.sequencer.runner.judge
    calls = {"n": 0}

    def unreachable_once(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return judge(*args)

    monkeypatch.setattr(h.registry.sequencer.runner, "judge", unreachable_once)
    outcomes = h.registry.sequencer.run_tasks(items)
    assert [o.retcode for o in outcomes] == [0, 0, 0]
    assert "3 task messages could not be claimed together" in caplog.text
    assert tasks.CALLS == ["step0"] * 3


def test_a_failure_a_batch_cannot_get_past_is_redone_per_message(h, monkeypatch):
    """The store unreachable for every try: each message's outcome is a redo."""
    _, items = first_messages(h, 2, name="n")

    def unreachable(*args, **kwargs):
        raise OperationalError("BEGIN", {}, Exception("unable to open database file"))

    monkeypatch.setattr(h.registry.sequencer.outbox, "transaction", unreachable)
    outcomes = h.registry.controller.handle_many(
        [(None, "ops")] + [(kmsg.dumps().encode(), "ops") for _, kmsg in items])
    assert outcomes[0].undeliverable  # an empty record is what it always was
    assert [o.redo for o in outcomes[1:]] == [True, True]
    assert tasks.CALLS == []


def test_batches_are_sized_by_the_pace_of_bodies(h, monkeypatch):
    pace = h.registry.controller.pace
    assert h.registry.sequencer.pace is pace  # one pace: lone messages' and tasks' bodies
    monkeypatch.setattr(pace, "seconds", None)
    assert h.registry.controller.batch_limit() == 1  # nothing ran here yet: one at a time
    monkeypatch.setattr(pace, "seconds", 0.0001)
    assert h.registry.controller.batch_limit() == h.registry.settings.batch_size
    monkeypatch.setattr(pace, "seconds", runner_module.BATCH_WINDOW / 4)
    assert h.registry.controller.batch_limit() == 4
    monkeypatch.setattr(pace, "seconds", 60.0)  # slow tasks: never held back
    assert h.registry.controller.batch_limit() == 1
    monkeypatch.setattr(h.registry.settings, "batch_size", 1)
    monkeypatch.setattr(pace, "seconds", 0.0001)
    assert h.registry.controller.batch_limit() == 1


def test_a_lease_renewed_after_its_task_ended_is_dropped_without_a_lost_warning(h, caplog):
    """The renewing thread may run between a task's end (committed) and the release of
    its lease: that lease is dropped quietly; only one another worker took over is lost."""
    _, items = first_messages(h, 2, name="n")
    ended_id, taken_id = (kmsg.kser_metadata["task_id"] for _, kmsg in items)
    now = time.time()
    with h.store.transaction() as tx:
        tx.claim_task(ended_id, 0, "me:1", now + 60, now)
        tx.finish_attempt(ended_id, 1, "SUCCESS", {"retcode": 0}, now, None)
        tx.claim_task(taken_id, 0, "me:1", now - 1, now - 31)  # expired: taken over
        tx.claim_task(taken_id, 1, "other:2", now + 60, now)
    leases = h.registry.sequencer.runner.leases
    leases.hold(ended_id, 1)
    leases.hold(taken_id, 1)
    leases.renew()
    assert ended_id not in leases._held and taken_id not in leases._held
    assert f"Task {taken_id} attempt 1: lease lost" in caplog.text
    assert ended_id not in caplog.text


@registry.subscribe
class CrossedBranches(Operation):
    """Two branches feeding the same two joins, each choosing the join the other does not."""

    def build_tasks(self, **kwargs):
        a, b = Pick(name="a", params={"pick": "d"}), Pick(name="b", params={"pick": "c"})
        c, d = Work(name="c"), Work(name="d")
        [a, b] >> c
        [a, b] >> d
        return [a, b, c, d]


def test_branches_ending_in_one_batch_skip_what_they_did_not_choose_and_end(h):
    """Each join is skipped by one branch after the other noted it ready: nothing is
    queued, and the operation, left with nothing to run, ends (it stayed RUNNING)."""
    op = CrossedBranches().send()
    _, items = [op], routed(h, h.broker.records("ops"))
    assert len(items) == 2
    outcomes = h.registry.sequencer.run_tasks(items)
    assert [o.retcode for o in outcomes] == [0, 0]
    row, task_rows = h.operation(op.uuid)
    assert {t["name"]: t["status"] for t in task_rows} == {
        "a": "SUCCESS", "b": "SUCCESS", "c": "SKIPPED", "d": "SKIPPED"}
    assert row["status"] == "SUCCESS"


def test_a_message_for_a_task_this_worker_holds_waits_for_it(h):
    """A retry or poke can come back while the batch that sent it still holds its task:
    it waits for the task to be let go, then is judged against the store (it was dropped
    as a duplicate, and its task stayed PENDING for good)."""
    _, items = first_messages(h, 1, name="n")
    (entrypoint, kmsg), = items
    sequencer = h.registry.sequencer
    task_id = kmsg.kser_metadata["task_id"]
    with sequencer.runner.running_lock:
        sequencer.runner.running.add(task_id)
    threading.Timer(0.2, lambda: sequencer.runner.running.discard(task_id)).start()
    result = sequencer.run_task(entrypoint, kmsg)
    assert result.retcode == 0 and "step 0" in result.stdout
    assert h.operation(kmsg.kser_metadata["operation_id"])[1][0]["status"] == "SUCCESS"


def test_ends_of_a_batch_the_store_will_not_take_share_one_lease_of_tries(h, monkeypatch):
    """The store gone while a batch's ends are stored: each end is tried again, all within
    one lease (not one lease each, one after the other), then redone."""
    lease = 1.5
    monkeypatch.setattr(h.registry.settings, "task_lease", lease)
    _, items = first_messages(h, 4, name="n")
    sequencer = h.registry.sequencer

    def unreachable(*args, **kwargs):
        raise OperationalError("COMMIT", {}, Exception("unable to open database file"))

    monkeypatch.setattr(sequencer.transitions, "ends", unreachable)
    monkeypatch.setattr(sequencer.ends, "record", unreachable)
    started = time.monotonic()
    outcomes = sequencer.run_tasks(items)
    assert all("store unreachable" in str(o) for o in outcomes), outcomes
    # one lease each would take 4 leases and more; 2.5 leave room for a slow machine
    assert time.monotonic() - started < 2.5 * lease


def test_bodies_run_while_the_ends_before_them_are_stored(h, monkeypatch):
    """The group commit stores a batch's ends while its next bodies run: the first end's
    transaction here waits until the third body ran (it would never end if bodies waited
    for the store)."""
    monkeypatch.setattr(runner_module, "BATCH_WINDOW", 0.0)  # hand over after each body
    _, items = first_messages(h, 3, name="n")
    group = h.registry.sequencer.ends.group
    commit, submit, stored = group._commit, group.submit, []
    committing = threading.Event()

    def after_the_third_body(ends):
        committing.set()
        deadline = time.monotonic() + 10
        while len(tasks.CALLS) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        stored.append((len(ends), len(tasks.CALLS)))
        return commit(ends)

    def first_taken_alone(ends, **kwargs):  # (the first end's transaction starts before
        future = submit(ends, **kwargs)      # body 2)
        assert committing.wait(10)
        return future

    monkeypatch.setattr(group, "_commit", after_the_third_body)
    monkeypatch.setattr(group, "submit", first_taken_alone)
    outcomes = h.registry.sequencer.run_tasks(items)
    assert [o.retcode for o in outcomes] == [0, 0, 0]
    assert stored[0] == (1, 3)  # the first end alone, stored once the third body ran
    assert sum(count for count, _ in stored) == 3


def test_ends_of_several_threads_batches_share_a_transaction(h, monkeypatch):
    monkeypatch.setattr(runner_module, "BATCH_WINDOW", 10.0)  # a batch's ends at once
    ops, items = first_messages(h, 6, name="n")
    group = h.registry.sequencer.ends.group
    commit, sizes = group._commit, []
    first_started, others_handed = threading.Event(), threading.Event()

    def slow_first(ends):
        sizes.append(len(ends))
        if len(sizes) == 1:  # while the first runs, the other threads hand theirs over
            first_started.set()
            assert others_handed.wait(10)
        return commit(ends)

    monkeypatch.setattr(group, "_commit", slow_first)
    submit, handed = group.submit, []

    def counted(ends, **kwargs):  # (the first thread's commits in its own thread)
        future = submit(ends, **kwargs)
        handed.append(len(ends))
        if len(handed) == 2:  # the other two threads' ends wait for the first's commit
            others_handed.set()
        return future

    monkeypatch.setattr(group, "submit", counted)
    outcomes: dict[int, list] = {}

    def run(number):
        outcomes[number] = h.registry.sequencer.run_tasks(items[2 * number:2 * number + 2])

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert first_started.wait(10)
    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in [first, *threads]:
        thread.join(10)
        assert not thread.is_alive()
    assert sizes == [2, 4]  # the second and third threads' ends: one transaction
    assert all(o.retcode == 0 for n in range(3) for o in outcomes[n])
    h.drain()
    for op in ops:
        assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_a_stale_end_in_a_shared_transaction_hides_no_task_from_its_upstream(h):
    """A task's stale end (its operation re-run from an earlier task meanwhile) shares a
    transaction with that earlier task's new end: refused, it must not keep the task
    from being queued (the operation would stay RUNNING with nothing to run)."""
    seq = h.registry.sequencer
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    t0, t1, _ = h.operation(op.uuid)[1]
    now = time.time()
    with h.store.transaction() as tx:  # t0 ran and ended here; t1 claimed, its body running
        assert tx.claim_task(t0.id, 0, "me:1", now + 60, now, taking_over=False)
    seq.ends._commit([_End(h.operation(op.uuid)[1][0], None, 1, None, Result(uuid=t0.id),
                           Status.SUCCESS)])
    with h.store.transaction() as tx:
        assert tx.claim_task(t1.id, 0, "me:1", now + 60, now, taking_over=False)
    stale_t1 = h.operation(op.uuid)[1][1]
    with h.store.transaction() as tx:  # the operation ends (failed elsewhere), re-run
        tx.update_operation(op.uuid, status="FAILED")
    assert seq.controls.run_from(op.uuid, t0.id).retcode == 0
    t0_again = h.operation(op.uuid)[1][0]
    with h.store.transaction() as tx:
        assert tx.claim_task(t0.id, t0_again.attempt, "me:1", now + 60, now,
                             taking_over=False)
    t0_again = h.operation(op.uuid)[1][0]
    stored = seq.ends._commit([
        _End(t0_again, None, t0_again.attempt, None, Result(uuid=t0.id), Status.SUCCESS),
        _End(stale_t1, None, 1, None, Result(uuid=t1.id), Status.SUCCESS)])
    assert stored[1] == (None, None)  # the stale end refused
    assert h.operation(op.uuid)[1][1]["queued_attempt"] is not None  # t1 queued again
    h.drain()
    assert h.operation(op.uuid)[0]["status"] == "SUCCESS"


def test_joins_fire_once_with_task_threads_sharing_transactions(h, monkeypatch):
    monkeypatch.setattr(h.registry.settings, "concurrency", 6)
    group = h.registry.sequencer.ends.group
    commit, shared = group._commit, []

    def spy(ends):
        # (two ends of one operation in one transaction: two branches of a fan-out)
        shared.append(len({end.task.operation_id for end in ends}) < len(ends))
        return commit(ends)

    monkeypatch.setattr(group, "_commit", spy)
    fanned = [Fanned().send() for _ in range(40)]
    h.drain()
    assert any(shared)
    for op in fanned:
        row, task_rows = h.operation(op.uuid)
        assert row["status"] == "SUCCESS"
        for task in task_rows:
            assert task["status"] == "SUCCESS" and task["attempt"] == 1
            assert [a["status"] for a in h.attempts(task["id"])] == ["SUCCESS"]


def test_a_sub_operation_s_message_in_a_batch_is_claimed_after_the_bodies(h, monkeypatch):
    """A sub-operation's start or end in a batch holds no claim while the other bodies
    run (its lease is not renewed then): it is read and claimed after them."""
    _, items = first_messages(h, 2, name="n")
    entrypoint, kmsg = items[0]
    child_ended = Message(uuid=kmsg.uuid, entrypoint=kmsg.entrypoint, metadata={"kser": {
        **kmsg.kser_metadata, "mode": "child_ended"}})
    runner = h.registry.sequencer.runner
    claim_in, claimed = runner._claim_in, []

    def recording(batch, indices, outcomes):
        claimed.append((list(indices), list(tasks.CALLS)))
        return claim_in(batch, indices, outcomes)

    monkeypatch.setattr(runner, "_claim_in", recording)
    outcomes = runner.run_tasks([(entrypoint, child_ended), *items])
    assert claimed == [([1, 2], []), ([0], ["step0", "step0"])]  # after both bodies ran
    assert [o.retcode for o in outcomes] == [0, 0, 0]
    assert "nothing to do" in outcomes[0].stdout  # (no such sub-operation: a forged end)
