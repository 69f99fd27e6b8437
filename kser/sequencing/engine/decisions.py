"""The engine's decisions, pure: given typed rows (a task, an operation, an attempt's end),
what happens. Nothing here reads or writes the store, Kafka or the clock (the time is a
parameter): :mod:`kser.sequencing.engine.transitions` applies what these decide, in a store
transaction, and the tests read them as tables.

- :func:`verdict`: what a task message does, given its task as stored;
- :func:`attempt_end`: how an attempt ends, given what its body left (status, retry, a
  sensor's next poke, a branch's choice);
- :func:`candidate`: what becomes of a PENDING task when one of its upstream tasks ended;
- :func:`outcome_of_last` and :func:`outcome_of_graph`: what an operation none of whose
  tasks is left to run becomes;
- :func:`child_end`: how a parent's task ends when its sub-operation ended.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from cdumay_result import Result

from kser.entry import Entrypoint
from kser.errors import safe_text
from kser.results import is_success
from kser.schemas import MAX_INT32, MIN_INT32, dump_result
from kser.sequencing.graph import load_result, merged
from kser.sequencing.retries import backoff, should_retry
from kser.sequencing.rules import Decision, TriggerRule, decide
from kser.sequencing.shapes import Sensor
from kser.sequencing.task import TaskCanceled
from kser.status import Status
from kser.store import OperationRow, OperationState, OutboxRow, TaskRow

#: retcode of a task that never ran because tasks it needed failed (HTTP's "Failed
#: Dependency")
UPSTREAM_FAILED = 424

#: an operation's new status and result, for its class's hooks (``set_status``...)
Transition = tuple[str, dict[str, Any] | None]
#: what storing a task's end did: the operation's transitions, the outbox rows it queued
Ended = tuple[list[Transition], list[OutboxRow]]
#: an operation as sequencing its tasks reads it: its whole row, or its state alone
OperationLike = OperationRow | OperationState
#: a log line a task kept: (time, level, message)
LogLine = tuple[float, int, str]


class Mode(StrEnum):
    """How a task message was queued, when not as its operation's next step (the value
    is what ``metadata.kser.mode`` carries on the wire)."""

    #: ``run_one``: the task runs once, nothing follows it
    ONE = "one"
    #: the task's sub-operation ended: the task ends as it did
    CHILD_ENDED = "child_ended"


class Verdict(StrEnum):
    """What a task message does, once judged against its stored task."""

    #: claim the task and run it (after a claim: ``Claim.attempt`` is ours)
    RUN = "run"
    #: another worker claimed it first: read it again
    LOST = "lost"
    #: a duplicate of a finished task: re-send what its end left unsent, nothing else
    DONE = "done"
    #: it runs on a live worker: left to it (the sweep re-sends it should that one die)
    WAIT = "wait"
    #: its sub-operation runs it: nothing to do
    CHILD = "child"
    #: its sub-operation ended: the task ends as it did
    CHILD_ENDED = "child ended"
    #: stale or forged: dead-lettered, nothing written
    REFUSE = "refuse"


@dataclass
class Claim:
    """What reading (and claiming) a task message's task found."""

    verdict: Verdict
    task: TaskRow
    attempt: int = 0

    def nothing_to_do(self) -> Result:
        task = self.task
        if self.verdict is Verdict.DONE:
            why = f"is {task.status} (operation {task.operation_status}): nothing to do"
        elif self.verdict is Verdict.CHILD:
            why = "waits for its sub-operation: nothing to do"
        else:
            why = f"is running on {task.worker}: left to it"
        return Result(uuid=task.id, stdout=f"Task {task.id} {why}")


@dataclass
class End:
    """How a task attempt ended, as its body left it: what storing it writes."""

    task: TaskRow
    forwarded: dict[str, Any] | None
    attempt: int
    mode: Mode | None
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


def mode_of(value: Any) -> Mode | None:
    """A message's ``metadata.kser.mode`` as a :class:`Mode` (None: a plain step; an
    unknown one is refused by the message schema before it gets here)."""
    return None if value is None else Mode(value)


