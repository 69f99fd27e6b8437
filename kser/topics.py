"""Topics: kser creates those it uses, with enough partitions, and describes them.

A topic's partitions are the unit of sharing: each partition belongs to one
worker of a group at a time, so at most as many workers of a group work on a
topic as it has partitions (the others stand by and take over when one
leaves). Every message of an operation is keyed by the operation's id, so an
operation's hops stay on one partition, in order, while different operations
spread over all of them. A topic Kafka creates by itself
(``auto.create.topics.enable``) gets the broker's ``num.partitions``, often 1:
one worker would do all the work. So workers (at start), producers (at their
first message to a topic) and ``kser topics create`` create missing topics with
``KSER_PARTITIONS`` partitions and ``KSER_REPLICATION_FACTOR`` replicas.

A transport gives :class:`TopicAdmin` three calls (``_existing``, ``_create``,
``_describe``); what is created and how it is reported is written here once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kser.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PARTITIONS
from kser.errors import is_transient

#: longest topic name Kafka accepts, and the characters it allows
MAX_TOPIC = 249
TOPIC_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def topic_problem(name: object) -> str | None:
    """What makes ``name`` no Kafka topic name (None: it is one): 1 to :data:`MAX_TOPIC`
    of a-z A-Z 0-9 . _ -, and not ``.`` or ``..``."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not 0 < len(name) <= MAX_TOPIC or not set(name) <= TOPIC_CHARACTERS or name in (
            ".", ".."):
        shown = name.encode("unicode_escape").decode()[:100]
        return f"{shown!r} is not a Kafka topic name (1 to {MAX_TOPIC} of a-z A-Z 0-9 . _ -)"
    return None


@dataclass
class PartitionInfo:
    """One partition: where it lives, how far it goes, how far a group has read it."""

    partition: int
    leader: int | None
    replicas: list[int]
    #: offset of the next record to be written (None: not asked)
    end_offset: int | None = None
    #: offset the group committed (None: nothing committed, or no group asked)
    committed: int | None = None
    #: client id of the group member that owns it (kser workers use their name,
    #: ``host:pid``; None: unassigned, or no group asked)
    owner: str | None = None

    @property
    def lag(self) -> int | None:
        """Records the group has not committed yet (None: unknown)."""
        if self.end_offset is None:
            return None
        return max(0, self.end_offset - (self.committed or 0))


@dataclass
class TopicInfo:
    """A topic as the cluster knows it, and as a consumer group sees it."""

    name: str
    partitions: list[PartitionInfo] = field(default_factory=list)
    #: the consumer group described with it (None: none asked)
    group: str | None = None
    #: members of :attr:`group` subscribed now (None: unknown)
    members: int | None = None

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].replicas) if self.partitions else 0

    @property
    def lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if None in lags else sum(lag for lag in lags if lag is not None)


class TopicNotFoundError(LookupError):
    """A topic asked for does not exist."""


class TopicAdmin:
    """Check, create and describe topics of one cluster.

    :param partitions: partitions of the topics :meth:`ensure` creates
    :param replication_factor: their replicas (-1: the broker's default)
    :param timeout: seconds each call to the cluster may take
    """

    def __init__(self, partitions: int = DEFAULT_PARTITIONS, replication_factor: int = -1,
                 timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.timeout = timeout

    # -- what a transport adapts -------------------------------------------------------

    def _existing(self, topics: list[str]) -> set[str]:
        """Those of ``topics`` that exist."""
        raise NotImplementedError

    def _create(self, topics: list[str], partitions: int, replication_factor: int) -> None:
        """Create ``topics``; one created meanwhile by someone else is no error."""
        raise NotImplementedError

    def _describe(self, topics: list[str], group: str | None) -> list[TopicInfo]:
        """``topics`` (which exist) with their partitions, end offsets and, given a
        group, its committed offsets and member count."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the client."""

    # -- shared behaviour --------------------------------------------------------------

    def ensure(self, topics: list[str], partitions: int | None = None,
               replication_factor: int | None = None) -> list[str]:
        """Create those of ``topics`` that do not exist; return them (in order)."""
        topics = list(dict.fromkeys(topics))
        existing = self._existing(topics)
        missing = [topic for topic in topics if topic not in existing]
        if missing:
            self._create(missing, partitions or self.partitions,
                         self.replication_factor if replication_factor is None
                         else replication_factor)
            # created is not yet visible everywhere: wait until the cluster lists them
            deadline = time.monotonic() + self.timeout
            while set(missing) - self._existing(missing) and time.monotonic() < deadline:
                time.sleep(0.1)
        return missing

    def existing(self, topics: list[str]) -> set[str]:
        """Which of ``topics`` exist (a request to the cluster: it answers or raises)."""
        return self._existing(list(dict.fromkeys(topics)))

    def describe(self, topics: list[str], group: str | None = None) -> list[TopicInfo]:
        """``topics`` as the cluster knows them (and as ``group`` reads them).

        :raises TopicNotFoundError: one of them does not exist
        """
        topics = list(dict.fromkeys(topics))
        missing = [topic for topic in topics if topic not in self._existing(topics)]
        if missing:
            raise TopicNotFoundError(f"no topic {', '.join(missing)} in the cluster; create "
                                     "it with: kser topics create TOPIC")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                found = {info.name: info for info in self._describe(topics, group)}
                return [found[topic] for topic in topics]
            except Exception as exc:  # a topic just created may have no leader yet
                if not is_transient(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> TopicAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
