"""A worker's signals: SIGTERM and SIGINT stop it (a second one gives up on the tasks in
hand), SIGUSR1 pauses it, SIGUSR2 resumes it."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

logger = logging.getLogger("kser.worker")  # (the name its lines always had)


def install(name: str, stopping: threading.Event, stop: Callable[[], None],
            pause: Callable[[], None], resume: Callable[[], None]) -> Callable[[], None]:
    """Handle the worker's signals (in the main thread only: elsewhere, nothing); returns
    what restores the handlers there were."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    actions: dict[int, Callable[[], None]] = {
        signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGUSR1: pause,
        signal.SIGUSR2: resume}
    previous = {sig: signal.getsignal(sig) for sig in actions}

    def on_signal(signum: int, _frame: object) -> None:
        again = signum in (signal.SIGTERM, signal.SIGINT) and stopping.is_set()
        logger.info("%s: %s received%s", name, signal.Signals(signum).name,
                    ": not waiting for the tasks in hand" if again else "")
        actions[signum]()

    for sig in actions:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
