"""kser: sequence tasks over Apache Kafka.

A producer sends one :class:`kser.Message`; whichever consumer of the group receives it
runs it through its registry. The names a user needs are here::

    from kser import Operation, OperationRegistry, Parallel, Task

Each is loaded when first used (``import kser`` opens no Kafka client, Flask or store),
and each keeps its home module too (``kser.sequencing.task.Task``...): every import path
of kser 0.8 and of earlier docs still works. See ``docs/`` for the design.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "1.0.0.dev0"

#: each public name, and the module that defines it
_HOMES = {
    # operations and tasks
    "OperationRegistry": "kser.sequencing.registry",
    "Operation": "kser.sequencing.operation",
    "Task": "kser.sequencing.task",
    "TaskCanceled": "kser.sequencing.task",
    "SkipTask": "kser.sequencing.task",
    "Parallel": "kser.sequencing.shapes",
    "Branch": "kser.sequencing.shapes",
    "Sensor": "kser.sequencing.shapes",
    "TriggerRule": "kser.sequencing.rules",
    "Retry": "kser.sequencing.retries",
    "HttpTask": "kser.tasks",
    "PythonTask": "kser.tasks",
    "ShellTask": "kser.tasks",
    "Schedule": "kser.sequencing.schedules",
    "Status": "kser.status",
    "Entrypoint": "kser.entry",
    # messages, settings, store, clients
    "Message": "kser.schemas",
    "Settings": "kser.config",
    "Store": "kser.store",
    "Client": "kser.client",
    "Controller": "kser.controller",
    "BaseProducer": "kser.producer",
    # the errors users catch (one root: KserError)
    "KserError": "kser.errors",
    "RedoError": "kser.errors",
    "UndeliverableError": "kser.errors",
    "MessageTooLargeError": "kser.errors",
    "StoreError": "kser.errors",
    "OperationGoneError": "kser.errors",
    "WorkerFatalError": "kser.errors",
    "WorkerStartError": "kser.errors",
    "TimeLimitExceeded": "kser.errors",
    "ControlRefusedError": "kser.errors",
    "TopicNotFoundError": "kser.errors",
    "AuthConfigError": "kser.errors",
    "MetricsUnavailableError": "kser.errors",
    "ClientError": "kser.client",
}

__all__ = ["__version__", *sorted(_HOMES)]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kser' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
