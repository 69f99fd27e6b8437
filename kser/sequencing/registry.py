"""OperationRegistry: the tasks and operations a consumer (or a Flask app) can run."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.codec import Codec
from kser.config import Settings
from kser.controller import Controller
from kser.entry import Entrypoint
from kser.producer import BaseProducer
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.sequencer import Sequencer
from kser.sequencing.schedules import Schedule
from kser.store import Store

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=type[Entrypoint])

#: the package :meth:`OperationRegistry.init_app` hands a Flask app to
WEB_PACKAGE = ".".join(("kser", "web"))


class OperationRegistry:
    """Routes messages to registered tasks and operations, and runs operations durably.

    Each registry owns its controller and its sequencer, so two registries in
    one process never see each other's entrypoints.

    :param app: a Flask application to bind to (see :meth:`init_app`)
    :param controller_class: the :class:`~kser.controller.Controller` subclass to use
    :param settings: kser settings, passed down to its controller, sequencer and
        producer (default: read from the ``KSER_*`` environment on first use, not when
        the registry is built: a registry made at import sees variables set after it)
    """

    def __init__(self, app: Any = None, controller_class: type[Controller] = Controller, *,
                 settings: Settings | None = None) -> None:
        self.controller = controller_class()
        #: what every part of its engine shares (settings, store, producer, codec), made
        #: here and passed to each part
        self.context = Context(self.controller.ENTRYPOINTS, settings,
                               pace=self.controller.pace, chain=self.controller.chain)
        self.controller.use_settings(lambda: self.settings)
        self.sequencer = Sequencer(self.context)
        self.controller.sequencer = self.sequencer
        # (the controller's producer and name are its engine's: set there from now on)
        self.context.bound = self.controller.producer
        self.context.worker_name = self.controller.worker_name
        #: the cron schedules declared with :meth:`schedule` (``kser scheduler`` runs them)
        self.schedules: list[Schedule] = []
        self.app: Any = None
        if app is not None:
            self.init_app(app)

    @property
    def settings(self) -> Settings:
        """The settings of this registry (one object, shared by its parts)."""
        return self.context.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.context.settings = settings

    def subscribe(self, callback: E) -> E:
        """Register a Task or Operation class under its ``path``; usable as a decorator.

        Returns the class (kser 0.8.27 returned None, which turned every decorated
        class of its own dice example into None). The class's ``registry`` becomes
        this registry: that is how ``Operation.send()`` finds its store and producer.

        :raises ValidationError: the class belongs to another registry already (it
            would silently move there: subclass it for the second registry)
        """
        owner = callback.__dict__.get("registry")
        if owner is not None and owner is not self:
            raise ValidationError(
                f"{callback.path} is subscribed to another registry already: a class "
                "belongs to one registry (its Operation.send() uses that registry's store "
                "and producer); subclass it to subscribe it to a second one",
                extra=dict(entrypoint=callback.path))
        if callback.path not in self.controller.ENTRYPOINTS:
            logger.debug("Operation registry: loaded %s", callback.path)
            self.controller.register(callback.path, callback)
        callback.registry = self
        return callback

    def configure(self, store: Store | str | None = None, producer: BaseProducer | None = None,
                  topic: str | None = None) -> OperationRegistry:
        """Set the store (a ``Store`` or its URL), the producer and the default topic.

        Unset, they come from ``KSER_STORE_URL``, ``KSER_TRANSPORT`` +
        ``KSER_BOOTSTRAP_SERVERS`` and ``KSER_TOPIC``; inside ``kser worker`` the
        producer is the consumer's own.
        """
        if store is not None:
            self.context.store = Store(store) if isinstance(store, str) else store
        if producer is not None:
            self.context.own = producer
        if topic is not None:
            self.settings.topic = topic
        return self

    def schedule(self, cron: str, params: dict[str, Any] | None = None, *,
                 name: str | None = None, timezone: str = "UTC", catchup: str = "skip",
                 topic: str | None = None) -> Callable[[E], E]:
        """Subscribe an Operation class and launch it on a cron schedule (run by ``kser
        scheduler``); usable several times on one class, each with its own ``name``::

            @registry.schedule("30 2 * * *", params={"day": "yesterday"},
                               timezone="Europe/Paris", catchup="run_once")
            class Nightly(Operation): ...

        :param cron: 5 fields (minute hour day month weekday), or 6 with seconds first
        :param name: unique among the schedules (default: the class's path)
        :param timezone: the IANA zone ``cron`` is read in
        :param catchup: after fires were missed (no scheduler ran): ``skip`` them, or
            ``run_once`` for the latest
        :raises ValueError: the cron, time zone, catch-up or name is not valid, or the
            name is taken
        """
        def decorate(operation: E) -> E:
            schedule = Schedule(name or operation.path, cron, operation.path,
                                dict(params or {}), timezone, catchup, topic)
            if any(s.name == schedule.name for s in self.schedules):
                raise ValueError(f"a schedule is named {schedule.name!r} already: give this "
                                 "one a name of its own (name=...)")
            self.subscribe(operation)
            self.schedules.append(schedule)
            return operation
        return decorate

    def _get_codec(self) -> Codec:
        """The codec of the messages the store keeps (see :attr:`Context.codec`)."""
        return self.context.codec

    def _get_producer(self) -> BaseProducer:
        """The producer of follow-up messages (see :attr:`Context.producer`)."""
        return self.context.producer

    # -- controls: each returns a Result (0 done, 404 unknown, 409 wrong state) ----------

    def cancel(self, operation_id: str) -> Result:
        """Cancel an operation: pending tasks CANCELED, nothing more sent (a running task
        finishes, nothing follows it)."""
        return self.sequencer.controls.cancel(operation_id)

    def recover(self, operation_id: str) -> Result:
        """Restart a FAILED operation from its failed task(s), keeping earlier results."""
        return self.sequencer.controls.recover(operation_id)

    def run_from(self, operation_id: str, task_id: str) -> Result:
        """Reset ``task_id`` and every task after it, then run the operation from it."""
        return self.sequencer.controls.run_from(operation_id, task_id)

    def run_one(self, operation_id: str, task_id: str) -> Result:
        """Run one task again with its predecessors' result; nothing follows it."""
        return self.sequencer.controls.run_one(operation_id, task_id)

    def purge(self) -> int:
        """Delete finished operations whose retention expired; return how many."""
        return self.sequencer.controls.purge()

    def wait(self, operation_id: str, timeout: float | None = None) -> Result:
        """Block until the operation ends and return its final result (retcode >= 300
        when it FAILED or was canceled, 404 when it is not in the store).

        :raises TimeoutError: ``timeout`` seconds passed first (the operation goes on)
        """
        return self.sequencer.wait(operation_id, timeout)

    def emit_ready(self, operation_id: str) -> Result:
        """Send the messages of the operation's tasks that are ready to run now (what a
        sweep does; kser 0.8's ``Operation.launch_next`` calls it)."""
        return self.sequencer.emit_ready(operation_id)

    @property
    def entrypoints(self) -> Mapping[str, type[Entrypoint]]:
        """The registered tasks and operations, by path (read-only)."""
        return MappingProxyType(self.controller.ENTRYPOINTS)

    @property
    def store(self) -> Store:
        """The store of this registry's operations (opened and migrated on first use):
        ``with registry.store.transaction() as tx: tx.get_operation(id)``."""
        return self.sequencer.store

    def init_app(self, app: Any = None, *, api: bool = True) -> None:
        """Bind to a Flask app: :func:`kser.web.init_app` (``app.extensions["kser"]`` is
        this registry; the REST API and the web UI at ``/ui`` are mounted unless
        ``api=False``), then load tasks. Without an app, only load tasks.

        :raises kser.web.AuthConfigError: the API has no token (``KSER_API_TOKENS``) and
            ``KSER_API_AUTH=none`` does not allow it to be open; nothing is mounted
        """
        if app is None:
            self.app = None
            self.load_tasks()
            return
        # kser.web depends on the registry, not the other way round: this alias of
        # kser.web.init_app, kept for existing code, loads it by name when called (the
        # one place the registry reaches up; new code calls kser.web.init_app)
        importlib.import_module(WEB_PACKAGE).init_app(app, self, api=api)

    def load_tasks(self) -> None:
        """Hook to register tasks at ``init_app`` time (to implement)."""