def verdict(task: TaskRow, entrypoint: str, mode: Mode | None, now: float,
            worker: str, queued: Any = None) -> tuple[Verdict, str]:
    """What a task message should do, and why: RUN, WAIT (it runs on a live worker),
    DONE (a duplicate of a finished task), CHILD (its sub-operation runs it) or REFUSE
    (stale or forged: dead-lettered).

    Asked only when no thread of this process handles the task, so a task RUNNING under
    this worker's own name was interrupted here: it is redone.
    """
    if task.entrypoint != entrypoint:
        return Verdict.REFUSE, (f"it names {entrypoint}, but the stored task is a "
                                f"{task.entrypoint}: forged or corrupt")
    if task.status not in (Status.PENDING, Status.RUNNING):
        return Verdict.DONE, ""
    if queued is not None and queued != [task.queued_attempt, task.pokes or 0]:
        return Verdict.DONE, ""  # a copy of an earlier message (its poke or retry ran)
    operation_status = task.operation_status
    if mode is Mode.ONE:
        if operation_status == Status.RUNNING:
            return Verdict.REFUSE, ("a run-one message for a task of a RUNNING operation: "
                                    "run_one is for ended operations, so it is stale or "
                                    "forged")
        if queued is None:  # (run_one's messages say which queueing they are)
            return Verdict.REFUSE, ("a run-one message that does not say which of the "
                                    "task's messages it is (metadata.kser.queued): run_one "
                                    "did not send it (forged)")
    elif operation_status != Status.RUNNING:
        return Verdict.REFUSE, (f"its operation is {operation_status}: the message is "
                                "stale, and an ended operation's tasks never start")
    elif task.queued_attempt is None:
        return Verdict.REFUSE, ("kser has not sent this task yet (its trigger rule does not "
                                "let it run yet): the message is early (stale, replayed or "
                                "forged)")
    if task.status == Status.RUNNING:
        lease = task.lease_expires_at
        if lease is None:  # a sub-operation's task: its child runs it
            return Verdict.CHILD, ""
        if task.worker == worker or lease < now:
            return Verdict.RUN, ""
        return Verdict.WAIT, ""
    return Verdict.RUN, ""


def attempt_end(entrypoint: type[Entrypoint], task_row: TaskRow, body: Any,
                result: Result | None, *, forwarded: dict[str, Any] | None, attempt: int,
                mode: Mode | None, since: float, now: float,
                branch_names: Iterable[str] | None = None) -> End:
    """How an attempt ends, from what its body left: ``body`` (the task instance that
    ran, or None when it could not be made) and its ``result``.

    :param since: when the attempt was claimed (a sensor's wait counts from the first)
    :param branch_names: (a branch that chose) the names of the tasks right after it
    """
    result, unstorable = storable(result, task_row.id)
    success = is_success(result)
    followed = getattr(body, "followed", None) if success else None
    if followed is not None:
        result, success = branch_result(task_row, followed, result, set(branch_names or ()))
    poke, no_retry = None, False
    if success and getattr(body, "waiting", False):  # a sensor's condition unmet
        poke, result = next_poke(entrypoint, task_row, task_row.waiting_since or since,
                                 result, now)
        no_retry = poke is None
        success = not no_retry
    status = (Status.FAILED if not success else
              Status.SKIPPED if getattr(body, "skipped", None) is not None else Status.SUCCESS)
    exception = getattr(body, "exception", None)
    if isinstance(exception, TaskCanceled):
        status, no_retry = Status.CANCELED, True  # (never retried)
    retry_in = None
    if (not success and unstorable is None and mode is not Mode.ONE and not no_retry
            and attempt <= getattr(entrypoint, "MAX_RETRIES", 0)
            and should_retry(entrypoint, exception, result.retcode)):
        retry_in = backoff(entrypoint, attempt, exception)
    return End(task_row, forwarded, attempt, mode, result, status, retry_in,
               list(getattr(body, "log_lines", [])), followed, poke)


def branch_result(task_row: TaskRow, followed: list[str], result: Result,
                  names: set[str]) -> tuple[Result, bool]:
    """A branch's result, and whether it succeeded: it fails when it chose a name that
    is not one of its direct downstream tasks (``names``)."""
    unknown = [name for name in followed if name not in names]
    if not unknown:
        return result, True
    return Result(uuid=task_row.id, retcode=400, stderr=(
        f"Branch {task_row.name} chose {', '.join(map(repr, unknown))}, which "
        f"{'is' if len(unknown) == 1 else 'are'} not among the tasks right after it "
        f"({', '.join(sorted(names)) or 'none'}): choose() returns their names")), False


def next_poke(entrypoint: type[Entrypoint], task_row: TaskRow, since: float,
              result: Result, now: float) -> tuple[tuple[float, float] | None, Result]:
    """For a sensor whose condition is unmet: ``(since, when to poke next)`` and its
    result, or None and a failure once its ``TIMEOUT`` passed."""
    timeout = float(getattr(entrypoint, "TIMEOUT", Sensor.TIMEOUT))
    interval = float(getattr(entrypoint, "POKE_INTERVAL", Sensor.POKE_INTERVAL))
    pokes = (task_row.pokes or 0) + 1
    if now - since >= timeout:
        return None, Result(uuid=task_row.id, retcode=504, stderr=(
            f"Sensor {task_row.name} timed out: its condition was not met within "
            f"{timeout:g} s ({pokes} poke(s), every {interval:g} s)"))
    return (since, min(now + interval, since + timeout)), result


def candidate(task: TaskRow, not_chosen: bool = False,
              followed: list[str] | None = None) -> tuple[Decision, Result | None]:
    """What becomes of a PENDING task whose upstream counts changed: its trigger rule's
    decision and, when it ends without running (SKIP, FAIL), the result it ends with.

    :param not_chosen: the branch before it chose other tasks (``followed``)
    """
    if not_chosen:
        decision = Decision.SKIP
        why = f"not chosen by the branch before it (it chose {', '.join(followed or [])})"
    else:
        decision = decide(task.trigger_rule, task.upstream_count or 0,
                          task.upstream_succeeded or 0, task.upstream_failed or 0,
                          task.upstream_skipped or 0)
        if decision in (Decision.RUN, Decision.WAIT):
            return decision, None
        why = unmet_rule(task, decision)
    if decision is Decision.SKIP:
        return decision, Result(uuid=task.id, retcode=0, stdout=why)
    return decision, Result(uuid=task.id, retcode=UPSTREAM_FAILED, stderr=why)


