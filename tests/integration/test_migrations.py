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
