"""Storing attempts' ends: one at a time (trying again while the store is away, for up
to a lease), or by the group commit (the ends of every task thread's batches, in shared
transactions); then the operation's hooks called and what the ends queued produced."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from cdumay_result import Result

from kser import metrics, tracing
from kser.errors import (
    OperationGoneError,
    RedoError,
    UndeliverableError,
    WorkerFatalError,
    is_transient,
    safe_text,
)
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.decisions import End, Ended, LogLine, Transition, unstorable_result
from kser.sequencing.engine.group import GroupCommit
from kser.sequencing.engine.transitions import Transitions
from kser.status import Status
from kser.store import OutboxRow, TaskRow

logger = logging.getLogger("kser.sequencing.engine.sequencer")  # (the name its lines always had)

#: first and largest wait between two tries to store a finished task's result while the
#: store is unreachable, seconds (it is tried for one lease, then the record is redone)
FINISH_RETRY_MIN, FINISH_RETRY_MAX = 0.5, 5.0
#: an end stored by the group commit: its operation's transitions (None if another worker
#: took its task over), and the error producing what it queued raised, if any
Stored = tuple[list[Transition] | None, Exception | None]
#: most task ends stored in one transaction of the group commit
GROUP_COMMIT_MOST = 256
#: longest the group commit's transaction waits for a row lock (PostgreSQL), seconds
GROUP_LOCK_TIMEOUT = 2.0


class Ends:
    """Stores the ends of one engine's attempts."""

    def __init__(self, ctx: Context, transitions: Transitions) -> None:
        self.ctx, self.transitions = ctx, transitions
        #: stores the ends of every task thread's batches, in shared transactions
        self.group: GroupCommit[End, Stored] = GroupCommit(self._commit, GROUP_COMMIT_MOST)

    def store(self, end: End, deadline: float | None = None) -> Result:
        """Store an attempt's end (trying again while the store is unreachable, for up to a
        lease, or until ``deadline``: the ends of a batch share one), then call the status
        hooks and produce what it queued."""
        task_id, attempt, result = end.task.id, end.attempt, end.result
        delay = FINISH_RETRY_MIN
        if deadline is None:
            deadline = time.monotonic() + self.ctx.settings.task_lease
        while True:
            try:
                ended = self.record(end)
                break
            except (RedoError, UndeliverableError, WorkerFatalError):
                raise
            except OperationGoneError as exc:  # nothing left to store it in, nothing follows
                logger.warning("Task %s attempt %d ended, but %s: its result is not kept",
                               task_id, attempt, exc)
                return result
            except Exception as exc:
                reason = safe_text(getattr(exc, "orig", None) or exc, 1000)
                if not is_transient(exc):
                    # this result can never be stored or forwarded: the task fails with why
                    logger.error("Task %s attempt %d: its result cannot be stored or "
                                 "forwarded (%s): the task FAILED", task_id, attempt, reason)
                    result = unstorable_result(task_id, f"{type(exc).__name__}: {reason}")
                    with tracing.activated(end.trace_context):
                        ended = self._record_failure(end.task, attempt, result, end.logs)
                    if ended is not None:
                        count(end, Status.FAILED)
                    return self.after(end.task.operation_id, ended, result)
                if time.monotonic() >= deadline:
                    raise RedoError(f"store unreachable: {reason}") from exc
                logger.warning("Task %s attempt %d finished, but the store is unreachable "
                               "(%s): storing its result again in %.1f s", task_id, attempt,
                               reason, delay)
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                delay = min(delay * 2, FINISH_RETRY_MAX)
        if ended is not None:  # (None: taken over meanwhile, its end refused)
            count(end)
        return self.after(end.task.operation_id, ended, result)

    def record(self, end: End) -> Ended | None:
        """Store ``end`` in a transaction of its own (see :meth:`Transitions.end`)."""
        with self.ctx.transaction() as tx, tracing.activated(end.trace_context):
            return self.transitions.end(tx, end)

    def after(self, operation_id: str, ended: Ended | None, result: Result) -> Result:
        """Call the status hooks of what a task's end caused, send what it queued."""
        if ended is None:
            return result
        transitions, queued = ended
        self.transitions.call_hooks(operation_id, transitions)
        self.ctx.publish(operation_id, queued, wait=False)
        return result

    def after_stored(self, end: End, transitions: list[Transition] | None,
                     error: Exception | None) -> Result:
        """An end stored by the group commit: the status hooks of what it caused called
        (after what it queued was produced, by the group commit); the error producing it
        raised, if any."""
        if transitions is not None:  # (None: taken over meanwhile, its end refused)
            count(end)
        self.transitions.call_hooks(end.task.operation_id, transitions or [])
        if error is not None:
            raise error
        return end.result

    def _record_failure(self, task_row: TaskRow, attempt: int, result: Result,
                        logs: Iterable[LogLine]) -> Ended | None:
        """The end of an attempt whose own result could not be stored: the task and its
        operation FAILED with ``result``; if even that fails for good, the bare status."""
        try:
            return self.record(End(task_row, None, attempt, None, result, Status.FAILED,
                                   logs=list(logs)))
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.error("Task %s: failure not stored with its details (%s): storing the "
                         "status alone", task_row.id, safe_text(exc, 500))
        with self.ctx.transaction() as tx:
            self.transitions.fail_bare(tx, task_row, attempt, result.stderr)
        return [], []

    def _commit(self, ends: list[End]) -> list[Stored]:
        """The group commit's transaction (in its thread): ``ends``, of any task threads'
        batches, stored together (see :meth:`Transitions.ends`), then what they queued
        produced. For each end: what storing it did (None if taken over meanwhile), and
        the error producing its operation's messages raised, if any."""
        try:
            with self.ctx.transaction() as tx:
                # (a row lock held long, by an operator's session say, fails the group
                # after a while: each thread then stores its own ends, waiting alone; even
                # one end, whose transaction holds every other thread's ends behind it)
                tx.lock_timeout(GROUP_LOCK_TIMEOUT)
                transitions = self.transitions.ends(tx, ends)
                queued = tx.queued
        except WorkerFatalError:
            raise
        except Exception as exc:
            logger.warning("%d task ends could not be stored together (%s): one at a "
                           "time", len(ends), safe_text(exc, 300))
            raise
        by_operation: dict[str, list[OutboxRow]] = {}
        for row in queued:
            by_operation.setdefault(row.operation_id or "", []).append(row)
        stored: list[Stored] = []
        for end, changes in zip(ends, transitions, strict=True):
            if changes is None:
                stored.append((None, None))
                continue
            error: Exception | None = None
            try:  # (committed: from here on nothing raises, each end gets its error)
                # (the rows of its operation: sent with its first end stored here)
                self.ctx.publish(end.task.operation_id,
                                 by_operation.pop(end.task.operation_id, []), wait=False)
            except Exception as exc:
                error = exc
            stored.append((changes, error))
        for operation_id, rows in by_operation.items():  # (exit notifications: sent too)
            try:
                self.ctx.publish(operation_id, rows, wait=False)
            except Exception as exc:  # (unsent rows: the sweep sends them)
                logger.warning("%s", safe_text(exc, 500))
        return stored


def count(end: End, status: str | None = None) -> None:
    """Count a stored attempt's end in the metrics (``status``: as stored, if not as
    its body ended)."""
    metrics.task_ran(end.task.entrypoint, status or (metrics.WAITING if end.poke
                                                     else end.status),
                     end.took, retried=status is None and end.retry_in is not None)