def unmet_rule(task: TaskRow, decision: Decision) -> str:
    """Why a task never runs, in its result."""
    counts = (f"of its {task.upstream_count} upstream task(s), {task.upstream_succeeded} "
              f"succeeded, {task.upstream_failed} failed, {task.upstream_skipped} skipped")
    rule = task.trigger_rule or TriggerRule.ALL_SUCCESS
    if decision is Decision.FAIL:
        return f"upstream failed: {counts}, and its trigger rule is {rule}"
    return f"skipped: {counts}, and its trigger rule is {rule}"


def outcome_of_last(rows: Iterable[Mapping[str, Any]], initial: dict[str, Any] | None
                    ) -> tuple[Status, dict[str, Any] | None] | None:
    """An operation's outcome from its failed tasks and its last ones (``rows``: status
    and result), when none failed: SUCCESS with the merged results of its last tasks that
    succeeded (``initial``, the one it was sent with, when there are none). None when a
    task failed: whether the failure was accepted downstream needs the whole graph
    (:func:`outcome_of_graph`)."""
    rows = list(rows)
    if any(row["status"] == Status.FAILED for row in rows):
        return None
    last = [row["result"] for row in rows if row["status"] == Status.SUCCESS]
    return Status.SUCCESS, (merged(last) if len(last) > 1 else last[0] if last else initial)


def outcome_of_graph(tasks: Mapping[str, TaskRow], dependencies: Mapping[str, Iterable[str]],
                     initial: dict[str, Any] | None) -> tuple[Status, dict[str, Any] | None]:
    """The final status and result of an operation none of whose tasks is left to run.

    FAILED if a task failed and no task that depends on it ran (a task whose trigger
    rule let it run after the failure accepted it; one that did not run because of it
    passes it on), with the result of the first such task that ran; else SUCCESS, with
    the merged results of its last tasks (those nothing depends on) that succeeded, the
    one the operation was sent with (``initial``) when there are none.
    """
    downstream: dict[str, list[str]] = {task_id: [] for task_id in tasks}
    for task_id, upstream_ids in dependencies.items():
        for upstream_id in upstream_ids:
            downstream[upstream_id].append(task_id)

    def ran(task: TaskRow) -> bool:
        return task.attempt > 0 and task.status in (Status.SUCCESS, Status.FAILED,
                                                    Status.SKIPPED)

    # whether a task's failure was accepted downstream, last tasks first (one pass)
    accepted: dict[str, bool] = {}
    for task_id in graphlib.TopologicalSorter(downstream).static_order():
        accepted[task_id] = any(ran(tasks[d]) or (tasks[d].status == Status.FAILED
                                                  and accepted[d])
                                for d in downstream[task_id])
    failed = [task for task in tasks.values()
              if task.status == Status.FAILED and not accepted[task.id]]
    if failed:
        first = next((task for task in failed if ran(task)), failed[0])
        return Status.FAILED, first.result
    last = [tasks[t].result for t in tasks
            if not downstream[t] and tasks[t].status == Status.SUCCESS]
    return Status.SUCCESS, (merged(last) if len(last) > 1 else last[0] if last else initial)


def child_end(child: OperationRow | None, task_row: TaskRow) -> tuple[Result, Status] | None:
    """How a parent's task ends now that its sub-operation ``child`` ended: its result
    and status; None when there is nothing to do (the child did not end, the task does
    not wait for it, or it is not this task's child: a forged message changes nothing)."""
    if (child is None or child.status not in (Status.SUCCESS, Status.FAILED, Status.CANCELED)
            or task_row.status != Status.RUNNING or task_row.lease_expires_at is not None
            or (child.parent_task_id, child.parent_operation_id)
            != (task_row.id, task_row.operation_id)):
        return None
    result = load_result(child.result, task_row.id)
    status = Status.SUCCESS if child.status == Status.SUCCESS else Status.FAILED
    if status is Status.FAILED and (result.retcode or 0) < 300:
        result.retcode = 500
        result.stderr = result.stderr or f"its sub-operation {child.id} was {child.status}"
    return result, status


def storable(result: Result | None, task_id: str) -> tuple[Result, str | None]:
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
        return unstorable_result(task_id, why), why
    return cast(Result, result), None  # (None: stored as no result, as it always was)


def unstorable_result(task_id: str, why: str) -> Result:
    return Result(uuid=task_id, retcode=500, stderr=(
        f"Task {task_id} returned a result kser cannot store or forward ({why}); return a "
        "Result whose retcode fits 32 bits and whose retval holds only JSON values (str, "
        "int, float, bool, None, list, dict), small enough to be sent"))
