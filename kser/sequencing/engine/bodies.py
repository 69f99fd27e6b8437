"""A claimed task's body: the entrypoint made from its stored row and its message, run
inside the hook chain (:mod:`kser.middleware`), and how its attempt ended
(:func:`~kser.sequencing.engine.decisions.attempt_end`), to be stored. A body whose
``run`` is ``async def`` is awaited on the worker's event loop (:mod:`kser.aio`), the
same chain around it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from cdumay_result import Result

from kser import middleware
from kser.entry import Entrypoint
from kser.results import exception_result, is_success
from kser.schemas import KSER_METADATA_KEY, Message, dump_result
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.decisions import End, Mode, attempt_end, mode_of
from kser.sequencing.graph import load_result
from kser.sequencing.shapes import Sensor
from kser.sequencing.task import Task
from kser.status import Status
from kser.store import TaskRow


@dataclass
class Prepared:
    """A body made and ready to run: its entrypoint (None if making it failed: then
    ``failed`` is its result), the call the chain sees, what it forwards."""

    entrypoint: type[Entrypoint]
    task_row: TaskRow
    attempt: int
    claimed_at: float
    mode: Mode | None
    forwarded: dict[str, Any] | None
    body: Entrypoint | None
    failed: Result | None
    call: middleware.Call


class Bodies:
    """Runs the claimed tasks' bodies of one engine."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run(self, entrypoint: type[Entrypoint], kmsg: Message, task_row: TaskRow,
            attempt: int, claimed_at: float) -> End:
        """Run a claimed task's body inside the hook chain, in this thread: how its attempt
        ended, to be stored."""
        ready = self.prepare(entrypoint, kmsg, task_row, attempt, claimed_at)

        def run() -> End:
            ran = ready.failed
            if ready.body is not None:
                if isinstance(ready.body, Task):
                    ready.body.status = Status.RUNNING
                ran = ready.body.execute()
            return self.finish(ready, ran)

        return self._kept(ready, self.ctx.chain.run(ready.call, run))

    async def run_async(self, ready: Prepared) -> End:
        """:meth:`run` for a prepared ``async def`` body, on the worker's event loop."""

        async def run() -> End:
            ran = ready.failed
            if ready.body is not None:
                if isinstance(ready.body, Task):
                    ready.body.status = Status.RUNNING
                ran = await ready.body.execute_async()
            if getattr(ready.body, "followed", None) is not None:  # (a branch reads the
                return await asyncio.to_thread(self.finish, ready, ran)  # store: not here)
            return self.finish(ready, ran)

        return self._kept(ready, await self.ctx.chain.run_async(ready.call, run))

    def prepare(self, entrypoint: type[Entrypoint], kmsg: Message, task_row: TaskRow,
                attempt: int, claimed_at: float) -> Prepared:
        """The body of a claimed task, made from its stored row (its params, name and
        metadata) and its message (what it forwards, its attempt)."""
        task_id = task_row.id
        metadata = dict(task_row.metadata or {})
        metadata[KSER_METADATA_KEY] = {**kmsg.kser_metadata, "attempt": attempt}
        # a copy: Result's + changes its left side, and a retry must forward the original
        forwarded = dump_result(kmsg.result)
        # what it inherits: its upstream's retval and retcode; its stdout and stderr are
        # its own (a failure's stderr never carries an upstream's stdout)
        inherited = load_result(forwarded)
        inherited.stdout, inherited.stderr = "", ""
        body: Entrypoint | None
        failed = None
        try:
            body = entrypoint(uuid=task_id, params=task_row.params, result=inherited,
                              metadata=metadata)
        except Exception as exc:  # a broken __init__ fails the attempt like a broken run
            body, failed = None, exception_result(exc, task_id)
        else:
            if isinstance(body, Task):
                body.name = task_row.name
                body._upstream_results = partial(upstream_results, self.ctx, task_id)
                body._operation_status = partial(operation_status, self.ctx,
                                                 task_row.operation_id)
                if isinstance(body, Sensor):
                    body.pokes = task_row.pokes or 0
        call = middleware.Call(
            entrypoint=kmsg.entrypoint, task_id=task_id, worker=self.ctx.worker_name,
            trace_parent=kmsg.trace_parent, operation_id=task_row.operation_id,
            task_name=task_row.name, attempt=attempt,
            ready_at=kmsg.kser_metadata.get("ready_at"), claimed_at=claimed_at)
        return Prepared(entrypoint, task_row, attempt, claimed_at,
                        mode_of(kmsg.kser_metadata.get("mode")), forwarded, body, failed, call)

    def finish(self, ready: Prepared, ran: Result | None) -> End:
        """How the attempt ended, from what the body returned (said to the chain's call
        before the chain's span ends)."""
        end = attempt_end(ready.entrypoint, ready.task_row, ready.body, ran,
                          forwarded=ready.forwarded, attempt=ready.attempt, mode=ready.mode,
                          since=ready.claimed_at, now=time.time(),
                          branch_names=branch_names(self.ctx, ready.task_row, ready.body, ran))
        ready.call.ended(end.status, end.result, waiting=end.poke is not None)
        return end

    @staticmethod
    def _kept(ready: Prepared, end: End) -> End:
        end.trace_context, end.took = ready.call.trace_context, ready.call.took
        return end


def branch_names(ctx: Context, task_row: TaskRow, body: Any, result: Result | None
                 ) -> list[str] | None:
    """(a branch that chose) the names of the tasks right after it, from the store."""
    if getattr(body, "followed", None) is None or not is_success(result):
        return None
    with ctx.transaction() as tx:
        return list(tx.downstream_names(task_row.id))


def upstream_results(ctx: Context, task_id: str) -> dict[str, Result]:
    """The results of a task's upstream tasks, by name (what ``Task.upstream_results``
    reads)."""
    with ctx.transaction() as tx:
        rows = tx.upstream(task_id)
    return {row["name"]: load_result(row["result"], row["id"]) for row in rows}


def operation_status(ctx: Context, operation_id: str) -> str | None:
    """The operation's status as stored (what ``Task.checkpoint`` reads)."""
    with ctx.transaction() as tx:
        op = tx.get_operation(operation_id)
    return None if op is None else str(op.status)
