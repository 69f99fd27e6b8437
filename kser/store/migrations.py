"""Versioned schema migrations, applied in order by :func:`migrate`.

Each migration brings the schema from version ``n - 1`` to ``n`` and runs in
its own transaction. Version 1 creates the tables as ``schema.py`` defines
them today, so a later migration checks what already exists before it adds
it: a new database gets every column from version 1, an old one gets it from
the migration that introduced it. A change to the schema appends a function
here and bumps :data:`kser.store.schema.SCHEMA_VERSION`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select, text

from kser.store import schema


def _v1(connection: Connection) -> None:
    """The first schema: operations, tasks, dependencies, attempts, logs, outbox."""
    tables = [schema.operations, schema.tasks, schema.task_dependencies, schema.attempts,
              schema.task_logs, schema.outbox, schema.dead_letters]
    schema.metadata.create_all(connection, tables=tables)


def _v2(connection: Connection) -> None:
    """Delayed messages (retries): ``kser_outbox.due_at``; indexes the sweep uses."""
    columns = {c["name"] for c in inspect(connection).get_columns(schema.outbox.name)}
    if "due_at" not in columns:
        connection.execute(text("ALTER TABLE kser_outbox ADD COLUMN due_at FLOAT"))
    for table, name, columns_sql in (
            (schema.outbox.name, "ix_kser_outbox_due", "(sent_at, due_at)"),
            (schema.tasks.name, "ix_kser_tasks_leases", "(status, lease_expires_at)")):
        if name not in {i["name"] for i in inspect(connection).get_indexes(table)}:
            connection.execute(text(f"CREATE INDEX {name} ON {table} {columns_sql}"))


def _v3(connection: Connection) -> None:
    """An index to find the tasks that depend on a task (each hop reads them)."""
    table, name = schema.task_dependencies.name, "ix_kser_task_dependencies_depends_on"
    if name not in {i["name"] for i in inspect(connection).get_indexes(table)}:
        connection.execute(text(f"CREATE INDEX {name} ON {table} (depends_on)"))


def _v4(connection: Connection) -> None:
    """Dead letters the dead-letter topic did not take; when a sweep re-sent a task."""
    columns = {c["name"] for c in inspect(connection).get_columns(schema.tasks.name)}
    if "resent_at" not in columns:
        connection.execute(text("ALTER TABLE kser_tasks ADD COLUMN resent_at FLOAT"))
    schema.metadata.create_all(connection, tables=[schema.dead_letters])


#: migration n is MIGRATIONS[n - 1]
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4]


def current_version(engine: Engine) -> int:
    """The schema version of the database (0 when it has no kser tables)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(schema.schema_version.name):
            return 0
        versions = connection.execute(select(schema.schema_version.c.version)).scalars().all()
    return max(versions, default=0)


def migrate(engine: Engine) -> int:
    """Apply every migration the database lacks; return the resulting version.

    :raises RuntimeError: the database is newer than this kser (upgrade kser)
    """
    version = current_version(engine)
    if version > schema.SCHEMA_VERSION:
        raise RuntimeError(f"The kser store is at schema version {version}, newer than this "
                           f"kser ({schema.SCHEMA_VERSION}): upgrade kser")
    for number in range(version + 1, schema.SCHEMA_VERSION + 1):
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # workers starting together: one migrates, the others wait, then see it done
                connection.execute(text("SELECT pg_advisory_xact_lock(74657201)"))
            schema.metadata.create_all(connection, tables=[schema.schema_version])
            already = connection.execute(
                select(schema.schema_version.c.version)
                .where(schema.schema_version.c.version == number)).first()
            if already:  # another process migrated meanwhile
                continue
            MIGRATIONS[number - 1](connection)
            connection.execute(schema.schema_version.insert().values(
                version=number, applied_at=time.time()))
    return schema.SCHEMA_VERSION
