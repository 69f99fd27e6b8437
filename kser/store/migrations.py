"""Versioned schema migrations, frozen: each version's DDL is written out here once and
never changes, whatever ``schema.py`` becomes.

Migration ``n`` brings a store from version ``n - 1`` to ``n`` in its own transaction
(on PostgreSQL under an advisory lock, so workers starting together migrate once).
``kser store migrate`` applies them; a worker, a producer or ``kser demo`` opening a
store applies what it lacks too, and logs it. A store newer than this code is refused.

A change to the schema appends a function here (its DDL written out, never
``schema.py``'s tables) and bumps :data:`kser.store.schema.SCHEMA_VERSION`;
``tests/unit/test_migrations.py`` (SQLite) and ``tests/integration/test_migrations.py``
(PostgreSQL) check that every version migrates to a store identical to ``schema.py``.

Stores whose version 1 was created before the migrations were frozen (kser's version 1
then created ``schema.py``'s tables of the day) may already have what versions 2 to 4
add: those migrations add only what is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

from kser.errors import StoreError
from kser.store import schema

logger = logging.getLogger(__name__)

# -- version 1, as released: operations, tasks, dependencies, attempts, logs, outbox ----

_V1 = MetaData()
Table("kser_operations", _V1,
      Column("id", String(64), primary_key=True),
      Column("entrypoint", String(255), nullable=False),
      Column("status", String(16), nullable=False),
      Column("params", JSON, nullable=False),
      Column("metadata", JSON, nullable=False),
      Column("result", JSON, nullable=True),
      Column("topic", String(255), nullable=False),
      Column("exit_notify", JSON, nullable=True),
      Column("ttl_strategy", JSON, nullable=True),
      Column("created_at", Float, nullable=False),
      Column("updated_at", Float, nullable=False),
      Column("finished_at", Float, nullable=True),
      Index("ix_kser_operations_status_finished", "status", "finished_at"))
Table("kser_tasks", _V1,
      Column("id", String(64), primary_key=True),
      Column("operation_id", String(64), ForeignKey("kser_operations.id", ondelete="CASCADE"),
             nullable=False),
      Column("position", Integer, nullable=False),
      Column("entrypoint", String(255), nullable=False),
      Column("topic", String(255), nullable=True),
      Column("status", String(16), nullable=False),
      Column("params", JSON, nullable=False),
      Column("metadata", JSON, nullable=False),
      Column("result", JSON, nullable=True),
      Column("attempt", Integer, nullable=False),
      Column("worker", String(255), nullable=True),
      Column("lease_expires_at", Float, nullable=True),
      Column("started_at", Float, nullable=True),
      Column("finished_at", Float, nullable=True),
      Index("ix_kser_tasks_operation", "operation_id", "position"))
Table("kser_task_dependencies", _V1,
      Column("task_id", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
             primary_key=True),
      Column("depends_on", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
             primary_key=True))
Table("kser_attempts", _V1,
      Column("task_id", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
             primary_key=True),
      Column("number", Integer, primary_key=True),
      Column("worker", String(255), nullable=False),
      Column("status", String(16), nullable=False),
      Column("started_at", Float, nullable=False),
      Column("finished_at", Float, nullable=True),
      Column("retcode", Integer, nullable=True),
      Column("error", Text, nullable=True))
Table("kser_task_logs", _V1,
      Column("id", Integer, primary_key=True, autoincrement=True),
      Column("task_id", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
             nullable=False),
      Column("attempt", Integer, nullable=False),
      Column("created_at", Float, nullable=False),
      Column("level", Integer, nullable=False),
      Column("message", Text, nullable=False),
      Index("ix_kser_task_logs_task", "task_id", "id"))
Table("kser_outbox", _V1,
      Column("id", Integer, primary_key=True, autoincrement=True),
      Column("operation_id", String(64), ForeignKey("kser_operations.id", ondelete="CASCADE"),
             nullable=True),
      Column("topic", String(255), nullable=False),
      Column("key", LargeBinary, nullable=True),
      Column("value", LargeBinary, nullable=False),
      Column("created_at", Float, nullable=False),
      Column("sent_at", Float, nullable=True),
      Index("ix_kser_outbox_unsent", "operation_id", "sent_at"))

# -- version 4's new table, as released ---------------------------------------------------

_V4 = MetaData()
Table("kser_dead_letters", _V4,
      Column("id", Integer, primary_key=True, autoincrement=True),
      Column("topic", String(255), nullable=False),
      Column("partition", Integer, nullable=False),
      Column("offset", BigInteger, nullable=False),
      Column("key", LargeBinary, nullable=True),
      Column("value", LargeBinary, nullable=True),
      Column("headers", JSON, nullable=False),
      Column("error", Text, nullable=False),
      Column("worker", String(255), nullable=False),
      Column("created_at", Float, nullable=False),
      Column("replayed_at", Float, nullable=True),
      Index("ux_kser_dead_letters_source", "topic", "partition", "offset", unique=True))


# -- version 11's new table, as released --------------------------------------------------

_V11 = MetaData()
Table("kser_schedules", _V11,
    Column("name", String(255), primary_key=True),
    Column("entrypoint", String(255), nullable=False),
    Column("cron", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("catchup", String(16), nullable=False),
    Column("handled_until", Float, nullable=True),
    Column("next_fire_at", Float, nullable=True),
    Column("last_fire_at", Float, nullable=True),
    Column("last_operation_id", String(64), nullable=True),
    Column("scheduler", String(255), nullable=True),
    Column("updated_at", Float, nullable=False))


def _columns(connection: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(connection).get_columns(table)}


def _add_column(connection: Connection, table: str, column: str, sql_type: str) -> None:
    if column not in _columns(connection, table):
        connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


def _add_index(connection: Connection, table: str, name: str, columns_sql: str) -> None:
    if name not in {i["name"] for i in inspect(connection).get_indexes(table)}:
        connection.execute(text(f"CREATE INDEX {name} ON {table} {columns_sql}"))


def _v1(connection: Connection) -> None:
    """The first schema: operations, tasks, dependencies, attempts, logs, outbox."""
    _V1.create_all(connection)


def _v2(connection: Connection) -> None:
    """Delayed messages (retries): ``kser_outbox.due_at``; indexes the sweep uses."""
    _add_column(connection, "kser_outbox", "due_at", "FLOAT")
    _add_index(connection, "kser_outbox", "ix_kser_outbox_due", "(sent_at, due_at)")
    _add_index(connection, "kser_tasks", "ix_kser_tasks_leases", "(status, lease_expires_at)")


def _v3(connection: Connection) -> None:
    """An index to find the tasks that depend on a task (each hop reads them)."""
    _add_index(connection, "kser_task_dependencies", "ix_kser_task_dependencies_depends_on",
               "(depends_on)")


def _v4(connection: Connection) -> None:
    """Dead letters the dead-letter topic did not take; when a sweep re-sent a task."""
    _add_column(connection, "kser_tasks", "resent_at", "FLOAT")
    _V4.create_all(connection)  # (checks first: a store made before the freeze has it)


def _v5(connection: Connection) -> None:
    """Shapes: task names (unique per operation), trigger rules, and the attempt whose
    message was queued (the join's compare-and-set). Existing tasks are named after
    their class (``-2``... on collisions), in their operation's order; the tasks whose
    message is out (RUNNING ones, and PENDING ones whose upstream tasks all succeeded)
    are marked queued, so that their messages are not taken for forged ones."""
    for column, sql_type in (("name", "VARCHAR(255)"), ("trigger_rule", "VARCHAR(32)"),
                             ("queued_attempt", "INTEGER")):
        _add_column(connection, "kser_tasks", column, sql_type)
    rows = connection.execute(text(
        "SELECT id, operation_id, entrypoint FROM kser_tasks WHERE name IS NULL "
        "ORDER BY operation_id, position")).all()
    taken: dict[str, set[str]] = {}
    for row in connection.execute(text(
            "SELECT operation_id, name FROM kser_tasks WHERE name IS NOT NULL")):
        taken.setdefault(row.operation_id, set()).add(row.name)
    for task_id, operation_id, entrypoint in rows:
        names = taken.setdefault(operation_id, set())
        base = entrypoint.rsplit(".", 1)[-1][:240]
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}-{number}"
        names.add(name)
        connection.execute(text("UPDATE kser_tasks SET name = :name WHERE id = :id"),
                           dict(name=name, id=task_id))
    connection.execute(text(
        "UPDATE kser_tasks SET queued_attempt = attempt WHERE status = 'RUNNING'"))
    connection.execute(text(
        "UPDATE kser_tasks SET queued_attempt = attempt + 1 WHERE status = 'PENDING' AND "
        "NOT EXISTS (SELECT 1 FROM kser_task_dependencies d JOIN kser_tasks u "
        "ON u.id = d.depends_on WHERE d.task_id = kser_tasks.id AND u.status != 'SUCCESS')"))
    if "ux_kser_tasks_name" not in {i["name"] for i in inspect(connection).get_indexes(
            "kser_tasks")}:
        connection.execute(text(
            "CREATE UNIQUE INDEX ux_kser_tasks_name ON kser_tasks (operation_id, name)"))


def _v6(connection: Connection) -> None:
    """Sensors: when a task's first poke started, and how many pokes found it unmet;
    idempotent submission: an operation's key, unique."""
    _add_column(connection, "kser_tasks", "waiting_since", "FLOAT")
    _add_column(connection, "kser_tasks", "pokes", "INTEGER")
    _add_column(connection, "kser_operations", "idempotency_key", "VARCHAR(255)")
    if "ux_kser_operations_idempotency_key" not in {
            i["name"] for i in inspect(connection).get_indexes("kser_operations")}:
        connection.execute(text("CREATE UNIQUE INDEX ux_kser_operations_idempotency_key "
                                "ON kser_operations (idempotency_key)"))


def _v7(connection: Connection) -> None:
    """Sub-operations: the parent's task (and operation) a child operation runs as."""
    _add_column(connection, "kser_operations", "parent_task_id", "VARCHAR(64)")
    _add_column(connection, "kser_operations", "parent_operation_id", "VARCHAR(64)")


def _v8(connection: Connection) -> None:
    """The control plane: operations listed newest first, page by page, read in order
    from an index (not sorted whole for each page)."""
    _add_index(connection, "kser_operations", "ix_kser_operations_created",
               "(created_at, id)")


def _v9(connection: Connection) -> None:
    """An operation's initial result kept apart from its final one (a recovered first
    task received the failure). A running operation's ``result`` is still the one it
    was sent with; an ended one's is lost (NULL: its first tasks receive an empty one).
    The leases index made partial and without the status (PostgreSQL planned the hop's
    updates of a task by id and status on it, scanning every PENDING task)."""
    _add_column(connection, "kser_operations", "initial_result", "JSON")
    connection.execute(text("DROP INDEX IF EXISTS ix_kser_tasks_leases"))
    if "ix_kser_tasks_lease_expiry" not in {
            i["name"] for i in inspect(connection).get_indexes("kser_tasks")}:
        connection.execute(text("CREATE INDEX ix_kser_tasks_lease_expiry ON kser_tasks "
                                "(lease_expires_at) WHERE lease_expires_at IS NOT NULL"))
    connection.execute(text(
        "UPDATE kser_operations SET initial_result = result "
        "WHERE status NOT IN ('SUCCESS', 'FAILED', 'CANCELED')"))


def _v10(connection: Connection) -> None:
    """Tracing: an outbox message keeps the trace context of what queued it (its
    record's headers carry it, so a trace crosses workers)."""
    _add_column(connection, "kser_outbox", "trace_context", "TEXT")


def _v11(connection: Connection) -> None:
    """Cron schedules: what the schedulers handled and launched, and their next fires."""
    _V11.create_all(connection)


def _v12(connection: Connection) -> None:
    """Outbox rows the broker refuses: transient refusals back off per row (``tries``,
    ``due_at``), a refusal for good is never sent again (``failed_at``, ``error``). A
    task keeps the digest of the message it was queued with."""
    _add_column(connection, "kser_tasks", "message_digest", "VARCHAR(64)")
    _add_column(connection, "kser_outbox", "tries", "INTEGER")
    _add_column(connection, "kser_outbox", "failed_at", "FLOAT")
    _add_column(connection, "kser_outbox", "error", "TEXT")


#: migration n is MIGRATIONS[n - 1]
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8,
                                                  _v9, _v10, _v11, _v12]


