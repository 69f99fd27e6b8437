"""Typed rows: what the store reads for operations, tasks and attempts, as dataclasses.

Each is also a read-only mapping of its columns (``row["status"]``, ``dict(row)``), so
code written against the store's former plain rows keeps working; new code reads
attributes (``row.status``), which a type checker follows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from kser.status import Status

R = TypeVar("R", bound="Row")
_STATUSES = {status.value: status for status in Status}


class Row(Mapping[str, Any]):
    """A row of the store, typed: built from the columns a query returned (missing ones
    are None); the base of every row below."""

    _names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_row(cls: type[R], row: Mapping[Any, Any]) -> R:
        names = cls.__dict__.get("_names") or cls._cache_names()
        values = {name: row.get(name) for name in names}
        for name in ("status", "operation_status"):
            value = values.get(name)
            if value is not None:
                values[name] = _STATUSES.get(value) or Status(value)  # (Status() is slow)
        return cls(**values)

    @classmethod
    def _cache_names(cls) -> tuple[str, ...]:
        cls._names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        return cls._names

    def __getitem__(self, key: str) -> Any:
        if key not in type(self)._names and key not in self._cache_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(type(self)._names or self._cache_names())

    def __len__(self) -> int:
        return len(type(self)._names or self._cache_names())


@dataclass(frozen=True, eq=False)
class OperationRow(Row):
    """An operation as stored (``kser_operations``)."""

    id: str
    entrypoint: str
    status: Status
    params: dict[str, Any]
    metadata: dict[str, Any]
    #: the final (or latest) result, as ``dump_result`` wrote it
    result: dict[str, Any] | None
    #: where its tasks go unless they name their own
    topic: str
    exit_notify: dict[str, Any] | None
    ttl_strategy: dict[str, Any] | None
    created_at: float
    updated_at: float
    finished_at: float | None
    #: ``Operation.send(key=...)``'s key (None: none given)
    idempotency_key: str | None = None
    #: (a sub-operation) the task of its parent it runs as, and the parent
    parent_task_id: str | None = None
    parent_operation_id: str | None = None
    #: the result it was sent with (None in rows older than schema 9 that had ended)
    initial_result: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class OperationState(Row):
    """What sequencing an operation's tasks needs of its row, and nothing it would
    decode for nothing: the read (and, on PostgreSQL, the lock) of a task's end."""

    id: str
    status: Status
    #: where its tasks go unless they name their own
    topic: str
    #: the result it was sent with (its first tasks receive it)
    initial_result: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class TaskRow(Row):
    """A task as stored (``kser_tasks``), with what some reads join to it."""

    id: str
    operation_id: str
    position: int
    entrypoint: str
    topic: str | None
    status: Status
    params: dict[str, Any]
    metadata: dict[str, Any]
    result: dict[str, Any] | None
    attempt: int
    worker: str | None
    lease_expires_at: float | None
    started_at: float | None
    finished_at: float | None
    resent_at: float | None
    #: (get_task_to_run) its operation's status
    operation_status: Status | None = None
    #: unique in its operation
    name: str | None = None
    #: when it runs (see kser.sequencing.rules; None: all_success)
    trigger_rule: str | None = None
    #: the attempt whose message was queued (None: never queued since it was reset)
    queued_attempt: int | None = None
    #: (a sensor) when its first poke started; how many pokes found the condition unmet
    waiting_since: float | None = None
    pokes: int | None = None
    #: the digest of the text of the message it was queued with
    message_digest: str | None = None
    #: (dependents, pending_tasks) how many tasks it depends on, and how many of them
    #: succeeded, failed and were skipped
    upstream_count: int | None = None
    upstream_succeeded: int | None = None
    upstream_failed: int | None = None
    upstream_skipped: int | None = None


@dataclass(frozen=True, eq=False)
class AttemptRow(Row):
    """One attempt of a task (``kser_attempts``)."""

    task_id: str
    number: int
    worker: str
    status: Status
    started_at: float
    finished_at: float | None
    retcode: int | None
    error: str | None


@dataclass(frozen=True, eq=False)
class LogRow(Row):
    """One log line of a task attempt (``kser_task_logs``)."""

    id: int
    task_id: str
    attempt: int
    created_at: float
    #: a :mod:`logging` level
    level: int
    message: str


@dataclass(frozen=True, eq=False)
class OutboxRow(Row):
    """A message waiting in the outbox (``kser_outbox``): produced, then marked sent."""

    id: int
    operation_id: str | None
    topic: str
    key: bytes | None
    value: bytes
    #: not sent before this time (a retry's backoff); None: at once
    due_at: float | None
    created_at: float | None = None
    sent_at: float | None = None
    #: the trace context of what queued it (see kser.tracing), for its record's headers
    trace_context: str | None = None
    #: sends the broker did not take for a while
    tries: int | None = None
    #: when the broker refused it for good (never sent again)
    failed_at: float | None = None
    #: why its last send failed
    error: str | None = None


@dataclass(frozen=True, eq=False)
class ScheduleRow(Row):
    """A cron schedule as the schedulers left it (``kser_schedules``)."""

    name: str
    entrypoint: str
    cron: str
    timezone: str
    catchup: str
    #: every fire at or before it was launched or skipped
    handled_until: float | None
    next_fire_at: float | None
    last_fire_at: float | None
    last_operation_id: str | None
    scheduler: str | None
    updated_at: float


@dataclass(frozen=True, eq=False)
class DeadLetterRow(Row):
    """A record a worker could not handle (``kser_dead_letters``)."""

    id: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: the record's headers, ``[[name, base64 value], ...]``
    headers: list[list[str]]
    error: str
    worker: str
    created_at: float
    replayed_at: float | None
