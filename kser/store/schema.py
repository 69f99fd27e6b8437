"""The store's tables, in one place (SQLAlchemy Core; SQLite and PostgreSQL).

Times are UNIX timestamps in seconds (floats): the same arithmetic on every
database, and leases and retention compare them with ``time.time()``.

A task's dependencies are rows of ``task_dependencies``: a chain is task n
depending on task n-1, a parallel group tasks depending on the same one, a join
a task depending on several. ``outbox`` holds every message a state change causes, written in
the same transaction as the change and marked sent once Kafka acknowledged it.
``dead_letters`` keeps the records the dead-letter topic did not take.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

#: the schema version this code expects (see kser/store/migrations.py)
SCHEMA_VERSION = 12

schema_version = Table(
    "kser_schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

operations = Table(
    "kser_operations", metadata,
    Column("id", String(64), primary_key=True),
    Column("entrypoint", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    #: the final (or latest) result of the operation
    Column("result", JSON, nullable=True),
    #: the result it was sent with, which its first tasks receive (again when recovered
    #: or re-run: ``result`` is then the final one); NULL in rows older than schema 9
    Column("initial_result", JSON, nullable=True),
    #: topic the operation's tasks go to unless a task names its own
    Column("topic", String(255), nullable=False),
    #: {"topic": ..., "payload": ..., "entrypoint": ...} or NULL
    Column("exit_notify", JSON, nullable=True),
    #: {"seconds_after_success": s, "seconds_after_failure": s,
    #:  "seconds_after_completion": s} or NULL to keep forever
    Column("ttl_strategy", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    #: ``Operation.send(key=...)``: a second send with the same key gets this operation
    Column("idempotency_key", String(255), nullable=True),
    #: (a sub-operation) the parent's task it runs as (its id is that task's id)
    Column("parent_task_id", String(64), nullable=True),
    Column("parent_operation_id", String(64), nullable=True),
    Index("ix_kser_operations_status_finished", "status", "finished_at"),
    Index("ux_kser_operations_idempotency_key", "idempotency_key", unique=True),
    #: the control plane lists operations newest first, page by page
    Index("ix_kser_operations_created", "created_at", "id"),
)

tasks = Table(
    "kser_tasks", metadata,
    Column("id", String(64), primary_key=True),
    Column("operation_id", String(64), ForeignKey("kser_operations.id", ondelete="CASCADE"),
           nullable=False),
    #: order in which the operation built it (display order; dependencies decide)
    Column("position", Integer, nullable=False),
    Column("entrypoint", String(255), nullable=False),
    #: topic of this task's messages (NULL: the operation's topic)
    Column("topic", String(255), nullable=True),
    Column("status", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    #: the accumulated result after this task ran (what the next task receives)
    Column("result", JSON, nullable=True),
    #: number of the current (or last) attempt; 0 before the first one
    Column("attempt", Integer, nullable=False, default=0),
    #: ``host:pid`` of the worker running (or that ran) the current attempt
    Column("worker", String(255), nullable=True),
    #: a RUNNING attempt whose lease is past may be taken over by another worker
    Column("lease_expires_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    #: when a sweep last re-sent this task because its lease had expired: the next
    #: sweep waits a lease before re-sending it again (one takeover, not one per second)
    Column("resent_at", Float, nullable=True),
    #: unique in its operation (controls take it as well as the id)
    Column("name", String(255), nullable=True),
    #: when it runs, from its upstream tasks' states (NULL: all_success)
    Column("trigger_rule", String(32), nullable=True),
    #: the attempt whose message was queued: set by a compare-and-set when the task is
    #: made ready, so that of two transitions making it ready at once (a join) one
    #: queues it; a task message for a task never queued is early or forged
    Column("queued_attempt", Integer, nullable=True),
    #: (a sensor) when its first poke started, and how many pokes found the condition
    #: unmet: each such poke ends without using up an attempt, and the next one is a
    #: delayed message (nothing is held in between)
    Column("waiting_since", Float, nullable=True),
    Column("pokes", Integer, nullable=True),
    #: the digest of the text of the message it was queued with (kser.schemas.wire_digest):
    #: a copy of that message changed in any way (another forwarded result, other params)
    #: is forged, and runs nothing
    Column("message_digest", String(64), nullable=True),
    Index("ix_kser_tasks_operation", "operation_id", "position"),
    Index("ux_kser_tasks_name", "operation_id", "name", unique=True),
    #: the sweep's expired leases; partial (only held leases) and without the status, so
    #: that a statement naming a task by id and status is never planned on it: a scan of
    #: every PENDING or RUNNING task (and their dead index entries) instead of one row
    Index("ix_kser_tasks_lease_expiry", "lease_expires_at",
          postgresql_where=text("lease_expires_at IS NOT NULL"),
          sqlite_where=text("lease_expires_at IS NOT NULL")),
)

task_dependencies = Table(
    "kser_task_dependencies", metadata,
    Column("task_id", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
           primary_key=True),
    Column("depends_on", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
           primary_key=True),
    #: the tasks a finished task may make ready, found without reading its operation
    Index("ix_kser_task_dependencies_depends_on", "depends_on"),
)

attempts = Table(
    "kser_attempts", metadata,
    Column("task_id", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
           primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("worker", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("retcode", Integer, nullable=True),
    Column("error", Text, nullable=True),
)

task_logs = Table(
    "kser_task_logs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(64), ForeignKey("kser_tasks.id", ondelete="CASCADE"),
           nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("level", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Index("ix_kser_task_logs_task", "task_id", "id"),
)

outbox = Table(
    "kser_outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("operation_id", String(64), ForeignKey("kser_operations.id", ondelete="CASCADE"),
           nullable=True),
    Column("topic", String(255), nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    #: not to be sent before this time (a retry's backoff); NULL: at once
    Column("due_at", Float, nullable=True),
    Column("sent_at", Float, nullable=True),
    #: the trace context (W3C, as JSON) of what queued it: its record's headers carry it
    Column("trace_context", Text, nullable=True),
    #: sends the broker did not take for a while (each pushes ``due_at`` back, doubling)
    Column("tries", Integer, nullable=True),
    #: when the broker refused it for good (never sent again: kept as a dead letter)
    Column("failed_at", Float, nullable=True),
    #: why its last send failed
    Column("error", Text, nullable=True),
    Index("ix_kser_outbox_unsent", "operation_id", "sent_at"),
    Index("ix_kser_outbox_due", "sent_at", "due_at"),
)

dead_letters = Table(
    "kser_dead_letters", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: where the record was consumed: a record dead-lettered twice (a restart before its
    #: commit) is stored once
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    #: the record as it was (value NULL: a null record)
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=True),
    #: the record's own headers: [[name, base64 value], ...]
    Column("headers", JSON, nullable=False),
    #: why it could not be processed, and why the dead-letter topic did not take it
    Column("error", Text, nullable=False),
    Column("worker", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    #: when ``kser dlq replay`` sent it back to its topic (NULL: not yet)
    Column("replayed_at", Float, nullable=True),
    Index("ux_kser_dead_letters_source", "topic", "partition", "offset", unique=True),
)

#: cron schedules (kser.sequencing.schedules): what the schedulers handled and launched
schedules = Table(
    "kser_schedules", metadata,
    #: the schedule's name (its launches' keys are schedule:<name>:<fire time>)
    Column("name", String(255), primary_key=True),
    Column("entrypoint", String(255), nullable=False),
    Column("cron", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("catchup", String(16), nullable=False),
    #: every fire at or before it was launched or skipped
    Column("handled_until", Float, nullable=True),
    Column("next_fire_at", Float, nullable=True),
    #: the last fire launched, and its operation
    Column("last_fire_at", Float, nullable=True),
    Column("last_operation_id", String(64), nullable=True),
    #: which scheduler wrote last
    Column("scheduler", String(255), nullable=True),
    Column("updated_at", Float, nullable=False),
)
