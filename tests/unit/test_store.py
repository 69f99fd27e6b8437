"""The store's schema versioning and retention rules (SQLite)."""

import time

import pytest
from sqlalchemy import inspect

from kser.store import Store, schema
from kser.store.migrations import current_version, migrate
from kser.store.store import StoreError, _expired


def test_a_new_store_is_migrated_to_the_current_version(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/a.db")
    assert current_version(store.engine) == schema.SCHEMA_VERSION == 12
    tables = set(inspect(store.engine).get_table_names())
    assert {"kser_operations", "kser_tasks", "kser_task_dependencies", "kser_attempts",
            "kser_task_logs", "kser_outbox", "kser_dead_letters",
            "kser_schema_version"} <= tables
    assert migrate(store.engine) == (12, 12)  # idempotent
    store.close()


def test_a_version_1_store_is_migrated_to_the_current_version(tmp_path):
    url = f"sqlite:///{tmp_path}/v1.db"
    store = Store(url)
    with store.engine.begin() as connection:  # turn it back into what version 1 created
        connection.exec_driver_sql("DROP INDEX ix_kser_outbox_due")
        connection.exec_driver_sql("DROP INDEX ix_kser_tasks_lease_expiry")
        connection.exec_driver_sql("DROP INDEX ix_kser_task_dependencies_depends_on")
        connection.exec_driver_sql("ALTER TABLE kser_outbox DROP COLUMN due_at")
        connection.exec_driver_sql("ALTER TABLE kser_tasks DROP COLUMN resent_at")
        connection.exec_driver_sql("DROP TABLE kser_dead_letters")
        connection.exec_driver_sql("DELETE FROM kser_schema_version WHERE version > 1")
    store.close()
    assert current_version(Store(url).engine) == schema.SCHEMA_VERSION
    inspector = inspect(Store(url).engine)
    assert "due_at" in {c["name"] for c in inspector.get_columns("kser_outbox")}
    assert "resent_at" in {c["name"] for c in inspector.get_columns("kser_tasks")}
    assert "kser_dead_letters" in inspector.get_table_names()
    assert "ix_kser_task_dependencies_depends_on" in {
        i["name"] for i in inspector.get_indexes("kser_task_dependencies")}


def test_a_store_newer_than_this_kser_is_refused(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/b.db")
    with store.engine.begin() as connection:
        connection.execute(schema.schema_version.insert().values(version=99, applied_at=0))
    with pytest.raises(StoreError, match="newer than this kser"):
        Store(f"sqlite:///{tmp_path}/b.db")
    store.close()


@pytest.mark.parametrize("status, ttl, age, expired", [
    ("SUCCESS", {"seconds_after_success": 60}, 61, True),
    ("SUCCESS", {"seconds_after_success": 60}, 59, False),
    ("FAILED", {"seconds_after_success": 60}, 600, False),
    ("FAILED", {"seconds_after_failure": 60}, 61, True),
    ("CANCELED", {"seconds_after_completion": 10}, 11, True),
    ("SUCCESS", {"seconds_after_completion": 10, "seconds_after_success": 100}, 11, True),
    ("SUCCESS", None, 10**9, False),
])
def test_retention_rules(status, ttl, age, expired):
    now = time.time()
    assert _expired(status, now - age, ttl, now) is expired


def test_purge_deletes_an_operation_with_everything_it_owns(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/c.db")
    now = time.time()
    with store.transaction() as tx:
        tx.insert_operation(dict(id="op", entrypoint="x.Op", status="SUCCESS", params={},
                                 metadata={}, topic="t", created_at=now, updated_at=now,
                                 finished_at=now - 10,
                                 ttl_strategy={"seconds_after_success": 1}))
        tx.insert_tasks([dict(id=f"t{i}", operation_id="op", position=i, entrypoint="x.T",
                              status="SUCCESS", params={}, metadata={}, attempt=1)
                         for i in range(2)], [("t1", "t0")])
        tx.add_logs("t0", 1, [(now, 20, "hello")])
        tx.add_outbox("op", "t", b"k", b"v")
    with store.transaction() as tx:
        assert tx.purge(now) == 1
    with store.engine.connect() as connection:
        for table in schema.metadata.sorted_tables:
            if table is not schema.schema_version:
                assert connection.execute(table.select()).first() is None, table.name
    store.close()


def test_the_store_reads_typed_rows_that_still_read_as_mappings(tmp_path):
    import time as _time

    from kser.status import Status
    from kser.store import AttemptRow, OperationRow, TaskRow

    store = Store(f"sqlite:///{tmp_path}/rows.db")
    now = _time.time()
    with store.transaction() as tx:
        tx.insert_operation(dict(id="op", entrypoint="a.Op", status="RUNNING", params={"x": 1},
                                 metadata={}, topic="t", created_at=now, updated_at=now))
        tx.insert_tasks([dict(id="t1", operation_id="op", position=0, entrypoint="a.T",
                              status="PENDING", params={}, metadata={}, attempt=0)], [])
        assert tx.claim_task("t1", 0, "w", now + 10, now)
    with store.transaction() as tx:
        op, [task], [attempt] = tx.get_operation("op"), tx.get_tasks("op"), tx.get_attempts("t1")
        to_run = tx.get_task_to_run("t1")
    assert isinstance(op, OperationRow) and op.status is Status.RUNNING and op.params == {"x": 1}
    assert isinstance(task, TaskRow) and task.status is Status.RUNNING and task.attempt == 1
    assert isinstance(attempt, AttemptRow) and attempt.worker == "w"
    assert to_run.operation_status is Status.RUNNING and to_run.queued_attempt is None
    assert op["status"] == "RUNNING" and dict(op)["topic"] == "t"  # still a mapping
    assert op.get("nothing") is None and "entrypoint" in op
    with pytest.raises(KeyError):
        op["nothing"]
    store.close()
