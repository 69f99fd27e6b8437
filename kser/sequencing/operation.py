"""Operation: a task whose children are tasks, run one after the other.

Building an operation (:meth:`Operation.build`) runs ``prebuild`` →
``compute_tasks`` → ``build_tasks`` → ``finalize``. Every task receives the
operation's params overlaid with its own, and the result of the tasks before
it (``Result`` ``+`` semantics: ``retval`` accumulates, the worst retcode wins).

Running an operation is durable: :meth:`launch` (or a message naming the
operation) stores it with its tasks and sends the first task as a Kafka
message; each task message is run by whichever consumer receives it, and
sends the next (see :mod:`kser.sequencing.engine.sequencer`, which imports this module:
an operation reaches its engine through its registry, typed by :class:`Engine`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.results import exception_result, is_success
from kser.schemas import (
    KSER_METADATA_KEY,
    MAX_ENTRYPOINT_LENGTH,
    check_depth,
    check_ttl_strategy,
    safe_key,
)
from kser.sequencing.shapes import wire
from kser.sequencing.task import PENDING, SUCCESS, Task
from kser.topics import topic_problem

if TYPE_CHECKING:
    from kser.config import Settings
    from kser.store import Store


class Engine(Protocol):
    """What an operation asks of its registry's engine (``registry.sequencer``) to be
    sent, followed and waited for."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    def submit(self, operation: Operation, topic: str, trace_parent: Any = None
               ) -> Result: ...

    def store_has(self, operation_id: str) -> bool: ...

    def emit_ready(self, operation_id: str) -> Result: ...

    def wait(self, operation_id: str, timeout: float | None = None) -> Result: ...

logger = logging.getLogger(__name__)


