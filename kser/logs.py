"""Logging of kser processes: text or JSON lines, each carrying what it is about.

While a task runs, every line logged in its thread (by kser or by the task's own code)
carries its operation id, task id and name, attempt and entrypoint; every line of a
worker process carries the worker's name. In the text format they are left out (a
line stays readable); in the JSON format (``--log-format json``, python-json-logger)
they are fields of their own, for a log pipeline to index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: the line of the text format
TEXT_FORMAT = "%(asctime)s %(levelname)-8s %(message)s"
FORMATS = ("text", "json")

_task: ContextVar[dict[str, Any] | None] = ContextVar("kser_log_task", default=None)
_process: dict[str, Any] = {}


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Within the block, lines logged in this thread carry ``fields`` (None ones left
    out; nested blocks add to the outer one's)."""
    token = _task.set({**(_task.get() or {}),
                       **{key: value for key, value in fields.items() if value is not None}})
    try:
        yield
    finally:
        _task.reset(token)


def set_process_fields(**fields: Any) -> None:
    """Fields every line of this process carries from now on (a worker's name)."""
    _process.update({key: value for key, value in fields.items() if value is not None})


class ContextFilter(logging.Filter):
    """Adds the process's and the running task's fields to each record (a record's own
    ``extra`` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for fields in (_process, _task.get() or {}):
            for key, value in fields.items():
                if key not in record.__dict__:
                    setattr(record, key, value)
        return True


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` ("text" or "json")."""
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                             rename_fields={"asctime": "time", "levelname": "level",
                                            "name": "logger"})
    raise ValueError(f"unknown log format {log_format!r}: use one of {', '.join(FORMATS)}")


def configure(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``log_format``, each line with its context (as
    :func:`logging.basicConfig`: nothing if the root logger has a handler already)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
