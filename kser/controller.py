"""Controller: bytes in → decode → route to a registered entrypoint → ``Result``.

Also :class:`BaseProducer`, the one place where messages are serialised,
checked and handed to a transport, so every transport sends the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from cdumay_error.types import NotFound, ValidationError
from cdumay_result import Result

from kser import logs, metrics, tracing
from kser.codec import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from kser.codec import Codec
from kser.codec import MessageTooLargeError as MessageTooLargeError  # (its former home)
from kser.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PARTITIONS, Settings
from kser.crypto import Sealer
from kser.entry import Entrypoint
from kser.errors import WorkerFatalError, is_transient, safe_text
from kser.results import error_result, exception_result, is_success, loggable
from kser.schemas import Message
from kser.status import Status

if TYPE_CHECKING:
    from kser.sequencing.sequencer import Sequencer
from kser.topics import TopicAdmin

logger = logging.getLogger(__name__)

#: kser's own options in a transport producer's configuration
PRODUCER_OPTIONS = ("max_message_bytes", "connect_timeout", "partitions", "replication_factor",
                    "min_insync_replicas", "delivery_timeout", "settings")
#: seconds a record may wait for its acknowledgement before the client fails it
#: (KSER_SEND_TIMEOUT's default)
DEFAULT_DELIVERY_TIMEOUT = 60.0
#: seconds before a topic that could not be checked (the cluster did not answer) is
#: checked again
TOPIC_RETRY_INTERVAL = 60.0


class BaseController:
    """Hooks around received and finished messages, overridable by users."""

    def _onsuccess(self, kmsg: Message, result: Result) -> Result:
        logger.info("%s.Success: %s[%s]: %s", type(self).__name__, kmsg.entrypoint, kmsg.uuid,
                    loggable(result))
        return self.onsuccess(kmsg, result)

    def onsuccess(self, kmsg: Message, result: Result) -> Result:
        """Called after a message ran successfully; returns the final result."""
        return result

    def _onerror(self, kmsg: Message | None, result: Result) -> Result:
        if kmsg is None:
            logger.error("%s.Failed: undecodable record: %s", type(self).__name__, result.stderr)
        else:
            logger.error("%s.Failed: %s[%s]: %s", type(self).__name__, kmsg.entrypoint,
                         kmsg.uuid, loggable(result))
        return self.onerror(kmsg, result)

    def onerror(self, kmsg: Message | None, result: Result) -> Result:
        """Called after a message failed (``kmsg`` is None if it could not be decoded)."""
        return result

    def _onmessage(self, kmsg: Message) -> Message:
        logger.debug("%s.ReceivedMessage %s[%s]", type(self).__name__, kmsg.entrypoint, kmsg.uuid)
        return self.onmessage(kmsg)

    def onmessage(self, kmsg: Message) -> Message:
        """Called with every decoded message before routing; may return a changed one."""
        return kmsg


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


class UndeliverableError(NotFound):
    """Raised while handling a message that cannot be routed (it is dead-lettered)."""


class RedoError(Exception):
    """Raised while handling a message whose processing must be redone later.

    The store or the broker could not be reached: the message is fine, the
    infrastructure is not. The consumer does not commit it and tries again.
    """


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
        #: handles operation and task messages when set (see kser.sequencing.sequencer)
        self.sequencer: Sequencer | None = None
        #: the producer of follow-up messages, bound by the consumer running this controller
        self.producer: BaseProducer | None = None
        #: ``host:pid`` of the consumer running this controller
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._settings: Callable[[], Settings] | None = None
        self._sealer: Sealer | None = None
        #: how long bodies took lately (its sequencer's tasks included): sizes batches
        self.pace = Pace()

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
            elif self.sequencer is not None and "task_id" in routed[0].kser_metadata:
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
        if entrypoint is None and self.sequencer is not None and "task_id" in kmsg.kser_metadata:
            # a built-in task (kser.tasks) of an operation: checked against the stored task
            entrypoint = _built_ins().get(kmsg.entrypoint)
        if entrypoint is None:
            error = NotFound(
                f"Entrypoint '{safe_text(kmsg.entrypoint, 300)}' is not registered on this "
                f"consumer ({len(self.ENTRYPOINTS)} are: the worker's start-up log lists "
                "them); check the name, and that the worker runs the registry defining it",
                extra=dict(uuid=kmsg.uuid, entrypoint=kmsg.entrypoint))
            return Outcome(kmsg, self._onerror(kmsg, error_result(error, kmsg.uuid)),
                           undeliverable=True)
        return kmsg, entrypoint

    def _conclude(self, kmsg: Message, execute: Callable[[], Result]) -> Outcome:
        """The outcome of executing ``kmsg`` (``execute``), its hooks called."""
        try:
            result = execute()
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

    def execute(self, entrypoint: type[Entrypoint], kmsg: Message,
                topic: str | None = None) -> Result:
        """Run ``kmsg`` with ``entrypoint``.

        Operations and the tasks of operations go to :attr:`sequencer`; a lone
        task runs here and needs no store.
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
        started = time.monotonic()
        status = Status.FAILED
        try:
            with logs.context(task_id=kmsg.uuid, entrypoint=kmsg.entrypoint), tracing.span(
                    f"run {kmsg.entrypoint}", kmsg.trace_parent,
                    {"kser.entrypoint": kmsg.entrypoint, "kser.task_id": str(kmsg.uuid),
                     "kser.worker": self.worker_name}) as span:
                result: Result = entrypoint.from_Message(kmsg).execute()
                status = Status.SUCCESS if is_success(result) else Status.FAILED
                tracing.ended(span, status, result.stderr)
            return result
        finally:
            took = time.monotonic() - started
            self.pace.add(took)
            metrics.task_ran(kmsg.entrypoint, status, took)


