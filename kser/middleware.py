"""The hook chain around a task's body, written once: a lone task
(``Controller.execute``) and an operation's task (the runner) run their bodies through
:func:`around_body`.

Around a body, from the outside in (Dramatiq's middleware is the model):

1. **pace and duration**: how long it took (:attr:`Call.took`) feeds the pace that sizes
   the batches (:class:`kser.pace.Pace`);
2. **metrics**: the hop (from when it could run to its claim) when it starts; its run,
   status and duration when it ends (a lone task's at once; an operation's task's once
   its end is stored, by :func:`kser.sequencing.ends.count`);
3. **log context**: every log line of the body carries its operation, task, attempt,
   entrypoint (``kser.logs.context``);
4. **span**: ``run <entrypoint>``, child of its record's span; its context is kept on
   the call (:attr:`Call.trace_context`: what the end queues is its child).

The time limit (``TIME_LIMIT``) is the task's own: ``Task.execute`` applies it, inside
all of these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cdumay_result import Result

from kser import logs, metrics, tracing
from kser.pace import Pace
from kser.status import Status

T = TypeVar("T")


@dataclass
class Call:
    """One body's run: who it is (for logs, spans and metrics), and how it ended."""

    entrypoint: str
    task_id: str
    worker: str
    trace_parent: Any = None
    #: (an operation's task) its operation, name, attempt, and when it could run and
    #: was claimed
    operation_id: str | None = None
    task_name: str | None = None
    attempt: int | None = None
    ready_at: Any = None
    claimed_at: float | None = None
    #: how it ended (set by the body, with :meth:`ended`)
    status: str = Status.FAILED
    error: str | None = None
    #: (a sensor whose condition is unmet) it waits: neither a success nor a failure
    waiting: bool = False
    #: the trace context of its span, once ended
    trace_context: str | None = None
    #: how long it ran, seconds
    took: float = 0.0

    def ended(self, status: str, result: Result | None, waiting: bool = False) -> None:
        """Say how the body ended (before it returns: the span ends with it)."""
        self.status, self.waiting = status, waiting
        self.error = None if result is None else result.stderr

    def log_fields(self) -> dict[str, Any]:
        if self.operation_id is None:
            return dict(task_id=self.task_id, entrypoint=self.entrypoint)
        return dict(operation_id=self.operation_id, task_id=self.task_id,
                    task_name=self.task_name, attempt=self.attempt,
                    entrypoint=self.entrypoint)

    def span_attributes(self) -> dict[str, Any]:
        if self.operation_id is None:
            return {"kser.entrypoint": self.entrypoint, "kser.task_id": str(self.task_id),
                    "kser.worker": self.worker}
        return {"kser.entrypoint": self.entrypoint, "kser.operation_id": self.operation_id,
                "kser.task_id": self.task_id, "kser.task_name": self.task_name or "",
                "kser.attempt": self.attempt, "kser.worker": self.worker}


def around_body(call: Call, pace: Pace, body: Callable[[], T]) -> T:
    """Run ``body`` inside the hook chain (see the module); it says how it ended with
    ``call.ended(...)`` before it returns."""
    lone = call.operation_id is None
    if not lone:
        metrics.task_started(call.entrypoint, call.ready_at, call.claimed_at or time.time())
    started = time.monotonic()
    try:
        with logs.context(**call.log_fields()), tracing.span(
                f"run {call.entrypoint}", call.trace_parent, call.span_attributes()) as span:
            value = body()
            call.trace_context = tracing.ended(
                span, metrics.WAITING if call.waiting else call.status, call.error)
        return value
    finally:
        call.took = time.monotonic() - started
        pace.add(call.took)  # (the pace of bodies sizes the batches)
        if lone:  # (an operation's task is counted once its end is stored)
            metrics.task_ran(call.entrypoint, call.status, call.took)
