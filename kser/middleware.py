"""The hook chain around a task's body, written once: a lone task
(``Controller.execute``) and an operation's task (``Bodies.run``) run their bodies
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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
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
    """One behaviour around every task body, as Dramatiq's middleware: :meth:`enter`
    before the body (what it returns is handed back to :meth:`exit`), :meth:`exit` after
    it, the call then saying how the body ended (``error``: what the body raised, which
    passes through). A middleware is shared by every thread: what it keeps of one body
    is its token, never an attribute."""

    def enter(self, call: Call) -> Any:
        return None

    def exit(self, call: Call, token: Any, error: BaseException | None) -> None:
        pass


class Pacing(Middleware):
    """Times the body (:attr:`Call.took`, seconds) and adds it to ``pace``.

    :param pace: how long bodies took lately (the controller's: sizes the batches)
    """

    def __init__(self, pace: Pace) -> None:
        self.pace = pace

    def enter(self, call: Call) -> float:
        return time.monotonic()

    def exit(self, call: Call, token: float, error: BaseException | None) -> None:
        call.took = time.monotonic() - token
        self.pace.add(call.took)


class Metrics(Middleware):
    """Counts the hop of an operation's task when it starts, and a lone task's run
    (status, duration) when it ends; an operation's task's run is counted once its end
    is stored. No-ops unless metrics are enabled."""

    def enter(self, call: Call) -> float:
        if not call.lone:
            metrics.task_started(call.entrypoint, call.ready_at,
                                 call.claimed_at or time.time())
        return time.monotonic()

    def exit(self, call: Call, token: float, error: BaseException | None) -> None:
        if call.lone:
            metrics.task_ran(call.entrypoint, call.status, time.monotonic() - token)


class LogContext(Middleware):
    """Puts the call's operation, task, name, attempt and entrypoint on every log line
    of the body."""

    def enter(self, call: Call) -> AbstractContextManager[None]:
        if call.lone:
            fields: dict[str, Any] = dict(task_id=call.task_id, entrypoint=call.entrypoint)
        else:
            fields = dict(operation_id=call.operation_id, task_id=call.task_id,
                          task_name=call.task_name, attempt=call.attempt,
                          entrypoint=call.entrypoint)
        context = logs.context(**fields)
        context.__enter__()
        return context

    def exit(self, call: Call, token: AbstractContextManager[None],
             error: BaseException | None) -> None:
        _leave(token, error)


class Tracing(Middleware):
    """The span ``run <entrypoint>`` around the body (a child of its record's span),
    ended with the call's status; its context kept on :attr:`Call.trace_context`. A
    no-op without a tracer provider."""

    def enter(self, call: Call) -> tuple[AbstractContextManager[Any], Any]:
        if call.lone:
            attributes: dict[str, Any] = {
                "kser.entrypoint": call.entrypoint, "kser.task_id": str(call.task_id),
                "kser.worker": call.worker}
        else:
            attributes = {
                "kser.entrypoint": call.entrypoint, "kser.operation_id": call.operation_id,
                "kser.task_id": call.task_id, "kser.task_name": call.task_name or "",
                "kser.attempt": call.attempt, "kser.worker": call.worker}
        made = tracing.span(f"run {call.entrypoint}", call.trace_parent, attributes)
        return made, made.__enter__()

    def exit(self, call: Call, token: tuple[AbstractContextManager[Any], Any],
             error: BaseException | None) -> None:
        made, span = token
        if error is None:
            call.trace_context = tracing.ended(
                span, metrics.WAITING if call.waiting else call.status, call.error)
        _leave(made, error)


class Chain:
    """Middleware around a body, the first outermost.

    :param middleware: the behaviours, outside in (default: :func:`default`)
    """

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = list(middleware)

    def run(self, call: Call, body: Callable[[], T]) -> T:
        """Run ``body`` inside every middleware; it says how it ended with
        ``call.ended(...)`` before it returns."""
        entered: list[tuple[Middleware, Any]] = []
        try:
            self._enter(call, entered)
            result = body()
        except BaseException as exc:
            self._exit(call, entered, exc)
            raise
        self._exit(call, entered, None)
        return result

    async def run_async(self, call: Call, body: Callable[[], Awaitable[T]]) -> T:
        """:meth:`run` for an ``async def`` body, on the worker's event loop (each body in
        an asyncio task of its own: what the middleware puts in the context, the log
        fields and the span, is that body's alone)."""
        entered: list[tuple[Middleware, Any]] = []
        try:
            self._enter(call, entered)
            result = await body()
        except BaseException as exc:
            self._exit(call, entered, exc)
            raise
        self._exit(call, entered, None)
        return result

    def _enter(self, call: Call, entered: list[tuple[Middleware, Any]]) -> None:
        for middleware in self.middleware:
            entered.append((middleware, middleware.enter(call)))

    @staticmethod
    def _exit(call: Call, entered: list[tuple[Middleware, Any]],
              error: BaseException | None) -> None:
        for middleware, token in reversed(entered):
            middleware.exit(call, token, error)


def _leave(context: AbstractContextManager[Any], error: BaseException | None) -> None:
    """Leave a context manager entered by a middleware, telling it what was raised."""
    if error is None:
        context.__exit__(None, None, None)
    else:
        context.__exit__(type(error), error, error.__traceback__)


def default(pace: Pace) -> Chain:
    """kser's chain: :class:`Pacing` (into ``pace``), :class:`Metrics`,
    :class:`LogContext`, :class:`Tracing`."""
    return Chain([Pacing(pace), Metrics(), LogContext(), Tracing()])
