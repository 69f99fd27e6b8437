"""Controller: bytes in → decode → route to a registered entrypoint → ``Result``.

What sends lives in :mod:`kser.producer`, the hooks users override in :mod:`kser.hooks`,
the pace of bodies in :mod:`kser.pace`, the errors in :mod:`kser.errors`: each is still
importable from here (kser 0.8's paths).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

from cdumay_error.types import NotFound, ValidationError
from cdumay_result import Result

from kser import middleware
from kser.aio import Later
from kser.codec import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from kser.codec import MessageTooLargeError as MessageTooLargeError  # (its former home)
from kser.config import Settings
from kser.crypto import Sealer
from kser.entry import Entrypoint
from kser.errors import RedoError as RedoError
from kser.errors import UndeliverableError as UndeliverableError
from kser.errors import WorkerFatalError, safe_text
from kser.hooks import BaseController as BaseController
from kser.pace import Pace as Pace
from kser.producer import PRODUCER_OPTIONS as PRODUCER_OPTIONS
from kser.producer import BaseProducer as BaseProducer
from kser.results import error_result, exception_result, is_success
from kser.schemas import Message
from kser.status import Status
from kser.store import Store

logger = logging.getLogger(__name__)


class Binding(Protocol):
    """The engine's record of the producer and worker name it uses."""

    bound: BaseProducer | None
    worker_name: str


class Engine(Protocol):
    """What a controller hands operations and their tasks to: its registry's sequencer
    (:class:`kser.sequencing.engine.sequencer.Sequencer`), which depends on the
    controller, not the other way round."""

    @property
    def ctx(self) -> Binding: ...

    @property
    def runs_operations(self) -> bool: ...

    @property
    def store(self) -> Store: ...

    def sweep(self, force: bool = False) -> int: ...

    def flush_sent(self) -> None: ...

    def handles(self, entrypoint: type[Entrypoint], kmsg: Message) -> bool: ...

    def execute(self, entrypoint: type[Entrypoint], kmsg: Message,
                topic: str | None) -> Result | Later: ...

    def run_tasks(self, items: Sequence[tuple[type[Entrypoint], Message]]
                  ) -> list[Result | Exception | Later]: ...

    def built_in(self, path: str) -> type[Entrypoint] | None: ...


@dataclass
class Outcome:
    """What handling one record gave: the message (if it decoded) and its result.

    ``undeliverable`` is True when the record could not be decoded or routed:
    the worker then dead-letters it. ``redo`` is True when its processing could
    not be completed for a reason outside the message (store or broker
    unreachable): the worker must not commit it, and processes it again.
    """

    kmsg: Message | None
    result: Result
    undeliverable: bool = False
    redo: bool = False
    #: (an ``async def`` body awaited on the event loop) its outcome, to come
    later: Future[Outcome] | None = None


