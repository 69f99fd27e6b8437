"""The runner: task messages → claim → body → end. A message is judged against its
stored task (:func:`~kser.sequencing.engine.decisions.verdict`), the task claimed (a
compare-and-set on status and attempt, with a lease renewed while it runs), its body run
inside the hook chain (:mod:`kser.middleware`), and its end stored
(:class:`~kser.sequencing.engine.ends.Ends`).

Several messages in hand (a worker's batch) are claimed in one transaction, their bodies
run one after the other, and their ends stored together by the group commit; what would
make one wait or differ (a sub-operation, a task running elsewhere, a duplicate in hand)
goes alone, after the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait
from functools import partial
from typing import cast

from cdumay_result import Result

from kser import tracing
from kser.aio import Later
from kser.entry import Entrypoint
from kser.errors import (
    RedoError,
    UndeliverableError,
    WorkerFatalError,
    safe_text,
)
from kser.pace import Pace
from kser.schemas import Message, wire_digest
from kser.sequencing.engine.awaited import Awaited
from kser.sequencing.engine.bodies import Bodies
from kser.sequencing.engine.children import Children
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.decisions import (
    Claim,
    End,
    Mode,
    Verdict,
    mode_of,
    verdict,
)
from kser.sequencing.engine.ends import Ends, Stored
from kser.sequencing.engine.leases import Leases
from kser.sequencing.engine.outcomes import failure as failure
from kser.sequencing.engine.outcomes import settled
from kser.sequencing.engine.transitions import Transitions
from kser.sequencing.operation import Operation
from kser.status import Status
from kser.store import TaskRow

logger = logging.getLogger("kser.sequencing.engine.sequencer")  # (the name its lines always had)

#: an item of a batch: the entrypoint a message names, and the message
Item = tuple[type[Entrypoint], Message]
#: longest a task's end waits in a batch before it is stored (and the follow-up messages it
#: queues are produced), seconds; also what sizes a batch (see kser.pace.Pace)
BATCH_WINDOW = Pace.WINDOW


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


class Runner:
    """Runs the task messages of one engine."""

    def __init__(self, ctx: Context, transitions: Transitions, ends: Ends,
                 children: Children) -> None:
        self.ctx, self.transitions, self.ends, self.children = ctx, transitions, ends, children
        self.leases = Leases(ctx)
        self.bodies = Bodies(ctx)
        self.awaited = Awaited(ctx, self.bodies, ends, self.leases)
        #: tasks a thread of this process is handling now: a second message for one of
        #: them (a duplicate, a sweep's re-send) never runs it again alongside
        self.running: set[str] = set()
        self.running_lock = threading.Lock()

    # -- one message ----------------------------------------------------------------------

    def run_message(self, entrypoint: type[Entrypoint], kmsg: Message) -> Result | Later:
        """A task message handled alone (its record's trace context current: what it
        queues outside an attempt's span, a sub-operation's start or end, stays in the
        trace).

        :raises UndeliverableError: no operation runs here (this worker has no store)
        """
        if not self.ctx.runs_operations:  # (no store here: a message opens none)
            raise UndeliverableError(
                f"A task message of operation {kmsg.kser_metadata['operation_id']}, and no "
                "operation is registered on this worker (it has no store): send it to the "
                "workers of its operation", extra=dict(uuid=kmsg.uuid))
        with tracing.current(kmsg.trace_parent):
            return self.run_task(entrypoint, kmsg)

    def run_task(self, entrypoint: type[Entrypoint], kmsg: Message) -> Result | Later:
        """Run the task a task message names, and sequence what follows: a batch of one
        (see :meth:`run_tasks`).

        :raises RedoError: the store or the broker failed (the message is redone)
        :raises UndeliverableError: the message is refused (stale or forged)
        """
        outcome = self.run_tasks([(entrypoint, kmsg)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_tasks(self, items: Sequence[Item]) -> list[Result | Exception | Later]:
        """Run task messages (one, or a worker's records in hand), each at most once at a
        time, sharing transactions: their tasks are read, judged and claimed in one, their
        bodies run one after the other, and their ends are stored together by the group
        commit (every :data:`BATCH_WINDOW`, and after the last body), then what they
        queued is produced. Returns, for each message, its result or the exception that
        says what the worker must do about it (:func:`failure`); for one whose body is
        ``async def``, a future of that (:data:`Later`): the body awaited on the worker's
        event loop, its end stored by the group commit, while this thread goes on.

        Each message is judged against its stored task before anything runs (see
        :func:`~kser.sequencing.engine.decisions.verdict`): one naming another entrypoint,
        coming before the task's upstream tasks are done, or for an operation that
        already ended is stale or forged and is refused (dead-lettered); one for a task
        that is finished, or running on a live worker, is a harmless duplicate. A message
        whose task a thread of this process handles waits for that thread to let it go
        (a retry or a poke its end just queued), unless that thread runs it (a duplicate);
        a task another worker claimed first is read again; a sub-operation's start and
        end, after the bodies.
        """
        outcomes: list[Result | Exception | Later | None] = [None] * len(items)
        # (a sub-operation's start or end after the bodies: claimed then, it holds no
        # claim while they run)
        later = [index for index, (entrypoint, kmsg) in enumerate(items)
                 if issubclass(entrypoint, Operation)
                 or mode_of(kmsg.kser_metadata.get("mode")) is Mode.CHILD_ENDED]
        for indices in ([i for i in range(len(items)) if i not in later], later):
            if indices:
                self._run_all(items, indices, outcomes)
        assert all(outcome is not None for outcome in outcomes)
        return cast("list[Result | Exception | Later]", outcomes)

    def _run_all(self, items: Sequence[Item], todo: list[int],
                 outcomes: list[Result | Exception | Later | None]) -> None:
        """Run the messages of ``todo`` until each has its outcome: those whose task is
        free claimed and run together, the others read again (claimed first elsewhere,
        or running on a worker whose lease may have expired meanwhile) or waiting for the
        thread of this process that handles their task, each for up to a lease."""
        waiting_since: dict[int, float] = {}
        rechecked: set[int] = set()
        while todo:
            taken, held = self._take(items, todo)
            try:
                again = (self._claim_and_run(items, taken, outcomes, rechecked)
                         if taken else [])
            finally:
                with self.running_lock:
                    for index in taken:  # (an async body's task: let go once it is over)
                        if not isinstance(outcomes[index], Future):
                            self.running.discard(items[index][1].kser_metadata["task_id"])
            for index in held:  # (a thread of this process handles its task)
                kmsg = items[index][1]
                if index not in waiting_since:
                    waiting_since[index] = time.monotonic()
                    here = settled(kmsg, partial(self._running_here, kmsg))
                    if here is not None:
                        outcomes[index] = here
                        continue
                if time.monotonic() - waiting_since[index] >= self.ctx.settings.task_lease:
                    outcomes[index] = RedoError(
                        f"task {kmsg.kser_metadata['task_id']} is still ending in this "
                        "worker: its next message is handled again in a moment")
                    continue
                again.append(index)
            todo = sorted(again)
            if todo and not taken:
                time.sleep(0.005)  # (only messages waiting for another thread are left)

    def _let_go(self, task_id: str) -> None:
        """A task whose async body is over is no longer handled here."""
        with self.running_lock:
            self.running.discard(task_id)

    def _take(self, items: Sequence[Item], todo: list[int]) -> tuple[list[int], list[int]]:
        """Mark the tasks of ``todo`` as handled by this thread: those taken, and those a
        thread of this process (or an earlier message of this batch) handles already."""
        taken: list[int] = []
        held: list[int] = []
        with self.running_lock:
            for index in todo:
                task_id = items[index][1].kser_metadata["task_id"]
                if task_id in self.running:
                    held.append(index)
                else:
                    self.running.add(task_id)
                    taken.append(index)
        return taken, held

    def _running_here(self, kmsg: Message) -> Result | None:
        """A duplicate's result when the stored task runs in this very worker (a copy of the
        message a thread of it runs: committed at once, it never holds a thread); None when
        it is to wait for that thread (the message its end just queued)."""
        task_id = kmsg.kser_metadata["task_id"]
        with self.ctx.transaction() as tx:
            stored = tx.get_task(task_id)
        if (stored is not None and stored.status == Status.RUNNING
                and stored.worker == self.ctx.worker_name):
            return Result(uuid=task_id, stdout=f"Task {task_id} is running in this worker: a "
                          "duplicate message, left to it")
        return None

    def _claim_and_run(self, items: Sequence[Item], taken: list[int],
                       outcomes: list[Result | Exception | Later | None],
                       rechecked: set[int]) -> list[int]:
        """Claim the tasks of ``taken`` and run what is to run: the bodies, or the
        sub-operations' starts and ends; the messages to read again: those whose task
        another worker claimed first, and (once, after bodies ran: time passed) those
        whose task runs on another worker, whose lease may have expired meanwhile."""
        lost: list[int] = []
        waited: list[tuple[int, Claim]] = []
        bodies: list[tuple[int, Claim, float]] = []
        children: list[tuple[int, Claim]] = []
        published: set[str] = set()
        awaited: list[tuple[int, Claim, float]] = []
        for index, claim, claimed_at in self._claim(items, taken, outcomes):
            kmsg = items[index][1]
            if claim.verdict is Verdict.RUN and not issubclass(items[index][0], Operation):
                (awaited if items[index][0].is_async() else bodies).append(
                    (index, claim, claimed_at))
            elif claim.verdict in (Verdict.RUN, Verdict.CHILD_ENDED):
                children.append((index, claim))
            elif claim.verdict is Verdict.DONE:
                operation_id = claim.task.operation_id
                if operation_id not in published:  # (a duplicate: re-send what is unsent)
                    published.add(operation_id)
                    outcomes[index] = settled(kmsg, partial(self._republished, kmsg, claim))
                else:
                    outcomes[index] = claim.nothing_to_do()
            elif claim.verdict is Verdict.LOST:
                lost.append(index)
            elif claim.verdict is Verdict.WAIT and index not in rechecked:
                rechecked.add(index)
                waited.append((index, claim))
            else:  # CHILD (its sub-operation runs it), WAIT (a live worker runs it)
                outcomes[index] = claim.nothing_to_do()
        for _, claim, _ in bodies + awaited:  # (renewed from now on: starting an async
            self.leases.hold(claim.task.id, claim.attempt)  # body may wait for a slot)
        try:
            for index, claim, claimed_at in awaited:  # (on the event loop: ends later)
                outcomes[index] = self.awaited.start(*items[index], claim, claimed_at,
                                                     partial(self._let_go, claim.task.id))
            self._run_batch(items, bodies, outcomes)
        except BaseException:  # (a fatal error: no lease left renewed for nothing)
            for index, claim, _ in bodies + awaited:
                if not isinstance(outcomes[index], Future):
                    self.leases.release(claim.task.id, claim.attempt)
            raise
        for index, claim in waited:
            if bodies:  # (read again: their worker's lease may have expired meanwhile)
                lost.append(index)
            else:
                outcomes[index] = claim.nothing_to_do()
        for index, claim in children:
            entrypoint, kmsg = items[index]
            outcomes[index] = settled(kmsg, partial(self._child, entrypoint, kmsg, claim))
        return lost

    def _child(self, entrypoint: type[Entrypoint], kmsg: Message, claim: Claim) -> Result:
        """A sub-operation started (its task claimed), or its parent's task ended (it
        ended), in its record's trace."""
        with tracing.current(kmsg.trace_parent):
            if claim.verdict is Verdict.CHILD_ENDED:
                return self.children.ended(claim.task)
            return self.children.start(cast("type[Operation]", entrypoint), kmsg, claim.task,
                                       claim.attempt)

    def _republished(self, kmsg: Message, claim: Claim) -> Result:
        """A message for a task that is done: what its end queued and is unsent is sent
        again (a duplicate after a crash between commit and produce), nothing else."""
        with tracing.current(kmsg.trace_parent):
            self.ctx.publish(claim.task.operation_id)
        return claim.nothing_to_do()

    def _claim(self, items: Sequence[Item], indices: list[int],
               outcomes: list[Result | Exception | Later | None]) -> list[tuple[int, Claim, float]]:
        """:meth:`_claim_in` of ``indices`` in one transaction; if it fails, each message
        alone (one failing then fails alone: :func:`failure`)."""
        try:
            return self._claim_in(items, indices, outcomes)
        except WorkerFatalError:
            raise
        except Exception as exc:
            if len(indices) == 1:
                outcomes[indices[0]] = failure(exc, items[indices[0]][1])
                return []
            logger.warning("%d task messages could not be claimed together (%s): one at a "
                           "time", len(indices), safe_text(exc, 300))
        return [claim for index in indices for claim in self._claim(items, [index], outcomes)]

    def _claim_in(self, items: Sequence[Item], indices: list[int],
                  outcomes: list[Result | Exception | Later | None]
                  ) -> list[tuple[int, Claim, float]]:
        """In one transaction: read the messages' tasks, judge each message against its
        task (:meth:`judge`; a refused one gets its error as outcome) and claim those to run
        (RUN, with when; LOST when another worker claimed it first)."""
        claims: list[tuple[int, Claim, float]] = []
        refused: dict[int, UndeliverableError] = {}
        now = time.time()
        worker, lease_until = self.ctx.worker_name, now + self.ctx.settings.task_lease
        with self.ctx.transaction() as tx:
            found = tx.tasks_to_run([items[index][1].kser_metadata["task_id"]
                                     for index in indices])
            judged: list[tuple[int, Claim]] = []
            for index in indices:
                kmsg = items[index][1]
                try:
                    judged.append((index, self.judge(
                        found.get(kmsg.kser_metadata["task_id"]), kmsg, now)))
                except UndeliverableError as exc:  # (nothing written for it)
                    refused[index] = exc
            # the PENDING tasks claimed by one statement; one held by a dead worker (or by
            # this one before it restarted) is taken over alone
            pending = tx.claim_pending(
                [(claim.task.id, claim.task.attempt) for _, claim in judged
                 if claim.verdict is Verdict.RUN and claim.task.status == Status.PENDING],
                worker, lease_until, now)
            for index, claim in judged:
                task = claim.task
                if claim.verdict is Verdict.RUN:
                    won = (task.id in pending if task.status == Status.PENDING else
                           tx.claim_task(task.id, task.attempt, worker, lease_until, now))
                    claim = (Claim(Verdict.RUN, task, task.attempt + 1) if won
                             else Claim(Verdict.LOST, task))
                claims.append((index, claim, now))
        for index, error in refused.items():
            outcomes[index] = error
        return claims

    def judge(self, task: TaskRow | None, kmsg: Message, now: float) -> Claim:
        """What to do with a task message, given its task as stored: see :func:`judge`."""
        return judge(task, kmsg, now, self.ctx)

    def _run_batch(self, items: Sequence[Item], claimed: list[tuple[int, Claim, float]],
                   outcomes: list[Result | Exception | Later | None]) -> None:
        """Run the claimed tasks' bodies one after the other; hand their ends to the group
        commit every :data:`BATCH_WINDOW` and after the last one (the next body runs while
        they are stored; the status hooks of those stored are called before it), then
        wait until every end is stored. One task's end (a lone message) is stored by its
        own thread, outside the group: the group's lock timeout costs PostgreSQL a round
        trip per hop, and nobody shares its transaction (docs/benchmarks.md, issue 28)."""
        if len(claimed) == 1:
            self._run_one(items, *claimed[0], outcomes)
            return
        pending: list[tuple[int, End]] = []
        handed: list[tuple[list[tuple[int, End]], Future[list[Stored]]]] = []
        since, deadline = 0.0, _Deadline(self.ctx.settings.task_lease)
        group = self.ends.group
        for _, claim, _ in claimed:  # renewed from now on: a task waiting for its turn
            self.leases.hold(claim.task.id, claim.attempt)  # behind a slow one stays ours
        try:
            for index, claim, claimed_at in claimed:
                if pending and time.monotonic() - since >= BATCH_WINDOW:
                    handed.append((pending, group.submit([end for _, end in pending])))
                    pending = []
                while handed and handed[0][1].done():  # (their hooks, before the body)
                    self._settle(items, *handed.pop(0), outcomes, deadline)
                entrypoint, kmsg = items[index]
                try:
                    end = self.bodies.run(entrypoint, kmsg, claim.task, claim.attempt,
                                          claimed_at)
                except WorkerFatalError:
                    raise
                except Exception as exc:  # (a branch's check could not read the store)
                    outcomes[index] = failure(exc, kmsg)
                    continue
                if not pending:
                    since = time.monotonic()
                pending.append((index, end))
            if pending:  # (waited for now: stored here if no transaction runs)
                handed.append((pending, group.submit([end for _, end in pending],
                                                     here=True)))
            while handed:
                self._settle(items, *handed.pop(0), outcomes, deadline)
        finally:
            # (leaving early, a fatal error: what was handed over is stored first, while
            # its tasks are still this thread's; their leases go once their ends are in)
            wait([stored for _, stored in handed])
            for _, claim, _ in claimed:  # (a lease renewed after its end is dropped quietly)
                self.leases.release(claim.task.id)

    def _run_one(self, items: Sequence[Item], index: int, claim: Claim, claimed_at: float,
                 outcomes: list[Result | Exception | Later | None]) -> None:
        """One claimed task: its body, then its end stored in a transaction of its own
        (tried again while the store is away, for up to a lease: :meth:`Ends.store`)."""
        entrypoint, kmsg = items[index]
        with self.leases.held(claim.task.id, claim.attempt):  # until its end is stored
            try:
                end = self.bodies.run(entrypoint, kmsg, claim.task, claim.attempt, claimed_at)
            except WorkerFatalError:
                raise
            except Exception as exc:  # (a branch's check could not read the store)
                outcomes[index] = failure(exc, kmsg)
                return
            outcomes[index] = settled(kmsg, partial(self.ends.store, end))

    def _settle(self, items: Sequence[Item], pending: list[tuple[int, End]],
                stored: Future[list[Stored]], outcomes: list[Result | Exception | Later | None],
                deadline: _Deadline) -> None:
        """The outcomes of ends handed to the group commit, once stored; if their shared
        transaction failed, each end is stored on its own (the batch's all within one
        lease: ``deadline``)."""
        try:
            ends = stored.result()
        except WorkerFatalError:
            raise
        except Exception:  # (the group commit logged why)
            for index, end in pending:
                outcomes[index] = settled(items[index][1],
                                          partial(self.ends.store, end, deadline.at()))
            return
        for (index, end), (transitions, error) in zip(pending, ends, strict=True):
            outcomes[index] = settled(items[index][1],
                                      partial(self.ends.after_stored, end, transitions, error))


