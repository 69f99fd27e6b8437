"""OperationRegistry: the set of tasks and operations a consumer can run."""

from __future__ import annotations

import logging
from typing import TypeVar

from kser.controller import Controller
from kser.entry import Entrypoint

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=type[Entrypoint])


class OperationRegistry:
    """Routes messages to registered tasks and operations.

    Each registry owns its controller, so two registries in one process never
    see each other's entrypoints.

    :param app: a Flask application to bind to (see :meth:`init_app`)
    :param controller_class: the :class:`~kser.controller.Controller` subclass to use
    """

    def __init__(self, app=None, controller_class: type[Controller] = Controller):
        self.controller = controller_class()
        self.app = None
        if app is not None:
            self.init_app(app)

    def subscribe(self, callback: E) -> E:
        """Register a Task or Operation class under its ``path``; usable as a decorator.

        Returns the class unchanged (kser 0.8.27 returned None, which turned
        every decorated class of its own dice example into None).
        """
        if callback.path not in self.controller.ENTRYPOINTS:
            logger.info("Operation registry: loaded %s", callback.path)
            self.controller.register(callback.path, callback)
        return callback

    def init_app(self, app=None) -> None:
        """Bind to a Flask app (``app.extensions["kser"]`` is this registry), then load tasks."""
        self.app = app
        if app is not None:
            app.extensions["kser"] = self
        self.load_tasks()

    def load_tasks(self) -> None:
        """Hook to register tasks at ``init_app`` time (to implement)."""
