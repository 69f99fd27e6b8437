"""Task leases: a running attempt's claim on its task, renewed while it runs.

A worker that dies stops renewing; once the lease expired, another worker may take
the task over (see :meth:`kser.store.Tx.claim_task`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from kser.config import Settings
from kser.status import Status
from kser.store import Store

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What the leases read from the engine's context (when used: opened on first use)."""

    @property
    def store(self) -> Store: ...

    @property
    def settings(self) -> Settings: ...


class Leases:
    """Renews the leases of the attempts running in this process, in one thread.

    Every third of a lease, one transaction extends every held lease; a lease
    another worker took over is dropped (with a warning) and its attempt's
    result will be discarded by :meth:`Tx.finish_attempt`.
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def held(self, task_id: str, attempt: int) -> Iterator[None]:
        """Renew the lease of attempt ``attempt`` of ``task_id`` during the block."""
        self.hold(task_id, attempt)
        try:
            yield
        finally:
            self.release(task_id)

    def hold(self, task_id: str, attempt: int) -> None:
        """Renew the lease of attempt ``attempt`` of ``task_id`` until :meth:`release`."""
        with self._lock:
            self._held[task_id] = attempt
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._renew, daemon=True,
                                                name="kser-leases")
                self._thread.start()

    def release(self, task_id: str, attempt: int | None = None) -> None:
        """Stop renewing ``task_id``'s lease (only if it is attempt ``attempt``'s: a later
        attempt of the same task on this worker keeps its own)."""
        with self._lock:
            if attempt is None or self._held.get(task_id) == attempt:
                self._held.pop(task_id, None)

    def _renew(self) -> None:
        while True:
            time.sleep(self._engine.settings.task_lease / 3)
            self.renew()

    def renew(self) -> None:
        """Extend every held lease now (the renewing thread does it every third of a
        lease); drop those of tasks that ended meanwhile, and, with a warning, those
        another worker took over."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        lost: dict[str, bool] = {}  # task id -> taken over (else: it ended meanwhile)
        try:
            with self._engine.store.transaction() as tx:
                until = time.time() + self._engine.settings.task_lease
                renewed = tx.renew_leases(sorted(held.items()), until)
                for task_id, attempt in held.items():
                    if task_id not in renewed:
                        # its end stored (its lease not released yet), or taken over
                        row = tx.get_task(task_id)
                        lost[task_id] = (row is not None and row.status == Status.RUNNING
                                         and row.attempt != attempt)
        except Exception as exc:  # the store may come back before the leases end
            logger.warning("%d lease(s) not renewed (%s)", len(held), exc)
            return
        for task_id, taken in lost.items():
            if taken:
                logger.warning("Task %s attempt %d: lease lost (another worker took it "
                               "over; its result will be discarded)", task_id, held[task_id])
            with self._lock:
                if self._held.get(task_id) == held[task_id]:
                    del self._held[task_id]
