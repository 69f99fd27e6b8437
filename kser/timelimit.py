"""Stop a task that runs past its time limit.

A timer thread raises :class:`TimeLimitExceeded` in the thread that runs the
task (``PyThreadState_SetAsyncExc``, as Dramatiq does). Python delivers it at
the next bytecode: pure-Python work is interrupted at once; a call blocked in
C code (a long ``time.sleep``, a socket read) is interrupted when it returns.
"""

from __future__ import annotations

import ctypes
import threading

from kser.errors import TimeLimitExceeded as TimeLimitExceeded


class time_limit:  # noqa: N801 - used as a context manager, like contextlib's
    """``with time_limit(seconds):`` raises TimeLimitExceeded in this thread after ``seconds``.

    Whatever happens, no exception is delivered after the block is left.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._active = False
        self._thread_id = 0
        self._timer: threading.Timer | None = None

    def __enter__(self) -> time_limit:
        self._thread_id = threading.get_ident()
        self._active = True
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _expire(self) -> None:
        message = f"time limit exceeded after {self.seconds:g} s"
        # CPython raises a *class* in the other thread: one whose default message is ours
        exceeded = type("TimeLimitExceeded", (TimeLimitExceeded,),
                        {"__init__": lambda exc: TimeLimitExceeded.__init__(exc, message)})
        with self._lock:
            if self._active:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id),
                                                           ctypes.py_object(exceeded))

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._active = False
            # an exception set but not yet delivered must not escape later
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)
