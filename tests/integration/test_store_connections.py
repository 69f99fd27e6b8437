"""Pooled PostgreSQL connections across a server restart (the store pings a connection
before use only when it sat idle: the hop's transactions pay no ping)."""

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from kser.errors import is_transient
from kser.store import Store
from kser.store import store as store_module
from tests.integration.test_migrations import new_database


def backend_pids(store: Store, count: int = 1) -> set[int]:
    pids = set()
    for _ in range(count):
        with store.transaction() as tx:
            pids.add(tx.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())
    return pids


def test_an_idle_connection_is_pinged_and_replaced_after_a_restart(postgres, monkeypatch):
    store = Store(new_database(postgres))
    try:
        before = backend_pids(store)
        postgres.stop()
        postgres.start()
        monkeypatch.setattr(store_module, "PING_AFTER_IDLE", 0.0)  # every checkout pings
        after = backend_pids(store)  # the dead pooled connection failed its ping: no error
        assert after and after.isdisjoint(before)
    finally:
        store.close()


def test_a_busy_connection_is_not_pinged(postgres, monkeypatch):
    # "a moment ago" however slow the machine: never idle long enough for a ping
    monkeypatch.setattr(store_module, "PING_AFTER_IDLE", 3600.0)
    store = Store(new_database(postgres))
    try:
        pid = backend_pids(store).pop()
        with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=kser dbname=kser",
                             autocommit=True) as watcher:
            watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # used a moment ago, the connection is trusted: its loss fails this transaction
        # with a transient error (redone by the caller), and the pool is renewed
        with pytest.raises(OperationalError) as raised:
            with store.transaction() as tx:
                tx.connection.exec_driver_sql("SELECT 1")
        assert is_transient(raised.value)
        assert backend_pids(store)  # the next one works
    finally:
        store.close()
