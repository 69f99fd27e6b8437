"""Attempts: claimed (a task taken, its lease), finished, their log lines; what the sweep finds
expired or orphaned."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update

from kser.errors import safe_text
from kser.status import FINAL_STATUSES, Status
from kser.store import queries as q
from kser.store import schema
from kser.store.rows import (
    AttemptRow,
    LogRow,
    OperationRow,
    TaskRow,
)
from kser.store.tx.base import (
    TxBase,
    _log_rows,
)

logger = logging.getLogger("kser.store.store")  # (the name its lines always had)

#: leases after which a task re-sent by the sweep, and still not taken over, is re-sent
#: again (its message was delivered: this is a last resort, not the way it runs)
RESEND_AGAIN = 10


class AttemptQueries(TxBase):
    """Attempts: claimed (a task taken, its lease), finished, their log lines; what the sweep finds
    expired or orphaned."""

    def claim_task(self, task_id: str, attempt: int, worker: str, lease_until: float,
                   now: float, taking_over: bool = True) -> bool:
        """Start attempt ``attempt + 1`` if the task is PENDING, or RUNNING with an expired
        lease or on this very worker (which is not running it any more: it is here).

        A compare-and-set on (status, attempt): of two workers racing for the
        same task, exactly one gets True. ``taking_over=False`` (the task was
        read PENDING) skips closing a RUNNING attempt that cannot exist.
        """
        params = dict(b_id=task_id, b_attempt=attempt, b_next=attempt + 1, b_worker=worker,
                      b_lease=lease_until, b_now=now)
        # a taken-over attempt ended when its worker stopped renewing
        error = (f"lease expired: its worker stopped; taken over by {worker}"
                 if taking_over else "")
        if self.connection.dialect.name == "postgresql":  # one round trip
            cursor = self._dbapi().cursor()
            cursor.execute(q.CLAIM_PG_TAKING_OVER if taking_over else q.CLAIM_PG,
                           dict(params, b_error=error) if taking_over else params)
            claimed = cursor.fetchone() is not None
            cursor.close()
            return claimed
        claimed = self._execute(q.CLAIM, params) == 1
        if claimed:
            if taking_over:
                self._execute(q.TAKEN_OVER, dict(b_id=task_id, b_attempt=attempt, b_now=now,
                                                b_error=error))
            self._execute(q.NEW_ATTEMPT, params)
        return claimed

    def claim_pending(self, claims: list[tuple[str, int]], worker: str, lease_until: float,
                      now: float) -> set[str]:
        """:meth:`claim_task` of several PENDING tasks ``(task id, attempt)``, none taken
        over; the ids of those claimed (one task: the hop's statement, not arrays)."""
        if not claims:
            return set()
        if not self._postgresql or len(claims) == 1:
            return {task_id for task_id, attempt in claims
                    if self.claim_task(task_id, attempt, worker, lease_until, now,
                                       taking_over=False)}
        claims = sorted(claims)  # (rows locked in one order: batches never deadlock)
        rows = self._raw(q.CLAIM_PENDING_PG, dict(
            b_ids=[task_id for task_id, _ in claims], b_attempts=[a for _, a in claims],
            b_worker=worker, b_lease=lease_until, b_now=now))
        return {row["task_id"] for row in rows}

    def finish_attempts(self, ends: list[tuple[str, int, str, dict[str, Any] | None,
                                               str | None, str]], now: float) -> set[str]:
        """:meth:`finish_attempt` of several attempts ``(task id, attempt, status, result,
        error, task status)``; the ids of the tasks finished (the others were taken over
        meanwhile: nothing is written for them). One attempt: the hop's statement, not
        arrays."""
        if not ends:
            return set()
        if not self._postgresql or len(ends) == 1:
            return {task_id for task_id, attempt, status, result, error, task_status in ends
                    if self.finish_attempt(task_id, attempt, status, result, now, error,
                                           task_status=task_status)}
        ends = sorted(ends, key=lambda end: end[0])  # (rows locked in one order)
        retry = [task_status == Status.PENDING for *_, task_status in ends]
        rows = self._raw(q.FINISH_MANY_PG, dict(
            b_ids=[end[0] for end in ends], b_attempts=[end[1] for end in ends],
            b_task_statuses=[end[5] for end in ends],
            b_results=[None if again or end[3] is None else json.dumps(end[3])
                       for end, again in zip(ends, retry, strict=True)],
            b_finished=[None if again else now for again in retry],
            b_statuses=[end[2] for end in ends],
            b_retcodes=[None if end[3] is None else end[3].get("retcode") for end in ends],
            b_errors=[None if end[4] is None else safe_text(end[4], None) for end in ends],
            b_now=now))
        return {row["id"] for row in rows}

    def finish_poke(self, task_id: str, attempt: int, since: float) -> bool:
        """End attempt ``attempt`` of a sensor whose condition is not met yet without using
        it up: the task is PENDING again at the attempt before, its attempt row removed,
        ``pokes`` counted and ``waiting_since`` kept from the first poke. False if another
        worker took the task over meanwhile: nothing is written."""
        task = schema.tasks.c
        done = self.connection.execute(
            update(schema.tasks)
            .where(and_(task.id == task_id, task.attempt == attempt,
                        task.status == Status.RUNNING))
            .values(status=Status.PENDING, attempt=attempt - 1, lease_expires_at=None,
                    queued_attempt=None, waiting_since=func.coalesce(task.waiting_since, since),
                    pokes=func.coalesce(task.pokes, 0) + 1)).rowcount == 1
        if done:
            self.connection.execute(delete(schema.attempts).where(
                and_(q.ATTEMPT.task_id == task_id, q.ATTEMPT.number == attempt)))
        return done

    def renew_lease(self, task_id: str, attempt: int, lease_until: float) -> bool:
        """Extend the lease of a RUNNING attempt; False if it is no longer ours."""
        return self._execute(q.RENEW, dict(b_id=task_id, b_attempt=attempt,
                                          b_lease=lease_until)) == 1

    def renew_leases(self, held: list[tuple[str, int]], lease_until: float) -> set[str]:
        """:meth:`renew_lease` of several attempts ``(task id, attempt)``; the ids of those
        renewed (PostgreSQL: one statement, however many a worker holds)."""
        if not self._postgresql or len(held) == 1:
            return {task_id for task_id, attempt in held
                    if self.renew_lease(task_id, attempt, lease_until)}
        held = sorted(held)  # (rows locked in one order: batches never deadlock)
        rows = self._raw(q.RENEW_MANY_PG, dict(
            b_ids=[task_id for task_id, _ in held], b_attempts=[a for _, a in held],
            b_lease=lease_until))
        return {row["id"] for row in rows}

    def finish_attempt(self, task_id: str, attempt: int, status: str,
                       result: dict[str, Any] | None,
                       now: float, error: str | None, task_status: str | None = None) -> bool:
        """Record the end of attempt ``attempt`` (``status``) and the task's new status
        (``task_status``, default the same; PENDING for a retry, whose result is not kept).

        False if another worker took the task over meanwhile: nothing is written.
        """
        task_status = task_status or status
        retry = task_status == Status.PENDING
        retcode = None if result is None else result.get("retcode")
        error = None if error is None else safe_text(error, None)
        if self.connection.dialect.name == "postgresql":  # one round trip
            cursor = self._dbapi().cursor()
            cursor.execute(q.FINISH_PG, dict(
                b_id=task_id, b_attempt=attempt, b_task_status=task_status,
                b_result=None if retry or result is None else json.dumps(result),
                b_finished=None if retry else now, b_status=status, b_now=now,
                b_retcode=retcode, b_error=error))
            count: int = cursor.fetchone()[0]
            cursor.close()
            return count == 1
        finished = self._execute(q.FINISH_TASK, dict(
            b_id=task_id, b_attempt=attempt, b_status=task_status,
            b_result=None if retry else result, b_finished=None if retry else now)) == 1
        if finished:
            self._execute(q.FINISH_ATTEMPT, dict(
                b_id=task_id, b_attempt=attempt, b_status=status, b_now=now,
                b_retcode=retcode, b_error=error))
        return finished

    def add_logs(self, task_id: str, attempt: int, lines: Iterable[tuple[float, int, str]]) -> None:
        """Store an attempt's log lines: at most :data:`MAX_LOG_LINES`, each cut at
        :data:`MAX_LOG_LINE` characters, made safe for a text column."""
        self.add_logs_many([(task_id, attempt, lines)])

    def add_logs_many(self, logs: Iterable[tuple[str, int, Iterable[tuple[float, int, str]]]]
                      ) -> None:
        """:meth:`add_logs` of several attempts ``(task id, attempt, lines)``, in one
        statement."""
        rows: list[dict[str, Any]] = []
        for task_id, attempt, lines in logs:
            rows.extend(_log_rows(task_id, attempt, list(lines)))
        if rows:
            self.connection.execute(schema.task_logs.insert(), rows)

    def get_logs(self, task_id: str) -> list[LogRow]:
        """The log lines of a task, every attempt's, in the order they were written."""
        return self._read_as(LogRow, select(schema.task_logs)
                             .where(schema.task_logs.c.task_id == task_id)
                             .order_by(schema.task_logs.c.id))

    def get_attempts(self, task_id: str) -> list[AttemptRow]:
        """The attempts of a task, first first."""
        return self._read_as(AttemptRow, select(schema.attempts)
                             .where(schema.attempts.c.task_id == task_id)
                             .order_by(schema.attempts.c.number))

    def expired_tasks(self, now: float, lease: float) -> list[TaskRow]:
        """RUNNING tasks of RUNNING operations whose lease is past (their worker stopped),
        each marked re-sent: once per lease that expired (a task re-sent, then taken over
        by a worker that stopped too, is re-sent again), and again only after
        :data:`RESEND_AGAIN` leases. Each re-send is a new message that makes the ones
        before it stale: re-sent every lease, the messages of hundreds of tasks held by a
        dead worker (async bodies) were stale before a worker got to them, for good."""
        task, op = schema.tasks.c, schema.operations.c
        expired = self._read_as(TaskRow, select(schema.tasks).join(
            schema.operations, op.id == task.operation_id).where(
            and_(task.status == Status.RUNNING, task.lease_expires_at < now,
                 op.status == Status.RUNNING,
                 or_(task.resent_at.is_(None), task.resent_at < task.lease_expires_at,
                     task.resent_at < now - RESEND_AGAIN * lease)))
            # (PostgreSQL: two workers' sweeps at once re-send each task once)
            .with_for_update(of=schema.tasks, skip_locked=True))
        if expired:
            self.connection.execute(update(schema.tasks)
                                    .where(task.id.in_([row.id for row in expired]))
                                    .values(resent_at=now))
        return expired

    def ended_children(self, now: float, lease: float) -> list[OperationRow]:
        """Child operations that ended while their parent's task still waits for them
        (its child_ended message lost, or dead-lettered), and that no sweep told again
        in the last ``lease`` seconds; each parent's task is marked told."""
        task, child = schema.tasks.c, schema.operations.c
        ended = self._read_as(OperationRow, select(schema.operations).join(
            schema.tasks, task.id == child.parent_task_id).where(and_(
                child.status.in_(FINAL_STATUSES), task.status == Status.RUNNING,
                task.lease_expires_at.is_(None), child.finished_at < now - lease,
                or_(task.resent_at.is_(None), task.resent_at < now - lease))))
        if ended:
            self.connection.execute(update(schema.tasks)
                                    .where(task.id.in_([row.id for row in ended]))
                                    .values(resent_at=now))
        return ended

    def end_orphaned_tasks(self, now: float) -> int:
        """RUNNING tasks whose lease is past in operations that already ended (canceled,
        failed): their worker stopped and nothing may take them over. Each becomes
        CANCELED, its attempt FAILED; returns how many."""
        task, op = schema.tasks.c, schema.operations.c
        orphans = self._read(
            select(task.id, task.attempt, op.status.label("operation_status"))
            .join(schema.operations, op.id == task.operation_id)
            .where(and_(task.status == Status.RUNNING, task.lease_expires_at < now,
                        op.status != Status.RUNNING)))
        for orphan in orphans:
            task_id, attempt, op_status = (orphan["id"], orphan["attempt"],
                                           orphan["operation_status"])
            self.connection.execute(update(schema.tasks).where(task.id == task_id)
                                    .values(status=Status.CANCELED, finished_at=now,
                                            lease_expires_at=None))
            self.connection.execute(
                update(schema.attempts)
                .where(and_(q.ATTEMPT.task_id == task_id, q.ATTEMPT.number == attempt,
                            q.ATTEMPT.status == Status.RUNNING))
                .values(status=Status.FAILED, finished_at=now,
                        error=f"lease expired: its worker stopped after the operation "
                              f"was {op_status}; not taken over"))
        return len(orphans)
