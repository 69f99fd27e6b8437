"""Sub-operations: an operation that is a task of another runs as a child operation of
its own (its id is the task's), and the parent's task ends as the child did."""

from __future__ import annotations

import time

from cdumay_result import Result

from kser.results import exception_result
from kser.schemas import Message, dump_result
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.decisions import End, attempt_end, child_end
from kser.sequencing.engine.ends import Ends
from kser.sequencing.engine.transitions import Transitions
from kser.sequencing.graph import load_result
from kser.sequencing.operation import Operation
from kser.status import Status
from kser.store import TaskRow


class Children:
    """Starts the sub-operations of one engine's tasks, and ends their parents' tasks."""

    def __init__(self, ctx: Context, transitions: Transitions, ends: Ends) -> None:
        self.ctx, self.transitions, self.ends = ctx, transitions, ends

    def start(self, entrypoint: type[Operation], kmsg: Message, task_row: TaskRow,
              attempt: int) -> Result:
        """Run an operation that is a task of another as a child operation: its own row
        (its id is the task's), started in the transaction that leaves the parent's task
        RUNNING without a lease (waiting for the child, holding nothing). A child already
        there is recovered (FAILED or CANCELED: the parent was recovered) or run again
        from the start (SUCCESS: the parent was re-run from before it)."""
        task_id = task_row.id
        try:
            child = entrypoint(uuid=task_id, params=task_row.params,
                               metadata=dict(task_row.metadata or {}),
                               result=load_result(dump_result(kmsg.result), task_id))
            child.build(**child.params)
            child.check_required_params()
        except Exception as exc:  # it cannot be built: the parent's task fails with why
            return self._fail(entrypoint, task_row, attempt, exception_result(exc, task_id))
        with self.ctx.transaction() as tx:
            parent = tx.operation(task_row.operation_id, lock=True)
            current = tx.get_task(task_id)
            if (parent.status != Status.RUNNING or current is None
                    or current.status != Status.RUNNING
                    or current.attempt != attempt):  # canceled, or taken over, meanwhile
                return Result(uuid=task_id, stdout=f"Task {task_id}: its operation is "
                              f"{parent.status}, or another worker took it over: nothing "
                              "started")
            existing = tx.get_operation(task_id, lock=True)
            squatted = existing is not None and (
                existing.parent_task_id, existing.parent_operation_id) != (
                task_id, task_row.operation_id)
            if squatted:
                pass  # (ended below, outside this transaction)
            elif existing is None:
                self.transitions.insert(tx, child, parent.topic, parent=task_row)
            elif existing.status != Status.RUNNING:
                tasks = tx.get_tasks(task_id)
                again = ([t.id for t in tasks] if existing.status == Status.SUCCESS
                         else self.transitions.reset_failed(tx, task_id, tasks))
                tx.reset_tasks(again)
                self.transitions.restart(tx, task_id)
            if not squatted:
                tx.update_task(task_id, lease_expires_at=None)
        if squatted:  # (an older kser let a message take the id): the task fails, saying why
            return self._fail(entrypoint, task_row, attempt, Result(
                uuid=task_id, retcode=409, stderr=(
                    f"An operation {task_id} that is not this task's sub-operation holds "
                    "its id in the store (a message sent with a task's id): nothing "
                    "started; delete that operation, then recover this one")))
        self.ctx.publish(task_id)
        self.ctx.publish(task_row.operation_id)  # (a child without tasks ended at once)
        return Result(uuid=task_id, stdout=f"Sub-operation {entrypoint.path}[{task_id}] "
                      "started")

    def ended(self, task_row: TaskRow) -> Result:
        """A child operation ended: its parent's task ends as it did, with its result
        (only for the parent's task waiting for this very child: a forged message
        changes nothing)."""
        with self.ctx.transaction() as tx:
            child = tx.get_operation(task_row.id)
        found = child_end(child, task_row)
        if found is None:
            return Result(uuid=task_row.id, stdout=f"Task {task_row.id}: nothing to do "
                          "(its sub-operation did not end, or it ended already)")
        result, status = found
        ended = self.ends.record(End(task_row, None, task_row.attempt, None, result, status))
        return self.ends.after(task_row.operation_id, ended, result)

    def _fail(self, entrypoint: type[Operation], task_row: TaskRow, attempt: int,
              result: Result) -> Result:
        """The parent's task ends with ``result`` (its child could not start), retried as
        any failure would be."""
        now = time.time()
        return self.ends.store(attempt_end(entrypoint, task_row, None, result, forwarded=None,
                                           attempt=attempt, mode=None, since=now, now=now))