def judge(task: TaskRow | None, kmsg: Message, now: float, ctx: Context) -> Claim:
    """What to do with a task message, given its task as stored (see
    :func:`~kser.sequencing.engine.decisions.verdict`), on the worker of ``ctx``: RUN
    means claim it.

    :raises UndeliverableError: the message is refused
    """
    meta = kmsg.kser_metadata
    operation_id, task_id = meta.get("operation_id"), meta["task_id"]
    mode = mode_of(meta.get("mode"))
    if task is None or task.operation_id != operation_id:
        raise UndeliverableError(
            f"Task {task_id} of operation {operation_id} is not in the store "
            f"({ctx.store}): purged, or sent to consumers of another store",
            extra=dict(uuid=kmsg.uuid))
    if mode is Mode.CHILD_ENDED:
        return Claim(Verdict.CHILD_ENDED, task)
    found, why = verdict(task, kmsg.entrypoint, mode, now, ctx.worker_name,
                         meta.get("queued"))
    if (found is Verdict.RUN and task.message_digest is not None and kmsg.wire is not None
            and wire_digest(kmsg.wire) != task.message_digest):
        if task.status == Status.RUNNING:  # (taken over: the sweep sent it anew, and
            return Claim(Verdict.DONE, task)  # this is its dead worker's message)
        found, why = Verdict.REFUSE, ("it is not the message kser queued for this task "
                                      "(its result, params or bookkeeping were changed): "
                                      "forged or corrupt")
    if found is Verdict.REFUSE:
        raise UndeliverableError(f"Task message {task_id} refused: {why}",
                                 extra=dict(uuid=kmsg.uuid))
    return Claim(found, task)