class Operation(Task):
    """A sequence (or graph) of tasks. Subclasses implement :meth:`build_tasks`.

    An operation among the tasks of another runs as its child (a sub-operation): its
    own row in the store, linked to the parent's task, which ends as the child does;
    the tasks after it wait without holding a worker, and canceling or recovering the
    parent reaches the child.

    :param tasks: already built tasks (normally left to :meth:`build`)
    """

    #: announce the end of every operation of this class:
    #: ``{"topic": T, "payload": any JSON, "entrypoint": optional}`` (None: no announcement)
    ON_EXIT_NOTIFY: dict[str, Any] | None = None
    #: purge finished operations of this class after so many seconds:
    #: ``{"seconds_after_success", "seconds_after_failure", "seconds_after_completion"}``
    #: (None: keep them; ``kser purge`` applies it)
    TTL_STRATEGY: dict[str, float] | None = None

    def __init__(self, uuid: str | None = None, status: str = PENDING,
                 params: dict[str, Any] | None = None, tasks: list[Task] | None = None,
                 result: Result | None = None, metadata: dict[str, Any] | None = None, *,
                 name: str | None = None, trigger_rule: str | None = None) -> None:
        Task.__init__(self, uuid=uuid, params=params, status=status, result=result,
                      metadata=metadata, name=name, trigger_rule=trigger_rule)
        self.tasks: list[Task] = []
        self._built = bool(tasks)
        if tasks:
            self.tasks = wire(self, tasks)

    def __repr__(self) -> str:
        return f"Operation [{type(self).__name__}](id={self.uuid},status={self.status})"

    # -- construction -------------------------------------------------------------------

    @classmethod
    def new(cls, **kwargs: Any) -> Operation:
        """Deprecated: build an operation from a dict (use ``cls(...).build()``)."""
        return cls(**cls.parse_inputs(**kwargs))

    @classmethod
    def parse_inputs(cls, **kwargs: Any) -> dict[str, Any]:
        """Deprecated: check the inputs of :meth:`new`."""
        return kwargs

    def add_task(self, task: Task) -> None:
        """Append ``task`` to the operation: unless wired already, it waits for the tasks
        nothing waits for yet (the last one of a chain)."""
        if not task.upstream:
            task.upstream = _ends(self.tasks)
        self.tasks = wire(self, [*self.tasks, task])

    def prebuild(self, **kwargs: Any) -> dict[str, Any] | None:
        """Checks before the tasks are built; may return changed build parameters."""
        return kwargs

    def build_tasks(self, **kwargs: Any) -> list[Any]:
        """Return the tasks of this operation (to implement): a list run in order, which
        may hold ``Parallel(...)`` groups, or tasks wired with ``>>`` (see
        :mod:`kser.sequencing.shapes`)."""
        return []

    def compute_tasks(self, **kwargs: Any) -> list[Task]:
        """Check the operation's required params, run :meth:`prebuild`, build the tasks
        (wired, named and checked: see :func:`kser.sequencing.shapes.wire`)."""
        logger.debug("%s.PreBuild: %s[%s]: %s", type(self).__name__, type(self).path, self.uuid,
                     kwargs)
        Task.check_required_params(self)
        params = self.prebuild(**kwargs)
        tasks = wire(self, self.build_tasks(**(params if params else dict(kwargs))))
        logger.debug("%s.BuildTasks: %d task(s) found", type(self).__name__, len(tasks))
        return tasks

    def finalize(self) -> Operation:
        """Post-build actions (to implement); returns the operation."""
        return self

    def build(self, **kwargs: Any) -> Operation:
        """Create the tasks and return :meth:`finalize`'s operation.

        ``kwargs`` default to the operation's own params. Tasks are given the
        operation's params overlaid with their own, then every task's
        :attr:`REQUIRED_FIELDS` is checked, before anything runs.
        """
        built = self.compute_tasks(**(kwargs or self.params))
        for task in built:
            task.params = {**self.params, **task.params}
        if self.tasks:  # given to the constructor: the built ones follow them
            ends = _ends(self.tasks)
            for task in built:
                task.upstream = task.upstream or list(ends)
            built = wire(self, [*self.tasks, *built])
        self.tasks = built
        self._built = True
        self.check_required_params()
        return self.finalize()

    def check_required_params(self) -> None:
        """Check the operation's required params and those of every task."""
        Task.check_required_params(self)
        for task in self.tasks:
            for param in task.REQUIRED_FIELDS:
                if param not in task.params:
                    raise ValidationError(
                        f"Missing parameter: {param} (required by {type(task).path}, "
                        f"task of {type(self).path})",
                        extra=dict(uuid=self.uuid, task=task.uuid, param=param))

    # -- status -------------------------------------------------------------------------

    def _set_status(self, status: str, result: Result | None = None) -> None:
        logger.info("%s.SetStatus: %s[%s] status update '%s' -> '%s'", type(self).__name__,
                    type(self).path, self.uuid, self.status, status)
        self.set_status(status, result)

    def set_status(self, status: str, result: Result | None = None) -> None:
        """Record a status change; called on every transition. Override to observe them."""
        self.status = status

    # -- durable sequencing ---------------------------------------------------------------

    def exit_notify_settings(self) -> dict[str, Any] | None:
        """Where to announce this operation's end: ``{"topic", "payload", "entrypoint"}``.

        From ``metadata["kser"]["on_exit_notify"]`` given in code (a message cannot set
        it: :func:`kser.schemas.check_kser_metadata`), else :attr:`ON_EXIT_NOTIFY`.

        :raises ValidationError: it is not one kser can send (see :func:`check_exit_notify`)
        """
        return check_exit_notify(self._own().get("on_exit_notify", self.ON_EXIT_NOTIFY),
                                 f"{type(self).path}'s exit notification")

    def ttl_settings(self) -> dict[str, float] | None:
        """When to purge this operation once finished (seconds; None keeps it).

        From ``metadata["kser"]["ttl_strategy"]``, else :attr:`TTL_STRATEGY`.

        :raises ValidationError: it is not a retention (see
            :func:`kser.schemas.check_ttl_strategy`)
        """
        return check_ttl_strategy(self._own().get("ttl_strategy", self.TTL_STRATEGY),
                                  f"{type(self).path}'s ttl_strategy")

    def _own(self) -> dict[str, Any]:
        own = self.metadata.get(KSER_METADATA_KEY)
        return own if isinstance(own, dict) else {}

    def next(self, task: Task) -> Task | None:
        """The first task after ``task`` that has not succeeded yet, or None."""
        ids = [t.uuid for t in self.tasks]
        if task.uuid not in ids:
            return None
        for candidate in self.tasks[ids.index(task.uuid) + 1:]:
            if candidate.status != SUCCESS:
                return candidate
        return None

    def _sequencer(self) -> Engine:
        registry = getattr(type(self), "registry", None)
        if registry is None:
            raise ValidationError(
                f"{type(self).path} is not subscribed to an OperationRegistry: subscribe it "
                "(@registry.subscribe) so kser knows its store and producer")
        sequencer: Engine = registry.sequencer
        return sequencer

    def launch(self, topic: str | None = None, *, key: str | None = None) -> Result:
        """Build (if needed), validate, store the operation and send its first tasks.

        :param topic: where its tasks go unless they name their own (default: the
            registry's topic, ``KSER_TOPIC``)
        :param key: an idempotency key: if an operation was sent with it before, nothing
            is started and the result's ``uuid`` is that operation's id
        :return: retcode 0 once stored and sent, else >= 300 with the reason
        """
        try:
            return self._submit(topic, key)
        except Exception as exc:
            return exception_result(exc, self.uuid)

    def _submit(self, topic: str | None, key: str | None = None) -> Result:
        sequencer = self._sequencer()
        if key is not None:
            self.metadata.setdefault(KSER_METADATA_KEY, {})["idempotency_key"] = key
        return sequencer.submit(self, topic or sequencer.settings.topic)

    def launch_next(self, task: Task | None = None, result: Result | None = None) -> Result:
        """Send the tasks that are ready now (after ``task``), or start the operation.

        (``result`` is accepted as in kser 0.8's signature; the store keeps results.)
        """
        if task is None and not self._sequencer().store_has(self.uuid):
            return self.launch()
        return self._sequencer().emit_ready(self.uuid)

    def send(self, topic: str | None = None, *, key: str | None = None) -> Operation:
        """Like :meth:`launch`, raising instead of returning an error; returns the operation.

        :param key: an idempotency key (``"nightly-2026-11-22"``): a second send with the
            same key starts nothing and returns the operation the first one started (a
            producer script retrying after a timeout never starts a job twice)
        :raises Exception: what went wrong, as it was raised: a ``ValidationError`` for a
            missing parameter (nothing is stored or sent then), a ``StoreError`` or the
            database's error for an unreachable store, the client's for Kafka...
        """
        result = self._submit(topic, key)
        if not is_success(result):  # (submit raises; a Result it returns is a success)
            raise ValidationError(f"Operation {type(self).path}[{self.uuid}] was not sent: "
                                  f"{result.stderr}", extra=dict(uuid=self.uuid))
        if result.uuid != self.uuid:  # sent before with this key: that operation
            with self._sequencer().store.transaction() as tx:
                first = tx.operation(result.uuid)
            return type(self)(uuid=first.id, params=first.params, status=first.status,
                              metadata=first.metadata)
        return self

    def wait(self, timeout: float | None = None) -> Result:
        """Block until this (sent) operation ends; its final result (see
        :meth:`~kser.sequencing.registry.OperationRegistry.wait`)."""
        result: Result = self._sequencer().wait(self.uuid, timeout)
        return result

    @classmethod
    def run_sync(cls, timeout: float | None = None, *, topic: str | None = None,
                 key: str | None = None, **params: Any) -> Result:
        """Send an operation of this class with ``params`` and wait for its end: its final
        result (cloudharness's synchronous operations).

        :raises TimeoutError: ``timeout`` seconds passed first (the operation goes on)
        """
        return cls(params=params).send(topic, key=key).wait(timeout)

    def unsafe_execute(self, result: Result | None = None) -> Result:
        """An operation run directly is launched: stored, and its first task sent."""
        if self._init_error is not None:
            return self._onerror(self._init_error)
        return self.launch()


