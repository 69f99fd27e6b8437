"""Entrypoint: the unit of work a message names.

Lifecycle of :meth:`Entrypoint.execute`::

    postinit (at construction) → check_required_params → prerun → run → postrun
        → onsuccess   (retcode < 300)
        → onerror     (an exception, or retcode >= 300)

``execute`` never raises: it always returns a :class:`cdumay_result.Result`.
``unsafe_execute`` is the same without the safety net.

``run`` may be ``async def``: a worker then runs the body on its event loop
(:meth:`execute_async`, awaited there: an operation's task holds no thread while it
waits); ``execute`` runs it to its end in the calling thread (``asyncio.run``; where
a loop already runs in that thread, on a loop of its own in another thread).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.results import exception_result, is_success, loggable
from kser.schemas import Message

logger = logging.getLogger(__name__)


class EntrypointMeta(type):
    """Gives every entrypoint class its routing ``path``."""

    @property
    def path(cls) -> str:
        """``module.ClassName``: the name messages use to reach this entrypoint."""
        return f"{cls.__module__}.{cls.__name__}"


class Entrypoint(metaclass=EntrypointMeta):
    """Base class of everything a message can run.

    :param uuid: run identifier (a new UUID4 when omitted)
    :param params: keyword parameters, checked against :attr:`REQUIRED_FIELDS`
    :param result: result forwarded by a previous step; ``run``'s own result is
        added to it (``Result.__add__``), so values in ``retval`` accumulate
    :param metadata: context carried along with the message
    """

    #: names that must be present in ``params`` before anything runs
    REQUIRED_FIELDS: tuple[str, ...] | list[str] = ()
    #: the OperationRegistry the class is subscribed to (set by ``subscribe``)
    registry: Any = None

    def __init__(self, uuid: str | None = None, params: dict[str, Any] | None = None,
                 result: Result | None = None, metadata: dict[str, Any] | None = None):
        self.uuid = uuid or str(uuid4())
        self.params = params or dict()
        self.result = result or Result(uuid=self.uuid)
        self.metadata = metadata or dict()
        self._init_error: Result | None = None
        #: the exception the last :meth:`execute` caught (None when it raised nothing)
        self.exception: BaseException | None = None
        self._post_init()

    # -- lifecycle hooks users override -------------------------------------------------

    def postinit(self) -> None:
        """Called at the end of ``__init__``; an exception here makes ``execute`` fail."""

    def prerun(self) -> None:
        """Called after the required parameters are checked, before :meth:`run`."""

    def run(self) -> Any:
        """The work itself. Return a ``Result`` (``None`` means "nothing to add"). It may
        be ``async def`` (see :meth:`is_async`)."""
        raise NotImplementedError(f"Entrypoint '{self.__class__.path}' does not implement run()")

    def postrun(self, result: Result) -> Result:
        """Called with run's result; may return a different one."""
        return result

    def onsuccess(self, result: Result) -> Result:
        """Called when the run succeeded; returns the final result."""
        return result

    def onerror(self, result: Result) -> Result:
        """Called when the run failed (exception or retcode >= 300); returns the final result."""
        return result

    # -- execution ----------------------------------------------------------------------

    def check_required_params(self) -> None:
        """Raise ``ValidationError`` (400) naming the first missing parameter."""
        for param in self.REQUIRED_FIELDS:
            if param not in self.params:
                raise ValidationError(
                    f"Missing parameter: {param} (required by {self.__class__.path})",
                    extra=dict(uuid=self.uuid, entrypoint=self.__class__.path, param=param),
                )

    @classmethod
    def is_async(cls) -> bool:
        """Whether :meth:`run` is ``async def`` (a worker awaits it on its event loop)."""
        return inspect.iscoroutinefunction(cls.run)

    def unsafe_execute(self, result: Result | None = None) -> Result:
        """Run the lifecycle; exceptions propagate.

        :param result: a result to merge into :attr:`result` before running
        """
        if self._init_error is not None:
            return self._onerror(self._init_error)
        if result:
            self.result += result
        self._prerun()
        return self._ended(self._postrun(self._run()))

    async def unsafe_execute_async(self, result: Result | None = None) -> Result:
        """:meth:`unsafe_execute`, awaiting an ``async def`` :meth:`run`."""
        if self._init_error is not None:
            return self._onerror(self._init_error)
        if result:
            self.result += result
        self._prerun()
        return self._ended(self._postrun(await self._run_async()))

    def execute(self, result: Result | None = None) -> Result:
        """Run the lifecycle and always return a ``Result``, never raise."""
        self.exception = None
        try:
            return self.unsafe_execute(result=result)
        except BaseException as exc:
            return self._failed(exc)

    async def execute_async(self, result: Result | None = None) -> Result:
        """:meth:`execute`, awaiting an ``async def`` :meth:`run` (a synchronous one runs
        in the loop's thread); never raises but for its cancellation."""
        self.exception = None
        try:
            return await self.unsafe_execute_async(result=result)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # (cancelled: its time limit, a stop)
                raise
            return self._failed(RuntimeError(  # (one of its awaits raised it, unasked)
                "the task's body raised CancelledError, but nothing cancelled it"))
        except BaseException as exc:
            return self._failed(exc)

    def _ended(self, outcome: Result | None) -> Result:
        if is_success(outcome) or outcome is None:
            return self._onsuccess(outcome)
        return self._onerror(outcome)

    def _failed(self, exc: BaseException) -> Result:
        """The safety net: what the lifecycle raised, as a failed result (raised again
        when it is no failure of the task: an interrupt, a cancellation)."""
        if isinstance(exc, SystemExit):  # sys.exit() in a task ends the task, not the worker
            self.exception = exc
            return self._onerror(exception_result(
                RuntimeError(f"the task called sys.exit({exc.code!r})"), uuid=self.uuid))
        if not isinstance(exc, Exception):
            raise exc
        self.exception = exc
        return self._onerror(exception_result(exc, uuid=self.uuid))

    # -- conversions --------------------------------------------------------------------

    def to_Message(self, result: Result | None = None) -> Message:
        """This entrypoint as a :class:`~kser.schemas.Message`."""
        return Message(uuid=self.uuid, entrypoint=self.__class__.path, params=self.params,
                       result=result if result else self.result, metadata=self.metadata)

    @classmethod
    def from_Message(cls, kmsg: Message) -> Entrypoint:
        """Build the entrypoint a message asks for."""
        return cls(uuid=kmsg.uuid, params=kmsg.params, result=kmsg.result,
                   metadata=kmsg.metadata)

    def label(self, action: str | None = None) -> str:
        """``Name[uuid]`` (and `` - action``), for log lines."""
        return f"{self.__class__.__name__}[{self.uuid}]" + (f" - {action}" if action else "")

    # -- internals: logging around the hooks ---------------------------------------------

    def _log(self, level: int, event: str, result: Result | None = None) -> None:
        """``{Name}.{event}: {path}[{uuid}]`` with the message's (and result's) ids as
        ``extra``; an end adds :func:`~kser.results.loggable` of its result."""
        if logger.isEnabledFor(level):
            if result is None:
                logger.log(level, "%s.%s: %s[%s]", type(self).__name__, event, type(self).path,
                           self.uuid, extra=self._log_extra())
            else:
                logger.log(level, "%s.%s: %s[%s]: %s", type(self).__name__, event,
                           type(self).path, self.uuid, loggable(result),
                           extra=self._log_extra(result))

    def _log_extra(self, result: Result | None = None) -> dict[str, Any]:
        """``kmsg`` (uuid and entrypoint) and ``kresult`` (retcode) for a log
        record: ids only. Params, metadata and results stay out of the logs (a JSON
        formatter prints every extra: they may hold secrets, and be a megabyte)."""
        extra: dict[str, Any] = dict(kmsg={"uuid": self.uuid, "entrypoint": type(self).path})
        if result is not None:
            extra["kresult"] = {"retcode": result.retcode}
        return extra

    def _post_init(self) -> None:
        try:
            self.postinit()
        except Exception as exc:
            self._init_error = exception_result(exc, uuid=self.uuid)

    def _prerun(self) -> None:
        self._log(logging.DEBUG, "PreRun")
        self.check_required_params()
        self.prerun()

    def _run(self) -> Result | None:
        outcome = self.run()
        if inspect.iscoroutine(outcome):  # (async def run, called outside a worker's loop)
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                outcome = asyncio.run(outcome)
            else:  # (this thread runs a loop, which asyncio.run refuses: one of its own,
                with ThreadPoolExecutor(1) as pool:  # in a thread of its own)
                    outcome = pool.submit(asyncio.run, outcome).result()
        return self._checked(outcome)

    async def _run_async(self) -> Result | None:
        outcome = self.run()
        return self._checked(await outcome if inspect.isawaitable(outcome) else outcome)

    def _checked(self, outcome: Any) -> Result | None:
        if outcome is not None and not isinstance(outcome, Result):
            raise TypeError(f"{self.__class__.path}.run() must return a cdumay_result.Result "
                            f"or None, not {type(outcome).__name__}")
        return outcome

    def _postrun(self, result: Result | None) -> Result | None:
        return self.postrun(result)

    def _onsuccess(self, result: Result | None) -> Result:
        result = self.result + result if result else self.result
        self._log(logging.INFO, "Success", result)
        return self.onsuccess(result)

    def _onerror(self, result: Result) -> Result:
        result = self.result + result if result else self.result
        self._log(logging.ERROR, "Failed", result)
        return self.onerror(result)
