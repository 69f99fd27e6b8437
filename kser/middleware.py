"""The hook chain around a task's body, written once: a lone task
(``Controller.execute``) and an operation's task (``Runner.run_body``) run their bodies
through a :class:`Chain`. Each behaviour around a body is a small :class:`Middleware`
(Dramatiq's middleware is the model); from the outside in:

1. :class:`Pacing`: how long the body took (:attr:`Call.took`) feeds the pace that
   sizes the batches (:class:`kser.pace.Pace`);
2. :class:`Metrics`: the hop (from when it could run to its claim) when it starts; its
   run, status and duration when it ends (a lone task's at once; an operation's task's
   once its end is stored, by :func:`kser.sequencing.engine.ends.count`);
3. :class:`LogContext`: every log line of the body carries its operation, task,
   attempt and entrypoint (``kser.logs.context``);
4. :class:`Tracing`: the span ``run <entrypoint>``, child of its record's span; its
   context is kept on the call (:attr:`Call.trace_context`: what the end queues is its
   child).

The time limit (``TIME_LIMIT``) is the task's own: ``Task.execute`` applies it, inside
all of these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
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

    @property
    def lone(self) -> bool:
        """A task sent alone (no operation, nothing of it stored)."""
        return self.operation_id is None

    def ended(self, status: str, result: Result | None, waiting: bool = False) -> None:
        """Say how the body ended (before it returns: the span ends with it)."""
        self.status, self.waiting = status, waiting
        self.error = None if result is None else result.stderr


class Middleware:
    """One behaviour around every task body: :meth:`around` is entered before the body
    and left after it, the call then saying how the body ended (an exception the body
    raised passes through it)."""

    @contextmanager
    def around(self, call: Call) -> Iterator[None]:
        yield


class Pacing(Middleware):
    """Times the body (:attr:`Call.took`, seconds) and adds it to ``pace``.

    :param pace: how long bodies took lately (the controller's: sizes the batches)
    """

    def __init__(self, pace: Pace) -> None:
        self.pace = pace

    @contextmanager
    def around(self, call: Call) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            call.took = time.monotonic() - started
            self.pace.add(call.took)


class Metrics(Middleware):
    """Counts the hop of an operation's task when it starts, and a lone task's run
    (status, duration) when it ends; an operation's task's run is counted once its end
    is stored. No-ops unless metrics are enabled."""

    @contextmanager
    def around(self, call: Call) -> Iterator[None]:
        if not call.lone:
            metrics.task_started(call.entrypoint, call.ready_at,
                                 call.claimed_at or time.time())
        started = time.monotonic()
        try:
            yield
        finally:
            if call.lone:
                metrics.task_ran(call.entrypoint, call.status, time.monotonic() - started)


class LogContext(Middleware):
    """Puts the call's operation, task, name, attempt and entrypoint on every log line
    of the body."""

    @contextmanager
    def around(self, call: Call) -> Iterator[None]:
        if call.lone:
            fields: dict[str, Any] = dict(task_id=call.task_id, entrypoint=call.entrypoint)
        else:
            fields = dict(operation_id=call.operation_id, task_id=call.task_id,
                          task_name=call.task_name, attempt=call.attempt,
                          entrypoint=call.entrypoint)
        with logs.context(**fields):
            yield


class Tracing(Middleware):
    """The span ``run <entrypoint>`` around the body (a child of its record's span),
    ended with the call's status; its context kept on :attr:`Call.trace_context`. A
    no-op without a tracer provider."""

    @contextmanager
    def around(self, call: Call) -> Iterator[None]:
        if call.lone:
            attributes: dict[str, Any] = {
                "kser.entrypoint": call.entrypoint, "kser.task_id": str(call.task_id),
                "kser.worker": call.worker}
        else:
            attributes = {
                "kser.entrypoint": call.entrypoint, "kser.operation_id": call.operation_id,
                "kser.task_id": call.task_id, "kser.task_name": call.task_name or "",
                "kser.attempt": call.attempt, "kser.worker": call.worker}
        with tracing.span(f"run {call.entrypoint}", call.trace_parent, attributes) as span:
            yield
            call.trace_context = tracing.ended(
                span, metrics.WAITING if call.waiting else call.status, call.error)


class Chain:
    """Middleware around a body, the first outermost.

    :param middleware: the behaviours, outside in (default: :func:`default`)
    """

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = list(middleware)

    def run(self, call: Call, body: Callable[[], T]) -> T:
        """Run ``body`` inside every middleware; it says how it ended with
        ``call.ended(...)`` before it returns."""
        with ExitStack() as stack:
            for middleware in self.middleware:
                stack.enter_context(middleware.around(call))
            return body()


def default(pace: Pace) -> Chain:
    """kser's chain: :class:`Pacing` (into ``pace``), :class:`Metrics`,
    :class:`LogContext`, :class:`Tracing`."""
    return Chain([Pacing(pace), Metrics(), LogContext(), Tracing()])
