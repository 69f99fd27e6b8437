"""The Store: one transaction per state change. The statements are named in
:mod:`kser.store.queries`, run by the transaction's queries (:mod:`kser.store.tx`, one
class per table group); this module opens the database and hands out transactions."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import QueuePool

from kser.errors import (
    StoreError,
    WorkerFatalError,
    is_transient,
    safe_text,
)
from kser.store.migrations import migrate
from kser.store.tx import Tx as Tx  # (its queries, by table group: kser/store/tx/)
from kser.store.tx.base import MAX_LOG_LINE as MAX_LOG_LINE
from kser.store.tx.base import MAX_LOG_LINES as MAX_LOG_LINES
from kser.store.tx.base import _expired as _expired

logger = logging.getLogger(__name__)


class Store:
    """The database of operations, tasks and the outbox.

    A SQLite file is watched: if it is removed or replaced while open, the next
    transaction raises :class:`~kser.errors.WorkerFatalError` (writes would go to
    a file nobody will ever read). After a transient error (a lost connection, a
    locked or read-only database), every pooled connection is renewed, so the store
    recovers as soon as the database does.

    :param url: SQLAlchemy URL, e.g. ``sqlite:///kser.db`` or
        ``postgresql+psycopg://kser:kser@127.0.0.1:5432/kser``
    :raises StoreError: the store cannot be opened, with what to check
    """

    def __init__(self, url: str, connections: int = 5):
        """:param connections: connections kept open (as many as the threads that use
            the store at once: a worker's task threads, its lease renewal, its main
            thread); more are opened when needed, and closed after use"""
        self.url = url
        #: the schema versions before and after the migrations this store applied when
        #: it was opened (see :mod:`kser.store.migrations`)
        self.migrated: tuple[int, int] = (0, 0)
        try:
            self.engine = _create_engine(_checked_url(url), max(1, connections))
            self.migrated = migrate(self.engine)
        except StoreError:
            raise
        except Exception as exc:
            reason = " ".join(safe_text(getattr(exc, "orig", None) or exc).split())
            raise StoreError(f"the store {_hide_password(url)} cannot be used: {reason}; check "
                             f"KSER_STORE_URL ({SUPPORTED_STORES})") from exc
        self._watched = _sqlite_file(self.engine)
        self._identity = _identity(self._watched) if self._watched else None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction, committed when the block ends, rolled back if it raises."""
        if self._watched is not None:
            self.check_file()
        try:
            with self.engine.begin() as connection:
                yield Tx(connection)
        except Exception as exc:
            if is_transient(exc):
                # a connection that saw the database fail may keep failing after it is
                # fine again (SQLite keeps a read-only state): renew every one
                self.engine.dispose()
            raise

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A transaction that only reads (on SQLite it takes no write lock: the workers'
        transactions never wait for it); rolled back when the block ends."""
        if self._watched is not None:
            self.check_file()
        with self.engine.connect() as connection:
            connection.execution_options(kser_read_only=True)
            with connection.begin() as transaction:
                yield Tx(connection)
                transaction.rollback()

    def check_file(self) -> None:
        """Raise :class:`~kser.errors.WorkerFatalError` if the SQLite file this store
        opened was removed or replaced (a no-op for other stores)."""
        if self._watched is None:
            return
        identity = _identity(self._watched)
        if identity == self._identity:
            return
        change = "removed" if identity is None else "replaced by another file"
        raise WorkerFatalError(
            f"the SQLite store {self._watched} was {change} while in use: stopping, as "
            "writes would go to a file nobody reads; put the file back (or point "
            "KSER_STORE_URL at the right one) and restart")

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)})"


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _sqlite_file(engine: Engine) -> str | None:
    """The path of a SQLite file database (None for in-memory ones and other databases)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:"):
        return None
    return os.path.abspath(url.database)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


#: the databases kser stores in, as said to a user whose URL names another
SUPPORTED_STORES = ("SQLite, sqlite:///path/to/kser.db (one machine), or PostgreSQL, "
                    "postgresql+psycopg://user:password@host/db (pip install "
                    "'kser[postgres]'; many machines)")


