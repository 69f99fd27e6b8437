"""Durable state of operations and tasks, and the outbox (SQLite or PostgreSQL).

``Store(url)`` opens the database and applies the migrations it lacks.
``KSER_STORE_URL`` picks it: the embedded default is a SQLite file in the
working directory's state folder (``sqlite:///.kser/kser.db``); machines that share work share a
PostgreSQL database (``postgresql+psycopg://user:pass@host/db``).
"""

from kser.errors import StoreError
from kser.store.rows import (
    AttemptRow,
    DeadLetterRow,
    LogRow,
    OperationRow,
    OperationState,
    OutboxRow,
    Row,
    ScheduleRow,
    TaskRow,
)
from kser.store.store import Store, Tx

__all__ = ["AttemptRow", "DeadLetterRow", "LogRow", "OperationRow", "OperationState",
           "OutboxRow", "Row", "ScheduleRow", "Store", "StoreError", "TaskRow", "Tx"]
