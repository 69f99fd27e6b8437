"""What every part of the engine shares, built once by the registry and passed
explicitly: the registered entrypoints, the settings, the store, the producer, the codec,
the worker's name, the pace of bodies, and the outbox every transaction goes through."""

from __future__ import annotations

import importlib
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from kser.aio import EventLoop
from kser.codec import Codec
from kser.config import TRANSPORTS, Settings
from kser.entry import Entrypoint
from kser.middleware import Chain
from kser.middleware import default as default_chain
from kser.pace import Pace
from kser.sequencing.engine.outbox import Outbox
from kser.sequencing.operation import Operation
from kser.store import OutboxRow, Store, Tx

if TYPE_CHECKING:
    from kser.producer import BaseProducer


class Context:
    """The engine's shared parts. Each is made on first use: a registry built at import
    reads no setting, opens no store and no Kafka client until something needs them.

    :param entrypoints: the registered tasks and operations by path (the controller's
        own mapping: what is registered later is seen)
    :param settings: kser settings (default: read from the environment on first use)
    :param pace: how long bodies took lately (the controller's: lone tasks count too)
    :param chain: the hook chain around a body (the controller's)
    """

    def __init__(self, entrypoints: Mapping[str, type[Entrypoint]],
                 settings: Settings | None = None, *, pace: Pace | None = None,
                 chain: Chain | None = None) -> None:
        self.entrypoints = entrypoints
        self._settings = settings
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        #: the producer bound by the consumer running this engine (its own, a worker's)
        self.bound: BaseProducer | None = None
        #: the producer configured, or made from the settings when first needed
        self.own: BaseProducer | None = None
        self._codec: Codec | None = None
        #: ``host:pid`` of the consumer running this engine
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.pace = pace or Pace()
        #: the hook chain around a body (the controller's: lone tasks run in it too)
        self.chain = chain or default_chain(self.pace)
        #: produces what transactions queued; every transaction goes through it
        self.outbox = Outbox(self)
        #: the event loop ``async def`` bodies are awaited on (its thread started on
        #: first use)
        self.aio = EventLoop(lambda: self.settings.async_concurrency)

    @property
    def settings(self) -> Settings:
        """The settings given (read from the environment on first use if none were)."""
        if self._settings is None:
            self._settings = Settings()
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def store(self) -> Store:
        """The store, opened (and migrated) on first use."""
        with self._store_lock:
            if self._store is None:
                # a connection kept for each task thread, the lease renewal, the group
                # commit and the main thread: one opened and closed per transaction
                # costs a connect
                self._store = Store(self.settings.store_url,
                                    connections=max(5, self.settings.concurrency + 3))
            return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = store

    @property
    def producer(self) -> BaseProducer:
        """The producer of follow-up messages: the consumer's when one is bound, else the
        one configured, else one of ``KSER_TRANSPORT`` made now."""
        if self.bound is not None:
            return self.bound
        if self.own is None:
            module = TRANSPORTS[self.settings.transport]
            self.own = importlib.import_module(f"{module}.producer").Producer(
                self.settings.producer_config())
        return self.own

    @property
    def codec(self) -> Codec:
        """The codec of the messages the store keeps: the producer's when one is bound or
        configured (a worker's: its limits), else one from the settings (a process that
        only stores operations or controls them opens no Kafka client to encode)."""
        producer = self.bound or self.own
        if producer is not None:
            return producer.codec
        if self._codec is None:
            self._codec = Codec.from_settings(self.settings)
        return self._codec

    def bind(self, producer: BaseProducer, worker_name: str) -> None:
        """Take the consumer's producer and name (done when a consumer starts)."""
        self.bound, self.worker_name = producer, worker_name

    @property
    def runs_operations(self) -> bool:
        """True when an Operation is registered here (so a store is needed)."""
        return any(issubclass(cls, Operation) for cls in self.entrypoints.values()
                   if isinstance(cls, type))

    def transaction(self) -> AbstractContextManager[Tx]:
        """A store transaction (that also marks sent what Kafka acknowledged meanwhile)."""
        return self.outbox.transaction()

    def publish(self, operation_id: str, rows: Sequence[OutboxRow] | None = None,
                wait: bool = True) -> int:
        """Produce the operation's unsent outbox messages: see :meth:`Outbox.publish`."""
        return self.outbox.publish(operation_id, rows, wait)
