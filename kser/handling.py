"""A worker's records in a task thread: each through the controller, an undeliverable one
dead-lettered, one whose infrastructure failed redone (together, after a doubling
backoff, record by record), each counted and logged."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kser import tracing
from kser.config import Settings
from kser.controller import Controller, Outcome
from kser.deadletter import DeadLetters
from kser.errors import WorkerFatalError, safe_text
from kser.record import Record
from kser.results import exception_result

logger = logging.getLogger("kser.worker")  # (the name its lines always had)

#: longest wait before a record whose infrastructure failed is processed again, seconds
REDO_MAX_BACKOFF = 30.0


class RecordHandler:
    """Handles the records of one worker's task threads.

    :param controller: the controller records are routed through (bound to the worker)
    :param dead_letters: where undeliverable records go
    :param stopping: set when the worker stops (a redo then waits no more)
    :param on_fatal: called with a :class:`WorkerFatalError` (the worker stops)
    """

    def __init__(self, controller: Controller, dead_letters: DeadLetters, settings: Settings,
                 name: str, group: str | None, stopping: threading.Event,
                 on_fatal: Callable[[WorkerFatalError], None]) -> None:
        self.controller, self.dead_letters = controller, dead_letters
        self.settings, self.name, self.group = settings, name, group
        self._stopping, self._fatal = stopping, on_fatal
        #: records done (committed or to be), since the worker started
        self.processed = 0
        self._counter_lock = threading.Lock()

    def process_all(self, records: list[Record]) -> list[bool | Future[bool]]:
        """Handle records in a task thread (one, or a batch the controller handles
        together: see ``Controller.handle_many``); redo those whose infrastructure failed,
        together, after a doubling backoff.

        Returns, per record, True when it is done (to be committed), False when the
        consumer stopped before it could be; for a record whose ``async def`` body runs
        on the event loop, a future of that. Never raises, whatever the records hold.
        """
        done: dict[int, bool | Future[bool]] = {}
        try:
            todo, redo = list(records), 0
            while todo:
                again = []
                # (a batch that must be redone is redone record by record: one record
                # failing every time never holds the others)
                for record, outcome in zip(todo, self._outcomes(todo, alone=redo > 0),
                                           strict=True):
                    if outcome.later is not None:
                        done[id(record)] = self._awaited(record, outcome.later)
                    elif self._settled(record, outcome, redo):
                        done[id(record)] = True
                    else:
                        again.append(record)
                if again and self._stopping.wait(
                        min(self.settings.redo_backoff * 2 ** redo, REDO_MAX_BACKOFF)):
                    break
                todo, redo = again, redo + 1
        except WorkerFatalError as exc:
            self._fatal(exc)
        return [done.get(id(record), False) for record in records]

    def _settled(self, record: Record, outcome: Outcome, redo: int = 0) -> bool:
        """Dead-letter an undeliverable record, count and log a done one: True; False
        (logged) when it is to be redone (after ``redo`` redos)."""
        if outcome.undeliverable and not self.dead_letters.send(
                record, outcome.result.stderr or "undeliverable"):
            outcome.redo = True
        if outcome.redo:
            delay = min(self.settings.redo_backoff * 2 ** redo, REDO_MAX_BACKOFF)
            logger.warning("%s will process %s[%d]@%d again in %.1f s: %s",
                           self.name, record.topic, record.partition,
                           record.offset, delay,
                           safe_text(outcome.result.stderr, 1000))
            return False
        with self._counter_lock:  # task threads finish together
            self.processed += 1
        if outcome.kmsg is not None:
            logger.info("%s processed %s[%s] from %s[%d]@%d: retcode %d",
                        self.name, outcome.kmsg.entrypoint, outcome.kmsg.uuid,
                        record.topic, record.partition, record.offset,
                        outcome.result.retcode)
        return True

    def _awaited(self, record: Record, later: Future[Outcome]) -> Future[bool]:
        """Whether a record whose body runs on the event loop is done, once it ended; one
        to redo is handled again after the backoff, in a thread of its own."""
        done: Future[bool] = Future()

        def ended(outcome_future: Future[Outcome]) -> None:
            try:
                outcome = outcome_future.result()
            except WorkerFatalError as exc:
                self._fatal(exc)
                done.set_result(False)
                return
            except Exception as exc:  # (not foreseen: redone, as in _handle)
                outcome = Outcome(None, exception_result(exc), redo=True)
            if self._settled(record, outcome):
                done.set_result(True)
            else:  # (in a thread of its own: never the loop's or an end thread's to wait)
                threading.Thread(target=redo, name="kser-redo", daemon=True).start()

        def redo() -> None:
            if self._stopping.wait(self.settings.redo_backoff):
                done.set_result(False)
                return
            again = self.process_all([record])[0]
            if isinstance(again, Future):
                again.add_done_callback(lambda it: done.set_result(it.result()))
            else:
                done.set_result(again)

        later.add_done_callback(ended)
        return done

    def _outcomes(self, records: list[Record], alone: bool = False) -> list[Outcome]:
        """How each record was handled: together (unless ``alone``), or one at a time; a
        record the client could not read is a placeholder dead letter saying where it is."""
        readable = [record for record in records if record.unreadable is None]
        with tracing.consuming(readable, self.group, self.name) as traces:
            handled = (self._handle_many(readable, traces) if len(readable) > 1 and not alone
                       else [self._handle(record, trace)
                             for record, trace in zip(readable, traces, strict=True)])
        outcomes = dict(zip(map(id, readable), handled, strict=True))
        return [outcomes.get(id(record)) or Outcome(None, exception_result(ValueError(
            f"The Kafka client could not read this record ({record.unreadable}); this dead "
            "letter only says where it is: read it with another client before the topic's "
            "retention removes it")), undeliverable=True) for record in records]

    def _handle(self, record: Record, trace: Any = None) -> Outcome:
        """The controller's outcome for ``record``; an error it did not foresee (a bug, a
        failing user hook) is redone later, like a failure of the infrastructure."""
        try:
            return self.controller.handle(record.value, record.topic, trace)
        except WorkerFatalError:
            raise
        except Exception as exc:
            logger.error("%s: %s[%d]@%d raised %s: %s", self.name, record.topic,
                         record.partition, record.offset, type(exc).__name__,
                         safe_text(exc, 1000))
            return Outcome(None, exception_result(exc), redo=True)

    def _handle_many(self, records: list[Record], traces: list[Any]) -> list[Outcome]:
        """:meth:`_handle` for several records at once; if the controller fails on the
        batch unforeseen, each record is redone alone."""
        try:
            return self.controller.handle_many([(r.value, r.topic) for r in records], traces)
        except WorkerFatalError:
            raise
        except Exception as exc:
            logger.error("%s: %d records handled together raised %s: %s; each is handled "
                         "again alone", self.name, len(records), type(exc).__name__,
                         safe_text(exc, 1000))
            return [Outcome(None, exception_result(exc), redo=True) for _ in records]
