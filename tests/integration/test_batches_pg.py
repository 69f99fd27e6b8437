"""The batch tests of tests/unit/test_batches.py on PostgreSQL, where each step of a batch
is one statement for all its tasks (arrays), not the one-task statements in a loop."""

import threading

import pytest

from kser.sequencing.engine import ends as ends_module
from tests.unit import tasks
from tests.unit.test_batches import (  # noqa: F401 (collected here, with this module's h)
    batches,
    first_messages,
    test_a_failure_a_batch_cannot_get_past_is_redone_per_message,
    test_a_store_failure_while_claiming_a_batch_leaves_each_message_to_itself,
    test_each_message_of_a_batch_gets_its_own_outcome,
    test_ends_of_several_threads_batches_share_a_transaction,
    test_ends_that_cannot_be_stored_together_are_stored_one_at_a_time,
    test_operations_in_hand_run_in_batches_and_every_join_fires_once,
)
from tests.unit.test_sequencing import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
def h(memory_broker_name, pg_url, monkeypatch):
    tasks.CALLS.clear()
    harness = Harness(memory_broker_name, pg_url, monkeypatch)
    yield harness
    harness.store.close()


def test_a_row_lock_held_long_fails_the_group_and_each_thread_stores_its_own(
        h, monkeypatch, caplog):
    """An operation row locked elsewhere (an operator's session) fails the shared
    transaction after GROUP_LOCK_TIMEOUT instead of holding every task thread behind it;
    the ends are then stored one at a time, the locked one once the lock is gone."""
    monkeypatch.setattr(ends_module, "GROUP_LOCK_TIMEOUT", 0.2)
    ops, items = first_messages(h, 3, name="n")
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with h.store.transaction() as tx:
            tx.connection.exec_driver_sql(
                "SELECT id FROM kser_operations WHERE id = %(id)s FOR UPDATE",
                {"id": ops[1].uuid})
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(10)
    group = h.registry.sequencer.ends.group
    commit_ends, failed = group._commit, []

    def then_release(ends):  # the lock goes once the group failed, not after a set time
        try:
            return commit_ends(ends)
        except Exception as exc:
            failed.append(exc)
            release.set()
            raise

    monkeypatch.setattr(group, "_commit", then_release)  # (what the group commit calls)
    try:
        outcomes = h.registry.sequencer.run_tasks(items)
    finally:
        release.set()
        holder.join(10)
    assert len(failed) == 1  # the shared transaction failed on the lock, and only it
    assert [o.retcode for o in outcomes] == [0, 0, 0]
    assert "3 task ends could not be stored together" in caplog.text
    assert "lock timeout" in caplog.text
    h.drain()
    for op in ops:
        assert h.operation(op.uuid)[0]["status"] == "SUCCESS"
