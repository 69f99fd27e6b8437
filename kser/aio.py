"""The event loop a worker awaits ``async def`` task bodies on: one loop in a thread of
its own, started on first use, so that thousands of bodies waiting on I/O (an HTTP job
server, a sleep, a poll) hold no thread each. What kser does around a body that blocks
(storing its end, calling the operation's status hooks) runs in a few threads beside
the loop; the body's own lifecycle (``prerun``, ``postrun``, ``onsuccess``,
``onerror``) and whatever it calls run on the loop, and must not block it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from cdumay_result import Result

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: the outcome of a message whose ``async def`` body runs on the event loop, to come: its
#: result, or the exception saying what the worker must do about it
Later = Future[Result | Exception]

#: threads that store the ends of async bodies and call what follows them (the group
#: commit shares its transactions among them: a few are enough for thousands of bodies)
END_THREADS = 4


class EventLoop:
    """An asyncio loop in a daemon thread, and the threads that finish what it awaited.

    :param limit: most coroutines awaited at once (read on first use): a thread submitting
        one more waits until one ends
    :param name: the loop thread's name (and the prefix of its end threads')
    """

    def __init__(self, limit: Callable[[], int] = lambda: 1000,
                 name: str = "kser-async") -> None:
        self.name = name
        self._limit = limit
        self._slots: threading.BoundedSemaphore | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ends: ThreadPoolExecutor | None = None
        #: coroutines submitted and not yet done
        self.in_flight = 0

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coroutine`` on the loop (started on first use): a future of its value.
        Waits while the loop awaits ``limit`` coroutines already."""
        loop = self._running()
        with self._lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(max(1, self._limit()))
            slots = self._slots
        slots.acquire()
        with self._lock:
            self.in_flight += 1
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        future.add_done_callback(lambda _: self._done(slots))
        return future

    def then(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` in one of the end threads (what blocks: the store, user hooks)."""
        with self._lock:
            if self._ends is None:
                self._ends = ThreadPoolExecutor(END_THREADS,
                                                thread_name_prefix=f"{self.name}-end")
            ends = self._ends
        return ends.submit(call)

    def _done(self, slots: threading.BoundedSemaphore) -> None:
        with self._lock:
            self.in_flight -= 1
        slots.release()

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_serve, args=(loop,), name=self.name,
                                          daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
