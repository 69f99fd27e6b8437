"""The sequencer: operation and task messages → store transitions → next messages.

The flow of one operation:

1. An operation is *submitted* (an operation message reached a consumer, or
   ``Operation.send()``/``launch()`` ran in a producer): :mod:`kser.sequencing.engine.submit`
   stores it, its tasks and the messages of the ready ones in one transaction, then
   produces them.
2. A *task message* reaches any consumer: :mod:`kser.sequencing.engine.runner` claims the task
   (a compare-and-set on status and attempt, with a lease renewed while it runs), runs
   it, and in one transaction (:mod:`kser.sequencing.engine.ends`) its result, its log lines, the
   operation's new status and the messages of the tasks it made ready are stored.
3. The consumer commits the Kafka offset last.

What happens at each step is decided by pure functions
(:mod:`kser.sequencing.engine.decisions`) and written by :mod:`kser.sequencing.engine.transitions`;
the operator's controls (:mod:`kser.sequencing.engine.controls`) and the sweep
(:mod:`kser.sequencing.engine.sweep`) call the same transitions.

Every step is idempotent: a duplicate message of a finished task re-sends any unsent
outbox rows and does nothing else; a task running on a live worker is not started
twice; a task whose worker died is taken over once its lease expired (a periodic
:meth:`Sequencer.sweep` re-emits it if no message does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cdumay_result import Result

from kser.aio import Later
from kser.entry import Entrypoint
from kser.errors import RedoError, UndeliverableError, WorkerFatalError
from kser.schemas import Message
from kser.sequencing.builtins import BUILT_INS
from kser.sequencing.engine.bodies import upstream_results
from kser.sequencing.engine.children import Children
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.controls import Controls, control
from kser.sequencing.engine.decisions import UPSTREAM_FAILED as UPSTREAM_FAILED
from kser.sequencing.engine.decisions import Ended as Ended
from kser.sequencing.engine.decisions import Mode
from kser.sequencing.engine.decisions import Transition as Transition
from kser.sequencing.engine.ends import GROUP_COMMIT_MOST as GROUP_COMMIT_MOST
from kser.sequencing.engine.ends import Ends
from kser.sequencing.engine.outbox import Outbox
from kser.sequencing.engine.runner import BATCH_WINDOW as BATCH_WINDOW
from kser.sequencing.engine.runner import Item, Runner, failure
from kser.sequencing.engine.submit import Submitter
from kser.sequencing.engine.sweep import Sweeper
from kser.sequencing.engine.transitions import EXIT_ENTRYPOINT as EXIT_ENTRYPOINT
from kser.sequencing.engine.transitions import Transitions
from kser.sequencing.graph import load_result
from kser.sequencing.operation import Operation
from kser.status import FINAL_STATUSES, Status
from kser.store import OutboxRow, Store

if TYPE_CHECKING:
    from kser.config import Settings
    from kser.pace import Pace

#: the mode of the message that tells a sub-operation's parent task its child ended
CHILD_ENDED = Mode.CHILD_ENDED


class Sequencer:
    """Runs operations durably for one registry: its parts, wired once.

    :param ctx: the engine's context (entrypoints, settings, store, producer, codec),
        built by the registry
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: the store-applying layer of the engine's decisions
        self.transitions = Transitions(ctx)
        ctx.outbox.on_refused = self.transitions.message_refused
        self.ends = Ends(ctx, self.transitions)
        self.children = Children(ctx, self.transitions, self.ends)
        self.runner = Runner(ctx, self.transitions, self.ends, self.children)
        self.submitter = Submitter(ctx, self.transitions)
        self.sweeper = Sweeper(ctx, self.transitions)
        #: the operator controls (cancel, recover, run_from, run_one, purge)
        self.controls = Controls(ctx, self.transitions)

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def store(self) -> Store:
        """The store, opened (and migrated) on first use."""
        return self.ctx.store

    @store.setter
    def store(self, store: Store) -> None:
        self.ctx.store = store

    @property
    def outbox(self) -> Outbox:
        return self.ctx.outbox

    @property
    def pace(self) -> Pace:
        """How long task bodies took lately: sizes the batches."""
        return self.ctx.pace

    @property
    def runs_operations(self) -> bool:
        """True when an Operation is registered here (so a store is needed)."""
        return self.ctx.runs_operations

    def flush_sent(self) -> None:
        """Mark sent, now, the outbox rows acknowledged since the last transaction."""
        self.ctx.outbox.flush_sent()

    def publish(self, operation_id: str, rows: Sequence[OutboxRow] | None = None,
                wait: bool = True) -> int:
        """Produce the operation's unsent outbox messages: see :meth:`Outbox.publish`."""
        return self.ctx.publish(operation_id, rows, wait)

    # -- routing -------------------------------------------------------------------------

    @staticmethod
    def handles(entrypoint: type[Entrypoint], kmsg: Message) -> bool:
        """True for operation messages and for messages of an operation's task."""
        return issubclass(entrypoint, Operation) or kmsg.is_task

    @staticmethod
    def built_in(path: str) -> type[Entrypoint] | None:
        """The built-in task (:mod:`kser.tasks`) whose path is ``path``: every registry
        runs them as tasks of its operations (what they call is read from the store; a
        message naming one alone is refused)."""
        return next((cls for cls in BUILT_INS if cls.path == path), None)

    def execute(self, entrypoint: type[Entrypoint], kmsg: Message, topic: str | None
                ) -> Result | Later:
        """Handle an operation or task message (see :meth:`handles`).

        Every failure leaves here as what the worker must do about it: a transient
        one (store or broker unreachable) as :class:`RedoError`, any other one (the
        message cannot be handled, and never will) as :class:`UndeliverableError`,
        so that the record is dead-lettered rather than lost or looped on.
        """
        try:
            if kmsg.is_task:
                return self.runner.run_message(entrypoint, kmsg)
            return self.submitter.submit_message(entrypoint, kmsg, topic)
        except (RedoError, UndeliverableError, WorkerFatalError):
            raise
        except Exception as exc:
            raise failure(exc, kmsg) from exc

    def submit(self, operation: Operation, topic: str, trace_parent: object = None) -> Result:
        """Build (if needed), validate, store and start ``operation``: see
        :meth:`Submitter.submit`."""
        return self.submitter.submit(operation, topic, trace_parent)

    def run_task(self, entrypoint: type[Entrypoint], kmsg: Message) -> Result | Later:
        """Run the task a task message names: see :meth:`Runner.run_task`."""
        return self.runner.run_task(entrypoint, kmsg)

    def run_tasks(self, items: Sequence[Item]) -> list[Result | Exception | Later]:
        """Run several task messages sharing transactions: see :meth:`Runner.run_tasks`."""
        return self.runner.run_tasks(items)

    def sweep(self, force: bool = False) -> int:
        """Re-emit what no message will: see :meth:`Sweeper.sweep`."""
        return self.sweeper.sweep(force)

    # -- reading -------------------------------------------------------------------------

    def wait(self, operation_id: str, timeout: float | None = None) -> Result:
        """Block until the operation ends; its final result (retcode >= 300 when it
        FAILED or was CANCELED; 404 when it is not in the store).

        :raises TimeoutError: ``timeout`` seconds passed first (the operation goes on)
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            with self.ctx.transaction() as tx:
                op = tx.get_operation(operation_id)
            if op is None:
                return Result(uuid=operation_id, retcode=404,
                              stderr=f"No operation {operation_id} in the store")
            if op.status in FINAL_STATUSES:
                result = load_result(op.result, operation_id)
                if op.status == Status.CANCELED:
                    result.retcode = max(result.retcode or 0, 499)
                    result.stderr = result.stderr or f"Operation {operation_id} was canceled"
                elif op.status == Status.FAILED and (result.retcode or 0) < 300:
                    result.retcode = 500
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"Operation {operation_id} is still {op.status} after "
                                   f"{timeout:g} s: it goes on (wait again, or cancel it)")
            pause = delay if deadline is None else min(delay, deadline - time.monotonic())
            time.sleep(max(pause, 0))
            delay = min(delay * 1.5, 1.0)

    def upstream_results(self, task_id: str) -> dict[str, Result]:
        """The results of a task's upstream tasks, by name."""
        return upstream_results(self.ctx, task_id)

    def store_has(self, operation_id: str) -> bool:
        """True when the operation is in the store."""
        with self.ctx.transaction() as tx:
            return tx.get_operation(operation_id) is not None

    # -- controls (kser/sequencing/controls.py; on the registry too) ----------------------

    @control
    def emit_ready(self, operation_id: str) -> Result:
        """Send the messages of the operation's tasks that are ready to run now."""
        with self.ctx.transaction() as tx:
            op = Controls.get_operation(tx, operation_id, lock=True)
            queued = (self.transitions.emit_ready(tx, operation_id)
                      if op.status == Status.RUNNING else 0)
        self.ctx.publish(operation_id)
        return Result(uuid=operation_id, stdout=f"{queued} task(s) of {operation_id} sent")

    def cancel(self, operation_id: str) -> Result:
        return self.controls.cancel(operation_id)

    def recover(self, operation_id: str) -> Result:
        return self.controls.recover(operation_id)

    def run_from(self, operation_id: str, task_id: str) -> Result:
        return self.controls.run_from(operation_id, task_id)

    def run_one(self, operation_id: str, task_id: str) -> Result:
        return self.controls.run_one(operation_id, task_id)

    def purge(self) -> int:
        return self.controls.purge()
