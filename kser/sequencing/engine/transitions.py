"""Transitions, applied: what :mod:`kser.sequencing.engine.decisions` decides, written in a store
transaction (``tx``): operations stored and ended, attempts' ends, the tasks they let run
or never run, and the messages all of that queues in the outbox.

Every method here takes the transaction it writes in: the runner, the submit path, the
sweep and the operator's controls each open their own and call these.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser import tracing
from kser.errors import safe_text
from kser.schemas import KSER_METADATA_KEY, Message, dump_result
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.decisions import (
    End,
    Ended,
    Mode,
    OperationLike,
    Transition,
    candidate,
    outcome_of_graph,
    outcome_of_last,
)
from kser.sequencing.graph import descendants, load_result, merged
from kser.sequencing.operation import check_exit_notify
from kser.sequencing.rules import Decision, TriggerRule
from kser.status import Status
from kser.store import OperationRow, OutboxRow, TaskRow, Tx

if TYPE_CHECKING:
    from kser.sequencing.operation import Operation

logger = logging.getLogger("kser.sequencing.engine.sequencer")  # (the name its lines always had)

#: entrypoint of the message sent when an operation ends, unless its exit_notify names one
EXIT_ENTRYPOINT = "kser.operation.exit"

CANCELED, FAILED, PENDING = Status.CANCELED, Status.FAILED, Status.PENDING
RUNNING, SKIPPED, SUCCESS = Status.RUNNING, Status.SKIPPED, Status.SUCCESS


class Transitions:
    """Applies the engine's decisions to the store, for one engine (its ``ctx``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- operations in -------------------------------------------------------------------

    def insert(self, tx: Tx, operation: Operation, topic: str, key: str | None = None,
               parent: TaskRow | None = None) -> tuple[dict[str, Any], bool]:
        """Store a built operation, its tasks and their dependencies, and queue the tasks
        ready at once; its row, and False if it was there already (nothing written)."""
        now = time.time()
        op_row = dict(id=operation.uuid, entrypoint=type(operation).path, status=RUNNING,
                      params=operation.params, metadata=_user_metadata(operation.metadata),
                      result=dump_result(operation.result), topic=topic,
                      initial_result=dump_result(operation.result),
                      exit_notify=operation.exit_notify_settings(),
                      ttl_strategy=operation.ttl_settings(), created_at=now, updated_at=now,
                      idempotency_key=None if key is None else str(key),
                      parent_task_id=None if parent is None else parent.id,
                      parent_operation_id=None if parent is None else parent.operation_id)
        if not tx.insert_operation(op_row):
            return op_row, False
        task_rows: list[dict[str, Any]] = [dict(
            id=task.uuid, operation_id=operation.uuid, position=position, name=task.name,
            trigger_rule=str(task.trigger_rule), entrypoint=type(task).path,
            topic=getattr(type(task), "TOPIC", None), status=PENDING, params=task.params,
            metadata=_user_metadata(task.metadata), attempt=0)
            for position, task in enumerate(operation.tasks)]
        tx.insert_tasks(task_rows, [(task.uuid, upstream.uuid) for task in operation.tasks
                                    for upstream in task.upstream])
        # what runs at once is known without reading it back: the tasks without upstream
        # tasks, and those whose rule is "always"
        op = OperationRow.from_row(op_row)
        ready = [row for row, task in zip(task_rows, operation.tasks, strict=True)
                 if not task.upstream or task.trigger_rule is TriggerRule.ALWAYS]
        for row in ready:
            self.queue_task(tx, op, TaskRow.from_row(row), op.initial_result, queued=1)
        if not task_rows:
            self.finish_operation(tx, operation.uuid, *self.outcome(tx, op))
        return op_row, True

    # -- attempts' ends ------------------------------------------------------------------

    def ends(self, tx: Tx, ends: list[End]) -> list[list[Transition] | None]:
        """Store attempts' ends (one, or a batch's) and what follows each: the tasks it
        lets run or never run, a retry, the operation's end; for a sensor whose condition
        is unmet, the attempt given back and its next poke queued. Each step is one
        statement for all of them (on PostgreSQL): their operations read and locked in id
        order, the attempts finished, the logs added, the dependents read, the tasks made
        ready queued. For each end, its operation's transitions (None if another worker
        took its task over); the outbox rows are in ``tx.queued``."""
        now = time.time()
        tx.operation_states(end.task.operation_id for end in ends)
        plain = [end for end in ends if end.poke is None]
        dumped = {end.task.id: dump_result(end.result) for end in plain}
        finished = tx.finish_attempts([
            (end.task.id, end.attempt, end.status, dumped[end.task.id],
             end.result.stderr if end.status == FAILED else None,
             PENDING if end.retry_in is not None else end.status) for end in plain], now)
        tx.add_logs_many((end.task.id, end.attempt, end.logs) for end in plain
                         if end.task.id in finished)
        transitions: list[list[Transition] | None] = [None] * len(ends)
        with tx.deferred_queue():
            # a sensor's unmet poke first: its task is given back (PENDING, next poke due)
            held_back = {end.task.id for end in plain
                         if end.task.id in finished and end.retry_in is not None}
            for index, end in enumerate(ends):
                if end.poke is not None:
                    with tracing.activated(end.trace_context):  # (what it queues: its child)
                        if self._poke(tx, end):
                            transitions[index] = []
                            held_back.add(end.task.id)
            advancing = [end.task.id for end in plain if end.task.id in finished
                         and end.mode is not Mode.ONE and end.retry_in is None
                         and tx.operation_state(end.task.operation_id).status == RUNNING]
            # (a task this transaction gave back, a retry or a poke, is no candidate of
            # its upstream's end: one at a time, it would still be RUNNING when that end
            # is stored; a task whose stale end was refused is one, as it would be)
            dependents = {task_id: [task for task in tasks if task.id not in held_back]
                          for task_id, tasks in (tx.dependents_of(advancing)
                                                 if advancing else {}).items()}
            for index, end in enumerate(ends):
                if end.poke is not None:
                    continue
                if end.task.id not in finished:
                    logger.warning("Task %s attempt %d finished after another worker took "
                                   "it over: its result is discarded", end.task.id,
                                   end.attempt)
                else:
                    op = tx.operation_state(end.task.operation_id)
                    with tracing.activated(end.trace_context):
                        transitions[index] = self.follow(tx, end, op, dumped[end.task.id],
                                                         dependents.get(end.task.id))
        # a transition that found a task to queue took the operation for unfinished; the
        # compare-and-set, done now, may have queued nothing (another end of the batch
        # skipped that task meanwhile): an operation left with nothing to run ends here
        for index, end in enumerate(ends):
            op = tx.operation_state(end.task.operation_id)
            if (op.id in tx.not_queued and transitions[index] is not None
                    and op.status == RUNNING and not tx.unfinished(op.id)):
                with tracing.activated(end.trace_context):  # (its notices: the end's child)
                    transitions[index] = [*(transitions[index] or []), self.finish_operation(
                        tx, op.id, *self.outcome(tx, op))]
        return transitions

    def end(self, tx: Tx, end: End) -> Ended | None:
        """:meth:`ends` of one end: its operation's transitions and the outbox rows it
        queued; None if another worker took its task over."""
        first = len(tx.queued)  # (the transaction may hold other writes)
        transitions = self.ends(tx, [end])[0]
        return None if transitions is None else (transitions, tx.queued[first:])

    def _poke(self, tx: Tx, end: End) -> bool:
        """A sensor whose condition is unmet: its attempt given back and its next poke
        queued; False if another worker took the task over."""
        assert end.poke is not None
        task_row = end.task
        if not tx.finish_poke(task_row.id, end.attempt, end.poke[0]):
            return False
        tx.add_logs(task_row.id, end.attempt, end.logs)
        op = tx.operation_state(task_row.operation_id)
        if op.status == RUNNING:
            self.queue_task(tx, op, task_row, end.forwarded, due_at=end.poke[1],
                            queued=end.attempt, pokes=(task_row.pokes or 0) + 1)
        return True

    def follow(self, tx: Tx, end: End, op: OperationLike, dumped: dict[str, Any] | None,
               dependents: list[TaskRow] | None = None) -> list[Transition]:
        """After a stored end: what follows it (a retry, the tasks it lets run or never
        run, the operation's end); the operation's transitions.

        :param dependents: the PENDING tasks depending on it, if read already
        """
        task_id, operation_id = end.task.id, end.task.operation_id
        if end.mode is Mode.ONE or op.status != RUNNING:
            return []  # run_one, or the operation was canceled meanwhile: nothing follows
        if end.retry_in is not None:
            logger.warning("Task %s attempt %d failed (%s); retry in %.1f s", task_id,
                           end.attempt, safe_text(end.result.stderr, 500), end.retry_in)
            self.queue_task(tx, op, end.task, end.forwarded,
                            due_at=time.time() + end.retry_in, queued=end.attempt + 1)
            return []
        if dependents is None:
            dependents = tx.dependents(task_id)
        if (not self.advance(tx, op, dependents,
                             ended=(task_id, dumped if end.status == SUCCESS else None),
                             followed=end.followed)
                and not tx.unfinished(operation_id)):
            return [self.finish_operation(tx, operation_id, *self.outcome(tx, op))]
        return []

    def fail_bare(self, tx: Tx, task_row: TaskRow, attempt: int, error: str | None) -> None:
        """The last resort of an attempt whose failure could not be stored with its
        details: the task and its operation FAILED, with the status alone."""
        now = time.time()
        if tx.finish_attempt(task_row.id, attempt, FAILED, dict(retcode=500), now, error):
            tx.update_operation(task_row.operation_id, status=FAILED, finished_at=now)

    # -- what follows an end -------------------------------------------------------------

    def advance(self, tx: Tx, op: OperationLike, candidates: list[TaskRow],
                ended: tuple[str, dict[str, Any] | None] | None = None,
                followed: list[str] | None = None) -> int:
        """Apply their trigger rules to PENDING tasks (read with their upstream counts):
        queue the message of each that runs now (a compare-and-set: of two transitions
        finding a join ready at once, one queues it), end each that never will (SKIPPED,
        or FAILED for an upstream failure) and check the tasks depending on those in
        turn. Returns how many tasks were queued.

        :param ended: ``(task id, result)`` of the task whose end is being stored: a task
            whose one upstream task it is receives that result without a read, so a
            chain's hop costs the same whatever the operation's size
        :param followed: (the end of a branch) the names of the candidates it chose: the
            others are SKIPPED
        """
        queued, now = 0, time.time()
        frontier = list(candidates)
        not_chosen = ({task.id for task in candidates if task.name not in followed}
                      if followed is not None else set())
        while frontier:
            task = frontier.pop(0)
            decision, never = candidate(task, task.id in not_chosen, followed)
            if decision is Decision.RUN:
                if not task.upstream_count:
                    received = op.initial_result
                elif (ended is not None and task.upstream_count == 1
                      and task.upstream_succeeded == 1):
                    received = ended[1]
                else:
                    received = merged(row["result"] for row in tx.upstream(task.id)
                                      if row["status"] == SUCCESS)
                if self.queue_task(tx, op, task, received, queued=task.attempt + 1):
                    queued += 1
            elif never is not None:  # (SKIP or FAIL: it never runs, ending with this)
                status = SKIPPED if decision is Decision.SKIP else FAILED
                if tx.end_pending(task.id, status, now, dump_result(never)):
                    frontier.extend(tx.dependents(task.id))
        return queued

    def emit_ready(self, tx: Tx, operation_id: str) -> int:
        """Queue every PENDING task of the operation that its trigger rule lets run now
        (and end those that never will); end the operation if nothing is left to run.
        Returns how many tasks were queued."""
        op = tx.operation(operation_id)
        queued = self.advance(tx, op, tx.pending_tasks(operation_id))
        if not queued and not tx.unfinished(operation_id):
            self.finish_operation(tx, operation_id, *self.outcome(tx, op))
        return queued

    def outcome(self, tx: Tx, op: OperationLike) -> tuple[Status, dict[str, Any] | None]:
        """The final status and result of an operation none of whose tasks is left to run
        (see :func:`~kser.sequencing.engine.decisions.outcome_of_graph`): one read in the common
        case, the whole graph when a task failed."""
        found = outcome_of_last(tx.failed_or_last(op.id), op.initial_result)
        if found is not None:
            return found
        return outcome_of_graph({task.id: task for task in tx.get_tasks(op.id)},
                                tx.dependencies(op.id), op.initial_result)

    def reset_failed(self, tx: Tx, operation_id: str, tasks: list[TaskRow]) -> list[str]:
        """The ids of the operation's failed and canceled tasks and of every task that
        depends on them: what a recover runs again."""
        dependencies = tx.dependencies(operation_id)
        reset: list[str] = []
        for task in tasks:
            if task.status in (FAILED, CANCELED):
                reset += [tid for tid in descendants(dependencies, task) if tid not in reset]
        return reset

    def restart(self, tx: Tx, operation_id: str) -> int:
        """The operation RUNNING again, and what of it is ready queued; how many tasks."""
        tx.update_operation(operation_id, status=RUNNING, finished_at=None)
        return self.emit_ready(tx, operation_id)

    # -- messages ------------------------------------------------------------------------

    def queue_task(self, tx: Tx, op: OperationLike, task: TaskRow,
                   forwarded: dict[str, Any] | None, mode: Mode | None = None,
                   due_at: float | None = None, *, queued: int, pokes: int | None = None,
                   cas: bool = True, ready_at: float | None = None) -> bool:
        """Queue ``task`` (the compare-and-set of a join, unless ``cas`` is False: a
        takeover's re-send) and add the message of its attempt ``queued`` to the outbox;
        False if another transition had queued it. The message carries ``queued`` and the
        sensor's ``pokes`` count: a copy of an earlier message (a duplicate of a poke or
        a retry already run) finds them changed, and does nothing (it would start a
        second chain of pokes). ``ready_at``: since when it may run (default: now, or
        ``due_at``); a re-send gives one of its own, the same each time, so that its
        copies are the same text (the store keeps one digest)."""
        metadata = dict(task.metadata or {})
        metadata[KSER_METADATA_KEY] = dict(
            operation_id=op.id, task_id=task.id,
            queued=[queued, task.pokes or 0 if pokes is None else pokes],
            # (when it may run: its hop latency counts from here)
            ready_at=round(ready_at if ready_at is not None
                           else max(time.time(), due_at or 0.0), 6),
            **({"mode": str(mode)} if mode else {}))
        kmsg = Message(uuid=task.id, entrypoint=task.entrypoint, params=task.params,
                       result=forwarded, metadata=metadata)
        # (the store keeps the digest of its text: a changed copy is known when judged)
        key, value, digest = self.ctx.codec.encode_with_digest(kmsg)
        trace = tracing.current_carrier()  # (what queues it: its record's span's parent)
        if cas:
            return tx.queue_with_message(task.id, op.id, task.topic or op.topic, key, value,
                                         due_at, trace, digest)
        tx.update_task(task.id, message_digest=digest)
        tx.add_outbox(op.id, task.topic or op.topic, key, value, due_at, trace)
        return True

    def finish_operation(self, tx: Tx, operation_id: str, status: str,
                         result: dict[str, Any] | None) -> Transition:
        """End an operation (``status``, ``result``): a canceled one's tasks that did not
        start never will, and its running sub-operations are canceled; a child's parent
        task is told; its exit notification is queued."""
        now = time.time()
        tx.update_operation(operation_id, status=status, result=result, finished_at=now,
                            updated_at=now)
        if status == CANCELED:  # its tasks not started never will be (a FAILED one's wait
            for task in tx.get_tasks(operation_id):  # PENDING, for recover)
                if task.status == PENDING:
                    tx.update_task(task.id, status=CANCELED, finished_at=now)
                elif task.status == RUNNING and task.lease_expires_at is None:
                    child = tx.get_operation(task.id, lock=True)  # a sub-operation: canceled
                    if child is not None and child.status == RUNNING:
                        self.finish_operation(tx, child.id, CANCELED, child.result)
                    tx.update_task(task.id, status=CANCELED, finished_at=now)
        op = tx.get_operation(operation_id)
        assert op is not None  # updated a moment ago in this transaction
        if op.parent_task_id and op.parent_operation_id:  # a child: its parent's task ends
            self.queue_child_ended(tx, op, result)
        notify = _exit_notify(op)
        if notify is not None:
            kmsg = Message(uuid=str(uuid.uuid4()),
                           entrypoint=notify.get("entrypoint") or EXIT_ENTRYPOINT,
                           params=dict(operation_id=operation_id, operation=op.entrypoint,
                                       status=status, payload=notify.get("payload")),
                           result=result, metadata={KSER_METADATA_KEY: {"exit_of": operation_id}})
            key, value = self.ctx.codec.encode(kmsg)
            tx.add_outbox(operation_id, notify["topic"], key, value,
                          trace_context=tracing.current_carrier())
        return status, result

    def queue_child_ended(self, tx: Tx, child: OperationRow,
                          result: dict[str, Any] | None) -> None:
        """Tell a child's parent task that the child ended (to the topic of that task).
        The row is the child's (no lock on the parent's row: a cancel of the parent,
        which locks it and then the child, never waits on this transaction)."""
        assert child.parent_task_id is not None and child.parent_operation_id is not None
        parent_task = tx.get_task(child.parent_task_id)
        kmsg = Message(uuid=child.parent_task_id, entrypoint=child.entrypoint, result=result,
                       metadata={KSER_METADATA_KEY: dict(
                           operation_id=child.parent_operation_id,
                           task_id=child.parent_task_id, mode=str(Mode.CHILD_ENDED))})
        key, value = self.ctx.codec.encode(kmsg)
        topic = (parent_task.topic if parent_task is not None and parent_task.topic
                 else child.topic)
        tx.add_outbox(child.id, topic, key, value, trace_context=tracing.current_carrier())

    def message_refused(self, tx: Tx, row: OutboxRow, error: str) -> None:
        """(the outbox's, in the transaction marking ``row`` refused for good) A task's
        message the broker will never take: the task FAILED saying why, and what follows
        it decided, so the operation ends instead of waiting for it forever. (An exit
        notification or a child's end is only kept as a dead letter.)"""
        if row.operation_id is None or row.key is None:
            return
        task_id, now = row.key.decode("utf-8", "replace"), time.time()
        result = Result(uuid=task_id, retcode=500, stderr=(
            f"kser could not send this task's message to topic {row.topic}: the broker "
            f"refused it for good ({error}). It is kept as a dead letter (kser dlq list); "
            "fix the cause, then recover the operation"))
        if not tx.end_pending(task_id, FAILED, now, dump_result(result)):
            return  # (not a task's message, or its task moved on)
        op = tx.operation(row.operation_id)
        if (op.status == RUNNING and not self.advance(tx, op, tx.dependents(task_id))
                and not tx.unfinished(op.id)):
            self.finish_operation(tx, op.id, *self.outcome(tx, op))

    # -- the operation class's hooks (after the commit) ----------------------------------

    def call_hooks(self, operation_id: str, transitions: Sequence[Transition]) -> None:
        """:meth:`notify_status`, logging instead of raising (the transitions are
        committed; only their hooks would be missed)."""
        try:
            self.notify_status(operation_id, transitions)
        except Exception as exc:
            logger.error("Operation %s: status hooks not called: %s", operation_id,
                         safe_text(exc, 500))

    def notify_status(self, operation_id: str, transitions: Sequence[Transition]) -> None:
        """Call the operation class's ``set_status`` for each committed transition, if it
        is registered here (a hook raising is logged: the transition stays)."""
        if not transitions:
            return
        with self.ctx.transaction() as tx:
            op = tx.get_operation(operation_id)
        cls = self.ctx.entrypoints.get(op.entrypoint) if op is not None else None
        if op is None or cls is None:
            return
        instance = cast("type[Operation]", cls)(uuid=operation_id, params=op.params,
                                                status=RUNNING)
        for status, result in transitions:
            loaded = load_result(result, operation_id)
            try:
                instance._set_status(status, loaded)
                if status == SUCCESS:
                    instance.onsuccess(loaded)
                elif status == FAILED:
                    instance.onerror(loaded)
            except Exception:  # a user hook must not undo a committed transition
                logger.exception("%s hook on %s raised", op.entrypoint, status)


def _exit_notify(op: OperationRow) -> dict[str, Any] | None:
    """The operation's stored exit notification, if kser can send it (a row an older kser
    stored from a message may hold anything: it is logged and not sent, and the
    operation ends all the same)."""
    try:
        return check_exit_notify(op.exit_notify, f"operation {op.id}'s exit notification")
    except ValidationError as exc:
        logger.error("%s: no exit notification sent", safe_text(exc.message, 500))
        return None


def _user_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata without kser's own key (which the engine writes afresh)."""
    return {k: v for k, v in (metadata or {}).items() if k != KSER_METADATA_KEY}
