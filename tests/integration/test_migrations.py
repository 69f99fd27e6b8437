"""Frozen migrations on a real PostgreSQL: every version migrates to exactly the store
schema.py describes, keeping its rows (tests/unit/test_migrations.py: SQLite)."""

import uuid

import psycopg
import pytest

from kser.store import Store, schema
from kser.store.migrations import current_version
from tests.schemas import describe, model, store_at


def new_database(postgres) -> str:
    name = f"kser_m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=kser dbname=kser",
                         autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.parametrize("version", range(1, schema.SCHEMA_VERSION + 1))
def test_every_version_migrates_to_the_schema_the_code_uses(postgres, version):
    url = new_database(postgres)
    old = store_at(url, version)
    with old.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO kser_operations (id, entrypoint, status, params, metadata, topic, "
            "created_at, updated_at) VALUES ('op', 'a.Op', 'FAILED', '{}', '{}', 't', 1, 1)")
    old.dispose()
    store = Store(url)
    assert store.migrated == (version, schema.SCHEMA_VERSION)
    assert current_version(store.engine) == schema.SCHEMA_VERSION
    reference = model(new_database(postgres))
    assert describe(store.engine) == describe(reference)
    with store.transaction() as tx:
        assert tx.get_operation("op")["status"] == "FAILED"
    store.close()
    reference.dispose()


def _open_store(url, results):
    try:
        Store(url).close()
        results.put("ok")
    except Exception as exc:  # reported by the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_sqlite_store_together_all_open_it(tmp_path):
    """Two workers started together on a new SQLite file both switch it to WAL mode, and
    SQLite answered one of them "database is locked" at once (about 1 start in 6 here,
    seen as a dice example consumer that would not start): the second now waits."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters, like workers
    failures = []
    for round_ in range(20):
        url = f"sqlite:///{tmp_path}/r{round_}/kser.db"
        results = context.Queue()
        openers = [context.Process(target=_open_store, args=(url, results)) for _ in range(2)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(60)
        failures += [r for r in (results.get(timeout=10) for _ in openers) if r != "ok"]
    assert failures == []
