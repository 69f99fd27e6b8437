"""What a transport adapts: the few calls kser makes on a Kafka client library.

Everything else (the consume loop, the backlog and its pauses, offset tracking and the
commit policy, dead-lettering, sealing and size checks, topic creation) is written once
in :class:`kser.worker.BaseConsumer`, :class:`kser.producer.BaseProducer` and
:class:`kser.topics.TopicAdmin`. A transport is a package with three modules,
``consumer``, ``producer`` and ``admin``, whose ``Consumer``, ``Producer`` and ``Admin``
subclass those and implement the methods of the protocols below, nothing more:
``kser.python_kafka`` (kafka-python), ``kser.confluent`` (confluent-kafka) and
``kser.memory`` (in-process) are the three kser ships. ``KSER_TRANSPORT`` names the
package (see :data:`kser.config.TRANSPORTS`).

The methods keep a leading underscore because applications never call them: kser's
loop does. Their contract is public and stable: a type checker holds each shipped
transport to it (the assignments at the end of this module), and
``tests/unit/test_transport.py`` checks a transport written from this page alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from kser.record import Record, TopicPartition

if TYPE_CHECKING:
    from kser.producer import BaseProducer
    from kser.topics import TopicAdmin, TopicInfo


class ConsumerTransport(Protocol):
    """A consumer of a group: what a :class:`~kser.worker.BaseConsumer` subclass implements.

    All calls come from the worker's main thread. The client must not commit by itself
    (kser commits what is done, after it is done) and must call back
    ``self._assigned(partitions)`` and ``self._revoked(partitions)`` (provided by
    ``BaseConsumer``) from within :meth:`_poll` when the group gives or takes partitions.
    """

    def _poll(self, timeout: float, max_records: int) -> list[Record]:
        """Wait up to ``timeout`` seconds for at most ``max_records`` records of the
        assigned, unpaused partitions (an empty list: none came). Errors raise: the loop
        tells transient ones (it polls again) from fatal ones (the worker stops)."""
        ...

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit synchronously, for each partition, the offset of the next record to read."""
        ...

    def _pause(self) -> None:
        """Stop fetching from every assigned partition (polls keep the membership)."""
        ...

    def _resume(self) -> None:
        """Fetch again from every assigned partition."""
        ...

    def _close(self) -> None:
        """Leave the group and release the client (offsets are already committed)."""
        ...

    def _new_producer(self) -> BaseProducer:
        """A producer of the same cluster, for follow-up messages and dead letters."""
        ...

    def _new_admin(self) -> TopicAdmin:
        """A topic admin of the same cluster (see :class:`AdminTransport`)."""
        ...

    def _group_offsets(self, partitions: list[TopicPartition]
                       ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``partitions`` (None: none committed); may
        return ``{}`` where the client cannot tell (kser then trusts its own records)."""
        ...


class ProducerTransport(Protocol):
    """A producer: what a :class:`~kser.producer.BaseProducer` subclass implements.

    ``value`` and ``key`` arrive sealed and size-checked; :meth:`_produce` may be called
    from any thread.
    """

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None = None,
                 on_delivery: Callable[[Exception | None], None] | None = None) -> None:
        """Queue one record; call ``on_delivery(None)`` once the broker acknowledged it,
        ``on_delivery(error)`` if it never will. Raise at once if the client refuses it."""
        ...

    def _flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until every queued record is acknowledged;
        raise if some are not (a timeout, a refusal)."""
        ...

    def _new_admin(self) -> TopicAdmin:
        """A topic admin of the same cluster (raise ``NotImplementedError``: topics are
        then neither checked nor created by this producer)."""
        ...

    def close(self) -> None:
        """Flush what is queued and release the client."""
        ...


class AdminTransport(Protocol):
    """Topic administration: what a :class:`~kser.topics.TopicAdmin` subclass implements
    (``TopicAdmin`` waits, retries transient errors and checks partition counts)."""

    def _existing(self, topics: list[str]) -> set[str]:
        """Which of ``topics`` exist."""
        ...

    def _brokers(self) -> int:
        """How many brokers the cluster lists now."""
        ...

    def _create(self, topics: list[str], partitions: int, replication_factor: int,
                configs: dict[str, str]) -> None:
        """Create ``topics`` with topic ``configs`` (an existing one is no error)."""
        ...

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        """Partitions, leaders, replicas in sync, end offsets and (with ``group``)
        committed offsets."""
        ...

    def _min_insync(self, topics: list[str]) -> dict[str, int]:
        """The ``min.insync.replicas`` of ``topics``."""
        ...

    def close(self) -> None:
        """Release the client."""
        ...


if TYPE_CHECKING:  # the transports kser ships, held to the protocols by the type checker
    from kser.confluent.admin import Admin as _ConfluentAdmin
    from kser.confluent.consumer import Consumer as _ConfluentConsumer
    from kser.confluent.producer import Producer as _ConfluentProducer
    from kser.memory.admin import Admin as _MemoryAdmin
    from kser.memory.consumer import Consumer as _MemoryConsumer
    from kser.memory.producer import Producer as _MemoryProducer
    from kser.python_kafka.admin import Admin as _KafkaAdmin
    from kser.python_kafka.consumer import Consumer as _KafkaConsumer
    from kser.python_kafka.producer import Producer as _KafkaProducer

    _consumers: Collection[type[ConsumerTransport]] = (
        _KafkaConsumer, _ConfluentConsumer, _MemoryConsumer)
    _producers: Collection[type[ProducerTransport]] = (
        _KafkaProducer, _ConfluentProducer, _MemoryProducer)
    _admins: Collection[type[AdminTransport]] = (_KafkaAdmin, _ConfluentAdmin, _MemoryAdmin)
