"""Configuration: one home for every setting.

Each setting is read from an environment variable ``KSER_*`` with the default
below; ``kser`` command-line flags override the environment. A value that is
not what the setting needs raises ``ConfigurationError`` naming the variable.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from cdumay_error.types import ConfigurationError

#: the embedded store: a SQLite file in the state directory ``.kser`` of the working
#: directory (created when needed; .gitignore it)
DEFAULT_STORE_URL = "sqlite:///.kser/kser.db"

#: partitions of the topics kser creates (KSER_PARTITIONS)
DEFAULT_PARTITIONS = 12
#: seconds a client waits for the cluster when it starts (KSER_CONNECT_TIMEOUT)
DEFAULT_CONNECT_TIMEOUT = 15.0

#: transports by the name ``--transport`` / ``KSER_TRANSPORT`` use
TRANSPORTS = {"kafka": "kser.python_kafka", "confluent": "kser.confluent",
              "memory": "kser.memory"}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _number(name: str, default: str, kind: type[int] | type[float]) -> int | float:
    """The number in the environment variable ``name``, or a ConfigurationError saying
    what is wrong with it."""
    text = _env(name, default)
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ConfigurationError(f"{name}={text!r} is not {noun} (default {default})") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigurationError(f"{name}={text!r} is not a finite number")
    return value


def _int(name: str, default: str) -> int:
    return int(_number(name, default, int))


def _auto_int(name: str, least: int) -> int | None:
    """The integer in ``name`` (at least ``least``), or None when it is ``auto`` (its
    default) or empty."""
    text = _env(name, "auto").strip()
    if text in ("", "auto"):
        return None
    value = _int(name, "auto")
    if value < least:
        raise ConfigurationError(f"{name}={value} is below {least} (or use auto, the default)")
    return value


def _port(name: str, default: str) -> int:
    value = _int(name, default)
    if not 0 <= value <= 65535:
        raise ConfigurationError(f"{name}={value} is not a port number (0 to 65535)")
    return value


def _float(name: str, default: str) -> float:
    return float(_number(name, default, float))


@dataclass
class Settings:
    """kser's settings, read from the environment when created."""

    #: ``kafka`` (kafka-python), ``confluent`` (confluent-kafka) or ``memory`` (in-process)
    transport: str = field(default_factory=lambda: _env("KSER_TRANSPORT", "kafka"))
    #: Kafka bootstrap servers, comma-separated ``host:port``
    bootstrap_servers: str = field(
        default_factory=lambda: _env("KSER_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    #: topic of operations sent without one, and of their tasks
    topic: str = field(default_factory=lambda: _env("KSER_TOPIC", "kser"))
    #: consumer group of ``kser worker``
    group: str = field(default_factory=lambda: _env("KSER_GROUP", "kser"))
    #: dead-letter topic of topic T is ``T + dlq_suffix`` unless ``dlq_topic`` is set
    dlq_suffix: str = field(default_factory=lambda: _env("KSER_DLQ_SUFFIX", ".dlq"))
    #: one dead-letter topic for every consumed topic (empty: use ``dlq_suffix``)
    dlq_topic: str = field(default_factory=lambda: _env("KSER_DLQ_TOPIC", ""))
    #: largest serialised message ``send`` accepts, bytes (Kafka's default limit is 1 MiB)
    max_message_bytes: int = field(
        default_factory=lambda: _int("KSER_MAX_MESSAGE_BYTES", str(1024 * 1024)))
    #: seconds a client waits for the cluster when it starts (``kser send --timeout``,
    #: ``kser worker --timeout``) before it says the broker cannot be reached
    connect_timeout: float = field(
        default_factory=lambda: _float("KSER_CONNECT_TIMEOUT", str(DEFAULT_CONNECT_TIMEOUT)))
    #: seconds after which the group gives a silent worker's partitions to the others
    #: (its session timeout: what a SIGKILLed worker's records wait for); the broker
    #: bounds it (group.min.session.timeout.ms, 6 s by default)
    session_timeout: float = field(
        default_factory=lambda: _float("KSER_SESSION_TIMEOUT", "10"))
    #: seconds between a worker's heartbeats to its group (a third of the session timeout
    #: or less)
    heartbeat_interval: float = field(
        default_factory=lambda: _float("KSER_HEARTBEAT_INTERVAL", "3"))
    #: seconds a worker waits for the broker to acknowledge what it produced before it
    #: gives up and processes the record again; also every producer's delivery timeout
    #: (a record not acknowledged by then is failed by the client, not sent later)
    send_timeout: float = field(default_factory=lambda: _float("KSER_SEND_TIMEOUT", "60"))
    #: partitions of the topics a worker creates when they do not exist (its topics and
    #: their dead-letter topics): as many workers of a group can share a topic
    partitions: int = field(
        default_factory=lambda: _int("KSER_PARTITIONS", str(DEFAULT_PARTITIONS)))
    #: replicas of the topics kser creates (None, ``auto``: min(3, brokers); -1: the
    #: broker's default.replication.factor)
    replication_factor: int | None = field(
        default_factory=lambda: _auto_int("KSER_REPLICATION_FACTOR", -1))
    #: ``min.insync.replicas`` of the topics kser creates: the replicas that must hold a
    #: record before the broker acknowledges it (None, ``auto``: 2 for 3 replicas or
    #: more, else the broker's default)
    min_insync_replicas: int | None = field(
        default_factory=lambda: _auto_int("KSER_MIN_INSYNC_REPLICAS", 1))
    #: seconds a stopping worker waits for the tasks in hand; after it (or at a second
    #: SIGTERM/SIGINT) it exits 1 without committing them: another worker redoes them
    shutdown_timeout: float = field(
        default_factory=lambda: _float("KSER_SHUTDOWN_TIMEOUT", "30"))
    #: tasks one consumer runs at once (``kser worker --concurrency``)
    concurrency: int = field(default_factory=lambda: _int("KSER_CONCURRENCY", "1"))
    #: ``async def`` task bodies one consumer awaits at once on its event loop, beside
    #: the ``concurrency`` threads (each holds no thread while it waits)
    async_concurrency: int = field(
        default_factory=lambda: _int("KSER_ASYNC_CONCURRENCY", "1000"))
    #: most task messages one task thread claims, runs and stores together (records
    #: already in hand, under load; 1: one at a time)
    batch_size: int = field(default_factory=lambda: _int("KSER_BATCH_SIZE", "32"))
    #: longest time processed records wait for their offset commit, seconds
    commit_interval: float = field(
        default_factory=lambda: _float("KSER_COMMIT_INTERVAL", "1.0"))
    #: how long one poll waits for records, seconds (bounds the reaction to a stop signal)
    poll_timeout: float = field(default_factory=lambda: _float("KSER_POLL_TIMEOUT", "0.5"))
    #: most records taken by one poll
    max_poll_records: int = field(
        default_factory=lambda: _int("KSER_MAX_POLL_RECORDS", "100"))
    #: seconds to wait before processing again a record whose store or broker failed
    redo_backoff: float = field(default_factory=lambda: _float("KSER_REDO_BACKOFF", "1.0"))
    #: SQLAlchemy URL of the store (operations, tasks, outbox)
    store_url: str = field(default_factory=lambda: _env("KSER_STORE_URL", DEFAULT_STORE_URL))
    #: seconds a running task's lease lasts; renewed every third of it while the task runs.
    #: A task whose worker died is taken over once its lease expired.
    task_lease: float = field(default_factory=lambda: _float("KSER_TASK_LEASE", "10"))
    #: seconds between two sweeps for due retries, expired leases and unsent messages
    sweep_interval: float = field(
        default_factory=lambda: _float("KSER_SWEEP_INTERVAL", "1"))
    #: base64 keys (comma-separated) sealing record values; the first one seals (kser[crypto])
    secret_keys: str = field(default_factory=lambda: _env("KSER_SECRET_KEYS", ""))
    #: refuse records that are not sealed
    require_encryption: bool = field(
        default_factory=lambda: _env("KSER_REQUIRE_ENCRYPTION", "0") in ("1", "true", "yes"))
    #: Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (empty: the client's default)
    security_protocol: str = field(default_factory=lambda: _env("KSER_SECURITY_PROTOCOL", ""))
    #: SASL mechanism, e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_mechanism: str = field(default_factory=lambda: _env("KSER_SASL_MECHANISM", ""))
    sasl_username: str = field(default_factory=lambda: _env("KSER_SASL_USERNAME", ""))
    sasl_password: str = field(default_factory=lambda: _env("KSER_SASL_PASSWORD", ""))
    #: CA bundle, client certificate and key for SSL (PEM files)
    ssl_cafile: str = field(default_factory=lambda: _env("KSER_SSL_CAFILE", ""))
    ssl_certfile: str = field(default_factory=lambda: _env("KSER_SSL_CERTFILE", ""))
    ssl_keyfile: str = field(default_factory=lambda: _env("KSER_SSL_KEYFILE", ""))
    #: where the REST API is mounted (``registry.init_app``, ``kser serve``)
    api_prefix: str = field(default_factory=lambda: _env("KSER_API_PREFIX", "/api/v1"))
    #: the API's bearer tokens: comma-separated ``role:token`` pairs, roles ``read`` and
    #: ``admin`` (secrets: never logged)
    api_tokens: str = field(default_factory=lambda: _env("KSER_API_TOKENS", ""), repr=False)
    #: ``none``: serve the API without tokens (refused unless set, when no token is)
    api_auth: str = field(default_factory=lambda: _env("KSER_API_AUTH", "token"))
    #: logging level of the ``kser`` command
    log_level: str = field(default_factory=lambda: _env("KSER_LOG_LEVEL", "INFO"))
    #: ``text`` or ``json`` (one JSON object a line, with the task it is about)
    log_format: str = field(default_factory=lambda: _env("KSER_LOG_FORMAT", "text"))

    #: port of ``kser worker``'s Prometheus metrics (``--metrics-port``; 0: none served)
    metrics_port: int = field(default_factory=lambda: _port("KSER_METRICS_PORT", "0"))
    #: address the metrics are served on (``0.0.0.0``: every interface)
    metrics_host: str = field(default_factory=lambda: _env("KSER_METRICS_HOST", "127.0.0.1"))
    #: directory the workers of one host serving the same metrics port share (empty:
    #: ``<tmp>/kser-metrics-<port>``)
    metrics_dir: str = field(default_factory=lambda: _env("KSER_METRICS_DIR", ""))

    #: where ``kser worker`` and ``kser serve`` send their spans: ``console``, ``otlp``
    #: (OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``), or empty: nowhere unless the
    #: process has a tracer provider already (``opentelemetry-instrument``)
    tracing: str = field(default_factory=lambda: _env("KSER_TRACING", ""))

    def dlq_for(self, topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return self.dlq_topic or f"{topic}{self.dlq_suffix}"

    def security(self) -> dict[str, str]:
        """The security settings that are set, by neutral name (each transport maps them)."""
        names = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile")
        return {name: getattr(self, name) for name in names if getattr(self, name)}

    def client_config(self, group: str | None = None) -> dict[str, Any]:
        """The configuration of a client of :attr:`transport` (a consumer if ``group``)."""
        if self.transport == "memory":
            return {"broker": "default", **({"group_id": group} if group else {})}
        module = importlib.import_module(TRANSPORTS[self.transport])
        config: dict[str, Any] = module.connection_config(self.bootstrap_servers, group,
                                                          self.security())
        return config

    def admin_options(self) -> dict[str, Any]:
        """The options of a :class:`kser.topics.TopicAdmin`: the partitions and replicas
        of the topics it creates, how long it waits for the cluster."""
        return {"partitions": self.partitions, "replication_factor": self.replication_factor,
                "min_insync_replicas": self.min_insync_replicas,
                "timeout": self.connect_timeout}

    def producer_options(self) -> dict[str, Any]:
        """kser's own producer options (every transport's producer takes them out of
        its configuration): the size limit, the connect timeout, the delivery timeout
        (:attr:`send_timeout`), the partitions and replicas of the topics it creates,
        and these settings themselves (its sealer's keys)."""
        return {"max_message_bytes": self.max_message_bytes,
                "connect_timeout": self.connect_timeout, "partitions": self.partitions,
                "replication_factor": self.replication_factor,
                "min_insync_replicas": self.min_insync_replicas,
                "delivery_timeout": self.send_timeout, "settings": self}

    def producer_config(self) -> dict[str, Any]:
        """The configuration of a producer of :attr:`transport`, kser's options included."""
        return {**self.client_config(), **self.producer_options()}