def current_version(engine: Engine) -> int:
    """The schema version of the database (0 when it has no kser tables)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(schema.schema_version.name):
            return 0
        versions = connection.execute(select(schema.schema_version.c.version)).scalars().all()
    return max(versions, default=0)


def migrate(engine: Engine, target: int | None = None) -> tuple[int, int]:
    """Apply every migration the database lacks (up to ``target``, default the latest);
    return its version before and after.

    :raises StoreError: the database is newer than this kser
    """
    target = schema.SCHEMA_VERSION if target is None else target
    version = current_version(engine)
    if version > schema.SCHEMA_VERSION:
        raise StoreError(f"the store is at schema version {version}, newer than this kser "
                         f"(which knows versions up to {schema.SCHEMA_VERSION}): upgrade kser "
                         "on this machine, or point KSER_STORE_URL at another store")
    for number in range(version + 1, target + 1):
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # workers starting together: one migrates, the others wait, then see it done
                connection.execute(text("SELECT pg_advisory_xact_lock(74657201)"))
            schema.schema_version.create(connection, checkfirst=True)
            already = connection.execute(
                select(schema.schema_version.c.version)
                .where(schema.schema_version.c.version == number)).first()
            if already:  # another process migrated meanwhile
                continue
            MIGRATIONS[number - 1](connection)
            connection.execute(schema.schema_version.insert().values(
                version=number, applied_at=time.time()))
    after = max(version, target)
    if after > version:
        logger.info("Store %s migrated from schema version %d to %d",
                    engine.url.render_as_string(hide_password=True), version, after)
    return version, after
