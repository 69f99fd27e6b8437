"""Task: an :class:`~kser.entry.Entrypoint` that is a step of an operation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.entry import Entrypoint
from kser.errors import KserError
from kser.results import exception_result
from kser.schemas import KSER_METADATA_KEY
from kser.sequencing.retries import DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF
from kser.sequencing.rules import TriggerRule
from kser.status import FINAL_STATUSES as FINAL_STATUSES  # re-exported (kser 0.8 names)
from kser.status import Status
from kser.store.tx.base import MAX_LOG_LINE, MAX_LOG_LINES
from kser.timelimit import TimeLimitExceeded, time_limit

logger = logging.getLogger(__name__)

T = TypeVar("T", "Task", "list[Task]")


class TaskCanceled(KserError):  # noqa: N818 (what happened to the task)
    """Raised by :meth:`Task.checkpoint` when the task's operation was canceled: the task
    ends CANCELED, and nothing follows it."""


class SkipTask(KserError):  # noqa: N818 (the API's name, as Airflow's AirflowSkipException)
    """Raised in ``run``: this task ends SKIPPED, the reason in its result's stdout.

    Tasks downstream of it then follow their trigger rules (``all_success``: SKIPPED too).
    """

#: the statuses of a task or an operation (kser.status.Status; these names stay)
PENDING, RUNNING, SUCCESS, FAILED, SKIPPED, CANCELED = (
    Status.PENDING, Status.RUNNING, Status.SUCCESS, Status.FAILED, Status.SKIPPED,
    Status.CANCELED)


class Task(Entrypoint):
    """A step of an operation, runnable alone too (a lone task needs no store).

    Reliability settings, per class (see :mod:`kser.sequencing.retries`):
    ``MAX_RETRIES``, ``RETRY_MIN_BACKOFF``/``RETRY_MAX_BACKOFF`` (seconds),
    ``RETRY_ON``/``NEVER_RETRY`` (exception classes) and ``TIME_LIMIT``
    (seconds). Retries apply to the tasks of operations (they need the store).

    :param uuid: task identifier (new UUID4 when omitted)
    :param params: task parameters
    :param status: one of PENDING, RUNNING, SUCCESS, FAILED, SKIPPED, CANCELED
    :param result: result forwarded from the previous task
    :param metadata: task context
    """

    #: attempts after the first one when a failure is worth retrying (0: never retry)
    MAX_RETRIES: int = 0
    #: smallest wait before a retry, seconds (doubles each attempt)
    RETRY_MIN_BACKOFF: float = DEFAULT_MIN_BACKOFF
    #: largest wait before a retry, seconds
    RETRY_MAX_BACKOFF: float = DEFAULT_MAX_BACKOFF
    #: exceptions that are worth a retry
    RETRY_ON: tuple[type[BaseException], ...] = (Exception,)
    #: exceptions that are never retried, even if RETRY_ON matches
    NEVER_RETRY: tuple[type[BaseException], ...] = (ValidationError,)
    #: seconds a run may take before it is stopped and fails (None: no limit)
    TIME_LIMIT: float | None = None
    #: when the task runs, from its upstream tasks' states (see kser.sequencing.rules)
    TRIGGER_RULE: str = TriggerRule.ALL_SUCCESS
    #: the topic its messages go to, for a pool of workers of its own (None: its
    #: operation's topic)
    TOPIC: str | None = None

    def __init__(self, uuid: str | None = None, params: dict[str, Any] | None = None,
                 status: str = PENDING, result: Result | None = None,
                 metadata: dict[str, Any] | None = None, *, name: str | None = None,
                 trigger_rule: str | None = None) -> None:
        self.status = status
        #: unique in its operation (default: the class's name, ``-2``, ``-3``... on
        #: collisions); controls (``run_from``, ``run_one``) take it as well as the id
        self.name = name
        self.trigger_rule = TriggerRule.of(trigger_rule or type(self).TRIGGER_RULE,
                                           f"{type(self).path}")
        #: the tasks this one waits for (set by ``>>``, ``set_upstream`` or a chain)
        self.upstream: list[Task] = []
        #: set by ``raise SkipTask(reason)`` in run: the task ends SKIPPED
        self.skipped: str | None = None
        #: (Branch) the names of the downstream tasks it chose
        self.followed: list[str] | None = None
        #: (Sensor) set when its poke found the condition unmet: it is poked again later
        self.waiting = False
        self._upstream_results: Callable[[], dict[str, Result]] | None = None
        #: reads the operation's status (set by kser for a task of an operation)
        self._operation_status: Callable[[], str | None] | None = None
        self._checked_at = 0.0
        #: ``(time, level, message)`` of every :meth:`log` call, stored with the attempt
        self.log_lines: list[tuple[float, int, str]] = []
        self._log_lines_dropped = 0
        Entrypoint.__init__(self, uuid=uuid, params=params, result=result, metadata=metadata)

    @property
    def attempt(self) -> int:
        """Number of this run of the task: 1 for the first, 2 after a takeover or recover..."""
        return int(self.metadata.get(KSER_METADATA_KEY, {}).get("attempt", 1))

    @property
    def operation_id(self) -> str | None:
        """Id of the operation this task belongs to (None for a lone task)."""
        operation_id: str | None = self.metadata.get(KSER_METADATA_KEY, {}).get("operation_id")
        return operation_id

    # -- shapes (see kser.sequencing.shapes) -------------------------------------------

    def set_upstream(self, *tasks: Task | Iterable[Task]) -> None:
        """This task waits for ``tasks`` (its trigger rule says how)."""
        for task in _tasks(tasks):
            if task is self:
                raise ValidationError(f"Task {self.name or type(self).__name__} cannot "
                                      "depend on itself")
            if task not in self.upstream:
                self.upstream.append(task)

    def set_downstream(self, *tasks: Task | Iterable[Task]) -> None:
        """``tasks`` wait for this one."""
        for task in _tasks(tasks):
            task.set_upstream(self)

    def __rshift__(self, other: T) -> T:
        """``a >> b``: b waits for a; ``a >> [b, c]``: both do. Returns ``other``."""
        self.set_downstream(other)
        return other

    def __rrshift__(self, other: Iterable[Task]) -> Task:
        """``[a, b] >> c``: c waits for a and b. Returns c."""
        self.set_upstream(other)
        return self

    def __lshift__(self, other: T) -> T:
        """``b << a``: b waits for a. Returns ``other``."""
        self.set_upstream(other)
        return other

    def __rlshift__(self, other: Iterable[Task]) -> Task:
        """``[b, c] << a``: b and c wait for a. Returns a."""
        self.set_downstream(other)
        return self

    def checkpoint(self, every: float = 1.0) -> None:
        """Stop here if the operation was canceled meanwhile: call it between the steps of
        a long ``run``. Raises :class:`TaskCanceled` (the task ends CANCELED, nothing
        follows it); reads the store at most once per ``every`` seconds (a no-op for a
        task run alone)."""
        if self._operation_status is None:
            return
        now = time.monotonic()
        if now - self._checked_at < every:
            return
        self._checked_at = now
        status = self._operation_status()
        if status is not None and status != RUNNING:
            raise TaskCanceled(f"its operation {self.operation_id} is {status}: stopped at a "
                               "checkpoint")

    @property
    def upstream_results(self) -> dict[str, Result]:
        """The results of this task's upstream tasks, by name (read from the store when
        first used; empty for a task run alone). Failed and skipped ones are here too,
        while the forwarded :attr:`result` merges the successful ones only."""
        if self._upstream_results is not None:
            loaded = self._upstream_results()
            self._upstream_results = lambda: loaded
            return loaded
        return {}

    def log(self, message: str, level: int = logging.INFO, *args: Any, **kwargs: Any) -> None:
        """Log ``message`` prefixed with ``{TaskName}.{TaskStatus}: {EntryPointPath}[{TaskUUID}]: ``

        (e.g. ``DiceRoll.RUNNING: app.DiceRoll[6f1c...]: ``).

        The line is also kept for the store (``kser_task_logs``): at most
        ``MAX_LOG_LINES`` (1,000) lines per attempt, each cut at ``MAX_LOG_LINE``
        (10,000) characters; the last kept line says how many more there were.

        ``args`` and ``kwargs`` are passed to :meth:`logging.Logger.log`.
        """
        prefix = f"{type(self).__name__}.{self.status}: {type(self).path}[{self.uuid}]: "
        extra = dict(kwargs.pop("extra", None) or {})
        if logger.isEnabledFor(level):
            extra.setdefault("kmsg", self._log_extra()["kmsg"])
            logger.log(level, prefix + str(message), *args, extra=extra, **kwargs)
        # what is kept for the store is bounded, however much a task logs
        if len(self.log_lines) < MAX_LOG_LINES - 1:
            text = _formatted(str(message), args)
            self.log_lines.append((time.time(), level, prefix + text[:MAX_LOG_LINE]))
        else:
            self._log_lines_dropped += 1
            self.log_lines[MAX_LOG_LINES - 1:] = [(
                time.time(), logging.WARNING, f"{prefix}… {self._log_lines_dropped} more log "
                f"line(s) not kept (limit {MAX_LOG_LINES} per attempt)")]

    def execute(self, result: Result | None = None) -> Result:
        """Run the lifecycle (within ``TIME_LIMIT`` if set); always return a ``Result``."""
        if self.TIME_LIMIT is None:
            return super().execute(result)
        try:
            with time_limit(self.TIME_LIMIT):
                return super().execute(result)
        except TimeLimitExceeded as exc:  # delivered between the lifecycle and the block's end
            self.exception = exc
            return self._onerror(exception_result(exc, uuid=self.uuid))

    async def execute_async(self, result: Result | None = None) -> Result:
        """:meth:`execute` awaiting an ``async def`` run (on a worker's event loop): past
        ``TIME_LIMIT`` the coroutine is cancelled and the attempt fails with
        :class:`TimeLimitExceeded`."""
        if self.TIME_LIMIT is None:
            return await super().execute_async(result)
        try:
            async with asyncio.timeout(self.TIME_LIMIT):
                return await super().execute_async(result)
        except TimeoutError:
            exc = TimeLimitExceeded(f"time limit exceeded after {self.TIME_LIMIT:g} s")
            self.exception = exc
            return self._onerror(exception_result(exc, uuid=self.uuid))

    def _prerun(self) -> None:
        self.status = RUNNING
        super()._prerun()

    def _run(self) -> Result | None:
        try:
            return super()._run()
        except SkipTask as exc:
            return self._skip(exc)

    async def _run_async(self) -> Result | None:
        try:
            return await super()._run_async()
        except SkipTask as exc:
            return self._skip(exc)

    def _skip(self, exc: SkipTask) -> Result:
        self.skipped = str(exc) or "skipped"
        return Result(uuid=self.uuid, stdout=f"skipped: {self.skipped}")

    def _onsuccess(self, result: Result | None) -> Result:
        self.status = SKIPPED if self.skipped is not None else SUCCESS
        return super()._onsuccess(result)

    def _onerror(self, result: Result) -> Result:
        self.status = FAILED
        return super()._onerror(result)

    def __repr__(self) -> str:
        return (f"Task [{type(self).path}](uuid={self.uuid},status={self.status}, "
                f"params={self.params})")



def _tasks(items: Iterable[Any]) -> list[Task]:
    """Tasks given one by one or in lists."""
    tasks: list[Task] = []
    for item in items:
        if isinstance(item, Task):
            tasks.append(item)
        elif isinstance(item, list | tuple | set):
            tasks.extend(_tasks(item))
        else:
            raise ValidationError(f"{item!r} is not a Task: >> and set_upstream take tasks "
                                  "or lists of tasks")
    return tasks


def _formatted(message: str, args: tuple[Any, ...]) -> str:
    """``message % args`` as :mod:`logging` makes it (its own record does: one mapping is
    the mapping); a message its args do not fit is kept with them after it, never an
    error of the task."""
    if not args:
        return message
    try:
        return logging.LogRecord("", logging.INFO, "", 0, message, args, None).getMessage()
    except Exception:  # (%c of 10**9, %d of inf, an arg whose __str__ raises...)
        try:
            return f"{message} {args!r}"
        except Exception:
            return f"{message} (args that cannot be shown)"
