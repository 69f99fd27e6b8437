"""Retries of a failed task: which failures retry, and how long to wait.

A task of an operation that fails is sent again, up to its class's
``MAX_RETRIES`` times, after an exponential backoff with jitter. The waiting
message is a row of the store's outbox with a due time, sent by whichever
worker sweeps first once it is due: a retry holds no consumer and no
partition, and survives the restart of every process.

Which failures retry (first rule that matches):

1. the task raised :class:`Retry`: yes;
2. the exception is one of ``NEVER_RETRY`` (default: cdumay ``ValidationError``): no;
3. the exception is one of ``RETRY_ON`` (default: any ``Exception``, time limits included): yes;
4. no exception, a returned ``Result`` with retcode >= 500: yes; below 500 (the
   request was wrong, trying again will not help): no.
"""

from __future__ import annotations

import random

from kser.errors import KserError

#: default smallest wait before a retry, seconds
DEFAULT_MIN_BACKOFF = 1.0
#: default largest wait before a retry, seconds
DEFAULT_MAX_BACKOFF = 300.0


class Retry(KserError):  # noqa: N818 - named for what the task asks
    """Raised by a task to ask to be run again (counts against ``MAX_RETRIES``).

    :param message: why, stored as the attempt's error
    :param delay: seconds to wait instead of the computed backoff
    """

    def __init__(self, message: str = "retry requested", delay: float | None = None):
        super().__init__(message)
        self.delay = delay


def should_retry(task_class: type, exception: BaseException | None, retcode: int) -> bool:
    """Whether a failure of ``task_class`` is worth another attempt (see the module doc)."""
    if isinstance(exception, Retry):
        return True
    if exception is not None:
        if isinstance(exception, tuple(getattr(task_class, "NEVER_RETRY", ()))):
            return False
        return isinstance(exception, tuple(getattr(task_class, "RETRY_ON", (Exception,))))
    return retcode >= 500


def backoff(task_class: type, attempt: int, exception: BaseException | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``.

    ``RETRY_MIN_BACKOFF * 2 ** (attempt - 1)``, capped at ``RETRY_MAX_BACKOFF``,
    then a random value between half of it and all of it, so that tasks
    failing together do not retry together.
    """
    if isinstance(exception, Retry) and exception.delay is not None:
        return max(0.0, exception.delay)
    low = float(getattr(task_class, "RETRY_MIN_BACKOFF", DEFAULT_MIN_BACKOFF))
    high = float(getattr(task_class, "RETRY_MAX_BACKOFF", DEFAULT_MAX_BACKOFF))
    delay = min(high, low * 2 ** max(0, attempt - 1))
    return random.uniform(delay / 2, delay)
