"""Frozen migrations (SQLite): every version migrates to exactly schema.py's store, keeping
its rows; tests/integration/test_migrations.py does the same on PostgreSQL."""

import pytest
from click.testing import CliRunner

from kser.cli import main
from kser.store import Store, schema
from kser.store.migrations import MIGRATIONS, current_version, migrate
from tests.schemas import describe, model, store_at

VERSIONS = range(1, schema.SCHEMA_VERSION + 1)


def test_the_latest_version_is_the_schema_the_code_uses(tmp_path):
    migrated = store_at(f"sqlite:///{tmp_path}/m.db", schema.SCHEMA_VERSION)
    assert describe(migrated) == describe(model(f"sqlite:///{tmp_path}/s.db"))
    assert len(MIGRATIONS) == schema.SCHEMA_VERSION


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_migrates_to_the_latest_keeping_its_rows(tmp_path, version):
    url = f"sqlite:///{tmp_path}/v{version}.db"
    old = store_at(url, version)
    assert current_version(old) == version
    with old.begin() as connection:  # what every version since 1 can hold
        connection.exec_driver_sql(
            "INSERT INTO kser_operations (id, entrypoint, status, params, metadata, topic, "
            "created_at, updated_at) VALUES ('op', 'a.Op', 'RUNNING', '{}', '{}', 't', 1, 1)")
        connection.exec_driver_sql(
            "INSERT INTO kser_tasks (id, operation_id, position, entrypoint, status, params, "
            "metadata, attempt) VALUES ('t1', 'op', 0, 'a.T', 'PENDING', '{}', '{}', 0)")
    old.dispose()
    store = Store(url)  # what a worker does: migrates what the store lacks
    assert current_version(store.engine) == schema.SCHEMA_VERSION
    assert describe(store.engine) == describe(model(f"sqlite:///{tmp_path}/s.db"))
    with store.transaction() as tx:
        assert tx.get_operation("op")["status"] == "RUNNING"
        assert [t["id"] for t in tx.get_tasks("op")] == ["t1"]
    store.close()


