"""The JSON representations of the REST API, built from the store's rows (one function
per kind of thing: the same representation wherever it is returned)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kser.dlq import DeadLetter
from kser.store import AttemptRow, LogRow, OperationRow, ScheduleRow, TaskRow


def timestamp(value: float | None) -> datetime | None:
    """A stored time (seconds since the epoch) as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def task_view(task: TaskRow, depends_on: list[str]) -> dict[str, Any]:
    return dict(id=task.id, name=task.name, entrypoint=task.entrypoint, status=task.status,
                attempt=task.attempt, worker=task.worker,
                started_at=timestamp(task.started_at), finished_at=timestamp(task.finished_at),
                result=task.result, depends_on=depends_on, trigger_rule=task.trigger_rule)


def operation_view(op: OperationRow, url: str, tasks: list[TaskRow] | None = None,
                   dependencies: dict[str, set[str]] | None = None) -> dict[str, Any]:
    """An operation; with its tasks (in the order it built them) when ``tasks`` is given."""
    view: dict[str, Any] = dict(
        id=op.id, entrypoint=op.entrypoint, status=op.status, params=op.params,
        result=op.result, created_at=timestamp(op.created_at),
        updated_at=timestamp(op.updated_at), finished_at=timestamp(op.finished_at),
        parent_operation_id=op.parent_operation_id, url=url)
    if tasks is not None:
        position = {task.id: task.position for task in tasks}
        view["tasks"] = [task_view(task, sorted((dependencies or {}).get(task.id, ()),
                                                key=lambda t: position.get(t, 0)))
                         for task in tasks]
    return view


def log_view(line: LogRow) -> dict[str, Any]:
    return dict(attempt=line.attempt, at=timestamp(line.created_at),
                level=logging.getLevelName(line.level), message=line.message)


def attempt_view(attempt: AttemptRow) -> dict[str, Any]:
    seconds = (None if attempt.finished_at is None
               else round(attempt.finished_at - attempt.started_at, 6))
    return dict(number=attempt.number, worker=attempt.worker, status=attempt.status,
                started_at=timestamp(attempt.started_at),
                finished_at=timestamp(attempt.finished_at), seconds=seconds,
                retcode=attempt.retcode, error=attempt.error)


def schedule_view(row: ScheduleRow, next_runs: list[float], active: bool) -> dict[str, Any]:
    return dict(name=row.name, entrypoint=row.entrypoint, cron=row.cron,
                timezone=row.timezone, catchup=row.catchup, active=active,
                next_runs=[timestamp(run) for run in next_runs],
                last_run=timestamp(row.last_fire_at), last_operation_id=row.last_operation_id,
                handled_until=timestamp(row.handled_until), scheduler=row.scheduler,
                updated_at=timestamp(row.updated_at))


def dead_letter_view(letter: DeadLetter) -> dict[str, Any]:
    topic, partition, offset = letter.source
    return dict(where=letter.where, source_topic=topic, source_partition=partition,
                source_offset=offset, error=letter.error, preview=letter.preview(200))
