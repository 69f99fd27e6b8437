"""The statuses of operations, tasks and attempts: one definition, used everywhere (in
Python, and as the values the store keeps)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What an operation, a task or an attempt is at. A ``Status`` is a ``str``: it
    compares equal to the text the store keeps (``Status.SUCCESS == "SUCCESS"``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        """True when nothing more happens by itself after it."""
        return self in FINAL_STATUSES


#: statuses after which an operation or a task does not change by itself
FINAL_STATUSES = frozenset({Status.SUCCESS, Status.FAILED, Status.SKIPPED, Status.CANCELED})
