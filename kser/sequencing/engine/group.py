"""Group commit: the work of several threads stored in one transaction, by one thread.

A task thread of a worker hands the ends of its batch's tasks to :class:`GroupCommit`
and goes on with its next task body; the committing thread takes everything handed
to it since its last transaction and stores it in one, so that with ``--concurrency
N`` the threads share the cost of a transaction (a round trip per statement, an
fsync per commit) instead of each paying its own, and a body never waits for the
store while the ends before it are stored. A thread that is going to wait for its
ends anyway (its batch's last) stores them itself when no transaction runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class GroupCommit(Generic[Item, Outcome]):
    """Runs ``commit`` over the items of every :meth:`submit` waiting, in one thread.

    :param commit: stores a list of items in one transaction; returns one outcome per
        item, in order. If it raises, every submission of that transaction gets the
        exception (each submitter then stores its own items another way).
    :param most: at most this many items in one transaction (the rest go in the next)
    :param name: the committing thread's name
    """

    def __init__(self, commit: Callable[[list[Item]], Sequence[Outcome]], most: int = 256,
                 name: str = "kser-commit"):
        self._commit, self._most, self._name = commit, most, name
        self._waiting: queue.SimpleQueue[tuple[list[Item], Future[list[Outcome]]]] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: held while a transaction runs: one at a time, in this thread or a caller's
        self._committing = threading.Lock()

    def submit(self, items: list[Item], here: bool = False) -> Future[list[Outcome]]:
        """Store ``items`` in the next transaction: a future of their outcomes.

        :param here: for a caller about to wait for them: when no transaction runs, store
            them now in the calling thread (nothing to share them with, and no handoff;
            on SQLite, the connection that claimed them, whose cache is warm)
        """
        future: Future[list[Outcome]] = Future()
        if here and self._committing.acquire(blocking=False):
            try:
                future.set_result(list(self._commit(list(items))))
            except BaseException as exc:  # (as a group's: the submitter decides)
                future.set_exception(exc)
            finally:
                self._committing.release()
            return future
        with self._lock:  # started on first use, before anything waits for it
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, daemon=True, name=self._name)
                thread.start()
                self._thread = thread
        self._waiting.put((list(items), future))
        return future

    def _run(self) -> None:
        carried: tuple[list[Item], Future[list[Outcome]]] | None = None
        while True:
            first = carried or self._waiting.get()
            carried = None
            # (the group is made once the transaction before it ended: what came while it
            # ran, in this thread or a caller's, goes along)
            with self._committing:
                group, count = [first], len(first[0])
                while count < self._most:
                    try:
                        submission = self._waiting.get_nowait()
                    except queue.Empty:
                        break
                    if count + len(submission[0]) > self._most:
                        carried = submission  # (the first of the next transaction)
                        break
                    group.append(submission)
                    count += len(submission[0])
                self._run_group(group)

    def _run_group(self, group: list[tuple[list[Item], Future[list[Outcome]]]]) -> None:
        try:
            outcomes = list(self._commit([item for items, _ in group for item in items]))
        except BaseException as exc:  # (each submitter decides what it means)
            for _, future in group:
                future.set_exception(exc)
            return
        start = 0
        for items, future in group:
            future.set_result(outcomes[start:start + len(items)])
            start += len(items)
