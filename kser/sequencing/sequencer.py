"""The sequencer: operation and task messages → store transitions → next messages.

The flow of one operation:

1. An operation is *submitted* (an operation message reached a consumer, or
   ``Operation.send()``/``launch()`` ran in a producer): it is built, every
   ``REQUIRED_FIELDS`` checked, and in **one transaction** the operation, its
   tasks with their dependencies, and the message of each ready task (the
   outbox) are stored. The outbox is then produced and marked sent.
2. A *task message* reaches any consumer: the task is claimed (a
   compare-and-set on status and attempt, with a lease renewed while it runs),
   run, and in one transaction its result, its log lines, the operation's new
   status and the messages of the tasks it made ready are stored.
3. The consumer commits the Kafka offset last.

Every step is idempotent: a duplicate message of a finished task re-sends any
unsent outbox rows and does nothing else; a task running on a live worker is
not started twice; a task whose worker died is taken over once its lease
expired (a periodic :meth:`Sequencer.sweep` re-emits it if no message does).
"""

from __future__ import annotations

import graphlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser import logs, metrics, tracing
from kser.codec import Codec
from kser.config import Settings
from kser.entry import Entrypoint
from kser.errors import (
    OperationGoneError,
    RedoError,
    UndeliverableError,
    WorkerFatalError,
    is_transient,
    safe_text,
)
from kser.pace import Pace
from kser.producer import BaseProducer
from kser.results import exception_result, is_success
from kser.schemas import (
    KSER_METADATA_KEY,
    MAX_INT32,
    MIN_INT32,
    KserKey,
    Message,
    check_idempotency_key,
    dump_result,
    wire_digest,
)
from kser.sequencing.controls import Controls, control
from kser.sequencing.graph import forwarded, load_result, merged
from kser.sequencing.group import GroupCommit
from kser.sequencing.leases import Leases
from kser.sequencing.outbox import Outbox
from kser.sequencing.retries import backoff, should_retry
from kser.sequencing.rules import Decision, TriggerRule, decide
from kser.sequencing.shapes import Sensor
from kser.sequencing.task import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCESS,
    Task,
    TaskCanceled,
)
from kser.status import FINAL_STATUSES, Status
from kser.store import OperationRow, OperationState, OutboxRow, Store, TaskRow, Tx

if TYPE_CHECKING:
    from kser.sequencing.operation import Operation

logger = logging.getLogger(__name__)

#: entrypoint of the message sent when an operation ends, unless its exit_notify names one
EXIT_ENTRYPOINT = "kser.operation.exit"
#: seconds after which an undelayed outbox row still unsent was left by a dead worker
UNSENT_GRACE = 10.0
#: most operations whose unsent outbox rows one sweep sends (those waiting longest first)
SWEEP_MOST = 200
#: first and largest wait between two tries to store a finished task's result while the
#: store is unreachable, seconds (it is tried for one lease, then the record is redone)
FINISH_RETRY_MIN, FINISH_RETRY_MAX = 0.5, 5.0
#: the mode of the message that tells a sub-operation's parent task its child ended
CHILD_ENDED = "child_ended"
#: retcode of a task that never ran because tasks it needed failed (HTTP's "Failed
#: Dependency")
UPSTREAM_FAILED = 424

#: an operation's new status and result, for its class's hooks (``set_status``...)
Transition = tuple[str, dict[str, Any] | None]
#: what storing a task's end did: the operation's transitions, the outbox rows it queued
Ended = tuple[list[Transition], list[OutboxRow]]
#: longest a task's end waits in a batch before it is stored (and the follow-up messages it
#: queues are produced), seconds; also what sizes a batch (see kser.pace.Pace)
BATCH_WINDOW = Pace.WINDOW

#: an end stored by the group commit: its operation's transitions (None if another worker
#: took its task over), and the error producing what it queued raised, if any
_Stored = tuple[list[Transition] | None, Exception | None]
#: most task ends stored in one transaction of the group commit
GROUP_COMMIT_MOST = 256
#: longest the group commit's transaction waits for a row lock (PostgreSQL), seconds
GROUP_LOCK_TIMEOUT = 2.0

#: an operation as sequencing its tasks reads it: its whole row, or its state alone
OperationLike = OperationRow | OperationState
#: a log line a task kept: (time, level, message)
LogLine = tuple[float, int, str]


class _Deadline:
    """One lease's deadline, counted from the first time it is asked for (the tries to
    store a batch's ends one at a time, after a shared transaction failed, share it)."""

    def __init__(self, seconds: float):
        self._seconds: float = seconds
        self._at: float | None = None

    def at(self) -> float:
        if self._at is None:
            self._at = time.monotonic() + self._seconds
        return self._at


@dataclass
class _Claim:
    """What reading (and claiming) a task message's task found: ``verdict`` is "run"
    (claimed: ``attempt`` is ours), "lost" (another worker claimed it first), "done",
    "wait", "child" or "child ended" (see :func:`_verdict`)."""

    verdict: str
    task: TaskRow
    attempt: int = 0

    def nothing_to_do(self) -> Result:
        task = self.task
        if self.verdict == "done":
            why = f"is {task.status} (operation {task.operation_status}): nothing to do"
        elif self.verdict == "child":
            why = "waits for its sub-operation: nothing to do"
        else:
            why = f"is running on {task.worker}: left to it"
        return Result(uuid=task.id, stdout=f"Task {task.id} {why}")


@dataclass
class _End:
    """How a task attempt ended, as its body left it: what storing it writes."""

    task: TaskRow
    forwarded: dict[str, Any] | None
    attempt: int
    mode: str | None
    result: Result
    status: Status
    #: a retry's delay (the task goes back to PENDING)
    retry_in: float | None = None
    logs: list[LogLine] = field(default_factory=list)
    #: (a branch) the names of the tasks it chose
    followed: list[str] | None = None
    #: (a sensor whose condition is unmet) since when it waits, when to poke again
    poke: tuple[float, float] | None = None
    #: the trace context of the attempt's span: what its end queues is its child
    trace_context: str | None = None
    #: how long its body ran, seconds
    took: float = 0.0


