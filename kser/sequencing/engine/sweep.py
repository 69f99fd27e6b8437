"""The sweep: what no message will do any more, done periodically by every worker —
tasks whose worker stopped renewing its lease re-sent, parents not told that their
sub-operation ended told again, outbox rows left unsent sent."""

from __future__ import annotations

import logging
import time

from kser.errors import RedoError
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.transitions import Transitions
from kser.sequencing.graph import forwarded

logger = logging.getLogger("kser.sequencing.engine.sequencer")  # (the name its lines always had)

#: seconds after which an undelayed outbox row still unsent was left by a dead worker
UNSENT_GRACE = 10.0
#: most operations whose unsent outbox rows one sweep sends (those waiting longest first)
SWEEP_MOST = 200


class Sweeper:
    """Sweeps the store of one engine."""

    def __init__(self, ctx: Context, transitions: Transitions) -> None:
        self.ctx, self.transitions = ctx, transitions
        self.last = 0.0

    def sweep(self, force: bool = False) -> int:
        """Re-emit tasks whose lease expired and outbox rows left unsent; at most every
        ``sweep_interval`` seconds unless ``force``. Returns the messages sent."""
        settings = self.ctx.settings
        if not force and time.monotonic() - self.last < settings.sweep_interval:
            return 0
        if not self.ctx.runs_operations:
            return 0  # no operation runs here: nothing to sweep, no store to open
        self.last = time.monotonic()
        now = time.time()
        with self.ctx.transaction() as tx:
            orphans = tx.end_orphaned_tasks(now)
            expired = tx.expired_tasks(now, settings.task_lease)
            for task in expired:
                op = tx.operation(task.operation_id)
                tasks = {t.id: t for t in tx.get_tasks(op.id)}
                deps = tx.dependencies(op.id).get(task.id, ())
                # (re-sent as the queueing its attempts came from: a takeover moves the
                # attempt on, not the queueing, and a message naming the attempt was
                # judged a stale copy once a second worker had died with the task; ready
                # since the lease expired: each re-send of this lease the same text, so
                # none makes another stale)
                self.transitions.queue_task(tx, op, task, forwarded(op, tasks, deps),
                                            queued=task.queued_attempt or task.attempt,
                                            cas=False, ready_at=task.lease_expires_at)
            operations = {task.operation_id for task in expired}
            children = tx.ended_children(now, settings.task_lease)
            for child in children:  # their parents' tasks were not told: tell them again
                self.transitions.queue_child_ended(tx, child, child.result)
            operations.update(child.id for child in children)
            operations.update(tx.operations_with_unsent(now - UNSENT_GRACE, now, SWEEP_MOST))
        if expired:
            logger.warning("Sweep: %d task(s) whose worker stopped renewing its lease "
                           "re-sent", len(expired))
        if orphans:
            logger.warning("Sweep: %d task(s) whose worker stopped after their operation "
                           "ended marked CANCELED", orphans)
        sent = 0
        for op_id in operations:  # (rows refused for good are marked, not raised)
            try:
                sent += self.ctx.publish(op_id)
            except RedoError as exc:  # the broker is away: the others wait for the next pass
                logger.warning("Sweep: %s (the other operations' messages wait for the next "
                               "sweep)", exc)
                break
        self.ctx.outbox.flush_sent()  # (what the sends refused is marked now, not later)
        return sent
