"""What kind of failure an exception is, and text that is safe to put anywhere.

kser handles every failure by its kind, decided here once:

* **transient**: the infrastructure failed (a lost connection to the broker or
  the store, a timeout, a locked or read-only database). The same input will
  work later: the work is redone with backoff, and never ends a worker.
* **permanent**: the input itself cannot be handled (a value the store cannot
  hold, a message over the size limit, a schema violation). Doing it again
  would fail again: the record is dead-lettered, or the task fails, at once.
* **fatal**: this worker must not go on (:class:`WorkerFatalError`): it stops,
  commits nothing it did not finish, and exits non-zero.

Text that came from a record (entrypoint names, errors quoting it) goes into
Kafka headers, log lines and database columns, which accept only valid
Unicode without NUL characters: :func:`safe_text` makes it so.
"""

from __future__ import annotations

from typing import Any

from cdumay_error.types import NotFound, ValidationError

#: longest text kept by :func:`safe_text` unless told otherwise, characters
DEFAULT_TEXT_LIMIT = 2000
#: what to look at when Kafka does not acknowledge records in time (every line saying so
#: ends with it)
UNACKNOWLEDGED_HINT = ("is a broker down, or are fewer replicas in sync than the topic's "
                       "min.insync.replicas? `kser topics describe TOPIC` shows each "
                       "partition's leader and replicas in sync")


class KserError(Exception):
    """The root of every error kser raises: ``except kser.KserError`` catches them all.

    Each one also derives from the Python (or cdumay-error) class that says what kind of
    error it is (``LookupError``, ``ValueError``, ``cdumay_error.NotFound``...), so code
    written against those keeps working.
    """


class RedoError(KserError):
    """Raised while handling a message whose processing must be redone later.

    The store or the broker could not be reached: the message is fine, the
    infrastructure is not. The consumer does not commit it and tries again.
    """


class UndeliverableError(NotFound, KserError):
    """Raised while handling a message that cannot be routed or handled (it is
    dead-lettered)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # (cdumay-error's: extra, code)
        super().__init__(*args, **kwargs)


class MessageTooLargeError(ValidationError, KserError):
    """A serialised message is larger than the configured limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # (cdumay-error's: extra, code)
        super().__init__(*args, **kwargs)


class StoreError(KserError):
    """The store cannot be used: a wrong URL, a missing driver, an unreachable database."""


class OperationGoneError(KserError, LookupError):
    """An operation is not in the store any more: deleted (a purge, the API) while one
    of its tasks was handled. Nothing of it is left to update."""


class WorkerFatalError(KserError):
    """This worker cannot go on (e.g. its SQLite store file was removed): it stops."""


class WorkerStartError(KserError):
    """The worker cannot start: the message says what is missing and what to do."""


class TimeLimitExceeded(KserError):  # noqa: N818 - named for what happened
    """The task ran past its ``TIME_LIMIT``."""


class ControlRefusedError(KserError):
    """A control that cannot be done (its transaction is rolled back): ``retcode`` 404
    for an unknown operation or task, 409 for one whose state does not allow it."""

    def __init__(self, retcode: int, message: str) -> None:
        super().__init__(message)
        self.retcode, self.message = retcode, message


class TopicNotFoundError(KserError, LookupError):
    """A topic asked for does not exist."""


class MetricsUnavailableError(KserError, RuntimeError):
    """Metrics were asked for and prometheus-client is not installed."""


class AuthConfigError(KserError, ValueError):
    """The API's token settings are unusable: the API does not start."""


def kafka_client_errors() -> tuple[type[BaseException], ...]:
    """The base error classes of the Kafka clients installed (kafka-python's, and
    confluent-kafka's when it is): what an unreachable or refusing cluster raises."""
    errors: list[type[BaseException]] = []
    try:
        from kafka.errors import KafkaError
        errors.append(KafkaError)
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        pass
    try:
        from confluent_kafka import KafkaException
        errors.append(KafkaException)
    except ImportError:
        pass
    return tuple(errors)


def safe_text(value: object, limit: int | None = DEFAULT_TEXT_LIMIT) -> str:
    """``value`` as text that encodes to UTF-8 and holds no NUL character.

    Lone surrogates and undecodable bytes are escaped (``\\ud800``, ``\\xff``),
    NUL becomes ``\\x00``; text longer than ``limit`` characters is cut with a
    note of how much was left out.
    """
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit} more characters)"
    return text


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says the infrastructure failed, not the input (see the module)."""
    from sqlalchemy import exc as sa

    if isinstance(exc, WorkerFatalError):
        return False
    if isinstance(exc, sa.DBAPIError):
        # connections lost or refused, locks, timeouts, read-only or full disks; a
        # connection SQLAlchemy invalidated is a lost one whatever the driver said
        if exc.connection_invalidated:
            return True
        # our statements are fixed: a ProgrammingError is a missing table or grant, and a
        # bare DatabaseError a damaged file -- the database's state, not the input's
        return (isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.InternalError
                           | sa.ProgrammingError) or type(exc) is sa.DatabaseError)
    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):
        return True  # the connection pool is exhausted, or a connection died
    if any(cls.__name__ in _DBAPI_TRANSIENT for cls in type(exc).__mro__):
        return True  # a driver's own (psycopg's, on the hop's DB-API fast path)
    retriable = getattr(exc, "retriable", None)  # kafka-python's errors say it themselves
    if isinstance(retriable, bool):
        return retriable
    kafka_error: Any = exc.args[0] if exc.args else None  # confluent_kafka.KafkaException
    if callable(getattr(kafka_error, "retriable", None)):
        return bool(kafka_error.retriable()) or kafka_error.name() in _LIBRDKAFKA_TRANSIENT
    return isinstance(exc, ConnectionError | TimeoutError)


#: DB-API exception classes (PEP 249) that mean the database, not the statement, failed
_DBAPI_TRANSIENT = frozenset({"OperationalError", "InterfaceError"})
#: librdkafka's local errors that mean "the cluster could not be reached in time", and
#: the broker's errors of a cluster that is moving (a leader or coordinator changing, a
#: topic just created), which librdkafka does not always flag retriable
_LIBRDKAFKA_TRANSIENT = frozenset({
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_RESOLVE",
    "_WAIT_COORD", "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE",
    "UNKNOWN_TOPIC_OR_PART", "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE",
    "COORDINATOR_LOAD_IN_PROGRESS", "REQUEST_TIMED_OUT",
    # a cluster losing brokers: too few replicas in sync, a leader moving, a disk or link
    # failing (a record refused with one of these is sent again, never dead-lettered)
    "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "KAFKA_STORAGE_ERROR",
    "NETWORK_EXCEPTION", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "NOT_CONTROLLER",
    "PREFERRED_LEADER_NOT_AVAILABLE", "OFFSET_NOT_AVAILABLE"})