class Sequencer:
    """Runs operations durably for one controller.

    :param entrypoints: the controller's registered entrypoints, by path
    :param producer: a callable returning the producer of follow-up messages
    :param settings: kser settings (store URL, lease, sweep interval...), or a callable
        returning them on first use (the registry's: read when used, not at import)
    :param store: an open store (default: opened from ``settings.store_url`` on first use)
    :param codec: a callable returning the codec of the messages the store's outbox keeps
        (default: the producer's); encoding needs no Kafka client
    """

    def __init__(self, entrypoints: Mapping[str, type[Entrypoint]],
                 producer: Callable[[], BaseProducer], worker_name: Callable[[], str],
                 settings: Settings | Callable[[], Settings] | None = None, *,
                 store: Store | None = None, codec: Callable[[], Codec] | None = None,
                 pace: Pace | None = None):
        self._entrypoints = entrypoints
        self._producer = producer
        self._codec = codec or (lambda: self._producer().codec)
        self._worker_name = worker_name
        self._settings = settings
        self._store = store
        self._store_lock = threading.Lock()
        self._last_sweep = 0.0
        #: the outbox's publisher: produces the rows transitions queued, marks them sent
        #: the operator controls (cancel, recover, run_from, run_one, purge)
        self.controls = Controls(self)
        self.outbox = Outbox(lambda: self.store, self._producer,
                             lambda: self.settings.send_timeout, worker_name,
                             self._message_refused)
        self._leases = Leases(lambda: self.store, lambda: self.settings.task_lease)
        #: stores the ends of every task thread's batches, in shared transactions
        self._group: GroupCommit[_End, _Stored] = GroupCommit(self._commit_ends,
                                                               GROUP_COMMIT_MOST)
        #: tasks a thread of this process is handling now: a second message for one of
        #: them (a duplicate, a sweep's re-send) never runs it again alongside
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        #: how long task bodies took lately (its controller's): sizes the batches
        self.pace = pace or Pace()

    @property
    def settings(self) -> Settings:
        """The settings given (read from the environment on first use if none were)."""
        if callable(self._settings):
            return self._settings()
        if self._settings is None:
            self._settings = Settings()
        return self._settings

    @property
    def store(self) -> Store:
        """The store, opened (and migrated) on first use."""
        with self._store_lock:
            if self._store is None:
                # a connection kept for each task thread, the lease renewal, the group
                # commit and the main thread: one opened and closed per transaction
                # costs a connect
                self._store = Store(self.settings.store_url,
                                    connections=max(5, self.settings.concurrency + 3))
            return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = store

    @property
    def runs_operations(self) -> bool:
        """True when an Operation is registered here (so a store is needed)."""
        from kser.sequencing.operation import Operation

        return any(issubclass(cls, Operation) for cls in self._entrypoints.values()
                   if isinstance(cls, type))

    def _transaction(self) -> AbstractContextManager[Tx]:
        """A store transaction (that also marks sent what Kafka acknowledged meanwhile)."""
        return self.outbox.transaction()

    def flush_sent(self) -> None:
        """Mark sent, now, the outbox rows acknowledged since the last transaction."""
        self.outbox.flush_sent()

    def publish(self, operation_id: str, rows: Sequence[OutboxRow] | None = None,
                wait: bool = True) -> int:
        """Produce the operation's unsent outbox messages: see :meth:`Outbox.publish`."""
        return self.outbox.publish(operation_id, rows, wait)

    # -- routing -----------------------------------------------------------------------

    @staticmethod
    def handles(entrypoint: type[Entrypoint], kmsg: Message) -> bool:
        """True for operation messages and for messages of an operation's task."""
        from kser.sequencing.operation import Operation

        return issubclass(entrypoint, Operation) or "task_id" in kmsg.kser_metadata

    def execute(self, entrypoint: type[Entrypoint], kmsg: Message, topic: str | None) -> Result:
        """Handle an operation or task message (see :meth:`handles`).

        Every failure leaves here as what the worker must do about it: a transient
        one (store or broker unreachable) as :class:`RedoError`, any other one (the
        message cannot be handled, and never will be) as :class:`UndeliverableError`,
        so that the record is dead-lettered rather than lost or looped on.
        """
        try:
            if "task_id" in kmsg.kser_metadata:
                if not self.runs_operations:  # (no store here: a message opens none)
                    raise UndeliverableError(
                        f"A task message of operation {kmsg.kser_metadata['operation_id']}, "
                        "and no operation is registered on this worker (it has no store): "
                        "send it to the workers of its operation", extra=dict(uuid=kmsg.uuid))
                # (its record's context current: what it queues outside an attempt's span,
                # a sub-operation's start or end, stays in the trace)
                with tracing.current(kmsg.trace_parent):
                    return self.run_task(entrypoint, kmsg)
            operation = cast("Operation", entrypoint.from_Message(kmsg))  # (see handles)
            requested = kmsg.kser_metadata.get("idempotency_key")
            if requested is not None:  # (checked on decode) a message's keys are a
                # namespace of their own: a topic writer cannot take a key of the API's,
                # a producer's or a schedule's
                operation.metadata = {**operation.metadata, KSER_METADATA_KEY: {
                    **kmsg.kser_metadata, "idempotency_key": KserKey(f"message:{requested}")}}
            return self.submit(operation, topic or self.settings.topic, kmsg.trace_parent)
        except (RedoError, UndeliverableError, WorkerFatalError):
            raise
        except Exception as exc:
            raise _failure(exc, kmsg) from exc

    # -- submitting ----------------------------------------------------------------------

    def submit(self, operation: Operation, topic: str, trace_parent: Any = None) -> Result:
        """Build (if needed), validate, store and start ``operation``; send its first tasks.

        :param trace_parent: the trace context of its message's record (default: the
            current one)
        :raises ValidationError: a required parameter is missing (nothing is stored)
        """
        with tracing.span(f"start {type(operation).path}", trace_parent,
                          {"kser.entrypoint": type(operation).path,
                           "kser.operation_id": str(operation.uuid)}):
            return self._submit(operation, topic)

    def _submit(self, operation: Operation, topic: str) -> Result:
        if not operation._built:
            operation.build(**operation.params)
        operation.check_required_params()
        key = operation._own().get("idempotency_key")
        if key is not None:
            check_idempotency_key(key)
        operation.exit_notify_settings(), operation.ttl_settings()  # (refused before a write)
        existing = operation.uuid
        with self._transaction() as tx:
            op_row, created = self._insert(tx, operation, topic, key)
            if created and tx.get_task(operation.uuid) is not None:  # (rolled back)
                raise UndeliverableError(
                    f"Operation {operation.uuid} has the id of a stored task: forged (a "
                    "task's id names its sub-operation), it starts nothing",
                    extra=dict(uuid=operation.uuid))
            queued = tx.queued
            if not created:
                found = tx.get_operation(operation.uuid)
                if found is None and key is not None:  # sent before with the same key
                    found = tx.operation_by_key(str(key))
                    if found is not None and found.entrypoint != op_row["entrypoint"]:
                        raise ValidationError(
                            f"The key {key!r} was given to operation {found.id}, a "
                            f"{found.entrypoint}: a key names one operation; give this "
                            f"{op_row['entrypoint']} another",
                            extra=dict(uuid=operation.uuid, reason="key"))
                if found is None:
                    raise OperationGoneError(f"operation {operation.uuid} is not in the store "
                                        "any more (purged or deleted meanwhile)")
                if found.entrypoint != op_row["entrypoint"]:
                    raise UndeliverableError(
                        f"Operation {operation.uuid} is a {found.entrypoint} in the store, "
                        f"but this message names {op_row['entrypoint']}: forged or corrupt, "
                        "it runs nothing", extra=dict(uuid=operation.uuid))
                existing = found.id
        if created:
            operation._set_status(RUNNING)
        # (what it queued is sent as it was queued; a duplicate re-sends what is unsent)
        self.publish(existing, queued if created else None)
        if existing != operation.uuid:
            return Result(uuid=existing, stdout=f"Operation {existing} was sent with the key "
                          f"{key!r} before: not started again")
        if not created:
            return Result(uuid=operation.uuid, stdout=f"Operation {operation.uuid} already "
                          "submitted: unsent messages re-sent")
        return Result(uuid=operation.uuid, stdout=f"Operation {type(operation).path}"
                      f"[{operation.uuid}] started with {len(operation.tasks)} task(s)")

    def _insert(self, tx: Tx, operation: Operation, topic: str, key: str | None = None,
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
            self._queue_task(tx, op, TaskRow.from_row(row), op.initial_result, queued=1)
        if not task_rows:
            self._finish_operation(tx, operation.uuid, *self._outcome(tx, op))
        return op_row, True

    def wait(self, operation_id: str, timeout: float | None = None) -> Result:
        """Block until the operation ends; its final result (retcode >= 300 when it
        FAILED or was CANCELED; 404 when it is not in the store).

        :raises TimeoutError: ``timeout`` seconds passed first (the operation goes on)
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            with self._transaction() as tx:
                op = tx.get_operation(operation_id)
            if op is None:
                return Result(uuid=operation_id, retcode=404,
                              stderr=f"No operation {operation_id} in the store")
            if op.status in FINAL_STATUSES:
                result = load_result(op.result, operation_id)
                if op.status == CANCELED:
                    result.retcode = max(result.retcode or 0, 499)
                    result.stderr = result.stderr or f"Operation {operation_id} was canceled"
                elif op.status == FAILED and (result.retcode or 0) < 300:
                    result.retcode = 500
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"Operation {operation_id} is still {op.status} after "
                                   f"{timeout:g} s: it goes on (wait again, or cancel it)")
            pause = delay if deadline is None else min(delay, deadline - time.monotonic())
            time.sleep(max(pause, 0))
            delay = min(delay * 1.5, 1.0)

    def _operation_status(self, operation_id: str) -> str | None:
        with self._transaction() as tx:
            op = tx.get_operation(operation_id)
        return None if op is None else str(op.status)

    def upstream_results(self, task_id: str) -> dict[str, Result]:
        """The results of a task's upstream tasks, by name (what ``Task.upstream_results``
        reads)."""
        with self._transaction() as tx:
            rows = tx.upstream(task_id)
        return {row["name"]: load_result(row["result"], row["id"]) for row in rows}

    def store_has(self, operation_id: str) -> bool:
        """True when the operation is in the store."""
        with self._transaction() as tx:
            return tx.get_operation(operation_id) is not None

    @control
    def emit_ready(self, operation_id: str) -> Result:
        """Send the messages of the operation's tasks that are ready to run now."""
        with self._transaction() as tx:
            op = Controls.get_operation(tx, operation_id, lock=True)
            queued = self._emit_ready(tx, operation_id) if op.status == RUNNING else 0
        self.publish(operation_id)
        return Result(uuid=operation_id, stdout=f"{queued} task(s) of {operation_id} sent")

    # -- running a task ----------------------------------------------------------------

    def run_task(self, entrypoint: type[Entrypoint], kmsg: Message) -> Result:
        """Run the task a task message names, at most once at a time, and sequence what follows.

        The message is checked against the stored task before anything runs (see
        :func:`_verdict`): one naming another entrypoint, coming before the task's
        upstream tasks are done, or for an operation that already ended is stale or
        forged and is dead-lettered; one for a task that is finished, or running
        here or on a live worker, is a harmless duplicate.
        """
        task_id = kmsg.kser_metadata["task_id"]
        deadline = time.monotonic() + self.settings.task_lease
        in_hand_checked = False
        while True:
            with self._running_lock:
                if task_id not in self._running:
                    self._running.add(task_id)
                    break
            # a thread of this process handles it: a copy of the message it runs is a
            # duplicate, committed at once (it never holds a thread); the message its end
            # just queued (a retry, a poke) waits for that thread to leave
            if not in_hand_checked:
                with self._transaction() as tx:
                    stored = tx.get_task(task_id)
                if (stored is not None and stored.status == RUNNING
                        and stored.worker == self._worker_name()):
                    return Result(uuid=task_id, stdout=f"Task {task_id} is running in this "
                                  "worker: a duplicate message, left to it")
                in_hand_checked = True
            if time.monotonic() >= deadline:
                raise RedoError(f"task {task_id} is still ending in this worker: its next "
                                "message is handled again in a moment")
            time.sleep(0.005)
        try:
            return self._claim_and_run(entrypoint, kmsg)
        finally:
            with self._running_lock:
                self._running.discard(task_id)

    def _claim_and_run(self, entrypoint: type[Entrypoint], kmsg: Message) -> Result:
        while True:
            now = time.time()
            with self._transaction() as tx:
                claim = self._claim_in(tx, kmsg, now)
            if claim.verdict == "done":
                return self._republished(claim)
            if claim.verdict in ("child", "wait"):
                # (wait: it runs on a live worker; should that worker die, the sweep sends
                # the task again once its lease expired: this copy holds nothing meanwhile)
                return claim.nothing_to_do()
            if claim.verdict != "lost":  # (lost: another worker claimed it first: read again)
                break
        from kser.sequencing.operation import Operation

        if claim.verdict == "child ended":
            return self._end_of_child(claim.task)
        if issubclass(entrypoint, Operation):
            return self._start_child(entrypoint, kmsg, claim.task, claim.attempt)
        return self._run_claimed(entrypoint, kmsg, claim.task, claim.attempt,
                                 kmsg.kser_metadata.get("mode"), now)

    def _republished(self, claim: _Claim) -> Result:
        """A message for a task that is done: what its end queued and is unsent is sent
        again (a duplicate after a crash between commit and produce), nothing else."""
        self.publish(claim.task.operation_id)
        return claim.nothing_to_do()

    def _claim_in(self, tx: Tx, kmsg: Message, now: float) -> _Claim:
        """In ``tx``: read the task a message names, judge the message against it
        (:meth:`_judge`) and claim the task when it is to run (``verdict`` "run"; "lost"
        when another worker claimed it first).

        :raises UndeliverableError: the message is refused (before anything is written)
        """
        claim = self._judge(tx.get_task_to_run(kmsg.kser_metadata["task_id"]), kmsg, now)
        if claim.verdict != "run":
            return claim
        task = claim.task
        if not tx.claim_task(task.id, task.attempt, self._worker_name(),
                             now + self.settings.task_lease, now,
                             taking_over=task.status == RUNNING):
            return _Claim("lost", task)
        return _Claim("run", task, task.attempt + 1)

    def _judge(self, task: TaskRow | None, kmsg: Message, now: float) -> _Claim:
        """What to do with a task message, given its task as stored (see :func:`_verdict`):
        "run" means claim it.

        :raises UndeliverableError: the message is refused
        """
        meta = kmsg.kser_metadata
        operation_id, task_id, mode = meta.get("operation_id"), meta["task_id"], meta.get("mode")
        if task is None or task.operation_id != operation_id:
            raise UndeliverableError(
                f"Task {task_id} of operation {operation_id} is not in the store "
                f"({self.store}): purged, or sent to consumers of another store",
                extra=dict(uuid=kmsg.uuid))
        if mode == CHILD_ENDED:
            return _Claim("child ended", task)
        verdict, why = _verdict(task, kmsg.entrypoint, mode, now, self._worker_name(),
                                meta.get("queued"))
        if (verdict == "run" and task.message_digest is not None and kmsg.wire is not None
                and wire_digest(kmsg.wire) != task.message_digest):
            if task.status == RUNNING:  # (taken over: the sweep sent it anew, and this is
                return _Claim("done", task)  # its dead worker's message, or a copy of it)
            verdict, why = "refuse", ("it is not the message kser queued for this task (its "
                                      "result, params or bookkeeping were changed): forged "
                                      "or corrupt")
        if verdict == "refuse":
            raise UndeliverableError(f"Task message {task_id} refused: {why}",
                                     extra=dict(uuid=kmsg.uuid))
        return _Claim(verdict, task)

    # -- several task messages at once -------------------------------------------------

    def run_tasks(self, items: Sequence[tuple[type[Entrypoint], Message]]
                  ) -> list[Result | Exception]:
        """Run several task messages (a worker's records in hand) as :meth:`run_task` runs
        one, sharing transactions: the tasks are claimed in one, their bodies run one after
        the other, and their ends are stored together (every :data:`BATCH_WINDOW`, and
        after the last body), then what they queued is produced.

        What would make a message wait or differ (a sub-operation, a task running on
        another worker, a duplicate in hand) goes the way of :meth:`run_task`, after the
        others; so does everything if a shared transaction fails (each message then meets
        its own failure alone). Returns, for each message, its result or the exception
        :meth:`execute` would have raised for it.
        """
        from kser.sequencing.operation import Operation

        outcomes: list[Result | Exception | None] = [None] * len(items)
        alone: list[int] = []
        batched: list[int] = []
        with self._running_lock:
            for index, (entrypoint, kmsg) in enumerate(items):
                task_id = kmsg.kser_metadata["task_id"]
                if (issubclass(entrypoint, Operation) or task_id in self._running
                        or kmsg.kser_metadata.get("mode") == CHILD_ENDED):
                    alone.append(index)
                else:
                    self._running.add(task_id)
                    batched.append(index)
        try:
            claimed = self._claim_batch(items, batched, outcomes, alone)
            self._run_batch(items, claimed, outcomes)
        finally:
            with self._running_lock:
                for index in batched:
                    self._running.discard(items[index][1].kser_metadata["task_id"])
        for index in sorted(alone):
            entrypoint, kmsg = items[index]
            outcomes[index] = self._guarded_execute(entrypoint, kmsg)
        assert all(outcome is not None for outcome in outcomes)
        return cast("list[Result | Exception]", outcomes)

    def _guarded_execute(self, entrypoint: type[Entrypoint], kmsg: Message
                         ) -> Result | Exception:
        return _settled(kmsg, lambda: self.execute(entrypoint, kmsg, None))

    def _claim_batch(self, items: Sequence[tuple[type[Entrypoint], Message]],
                     batched: list[int], outcomes: list[Result | Exception | None],
                     alone: list[int]) -> list[tuple[int, _Claim, float]]:
        """Claim the ``batched`` messages' tasks in one transaction: those to run, with
        when; the others get their outcome, or go ``alone``."""
        claims: list[tuple[int, _Claim]] = []
        refused: dict[int, UndeliverableError] = {}
        now = time.time()
        worker, lease_until = self._worker_name(), now + self.settings.task_lease
        try:
            with self._transaction() as tx:
                found = tx.tasks_to_run([items[index][1].kser_metadata["task_id"]
                                         for index in batched])
                judged: list[tuple[int, _Claim]] = []
                for index in batched:
                    kmsg = items[index][1]
                    try:
                        judged.append((index, self._judge(
                            found.get(kmsg.kser_metadata["task_id"]), kmsg, now)))
                    except UndeliverableError as exc:  # (nothing written for it)
                        refused[index] = exc
                # the PENDING tasks claimed by one statement; one held by a dead worker
                # (or by this one before it restarted) is taken over alone
                pending = tx.claim_pending(
                    [(claim.task.id, claim.task.attempt) for _, claim in judged
                     if claim.verdict == "run" and claim.task.status == PENDING],
                    worker, lease_until, now)
                for index, claim in judged:
                    task = claim.task
                    if claim.verdict == "run":
                        won = (task.id in pending if task.status == PENDING else
                               tx.claim_task(task.id, task.attempt, worker, lease_until, now))
                        claim = (_Claim("run", task, task.attempt + 1) if won
                                 else _Claim("lost", task))
                    claims.append((index, claim))
        except WorkerFatalError:
            raise
        except Exception as exc:  # nothing was claimed: each message goes alone
            logger.warning("%d task messages could not be claimed together (%s): one at a "
                           "time", len(batched), safe_text(exc, 300))
            alone.extend(batched)
            return []
        for index, error in refused.items():
            outcomes[index] = error
        to_run = []
        published: set[str] = set()
        for index, claim in claims:
            if claim.verdict == "run":
                to_run.append((index, claim, now))
            elif claim.verdict == "done":
                operation_id = claim.task.operation_id
                if operation_id not in published:  # (a duplicate: re-send what is unsent)
                    published.add(operation_id)
                    outcomes[index] = _settled(items[index][1],
                                               partial(self._republished, claim))
                else:
                    outcomes[index] = claim.nothing_to_do()
            elif claim.verdict == "child":
                outcomes[index] = claim.nothing_to_do()
            else:  # wait (running on another worker), lost: as run_task does, alone
                alone.append(index)
        return to_run

    def _run_batch(self, items: Sequence[tuple[type[Entrypoint], Message]],
                   claimed: list[tuple[int, _Claim, float]],
                   outcomes: list[Result | Exception | None]) -> None:
        """Run the claimed tasks' bodies one after the other; hand their ends to the group
        commit every :data:`BATCH_WINDOW` and after the last one (the next body runs while
        they are stored; the status hooks of those stored are called before it), then
        wait until every end is stored."""
        pending: list[tuple[int, _End]] = []
        handed: list[tuple[list[tuple[int, _End]], Future[list[_Stored]]]] = []
        since, deadline = 0.0, _Deadline(self.settings.task_lease)
        for _, claim, _ in claimed:  # renewed from now on: a task waiting for its turn
            self._leases.hold(claim.task.id, claim.attempt)  # behind a slow one stays ours
        try:
            for index, claim, claimed_at in claimed:
                if pending and time.monotonic() - since >= BATCH_WINDOW:
                    handed.append((pending, self._group.submit([end for _, end in pending])))
                    pending = []
                while handed and handed[0][1].done():  # (their hooks, before the body)
                    self._settle_ends(items, *handed.pop(0), outcomes, deadline)
                entrypoint, kmsg = items[index]
                try:
                    end = self._run_body(entrypoint, kmsg, claim.task, claim.attempt,
                                         kmsg.kser_metadata.get("mode"), claimed_at)
                except WorkerFatalError:
                    raise
                except Exception as exc:  # (a branch's check could not read the store)
                    outcomes[index] = _failure(exc, kmsg)
                    continue
                if not pending:
                    since = time.monotonic()
                pending.append((index, end))
            if pending:  # (waited for now: stored here if no transaction runs)
                handed.append((pending, self._group.submit([end for _, end in pending],
                                                           here=True)))
            while handed:
                self._settle_ends(items, *handed.pop(0), outcomes, deadline)
        finally:
            # (leaving early, a fatal error: what was handed over is stored first, while
            # its tasks are still this thread's; their leases go once their ends are in)
            wait([stored for _, stored in handed])
            for _, claim, _ in claimed:  # (a lease renewed after its end is dropped quietly)
                self._leases.release(claim.task.id)

    def _settle_ends(self, items: Sequence[tuple[type[Entrypoint], Message]],
                     pending: list[tuple[int, _End]], stored: Future[list[_Stored]],
                     outcomes: list[Result | Exception | None], deadline: _Deadline) -> None:
        """The outcomes of ends handed to the group commit, once stored; if their shared
        transaction failed, each end is stored on its own (the batch's all within one
        lease: ``deadline``)."""
        try:
            ends = stored.result()
        except WorkerFatalError:
            raise
        except Exception:  # (the group commit logged why)
            for index, end in pending:
                outcomes[index] = _settled(items[index][1],
                                           partial(self._store_end, end, deadline.at()))
            return
        for (index, end), (transitions, error) in zip(pending, ends, strict=True):
            outcomes[index] = _settled(items[index][1],
                                       partial(self._after_stored, end, transitions, error))

    def _after_stored(self, end: _End, transitions: list[Transition] | None,
                      error: Exception | None) -> Result:
        """An end stored by the group commit: the status hooks of what it caused called
        (after what it queued was produced, by the group commit); the error producing it
        raised, if any."""
        if transitions is not None:  # (None: taken over meanwhile, its end refused)
            _count(end)
        self._call_hooks(end.task.operation_id, transitions or [])
        if error is not None:
            raise error
        return end.result

    def _commit_ends(self, ends: list[_End]) -> list[_Stored]:
        """The group commit's transaction (in its thread): ``ends``, of any task threads'
        batches, stored together (see :meth:`_ends_in`), then what they queued produced.
        For each end: what storing it did (None if taken over meanwhile), and the error
        producing its operation's messages raised, if any."""
        try:
            with self._transaction() as tx:
                # (a row lock held long, by an operator's session say, fails the group
                # after a while: each thread then stores its own ends, waiting alone)
                tx.lock_timeout(GROUP_LOCK_TIMEOUT)
                transitions = self._ends_in(tx, ends)
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
        stored: list[_Stored] = []
        for end, changes in zip(ends, transitions, strict=True):
            if changes is None:
                stored.append((None, None))
                continue
            error: Exception | None = None
            try:  # (committed: from here on nothing raises, each end gets its error)
                # (the rows of its operation: sent with its first end stored here)
                self.publish(end.task.operation_id,
                             by_operation.pop(end.task.operation_id, []), wait=False)
            except Exception as exc:
                error = exc
            stored.append((changes, error))
        for operation_id, rows in by_operation.items():  # (exit notifications: sent too)
            try:
                self.publish(operation_id, rows, wait=False)
            except Exception as exc:  # (unsent rows: the sweep sends them)
                logger.warning("%s", safe_text(exc, 500))
        return stored

    # -- sub-operations -----------------------------------------------------------------

    def _start_child(self, entrypoint: type[Operation], kmsg: Message, task_row: TaskRow,
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
            return self._run_and_finish(None, exception_result(exc, task_id), entrypoint,
                                        task_row, None, attempt, None, time.time())
        with self._transaction() as tx:
            parent = tx.operation(task_row.operation_id, lock=True)
            current = tx.get_task(task_id)
            if (parent.status != RUNNING or current is None or current.status != RUNNING
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
                self._insert(tx, child, parent.topic, parent=task_row)
            elif existing.status != RUNNING:
                tasks = tx.get_tasks(task_id)
                again = ([t.id for t in tasks] if existing.status == SUCCESS
                         else self.controls.reset_failed(tx, task_id, tasks))
                tx.reset_tasks(again)
                tx.update_operation(task_id, status=RUNNING, finished_at=None)
                self._emit_ready(tx, task_id)
            if not squatted:
                tx.update_task(task_id, lease_expires_at=None)
        if squatted:  # (an older kser let a message take the id): the task fails, saying why
            return self._run_and_finish(None, Result(uuid=task_id, retcode=409, stderr=(
                f"An operation {task_id} that is not this task's sub-operation holds its id "
                "in the store (a message sent with a task's id): nothing started; delete "
                "that operation, then recover this one")), entrypoint, task_row, None,
                attempt, None, time.time())
        self.publish(task_id)
        self.publish(task_row.operation_id)  # (a child without tasks ended at once)
        return Result(uuid=task_id, stdout=f"Sub-operation {entrypoint.path}[{task_id}] "
                      "started")

    def _end_of_child(self, task_row: TaskRow) -> Result:
        """A child operation ended: its parent's task ends as it did, with its result
        (only for the parent's task waiting for this very child: a forged message
        changes nothing)."""
        with self._transaction() as tx:
            child = tx.get_operation(task_row.id)
        if (child is None or child.status not in FINAL_STATUSES or task_row.status != RUNNING
                or task_row.lease_expires_at is not None
                or (child.parent_task_id, child.parent_operation_id)
                != (task_row.id, task_row.operation_id)):
            return Result(uuid=task_row.id, stdout=f"Task {task_row.id}: nothing to do "
                          "(its sub-operation did not end, or it ended already)")
        result = load_result(child.result, task_row.id)
        status = Status.SUCCESS if child.status == SUCCESS else Status.FAILED
        if status == FAILED and (result.retcode or 0) < 300:
            result.retcode = 500
            result.stderr = result.stderr or f"its sub-operation {child.id} was {child.status}"
        ended = self._record_end(_End(task_row, None, task_row.attempt, None, result, status))
        return self._after_end(task_row.operation_id, ended, result)

    def _run_claimed(self, entrypoint: type[Entrypoint], kmsg: Message, task_row: TaskRow,
                     attempt: int, mode: str | None, claimed_at: float) -> Result:
        with self._leases.held(task_row.id, attempt):  # until its end is stored
            return self._store_end(self._run_body(entrypoint, kmsg, task_row, attempt, mode,
                                                  claimed_at))

    def _run_body(self, entrypoint: type[Entrypoint], kmsg: Message, task_row: TaskRow,
                  attempt: int, mode: str | None, claimed_at: float) -> _End:
        """Run a claimed task's body: how its attempt ended, to be stored."""
        task_id = task_row.id
        metadata = dict(task_row.metadata or {})
        metadata[KSER_METADATA_KEY] = {**kmsg.kser_metadata, "attempt": attempt}
        # a copy: Result's + changes its left side, and a retry must forward the original
        forwarded = dump_result(kmsg.result)
        # what it inherits: its upstream's retval and retcode; its stdout and stderr are
        # its own (a failure's stderr never carries an upstream's stdout)
        inherited = load_result(forwarded)
        inherited.stdout, inherited.stderr = "", ""
        try:
            instance = entrypoint(uuid=task_id, params=task_row.params,
                                  result=inherited, metadata=metadata)
        except Exception as exc:  # a broken __init__ fails the attempt like a broken run
            instance, result = None, exception_result(exc, task_id)
        else:
            result = None
            if isinstance(instance, Task):
                instance.name = task_row.name
                instance._upstream_results = lambda: self.upstream_results(task_id)
                instance._operation_status = lambda: self._operation_status(
                    task_row.operation_id)
                if isinstance(instance, Sensor):
                    instance.pokes = task_row.pokes or 0
        metrics.task_started(kmsg.entrypoint, kmsg.kser_metadata.get("ready_at"), claimed_at)
        started = time.monotonic()
        with logs.context(operation_id=task_row.operation_id, task_id=task_id,
                          task_name=task_row.name, attempt=attempt,
                          entrypoint=kmsg.entrypoint), tracing.span(
                f"run {kmsg.entrypoint}", kmsg.trace_parent,
                {"kser.entrypoint": kmsg.entrypoint, "kser.operation_id": task_row.operation_id,
                 "kser.task_id": task_id, "kser.task_name": task_row.name or "",
                 "kser.attempt": attempt, "kser.worker": self._worker_name()}) as span:
            end = self._end_of_body(instance, result, entrypoint, task_row, forwarded,
                                    attempt, mode, claimed_at)
            end.trace_context = tracing.ended(
                span, metrics.WAITING if end.poke else end.status, end.result.stderr)
        end.took = time.monotonic() - started
        self.pace.add(end.took)  # (the pace of bodies sizes the batches)
        return end

    def _run_and_finish(self, instance: Entrypoint | None, result: Result | None,
                        entrypoint: type[Entrypoint], task_row: TaskRow,
                        forwarded: dict[str, Any] | None, attempt: int,
                        mode: str | None, claimed_at: float) -> Result:
        return self._store_end(self._end_of_body(instance, result, entrypoint, task_row,
                                                 forwarded, attempt, mode, claimed_at))

    def _end_of_body(self, instance: Entrypoint | None, result: Result | None,
                     entrypoint: type[Entrypoint], task_row: TaskRow,
                     forwarded: dict[str, Any] | None, attempt: int,
                     mode: str | None, claimed_at: float) -> _End:
        """Execute ``instance`` (unless ``result`` says it could not be made) and decide
        how its attempt ends: status, retry, a sensor's next poke, a branch's choice."""
        task_id = task_row.id
        if instance is not None:
            if isinstance(instance, Task):
                instance.status = RUNNING
            result = instance.execute()
        result, unstorable = _storable(result, task_id)
        success = is_success(result)
        followed = getattr(instance, "followed", None) if success else None
        if followed is not None:
            result, success = self._check_branch(task_row, followed, result)
        poke, no_retry = None, False
        if success and getattr(instance, "waiting", False):  # a sensor's condition unmet
            since = task_row.waiting_since or claimed_at
            poke, result = _next_poke(entrypoint, task_row, since, result)
            no_retry = poke is None
            success = not no_retry
        status = (FAILED if not success else
                  SKIPPED if getattr(instance, "skipped", None) is not None else SUCCESS)
        exception = getattr(instance, "exception", None)
        if isinstance(exception, TaskCanceled):
            status, no_retry = CANCELED, True  # (never retried)
        retry_in = None
        if (not success and unstorable is None and mode != "one" and not no_retry
                and attempt <= getattr(entrypoint, "MAX_RETRIES", 0)
                and should_retry(entrypoint, exception, result.retcode)):
            retry_in = backoff(entrypoint, attempt, exception)
        return _End(task_row, forwarded, attempt, mode, result, Status(status), retry_in,
                    list(getattr(instance, "log_lines", [])), followed, poke)

    def _store_end(self, end: _End, deadline: float | None = None) -> Result:
        """Store an attempt's end (trying again while the store is unreachable, for up to a
        lease, or until ``deadline``: the ends of a batch share one), then call the status
        hooks and produce what it queued."""
        task_id, attempt, result = end.task.id, end.attempt, end.result
        delay = FINISH_RETRY_MIN
        if deadline is None:
            deadline = time.monotonic() + self.settings.task_lease
        while True:
            try:
                ended = self._record_end(end)
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
                    result = _unstorable_result(task_id, f"{type(exc).__name__}: {reason}")
                    with tracing.activated(end.trace_context):
                        ended = self._record_failure(end.task, attempt, result, end.logs)
                    if ended is not None:
                        _count(end, FAILED)
                    return self._after_end(end.task.operation_id, ended, result)
                if time.monotonic() >= deadline:
                    raise RedoError(f"store unreachable: {reason}") from exc
                logger.warning("Task %s attempt %d finished, but the store is unreachable "
                               "(%s): storing its result again in %.1f s", task_id, attempt,
                               reason, delay)
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                delay = min(delay * 2, FINISH_RETRY_MAX)
        if ended is not None:  # (None: taken over meanwhile, its end refused)
            _count(end)
        return self._after_end(end.task.operation_id, ended, result)

    def _after_end(self, operation_id: str, ended: Ended | None, result: Result) -> Result:
        """Call the status hooks of what a task's end caused, send what it queued."""
        if ended is None:
            return result
        transitions, queued = ended
        self._call_hooks(operation_id, transitions)
        self.publish(operation_id, queued, wait=False)
        return result

    def _call_hooks(self, operation_id: str, transitions: list[Transition]) -> None:
        """The status hooks of committed transitions (one failing is logged, not raised:
        the transition stays)."""
        try:
            self._notify_status(operation_id, transitions)
        except Exception as exc:  # the transition is committed; only the hooks are missed
            logger.error("Operation %s: status hooks not called: %s", operation_id,
                         safe_text(exc, 500))

    def _record_end(self, end: _End) -> Ended | None:
        """Store ``end`` in a transaction of its own (see :meth:`_end_in`)."""
        with self._transaction() as tx, tracing.activated(end.trace_context):
            return self._end_in(tx, end)

    def _end_in(self, tx: Tx, end: _End) -> Ended | None:
        """In ``tx``: the attempt's end (its status), its logs, and what follows (the
        tasks it lets run or never run, a retry, the operation's end); for a sensor whose
        condition is unmet (``poke``: since when it waits, when to poke again), the
        attempt given back and the next poke queued. None if another worker took the
        task over; else the operation's transitions and the outbox rows queued here."""
        task_row, forwarded, attempt = end.task, end.forwarded, end.attempt
        result, status, retry_in, poke = end.result, end.status, end.retry_in, end.poke
        operation_id, task_id = task_row.operation_id, task_row.id
        now = time.time()
        transitions: list[Transition] = []
        dumped = dump_result(result)
        first = len(tx.queued)  # (several ends may share the transaction)
        # the operation first: its transitions happen one at a time, so that of the
        # upstream tasks of a join ending together, the last one sees the others ended
        op = tx.operation_state(operation_id)
        if poke is not None:
            if not tx.finish_poke(task_id, attempt, poke[0]):
                return None
            tx.add_logs(task_id, attempt, end.logs)
            if op.status == RUNNING:
                self._queue_task(tx, op, task_row, forwarded, due_at=poke[1],
                                 queued=attempt, pokes=(task_row.pokes or 0) + 1)
            return transitions, tx.queued[first:]
        if not tx.finish_attempt(task_id, attempt, status, dumped, now,
                                 result.stderr if status == FAILED else None,
                                 task_status=PENDING if retry_in is not None else None):
            logger.warning("Task %s attempt %d finished after another worker took it "
                           "over: its result is discarded", task_id, attempt)
            return None
        tx.add_logs(task_id, attempt, end.logs)
        return self._follow(tx, end, op, dumped), tx.queued[first:]

    def _follow(self, tx: Tx, end: _End, op: OperationLike, dumped: dict[str, Any] | None,
                dependents: list[TaskRow] | None = None) -> list[Transition]:
        """In ``tx``, after a stored end: what follows it (a retry, the tasks it lets run
        or never run, the operation's end); the operation's transitions.

        :param dependents: the PENDING tasks depending on it, if read already
        """
        task_id, operation_id = end.task.id, end.task.operation_id
        if end.mode == "one" or op.status != RUNNING:
            return []  # run_one, or the operation was canceled meanwhile: nothing follows
        if end.retry_in is not None:
            logger.warning("Task %s attempt %d failed (%s); retry in %.1f s", task_id,
                           end.attempt, safe_text(end.result.stderr, 500), end.retry_in)
            self._queue_task(tx, op, end.task, end.forwarded,
                             due_at=time.time() + end.retry_in, queued=end.attempt + 1)
            return []
        if dependents is None:
            dependents = tx.dependents(task_id)
        if (not self._advance(tx, op, dependents,
                              ended=(task_id, dumped if end.status == SUCCESS else None),
                              followed=end.followed)
                and not tx.unfinished(operation_id)):
            return [self._finish_operation(tx, operation_id, *self._outcome(tx, op))]
        return []

    def _ends_in(self, tx: Tx, ends: list[_End]) -> list[list[Transition] | None]:
        """:meth:`_end_in` of several ends in one transaction, each step one statement for
        all of them (on PostgreSQL): their operations read and locked in id order, the
        attempts finished, the logs added, the dependents read, the tasks made ready
        queued. For each end, its operation's transitions (None if taken over meanwhile);
        the outbox rows are in ``tx.queued``."""
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
                        ended = self._end_in(tx, end)
                    if ended is not None:
                        transitions[index] = ended[0]
                        held_back.add(end.task.id)
            advancing = [end.task.id for end in plain if end.task.id in finished
                         and end.mode != "one" and end.retry_in is None
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
                        transitions[index] = self._follow(tx, end, op, dumped[end.task.id],
                                                          dependents.get(end.task.id))
        # a transition that found a task to queue took the operation for unfinished; the
        # compare-and-set, done now, may have queued nothing (another end of the batch
        # skipped that task meanwhile): an operation left with nothing to run ends here
        for index, end in enumerate(ends):
            op = tx.operation_state(end.task.operation_id)
            if (op.id in tx.not_queued and transitions[index] is not None
                    and op.status == RUNNING and not tx.unfinished(op.id)):
                transitions[index] = [*(transitions[index] or []), self._finish_operation(
                    tx, op.id, *self._outcome(tx, op))]
        return transitions

    def _check_branch(self, task_row: TaskRow, followed: list[str],
                      result: Result) -> tuple[Result, bool]:
        """A branch's result, and whether it succeeded: it fails when it chose a name that
        is not one of its direct downstream tasks."""
        with self._transaction() as tx:
            names = tx.downstream_names(task_row.id)
        unknown = [name for name in followed if name not in names]
        if not unknown:
            return result, True
        return Result(uuid=task_row.id, retcode=400, stderr=(
            f"Branch {task_row.name} chose {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not among the tasks right after it "
            f"({', '.join(sorted(names)) or 'none'}): choose() returns their names")), False

    def _record_failure(self, task_row: TaskRow, attempt: int, result: Result,
                        logs: Iterable[LogLine]) -> Ended | None:
        """The end of an attempt whose own result could not be stored: the task and its
        operation FAILED with ``result``; if even that fails for good, the bare status."""
        try:
            return self._record_end(_End(task_row, None, attempt, None, result, Status.FAILED,
                                         logs=list(logs)))
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.error("Task %s: failure not stored with its details (%s): storing the "
                         "status alone", task_row.id, safe_text(exc, 500))
        now, error = time.time(), result.stderr
        with self._transaction() as tx:
            if tx.finish_attempt(task_row.id, attempt, FAILED, dict(retcode=500), now,
                                 error):
                tx.update_operation(task_row.operation_id, status=FAILED, finished_at=now)
        return [], []

    # -- sequencing helpers (inside a transaction) --------------------------------------

    def _advance(self, tx: Tx, op: OperationLike, candidates: list[TaskRow],
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
            decision = (Decision.SKIP if task.id in not_chosen else
                        decide(task.trigger_rule, task.upstream_count or 0,
                               task.upstream_succeeded or 0, task.upstream_failed or 0,
                               task.upstream_skipped or 0))
            if decision is Decision.RUN:
                if not task.upstream_count:
                    received = op.initial_result
                elif (ended is not None and task.upstream_count == 1
                      and task.upstream_succeeded == 1):
                    received = ended[1]
                else:
                    received = merged(row["result"] for row in tx.upstream(task.id)
                                      if row["status"] == SUCCESS)
                if self._queue_task(tx, op, task, received, queued=task.attempt + 1):
                    queued += 1
            elif decision is not Decision.WAIT:
                status = SKIPPED if decision is Decision.SKIP else FAILED
                why = (f"not chosen by the branch before it (it chose {', '.join(followed or [])})"
                       if task.id in not_chosen else _unmet_rule(task, decision))
                if tx.end_pending(task.id, status, now, dump_result(
                        Result(uuid=task.id, retcode=0 if status == SKIPPED else UPSTREAM_FAILED,
                               **{"stdout" if status == SKIPPED else "stderr": why}))):
                    frontier.extend(tx.dependents(task.id))
        return queued

    def _emit_ready(self, tx: Tx, operation_id: str) -> int:
        """Queue every PENDING task of the operation that its trigger rule lets run now
        (and end those that never will); end the operation if nothing is left to run.
        Returns how many tasks were queued."""
        op = tx.operation(operation_id)
        queued = self._advance(tx, op, tx.pending_tasks(operation_id))
        if not queued and not tx.unfinished(operation_id):
            self._finish_operation(tx, operation_id, *self._outcome(tx, op))
        return queued

    def _outcome(self, tx: Tx, op: OperationLike) -> tuple[Status, dict[str, Any] | None]:
        """The final status and result of an operation none of whose tasks is left to run.

        FAILED if a task failed and no task that depends on it ran (a task whose trigger
        rule let it run after the failure accepted it; one that did not run because of it
        passes it on), with the result of the first such task that ran; else SUCCESS,
        with the merged results of its last tasks (those nothing depends on) that
        succeeded, the one the operation was sent with when there are none.
        """
        rows = tx.failed_or_last(op.id)
        if not any(row["status"] == FAILED for row in rows):  # the common case: one read
            last = [row["result"] for row in rows if row["status"] == SUCCESS]
            return Status.SUCCESS, (merged(last) if len(last) > 1 else
                                    last[0] if last else op.initial_result)
        tasks = {task.id: task for task in tx.get_tasks(op.id)}
        downstream: dict[str, list[str]] = {task_id: [] for task_id in tasks}
        for task_id, upstream_ids in tx.dependencies(op.id).items():
            for upstream_id in upstream_ids:
                downstream[upstream_id].append(task_id)

        def ran(task: TaskRow) -> bool:
            return task.attempt > 0 and task.status in (SUCCESS, FAILED, SKIPPED)

        # whether a task's failure was accepted downstream, last tasks first (one pass)
        accepted: dict[str, bool] = {}
        for task_id in graphlib.TopologicalSorter(downstream).static_order():
            accepted[task_id] = any(ran(tasks[d]) or (tasks[d].status == FAILED
                                                      and accepted[d])
                                    for d in downstream[task_id])
        failed = [task for task in tasks.values()
                  if task.status == FAILED and not accepted[task.id]]
        if failed:
            first = next((task for task in failed if ran(task)), failed[0])
            return Status.FAILED, first.result
        last = [tasks[t].result for t in tasks
                if not downstream[t] and tasks[t].status == SUCCESS]
        return Status.SUCCESS, (merged(last) if len(last) > 1 else
                                last[0] if last else op.initial_result)

    def _queue_task(self, tx: Tx, op: OperationLike, task: TaskRow,
                    forwarded: dict[str, Any] | None, mode: str | None = None,
                    due_at: float | None = None, *, queued: int, pokes: int | None = None,
                    cas: bool = True) -> bool:
        """Queue ``task`` (the compare-and-set of a join, unless ``cas`` is False: a
        takeover's re-send) and add the message of its attempt ``queued`` to the outbox;
        False if another transition had queued it. The message carries ``queued`` and the
        sensor's ``pokes`` count: a copy of an earlier message (a duplicate of a poke or
        a retry already run) finds them changed, and does nothing (it would start a
        second chain of pokes)."""
        metadata = dict(task.metadata or {})
        metadata[KSER_METADATA_KEY] = dict(
            operation_id=op.id, task_id=task.id,
            queued=[queued, task.pokes or 0 if pokes is None else pokes],
            # (when it may run: its hop latency counts from here)
            ready_at=round(max(time.time(), due_at or 0.0), 6),
            **({"mode": mode} if mode else {}))
        kmsg = Message(uuid=task.id, entrypoint=task.entrypoint, params=task.params,
                       result=forwarded, metadata=metadata)
        # (the store keeps the digest of its text: a changed copy is known, see _judge)
        key, value, digest = self._codec().encode_with_digest(kmsg)
        trace = tracing.current_carrier()  # (what queues it: its record's span's parent)
        if cas:
            return tx.queue_with_message(task.id, op.id, task.topic or op.topic, key, value,
                                         due_at, trace, digest)
        tx.update_task(task.id, message_digest=digest)
        tx.add_outbox(op.id, task.topic or op.topic, key, value, due_at, trace)
        return True

    def _finish_operation(self, tx: Tx, operation_id: str, status: str,
                          result: dict[str, Any] | None) -> Transition:
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
                        self._finish_operation(tx, child.id, CANCELED, child.result)
                    tx.update_task(task.id, status=CANCELED, finished_at=now)
        op = tx.get_operation(operation_id)
        assert op is not None  # updated a moment ago in this transaction
        if op.parent_task_id and op.parent_operation_id:  # a child: its parent's task ends
            self._queue_child_ended(tx, op, result)
        notify = _exit_notify(op)
        if notify is not None:
            kmsg = Message(uuid=str(uuid.uuid4()),
                           entrypoint=notify.get("entrypoint") or EXIT_ENTRYPOINT,
                           params=dict(operation_id=operation_id, operation=op.entrypoint,
                                       status=status, payload=notify.get("payload")),
                           result=result, metadata={KSER_METADATA_KEY: {"exit_of": operation_id}})
            key, value = self._codec().encode(kmsg)
            tx.add_outbox(operation_id, notify["topic"], key, value,
                          trace_context=tracing.current_carrier())
        return status, result

    def _queue_child_ended(self, tx: Tx, child: OperationRow,
                           result: dict[str, Any] | None) -> None:
        """Tell a child's parent task that the child ended (to the topic of that task).
        The row is the child's (no lock on the parent's row: a cancel of the parent,
        which locks it and then the child, never waits on this transaction)."""
        assert child.parent_task_id is not None and child.parent_operation_id is not None
        parent_task = tx.get_task(child.parent_task_id)
        kmsg = Message(uuid=child.parent_task_id, entrypoint=child.entrypoint, result=result,
                       metadata={KSER_METADATA_KEY: dict(
                           operation_id=child.parent_operation_id,
                           task_id=child.parent_task_id, mode=CHILD_ENDED)})
        key, value = self._codec().encode(kmsg)
        topic = (parent_task.topic if parent_task is not None and parent_task.topic
                 else child.topic)
        tx.add_outbox(child.id, topic, key, value, trace_context=tracing.current_carrier())

    def _notify_status(self, operation_id: str, transitions: Sequence[Transition]) -> None:
        """Call the operation class's ``set_status`` for each transition, if registered here."""
        if not transitions:
            return
        with self._transaction() as tx:
            op = tx.get_operation(operation_id)
        cls = self._entrypoints.get(op.entrypoint) if op is not None else None
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

    def _message_refused(self, tx: Tx, row: OutboxRow, error: str) -> None:
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
        if (op.status == RUNNING and not self._advance(tx, op, tx.dependents(task_id))
                and not tx.unfinished(op.id)):
            self._finish_operation(tx, op.id, *self._outcome(tx, op))

    # -- sweeping ------------------------------------------------------------------------

    def sweep(self, force: bool = False) -> int:
        """Re-emit tasks whose lease expired and outbox rows left unsent; at most every
        ``sweep_interval`` seconds unless ``force``. Returns the messages sent."""
        if not force and time.monotonic() - self._last_sweep < self.settings.sweep_interval:
            return 0
        if not self.runs_operations:
            return 0  # no operation runs here: nothing to sweep, no store to open
        self._last_sweep = time.monotonic()
        now = time.time()
        grace = UNSENT_GRACE
        with self._transaction() as tx:
            orphans = tx.end_orphaned_tasks(now)
            expired = tx.expired_tasks(now, self.settings.task_lease)
            for task in expired:
                op = tx.operation(task.operation_id)
                tasks = {t.id: t for t in tx.get_tasks(op.id)}
                deps = tx.dependencies(op.id).get(task.id, ())
                self._queue_task(tx, op, task, forwarded(op, tasks, deps),
                                 queued=task.attempt, cas=False)  # (a takeover: re-sent)
            operations = {task.operation_id for task in expired}
            children = tx.ended_children(now, self.settings.task_lease)
            for child in children:  # their parents' tasks were not told: tell them again
                self._queue_child_ended(tx, child, child.result)
            operations.update(child.id for child in children)
            operations.update(tx.operations_with_unsent(now - grace, now, SWEEP_MOST))
        if expired:
            logger.warning("Sweep: %d task(s) whose worker stopped renewing its lease "
                           "re-sent", len(expired))
        if orphans:
            logger.warning("Sweep: %d task(s) whose worker stopped after their operation "
                           "ended marked CANCELED", orphans)
        sent = 0
        for op_id in operations:  # (rows refused for good are marked, not raised)
            try:
                sent += self.publish(op_id)
            except RedoError as exc:  # the broker is away: the others wait for the next pass
                logger.warning("Sweep: %s (the other operations' messages wait for the next "
                               "sweep)", exc)
                break
        self.flush_sent()  # (what the sends refused is marked now, not at the next pass)
        return sent

    # -- controls (kser/sequencing/controls.py; on the registry too) ------------------

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

def _count(end: _End, status: str | None = None) -> None:
    """Count a stored attempt's end in the metrics (``status``: as stored, if not as
    its body ended)."""
    metrics.task_ran(end.task.entrypoint, status or (metrics.WAITING if end.poke
                                                     else end.status),
                     end.took, retried=status is None and end.retry_in is not None)


def _settled(kmsg: Message, call: Callable[[], Result]) -> Result | Exception:
    """``call()``'s result, or what its failure means for ``kmsg`` (see :func:`_failure`)."""
    try:
        return call()
    except WorkerFatalError:
        raise
    except Exception as exc:
        return _failure(exc, kmsg)


def _failure(exc: Exception, kmsg: Message) -> RedoError | UndeliverableError:
    """What handling ``kmsg`` failing with ``exc`` means for the worker: redo it later (the
    store or broker failed), or dead-letter it (it cannot be handled, and never will)."""
    if isinstance(exc, RedoError | UndeliverableError):
        return exc
    reason = safe_text(getattr(exc, "orig", None) or exc, 1000)
    if is_transient(exc):
        return RedoError(f"store unreachable: {reason}")
    what = "task" if "task_id" in kmsg.kser_metadata else "operation"
    return UndeliverableError(
        f"The {what} message {kmsg.entrypoint}[{kmsg.uuid}] cannot be handled: "
        f"{reason if hasattr(exc, 'code') else f'{type(exc).__name__}: {reason}'}; "
        "fix the cause, then send it again (kser dlq replay)",
        extra=dict(uuid=kmsg.uuid), code=getattr(exc, "code", None) or 500)


def _verdict(task: TaskRow, entrypoint: str, mode: str | None, now: float,
             worker: str, queued: Any = None) -> tuple[str, str]:
    """What a task message should do, and why: "run"; "wait" (it runs on a live worker);
    "done" (a duplicate of a finished task); "refuse" (stale or forged: dead-lettered).

    Called only when no thread of this process handles the task (``Sequencer._running``),
    so a task RUNNING under this worker's own name was interrupted here: it is redone.
    """
    if task.entrypoint != entrypoint:
        return "refuse", (f"it names {entrypoint}, but the stored task is a "
                          f"{task.entrypoint}: forged or corrupt")
    if task.status not in (PENDING, RUNNING):
        return "done", ""
    if queued is not None and queued != [task.queued_attempt, task.pokes or 0]:
        return "done", ""  # a copy of an earlier message (its poke or retry ran already)
    operation_status = task.operation_status
    if mode == "one":
        if operation_status == RUNNING:
            return "refuse", ("a run-one message for a task of a RUNNING operation: run_one "
                              "is for ended operations, so it is stale or forged")
        if queued is None:  # (run_one's messages say which queueing they are: checked above)
            return "refuse", ("a run-one message that does not say which of the task's "
                              "messages it is (metadata.kser.queued): run_one did not send "
                              "it (forged)")
    elif operation_status != RUNNING:
        return "refuse", (f"its operation is {operation_status}: the message is stale, and "
                          "an ended operation's tasks never start")
    elif task.queued_attempt is None:
        return "refuse", ("kser has not sent this task yet (its trigger rule does not let it "
                          "run yet): the message is early (stale, replayed or forged)")
    if task.status == RUNNING:
        lease = task.lease_expires_at
        if lease is None:  # a sub-operation's task: its child runs it
            return "child", ""
        if task.worker == worker or lease < now:
            return "run", ""
        return "wait", ""
    return "run", ""


def _next_poke(entrypoint: type[Entrypoint], task_row: TaskRow, since: float,
               result: Result) -> tuple[tuple[float, float] | None, Result]:
    """For a sensor whose condition is unmet: ``(since, when to poke next)`` and its
    result, or None and a failure once its ``TIMEOUT`` passed."""
    timeout = float(getattr(entrypoint, "TIMEOUT", Sensor.TIMEOUT))
    interval = float(getattr(entrypoint, "POKE_INTERVAL", Sensor.POKE_INTERVAL))
    now, pokes = time.time(), (task_row.pokes or 0) + 1
    if now - since >= timeout:
        return None, Result(uuid=task_row.id, retcode=504, stderr=(
            f"Sensor {task_row.name} timed out: its condition was not met within "
            f"{timeout:g} s ({pokes} poke(s), every {interval:g} s)"))
    return (since, min(now + interval, since + timeout)), result


def _unmet_rule(task: TaskRow, decision: Decision) -> str:
    """Why a task never runs, in its result."""
    counts = (f"of its {task.upstream_count} upstream task(s), {task.upstream_succeeded} "
              f"succeeded, {task.upstream_failed} failed, {task.upstream_skipped} skipped")
    rule = task.trigger_rule or TriggerRule.ALL_SUCCESS
    if decision is Decision.FAIL:
        return f"upstream failed: {counts}, and its trigger rule is {rule}"
    return f"skipped: {counts}, and its trigger rule is {rule}"


def _storable(result: Result | None, task_id: str) -> tuple[Result, str | None]:
    """``result`` if its retcode fits 32 bits (every store holds it, every decoder takes
    it), else a failure saying why (and the why). Values JSON or a message cannot hold
    fail the finishing transaction itself, which then fails the task the same way."""
    try:
        dumped = dump_result(result)
        if dumped is not None:
            if not MIN_INT32 <= dumped["retcode"] <= MAX_INT32:
                raise ValueError(f"retcode {dumped['retcode']} does not fit 32 bits")
    except Exception as exc:
        why = f"{type(exc).__name__}: {safe_text(exc, 500)}"
        return _unstorable_result(task_id, why), why
    return result, None


def _unstorable_result(task_id: str, why: str) -> Result:
    return Result(uuid=task_id, retcode=500, stderr=(
        f"Task {task_id} returned a result kser cannot store or forward ({why}); return a "
        "Result whose retcode fits 32 bits and whose retval holds only JSON values (str, "
        "int, float, bool, None, list, dict), small enough to be sent"))


def _exit_notify(op: OperationRow) -> dict[str, Any] | None:
    """The operation's stored exit notification, if kser can send it (a row an older kser
    stored from a message may hold anything: it is logged and not sent, and the
    operation ends all the same)."""
    from kser.sequencing.operation import check_exit_notify

    try:
        return check_exit_notify(op.exit_notify, f"operation {op.id}'s exit notification")
    except ValidationError as exc:
        logger.error("%s: no exit notification sent", safe_text(exc.message, 500))
        return None


def _user_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata without kser's own key (which the sequencer writes afresh)."""
    return {k: v for k, v in (metadata or {}).items() if k != KSER_METADATA_KEY}
