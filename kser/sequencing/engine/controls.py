"""Operator controls of operations: cancel, recover, run_from, run_one, purge.

Each returns a ``Result`` (see :func:`control`); each is one transaction of the store,
and the messages it causes go through the outbox like any transition's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from cdumay_result import Result

from kser.errors import ControlRefusedError as ControlRefusedError
from kser.errors import RedoError, UndeliverableError
from kser.sequencing.engine.decisions import Mode
from kser.sequencing.graph import descendants, forwarded
from kser.status import FINAL_STATUSES, Status
from kser.store import OperationRow, TaskRow, Tx

if TYPE_CHECKING:
    from kser.sequencing.engine.context import Context
    from kser.sequencing.engine.transitions import Transitions

CANCELED, FAILED, PENDING, RUNNING = Status.CANCELED, Status.FAILED, Status.PENDING, Status.RUNNING

S = TypeVar("S")
P = ParamSpec("P")


def control(method: Callable[Concatenate[S, str, P], Result]
            ) -> Callable[Concatenate[S, str, P], Result]:
    """A public control: it always returns a ``Result``: retcode 0 when done (also when
    its messages could not be sent at once: they wait in the outbox for a sweep), 404
    when the operation or task is unknown, 409 when their state does not allow it
    (stderr says why). Only a failing store raises."""

    @functools.wraps(method)
    def control(self: S, operation_id: str, /, *args: P.args, **kwargs: P.kwargs) -> Result:
        try:
            return method(self, operation_id, *args, **kwargs)
        except ControlRefusedError as exc:
            return Result(uuid=operation_id, retcode=exc.retcode, stderr=exc.message)
        except (RedoError, UndeliverableError) as exc:
            # stored: only sending its messages failed, and they wait in the outbox
            return Result(uuid=operation_id, stdout=f"{method.__name__}({operation_id}) done "
                          "in the store; its messages wait in the outbox, where a worker's "
                          f"sweep sends them (sending now failed: {exc})")

    return control


class Controls:
    """The controls of the operations one engine runs: each one transaction calling the
    engine's transitions, then its messages produced."""

    def __init__(self, ctx: Context, transitions: Transitions) -> None:
        self.ctx, self.transitions = ctx, transitions

    @control
    def cancel(self, operation_id: str) -> Result:
        """Cancel an operation: pending tasks CANCELED, nothing more emitted.

        A task already running finishes, but nothing follows it.
        """
        with self.ctx.transaction() as tx:
            op = self.get_operation(tx, operation_id, lock=True)
            if op.status in FINAL_STATUSES:
                raise ControlRefusedError(409, f"Operation {operation_id} is already "
                                     f"{op.status}: nothing to cancel")
            transition = self.transitions.finish_operation(tx, operation_id, CANCELED, op.result)
        self.transitions.notify_status(operation_id, [transition])
        self.ctx.publish(operation_id)
        return Result(uuid=operation_id, stdout=f"Operation {operation_id} canceled")

    @control
    def recover(self, operation_id: str) -> Result:
        """Restart a FAILED operation: its failed (or canceled) tasks and what depends on
        them run again; the others keep their results."""
        with self.ctx.transaction() as tx:
            op = self.get_operation(tx, operation_id, lock=True)
            if op.status != FAILED:
                raise ControlRefusedError(409, f"Operation {operation_id} is {op.status}: "
                                     "only a FAILED one recovers")
            reset = self.transitions.reset_failed(tx, operation_id,
                                                  tx.get_tasks(operation_id))
            tx.reset_tasks(reset)
            self._restart(tx, operation_id)
        self.transitions.notify_status(operation_id, [(RUNNING, None)])
        sent = self.ctx.publish(operation_id)
        return Result(uuid=operation_id, stdout=f"Operation {operation_id} recovered: "
                      f"{len(reset)} task(s) reset, {sent} message(s) sent")

    @control
    def run_from(self, operation_id: str, task_id: str) -> Result:
        """Reset the task (its id or name) and every task that depends on it, then run
        from it."""
        with self.ctx.transaction() as tx:
            op = self.get_operation(tx, operation_id, lock=True)
            if op.status == RUNNING:
                raise ControlRefusedError(409, f"Operation {operation_id} is RUNNING: cancel it "
                                     "first")
            reset = descendants(tx.dependencies(operation_id), self.get_task(tx, op, task_id))
            tx.reset_tasks(reset)
            self._restart(tx, operation_id)
        self.transitions.notify_status(operation_id, [(RUNNING, None)])
        self.ctx.publish(operation_id)
        return Result(uuid=operation_id, stdout=f"Operation {operation_id}: {len(reset)} "
                      f"task(s) reset from {task_id}")

    @control
    def run_one(self, operation_id: str, task_id: str) -> Result:
        """Run one task (its id or name) again with the results its upstream tasks left,
        without continuing.

        The operation's status does not change (synergy_flow's run_one).
        """
        with self.ctx.transaction() as tx:
            op = self.get_operation(tx, operation_id, lock=True)
            if op.status == RUNNING:
                raise ControlRefusedError(409, f"Operation {operation_id} is RUNNING: cancel it "
                                     "first")
            task_id = self.get_task(tx, op, task_id).id
            tx.reset_tasks([task_id], keep_result=True)
            tasks = {t.id: t for t in tx.get_tasks(operation_id)}
            deps = tx.dependencies(operation_id).get(task_id, ())
            self.transitions.queue_task(tx, op, tasks[task_id], forwarded(op, tasks, deps),
                                        mode=Mode.ONE, queued=tasks[task_id].attempt + 1)
        self.ctx.publish(operation_id)
        return Result(uuid=operation_id, stdout=f"Task {task_id} sent to run once")

    def purge(self) -> int:
        """Delete finished operations whose TTL strategy expired; return how many."""
        with self.ctx.transaction() as tx:
            return tx.purge(time.time())

    def _restart(self, tx: Tx, operation_id: str) -> None:
        if not self.transitions.restart(tx, operation_id):
            raise ControlRefusedError(409, f"Operation {operation_id} has no task ready to run")

    @staticmethod
    def get_operation(tx: Tx, operation_id: str, lock: bool = False) -> OperationRow:
        op = tx.get_operation(operation_id, lock=lock)
        if op is None:
            raise ControlRefusedError(404, f"No operation {operation_id} in the store")
        return op

    @staticmethod
    def get_task(tx: Tx, op: OperationRow, task: str) -> TaskRow:
        """The task of ``op`` whose id or name is ``task``."""
        found = tx.get_task(task)
        if found is None or found.operation_id != op.id:
            found = next((t for t in tx.get_tasks(op.id) if t.name == task), None)
        if found is None:
            raise ControlRefusedError(404, f"Operation {op.id} has no task {task} (neither "
                                      "an id nor a name of its tasks)")
        return found
