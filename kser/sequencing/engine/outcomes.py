"""What a message's handling failing means for the worker: redo it later (the store or
the broker failed) or dead-letter it (it cannot be handled, and never will)."""

from __future__ import annotations

from collections.abc import Callable

from cdumay_result import Result

from kser.errors import RedoError, UndeliverableError, WorkerFatalError, is_transient, safe_text
from kser.schemas import Message


def settled(kmsg: Message, call: Callable[[], Result]) -> Result | Exception:
    """``call()``'s result, or what its failure means for ``kmsg`` (see :func:`failure`)."""
    try:
        return call()
    except WorkerFatalError:
        raise
    except Exception as exc:
        return failure(exc, kmsg)


def failure(exc: Exception, kmsg: Message) -> RedoError | UndeliverableError:
    """What handling ``kmsg`` failing with ``exc`` means for the worker: redo it later (the
    store or broker failed), or dead-letter it (it cannot be handled, and never will)."""
    if isinstance(exc, RedoError | UndeliverableError):
        return exc
    reason = safe_text(getattr(exc, "orig", None) or exc, 1000)
    if is_transient(exc):
        return RedoError(f"store unreachable: {reason}")
    what = "task" if kmsg.is_task else "operation"
    return UndeliverableError(
        f"The {what} message {kmsg.entrypoint}[{kmsg.uuid}] cannot be handled: "
        f"{reason if hasattr(exc, 'code') else f'{type(exc).__name__}: {reason}'}; "
        "fix the cause, then send it again (kser dlq replay)",
        extra=dict(uuid=kmsg.uuid), code=getattr(exc, "code", None) or 500)