def _checked_url(url: str) -> str:
    """``url``, its driver made psycopg 3 for a bare ``postgresql://``; refuse, saying what
    is supported, a URL naming a database kser does not store in; create the folder of
    a SQLite file (its state directory) when it is missing."""
    try:
        parsed = make_url(url)
    except Exception:
        raise StoreError(f"the store URL {_hide_password(url)!r} is not a database URL: "
                         f"kser stores in {SUPPORTED_STORES}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):  # (postgres://: libpq's and Heroku's spelling)
        if driver not in ("", "psycopg"):
            raise StoreError(f"the store URL {_hide_password(url)} names the driver {driver}: "
                             "kser uses psycopg 3, postgresql+psycopg://user:password@host/db")
        return parsed.set(drivername="postgresql+psycopg").render_as_string(
            hide_password=False)
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"the store URL {_hide_password(url)} names {backend}, which kser "
                         f"does not store in: use {SUPPORTED_STORES}")
    database = parsed.database or ""
    if backend == "sqlite" and (database in ("", ":memory:") or "mode=memory" in url):
        raise StoreError(f"the store URL {url} is an in-memory SQLite database, which each "
                         "connection of the pool would see empty: use a file, "
                         "sqlite:///path/to/kser.db")
    if backend == "sqlite" and not database.startswith("file:"):
        folder = os.path.dirname(database)
        if folder and not os.path.isdir(folder):
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"the folder of the SQLite store {database} cannot be "
                                 f"created ({exc.strerror}): check KSER_STORE_URL") from None
    return url


#: longest wait for another process switching a new SQLite file to WAL mode, seconds
WAL_SWITCH_TIMEOUT = 30.0


def _use_wal(cursor: Any) -> None:
    """Put the SQLite file in WAL mode (it stays so). Two processes opening a new file
    at once (two workers started together) may both try to switch it, and SQLite then
    answers "database is locked" at once, without waiting its busy timeout: wait for the
    other one instead (found by the dice example's two consumers)."""
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


#: seconds a pooled PostgreSQL connection may sit idle before it is pinged on its next use
PING_AFTER_IDLE = 2.0


def _create_engine(url: str, connections: int = 5) -> Engine:
    if url.startswith("sqlite"):
        # a pool of open connections: opening one costs its PRAGMAs, and closing the last
        # one checkpoints the WAL (an fsync) -- both per transaction with no pool
        # (no rollback on check-in: every checkout is a transaction() that ended with
        # COMMIT or ROLLBACK, and a rollback per transaction costs a call into SQLite)
        # (last in, first out: a thread's next transaction gets the connection it just
        # returned, whose page cache is still valid; first in, first out rotated through
        # them all, each reading again what another had written since its last use)
        engine = create_engine(url, poolclass=QueuePool, pool_size=connections, max_overflow=5,
                               pool_reset_on_return=None, pool_use_lifo=True,
                               connect_args={"timeout": 60, "isolation_level": None,
                                             "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_settings(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # take the write lock at BEGIN: two writers never deadlock on a lock upgrade
            # (on the DB-API connection: SQLAlchemy's execution path cost more than it)
            sqlite: Any = connection.connection.dbapi_connection  # a sqlite3.Connection
            read_only = connection.get_execution_options().get("kser_read_only")
            sqlite.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    # (last in, first out, as SQLite's: its statements prepared, its backend's caches warm)
    engine = create_engine(url, pool_size=connections, max_overflow=5, pool_use_lifo=True)

    # A connection is pinged before use only after it sat idle (the server may have
    # restarted meanwhile): a ping at every checkout was a round trip per transaction,
    # a tenth of a hop's time. One that fails the ping is replaced at once; one that
    # breaks mid-transaction fails it with a transient error, and the pool is renewed.
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["kser_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("kser_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection lost: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection lost")

    return engine