#: the keys of an exit notification
EXIT_NOTIFY_KEYS = frozenset({"topic", "payload", "entrypoint"})


def check_exit_notify(notify: Any, what: str = "the exit notification"
                      ) -> dict[str, Any] | None:
    """``notify`` if kser can send it when an operation ends: None, or an object with a
    ``topic`` Kafka takes, an optional ``entrypoint`` name and an optional ``payload``
    (JSON nested at most :data:`kser.schemas.MAX_JSON_DEPTH` levels).

    :raises ValidationError: (400) saying what to change
    """
    if notify is None:
        return None
    if type(notify) is not dict:
        raise ValidationError(f"{what} must be an object of {', '.join(sorted(EXIT_NOTIFY_KEYS))}"
                              f", not {type(notify).__name__}")
    unknown = sorted(set(notify) - EXIT_NOTIFY_KEYS)
    if unknown:
        raise ValidationError(f"{what} has unknown keys {', '.join(map(safe_key, unknown))} "
                              f"(known: {', '.join(sorted(EXIT_NOTIFY_KEYS))})")
    problem = topic_problem(notify.get("topic"))
    if problem is not None:
        raise ValidationError(f"{what}'s topic: {problem}")
    entrypoint = notify.get("entrypoint")
    if entrypoint is not None and (type(entrypoint) is not str
                                   or not 0 < len(entrypoint) <= MAX_ENTRYPOINT_LENGTH):
        raise ValidationError(f"{what}'s entrypoint must be a name of 1 to "
                              f"{MAX_ENTRYPOINT_LENGTH} characters")
    check_depth(notify.get("payload"), f"{what}'s payload")
    return dict(notify)


def _ends(tasks: list[Task]) -> list[Task]:
    """The tasks no other one waits for."""
    waited_for = {id(up) for task in tasks for up in task.upstream}
    return [task for task in tasks if id(task) not in waited_for]
