"""How long message bodies took lately: what sizes the batches a worker's task threads
take, and how long a task's end waits in a batch before it is stored."""

from __future__ import annotations


class Pace:
    """How long message bodies took lately, seconds (a moving average; None until one ran
    here): what sizes the batches a worker's task threads take (:meth:`limit`)."""

    #: longest a message of a batch should wait behind the others for its body (and a
    #: task's end for being stored), seconds
    WINDOW = 0.05

    def __init__(self) -> None:
        self.seconds: float | None = None

    def add(self, took: float) -> None:
        """A body took ``took`` seconds (threads may race here: one float, no harm)."""
        pace = self.seconds
        self.seconds = took if pace is None else pace + (took - pace) * 0.2

    def limit(self, size: int) -> int:
        """How many messages one thread should take at once: as many as start within
        :data:`WINDOW` at this pace, at most ``size``; 1 until a body ran here, and for
        bodies that take their time."""
        if size <= 1 or self.seconds is None:
            return 1
        return max(1, min(size, int(self.WINDOW / max(self.seconds, 1e-6))))
