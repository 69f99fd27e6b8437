"""Operation: a task whose children are tasks, run one after the other.

Building an operation (:meth:`Operation.build`) runs ``prebuild`` →
``compute_tasks`` → ``build_tasks`` → ``finalize``. Every task receives the
operation's params overlaid with its own, and the result of the tasks before
it (``Result`` ``+`` semantics: ``retval`` accumulates, the worst retcode wins).

Until the durable sequencing engine lands (see docs/), :meth:`launch_next`
runs the next task in the current process; the API stays the same when it
becomes "emit the next task as a Kafka message".
"""

from __future__ import annotations

import logging

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.results import is_success
from kser.sequencing.task import FAILED, PENDING, RUNNING, SUCCESS, Task

logger = logging.getLogger(__name__)


class Operation(Task):
    """A sequence of tasks. Subclasses implement :meth:`build_tasks`.

    :param tasks: already built tasks (normally left to :meth:`build`)
    """

    def __init__(self, uuid: str | None = None, status: str = PENDING,
                 params: dict | None = None, tasks: list[Task] | None = None,
                 result: Result | None = None, metadata: dict | None = None):
        Task.__init__(self, uuid=uuid, params=params, status=status, result=result,
                      metadata=metadata)
        self.tasks: list[Task] = list(tasks or [])
        self._built = bool(tasks)

    def __repr__(self) -> str:
        return f"Operation [{type(self).__name__}](id={self.uuid},status={self.status})"

    # -- construction -------------------------------------------------------------------

    @classmethod
    def new(cls, **kwargs) -> Operation:
        """Deprecated: build an operation from a dict (use ``cls(...).build()``)."""
        return cls(**cls.parse_inputs(**kwargs))

    @classmethod
    def parse_inputs(cls, **kwargs) -> dict:
        """Deprecated: check the inputs of :meth:`new`."""
        return kwargs

    def add_task(self, task: Task) -> None:
        """Append ``task`` to the sequence."""
        self.tasks.append(task)

    def prebuild(self, **kwargs) -> dict | None:
        """Checks before the tasks are built; may return changed build parameters."""
        return kwargs

    def build_tasks(self, **kwargs) -> list[Task]:
        """Return the tasks of this operation, in order (to implement)."""
        return []

    def compute_tasks(self, **kwargs) -> list[Task]:
        """Check the operation's required params, run :meth:`prebuild`, build the tasks."""
        logger.debug("%s.PreBuild: %s[%s]: %s", type(self).__name__, type(self).path, self.uuid,
                     kwargs)
        Task.check_required_params(self)
        params = self.prebuild(**kwargs)
        tasks = self.build_tasks(**(params if params else dict(kwargs)))
        logger.debug("%s.BuildTasks: %d task(s) found", type(self).__name__, len(tasks))
        return tasks

    def finalize(self) -> Operation:
        """Post-build actions (to implement); returns the operation."""
        return self

    def build(self, **kwargs) -> Operation:
        """Create the tasks and return :meth:`finalize`'s operation.

        ``kwargs`` default to the operation's own params. Tasks are given the
        operation's params overlaid with their own, then every task's
        :attr:`REQUIRED_FIELDS` is checked, before anything runs.
        """
        for task in self.compute_tasks(**(kwargs or self.params)):
            task.params = {**self.params, **task.params}
            self.tasks.append(task)
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

    # -- sequencing ---------------------------------------------------------------------

    def next(self, task: Task) -> Task | None:
        """The first task after ``task`` that has not succeeded yet, or None."""
        ids = [t.uuid for t in self.tasks]
        if task.uuid not in ids:
            return None
        for candidate in self.tasks[ids.index(task.uuid) + 1:]:
            if candidate.status != SUCCESS:
                return candidate
        return None

    def launch_next(self, task: Task | None = None, result: Result | None = None) -> Result:
        """Run what comes after ``task`` (the first pending task when None).

        Ends the operation (SUCCESS, or FAILED at the first failing task) and
        returns its result.
        """
        result = result if result is not None else self.result
        next_task = self.next(task) if task else next(
            (t for t in self.tasks if t.status != SUCCESS), None)
        while next_task is not None:
            result = next_task.execute(result=result)
            if not is_success(result):
                return self._onerror(result)
            next_task = self.next(next_task)
        return self._onsuccess(result)

    def launch(self) -> Result:
        """Start the operation from its first pending task."""
        return self.launch_next()

    def send(self, producer, topic: str, timeout: float = 60) -> Operation:
        """Send this operation as one message to ``topic``; a consumer builds and runs it.

        :param producer: any transport's ``Producer``
        :raises ValidationError: when the message cannot be sent (the reason is in it)
        """
        sent = producer.send(topic, self.to_Message(), timeout=timeout)
        if not is_success(sent):
            raise ValidationError(f"Operation {type(self).path}[{self.uuid}] was not sent: "
                                  f"{sent.stderr}", extra=dict(uuid=self.uuid))
        return self

    # -- execution of an operation message -----------------------------------------------

    def _prerun(self) -> None:
        if not self._built:
            self.build(**self.params)
        self.check_required_params()
        self._set_status(RUNNING)
        self.prerun()

    def unsafe_execute(self, result: Result | None = None) -> Result:
        if self._init_error is not None:
            return self._onerror(self._init_error)
        if result:
            self.result += result
        self._prerun()
        return self.launch()

    def _onsuccess(self, result: Result | None) -> Result:
        self._set_status(SUCCESS, result)
        return self._finish(result, success=True)

    def _onerror(self, result: Result) -> Result:
        self._set_status(FAILED, result)
        return self._finish(result, success=False)

    def _finish(self, result: Result | None, success: bool) -> Result:
        result = result if result is not None else self.result
        log = logger.info if success else logger.error
        log("%s.%s: %s[%s]: %s", type(self).__name__, "Success" if success else "Failed",
            type(self).path, self.uuid, result)
        return self.onsuccess(result) if success else self.onerror(result)