def test_migrating_twice_changes_nothing(tmp_path):
    engine = store_at(f"sqlite:///{tmp_path}/m.db", schema.SCHEMA_VERSION)
    before = describe(engine)
    assert migrate(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    assert describe(engine) == before


def test_kser_store_migrate_says_what_it_did(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    store_at(url, 1).dispose()
    runner = CliRunner()
    first = runner.invoke(main, ["store", "migrate", "--store-url", url])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == (f"store {url}: migrated from schema version 1 to "
                                    f"{schema.SCHEMA_VERSION}")
    again = runner.invoke(main, ["store", "migrate", "--store-url", url])
    assert again.output.strip() == (f"store {url}: already at schema version "
                                    f"{schema.SCHEMA_VERSION}")


def test_a_store_newer_than_the_code_is_refused_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/new.db"
    engine = store_at(url, schema.SCHEMA_VERSION)
    with engine.begin() as connection:
        connection.execute(schema.schema_version.insert().values(version=99, applied_at=0))
    result = CliRunner().invoke(main, ["store", "migrate", "--store-url", url])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"kser: the store is at schema version 99, newer than this kser (which knows "
        f"versions up to {schema.SCHEMA_VERSION}): upgrade kser on this machine, or point "
        "KSER_STORE_URL at another store")


def _version_4_operation(url: str, op_status: str, statuses: list[str]) -> None:
    """A WithFlaky operation (step, flaky step, step) as kser wrote it at schema version 4."""
    from tests.unit import tasks

    engine = store_at(url, 4)
    entrypoints = [tasks.Step.path, tasks.FlakyStep.path, tasks.Step.path]
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO kser_operations (id, entrypoint, status, params, metadata, result, "
            "topic, created_at, updated_at) VALUES ('op4', ?, ?, '{}', '{}', NULL, 'ops', 1, 1)",
            (tasks.WithFlaky.path, op_status))
        for position, (entrypoint, status) in enumerate(zip(entrypoints, statuses, strict=True)):
            done = status in ("SUCCESS", "FAILED")
            retcode = 0 if status == "SUCCESS" else 500
            result = (f'{{"uuid": "t{position}", "retcode": {retcode}, "stdout": "", '
                      '"stderr": "", "retval": {"seen": [0]}}' if done else None)
            connection.exec_driver_sql(
                "INSERT INTO kser_tasks (id, operation_id, position, entrypoint, status, params, "
                "metadata, result, attempt) VALUES (?, 'op4', ?, ?, ?, ?, '{}', ?, ?)",
                (f"t{position}", position, entrypoint, status,
                 f'{{"index": {position}}}', result, 1 if done else 0))
            if position:
                connection.exec_driver_sql(
                    "INSERT INTO kser_task_dependencies (task_id, depends_on) VALUES (?, ?)",
                    (f"t{position}", f"t{position - 1}"))
    engine.dispose()


def test_a_failed_operation_of_a_version_4_store_recovers_after_the_upgrade(
        tmp_path, memory_broker_name, monkeypatch):
    from tests.unit import tasks
    from tests.unit.test_sequencing import Harness

    url = f"sqlite:///{tmp_path}/v4.db"
    _version_4_operation(url, "FAILED", ["SUCCESS", "FAILED", "PENDING"])
    h = Harness(memory_broker_name, url, monkeypatch)  # opening the store migrates it
    tasks.CALLS.clear()
    tasks.FLAKY["fail"] = False
    assert h.registry.recover("op4").retcode == 0
    h.drain()
    op, task_rows = h.operation("op4")
    assert op.status == "SUCCESS"
    assert [(t.name, t.status) for t in task_rows] == [
        ("Step", "SUCCESS"), ("FlakyStep", "SUCCESS"), ("Step-2", "SUCCESS")]
    assert tasks.CALLS == ["flaky2", "step2"]  # the step before kept its result
    assert op.result["retval"]["seen"] == [0, 2]
    h.store.close()


def test_a_task_message_sent_before_the_upgrade_still_runs_after_it(
        tmp_path, memory_broker_name, monkeypatch):
    from kser.schemas import Message
    from tests.unit import tasks
    from tests.unit.test_sequencing import Harness

    url = f"sqlite:///{tmp_path}/v4.db"
    _version_4_operation(url, "RUNNING", ["SUCCESS", "PENDING", "PENDING"])
    h = Harness(memory_broker_name, url, monkeypatch)
    tasks.CALLS.clear()
    tasks.FLAKY["fail"] = False
    # the message version 4 sent for the flaky step, still in the topic at the upgrade
    h.registry._get_producer().send("ops", Message(
        "t1", tasks.FlakyStep.path, params={"index": 1},
        result={"uuid": "t0", "retcode": 0, "retval": {"seen": [0]}},
        metadata={"kser": {"operation_id": "op4", "task_id": "t1"}}))
    h.drain()
    op, _ = h.operation("op4")
    assert op.status == "SUCCESS" and tasks.CALLS == ["flaky1", "step2"]
    h.store.close()


def test_version_9_keeps_the_initial_result_of_running_operations_only(tmp_path):
    url = f"sqlite:///{tmp_path}/v8.db"
    engine = store_at(url, 8)
    with engine.begin() as connection:
        for op_id, status in (("running", "RUNNING"), ("failed", "FAILED")):
            connection.exec_driver_sql(
                "INSERT INTO kser_operations (id, entrypoint, status, params, metadata, "
                "result, topic, created_at, updated_at) VALUES (?, 'e', ?, '{}', '{}', ?, "
                "'ops', 1, 1)", (op_id, status, f'{{"retval": "{op_id}"}}'))
    engine.dispose()
    store = Store(url)
    with store.transaction() as tx:
        # a running operation still holds what it was sent with; an ended one's is lost
        assert tx.operation("running").initial_result == {"retval": "running"}
        assert tx.operation("failed").initial_result is None
    store.close()
