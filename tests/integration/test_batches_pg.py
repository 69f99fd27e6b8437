"""The batch tests of tests/unit/test_batches.py on PostgreSQL, where each step of a batch
is one statement for all its tasks (arrays), not the one-task statements in a loop."""

import pytest

from tests.unit import tasks
from tests.unit.test_batches import (  # noqa: F401 (collected here, with this module's h)
    batches,
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