class Controller(BaseController):
    """Routes messages to the entrypoints registered on *this* controller.

    Only registered entrypoints can ever run: the ``entrypoint`` field of a
    message is a key in :attr:`ENTRYPOINTS`, never a path kser imports.
    A subclass may declare ``ENTRYPOINTS = {...}`` at class level; each
    instance starts from its own copy.
    """

    ENTRYPOINTS: Mapping[str, type[Entrypoint]] = {}
    #: the class each record is decoded to (a :class:`~kser.schemas.Message` subclass
    #: may add fields or checks)
    MESSAGE_CLASS: type[Message] = Message
    #: kser 0.8's name for :attr:`MESSAGE_CLASS`, still honoured when a subclass sets it
    TRANSPORT: type[Message] = Message

    def __init__(self) -> None:
        self.ENTRYPOINTS: dict[str, type[Entrypoint]] = dict(type(self).ENTRYPOINTS)
        #: handles operation and task messages when set (see kser.sequencing.engine.sequencer)
        self.sequencer: Engine | None = None
        self._producer: BaseProducer | None = None
        self._worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._settings: Callable[[], Settings] | None = None
        self._sealer: Sealer | None = None
        #: how long bodies took lately (its sequencer's tasks included): sizes batches
        self.pace = Pace()
        #: the hook chain around a body (its sequencer's tasks run in the same one)
        self.chain = middleware.default(self.pace)

    def use_settings(self, settings: Settings | Callable[[], Settings]) -> None:
        """Take these settings (or a callable returning them when first needed): its
        registry's, so that one object configures every part."""
        self._settings = settings if callable(settings) else (lambda: settings)
        self._sealer = None

    @property
    def settings(self) -> Settings:
        """The settings given by :meth:`use_settings` (else read from the environment on
        first use)."""
        if self._settings is None:
            settings = Settings()
            self._settings = lambda: settings
        return self._settings()

    @property
    def sealer(self) -> Sealer:
        """Opens sealed records (``KSER_SECRET_KEYS``); a no-op without keys."""
        if self._sealer is None:
            self._sealer = Sealer.from_settings(self.settings)
        return self._sealer

    @sealer.setter
    def sealer(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def bind(self, producer: BaseProducer, worker_name: str) -> None:
        """Give this controller the consumer's producer and name (done by the consumer)."""
        self.producer = producer
        self.worker_name = worker_name

    @property
    def producer(self) -> BaseProducer | None:
        """The producer of follow-up messages, bound by the consumer running this
        controller (its sequencer's engine sends with it too)."""
        return self._producer

    @producer.setter
    def producer(self, producer: BaseProducer | None) -> None:
        self._producer = producer
        if self.sequencer is not None:
            self.sequencer.ctx.bound = producer

    @property
    def worker_name(self) -> str:
        """``host:pid`` of the consumer running this controller (its engine's too)."""
        return self._worker_name

    @worker_name.setter
    def worker_name(self, worker_name: str) -> None:
        self._worker_name = worker_name
        if self.sequencer is not None:
            self.sequencer.ctx.worker_name = worker_name

    def register(self, name: str, entrypoint: type[Entrypoint]) -> None:
        """Register ``entrypoint`` under ``name``.

        :raises ValidationError: if ``entrypoint`` is not an ``Entrypoint`` subclass
        """
        if not (isinstance(entrypoint, type) and issubclass(entrypoint, Entrypoint)):
            raise ValidationError(
                f"Cannot register '{name}': {entrypoint!r} is not a subclass of "
                "kser.entry.Entrypoint", extra=dict(entrypoint=name))
        cast(dict[str, type[Entrypoint]], self.ENTRYPOINTS)[name] = entrypoint  # (its own)
        logger.debug("%s.Registered: %s", type(self).__name__, name)

    def run(self, raw_data: str | bytes | None, topic: str | None = None) -> Result:
        """Decode, route and execute one record. Never raises.

        Empty, non-UTF-8, non-JSON, non-object or schema-invalid records and
        unknown entrypoints give a ``Result`` with retcode >= 300 whose
        ``stderr`` says what was wrong.
        """
        return self.handle(raw_data, topic).result

    @property
    def message_class(self) -> type[Message]:
        """:attr:`MESSAGE_CLASS`, or :attr:`TRANSPORT` where only that one was set."""
        if self.MESSAGE_CLASS is Message and self.TRANSPORT is not Message:
            return self.TRANSPORT
        return self.MESSAGE_CLASS

    def handle(self, raw_data: str | bytes | None, topic: str | None = None,
               trace: Any = None) -> Outcome:
        """Like :meth:`run`, and tell whether the record was undeliverable or must be redone.

        :param topic: the topic the record came from (where an operation's tasks go
            unless they name their own)
        :param trace: the trace context of the record's span (the parent of what it runs)
        """
        routed = self._route(raw_data, trace)
        if isinstance(routed, Outcome):
            return routed
        kmsg, entrypoint = routed
        return self._conclude(kmsg, lambda: self.execute(entrypoint, kmsg, topic))

    def batch_limit(self, size: int | None = None) -> int:
        """How many records one task thread should take at once (see :meth:`handle_many`),
        from the pace of bodies (:class:`Pace`), at most ``size`` (default
        ``settings.batch_size``)."""
        return self.pace.limit(self.settings.batch_size if size is None else size)

    def handle_many(self, records: Sequence[tuple[str | bytes | None, str | None]],
                    traces: Sequence[Any] | None = None) -> list[Outcome]:
        """:meth:`handle` for several ``(value, topic)`` records in hand, one after the
        other in this thread, each with its own outcome: the messages of operations' tasks
        among them together (see ``Sequencer.run_tasks``: shared transactions).

        :param traces: the trace context of each record's span
        """
        outcomes: list[Outcome | None] = [None] * len(records)
        tasks: list[tuple[int, Message, type[Entrypoint]]] = []
        for index, (value, topic) in enumerate(records):
            routed = self._route(value, traces[index] if traces else None)
            if isinstance(routed, Outcome):
                outcomes[index] = routed
            elif self.sequencer is not None and routed[0].is_task:
                tasks.append((index, *routed))
            else:
                kmsg, entrypoint = routed
                outcomes[index] = self._conclude(kmsg, partial(self.execute, entrypoint, kmsg,
                                                               topic))
        if len(tasks) == 1:
            index, kmsg, entrypoint = tasks[0]
            outcomes[index] = self._conclude(kmsg, partial(self.execute, entrypoint, kmsg))
        elif tasks:
            assert self.sequencer is not None
            results = self.sequencer.run_tasks([(e, k) for _, k, e in tasks])
            for (index, kmsg, _), result in zip(tasks, results, strict=True):
                outcomes[index] = self._conclude(kmsg, partial(_returned, result))
        return cast(list[Outcome], outcomes)

    def _route(self, raw_data: str | bytes | None, trace: Any = None
               ) -> Outcome | tuple[Message, type[Entrypoint]]:
        """The record's message and the entrypoint it names, or why it has none."""
        try:
            kmsg = self._onmessage(self.message_class.loads(self.sealer.open(raw_data)))
        except Exception as exc:
            return Outcome(None, self._onerror(None, exception_result(exc)), undeliverable=True)
        if not isinstance(kmsg, Message):
            error = ValidationError(f"{type(self).__name__}.onmessage returned "
                                    f"{type(kmsg).__name__}, not a Message")
            return Outcome(None, self._onerror(None, error_result(error)), undeliverable=True)
        kmsg.trace_parent = trace

        entrypoint = self.ENTRYPOINTS.get(kmsg.entrypoint)
        if entrypoint is None and self.sequencer is not None and kmsg.is_task:
            # a built-in task (kser.tasks) of an operation: checked against the stored task
            entrypoint = self.sequencer.built_in(kmsg.entrypoint)
        if entrypoint is None:
            error = NotFound(
                f"Entrypoint '{safe_text(kmsg.entrypoint, 300)}' is not registered on this "
                f"consumer ({len(self.ENTRYPOINTS)} are: the worker's start-up log lists "
                "them); check the name, and that the worker runs the registry defining it",
                extra=dict(uuid=kmsg.uuid, entrypoint=kmsg.entrypoint))
            return Outcome(kmsg, self._onerror(kmsg, error_result(error, kmsg.uuid)),
                           undeliverable=True)
        return kmsg, entrypoint

    def _conclude(self, kmsg: Message, execute: Callable[[], Result | Later]) -> Outcome:
        """The outcome of executing ``kmsg`` (``execute``), its hooks called (for an
        ``async def`` body on the event loop, an outcome to come: :attr:`Outcome.later`)."""
        try:
            result = execute()
            if isinstance(result, Future):
                return self._later(kmsg, result)
        except UndeliverableError as exc:
            return Outcome(kmsg, self._onerror(kmsg, error_result(exc, kmsg.uuid)),
                           undeliverable=True)
        except RedoError as exc:
            logger.warning("%s.Redo: %s[%s]: %s", type(self).__name__, kmsg.entrypoint,
                           kmsg.uuid, exc)
            return Outcome(kmsg, exception_result(exc, kmsg.uuid), redo=True)
        except WorkerFatalError:
            raise  # the worker stops: not this message's fault, nor one to commit
        except Exception as exc:  # an entrypoint bug is the message's failure
            result = exception_result(exc, kmsg.uuid)
        try:
            if is_success(result):
                return Outcome(kmsg, self._onsuccess(kmsg, result))
            return Outcome(kmsg, self._onerror(kmsg, result))
        except Exception as exc:  # a failing user hook must not stop the consumer
            return Outcome(kmsg, exception_result(exc, kmsg.uuid))

    def _later(self, kmsg: Message, later: Later) -> Outcome:
        """The outcome of a message whose ``async def`` body runs on the event loop: its
        own outcome (:meth:`_conclude`, hooks called) comes with its end."""
        concluded: Future[Outcome] = Future()

        def done(ended: Later) -> None:
            try:
                concluded.set_result(self._conclude(kmsg, partial(_returned, ended.result())))
            except BaseException as exc:  # (a fatal error: the handler stops the worker)
                concluded.set_exception(exc)

        later.add_done_callback(done)
        return Outcome(kmsg, Result(uuid=kmsg.uuid, stdout="awaited on the event loop"),
                       later=concluded)

    def execute(self, entrypoint: type[Entrypoint], kmsg: Message,
                topic: str | None = None) -> Result | Later:
        """Run ``kmsg`` with ``entrypoint``.

        Operations and the tasks of operations go to :attr:`sequencer`; a lone
        task runs here and needs no store. An operation's task whose body is ``async
        def`` is awaited on the worker's event loop: a future of its result.
        """
        if self.sequencer is not None and self.sequencer.handles(entrypoint, kmsg):
            return self.sequencer.execute(entrypoint, kmsg, topic)
        requested = sorted(set(kmsg.kser_metadata) & {"idempotency_key", "ttl_strategy"})
        if requested:  # (what only a stored operation has: it would be silently ignored)
            raise UndeliverableError(
                f"metadata.kser.{requested[0]} is for operations: the lone task "
                f"{kmsg.entrypoint}[{kmsg.uuid}] runs each time it is sent, and nothing of "
                "it is stored; send it as an operation (POST /api/v1/operations and kser ops "
                "start wrap a task in one)", extra=dict(uuid=kmsg.uuid))
        call = middleware.Call(entrypoint=kmsg.entrypoint, task_id=kmsg.uuid,
                               worker=self.worker_name, trace_parent=kmsg.trace_parent)

        def run() -> Result:
            result: Result = entrypoint.from_Message(kmsg).execute()
            call.ended(Status.SUCCESS if is_success(result) else Status.FAILED, result)
            return result

        return self.chain.run(call, run)


def _returned(result: Result | Exception | Later) -> Result | Later:
    """``result``, raised if it is an exception (what a batched message's execution gave)."""
    if isinstance(result, Exception):
        raise result
    return result