class BaseProducer(BaseController):
    """What every transport's producer shares: serialise, check, send, report.

    A transport implements only :meth:`_produce` (queue one record) and
    :meth:`_flush` (wait until every queued record is acknowledged, or raise).

    :param max_message_bytes: largest serialised message accepted; larger ones
        are refused at send time with a clear error instead of by the broker
    :param delivery_timeout: seconds the client tries to have a record acknowledged
        (leader changes, too few replicas in sync) before it fails it
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 partitions: int = DEFAULT_PARTITIONS,
                 replication_factor: int | None = None, min_insync_replicas: int | None = None,
                 delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
                 settings: Settings | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        #: seconds the client waits for the cluster when it starts
        self.connect_timeout = connect_timeout
        self.delivery_timeout = delivery_timeout
        #: partitions and replicas of the topics it creates (see :mod:`kser.topics`)
        self.partitions, self.replication_factor = partitions, replication_factor
        self.min_insync_replicas = min_insync_replicas
        #: the settings its sealer reads (KSER_SECRET_KEYS; default: the environment's,
        #: read when first needed)
        self.settings = settings
        # given settings are checked now (a bad key is an error here, not at a send)
        self._sealer: Sealer | None = Sealer.from_settings(settings) if settings else None
        self._topics_checked: set[str] = set()
        self._topics_retry: dict[str, float] = {}
        self._topics_lock = threading.Lock()
        self._topic_locks: dict[str, threading.Lock] = {}
        self._codec: Codec | None = None

    @property
    def sealer(self) -> Sealer:
        """Seals record values when ``KSER_SECRET_KEYS`` is set (a no-op without keys)."""
        if self._sealer is None:
            self._sealer = Sealer.from_settings(self.settings or Settings())
        return self._sealer

    @sealer.setter
    def sealer(self, sealer: Sealer) -> None:
        self._sealer = sealer
        self._codec = None

    @staticmethod
    def take_options(config: dict[str, Any]) -> dict[str, Any]:
        """Take kser's own options (:meth:`kser.config.Settings.producer_options`) out of
        a transport's producer ``config``; return them as this class's keyword arguments."""
        return {name: config.pop(name) for name in PRODUCER_OPTIONS if name in config}

    # -- transport adapter -------------------------------------------------------------

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        raise NotImplementedError

    def _flush(self, timeout: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the client (flushes what is queued)."""

    def _new_admin(self) -> TopicAdmin:
        """A topic admin of this producer's cluster (not implemented: topics are not
        checked)."""
        raise NotImplementedError

    def _admin_options(self) -> dict[str, Any]:
        return dict(partitions=self.partitions, replication_factor=self.replication_factor,
                    min_insync_replicas=self.min_insync_replicas,
                    timeout=self.connect_timeout)

    def topics_exist(self, topics: Iterable[str]) -> None:
        """Say that ``topics`` exist (a worker checked them at start): not checked again."""
        self._topics_checked.update(topics)

    def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` with :attr:`partitions` partitions if it does not exist, once
        per producer (before its first record to it); a failure is logged, never raised:
        the record is sent anyway (Kafka then creates the topic with its own
        ``num.partitions`` if it may, or refuses the record)."""
        if topic in self._topics_checked:
            return
        with self._topics_lock:  # one check per topic at a time; other topics go on
            lock = self._topic_locks.setdefault(topic, threading.Lock())
        with lock:
            if topic in self._topics_checked or (
                    time.monotonic() < self._topics_retry.get(topic, 0)):
                return
            try:
                with self._new_admin() as admin:
                    if admin.ensure([topic]):
                        logger.info("%s: created topic %s (%d partitions)",
                                    type(self).__name__, topic, self.partitions)
            except NotImplementedError:
                pass
            except Exception as exc:
                logger.warning("%s: topic %s could not be checked or created (%s); sending "
                               "anyway. Create it: kser topics create %s",
                               type(self).__name__, topic, safe_text(exc, 300), topic)
                if is_transient(exc):  # the cluster may answer later: ask again then
                    self._topics_retry[topic] = time.monotonic() + TOPIC_RETRY_INTERVAL
                    return
            self._topics_checked.add(topic)

    # -- shared behaviour --------------------------------------------------------------

    @property
    def codec(self) -> Codec:
        """How this producer encodes messages: its size limit and its sealer (built once;
        again if either changed)."""
        codec = self._codec
        if codec is None or codec.max_message_bytes != self.max_message_bytes \
                or codec.sealer is not self.sealer:
            codec = self._codec = Codec(self.max_message_bytes, self.sealer)
        return codec

    def encode(self, kmsg: Message) -> tuple[bytes, bytes]:
        """Serialise ``kmsg`` (after the :meth:`onmessage` hook) into (key, value) bytes,
        refusing what cannot be sent: see :meth:`kser.codec.Codec.encode`."""
        return self.codec.encode(self._onmessage(kmsg))

    def send(self, topic: str, kmsg: Message, timeout: float = 60) -> Result:
        """Send one message and wait until the broker acknowledged it.

        :param timeout: seconds to wait for the acknowledgement
        :return: retcode 0 on success, else >= 300 with the reason in stderr
        """
        return self.bulk_send(topic, [kmsg], timeout=timeout, uuid=kmsg.uuid)

    def bulk_send(self, topic: str, kmsgs: Iterable[Message], timeout: float = 60,
                  uuid: str | None = None) -> Result:
        """Send messages and wait (up to ``timeout`` seconds) until all are acknowledged.

        Nothing is queued unless every message can be encoded.
        """
        kmsgs = list(kmsgs)
        try:
            records = [self.encode(kmsg) for kmsg in kmsgs]
            self.ensure_topic(topic)
            for key, value in records:
                self._produce(topic, value, key, tracing.produce_headers(topic, current=True)
                              or None)
            self._flush(timeout)
        except Exception as exc:
            result = exception_result(exc, uuid)
            logger.error("%s.Failed: %d message(s) to %s: %s", type(self).__name__, len(kmsgs),
                         topic, result.stderr)
            return result
        if len(kmsgs) == 1:
            stdout = f"Message {kmsgs[0].entrypoint}[{kmsgs[0].uuid}] sent in {topic}"
        else:
            stdout = f"{len(kmsgs)} message(s) sent in {topic}"
        logger.info("%s.Success: %s", type(self).__name__, stdout)
        return Result(uuid=uuid, stdout=stdout)

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        """Queue a raw record (dead letters, replays, follow-ups); :meth:`flush` waits for it.

        :param on_delivery: called with None once the broker acknowledged the record,
            or with the error that lost it (in the client's thread, or during a flush). A
            refusal for good (:func:`kser.errors.is_transient` is False) is then the
            callback's to keep (the outbox's, the dead letters'): :meth:`flush` does not
            raise it, so the record that caused it is not redone for a send that would
            be refused again
        """
        self.ensure_topic(topic)
        self._produce(topic, value, key, headers, on_delivery)

    def flush(self, timeout: float = 60) -> None:
        """Wait until every queued record is acknowledged; raise if one failed."""
        self._flush(timeout)

    def wait_sent(self, timeout: float = 60) -> None:
        """Wait until every queued record was acknowledged or failed, raising nothing: the
        failures stay for :meth:`flush` (the consumer's checkpoint) and the records' own
        delivery callbacks, whichever thread queued them."""
        self._drain(timeout)

    def _drain(self, timeout: float) -> None:
        """Wait for every queued record's outcome without collecting failures."""
        try:
            self._flush(timeout)
        except Exception:  # kept by the transports that can keep them (see _drain there)
            pass



def _built_ins() -> dict[str, type[Entrypoint]]:
    """kser's built-in tasks by path: every registry runs them as tasks of its operations
    (what they call is read from the store; a message naming one alone is refused)."""
    from kser.tasks import BUILT_INS

    return {cls.path: cls for cls in BUILT_INS}


def _returned(result: Result | Exception) -> Result:
    """``result``, raised if it is an exception (what a batched message's execution gave)."""
    if isinstance(result, Exception):
        raise result
    return result
